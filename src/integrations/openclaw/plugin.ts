/**
 * The spawngate plugin for OpenClaw: admission on `sessions_spawn` (before_tool_call), ACP
 * sessions in spawngate workers (an ACP runtime backend), and slots that come back whatever
 * OpenClaw does (child end hooks, a claim window for spawns OpenClaw refuses after admission,
 * and the store's leases for everything lost). Shared state: ./state.ts.
 */
import type { AllowedReservation } from '../../sessions/types.js';
import type { Spawngate } from '../../spawngate.js';
import { flushTelemetry } from '../../telemetry/sdk.js';
import { parsePluginConfig, pluginConfigJsonSchema } from './config.js';
import type { OpenClawConfigView, ToolContext } from './request.js';
import { parseSessionKey, requestFromSpawn } from './request.js';
import { createAcpRuntime } from './runtime.js';
import type { Logger, PendingSpawn, PluginState } from './state.js';
import { claimPending, describe, dropPending, gateOf, PLUGIN_ID, pluginState, rememberLineage } from './state.js';

export { PLUGIN_ID } from './state.js';

async function releaseQuietly(state: PluginState, reserved: AllowedReservation, why: string): Promise<void> {
  try {
    if (await reserved.reservation.release()) state.logger.info(`released ${reserved.reservation.spawnId} (${why})`);
  } catch (err) {
    // The lease lapses by itself when nobody renews it.
    state.logger.warn(`release of ${reserved.reservation.spawnId} failed (${why}); its lease lapses: ${describe(err)}`);
  }
}

/** Binds a subagent child to its reservation until it ends, and at most for the decision's TTL. */
function bindReservation(state: PluginState, childKey: string, reserved: AllowedReservation, mode: 'run' | 'session'): void {
  const timer = setTimeout(() => void endChild(state, childKey, 'ttl'), reserved.decision.ttlSeconds * 1000);
  timer.unref();
  state.bound.set(childKey, { kind: 'reservation', reserved, timer, mode });
}

/** A child's run is over: a one-run subagent's slot comes back (an ACP session or a persistent subagent may take more runs). */
export async function runEnded(state: PluginState, childKey: string | undefined, why: string): Promise<void> {
  if (!childKey || childKey.includes(':acp:')) return;
  const bound = state.bound.get(childKey);
  if (bound?.kind === 'reservation' && bound.mode === 'run') await endChild(state, childKey, why);
}

/** A child ended (or was deleted): its slot comes back, and an ACP worker is closed. */
export async function endChild(state: PluginState, childKey: string, why: string): Promise<void> {
  const bound = state.bound.get(childKey);
  if (!bound) return;
  state.bound.delete(childKey);
  if (bound.kind === 'reservation') {
    clearTimeout(bound.timer);
    await releaseQuietly(state, bound.reserved, why);
    return;
  }
  const gate = await gateOf(state).catch(() => null);
  await gate?.close(bound.spawnId).catch((err: unknown) => state.logger.warn(`closing worker ${bound.spawnId} (${why}) failed: ${describe(err)}`));
}

export interface HookResult {
  block?: boolean;
  blockReason?: string;
  params?: Record<string, unknown>;
}

/** before_tool_call for sessions_spawn: decide, take the slots, rewrite the params from the decision. */
export async function admitSpawn(state: PluginState, params: Record<string, unknown>, ctx: ToolContext): Promise<HookResult | undefined> {
  const cfg = state.config ?? {};
  const mapped = requestFromSpawn(params, ctx, state.openclawConfig, { ownerUser: cfg.ownerUser ?? 'owner' });
  // A child of a spawn this plugin admitted spawns within its root's tree.
  const lineage = state.lineage.get(mapped.request.caller.sessionKey);
  if (lineage) mapped.request.caller = { ...mapped.request.caller, parentSessionKey: lineage.parent, rootSessionKey: lineage.root };
  if (cfg.waitSeconds) mapped.request.waitSeconds = cfg.waitSeconds;
  let gate: Spawngate;
  try {
    gate = await gateOf(state);
  } catch (err) {
    return { block: true, blockReason: `spawngate is unavailable, so no agent may be spawned (${describe(err)})` };
  }
  let result;
  try {
    result = await gate.reserve(mapped.request);
  } catch (err) {
    return { block: true, blockReason: `spawngate refused the spawn: ${describe(err)}` };
  }
  if (!result.allowed) {
    const reason = result.decision.reasons[0];
    return { block: true, blockReason: `spawngate denied this spawn [${reason?.code ?? 'denied'}]: ${reason?.message ?? 'not allowed'} (decision ${result.decisionId})` };
  }
  const claimMs = (cfg.claimSeconds ?? 120) * 1000;
  const entry: PendingSpawn = {
    reserved: result,
    runtime: mapped.runtime,
    agentId: mapped.request.agentId,
    openclawAgentId: mapped.openclawAgentId,
    toolCallId: ctx.toolCallId ?? null,
    timer: setTimeout(() => {
      if (dropPending(state, entry)) void releaseQuietly(state, entry.reserved, `no child started within ${claimMs / 1000}s`);
    }, claimMs),
  };
  entry.timer.unref();
  state.pending.push(entry);
  // The child may not outlive what the policy granted.
  const ttl = result.decision.ttlSeconds;
  const asked = typeof params.runTimeoutSeconds === 'number' && params.runTimeoutSeconds > 0 ? params.runTimeoutSeconds : null;
  return { params: { ...params, runTimeoutSeconds: asked === null ? ttl : Math.min(asked, ttl) } };
}

