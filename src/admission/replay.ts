/**
 * Offline replay of a decision log against a candidate bundle (`spawngate policy replay`): every
 * admission line's input is evaluated by the candidate and its decision compared with the logged
 * one, the same comparison the shadow evaluation makes on live traffic (src/admission/shadow.ts).
 *
 * What a line can and cannot tell: its input lacks the catalog (the config), so the candidate sees
 * the catalog of the config given to the replay, and lines logged under another config
 * (`catalog_revision`) are counted apart. A mask rule may have erased or replaced parts of an input:
 * such lines are replayed on what is left and counted as approximate; lines without input are
 * skipped. A line the store denied (`stage: "reservation"`) was a policy allow: it is compared as
 * that allow, since the candidate's policy decides the same question.
 */
import type { PolicyEngine } from './engine.js';
import { ENTRYPOINT } from './engine.js';
import type { ShadowDifference } from './shadow.js';
import { compareDecisions } from './shadow.js';
import type { Decision } from './types.js';

export type ReplayDifference = Exclude<ShadowDifference, 'dropped'>;

export interface ReplayChange {
  /** 1-based line number in the log. */
  line: number;
  decisionId: string;
  timestamp: string | null;
  difference: ReplayDifference;
  live: DecisionSummary;
  candidate: DecisionSummary | null;
}

export interface DecisionSummary {
  allow: boolean;
  backend: string | null;
  profile: string | null;
  egress: string | null;
  reason: string | null;
}

export interface ReplayReport {
  lines: number;
  replayed: number;
  differences: Record<ReplayDifference, number>;
  skipped: { permission: number; shadow: number; noInput: number; unreadable: number };
  /** Replayed on an input the mask rule had changed (erased or replaced parts). */
  approximate: number;
  /** Logged under another config than the replay's (the candidate saw this config's catalog). */
  otherCatalog: number;
  candidateRevision: string | null;
  /** The first `maxChanges` lines whose decision the candidate would change, in log order. */
  changes: ReplayChange[];
  /** The first few lines that are not JSON objects, as `line N: why`. */
  unreadable: string[];
}

export interface ReplayOptions {
  /** The candidate, loaded with the replay config's catalog as runtime data. */
  engine: PolicyEngine;
  lines: AsyncIterable<string>;
  /** sha256 of the replay config's catalog, as the gate computes it. */
  catalogRevision: string;
  /** The gate's own rules on any policy's decision (an unknown agent is denied). */
  finish: (decision: Decision, input: Record<string, unknown>) => Decision;
  maxChanges?: number;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function summary(d: Decision): DecisionSummary {
  return { allow: d.allow, backend: d.backend, profile: d.profile, egress: d.egress, reason: d.reasons[0]?.code ?? null };
}

function isDecision(v: unknown): v is Decision {
  return isRecord(v) && typeof v['allow'] === 'boolean' && Array.isArray(v['reasons']) && isRecord(v['limits']);
}

const FAILED = new Set(['policy_error', 'policy_output_invalid', 'policy_timeout', 'policy_unavailable']);

export async function replayDecisionLog(options: ReplayOptions): Promise<ReplayReport> {
  const maxChanges = options.maxChanges ?? 50;
  const report: ReplayReport = {
    lines: 0,
    replayed: 0,
    differences: { same: 0, would_deny: 0, would_allow: 0, different_placement: 0, different_terms: 0, different_reason: 0, failed: 0 },
    skipped: { permission: 0, shadow: 0, noInput: 0, unreadable: 0 },
    approximate: 0,
    otherCatalog: 0,
    candidateRevision: options.engine.revision,
    changes: [],
    unreadable: [],
  };
  const unreadable = (line: number, why: string) => {
    report.skipped.unreadable++;
    if (report.unreadable.length < 10) report.unreadable.push(`line ${line}: ${why}`);
  };
  let n = 0; // the line number in the log, blank lines included
  for await (const text of options.lines) {
    n++;
    if (text.trim() === '') continue;
    report.lines++;
    let entry: unknown;
    try {
      entry = JSON.parse(text);
    } catch (err) {
      unreadable(n, `not JSON (${(err as Error).message})`);
      continue;
    }
    if (!isRecord(entry)) {
      unreadable(n, 'not a JSON object');
      continue;
    }
    if (entry['stage'] === 'shadow') {
      report.skipped.shadow++;
      continue;
    }
    if (entry['path'] !== ENTRYPOINT) {
      if (typeof entry['path'] === 'string') report.skipped.permission++;
      else unreadable(n, 'no "path": not a decision-log line');
      continue;
    }
    const input = entry['input'];
    if (!isRecord(input)) {
      report.skipped.noInput++;
      continue;
    }
    if (!isDecision(entry['result'])) {
      unreadable(n, 'its "result" is not an admission decision');
      continue;
    }
    const logged = entry['result'];
    // A store deny keeps the policy's placement: the policy itself allowed.
    const live: Decision = entry['stage'] === 'reservation' && !logged.allow && logged.backend !== null && logged.profile !== null && logged.egress !== null && logged.ttlSeconds !== null
      ? { ...logged, allow: true, backend: logged.backend, profile: logged.profile, egress: logged.egress, ttlSeconds: logged.ttlSeconds, reasons: [] }
      : logged;
    if (Array.isArray(entry['erased']) || Array.isArray(entry['masked'])) report.approximate++;
    if (entry['catalog_revision'] !== options.catalogRevision) report.otherCatalog++;
    report.replayed++;
    const evaluation = options.engine.evaluateJsonWithoutCatalog(JSON.stringify(input));
    const reason = evaluation.decision.reasons[0]?.code;
    let difference: ReplayDifference;
    let candidate: Decision | null = null;
    if (evaluation.revision === null || (reason !== undefined && FAILED.has(reason))) difference = 'failed';
    else {
      candidate = options.finish(evaluation.decision, input);
      difference = compareDecisions(live, candidate);
    }
    report.differences[difference]++;
    if (difference !== 'same' && report.changes.length < maxChanges) {
      report.changes.push({
        line: n,
        decisionId: typeof entry['decision_id'] === 'string' ? entry['decision_id'] : '',
        timestamp: typeof entry['timestamp'] === 'string' ? entry['timestamp'] : null,
        difference,
        live: summary(live),
        candidate: candidate ? summary(candidate) : null,
      });
    }
  }
  return report;
}

/** How many replayed decisions the candidate would change (a failed candidate evaluation counts). */
export function changedCount(report: ReplayReport): number {
  return report.replayed - report.differences.same;
}
