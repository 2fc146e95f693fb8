/**
 * Shadow evaluation: a candidate policy bundle evaluated beside the live one on every real
 * admission decision, never deciding. Each would-be decision is compared with the live policy's,
 * counted by difference (spawngate_shadow_decisions_total) and written to the decision log as a
 * `stage: "shadow"` line under the live decision's id, so a security team sees what a new bundle
 * would change on real traffic before it serves. `spawngate policy replay` is the offline twin.
 *
 * The live decision is never held up: the candidate runs after it, off the caller's path, with a
 * bound on how many evaluations wait (beyond it they are dropped, and counted as dropped).
 */
import type { Logger } from '../log.js';
import type { Metrics } from '../telemetry/metrics.js';
import { safely } from '../telemetry/metrics.js';
import type { PolicyEngine } from './engine.js';
import type { Decision } from './types.js';

export const SHADOW_DIFFERENCES = ['same', 'would_deny', 'would_allow', 'different_placement', 'different_terms', 'different_reason', 'failed', 'dropped'] as const;
export type ShadowDifference = (typeof SHADOW_DIFFERENCES)[number];

const sameJson = (a: unknown, b: unknown): boolean => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

/**
 * How the candidate's decision differs from the live one, most consequential first: allow against
 * deny; then, both allowing, where the worker runs (backend, profile, egress) before the terms it
 * runs on (TTL, caps, egress allow-list); both denying, the first reason code.
 */
export function compareDecisions(live: Decision, candidate: Decision): Exclude<ShadowDifference, 'failed' | 'dropped'> {
  if (live.allow && !candidate.allow) return 'would_deny';
  if (!live.allow && candidate.allow) return 'would_allow';
  if (live.allow && candidate.allow) {
    if (live.backend !== candidate.backend || live.profile !== candidate.profile || live.egress !== candidate.egress) return 'different_placement';
    if (live.ttlSeconds !== candidate.ttlSeconds || !sameJson(live.limits, candidate.limits) || !sameJson(live.egressAllow, candidate.egressAllow)) return 'different_terms';
    return 'same';
  }
  return live.reasons[0]?.code === candidate.reasons[0]?.code ? 'same' : 'different_reason';
}

export interface ShadowObservation {
  decisionId: string;
  /** The admission input as the live policy got it (without the catalog). */
  inputJson: string;
  /** The live policy's decision (before the store enforced its limits). */
  live: Decision;
  /** The gate's own rules applied to any policy's decision (an unknown agent is denied whatever the policy says). */
  finish: (decision: Decision) => Decision;
}

export interface ShadowLine {
  decisionId: string;
  bundleRevision: string | null;
  result: Decision | null;
  difference: ShadowDifference;
  evalMicros: number;
}

export interface ShadowPolicy {
  readonly engine: PolicyEngine;
  /** Evaluates the candidate on this input later; never throws, never waits. */
  observe(observation: ShadowObservation): void;
  /** Resolves when every observation taken so far is counted and logged. */
  drain(): Promise<void>;
  close(): Promise<void>;
}

export interface ShadowPolicyOptions {
  engine: PolicyEngine;
  metrics: Metrics;
  logger: Logger;
  /** One decision-log line per observation. */
  write: (line: ShadowLine) => void;
  /** How many candidate evaluations may wait; more are dropped (default 64). */
  maxPending?: number;
}

export function createShadowPolicy(options: ShadowPolicyOptions): ShadowPolicy {
  const { engine, metrics, logger, write } = options;
  const maxPending = options.maxPending ?? 64;
  const pending = new Set<Promise<void>>();
  let lastFailure = '';

  const count = (difference: ShadowDifference) => safely(() => metrics.shadowDecisions.inc({ difference }));

  async function evaluate(o: ShadowObservation): Promise<void> {
    const evaluation = await engine.evaluateJsonWithoutCatalogAsync(o.inputJson);
    const reason = evaluation.decision.reasons[0]?.code;
    // A candidate that did not decide (no bundle, an error, a timeout) says nothing about its rules.
    if (evaluation.revision === null || reason === 'policy_error' || reason === 'policy_output_invalid' || reason === 'policy_timeout' || reason === 'policy_unavailable') {
      const problem = `${reason ?? 'no decision'}: ${evaluation.decision.reasons[0]?.message ?? ''}`;
      if (problem !== lastFailure) logger.warn('shadow policy did not decide', { decisionId: o.decisionId, problem });
      lastFailure = problem;
      count('failed');
      write({ decisionId: o.decisionId, bundleRevision: evaluation.revision, result: null, difference: 'failed', evalMicros: evaluation.evalMicros });
      return;
    }
    const candidate = o.finish(evaluation.decision);
    const difference = compareDecisions(o.live, candidate);
    count(difference);
    write({ decisionId: o.decisionId, bundleRevision: evaluation.revision, result: candidate, difference, evalMicros: evaluation.evalMicros });
  }

  async function drain(): Promise<void> {
    while (pending.size > 0) await Promise.all([...pending]);
  }

  return {
    engine,
    observe(o) {
      if (pending.size >= maxPending) {
        count('dropped');
        return;
      }
      const task: Promise<void> = evaluate(o)
        .catch((err: unknown) => {
          count('failed');
          logger.warn('shadow evaluation failed', { decisionId: o.decisionId, error: (err as Error).message });
        })
        .finally(() => pending.delete(task));
      pending.add(task);
    },
    drain,
    async close() {
      await drain();
      engine.close();
    },
  };
}