/** after_tool_call (model and cron paths): a spawn OpenClaw itself refused gives its slot back at once. */
export async function afterSpawn(state: PluginState, event: { toolCallId?: string; error?: string; result?: unknown }, ctx: ToolContext): Promise<void> {
  const id = event.toolCallId ?? ctx.toolCallId;
  if (!id) return;
  const text = (() => {
    try {
      return JSON.stringify(event.result ?? null);
    } catch {
      return '';
    }
  })();
  const accepted = !event.error && text.includes('childSessionKey');
  if (accepted) return;
  const entry = state.pending.find((p) => p.toolCallId === id);
  if (entry && dropPending(state, entry)) await releaseQuietly(state, entry.reserved, `sessions_spawn failed: ${event.error ?? 'not accepted'}`);
}

/** subagent_spawned: the child that an admitted spawn became. */
export function childSpawned(state: PluginState, event: { childSessionKey?: string; agentId?: string; mode?: string }): void {
  const key = event.childSessionKey;
  if (!key || state.bound.has(key)) return;
  const acp = parseSessionKey(key).depth > 0 && key.includes(':acp:');
  const agent = event.agentId ?? parseSessionKey(key).agentId;
  const entry = claimPending(state, (p) => p.runtime === (acp ? 'acp' : 'subagent') && (agent === undefined || agent === null || p.openclawAgentId === agent));
  if (!entry) return;
  const { caller } = entry.reserved.request;
  rememberLineage(state, key, caller.sessionKey, caller.rootSessionKey);
  const mode = event.mode === 'session' ? 'session' : 'run';
  if (entry.runtime === 'subagent') bindReservation(state, key, entry.reserved, mode);
  else {
    // An ACP child whose session is not open yet: ensureSession finds its reservation by key, and
    // one that never opens gives it back after the claim window, as an unclaimed spawn does.
    const claimMs = (state.config?.claimSeconds ?? 120) * 1000;
    const timer = setTimeout(() => {
      if (state.bound.get(key)?.kind === 'reservation') void endChild(state, key, `no ACP session opened within ${claimMs / 1000}s`);
    }, claimMs);
    timer.unref();
    state.bound.set(key, { kind: 'reservation', reserved: entry.reserved, timer, mode });
  }
}

export interface OpenClawPluginApi {
  id?: string;
  registrationMode?: string;
  config?: unknown;
  pluginConfig?: Record<string, unknown>;
  logger?: Partial<Logger>;
  on(hook: string, handler: (event: never, ctx: never) => unknown, options?: { matcher?: string[]; priority?: number }): void;
}

export interface PluginDeps {
  /** `registerAcpRuntimeBackend` from `openclaw/plugin-sdk/acp-runtime-backend`, resolved by OpenClaw for its plugins. */
  registerAcpRuntimeBackend?: (backend: { id: string; runtime: unknown; healthy?: () => boolean }) => void;
}

/** Wraps a hook so that nothing it throws or rejects reaches OpenClaw (an unhandled rejection ends the gateway). */
function guarded<A extends unknown[], R>(state: PluginState, name: string, fn: (...args: A) => Promise<R> | R, onError: (err: unknown) => R): (...args: A) => Promise<R> {
  return async (...args: A) => {
    try {
      return await fn(...args);
    } catch (err) {
      state.logger.error(`${name} failed: ${describe(err)}`);
      return onError(err);
    }
  };
}

