import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { memoryDecisionLog } from '../../src/admission/decision-log.js';
import { createAdmission, SHIPPED_BUNDLE, type Admission } from '../../src/admission/gate.js';
import { readBundle } from '../../src/admission/bundle.js';
import { loadConfigFile } from '../../src/config/index.js';
import { RequestError } from '../../src/errors.js';
import type { SpawnRequestInput } from '../../src/admission/request.js';

/** Requests as raw JSON: the gate validates them, so tests may hand it anything. */
const raw = (r: unknown) => r as SpawnRequestInput;

const example = (name: string) => fileURLToPath(new URL(`../../examples/${name}`, import.meta.url));
const json = (name: string) => JSON.parse(readFileSync(example(name), 'utf8')) as Record<string, unknown>;

const gates: Admission[] = [];
async function gate(config: unknown, extra: Parameters<typeof createAdmission>[0] = {}): Promise<Admission> {
  const g = await createAdmission({ config, bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: false, ...extra });
  gates.push(g);
  return g;
}
afterAll(async () => {
  for (const g of gates) await g.close();
});

const caller = (over: Record<string, unknown> = {}) => ({
  sessionKey: 'agent:main:telegram:1',
  depth: 0,
  channel: { id: 'telegram:1', kind: 'telegram' },
  user: { id: 'alice', roles: [] },
  ...over,
});

/** A small config where every cap is 1 or 2, so each concurrency scope can be hit on its own. */
const capped = {
  agents: {
    acp: { codex: { command: ['codex-acp'] } },
    executionBackends: {
      local: {
        type: 'process',
        maxConcurrent: 3,
        defaultProfile: 'small',
        profiles: {
          small: { allowedAgents: ['echo', 'codex'], maxConcurrent: { profile: 2, user: 1, channel: 1 } },
          build: { class: 'build', allowedAgents: ['codex'] },
          chat: { interactiveOnly: true, egress: 'open' },
          wide: { egress: 'open' },
        },
      },
      other: { type: 'process' },
    },
    execution: { default: { backend: 'local', profile: 'small' } },
  },
};

