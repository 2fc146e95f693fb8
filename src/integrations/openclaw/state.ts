/**
 * The plugin's process-global state. OpenClaw loads a plugin module more than once per process
 * ("full" and "discovery" registrations, copies of the code): hooks of one spawn can reach
 * different copies. Everything that must be shared — the gate, admitted spawns waiting for their
 * child, which child holds what — lives in one object on globalThis, created by whichever copy
 * comes first.
 */
import { hostname } from 'node:os';
import { startTelemetry } from '../../telemetry/sdk.js';
import { isSpawngateError } from '../../errors.js';
import type { AllowedReservation } from '../../sessions/types.js';
import type { Spawngate } from '../../spawngate.js';
import { createSpawngate } from '../../spawngate.js';
import type { PluginConfig } from './config.js';
import type { OpenClawConfigView } from './request.js';

export const PLUGIN_ID = 'spawngate';
const STATE = Symbol.for('spawngate.openclaw.state.v1');

/** An admitted sessions_spawn waiting for its child (subagent_spawned, or ensureSession for ACP). */
export interface PendingSpawn {
  reserved: AllowedReservation;
  runtime: 'acp' | 'subagent';
  /** spawngate agent id (for ACP: the harness). */
  agentId: string;
  openclawAgentId: string;
  toolCallId: string | null;
  timer: NodeJS.Timeout;
}

/** A child that holds a slot: a subagent's reservation, or an ACP session's worker. */
export type Bound =
  | {
      kind: 'reservation';
      reserved: AllowedReservation;
      timer: NodeJS.Timeout;
      /** "run": one run, then the child is done (its end frees the slot); "session": it lives until ended or deleted. */
      mode: 'run' | 'session';
    }
  | {
      kind: 'worker';
      spawnId: string;
      /** When ensureSession placed it, and whether a turn reached it since (see the runtime's close). */
      startedAt: number;
      turned: boolean;
    };

export interface PluginState {
  gate: Promise<Spawngate> | null;
  config: PluginConfig | null;
  /** The plugin config was invalid: every spawn is blocked with this. */
  configError: Error | null;
  openclawConfig: OpenClawConfigView | undefined;
  pending: PendingSpawn[];
  /** child session key → what it holds */
  bound: Map<string, Bound>;
  /**
   * child session key → the session that spawned it and the root of its spawn tree, so that a
   * child's own spawns count in its root's tree budget (OpenClaw's hook context names only the
   * caller's session). Oldest first; at most MAX_LINEAGE are kept.
   */
  lineage: Map<string, { parent: string; root: string }>;
  logger: Logger;
}

export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

const consoleLogger: Logger = {
  info: (m) => console.log(`[spawngate] ${m}`),
  warn: (m) => console.warn(`[spawngate] ${m}`),
  error: (m) => console.error(`[spawngate] ${m}`),
};

export const MAX_LINEAGE = 10_000;

/** Remembers where a child sits in its spawn tree; past MAX_LINEAGE the oldest entries go first. */
export function rememberLineage(state: PluginState, child: string, parent: string, root: string): void {
  state.lineage.delete(child);
  state.lineage.set(child, { parent, root });
  for (const oldest of state.lineage.keys()) {
    if (state.lineage.size <= MAX_LINEAGE) break;
    state.lineage.delete(oldest);
  }
}

export function pluginState(): PluginState {
  const holder = globalThis as unknown as Record<symbol, PluginState | undefined>;
  holder[STATE] ??= { gate: null, config: null, configError: null, openclawConfig: undefined, pending: [], bound: new Map(), lineage: new Map(), logger: consoleLogger };
  return holder[STATE];
}

/** The one gate of this process, created on first use; a failure is retried by the next caller. */
export function gateOf(state: PluginState): Promise<Spawngate> {
  if (state.configError) return Promise.reject(state.configError);
  if (!state.gate) {
    const cfg = state.config ?? {};
    // Trace export from the gateway's OTEL_* unless OpenClaw (or another plugin) registered an SDK already.
    state.gate = startTelemetry({ service: 'spawngate', attributes: { 'spawngate.role': 'openclaw-plugin' } })
      .catch((err: unknown) => state.logger.warn(`trace export could not start: ${(err as Error).message}`))
      .then(() =>
        createSpawngate({
          ...(cfg.config === undefined ? {} : { config: cfg.config }),
          ...(cfg.bundle ? { bundle: cfg.bundle } : {}),
          owner: cfg.owner ?? `openclaw-${hostname()}`,
          warmPools: true,
        }),
      );
    state.gate.catch((err: unknown) => {
      state.logger.error(`spawngate could not start; every sessions_spawn is blocked until it can: ${(err as Error).message}`);
      state.gate = null;
    });
  }
  return state.gate;
}

export function describe(err: unknown): string {
  return isSpawngateError(err) ? `${err.code}: ${err.message}` : (err as Error).message;
}

export function dropPending(state: PluginState, entry: PendingSpawn): boolean {
  const at = state.pending.indexOf(entry);
  if (at < 0) return false;
  state.pending.splice(at, 1);
  clearTimeout(entry.timer);
  return true;
}

/** The oldest admitted spawn that a child of this runtime and agent can claim. */
export function claimPending(state: PluginState, match: (p: PendingSpawn) => boolean): PendingSpawn | null {
  const found = state.pending.find(match) ?? null;
  if (found) dropPending(state, found);
  return found;
}

