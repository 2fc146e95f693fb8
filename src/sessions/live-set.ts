/**
 * What the sessions layer knows about the workers of this gateway process: the live ones (ready,
 * tracked, renewed), the ones on their way (between reserve and ready), and recently closed ones
 * (kept, bounded, so status after a crash still says why). Shared by spawn, turns and the sweeper.
 */
import type { Context } from '@opentelemetry/api';
import type { Reservation } from '../admission/gate.js';
import type { AdmissionInput } from '../admission/types.js';
import type { Backend, WorkerRef, WorkerStatus } from '../backends/types.js';
import type { CloseReason, SpawnStatus, WorkerHandle } from './types.js';

export interface Live {
  handle: WorkerHandle;
  ref: WorkerRef;
  backend: Backend;
  reservation: Reservation;
  token: string;
  /** Who asked for the worker (the admission input's caller): the permission policy decides per caller too. */
  caller: AdmissionInput['caller'] | null;
  spawnSpan: Context;
  ttlTimer: NodeJS.Timeout;
  closing: Promise<void> | null;
}

export interface Closed {
  status: SpawnStatus;
  at: number;
  reservationId: string | null;
}

const CLOSED_KEPT = 1000;
/** Log tails kept of workers that ended badly, after the backend deleted them (bounded in count and age). */
const LOGS_KEPT = 200;
export const LOGS_KEPT_MS = 60 * 60_000;
export const KEPT_LOG_LINES = 500;

/** Every piece of the sessions layer works on these, and closes a worker the one way. */
export interface LiveSet {
  readonly live: Map<string, Live>;
  readonly closed: Map<string, Closed>;
  readonly inflight: Set<string>;
  remember: (status: SpawnStatus, reservationId?: string | null) => void;
  /** Keeps a gone worker's last log lines readable for a while (failures are debugged after the fact). */
  keepLogs: (spawnId: string, lines: readonly string[]) => void;
  keptLogs: (spawnId: string) => readonly string[] | null;
  closeSpawn: (spawnId: string, reason: CloseReason, knownStatus?: WorkerStatus) => Promise<void>;
}

export function createLiveSet(closeSpawn: LiveSet['closeSpawn']): LiveSet {
  const live = new Map<string, Live>();
  const closed = new Map<string, Closed>();
  const keptLogs = new Map<string, { lines: readonly string[]; at: number }>();
  // Spawns between create and ready exist on the backend but are not live yet; the sweeper must not take them for orphans.
  const inflight = new Set<string>();
  return {
    live,
    closed,
    inflight,
    remember(status, reservationId = null) {
      closed.set(status.spawnId, { status, at: Date.now(), reservationId });
      if (closed.size > CLOSED_KEPT) {
        const oldest = closed.keys().next().value;
        if (oldest !== undefined) closed.delete(oldest);
      }
    },
    keepLogs(spawnId, lines) {
      keptLogs.delete(spawnId);
      keptLogs.set(spawnId, { lines: lines.slice(-KEPT_LOG_LINES), at: Date.now() });
      while (keptLogs.size > LOGS_KEPT) {
        const oldest = keptLogs.keys().next().value;
        if (oldest === undefined) break;
        keptLogs.delete(oldest);
      }
    },
    keptLogs(spawnId) {
      const kept = keptLogs.get(spawnId);
      if (!kept) return null;
      if (Date.now() - kept.at > LOGS_KEPT_MS) {
        keptLogs.delete(spawnId);
        return null;
      }
      return kept.lines;
    },
    closeSpawn,
  };
}

export function nativeAttributes(kind: Backend['kind'], nativeId: string): Record<string, string | number> {
  switch (kind) {
    case 'process':
      return { 'spawngate.worker.pid': Number(nativeId) };
    case 'container':
      return { 'container.id': nativeId };
    case 'kubernetes': {
      const [namespace, pod] = nativeId.split('/');
      return { 'k8s.namespace.name': namespace ?? '', 'k8s.pod.name': pod ?? '' };
    }
  }
}
