/**
 * The OpenClaw plugin's hooks and ACP runtime driven directly (the gateway itself is exercised in
 * test/openclaw/): context mapping, process-global state across module copies, the reservation
 * handed from before_tool_call to ensureSession, release on every end signal, and failing closed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createOpenClawPlugin } from '../../src/integrations/openclaw/plugin.js';
import { channelOf, parseSessionKey, requestFromSpawn, traceparentOf, userOf } from '../../src/integrations/openclaw/request.js';
import { pluginState } from '../../src/integrations/openclaw/state.js';
import type { AcpRuntimeEvent } from '../../src/integrations/openclaw/events.js';

const stateDir = mkdtempSync(join(tmpdir(), 'sg-ocp-'));
afterAll(() => rmSync(stateDir, { recursive: true, force: true }));

type Handler = (event: unknown, ctx: unknown) => Promise<unknown>;

/** The slice of OpenClaw's plugin API the plugin uses: hooks recorded, ACP backends captured. */
function fakeApi(pluginConfig: Record<string, unknown>) {
  const hooks = new Map<string, Handler[]>();
  const backends: { id: string; runtime: unknown }[] = [];
  const api = {
    id: 'spawngate',
    pluginConfig,
    config: { agents: { entries: { coder: { runtime: { type: 'acp', acp: { agent: 'echo' } } } } } },
    logger: { info: () => undefined, warn: () => undefined, error: () => undefined },
    on(name: string, handler: (event: never, ctx: never) => unknown) {
      hooks.set(name, [...(hooks.get(name) ?? []), handler as unknown as Handler]);
    },
  };
  const fire = async (name: string, event: unknown, ctx: unknown = {}) => {
    let last: unknown;
    for (const h of hooks.get(name) ?? []) last = await h(event, ctx);
    return last;
  };
  return { api, fire, backends, register: (b: { id: string; runtime: unknown }) => backends.push(b) };
}

const pluginConfig = {
  config: {
    spawngate: { sweepIntervalSeconds: 3600, policyData: { concurrency: { user: 1 }, agents: { deny: ['forbidden'] } } },
    agents: {
      executionBackends: { local: { type: 'process', stateDir, defaultProfile: 'p', profiles: { p: { egress: 'open', ttlSeconds: 600, timeoutSeconds: 120 } } } },
      execution: { default: { backend: 'local', profile: 'p' } },
    },
  },
  claimSeconds: 30,
};

afterEach(async () => {
  const state = pluginState();
  const gate = state.gate;
  state.gate = null;
  state.config = null;
  state.configError = null;
  for (const p of state.pending.splice(0)) clearTimeout(p.timer);
  state.bound.clear();
  state.lineage.clear();
  await (await gate?.catch(() => null))?.shutdown();
});

const chatCtx = { agentId: 'main', sessionKey: 'agent:main:main', toolCallId: 'call-1', requester: { channel: 'webchat', senderIsOwner: true } };

