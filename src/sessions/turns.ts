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
      if (crashed) await reapIfDead(spawnId);
    }
  }

  /** A worker whose agent died exits on its own; close it so its slots are freed and status keeps the reason. */
  async function reapIfDead(spawnId: string): Promise<void> {
    const entry = live.get(spawnId);
    if (!entry) return;
    // The worker exits shortly after its agent does; give it a bounded moment before judging.
    for (let i = 0; i < 40; i++) {
      const status = await entry.backend.status(entry.ref).catch(() => null);
      if (status && (status.phase === 'failed' || status.phase === 'gone' || status.phase === 'succeeded')) {
        await closeSpawn(spawnId, 'failed', status);
        return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  return { runTurn };
}