export function createOpenClawPlugin(deps: PluginDeps = {}) {
  return {
    id: PLUGIN_ID,
    name: 'spawngate',
    description: 'Admission (Rego/WASM policy, caps, rate limits) on sessions_spawn, and ACP sessions in spawngate workers (process, Docker, Kubernetes)',
    configSchema: pluginConfigJsonSchema(),
    register(api: OpenClawPluginApi): void {
      const state = pluginState();
      if (api.logger?.info && api.logger.warn && api.logger.error) {
        const l = api.logger as Logger;
        state.logger = { info: (m) => l.info(m), warn: (m) => l.warn(m), error: (m) => l.error(m) };
      }
      // The first registration's config wins: a second copy must not start a second gate.
      if (!state.config && !state.configError) {
        try {
          state.config = parsePluginConfig(api.pluginConfig);
        } catch (err) {
          // Not thrown: a plugin that fails to load leaves sessions_spawn unguarded. Its hooks stay, and block every spawn with the reason.
          state.configError = err as Error;
          state.logger.error((err as Error).message);
        }
      }
      if (api.config !== undefined) state.openclawConfig = api.config as OpenClawConfigView;

      api.on(
        'before_tool_call',
        guarded(
          state,
          'before_tool_call',
          (event: { toolName?: string; params?: Record<string, unknown> }, ctx: ToolContext) =>
            event.toolName === 'sessions_spawn' ? admitSpawn(state, event.params ?? {}, ctx ?? {}) : undefined,
          (err): HookResult | undefined => ({ block: true, blockReason: `spawngate failed closed: ${describe(err)}` }),
        ),
        { matcher: ['sessions_spawn'] },
      );
      api.on(
        'after_tool_call',
        guarded(state, 'after_tool_call', (event: { toolName?: string; toolCallId?: string; error?: string; result?: unknown }, ctx: ToolContext) => (event.toolName === 'sessions_spawn' ? afterSpawn(state, event, ctx ?? {}) : undefined), () => undefined),
      );
      api.on('subagent_spawned', guarded(state, 'subagent_spawned', (event: { childSessionKey?: string; agentId?: string }) => childSpawned(state, event), () => undefined));
      // The prompt signal that a child's run is over (subagent_ended can come minutes later, or only after a restart, for /tools/invoke children).
      // Only a subagent's slot is freed here: an ACP session may take more runs, and is closed by ACP close or subagent_ended.
      api.on(
        'subagent_progress',
        guarded(state, 'subagent_progress', (event: { phase?: string; childSessionKey?: string; outcome?: string }) => (event.phase === 'ended' ? runEnded(state, event.childSessionKey, `run ended ${event.outcome ?? ''}`.trim()) : undefined), () => undefined),
      );
      // Prompt on every path, /tools/invoke included; OpenClaw delivers it only with
      // plugins.entries.<id>.hooks.allowConversationAccess (it carries the conversation, which is not read).
      api.on('agent_end', guarded(state, 'agent_end', (_event: unknown, ctx: { sessionKey?: string } | undefined) => runEnded(state, ctx?.sessionKey, 'agent_end'), () => undefined));
      api.on('subagent_ended', guarded(state, 'subagent_ended', (event: { targetSessionKey?: string; reason?: string }) => (event.targetSessionKey ? endChild(state, event.targetSessionKey, `subagent_ended ${event.reason ?? ''}`.trim()) : undefined), () => undefined));
      api.on('session_end', guarded(state, 'session_end', (event: { sessionKey?: string; reason?: string }) => (event.sessionKey ? endChild(state, event.sessionKey, `session_end ${event.reason ?? ''}`.trim()) : undefined), () => undefined));
      api.on(
        'gateway_stop',
        guarded(
          state,
          'gateway_stop',
          async () => {
            const gate = state.gate;
            state.gate = null;
            for (const p of state.pending.splice(0)) clearTimeout(p.timer);
            for (const b of state.bound.values()) if (b.kind === 'reservation') clearTimeout(b.timer);
            state.bound.clear();
            // Closes every worker and releases every slot this gateway holds.
            await (await gate?.catch(() => null))?.shutdown();
            // The close spans of that shutdown, before the gateway's process ends.
            await flushTelemetry();
          },
          () => undefined,
        ),
      );

      // Every registration registers (replacing by id): OpenClaw clears its backend registry when it reloads plugins.
      if (deps.registerAcpRuntimeBackend) {
        const id = state.config?.backendId ?? PLUGIN_ID;
        deps.registerAcpRuntimeBackend({ id, runtime: createAcpRuntime(state, id), healthy: () => true });
      }
    },
  };
}

