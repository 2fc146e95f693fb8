/**
 * A reservation taken in one step (a gateway's pre-tool hook) and handed to spawn() later (its
 * ACP ensureSession), and the session wishes of a request — cwd, env, model, resumeSessionId —
 * reaching a real worker on the process backend only as far as the profile's `accept` allows.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { isSpawngateError } from '../../src/errors.js';
import type { WorkerEvent } from '../../src/protocol/events.js';
import { caller, collect } from '../telemetry/gate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const stateDir = mkdtempSync(join(tmpdir(), 'sg-hand-'));
const repo = mkdtempSync(join(tmpdir(), 'sg-repo-'));
// The cwd a request wishes for is entered by the worker's agent, under the worker's own uid.
chmodSync(repo, 0o755);
const gates: Spawngate[] = [];

afterEach(async () => {
  for (const g of gates.splice(0)) await g.shutdown();
});
afterAll(() => {
  rmSync(stateDir, { recursive: true, force: true });
  rmSync(repo, { recursive: true, force: true });
});

async function gate(): Promise<Spawngate> {
  const base = { egress: 'open', ttlSeconds: 600, timeoutSeconds: 120, maxConcurrent: { profile: 1 } };
  const g = await createSpawngate({
    config: {
      agents: {
        executionBackends: {
          local: {
            type: 'process',
            stateDir,
            defaultProfile: 'open',
            profiles: {
              open: { ...base, accept: { cwd: [repo], env: ['ECHO_*', 'EXACT'], model: true, resumeSessionId: true } },
              strict: { ...base, accept: { model: false, resumeSessionId: false } },
              // The fixture agent fails ACP initialize: a worker that never becomes ready.
              broken: { ...base, env: { ACP_FIXTURE_FAIL_INIT: '1' } },
            },
          },
        },
        execution: { default: { backend: 'local', profile: 'open' } },
        acp: { fixture: { command: [process.execPath, fixture] } },
      },
    },
    owner: 'handoff-test',
    sweepIntervalMs: 0,
    decisionLog: false,
  });
  gates.push(g);
  return g;
}

function text(events: WorkerEvent[]): string {
  return events.map((e) => (e.type === 'agent.message.delta' ? e.text : '')).join('');
}

function environOf(pid: number): Record<string, string> {
  const raw = readFileSync(`/proc/${pid}/environ`, 'utf8');
  return Object.fromEntries(raw.split('\0').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

describe('spawn on a handed-over reservation', () => {
  it('uses the reservation and its decision: one slot, one decision, the same spawn id', async () => {
    const g = await gate();
    const reserved = await g.reserve({ agentId: 'echo', caller: caller() });
    if (!reserved.allowed) throw new Error(`denied: ${JSON.stringify(reserved.decision.reasons)}`);
    expect(await g.store.active()).toHaveLength(1);
    const h = await g.spawn({ agentId: 'echo', caller: caller() }, { reserved });
    expect(h.spawnId).toBe(reserved.reservation.spawnId);
    expect(h.decision).toEqual(reserved.decision);
    // The cap of 1 is held by this very worker, not counted twice.
    expect(await g.store.active()).toHaveLength(1);
    expect(text(await collect(h.turn('hi')))).toBe('echo: hi');
    await h.close();
    expect(await g.store.active()).toEqual([]);
    // Spent: the same reservation cannot start a second worker.
    await expect(g.spawn({ agentId: 'echo', caller: caller() }, { reserved })).rejects.toMatchObject({ code: 'REQUEST_INVALID' });
  });

  it('refuses another agent, and a failed start gives the slot back', async () => {
    const g = await gate();
    const reserved = await g.reserve({ agentId: 'echo', caller: caller() });
    if (!reserved.allowed) throw new Error('denied');
    const err: unknown = await g.spawn({ agentId: 'codex', caller: caller() }, { reserved }).catch((e: unknown) => e);
    expect(isSpawngateError(err) && err.code).toBe('REQUEST_INVALID');
    expect((err as Error).message).toMatch(/admitted for agent echo, not codex/);
    // Still the caller's to use or release.
    expect(await g.store.active()).toHaveLength(1);
    await reserved.reservation.release();

    const doomed = await g.reserve({ agentId: 'fixture', caller: caller(), execution: { profile: 'broken' } });
    if (!doomed.allowed) throw new Error('denied');
    await expect(g.spawn({ agentId: 'fixture', caller: caller() }, { reserved: doomed })).rejects.toThrow(/handshake|ACP|initialize/i);
    expect(await g.store.active()).toEqual([]);
    expect(await g.list()).toEqual([]);
  });
});

describe('session wishes', () => {
  it('cwd, env, model and resumeSessionId reach the worker where the profile accepts them', async () => {
    const g = await gate();
    const h = await g.spawn({
      agentId: 'echo',
      caller: caller(),
      cwd: repo,
      env: { ECHO_ONE: '1', EXACT: 'yes', OTHER: 'no' },
      model: 'echo-2',
      resumeSessionId: 'sess-42',
    });
    expect(h.dropped).toEqual(['env.OTHER']);
    expect(text(await collect(h.turn('hi')))).toBe('echo[echo-2]: hi');
    const status = await h.status();
    expect(status.worker?.session).toEqual({ id: 'sess-42', resumed: true, model: { requested: 'echo-2', applied: true, available: ['echo-1', 'echo-2'] } });
    const agentPid = status.worker?.agentPid;
    if (typeof agentPid !== 'number') throw new Error('no agent pid');
    const env = environOf(agentPid);
    expect(env).toMatchObject({ ECHO_ONE: '1', EXACT: 'yes' });
    expect(env).not.toHaveProperty('OTHER');
    expect(await import('node:fs/promises').then((fs) => fs.readlink(`/proc/${agentPid}/cwd`))).toBe(repo);
    await h.close();
  });

  it('drops what the profile does not accept, and a model the agent lacks is reported, not forced', async () => {
    const g = await gate();
    const h = await g.spawn({
      agentId: 'echo',
      caller: caller(),
      execution: { profile: 'strict' },
      cwd: '/etc',
      model: 'echo-2',
      resumeSessionId: 'sess-1',
    });
    expect(h.dropped).toEqual(['cwd', 'model', 'resumeSessionId']);
    expect(text(await collect(h.turn('hi')))).toBe('echo: hi');
    const status = await h.status();
    expect(status.worker?.session?.resumed).toBe(false);
    expect(status.worker?.session?.model).toBeNull();
    await h.close();

    const outside = await g.spawn({ agentId: 'echo', caller: caller(), cwd: '/etc', model: 'gpt-x' });
    expect(outside.dropped).toEqual(['cwd']);
    expect((await outside.status()).worker?.session?.model).toEqual({ requested: 'gpt-x', applied: false, available: ['echo-1', 'echo-2'] });
    await outside.close();
  });
});
