/**
 * OpenClaw's ACP runtime backend contract (plugin SDK `AcpRuntime`) on spawngate workers: an ACP
 * session is a worker, placed by the decision taken when `sessions_spawn` was admitted (its
 * reservation is handed over: no second decision), and its turns are the worker's NDJSON events.
 */
import type { SpawnRequestInput } from '../../admission/request.js';
import { AdmissionDeniedError, isSpawngateError } from '../../errors.js';
import type { AllowedReservation, WorkerHandle } from '../../sessions/types.js';
import type { Spawngate } from '../../spawngate.js';
import type { AcpRuntimeEvent, AcpTurnResult } from './events.js';
import { resultOf, toAcpEvent } from './events.js';
import { harnessOf, parseSessionKey, requestForSession } from './request.js';
import type { PluginState } from './state.js';
import { claimPending, gateOf } from './state.js';

export interface AcpHandle {
  sessionKey: string;
  agentId?: string;
  backend: string;
  runtimeSessionName: string;
  cwd?: string;
  backendSessionId?: string;
  agentSessionId?: string;
  appliedModel?: { kind: 'applied'; model: string } | { kind: 'dropped' };
}

export interface EnsureInput {
  sessionKey: string;
  agentId?: string;
  persistedHandle?: AcpHandle;
  agent: string;
  mode: 'persistent' | 'oneshot';
  resumeSessionId?: string;
  model?: string;
  modelExplicit?: boolean;
  cwd?: string;
  env?: Record<string, string>;
}

export interface TurnInput {
  handle: AcpHandle;
  text: string;
  mode?: string;
  requestId: string;
  signal?: AbortSignal;
}

/** OpenClaw's close reason when its task maintenance finds a parent-owned ACP session without a task. */
const ORPHAN_CLEANUP = 'orphaned-parent-task-cleanup';
/** How long a new session is protected from that close before its first turn; below the maintenance interval (60 s). */
const ORPHAN_GRACE_MS = 45_000;

/** Spawn ids of workers that replaced one lost with a gateway restart (old → new). */
const REPLACED = Symbol.for('spawngate.openclaw.replaced.v1');

function replaced(): Map<string, string> {
  const holder = globalThis as unknown as Record<symbol, Map<string, string> | undefined>;
  holder[REPLACED] ??= new Map();
  return holder[REPLACED];
}

/** For `.catch()`: a worker that is already gone is what close/cancel/status wanted anyway. */
function unlessNotFound<T>(fallback: T): (err: unknown) => T {
  return (err: unknown) => {
    if (isSpawngateError(err) && err.code === 'SPAWN_NOT_FOUND') return fallback;
    throw err;
  };
}

function describe(err: unknown): string {
  if (err instanceof AdmissionDeniedError) return `spawngate denied this session: ${err.message}`;
  return isSpawngateError(err) ? `${err.code}: ${err.message}` : (err as Error).message;
}

/** Runs fn(); its failure is an Error whose message names spawngate's code, as OpenClaw shows it. */
async function explained<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new Error(`spawngate ${what}: ${describe(err)}`, { cause: err });
  }
}

