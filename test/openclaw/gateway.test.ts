/**
 * The spawngate plugin in a real OpenClaw gateway (pinned npm version), installed as an operator
 * installs it, with caps shared through a real Redis and ACP sessions in process workers:
 *   (a) allowed, denied (agent not allowed) and capped spawns over POST /tools/invoke;
 *   (b) the model path with runtime "acp": the agent runs in a spawngate worker on the process
 *       backend and its answer comes back into the chat;
 *   (d) slots come back after children end, and after the gateway is killed (-9) and restarted.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway, ModelServer } from './harness.js';
import { createGateway, startModelServer, until } from './harness.js';

const dir = mkdtempSync(join(tmpdir(), 'sg-oc-'));
const stateDir = mkdtempSync(join(tmpdir(), 'sg-ocw-'));
const decisions = join(dir, 'decisions.log');
let model: ModelServer;
let gateway: Gateway;

const CAP = 3;

function decisionLines(): { stage: string; result: { allow: boolean; reasons: { code: string }[] }; input: { request: { agentId: string; runtime: string }; caller: { channel: { kind: string }; user: { id: string } } }; trace_id?: string }[] {
  if (!existsSync(decisions)) return [];
  return readFileSync(decisions, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as ReturnType<typeof decisionLines>[number]);
}

beforeAll(async () => {
  model = await startModelServer();
  gateway = await createGateway({
    dir,
    model,
    pluginConfig: {
      ownerUser: 'owner',
      claimSeconds: 60,
      config: {
        spawngate: {
          owner: 'oc-e2e',
          decisionLog: decisions,
          store: { type: 'redis', url: 'redis://127.0.0.1:6390', keyPrefix: `sg-oc-${randomUUID().slice(0, 8)}:` },
          // Short leases so that the kill -9 below frees its slots within seconds.
          leaseSeconds: 4,
          renewSeconds: 1,
          sweepIntervalSeconds: 2,
          policyData: {
            agents: { deny: ['forbidden'] },
            concurrency: { user: CAP },
            rate: { kinds: { api: { user: { perMinute: 600, burst: 100 }, channel: { perMinute: 600, burst: 100 } } } },
          },
        },
        agents: {
          executionBackends: { local: { type: 'process', stateDir, defaultProfile: 'p', profiles: { p: { egress: 'open', ttlSeconds: 900, timeoutSeconds: 900 } } } },
          execution: { default: { backend: 'local', profile: 'p' } },
        },
      },
    },
  });
});

afterAll(async () => {
  await gateway?.stop();
  await model?.close();
  rmSync(dir, { recursive: true, force: true });
  rmSync(stateDir, { recursive: true, force: true });
});

describe('spawngate in a real OpenClaw gateway', () => {
  it('(a) admits, denies an agent the policy does not allow, and caps a user, over /tools/invoke', async () => {
    const ok = await gateway.spawnViaTools({ task: 'say hi', label: 'a-1' });
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);

    const denied = await gateway.spawnViaTools({ task: 'say hi', agentId: 'forbidden' });
    expect(denied.status).toBe(403);
    expect(denied.body.error?.type).toBe('tool_call_blocked');
    expect(denied.body.error?.message).toMatch(/spawngate denied this spawn \[agent_denied\]/);

    const last = decisionLines().at(-1);
    expect(last?.input.caller.channel.kind).toBe('api');
    expect(last?.input.caller.user.id).toBe('owner');
  });

  it('(d) a capped user gets its slots back when the children end', async () => {
    // Fill the cap (the child of (a) may still hold one), then one more is denied with the cap's code.
    const statuses: number[] = [];
    let capped: Awaited<ReturnType<Gateway['spawnViaTools']>> | null = null;
    for (let i = 0; i < CAP + 1 && !capped; i++) {
      const r = await gateway.spawnViaTools({ task: `child ${i}`, label: `d-${i}` });
      statuses.push(r.status);
      if (r.status === 403) capped = r;
    }
    expect(capped?.body.error?.message, JSON.stringify(statuses)).toMatch(/\[concurrency_limit_user\]: user "owner" already has 3 active workers/);
    // The children answer at once (the model server says "ok, done."), so their slots come back.
    await until('a spawn admitted again after the children ended', async () => (await gateway.spawnViaTools({ task: 'again', label: 'd-again' })).status === 200, 180_000);
  });

  it('(b) the model path with runtime acp runs the agent in a spawngate worker and streams its answer back into the chat', async () => {
    const task = `hello from acp ${randomUUID().slice(0, 8)}`;
    const status = await gateway.chat(`please SPAWN${JSON.stringify({ runtime: 'acp', agentId: 'echo', task, mode: 'run' })}`);
    expect(status).toBe(200);
    // The echo agent answers "echo: <task>" in the worker; OpenClaw announces the child's result to the parent turn.
    await until('the ACP answer in the chat', () => model.saw(`echo: ${task}`), 240_000);
    const acp = decisionLines().filter((d) => d.input.request.runtime === 'acp');
    expect(acp.length).toBeGreaterThan(0);
    expect(acp[0]?.input.request.agentId).toBe('echo');
    expect(acp[0]?.input.caller.channel.kind).not.toBe('unknown');
    // One-shot sessions are closed by OpenClaw ("oneshot-complete"): nothing is left on the backend.
    await until('the worker removed', () => readdirSync(stateDir).filter((e) => !e.startsWith('.')).length === 0, 120_000);
  });

  it('(d) after kill -9 and a restart: the slots come back (leases) and no worker is left', async () => {
    // Hold the cap with ACP children that stay open (mode session), then kill the gateway.
    for (let i = 0; i < CAP; i++) await gateway.spawnViaTools({ task: `hold ${i}`, label: `k-${i}` });
    await gateway.stop('SIGKILL');
    await gateway.start();
    await until('spawns admitted after the restart', async () => (await gateway.spawnViaTools({ task: 'after restart', label: 'r-1' })).status === 200, 120_000);
    await until('no worker left on the backend', () => readdirSync(stateDir).filter((e) => !e.startsWith('.')).length === 0, 120_000);
  });
});
