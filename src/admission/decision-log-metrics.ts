/**
 * Counters of the decision-log sinks that can lose lines (the HTTP sink): a lost audit line must be
 * visible on /metrics, since nothing else would ever say it is missing.
 */
import type { Registry } from 'prom-client';
import { Counter, Gauge } from 'prom-client';

/** Why a line never reached the sink: its buffer was full (the oldest goes), every attempt failed, or the gateway stopped. */
export const DECISION_LOG_DROP_REASONS = ['buffer_full', 'send_failed', 'shutdown'] as const;
export type DecisionLogDropReason = (typeof DECISION_LOG_DROP_REASONS)[number];

export const DECISION_LOG_SINKS = ['http'] as const;
export type DecisionLogSinkKind = (typeof DECISION_LOG_SINKS)[number];

export interface DecisionLogMetrics {
  dropped: Counter<'sink' | 'reason'>;
  sent: Counter<'sink'>;
  /** Failed upload attempts (a batch retried three times counts three). */
  sendErrors: Counter<'sink'>;
  buffered: Gauge<'sink'>;
}

function metric<T>(registry: Registry, name: string, create: () => T): T {
  // Two gates on one registry share the series instead of failing on a duplicate name.
  return (registry.getSingleMetric(name) as T | undefined) ?? create();
}

/** The decision-log series on `registry`, created once per registry, every label set present at zero. */
export function decisionLogMetrics(registry: Registry): DecisionLogMetrics {
  const registers = [registry];
  const metrics: DecisionLogMetrics = {
    dropped: metric(registry, 'spawngate_decision_log_dropped_total', () =>
      new Counter({ name: 'spawngate_decision_log_dropped_total', help: 'Decision log lines that never reached their sink, by sink and reason', labelNames: ['sink', 'reason'] as const, registers }),
    ),
    sent: metric(registry, 'spawngate_decision_log_sent_total', () =>
      new Counter({ name: 'spawngate_decision_log_sent_total', help: 'Decision log lines the sink accepted (HTTP: answered 2xx)', labelNames: ['sink'] as const, registers }),
    ),
    sendErrors: metric(registry, 'spawngate_decision_log_send_errors_total', () =>
      new Counter({ name: 'spawngate_decision_log_send_errors_total', help: 'Failed decision log upload attempts (network error, timeout or non-2xx answer)', labelNames: ['sink'] as const, registers }),
    ),
    buffered: metric(registry, 'spawngate_decision_log_buffered_entries', () => {
      const gauge = new Gauge({ name: 'spawngate_decision_log_buffered_entries', help: 'Decision log lines waiting for their sink', labelNames: ['sink'] as const, registers });
      for (const sink of DECISION_LOG_SINKS) gauge.set({ sink }, 0);
      return gauge;
    }),
  };
  for (const sink of DECISION_LOG_SINKS) {
    for (const reason of DECISION_LOG_DROP_REASONS) metrics.dropped.inc({ sink, reason }, 0);
    metrics.sent.inc({ sink }, 0);
    metrics.sendErrors.inc({ sink }, 0);
  }
  return metrics;
}
