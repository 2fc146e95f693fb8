/**
 * Real coding agents from npm (pinned: codex-acp, claude-code-acp) through spawngate on the process
 * backend, against the mock model on loopback (test/fixtures/mock-model.ts). Each agent is set up by
 * config alone (agents.acp: command + env, its key a secretRef) and runs as a user would run it:
 * a `git` workspace, egress "proxy" whose allow-list holds only the model API, the shipped permission
 * policy. Per agent: a text turn; an edit the policy allows, whose diff `collect` returns; an edit a
 * reviewer profile may not make (the file stays untouched); a cancel in the middle of a shell command,
 * after which the next turn sees only its own output; and the key, which reaches the model and no output.
 */
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerEvent } from '../../src/protocol/events.js';
import type { Spawngate } from '../../src/spawngate.js';
import type { WorkerHandle } from '../../src/sessions/types.js';
import { sha256 } from '../fixtures/mock-model.js';
import type { MockModel } from '../fixtures/mock-model.js';
import { agentRecipe, ensureAgents, startModel, SUITE_AGENTS, writeModelKey } from './agents.js';
import { testGate } from '../helpers/gate.js';
import { bareRepo } from '../helpers/git.js';
import { callerFor, textOf } from '../helpers/turns.js';

const root = mkdtempSync(join(tmpdir(), 'sg-agents-'));
// Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
chmodSync(root, 0o711);
const secretsDir = join(root, 'secrets');
const decisionLog = join(root, 'decisions.jsonl');
// Random and shaped like no credential the redaction knows: its absence below is by design, not by luck.
const key = `model-key-${randomUUID()}`;
const caller = callerFor('agents');
let mock: MockModel;
let gate: Spawngate;
const seen: string[] = [];

beforeAll(async () => {
  const argv = ensureAgents();
  mock = await startModel();
  writeModelKey(secretsDir, key);
  // A repository the workers clone (git workspace): one commit on main.
  const repo = bareRepo(root);
  const profile = { egress: 'proxy', egressAllow: [`127.0.0.2:${mock.port}`], workspace: { strategy: 'git', repo, ref: 'main' }, ttlSeconds: 900, timeoutSeconds: 600, cancelGraceSeconds: 10 };
  const config = {
    agents: {
      executionBackends: { local: { type: 'process', stateDir: join(root, 's'), secretsDir, profiles: { coder: profile, reviewer: profile } } },
      execution: { default: { backend: 'local', profile: 'coder' } },
      acp: Object.fromEntries(SUITE_AGENTS.map((id) => [id, agentRecipe(id, argv[id] ?? [], mock.url.replace(/\/$/, ''))])),
    },
    spawngate: { policyData: { permissions: { profiles: { reviewer: { allowKinds: ['read', 'search', 'think'] } } } } },
  };
  gate = await testGate('agents', config, { decisionLog });
}, 20 * 60_000);

afterAll(async () => {
  await gate?.shutdown();
  await mock?.close();
  rmSync(root, { recursive: true, force: true });
});

/** A turn's events; `onEvent` may act mid-turn (cancel). Everything a caller sees is kept for the secret check. */
async function turn(handle: WorkerHandle, message: string, onEvent?: (e: WorkerEvent) => void): Promise<WorkerEvent[]> {
  const events: WorkerEvent[] = [];
  for await (const e of handle.turn(message)) {
    events.push(e);
    seen.push(JSON.stringify(e));
    onEvent?.(e);
  }
  return events;
}

const text = textOf;
const decided = (events: WorkerEvent[]) => events.filter((e) => e.type === 'permission.decided');
const requested = (events: WorkerEvent[]) => events.filter((e) => e.type === 'permission.requested');

