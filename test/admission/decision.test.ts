import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkDecision, decisionSchema, denyWith, isWellFormedDecision } from '../../src/admission/decision.js';
import type { Decision } from '../../src/admission/types.js';

/** checkDecision as it was before the hand-written fast path: the schema alone. */
function schemaOnly(raw: unknown): Decision {
  const parsed = decisionSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const first = parsed.error.issues[0];
  const where = first ? `${first.path.join('.') || '(root)'}: ${first.message}` : 'unknown shape';
  return denyWith([{ code: 'policy_output_invalid', message: `the policy returned an invalid decision (${where})` }]);
}

const name = fc.string({ minLength: 1, maxLength: 12 });
const egress = fc.constantFrom('none', 'proxy', 'open');
const concurrency = fc.record({
  scope: fc.constantFrom('total', 'backend', 'profile', 'user', 'channel', 'profile_user', 'profile_channel', 'parent'),
  key: name,
  max: fc.nat(1000),
});
const rate = fc.record({
  scope: fc.constantFrom('user', 'channel'),
  key: name,
  perMinute: fc.oneof(fc.integer({ min: 1, max: 600 }), fc.double({ min: 0.001, max: 600, noNaN: true })),
  burst: fc.integer({ min: 1, max: 100 }),
});
const reason = fc.record({
  code: fc.stringMatching(/^[a-z][a-z0-9_.]{0,20}$/),
  message: fc.string({ maxLength: 80 }),
});
const tree = fc.record({
  root: name,
  maxSpawns: fc.option(fc.nat(1000)),
  maxWorkerSeconds: fc.option(fc.nat(1_000_000)),
  windowSeconds: fc.integer({ min: 1, max: 86_400 * 30 }),
});
const limits = fc.record({ concurrency: fc.array(concurrency, { maxLength: 8 }), rate: fc.array(rate, { maxLength: 3 }), tree }, { requiredKeys: ['concurrency', 'rate'] });

const allow = fc.record({
  allow: fc.constant(true as const),
  backend: name,
  profile: name,
  egress,
  ttlSeconds: fc.integer({ min: 1, max: 86_400 }),
  limits,
  reasons: fc.array(reason, { maxLength: 4 }),
});
const deny = fc.record({
  allow: fc.constant(false as const),
  backend: fc.option(fc.string({ maxLength: 12 })),
  profile: fc.option(fc.string({ maxLength: 12 })),
  egress: fc.option(egress),
  ttlSeconds: fc.option(fc.integer({ min: 1, max: 86_400 })),
  limits,
  reasons: fc.array(reason, { minLength: 1, maxLength: 4 }),
});
/** What a policy can return, through JSON as the engine reads it. */
const decision = fc.oneof(allow, deny).map((d) => JSON.parse(JSON.stringify(d)) as Decision);

/** Values at and just past every limit in the schema, and of every wrong type. */
const boundaryValues: unknown[] = [
  null, true, false, 0, -0, -1, 1, 1.5, 2 ** 53, Number.NaN, Infinity, -Infinity, 5e-324,
  '', 'x', 'none', 'proxy', 'open', 'total', 'user', 'team', 'Deny', 'a-b', '9a', [], {}, [1], { scope: 'user' },
  ...[64, 65, 1024, 1025, 2048, 2049].map((n) => 'a'.repeat(n)),
  ...[33, 513, 1025].map((n) => '😀'.repeat(n)),
];

type Path = (string | number)[];

/** Every position in a JSON value: objects, arrays and leaves. */
function positions(value: unknown, at: Path = []): Path[] {
  const here = [at];
  if (Array.isArray(value)) return here.concat(...value.map((v, i) => positions(v, [...at, i])));
  if (value !== null && typeof value === 'object') return here.concat(...Object.entries(value).map(([k, v]) => positions(v, [...at, k])));
  return here;
}

type Edit = { op: 'replace'; value: unknown } | { op: 'delete' } | { op: 'add'; key: string; value: unknown } | { op: 'grow'; to: number };

function edit(value: unknown, path: Path, change: Edit): unknown {
  if (path.length === 0) {
    if (change.op === 'replace') return change.value;
    if (change.op === 'grow' && Array.isArray(value)) {
      const items = value as unknown[];
      return Array.from({ length: change.to }, (_, i): unknown => items[i % Math.max(1, items.length)] ?? { code: 'x', message: '' });
    }
    if (change.op === 'add' && value !== null && typeof value === 'object' && !Array.isArray(value)) return { ...value, [change.key]: change.value };
    return value;
  }
  const [step, ...rest] = path;
  if (Array.isArray(value)) return (value as unknown[]).map((v, i) => (i === step ? edit(v, rest, change) : v));
  const record = { ...(value as Record<string, unknown>) };
  if (rest.length === 0 && change.op === 'delete') delete record[step as string];
  else record[step as string] = edit(record[step as string], rest, change);
  return record;
}