describe('OpenClaw context → spawngate request', () => {
  it('derives channel kind, user and depth the same way on every path', () => {
    expect(channelOf({ requester: { channel: 'Telegram', accountId: 'a1' } })).toEqual({ kind: 'telegram', id: 'telegram:a1' });
    expect(channelOf({ sessionKey: 'agent:main:cron:nightly:run:abc' })).toEqual({ kind: 'cron', id: 'cron:nightly' });
    expect(channelOf({ sessionKey: 'agent:main:main', toolCallId: 'http-direct-operator-1' })).toEqual({ kind: 'api', id: 'api:main' });
    expect(channelOf({ sessionKey: 'agent:main:main' }).kind).toBe('unknown');
    expect(userOf({ requester: { channel: 'telegram', senderId: '42', roleIds: ['dev'] } }, { ownerUser: 'owner' })).toEqual({ id: 'telegram:42', roles: ['dev'] });
    expect(userOf({ sessionKey: 'agent:main:cron:j:run:s' }, { ownerUser: 'boss' })).toEqual({ id: 'boss', roles: ['owner'] });
    expect(parseSessionKey('agent:main:subagent:u1:acp:u2').depth).toBe(2);
    expect(traceparentOf({ traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), traceFlags: '01' })).toBe(`00-${'a'.repeat(32)}-${'b'.repeat(16)}-01`);
    expect(traceparentOf({ traceId: '0'.repeat(32), spanId: 'b'.repeat(16) })).toBeUndefined();
    const mapped = requestFromSpawn({ task: 't', runtime: 'acp', agentId: 'coder', cwd: '/srv/x', model: 'm' }, chatCtx, { agents: { entries: { coder: { runtime: { acp: { agent: 'codex' } } } } } }, { ownerUser: 'owner' });
    expect(mapped.request).toMatchObject({ runtime: 'acp', agentId: 'codex', task: 't', cwd: '/srv/x', model: 'm', caller: { channel: { kind: 'webchat' }, user: { id: 'owner' } } });
    expect(mapped.openclawAgentId).toBe('coder');
  });
});