describe.each(SUITE_AGENTS)('%s on the process backend', (agentId) => {
  let handle: WorkerHandle;

  beforeAll(async () => {
    handle = await gate.spawn({ agentId, caller });
  }, 180_000);
  afterAll(async () => {
    if (handle) seen.push(JSON.stringify(await handle.status()), ...(await handle.logs(1000)));
    await handle?.close();
  });

  it('answers a text turn', async () => {
    const events = await turn(handle, `SAY hello from ${agentId}`);
    expect(events.at(-1), JSON.stringify(events)).toMatchObject({ type: 'turn.completed' });
    expect(text(events)).toContain(`hello from ${agentId}`);
  });

  it('edits a file in its git workspace once the policy allows it, and collect returns the diff', async () => {
    const events = await turn(handle, `WRITE notes.txt written by ${agentId}`);
    expect(events.at(-1), JSON.stringify(events)).toMatchObject({ type: 'turn.completed' });
    const asked = requested(events);
    expect(asked.length, JSON.stringify(events)).toBeGreaterThan(0);
    expect(asked[0]).toMatchObject({ type: 'permission.requested', kind: 'edit' });
    expect(asked[0]?.type === 'permission.requested' && asked[0].paths.some((p) => p.path.endsWith('/notes.txt') && p.inWorkspace)).toBe(true);
    expect(decided(events)[0]).toMatchObject({ outcome: 'allow_once', by: 'gateway', code: 'allowed' });
    const collected = await gate.collect(handle.spawnId, { format: 'diff' });
    expect(collected.diff).toContain('+++ b/notes.txt');
    expect(collected.diff).toContain(`+written by ${agentId}`);
  });

  it('stops mid-command on cancel, and the next turn shows only its own output', async () => {
    let cancelled = false;
    const events = await turn(handle, 'SHELL sleep 30', (e) => {
      const started = (e.type === 'tool.call' && e.kind === 'execute') || (e.type === 'permission.decided' && e.outcome.startsWith('allow'));
      if (started && !cancelled) {
        cancelled = true;
        void handle.cancel();
      }
    });
    expect(cancelled, JSON.stringify(events)).toBe(true);
    expect(events.at(-1)).toMatchObject({ type: 'turn.cancelled', reason: 'client_cancel' });
    const next = await turn(handle, 'SAY after the cancel');
    expect(next.at(-1)).toMatchObject({ type: 'turn.completed' });
    expect(text(next).trim()).toBe('after the cancel');
  });

  it('is refused an edit under a reviewer profile: the file stays untouched', async () => {
    const reviewer = await gate.spawn({ agentId, caller, execution: { profile: 'reviewer' } });
    try {
      const events = await turn(reviewer, 'WRITE refused.txt must not exist');
      // codex ends its turn when an edit is refused ("abort"); claude carries on and finishes.
      const last = events.at(-1);
      expect(last?.type === 'turn.completed' || (last?.type === 'turn.cancelled' && last.reason === 'agent'), JSON.stringify(events)).toBe(true);
      expect(decided(events)[0]).toMatchObject({ outcome: 'reject_once', by: 'gateway', code: 'tool_kind_not_allowed' });
      const collected = await gate.collect(reviewer.spawnId, { format: 'diff' });
      expect(collected.diff).toBe('');
    } finally {
      await reviewer.close();
    }
  });
});

describe('the model key', () => {
  it('reached the model API on every call, and appears in no output', async () => {
    const modelCalls = mock.requests.filter((r) => r.dialect === 'openai-responses' || r.dialect === 'anthropic');
    expect(new Set(modelCalls.map((r) => r.dialect))).toEqual(new Set(['openai-responses', 'anthropic']));
    for (const r of modelCalls) expect(r.authSha256, r.path).toBe(sha256(key));
    const listing = JSON.stringify(await gate.list());
    for (const [what, output] of [
      ['events, status and logs', seen.join('\n')],
      ['decision log', readFileSync(decisionLog, 'utf8')],
      ['listing', listing],
    ] as const) {
      expect(output.includes(key), what).toBe(false);
    }
  });
});