export function createAcpRuntime(state: PluginState, backendId: string) {
  const ownerUser = () => state.config?.ownerUser ?? 'owner';

  function wishes(input: Pick<EnsureInput, 'cwd' | 'env' | 'model' | 'resumeSessionId'>): Partial<SpawnRequestInput> {
    return {
      ...(input.cwd ? { cwd: input.cwd } : {}),
      ...(input.env && Object.keys(input.env).length ? { env: input.env } : {}),
      ...(input.model ? { model: input.model } : {}),
      ...(input.resumeSessionId ? { resumeSessionId: input.resumeSessionId } : {}),
    };
  }

  async function handleOf(gate: Spawngate, worker: WorkerHandle, input: EnsureInput): Promise<AcpHandle> {
    const status = await gate.status(worker.spawnId).catch(() => null);
    const session = status?.worker?.session ?? null;
    const handle: AcpHandle = {
      sessionKey: input.sessionKey,
      ...(input.agentId ? { agentId: input.agentId } : {}),
      backend: backendId,
      runtimeSessionName: worker.spawnId,
      backendSessionId: worker.spawnId,
      ...(session?.id ? { agentSessionId: session.id } : {}),
      ...(input.cwd && !worker.dropped.includes('cwd') ? { cwd: input.cwd } : {}),
    };
    if (input.model) {
      const applied = session?.model?.applied === true && !worker.dropped.includes('model');
      if (!applied && input.modelExplicit) {
        await gate.close(worker.spawnId).catch(() => undefined);
        throw new Error(`spawngate: agent ${input.agent} does not offer model ${input.model} (offered: ${session?.model?.available.join(', ') || 'none'}), or the profile does not accept a model`);
      }
      handle.appliedModel = applied ? { kind: 'applied', model: input.model } : { kind: 'dropped' };
    }
    return handle;
  }

  /** The reservation admitted for this session: bound to its key by subagent_spawned, else the oldest pending for the harness. */
  function reservationFor(input: EnsureInput): AllowedReservation | null {
    const bound = state.bound.get(input.sessionKey);
    if (bound?.kind === 'reservation') {
      clearTimeout(bound.timer);
      state.bound.delete(input.sessionKey);
      return bound.reserved;
    }
    return claimPending(state, (p) => p.runtime === 'acp' && p.agentId === input.agent)?.reserved ?? null;
  }

  async function start(gate: Spawngate, input: EnsureInput): Promise<WorkerHandle> {
    const reserved = reservationFor(input);
    if (reserved) {
      const request: SpawnRequestInput = { agentId: input.agent, caller: reserved.request.caller, ...wishes(input) };
      return gate.spawn(request, { reserved });
    }
    // Not admitted through sessions_spawn (e.g. a thread-bound /acp session): decide now.
    return gate.spawn({ ...requestForSession(input.sessionKey, input.agent, ownerUser()), ...wishes(input) });
  }

  /** The live worker behind a handle, following a replacement made after a gateway restart. */
  function spawnIdOf(handle: AcpHandle): string {
    const id = handle.backendSessionId ?? handle.runtimeSessionName;
    return replaced().get(id) ?? id;
  }

  /** A handle whose worker is gone (the gateway restarted): a turn starts a fresh worker that resumes the agent session. */
  async function revive(gate: Spawngate, handle: AcpHandle): Promise<string> {
    const id = spawnIdOf(handle);
    if (gate.get(id)) return id;
    // After a restart this process never saw the worker: the harness is the handle's agent entry's (the key names it too).
    const entry = handle.agentId ?? parseSessionKey(handle.sessionKey).agentId;
    const harness = (await gate.status(id).catch(() => null))?.agentId ?? (entry ? harnessOf(state.openclawConfig, entry) : null);
    if (!harness) throw new Error(`spawngate: the worker of session ${handle.sessionKey} is gone and its agent is unknown; start a new session`);
    const worker = await gate.spawn({
      ...requestForSession(handle.sessionKey, harness, ownerUser()),
      ...(handle.agentSessionId ? { resumeSessionId: handle.agentSessionId } : {}),
    });
    replaced().set(handle.backendSessionId ?? handle.runtimeSessionName, worker.spawnId);
    state.bound.set(handle.sessionKey, { kind: 'worker', spawnId: worker.spawnId, startedAt: Date.now(), turned: true });
    return worker.spawnId;
  }

  async function* turnEvents(input: TurnInput): AsyncGenerator<AcpRuntimeEvent> {
    const gate = await explained('is unavailable', () => gateOf(state));
    const spawnId = await explained('could not reopen the session', () => revive(gate, input.handle));
    const bound = state.bound.get(input.handle.sessionKey);
    if (bound?.kind === 'worker') bound.turned = true;
    let terminal = false;
    try {
      for await (const event of gate.turn(spawnId, input.text, { turnId: input.requestId.slice(0, 128) || undefined, ...(input.signal ? { signal: input.signal } : {}) })) {
        const mapped = toAcpEvent(event);
        if (!mapped) continue;
        if (mapped.type === 'done' || mapped.type === 'error') terminal = true;
        yield mapped;
      }
    } catch (err) {
      if (terminal) return;
      terminal = true;
      const retryable = isSpawngateError(err) && (err.code === 'WORKER_BUSY' || err.code === 'LEASE_LOST');
      yield { type: 'error', message: `spawngate turn failed: ${describe(err)}`, code: isSpawngateError(err) ? err.code : 'ACP_TURN_FAILED', retryable };
      return;
    }
    if (!terminal) yield { type: 'error', message: 'spawngate: the worker ended the turn without a result', code: 'ACP_TURN_FAILED', retryable: false };
  }

  return {
    ownerAwareSessions: 1 as const,

    async ensureSession(input: EnsureInput): Promise<AcpHandle> {
      const gate = await explained('is unavailable', () => gateOf(state));
      const prior = input.persistedHandle;
      if (prior && prior.backend === backendId && (prior.backendSessionId ?? prior.runtimeSessionName)) {
        const live = gate.get(spawnIdOf(prior));
        // Re-attach; a worker lost with a restart is only started again when a turn needs it (never to be closed).
        if (live) return handleOf(gate, live, { ...input, sessionKey: prior.sessionKey });
        return { ...prior };
      }
      // OpenClaw passes its agent entry id as `agent`; the harness it runs is that entry's runtime.acp.agent.
      input = { ...input, agent: harnessOf(state.openclawConfig, input.agent) };
      const worker = await explained('could not start the session', () => start(gate, input));
      state.bound.set(input.sessionKey, { kind: 'worker', spawnId: worker.spawnId, startedAt: Date.now(), turned: false });
      state.logger.info(`ACP session ${input.sessionKey} (${input.mode}) runs in worker ${worker.spawnId} on ${worker.backend}/${worker.profile} as ${worker.nativeId}`);
      return handleOf(gate, worker, input);
    },

    runTurn(input: TurnInput): AsyncIterable<AcpRuntimeEvent> {
      return turnEvents(input);
    },

    startTurn(input: TurnInput) {
      const abort = new AbortController();
      const signal = input.signal ? AbortSignal.any([input.signal, abort.signal]) : abort.signal;
      const queue: AcpRuntimeEvent[] = [];
      // A holder, not a let: TypeScript would narrow a let assigned only in callbacks to null.
      const waiter: { wake: (() => void) | null } = { wake: null };
      let finished = false;
      let settle!: (r: AcpTurnResult) => void;
      const result = new Promise<AcpTurnResult>((resolve) => (settle = resolve));
      // Pumped from the start: the result must settle even when nobody reads the events.
      void (async () => {
        let last: AcpTurnResult | null = null;
        for await (const event of turnEvents({ ...input, signal })) {
          last = resultOf(event) ?? last;
          queue.push(event);
          waiter.wake?.();
        }
        finished = true;
        waiter.wake?.();
        settle(last ?? { status: 'failed', error: { message: 'spawngate: turn ended without a result' } });
      })().catch((err: unknown) => {
        finished = true;
        waiter.wake?.();
        settle({ status: 'failed', error: { message: describe(err) } });
      });
      let closed = false;
      const events: AsyncIterable<AcpRuntimeEvent> = {
        async *[Symbol.asyncIterator]() {
          while (!closed) {
            const next = queue.shift();
            if (next) {
              yield next;
              continue;
            }
            if (finished) return;
            await new Promise<void>((resolve) => (waiter.wake = resolve));
            waiter.wake = null;
          }
        },
      };
      return {
        requestId: input.requestId,
        events,
        result,
        cancel() {
          abort.abort();
          return Promise.resolve();
        },
        closeStream() {
          closed = true;
          waiter.wake?.();
          return Promise.resolve();
        },
      };
    },

    /**
     * Only the model is a config option here, and only as chosen at ensureSession (a running
     * worker does not switch models). Advertising it keeps OpenClaw from sending keys the worker
     * cannot apply (timeout, thinking): the worker's lifetime is the decision's TTL.
     */
    getCapabilities() {
      return { controls: ['session/set_config_option'], configOptionKeys: ['model'] };
    },

    async setConfigOption(input: { handle: AcpHandle; key: string; value: string }) {
      const gate = await gateOf(state);
      const status = await gate.status(spawnIdOf(input.handle)).catch(unlessNotFound(null));
      const model = status?.worker?.session?.model ?? null;
      if (input.key.toLowerCase() === 'model' && model?.applied && model.requested === input.value) {
        return { configOptions: [{ id: 'model', category: 'model', currentValue: model.requested, options: model.available.map((value) => ({ value })) }] };
      }
      throw new Error(`spawngate: session/set_config_option ${input.key}=${input.value} is not supported on a running worker; open a new session with that ${input.key}`);
    },

    async getStatus(input: { handle: AcpHandle }) {
      const gate = await gateOf(state);
      const spawnId = spawnIdOf(input.handle);
      const status = await gate.status(spawnId).catch(unlessNotFound(null));
      if (!status) return { summary: `no worker ${spawnId} (closed, or lost with a restart; a turn starts a new one)`, backendSessionId: spawnId };
      const b = status.backendStatus;
      return {
        summary: `${b.phase}${b.ready ? ' (ready)' : ''} on ${status.backend}/${status.profile ?? '?'} as ${status.nativeId}${b.reason ? `: ${b.reason}` : ''}`,
        backendSessionId: spawnId,
        ...(status.worker?.session?.id ? { agentSessionId: status.worker.session.id } : {}),
        details: {
          spawnId,
          backend: status.backend,
          profile: status.profile,
          nativeId: status.nativeId,
          phase: b.phase,
          ready: b.ready,
          reason: b.reason,
          tracking: status.tracking,
          expiresAt: status.expiresAt,
          attributes: b.attributes,
        },
      };
    },

    async doctor() {
      try {
        const gate = await gateOf(state);
        const backends = Object.keys(gate.config.agents.executionBackends);
        return { ok: true, message: `spawngate ready: instance ${gate.instanceId}, owner ${gate.owner}, backends ${backends.join(', ')}`, details: backends.map((b) => `backend ${b}`) };
      } catch (err) {
        return { ok: false, code: 'SPAWNGATE_UNAVAILABLE', message: describe(err) };
      }
    },

    async cancel(input: { handle: AcpHandle }) {
      const gate = await gateOf(state);
      await gate.cancel(spawnIdOf(input.handle)).catch(unlessNotFound(undefined));
    },

    async close(input: { handle: AcpHandle; reason?: string }) {
      const gate = await gateOf(state);
      const spawnId = spawnIdOf(input.handle);
      const bound = state.bound.get(input.handle.sessionKey);
      if (input.reason === ORPHAN_CLEANUP && bound?.kind === 'worker' && !bound.turned && Date.now() - bound.startedAt < ORPHAN_GRACE_MS) {
        // OpenClaw writes a spawned session's ACP metadata before it registers the session's task;
        // its task maintenance, run in between, takes the newborn session for an orphan and closes
        // it, and the first turn then fails with "ACP metadata is missing". Refusing keeps the
        // session (OpenClaw logs the refusal and clears nothing); a session that really is an
        // orphan is closed by the next maintenance run (every 60 s), and its lease bounds it anyway.
        throw new Error(`spawngate: not closing ACP session ${input.handle.sessionKey} as orphaned: it started ${Math.round((Date.now() - bound.startedAt) / 1000)}s ago and its first turn has not come yet (OpenClaw registers its task after the session starts)`);
      }
      state.logger.info(`ACP session ${input.handle.sessionKey} closed (${input.reason ?? 'no reason'}): removing worker ${spawnId}`);
      if (state.bound.get(input.handle.sessionKey)?.kind === 'worker') state.bound.delete(input.handle.sessionKey);
      replaced().delete(input.handle.backendSessionId ?? input.handle.runtimeSessionName);
      await gate.close(spawnId).catch(unlessNotFound(undefined));
    },
  };
}