describe('admission gate', () => {
  it('admits the seed examples: the DESIGN config with the seed request (message alias), and the full example config', async () => {
    // The DESIGN config names no ACP agents: the seed's codex could never start, so the gate says so.
    const bare = await (await gate(json('design-example.json'))).admit(raw(json('seed-spawn-request.json')));
    expect(bare.decision).toMatchObject({ allow: false, reasons: [{ code: 'agent_unknown' }] });
    const designConfig = json('design-example.json') as { agents: Record<string, unknown> };
    const design = await gate({ ...designConfig, agents: { ...designConfig.agents, acp: { codex: { command: ['codex-acp'] } } } });
    const seed = await design.admit(raw(json('seed-spawn-request.json')));
    expect(seed.decision).toMatchObject({ allow: true, backend: 'k8s', profile: 'small' });
    expect(seed.request.task).toBe('Run the full test suite and fix what fails');

    // The example's `spawngate` section points at a Redis store and /var/log; this test is about admission.
    const { spawngate: _ops, ...exampleConfig } = await loadConfigFile(example('spawngate.example.yaml'));
    const full = await gate(exampleConfig);
    const res = await full.admit(raw(json('spawn-request.json')));
    expect(res.decision).toMatchObject({ allow: true, backend: 'k8s', profile: 'small', egress: 'proxy' });
    expect(res.input.resolved).toMatchObject({ backend: 'k8s', profile: 'small', source: 'global' });
  });

  it('moves a build/test task to the build profile only when the agent may use it', async () => {
    const g = await gate(capped);
    const codex = await g.admit({ agentId: 'codex', task: 'please run the full test suite', caller: caller() });
    expect(codex.decision).toMatchObject({ allow: true, profile: 'build' });
    expect(codex.decision.reasons.map((r) => r.code)).toContain('placed_on_build_profile');
    const echo = await g.admit({ agentId: 'echo', task: 'please run the full test suite', caller: caller() });
    expect(echo.decision).toMatchObject({ allow: true, profile: 'small' });
    const plain = await g.admit({ agentId: 'codex', task: 'explain this function', caller: caller() });
    expect(plain.decision).toMatchObject({ allow: true, profile: 'small' });
  });

  it('tightens egress for untrusted channels and never loosens it on request', async () => {
    const g = await gate(capped);
    const wide = { backend: 'local', profile: 'wide' };
    expect((await g.admit({ agentId: 'echo', task: 't', execution: wide, caller: caller() })).decision).toMatchObject({ allow: true, egress: 'open' });
    expect((await g.admit({ agentId: 'echo', task: 't', execution: { ...wide, egress: 'proxy' }, caller: caller() })).decision).toMatchObject({ egress: 'proxy' });
    const hook = caller({ channel: { id: 'hook:1', kind: 'webhook' } });
    expect((await g.admit({ agentId: 'echo', task: 't', execution: wide, caller: hook })).decision).toMatchObject({ allow: true, egress: 'none' });
    const small = await g.admit({ agentId: 'echo', task: 't', execution: { egress: 'open' }, caller: caller() });
    expect(small.decision).toMatchObject({ allow: true, egress: 'none' });
  });

  const denies: [string, Record<string, unknown>][] = [
    ['unknown_backend', { agentId: 'echo', task: 't', execution: { backend: 'nope' }, caller: caller() }],
    ['unknown_profile', { agentId: 'echo', task: 't', execution: { profile: 'nope' }, caller: caller() }],
    ['agent_not_allowed', { agentId: 'gemini', task: 't', caller: caller() }],
    ['interactive_only_profile', { agentId: 'echo', task: 't', execution: { profile: 'chat' }, caller: caller({ channel: { id: 'cron:nightly', kind: 'cron' } }) }],
    ['depth_exceeded', { agentId: 'echo', task: 't', caller: caller({ depth: 3 }) }],
  ];
  it.each(denies)('denies with %s', async (code, request) => {
    const g = await gate(capped);
    const res = await g.admit(raw(request));
    expect(res.decision.allow).toBe(false);
    expect(res.decision.reasons.map((r) => r.code)).toContain(code);
  });

  it('denies with backend_unresolved when nothing selects a backend', async () => {
    const g = await gate({ agents: { executionBackends: { a: { type: 'process' }, b: { type: 'process' } } } });
    const res = await g.admit({ agentId: 'echo', task: 't', caller: caller() });
    expect(res.decision).toMatchObject({ allow: false, reasons: [{ code: 'backend_unresolved' }] });
  });

  it('reaches every concurrency code, from the policy (usage) and from the store (reserve)', async () => {
    const g = await gate(capped);
    const reserve = (user: string, channel: string, execution?: Record<string, unknown>) =>
      g.reserve({ agentId: 'echo', task: 't', ...(execution ? { execution } : {}), caller: caller({ user: { id: user, roles: [] }, channel: { id: channel, kind: 'telegram' } }) });
    const first = await reserve('u1', 'c1');
    expect(first.allowed).toBe(true);
    expect((await reserve('u1', 'c2')).decision.reasons[0]?.code).toBe('concurrency_limit_profile_user');
    expect((await reserve('u2', 'c1')).decision.reasons[0]?.code).toBe('concurrency_limit_profile_channel');
    expect((await reserve('u2', 'c2')).allowed).toBe(true);
    expect((await reserve('u3', 'c3')).decision.reasons[0]?.code).toBe('concurrency_limit_profile');
    expect((await reserve('u3', 'c3', { profile: 'wide' })).allowed).toBe(true);
    expect((await reserve('u4', 'c4', { profile: 'wide' })).decision.reasons[0]?.code).toBe('concurrency_limit_backend');

    const users = await gate({ agents: { executionBackends: { l: { type: 'process' } } } });
    const byUser = (channel: string, roles: string[] = []) =>
      users.reserve({ agentId: 'echo', task: 't', caller: caller({ user: { id: 'bob', roles }, channel: { id: channel, kind: 'telegram' } }) });
    for (let i = 0; i < 4; i++) expect((await byUser(`ch${i}`)).allowed).toBe(true);
    expect((await byUser('ch9')).decision.reasons[0]?.code).toBe('concurrency_limit_user');
    expect((await byUser('ch9', ['admin'])).allowed).toBe(true); // role override: admins get 16
    const byChannel = (user: string) => users.reserve({ agentId: 'echo', task: 't', caller: caller({ sessionKey: `s-${user}`, user: { id: user, roles: [] }, channel: { id: 'busy', kind: 'telegram' } }) });
    for (let i = 0; i < 8; i++) expect((await byChannel(`p${i}`)).allowed).toBe(true);
    expect((await byChannel('p9')).decision.reasons[0]?.code).toBe('concurrency_limit_channel');

    // Fan-out: one session has at most 8 live children (trees.maxChildren), whoever it charges them to.
    const fan = await gate({ agents: { executionBackends: { l: { type: 'process' } } } });
    const child = (i: number) => fan.reserve({ agentId: 'echo', task: 't', caller: caller({ sessionKey: 'agent:main:main', user: { id: `fan-${i}`, roles: [] }, channel: { id: `fan-${i}`, kind: 'telegram' } }) });
    const children = [];
    for (let i = 0; i < 8; i++) {
      const r = await child(i);
      expect(r.allowed).toBe(true);
      children.push(r);
    }
    // The policy sees the 8 live children in usage.children and denies before the store is asked.
    const ninth = await child(8);
    expect(ninth).toMatchObject({ stage: 'policy', decision: { reasons: [{ code: 'concurrency_limit_parent', message: 'session "agent:main:main" already has 8 active workers; the limit is 8' }] } });
    expect(ninth.input.usage.children).toBe(8);
    const done = children[0];
    if (done?.allowed) await done.reservation.release();
    expect((await child(9)).allowed).toBe(true);
  });

  it('holds a spawn tree to its budget across sessions and depths: decided by the policy, taken by the store', async () => {
    const bundle = await readBundle(SHIPPED_BUNDLE);
    const data = structuredClone(bundle.data) as { spawngate: { admission: { config: Record<string, unknown> } } };
    data.spawngate.admission.config['trees'] = { maxChildren: 2, maxSpawns: 3, maxWorkerSeconds: null, windowSeconds: 600 };
    const log = memoryDecisionLog();
    const g = await gate({ agents: { executionBackends: { l: { type: 'process' } } } }, { bundle: { ...bundle, data, revision: 'trees' }, decisionLog: log });
    // The root spawns one child; that child (depth 1, parent the root) spawns one; its child (depth 2) names the root.
    const fromRoot = await g.reserve({ agentId: 'echo', task: 't', caller: caller({ sessionKey: 'agent:main:main' }) });
    const fromChild = await g.reserve({ agentId: 'echo', task: 't', caller: caller({ sessionKey: 'agent:main:subagent:a', parentSessionKey: 'agent:main:main', depth: 1 }) });
    const fromGrandchild = await g.reserve({
      agentId: 'echo',
      task: 't',
      caller: caller({ sessionKey: 'agent:main:subagent:b', parentSessionKey: 'agent:main:subagent:a', rootSessionKey: 'agent:main:main', depth: 2 }),
    });
    for (const [i, r] of [fromRoot, fromChild, fromGrandchild].entries()) {
      expect(r.allowed).toBe(true);
      expect(r.decision.limits.tree).toEqual({ root: 'agent:main:main', maxSpawns: 3, maxWorkerSeconds: null, windowSeconds: 600 });
      expect(r.reservation?.record.tree).toEqual({ root: 'agent:main:main', spawns: i + 1, workerSeconds: 3600 * (i + 1) });
    }
    // A fourth spawn anywhere in the tree is refused by the store, even once the others ended: spawns are counted over the tree's life.
    for (const r of [fromRoot, fromChild, fromGrandchild]) if (r.allowed) await r.reservation.release();
    const fourth = await g.reserve({ agentId: 'echo', task: 't', caller: caller({ sessionKey: 'agent:main:subagent:c', parentSessionKey: 'agent:main:main', depth: 1 }) });
    expect(fourth).toMatchObject({
      allowed: false,
      stage: 'reservation',
      decision: { reasons: [{ code: 'tree_spawns_exhausted', message: 'the spawn tree of session agent:main:main has made 3 of its 3 spawns' }] },
    });
    const dry = await g.admit({ agentId: 'echo', task: 't', caller: caller({ sessionKey: 'agent:main:main' }) });
    expect(dry.decision.reasons[0]?.code).toBe('tree_spawns_exhausted');
    expect(log.entries.filter((e) => e.stage === 'reservation').map((e) => (e.result as { reasons: { code: string }[] }).reasons[0]?.code)).toEqual(['tree_spawns_exhausted', 'tree_spawns_exhausted']);
    // Another root is another tree; fan-out caps each session at 2 live children.
    const other = (i: number) => g.reserve({ agentId: 'echo', task: 't', caller: caller({ sessionKey: 'agent:other:main', user: { id: `o${i}`, roles: [] }, channel: { id: `o${i}`, kind: 'telegram' } }) });
    expect((await other(1)).allowed).toBe(true);
    expect((await other(2)).allowed).toBe(true);
    expect((await other(3)).decision.reasons[0]?.code).toBe('concurrency_limit_parent');
  });

  it('reaches concurrency_limit_total and the rate limits (token buckets in the store)', async () => {
    const bundle = await readBundle(SHIPPED_BUNDLE);
    const data = structuredClone(bundle.data) as { spawngate: { admission: { config: { concurrency: { total: number } } } } };
    data.spawngate.admission.config.concurrency.total = 1;
    const g = await gate({ agents: { executionBackends: { l: { type: 'process' } } } }, { bundle: { ...bundle, data, revision: 'total-1' } });
    expect((await g.reserve({ agentId: 'echo', task: 't', caller: caller() })).allowed).toBe(true);
    expect((await g.admit({ agentId: 'echo', task: 't', caller: caller({ user: { id: 'z', roles: [] } }) })).decision.reasons[0]?.code).toBe('concurrency_limit_total');

    const cron = await gate({ agents: { executionBackends: { l: { type: 'process' } } } });
    const tick = (user: string, channel: string) =>
      cron.reserve({ agentId: 'echo', task: 't', caller: caller({ user: { id: user, roles: [] }, channel: { id: channel, kind: 'cron' } }) });
    const one = await tick('job-user', 'cron:a');
    expect(one.decision.limits.rate.map((r) => r.scope).sort()).toEqual(['channel', 'user']);
    if (one.allowed) await one.reservation.release();
    expect((await tick('job-user', 'cron:b')).decision.reasons[0]?.code).toBe('rate_limit_user');
    expect((await tick('other-user', 'cron:a')).decision.reasons[0]?.code).toBe('rate_limit_channel');
    // admit (the dry run) reports the same rate limit without taking a token
    const dry = await cron.admit({ agentId: 'echo', task: 't', caller: caller({ user: { id: 'job-user', roles: [] }, channel: { id: 'cron:c', kind: 'cron' } }) });
    expect(dry).toMatchObject({ stage: 'reservation', decision: { allow: false, reasons: [{ code: 'rate_limit_user' }] } });
  });

  it('keys the user bucket by channel kind: a user whose cron bucket is empty still spawns from api and chat', async () => {
    const g = await gate({ agents: { executionBackends: { l: { type: 'process' } } } });
    const from = (kind: string, channel: string) =>
      g.reserve({ agentId: 'echo', task: 't', caller: caller({ user: { id: 'mixed-user', roles: [] }, channel: { id: channel, kind } }) });
    const cron = await from('cron', 'cron:a');
    expect(cron.allowed).toBe(true);
    expect(cron.decision.limits.rate.find((r) => r.scope === 'user')?.key).toBe('cron/mixed-user');
    if (cron.allowed) await cron.reservation.release();
    // cron: burst 1 per user, so the user's cron bucket is now empty, whichever cron channel asks
    const drained = await from('cron', 'cron:b');
    expect(drained.decision.reasons[0]?.code).toBe('rate_limit_user');
    expect(drained.decision.reasons[0]?.message).toContain('user cron/mixed-user exceeded 2/min (burst 1)');
    // api has a bucket of its own for the same user (nonInteractive: burst 3), not the drained cron one
    for (let i = 0; i < 3; i++) {
      const api = await from('api', `api:${i}`);
      expect(api.allowed, JSON.stringify(api.decision.reasons)).toBe(true);
      expect(api.decision.limits.rate.find((r) => r.scope === 'user')?.key).toBe('api/mixed-user');
      if (api.allowed) await api.reservation.release();
    }
    expect((await from('api', 'api:9')).decision.reasons[0]?.code).toBe('rate_limit_user');
    // chat has no bucket at all, and is not limited by either drained bucket
    const chat = await from('telegram', 'telegram:1');
    expect(chat.allowed).toBe(true);
    expect(chat.decision.limits.rate).toEqual([]);
    if (chat.allowed) await chat.reservation.release();
    // and the cron bucket is still empty: the api spawns did not refill or share it
    expect((await from('cron', 'cron:c')).decision.reasons[0]?.code).toBe('rate_limit_user');
  });

  it('sends the policy only the resolved backend\'s usage, and decides as the policy does on the full input', async () => {
    const g = await gate(capped);
    const held = await g.reserve({ agentId: 'echo', task: 't', caller: caller() });
    expect(held.allowed).toBe(true);
    const onLocal = await g.admit({ agentId: 'codex', task: 'npm test', caller: caller({ channel: { id: 'telegram:2', kind: 'telegram' } }) });
    expect(onLocal.input.usage).toMatchObject({
      total: 1,
      user: 1,
      backends: { local: 1 },
      profiles: { 'local/small': 1, 'local/build': 0, 'local/chat': 0, 'local/wide': 0 },
      userProfiles: { 'local/small': 1, 'local/build': 0 },
      channelProfiles: { 'local/small': 0 },
    });
    expect(Object.keys(onLocal.input.usage.backends)).toEqual(['local']);
    expect(Object.keys(onLocal.input.usage.profiles)).toEqual(['local/small', 'local/build', 'local/chat', 'local/wide']);
    const onOther = await g.admit({ agentId: 'codex', task: 't', execution: { backend: 'other' }, caller: caller() });
    expect(onOther.input.usage).toMatchObject({ total: 1, user: 1, backends: { other: 0 }, profiles: { 'other/default': 0 } });
    expect(Object.keys(onOther.input.usage.profiles)).toEqual(['other/default']);
    const unknown = await g.admit({ agentId: 'codex', task: 't', execution: { backend: 'nope' }, caller: caller() });
    expect(unknown.input.usage).toMatchObject({ backends: {}, profiles: {}, userProfiles: {}, channelProfiles: {} });
    expect(unknown.decision.reasons[0]?.code).toBe('unknown_backend');
    // The gate leaves the catalog out of what it sends (the engine holds it); the full input decides alike.
    for (const res of [onLocal, onOther, unknown]) expect(g.policy.evaluate(res.input).decision).toEqual(res.decision);
    expect(Object.keys(onLocal.input.catalog.backends)).toEqual(['local', 'other']);
    await held.reservation?.release();
  });

  it('1,000 concurrent reserves against a cap of 5 admit exactly 5; after release the slots are reusable', async () => {
    const g = await gate({ agents: { executionBackends: { l: { type: 'process', profiles: { p: { maxConcurrent: { profile: 5 } } } } } } });
    const request = (i: number) => ({ agentId: 'echo', task: 't', caller: caller({ user: { id: `u${i}`, roles: [] }, channel: { id: `c${i}`, kind: 'telegram' } }) });
    const results = await Promise.all(Array.from({ length: 1000 }, (_, i) => g.reserve(request(i))));
    const won = results.filter((r) => r.allowed);
    expect(won).toHaveLength(5);
    expect(results.filter((r) => !r.allowed && r.decision.reasons[0]?.code === 'concurrency_limit_profile')).toHaveLength(995);
    for (const r of won) if (r.allowed) expect(await r.reservation.release()).toBe(true);
    for (const r of won) if (r.allowed) expect(await r.reservation.release()).toBe(false);
    const again = await Promise.all(Array.from({ length: 20 }, (_, i) => g.reserve(request(2000 + i))));
    expect(again.filter((r) => r.allowed)).toHaveLength(5);
  });

  it('writes one decision log line per decision, with revision and secrets redacted', async () => {
    const log = memoryDecisionLog();
    const g = await gate(capped, { decisionLog: log });
    const res = await g.admit({ agentId: 'echo', task: 'use key sk-abcdefghijklmnopqrstuvwxyz123456 and Bearer abcdefghijklmnop1234', caller: caller() });
    expect(log.entries).toHaveLength(1);
    const entry = log.entries[0]!;
    expect(entry).toMatchObject({ decision_id: res.decisionId, bundles: { spawngate: { revision: (await readBundle(SHIPPED_BUNDLE)).revision } }, path: 'spawngate/admission/decision', stage: 'policy', result: { allow: true } });
    expect(Date.parse(entry.timestamp)).not.toBeNaN();
    expect(entry.catalog_revision).toMatch(/^[0-9a-f]{64}$/);
    const text = JSON.stringify(entry.input);
    expect(text).not.toContain('sk-abcdefghijklmnopqrstuvwxyz123456');
    expect(text).not.toContain('abcdefghijklmnop1234');
    expect(text).toContain('[REDACTED]');
  });

  it('rejects malformed requests with the JSON path of every fault, and reserves nothing', async () => {
    const g = await gate(capped);
    const bad = [
      [{ agentId: 7, task: 't', caller: caller() }, 'agentId'],
      [{ agentId: 'echo', task: 't', caller: caller({ depth: -1 }) }, 'caller.depth'],
      [{ agentId: 'echo', task: 't', caller: caller(), surprise: true }, 'surprise'],
      [{ agentId: 'echo', task: 'x'.repeat(70_000), caller: caller() }, 'task'],
      [{ agentId: 'echo', task: 't', caller: caller({ channel: { id: 'c', kind: 'telegram', interactive: 'yes' } }) }, 'caller.channel.interactive'],
      [{ agentId: 'echo', task: '  ', caller: caller() }, 'task'],
      [{ agentId: 'echo', cwd: 'rel', caller: caller() }, 'cwd'],
    ] as const;
    for (const [request, path] of bad) {
      const err = await g.reserve(raw(request)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RequestError);
      expect((err as RequestError).issues.map((i) => i.path)).toContain(path);
    }
    expect(await g.store.active()).toHaveLength(0);
  });
});