describe('the plugin', () => {
  it('shares one state between module copies: admitted by one copy, released through the other', async () => {
    const a = fakeApi(pluginConfig);
    const b = fakeApi(pluginConfig);
    createOpenClawPlugin({ registerAcpRuntimeBackend: a.register }).register(a.api);
    createOpenClawPlugin({ registerAcpRuntimeBackend: b.register }).register(b.api);
    const allowed = (await a.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'hi' } }, chatCtx)) as { params?: { runTimeoutSeconds?: number }; blockReason?: string };
    expect(allowed.blockReason).toBeUndefined();
    expect(allowed.params?.runTimeoutSeconds).toBe(600);
    // The cap of 1 is taken: a second spawn is blocked, whichever copy sees it.
    const blocked = (await b.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'hi' } }, chatCtx)) as { block?: boolean; blockReason?: string };
    expect(blocked.block).toBe(true);
    expect(blocked.blockReason).toMatch(/\[concurrency_limit_user\]/);
    await b.fire('subagent_spawned', { childSessionKey: 'agent:main:subagent:c1', agentId: 'main' });
    await a.fire('subagent_progress', { phase: 'ended', childSessionKey: 'agent:main:subagent:c1', outcome: 'ok' });
    const gate = await pluginState().gate;
    expect(await gate?.store.active()).toEqual([]);
  });

  it('frees a one-run child on agent_end, but a persistent one only when it ends', async () => {
    const f = fakeApi(pluginConfig);
    createOpenClawPlugin({}).register(f.api);
    await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x', mode: 'session' } }, chatCtx);
    await f.fire('subagent_spawned', { childSessionKey: 'agent:main:subagent:s1', agentId: 'main', mode: 'session' });
    const gate = await pluginState().gate;
    await f.fire('agent_end', { success: true }, { sessionKey: 'agent:main:subagent:s1' });
    expect(await gate?.store.active()).toHaveLength(1);
    await f.fire('subagent_ended', { targetSessionKey: 'agent:main:subagent:s1', reason: 'session-delete' });
    expect(await gate?.store.active()).toEqual([]);

    await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x' } }, chatCtx);
    await f.fire('subagent_spawned', { childSessionKey: 'agent:main:subagent:r1', agentId: 'main', mode: 'run' });
    await f.fire('agent_end', { success: true }, { sessionKey: 'agent:main:subagent:r1' });
    expect(await gate?.store.active()).toEqual([]);
  });

  it("counts a child's own spawns in its root's tree: the budget holds however deep the spawns go", async () => {
    const trees = { ...pluginConfig, config: { ...pluginConfig.config, spawngate: { ...pluginConfig.config.spawngate, policyData: { concurrency: { user: null }, trees: { maxSpawns: 2 } } } } };
    const f = fakeApi(trees);
    createOpenClawPlugin({}).register(f.api);
    const spawnFrom = async (sessionKey: string, toolCallId: string) =>
      (await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x' } }, { ...chatCtx, sessionKey, toolCallId })) as { block?: boolean; blockReason?: string } | undefined;
    expect((await spawnFrom('agent:main:main', 'call-a'))?.block).toBeUndefined();
    await f.fire('subagent_spawned', { childSessionKey: 'agent:main:subagent:a', agentId: 'main', mode: 'session' });
    expect(pluginState().lineage.get('agent:main:subagent:a')).toEqual({ parent: 'agent:main:main', root: 'agent:main:main' });
    // The child spawns a grandchild: same tree, second spawn.
    expect((await spawnFrom('agent:main:subagent:a', 'call-b'))?.block).toBeUndefined();
    await f.fire('subagent_spawned', { childSessionKey: 'agent:main:subagent:a:subagent:b', agentId: 'main', mode: 'session' });
    expect(pluginState().lineage.get('agent:main:subagent:a:subagent:b')).toEqual({ parent: 'agent:main:subagent:a', root: 'agent:main:main' });
    // The grandchild's spawn would be the tree's third.
    const third = await spawnFrom('agent:main:subagent:a:subagent:b', 'call-c');
    expect(third?.block).toBe(true);
    expect(third?.blockReason).toMatch(/\[tree_spawns_exhausted\]: the spawn tree of session agent:main:main has made 2 of its 2 spawns/);
    // Another root session has a tree of its own.
    expect((await spawnFrom('agent:other:main', 'call-d'))?.block).toBeUndefined();
  });

  it('with waitSeconds, a sessions_spawn that meets a full cap waits for the slot a finished child frees', async () => {
    const f = fakeApi({ ...pluginConfig, waitSeconds: 30 });
    createOpenClawPlugin({}).register(f.api);
    const first = (await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x' } }, chatCtx)) as { block?: boolean } | undefined;
    expect(first?.block).toBeUndefined();
    await f.fire('subagent_spawned', { childSessionKey: 'agent:main:subagent:w1', agentId: 'main', mode: 'run' });
    const second = f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'y' } }, { ...chatCtx, toolCallId: 'call-2' }) as Promise<{ block?: boolean; blockReason?: string } | undefined>;
    const gate = await pluginState().gate;
    for (let i = 0; i < 1000 && ((await gate?.store.queue?.list()) ?? []).length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect((await gate?.store.queue?.list())?.length).toBe(1);
    // The first child's run ends: its slot goes to the waiting spawn, which is admitted, not blocked.
    await f.fire('subagent_progress', { phase: 'ended', childSessionKey: 'agent:main:subagent:w1', outcome: 'ok' });
    expect((await second)?.block).toBeUndefined();
    expect(await gate?.store.queue?.list()).toEqual([]);
  });

  it('denies with the code, fails closed on a broken config, and never throws into OpenClaw', async () => {
    const f = fakeApi(pluginConfig);
    createOpenClawPlugin({}).register(f.api);
    const denied = (await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x', agentId: 'forbidden' } }, chatCtx)) as { block?: boolean; blockReason?: string };
    expect(denied.blockReason).toMatch(/^spawngate denied this spawn \[agent_not_allowed\]/);
    // Other tools pass untouched.
    expect(await f.fire('before_tool_call', { toolName: 'exec', params: {} }, chatCtx)).toBeUndefined();

    const state = pluginState();
    await (await state.gate)?.shutdown();
    state.gate = null;
    state.config = { config: { agents: { executionBackends: { x: { type: 'nope' } } } } };
    const failed = (await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x' } }, chatCtx)) as { block?: boolean; blockReason?: string };
    expect(failed.block).toBe(true);
    expect(failed.blockReason).toMatch(/spawngate is unavailable.*CONFIG_INVALID/s);
  });

  it('an invalid plugin config loads anyway and blocks every spawn with the reason (never fails open)', async () => {
    const f = fakeApi({ claimSeconds: 0, surprise: true });
    expect(() => createOpenClawPlugin({}).register(f.api)).not.toThrow();
    const blocked = (await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x' } }, chatCtx)) as { block?: boolean; blockReason?: string };
    expect(blocked.block).toBe(true);
    expect(blocked.blockReason).toMatch(/claimSeconds: .*at least 1/);
    expect(blocked.blockReason).toMatch(/surprise: unknown key/);
  });

  it('releases a spawn OpenClaw refused after admission (after_tool_call error, or the claim window)', async () => {
    const f = fakeApi(pluginConfig);
    createOpenClawPlugin({}).register(f.api);
    await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x' } }, chatCtx);
    await f.fire('after_tool_call', { toolName: 'sessions_spawn', toolCallId: 'call-1', error: 'maxChildrenPerAgent reached' }, chatCtx);
    const gate = await pluginState().gate;
    expect(await gate?.store.active()).toEqual([]);
  });

  it('an ACP child announced by subagent_spawned before its session opens: ensureSession takes that reservation by key', async () => {
    const f = fakeApi(pluginConfig);
    createOpenClawPlugin({ registerAcpRuntimeBackend: f.register }).register(f.api);
    await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x', runtime: 'acp', agentId: 'coder' } }, chatCtx);
    await f.fire('subagent_spawned', { childSessionKey: 'agent:coder:acp:k1', agentId: 'coder', mode: 'run' });
    expect(pluginState().pending).toHaveLength(0);
    const runtime = f.backends[0]?.runtime as { ensureSession(i: unknown): Promise<{ backendSessionId: string }>; close(i: unknown): Promise<void> };
    const gate = await pluginState().gate;
    const reservedSpawnId = (await gate?.store.active())?.[0]?.spawnId;
    const handle = await runtime.ensureSession({ sessionKey: 'agent:coder:acp:k1', agentId: 'coder', agent: 'coder', mode: 'oneshot' });
    expect(handle.backendSessionId).toBe(reservedSpawnId);
    expect(await gate?.store.active()).toHaveLength(1);
    // subagent_ended for an ACP child closes its worker (OpenClaw forgot the ACP close).
    await f.fire('subagent_ended', { targetSessionKey: 'agent:coder:acp:k1', reason: 'subagent-complete' });
    expect(await gate?.store.active()).toEqual([]);
    expect(await gate?.list()).toEqual([]);
  });

  it('after a gateway restart, a turn on the old handle starts a new worker that resumes the agent session', async () => {
    const f = fakeApi(pluginConfig);
    createOpenClawPlugin({ registerAcpRuntimeBackend: f.register }).register(f.api);
    const runtime = f.backends[0]?.runtime as {
      ensureSession(i: unknown): Promise<{ sessionKey: string; agentId?: string; backend: string; runtimeSessionName: string; backendSessionId: string; agentSessionId?: string }>;
      runTurn(i: unknown): AsyncIterable<AcpRuntimeEvent>;
      getStatus(i: unknown): Promise<{ backendSessionId?: string; agentSessionId?: string }>;
      close(i: unknown): Promise<void>;
    };
    await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x', runtime: 'acp', agentId: 'coder' } }, chatCtx);
    const handle = await runtime.ensureSession({ sessionKey: 'agent:coder:acp:r1', agentId: 'coder', agent: 'coder', mode: 'persistent' });
    // The restart: the gate and every worker go (gateway_stop), a new gate comes with the next call.
    await f.fire('gateway_stop', {});
    const reopened = await runtime.ensureSession({ sessionKey: 'agent:coder:acp:r1', agentId: 'coder', agent: 'coder', mode: 'persistent', persistedHandle: handle });
    expect(reopened).toEqual(handle);
    const events: AcpRuntimeEvent[] = [];
    for await (const e of runtime.runTurn({ handle: reopened, text: 'again', mode: 'prompt', requestId: 'r2' })) events.push(e);
    expect(events.at(-1)).toMatchObject({ type: 'done', status: 'completed' });
    const status = await runtime.getStatus({ handle: reopened });
    expect(status.backendSessionId).not.toBe(handle.backendSessionId);
    expect(status.agentSessionId).toBe(handle.agentSessionId);
    await runtime.close({ handle: reopened, reason: 'done' });
    expect(await (await pluginState().gate)?.store.active()).toEqual([]);
  });

  it('runs an ACP session on the reservation taken at admission: one decision, one slot, events, close', async () => {
    const f = fakeApi(pluginConfig);
    createOpenClawPlugin({ registerAcpRuntimeBackend: f.register }).register(f.api);
    await f.fire('before_tool_call', { toolName: 'sessions_spawn', params: { task: 'x', runtime: 'acp', agentId: 'coder' } }, chatCtx);
    const gate = await pluginState().gate;
    expect(await gate?.store.active()).toHaveLength(1);
    const runtime = f.backends[0]?.runtime as {
      ensureSession(i: unknown): Promise<{ backendSessionId: string; agentSessionId?: string; appliedModel?: unknown }>;
      runTurn(i: unknown): AsyncIterable<AcpRuntimeEvent>;
      getStatus(i: unknown): Promise<{ summary: string; details?: { nativeId?: string } }>;
      close(i: unknown): Promise<void>;
    };
    // OpenClaw passes its agent entry id as `agent`; the plugin runs the entry's harness (echo).
    const handle = await runtime.ensureSession({ sessionKey: 'agent:coder:acp:s1', agentId: 'coder', agent: 'coder', mode: 'oneshot', model: 'echo-2' });
    // Still one slot: the worker holds the admitted reservation, not a second one.
    expect(await gate?.store.active()).toHaveLength(1);
    expect(handle.agentSessionId).toBeTruthy();
    // The profile accepts a model by default, and echo offers echo-2: applied.
    expect(handle.appliedModel).toEqual({ kind: 'applied', model: 'echo-2' });
    // OpenClaw's task maintenance may run before it registers the new session's task: that
    // "orphan" close is refused until the first turn (or the grace) and the worker stays.
    await expect(runtime.close({ handle, reason: 'orphaned-parent-task-cleanup' })).rejects.toThrow(/not closing ACP session agent:coder:acp:s1 as orphaned/);
    expect(await gate?.list()).toHaveLength(1);
    const events: AcpRuntimeEvent[] = [];
    for await (const e of runtime.runTurn({ handle, text: 'hi', mode: 'prompt', requestId: 'r1' })) events.push(e);
    expect(events.filter((e) => e.type === 'text_delta').map((e) => (e as { text: string }).text).join('')).toBe('echo[echo-2]: hi');
    expect(events.at(-1)).toMatchObject({ type: 'done', status: 'completed' });
    const status = await runtime.getStatus({ handle });
    expect(status.summary).toMatch(/running \(ready\) on local\/p as \d+/);
    // A persisted handle re-attaches to the same worker; close removes it and frees the slot.
    const again = await runtime.ensureSession({ sessionKey: 'agent:coder:acp:s1', agent: 'echo', mode: 'oneshot', persistedHandle: handle });
    expect(again.backendSessionId).toBe(handle.backendSessionId);
    await runtime.close({ handle, reason: 'orphaned-parent-task-cleanup' });
    expect(await gate?.store.active()).toEqual([]);
    expect(await gate?.list()).toEqual([]);
    // Closing again (OpenClaw's cleanup after a restart) is a no-op, not a fresh worker.
    await runtime.close({ handle, reason: 'cleanup' });
    expect(await gate?.list()).toEqual([]);
  });
});
