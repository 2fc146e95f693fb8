import { z } from 'zod';
import type { Decision, DenyDecision, Reason } from './types.js';
import { REASON_CODE } from '../protocol/events.js';

/**
 * What the policy must return. Anything else — a missing field, an allow without a backend, an
 * unknown egress — is turned into a deny (`policy_output_invalid`): a policy bug must never admit.
 */
const egress = z.enum(['none', 'proxy', 'open']);
const reason = z.strictObject({ code: z.string().max(64).regex(REASON_CODE), message: z.string().max(2048) });
const limits = z.strictObject({
  concurrency: z
    .array(
      z.strictObject({
        scope: z.enum(['total', 'backend', 'profile', 'user', 'channel', 'profile_user', 'profile_channel', 'parent']),
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
  tree: z
    .strictObject({
      root: z.string().min(1).max(1024),
      maxSpawns: z.number().int().min(0).nullable(),
      maxWorkerSeconds: z.number().int().min(0).nullable(),
      windowSeconds: z.number().int().positive(),
    })
    .optional(),
});

const wait = z.strictObject({ maxSeconds: z.number().int().min(0).max(3600), priority: z.number().int().min(0).max(255) });

/** Hosts spawngate's egress proxy lets through (egress "proxy"); optional, so policies written before it stay valid. */
const egressAllow = z.array(z.string().min(1).max(260)).max(64);

const allowSchema = z.strictObject({
  allow: z.literal(true),
  backend: z.string().min(1),
  profile: z.string().min(1),
  egress,
  egressAllow: egressAllow.optional(),
  ttlSeconds: z.number().int().positive(),
  limits,
  wait: wait.optional(),
  reasons: z.array(reason).max(64),
});

const denySchema = z.strictObject({
  allow: z.literal(false),
  backend: z.string().nullable(),
  profile: z.string().nullable(),
  egress: egress.nullable(),
  egressAllow: egressAllow.optional(),
  ttlSeconds: z.number().int().positive().nullable(),
  limits,
  wait: wait.optional(),
  reasons: z.array(reason).min(1).max(64),
});

export const decisionSchema = z.discriminatedUnion('allow', [allowSchema, denySchema]);

export function denyWith(reasons: Reason[]): DenyDecision {
  return { allow: false, backend: null, profile: null, egress: null, ttlSeconds: null, limits: { concurrency: [], rate: [] }, reasons };
}

const EGRESS: ReadonlySet<unknown> = new Set(['none', 'proxy', 'open']);
const CONCURRENCY_SCOPES: ReadonlySet<unknown> = new Set(['total', 'backend', 'profile', 'user', 'channel', 'profile_user', 'profile_channel', 'parent']);
const RATE_SCOPES: ReadonlySet<unknown> = new Set(['user', 'channel']);
const DECISION_KEYS: ReadonlySet<string> = new Set(['allow', 'backend', 'profile', 'egress', 'egressAllow', 'ttlSeconds', 'limits', 'wait', 'reasons']);
const WAIT_KEYS: ReadonlySet<string> = new Set(['maxSeconds', 'priority']);
const LIMITS_KEYS: ReadonlySet<string> = new Set(['concurrency', 'rate', 'tree']);
const TREE_KEYS: ReadonlySet<string> = new Set(['root', 'maxSpawns', 'maxWorkerSeconds', 'windowSeconds']);
const CONCURRENCY_KEYS: ReadonlySet<string> = new Set(['scope', 'key', 'max']);
const RATE_KEYS: ReadonlySet<string> = new Set(['scope', 'key', 'perMinute', 'burst']);
const REASON_KEYS: ReadonlySet<string> = new Set(['code', 'message']);

/** A JSON-shaped object (what the policy's output parses into) with no key outside `keys`. */
function isPlainWith(value: unknown, keys: ReadonlySet<string>): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Object.getPrototypeOf(value) !== Object.prototype) return false;
  for (const key in value) if (!keys.has(key)) return false;
  return true;
}

// String limits are in code points for zod; a string within the limit in UTF-16 units is within it in code points.
const shortString = (value: unknown, max: number): value is string => typeof value === 'string' && value.length <= max;
const whole = (value: unknown, min: number): boolean => Number.isSafeInteger(value) && (value as number) >= min;

function isArrayOf(value: unknown, max: number, item: (entry: unknown) => boolean): boolean {
  if (!Array.isArray(value) || value.length > max) return false;
  for (let i = 0; i < value.length; i++) if (!item(value[i])) return false;
  return true;
}

const isConcurrencyLimit = (l: unknown): boolean =>
  isPlainWith(l, CONCURRENCY_KEYS) && CONCURRENCY_SCOPES.has(l.scope) && shortString(l.key, 1024) && l.key.length > 0 && whole(l.max, 0);

const isRateLimit = (l: unknown): boolean =>
  isPlainWith(l, RATE_KEYS) &&
  RATE_SCOPES.has(l.scope) &&
  shortString(l.key, 1024) &&
  l.key.length > 0 &&
  typeof l.perMinute === 'number' &&
  Number.isFinite(l.perMinute) &&
  l.perMinute > 0 &&
  whole(l.burst, 1);

const isTreeBudget = (t: unknown): boolean =>
  isPlainWith(t, TREE_KEYS) &&
  shortString(t.root, 1024) &&
  t.root.length > 0 &&
  (t.maxSpawns === null || whole(t.maxSpawns, 0)) &&
  (t.maxWorkerSeconds === null || whole(t.maxWorkerSeconds, 0)) &&
  whole(t.windowSeconds, 1);

const isWait = (w: unknown): boolean => isPlainWith(w, WAIT_KEYS) && whole(w.maxSeconds, 0) && (w.maxSeconds as number) <= 3600 && whole(w.priority, 0) && (w.priority as number) <= 255;

const isReason = (r: unknown): boolean => isPlainWith(r, REASON_KEYS) && shortString(r.code, 64) && REASON_CODE.test(r.code) && shortString(r.message, 2048);

/**
 * The decision schema written out by hand for the hot path: true only for values `decisionSchema`
 * accepts unchanged. It may say false for some that the schema accepts (a string over a limit in
 * UTF-16 units but not in code points, a non-plain object); checkDecision then asks the schema,
 * which stays the one definition. test/admission/decision.test.ts holds the two in agreement.
 */
export function isWellFormedDecision(raw: unknown): raw is Decision {
  if (!isPlainWith(raw, DECISION_KEYS)) return false;
  const { allow, backend, profile, egress, ttlSeconds, limits, reasons, egressAllow: hosts } = raw;
  if (
    (hosts !== undefined && !isArrayOf(hosts, 64, (h) => shortString(h, 260) && h.length > 0)) ||
    (raw.wait !== undefined && !isWait(raw.wait)) ||
    !isPlainWith(limits, LIMITS_KEYS) ||
    !isArrayOf(limits.concurrency, 64, isConcurrencyLimit) ||
    !isArrayOf(limits.rate, 64, isRateLimit) ||
    (limits.tree !== undefined && !isTreeBudget(limits.tree)) ||
    !isArrayOf(reasons, 64, isReason)
  ) {
    return false;
  }
  if (allow === true) {
    return typeof backend === 'string' && backend.length > 0 && typeof profile === 'string' && profile.length > 0 && EGRESS.has(egress) && whole(ttlSeconds, 1);
  }
  return (
    allow === false &&
    (backend === null || typeof backend === 'string') &&
    (profile === null || typeof profile === 'string') &&
    (egress === null || EGRESS.has(egress)) &&
    (ttlSeconds === null || whole(ttlSeconds, 1)) &&
    (reasons as unknown[]).length > 0
  );
}

/** Validates raw policy output; a malformed result becomes a deny that says what was wrong with it. */
export function checkDecision(raw: unknown): Decision {
  if (isWellFormedDecision(raw)) return raw;
  const parsed = decisionSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const first = parsed.error.issues[0];
  const where = first ? `${first.path.join('.') || '(root)'}: ${first.message}` : 'unknown shape';
  return denyWith([{ code: 'policy_output_invalid', message: `the policy returned an invalid decision (${where})` }]);
}
