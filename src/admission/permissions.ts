/**
 * Permission requests of a running agent (ACP session/request_permission), decided by the bundle's
 * `spawngate.permissions` rule: the input the rule sees, the output it must give, and how that output
 * becomes one of the options the agent offered. policies/permissions.rego is the shipped rule.
 */
import { z } from 'zod';
import type { AdmissionInput } from './types.js';
import { REASON_CODE } from '../protocol/events.js';

export const PERMISSION_ENTRYPOINT = 'spawngate/permissions/decision';

export type PermissionOptionKind = 'allow_once' | 'allow_always' | 'reject_once' | 'reject_always';

export interface PermissionInput {
  spawnId: string;
  agent: string;
  profile: string;
  backend: string;
  caller: AdmissionInput['caller'] | null;
  tool: { toolCallId: string; kind: string; title: string | null; rawInput: unknown };
  paths: { path: string; inWorkspace: boolean }[];
  workspace: { root: string };
  options: string[];
}

export interface PermissionDecision {
  outcome: 'allow_once' | 'allow_always' | 'reject';
  /** allowed, path_outside_workspace, tool_kind_not_allowed, … (docs/policy.md); lowercase like admission's reason codes. */
  code: string;
  reason: string;
}

const decisionSchema = z.strictObject({
  outcome: z.enum(['allow_once', 'allow_always', 'reject']),
  code: z.string().max(64).regex(REASON_CODE),
  reason: z.string().max(2048),
});

/** A policy bug must never grant: anything but a well-formed decision is a reject that says why. */
export function checkPermissionDecision(result: unknown): PermissionDecision {
  if (result === undefined) {
    return { outcome: 'reject', code: 'permission_policy_missing', reason: `the bundle has no ${PERMISSION_ENTRYPOINT} rule (rebuild it from policies/ with spawngate policy build)` };
  }
  const parsed = decisionSchema.safeParse(result);
  if (parsed.success) return parsed.data;
  const where = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
  return { outcome: 'reject', code: 'permission_policy_output_invalid', reason: `the permission policy returned an invalid decision (${where})` };
}

/**
 * The option to answer with. A reject picks reject_once (never reject_always: the next request may
 * be decided differently, e.g. after a policy reload), or no option at all (ACP's "cancelled", which
 * agents treat as not granted). allow_always falls back to allow_once when the agent offers only that;
 * an allow the agent did not offer at all becomes a reject: the policy's grant cannot be widened.
 */
export function pickPermissionOption(
  decision: PermissionDecision,
  options: readonly { optionId: string; kind: string }[],
): { optionId: string | null; outcome: PermissionOptionKind | 'cancelled' } {
  const find = (kind: PermissionOptionKind) => options.find((o) => o.kind === kind);
  const preferred: PermissionOptionKind[] =
    decision.outcome === 'allow_always' ? ['allow_always', 'allow_once'] : decision.outcome === 'allow_once' ? ['allow_once'] : [];
  for (const kind of preferred) {
    const option = find(kind);
    if (option) return { optionId: option.optionId, outcome: kind };
  }
  const reject = find('reject_once');
  return reject ? { optionId: reject.optionId, outcome: 'reject_once' } : { optionId: null, outcome: 'cancelled' };
}
