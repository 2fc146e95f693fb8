import { z } from 'zod';
import type { Decision, DenyDecision, Reason } from './types.js';

/**
 * What the policy must return. Anything else — a missing field, an allow without a backend, an
 * unknown egress — is turned into a deny (`policy_output_invalid`): a policy bug must never admit.
 */
const egress = z.enum(['none', 'proxy', 'open']);
const reason = z.strictObject({ code: z.string().regex(/^[a-z][a-z0-9_.]*$/).max(64), message: z.string().max(2048) });
const limits = z.strictObject({
  concurrency: z
    .array(
      z.strictObject({
        scope: z.enum(['total', 'backend', 'profile', 'user', 'channel', 'profile_user', 'profile_channel']),
        key: z.string().min(1).max(1024),
        max: z.number().int().min(0),
      }),
    )
    .max(64),
  rate: z
    .array(
      z.strictObject({
        scope: z.enum(['user', 'channel']),
        key: z.string().min(1).max(1024),
        perMinute: z.number().positive(),
        burst: z.number().int().min(1),
      }),
    )
    .max(64),
});

const allowSchema = z.strictObject({
  allow: z.literal(true),
  backend: z.string().min(1),
  profile: z.string().min(1),
  egress,
  ttlSeconds: z.number().int().positive(),
  limits,
  reasons: z.array(reason).max(64),
});

const denySchema = z.strictObject({
  allow: z.literal(false),
  backend: z.string().nullable(),
  profile: z.string().nullable(),
  egress: egress.nullable(),
  ttlSeconds: z.number().int().positive().nullable(),
  limits,
  reasons: z.array(reason).min(1).max(64),
});

export const decisionSchema = z.discriminatedUnion('allow', [allowSchema, denySchema]);

export function denyWith(reasons: Reason[]): DenyDecision {
  return { allow: false, backend: null, profile: null, egress: null, ttlSeconds: null, limits: { concurrency: [], rate: [] }, reasons };
}

/** Validates raw policy output; a malformed result becomes a deny that says what was wrong with it. */
export function checkDecision(raw: unknown): Decision {
  const parsed = decisionSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const first = parsed.error.issues[0];
  const where = first ? `${first.path.join('.') || '(root)'}: ${first.message}` : 'unknown shape';
  return denyWith([{ code: 'policy_output_invalid', message: `the policy returned an invalid decision (${where})` }]);
}