const anEdit: fc.Arbitrary<Edit> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...boundaryValues).map((value) => ({ op: 'replace' as const, value })) },
  { weight: 1, arbitrary: fc.anything().map((value) => ({ op: 'replace' as const, value })) },
  { weight: 2, arbitrary: fc.constant({ op: 'delete' as const }) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('extra', 'allow', 'key', '__proto__', 'constructor'), fc.constantFrom(...boundaryValues)).map(([key, value]) => ({ op: 'add' as const, key, value })) },
  { weight: 1, arbitrary: fc.constantFrom(0, 64, 65).map((to) => ({ op: 'grow' as const, to })) },
);

/** A well-formed decision with one edit at one position (sometimes two): mostly malformed, sometimes still valid. */
const malformed = fc
  .tuple(decision, fc.array(fc.tuple(fc.nat(), anEdit), { minLength: 1, maxLength: 2 }))
  .map(([d, edits]) => edits.reduce<unknown>((value, [pick, change]) => {
    const all = positions(value);
    return edit(value, all[pick % all.length] ?? [], change);
  }, d));

describe('decision check', () => {
  it('takes every well-formed decision on the fast path, as the schema does', () => {
    fc.assert(
      fc.property(decision, (d) => {
        expect(isWellFormedDecision(d)).toBe(true);
        expect(decisionSchema.safeParse(d).success).toBe(true);
        expect(checkDecision(d)).toEqual(schemaOnly(d));
      }),
      { numRuns: 2000 },
    );
  });

  it('agrees with the schema on malformed output: the fast path never accepts what the schema rejects', () => {
    fc.assert(
      fc.property(malformed, (raw) => {
        if (isWellFormedDecision(raw)) expect(decisionSchema.safeParse(raw).success).toBe(true);
        expect(checkDecision(raw)).toEqual(schemaOnly(raw));
      }),
      { numRuns: 20_000 },
    );
  });

  it('agrees with the schema on anything at all', () => {
    fc.assert(
      fc.property(fc.anything({ withNullPrototype: true, withObjectString: true }), (raw) => {
        if (isWellFormedDecision(raw)) expect(decisionSchema.safeParse(raw).success).toBe(true);
        expect(checkDecision(raw)).toEqual(schemaOnly(raw));
      }),
      { numRuns: 2000 },
    );
  });

  it.each([
    ['an allow without a profile', { allow: true, backend: 'k8s', profile: '', egress: 'none', ttlSeconds: 60, limits: { concurrency: [], rate: [] }, reasons: [] }],
    ['a deny without reasons', { allow: false, backend: null, profile: null, egress: null, ttlSeconds: null, limits: { concurrency: [], rate: [] }, reasons: [] }],
    ['an unknown key', { allow: true, backend: 'k8s', profile: 'small', egress: 'none', ttlSeconds: 60, limits: { concurrency: [], rate: [] }, reasons: [], extra: 1 }],
    ['a fractional TTL', { allow: true, backend: 'k8s', profile: 'small', egress: 'none', ttlSeconds: 1.5, limits: { concurrency: [], rate: [] }, reasons: [] }],
    ['an unknown scope', { allow: true, backend: 'k8s', profile: 'small', egress: 'none', ttlSeconds: 60, limits: { concurrency: [{ scope: 'team', key: 'a', max: 1 }], rate: [] }, reasons: [] }],
    ['a reason code with capitals', { allow: false, backend: null, profile: null, egress: null, ttlSeconds: null, limits: { concurrency: [], rate: [] }, reasons: [{ code: 'Denied', message: 'no' }] }],
    ['a tree budget without a window', { allow: true, backend: 'k8s', profile: 'small', egress: 'none', ttlSeconds: 60, limits: { concurrency: [], rate: [], tree: { root: 'r', maxSpawns: 3, maxWorkerSeconds: null } }, reasons: [] }],
    ['a tree budget with a fractional cap', { allow: true, backend: 'k8s', profile: 'small', egress: 'none', ttlSeconds: 60, limits: { concurrency: [], rate: [], tree: { root: 'r', maxSpawns: 2.5, maxWorkerSeconds: null, windowSeconds: 60 } }, reasons: [] }],
    ['a rate without burst', { allow: true, backend: 'k8s', profile: 'small', egress: 'none', ttlSeconds: 60, limits: { concurrency: [], rate: [{ scope: 'user', key: 'a', perMinute: 1 }] }, reasons: [] }],
  ])('turns %s into policy_output_invalid, naming the fault as the schema does', (_what, raw) => {
    expect(isWellFormedDecision(raw)).toBe(false);
    const checked = checkDecision(raw);
    expect(checked).toMatchObject({ allow: false, reasons: [{ code: 'policy_output_invalid' }] });
    expect(checked).toEqual(schemaOnly(raw));
  });

  it('measures string limits in code points, like the schema: a long emoji key is checked there, not rejected', () => {
    const key = '😀'.repeat(600); // 1,200 UTF-16 units, 600 code points: within the 1,024 limit
    const raw = { allow: true, backend: 'k8s', profile: 'small', egress: 'none', ttlSeconds: 60, limits: { concurrency: [{ scope: 'user', key, max: 1 }], rate: [] }, reasons: [] };
    expect(isWellFormedDecision(raw)).toBe(false);
    expect(checkDecision(raw)).toMatchObject({ allow: true });
    expect(checkDecision(raw)).toEqual(schemaOnly(raw));
  });
});
