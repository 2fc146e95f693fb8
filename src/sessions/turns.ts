/**
 * Turns on a live worker: one span per turn under the spawn's, outcome metrics, and the reaper that
 * closes a worker whose agent died mid-turn so its slots come back and status keeps the reason.
 */
import type { Span } from '@opentelemetry/api';
import { createWorkerClient } from '../protocol/client.js';
import type { PermissionRequestedEvent, WorkerEvent } from '../protocol/events.js';
import type { WorkerClient } from '../protocol/client.js';
import type { PermissionDecision, PermissionInput } from '../admission/permissions.js';
import { pickPermissionOption } from '../admission/permissions.js';
import type { Live } from './live-set.js';
import { SpawngateError } from '../errors.js';
import type { Metrics } from '../telemetry/metrics.js';
import { safely } from '../telemetry/metrics.js';
import { endSpan, recordError, setAttributes, SPAN, startSpan, traceparentOf } from '../telemetry/tracing.js';
import type { LiveSet } from './live-set.js';
import { nativeAttributes } from './live-set.js';

/**
 * How long a crashed worker's backend may take to report it ended. A local process is gone in
 * milliseconds; a Pod needs the kubelet's next relist and a status update through the API server.
 */
const REAP_WAIT_MS = 60_000;
/** The turn's end waits this long for the reap (enough for local workers); a slower one goes on alone. */
const REAP_INLINE_MS = 2_000;

export interface TurnOptions {
  turnId?: string;
  signal?: AbortSignal;
}

export function createTurns(
  liveSet: LiveSet,
  metrics: Metrics,
  decidePermission: (input: PermissionInput) => PermissionDecision,
): { runTurn: (spawnId: string, message: string, turnOptions?: TurnOptions) => AsyncGenerator<WorkerEvent> } {
  const { live, closeSpawn } = liveSet;

  /**
   * The agent waits for this answer, so it is given as soon as the request is read, before the event
   * goes on to the caller: whatever the caller does with the event does not hold the agent up.
   */
  async function answerPermission(entry: Live, client: WorkerClient, event: PermissionRequestedEvent): Promise<void> {
    const decision = decidePermission({
      spawnId: entry.handle.spawnId,
      agent: entry.handle.agentId,
      profile: entry.handle.profile,
      backend: entry.handle.backend,
      caller: entry.caller,
      tool: { toolCallId: event.toolCallId, kind: event.kind, title: event.title, rawInput: event.rawInput },
      paths: event.paths,
      workspace: { root: event.workspace },
      options: event.options.map((o) => o.kind),
    });
    const { optionId } = pickPermissionOption(decision, event.options);
    // A turn that ended meanwhile already answered "cancelled" (404): nothing is left to decide. Any
    // other failure to deliver leaves the request to the worker's timeout, which rejects it.
    await client.answerPermission({ requestId: event.requestId, optionId, code: decision.code, reason: decision.reason }).catch(() => undefined);
  }

  async function* runTurn(spawnId: string, message: string, turnOptions: TurnOptions = {}): AsyncGenerator<WorkerEvent> {
    const entry = live.get(spawnId);
    if (!entry) throw new SpawngateError('SPAWN_NOT_FOUND', `no live worker ${spawnId}`);
    const started = performance.now();
    const span: Span = startSpan(SPAN.turn, entry.spawnSpan);
    setAttributes(span, {
      'spawngate.spawn_id': spawnId,
      'spawngate.backend': entry.handle.backend,
      'spawngate.profile': entry.handle.profile,
      'spawngate.agent_id': entry.handle.agentId,
      ...nativeAttributes(entry.backend.kind, entry.ref.nativeId),
    });
    let outcome = 'failed';
    let crashed = false;
    try {
      const client = createWorkerClient({ ...entry.handle.endpoint, token: entry.token, traceparent: traceparentOf(span) ?? undefined });
      for await (const event of client.turn(message, { ...(turnOptions.turnId ? { turnId: turnOptions.turnId } : {}), ...(turnOptions.signal ? { signal: turnOptions.signal } : {}) })) {
        if (event.type === 'permission.requested') await answerPermission(entry, client, event);
        else if (event.type === 'turn.completed') outcome = 'completed';
        else if (event.type === 'turn.cancelled') outcome = 'cancelled';
        else if (event.type === 'turn.failed') {
          outcome = 'failed';
          crashed = event.error.code === 'agent_exited' || event.error.code === 'agent_unavailable';
          setAttributes(span, { 'spawngate.reason': event.error.code });
        }
        yield event;
      }
    } catch (err) {
      recordError(span, err);
      // A stream that breaks off usually means the worker died under us; the status check below decides.
      // A busy worker (409) or the caller's own abort says nothing about the worker's health.
      const code = (err as { code?: unknown }).code;
      crashed = !turnOptions.signal?.aborted && code !== 'WORKER_BUSY' && code !== 'WORKER_UNAUTHORIZED';
      throw err;
    } finally {
      setAttributes(span, { 'spawngate.turn_outcome': outcome });
      endSpan(span);
      safely(() => {
        const labels = { backend: entry.handle.backend, profile: entry.handle.profile, outcome };
        metrics.turns.inc(labels);
        metrics.turnSeconds.observe(labels, (performance.now() - started) / 1000);
      });
      if (crashed) {
        const reaping = reapIfDead(spawnId).catch(() => undefined);
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([reaping, new Promise((r) => (timer = setTimeout(r, REAP_INLINE_MS)))]);
        clearTimeout(timer);
      }
    }
  }

  /** A worker whose agent died exits on its own; close it so its slots are freed and status keeps the reason. */
  async function reapIfDead(spawnId: string): Promise<void> {
    // The worker exits shortly after its agent does; give its backend a bounded time to say so.
    const deadline = Date.now() + REAP_WAIT_MS;
    let pause = 50;
    while (Date.now() < deadline) {
      // Closed meanwhile (by the caller, a TTL or shutdown): nothing left to reap.
      const entry = live.get(spawnId);
      if (!entry) return;
      const status = await entry.backend.status(entry.ref).catch(() => null);
      if (status && (status.phase === 'failed' || status.phase === 'gone' || status.phase === 'succeeded')) {
        await closeSpawn(spawnId, 'failed', status);
        return;
      }
      // Unref'd: a reap still waiting must not keep a gateway that is shutting down alive.
      await new Promise((r) => setTimeout(r, pause).unref());
      pause = Math.min(pause * 2, 1_000);
    }
  }

  return { runTurn };
}
