import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/**
 * prom-client metrics on a registry of spawngate's own (not the process-global default one), so a
 * host application decides where they are exposed: `registry.metrics()` in its /metrics handler,
 * or spawngate's server. Names are the contract of dashboards/.
 */
export interface Metrics {
  registry: Registry;
  decisions: Counter<'result' | 'reason' | 'stage'>;
  evaluationSeconds: Histogram;
  activeWorkers: Gauge<'backend' | 'profile'>;
  spawnReadySeconds: Histogram<'backend' | 'profile'>;
  spawns: Counter<'backend' | 'profile' | 'outcome'>;
  reservationsRejected: Counter<'code'>;
  rateLimited: Counter<'scope'>;
  sweeperDeletions: Counter<'backend' | 'reason'>;
  workerFailures: Counter<'backend' | 'reason'>;
  turns: Counter<'backend' | 'outcome'>;
  permissionDecisions: Counter<'profile' | 'outcome' | 'code'>;
}

export function createMetrics(registry: Registry = new Registry()): Metrics {
  return {
    registry,
    decisions: new Counter({ name: 'spawngate_decisions_total', help: 'Admission decisions by result (allow|deny), first reason code and deciding stage', labelNames: ['result', 'reason', 'stage'], registers: [registry] }),
    evaluationSeconds: new Histogram({
      name: 'spawngate_policy_evaluation_seconds',
      help: 'In-process WASM policy evaluation latency',
      buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01],
      registers: [registry],
    }),
    activeWorkers: new Gauge({ name: 'spawngate_active_workers', help: 'Workers created and not yet closed, by backend and profile', labelNames: ['backend', 'profile'], registers: [registry] }),
    spawnReadySeconds: new Histogram({
      name: 'spawngate_spawn_ready_seconds',
      help: 'From spawn request to a worker answering /healthz',
      labelNames: ['backend', 'profile'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120],
      registers: [registry],
    }),
    spawns: new Counter({ name: 'spawngate_spawns_total', help: 'Spawn attempts by outcome (ready|denied|failed)', labelNames: ['backend', 'profile', 'outcome'], registers: [registry] }),
    reservationsRejected: new Counter({ name: 'spawngate_reservations_rejected_total', help: 'Reservations refused by the store, by reason code', labelNames: ['code'], registers: [registry] }),
    rateLimited: new Counter({ name: 'spawngate_rate_limited_total', help: 'Spawns refused by a rate limit, by scope', labelNames: ['scope'], registers: [registry] }),
    sweeperDeletions: new Counter({ name: 'spawngate_sweeper_deletions_total', help: 'Workers deleted by the sweeper, by reason (expired|orphaned|exited)', labelNames: ['backend', 'reason'], registers: [registry] }),
    workerFailures: new Counter({ name: 'spawngate_worker_failures_total', help: 'Workers that failed (create, readiness, crash), by failure reason', labelNames: ['backend', 'reason'], registers: [registry] }),
    turns: new Counter({ name: 'spawngate_turns_total', help: 'Turns by outcome (completed|failed|cancelled)', labelNames: ['backend', 'outcome'], registers: [registry] }),
    permissionDecisions: new Counter({ name: 'spawngate_permission_decisions_total', help: 'Agent permission requests decided by the permission policy, by profile, outcome (allow_once|allow_always|reject) and code', labelNames: ['profile', 'outcome', 'code'], registers: [registry] }),
  };
}

/** Metric updates must never throw into a spawn (a label typo is a bug to log, not an outage). */
export function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // ignore
  }
}
