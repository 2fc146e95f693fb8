/**
 * Permission requests through a gate: the shipped bundle's permission policy answers the agent, per
 * profile overridable from the config's policyData; every request and answer is on the stream and in
 * the decision log. The agent is the fixture's `edit`, which writes only when granted.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PermissionDecidedEvent, PermissionRequestedEvent, WorkerEvent } from '../../src/protocol/events.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { callerFor, turnEvents } from '../helpers/turns.js';
import { testGate } from '../helpers/gate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sg-perm-'));
// Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
chmodSync(root, 0o711);
const decisionLog = join(root, 'decisions.jsonl');
const hostDir = join(root, 'host');
let gate: Spawngate;
const caller = callerFor('perm');

beforeAll(async () => {
  mkdirSync(hostDir);
  gate = await testGate('perm', {
    agents: {
      executionBackends: {
        local: {
          type: 'process',
          stateDir: join(root, 's'),
          allowedHostPaths: [root],
          // The coder's workspace is a host folder (hostPath), which a backend with a uid per worker refuses.
          isolation: { user: 'none' },
          profiles: {
            coder: { egress: 'none', workspace: { strategy: 'hostPath', path: hostDir } },
            reviewer: { egress: 'none' },
          },
        },
      },
      execution: { default: { backend: 'local', profile: 'coder' } },
      acp: { fixture: { command: [process.execPath, fixture] } },
    },
    spawngate: { policyData: { permissions: { profiles: { reviewer: { allowKinds: ['read', 'search', 'think'] } } } } },
  }, { decisionLog });
});

afterAll(async () => {
  await gate?.shutdown();
  rmSync(root, { recursive: true, force: true });
});

async function turn(profile: string, message: string): Promise<WorkerEvent[]> {
  const handle = await gate.spawn({ agentId: 'fixture', caller, execution: { profile } });
  try {
    return await turnEvents(handle, message);
  } finally {
    await handle.close();
  }
}

const decided = (events: WorkerEvent[]) => events.find((e): e is PermissionDecidedEvent => e.type === 'permission.decided');
const requested = (events: WorkerEvent[]) => events.find((e): e is PermissionRequestedEvent => e.type === 'permission.requested');
const permissionLines = () =>
  readFileSync(decisionLog, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l['stage'] === 'permission');

describe('the permission policy', () => {
  it('allows an edit inside the workspace once: the file is written, the answer says why', async () => {
    const events = await turn('coder', 'edit src/notes.txt inside');
    expect(requested(events)).toMatchObject({ kind: 'edit', paths: [{ path: join(requested(events)!.workspace, 'src/notes.txt'), inWorkspace: true }] });
    expect(decided(events)).toMatchObject({ outcome: 'allow_once', optionId: 'allow', by: 'gateway', code: 'allowed' });
    expect(decided(events)?.reason).toBe('"Write src/notes.txt": tool kind "edit" is allowed in profile coder (inside the workspace)');
    expect(readFileSync(join(hostDir, 'src/notes.txt'), 'utf8')).toBe('inside\n');
  });

  it('rejects an edit outside the workspace: the file stays unwritten', async () => {
    const events = await turn('coder', 'edit ../escaped.txt outside');
    expect(requested(events)?.paths).toEqual([{ path: join(root, 'escaped.txt'), inWorkspace: false }]);
    expect(decided(events)).toMatchObject({ outcome: 'reject_once', optionId: 'deny', by: 'gateway', code: 'path_outside_workspace' });
    expect(existsSync(join(root, 'escaped.txt'))).toBe(false);
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
  });

  it('follows the profile\'s override from policyData: a reviewer may not edit at all', async () => {
    const events = await turn('reviewer', 'edit notes.txt nope');
    expect(decided(events)).toMatchObject({ outcome: 'reject_once', code: 'tool_kind_not_allowed', reason: '"Write notes.txt": tool kind "edit" is not allowed in profile reviewer' });
  });

  it('writes each request and answer to the decision log, with the spawn, caller and tool', () => {
    const lines = permissionLines();
    expect(lines.map((l) => (l['result'] as { code: string }).code)).toEqual(['allowed', 'path_outside_workspace', 'tool_kind_not_allowed']);
    const first = lines[0]!;
    expect(typeof first['spawn_id']).toBe('string');
    expect((first['bundles'] as { spawngate: { revision: string } }).spawngate.revision).toMatch(/^[0-9a-f]{64}$/);
    expect(first['path']).toBe('spawngate/permissions/decision');
    // The shipped mask rule leaves the tool's arguments out; the kind and paths that decided stay.
    expect(first['erased']).toEqual(['/input/tool/rawInput']);
    expect((first['input'] as { tool: Record<string, unknown> }).tool).not.toHaveProperty('rawInput');
    expect(first).toMatchObject({
      stage: 'permission',
      input: { agent: 'fixture', profile: 'coder', backend: 'local', caller: { user: { id: 'perm-user' } }, tool: { kind: 'edit', title: 'Write src/notes.txt' }, options: ['allow_once', 'allow_always', 'reject_once'] },
      result: { outcome: 'allow_once', code: 'allowed' },
    });
  });

  it('refuses a malformed override in the config by its path', async () => {
    const bad = createSpawngate({
      sweepIntervalMs: 0,
      config: {
        agents: { executionBackends: { local: { type: 'process' } } },
        spawngate: { policyData: { permissions: { profiles: { x: { grant: 'forever' } } } } },
      },
    });
    await expect(bad).rejects.toThrow(/spawngate\.policyData\.permissions\.profiles\.x\.grant/);
  });
});
