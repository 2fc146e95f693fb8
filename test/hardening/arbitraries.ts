/**
 * Generators for the fuzz suite: valid requests and configs taken apart at random paths, strings
 * that are not text, JSON text with duplicate keys, raw bytes. What comes out is meant to be
 * refused as often as accepted, so both roads are walked.
 */
import fc from 'fast-check';

export const validRequest = (): Record<string, unknown> => ({
  agentId: 'echo',
  task: 'fix the failing test',
  caller: {
    sessionKey: 'agent:main:fuzz:1',
    depth: 0,
    channel: { id: 'fuzz-channel', kind: 'telegram', interactive: true },
    user: { id: 'fuzz-user', roles: ['dev'] },
  },
});

export const validConfig = (): Record<string, unknown> => ({
  agents: {
    acp: { codex: { command: ['codex-acp'], env: { LOG: 'info' } } },
    executionBackends: {
      local: {
        type: 'process',
        defaultProfile: 'default',
        maxConcurrent: 4,
        profiles: {
          default: { egress: 'none', ttlSeconds: 600, timeoutSeconds: 600, resources: { limits: { memory: '512Mi', cpu: '1' } } },
          build: { class: 'build', egress: 'proxy', egressAllow: ['registry.npmjs.org'] },
        },
      },
    },
    execution: { default: { backend: 'local', profile: 'default' } },
  },
});

/** Strings a JSON text or a JS caller can carry: ASCII, any Unicode, and lone surrogates. */
export const nastyString = fc.oneof(
  fc.string({ maxLength: 20 }),
  fc.string({ unit: 'binary', maxLength: 20 }),
  fc.constantFrom('\ud800', 'a\udfffb', '\u0000', '__proto__', 'constructor', 'toString', '../../etc/passwd', '${HOME}', ' ', ''),
  // Past the 64 KiB task limit; built, not generated char by char (which costs seconds per value).
  fc.constantFrom('x', '\u00e9', '\ud83d\ude00').map((c) => c.repeat(70_000)),
);

/** A value to put where a field was: anything JSON can say, and a few things only JS can. */
export const nastyJson: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 3, arbitrary: nastyString },
  { weight: 1, arbitrary: fc.constantFrom(null, true, 0, -1, 1e308, Number.MAX_SAFE_INTEGER + 2, 0.5, [], {}, [[[[]]]]) },
  { weight: 1, arbitrary: fc.dictionary(nastyString, fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 }) },
);

/** Every path of a JSON-like value, objects and arrays included (the root is []). */
export function pathsOf(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [prefix];
  if (Array.isArray(value)) value.forEach((v, i) => out.push(...pathsOf(v, [...prefix, i])));
  else if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) out.push(...pathsOf(v, [...prefix, k]));
  return out;
}

type Edit = { kind: 'set'; value: unknown } | { kind: 'delete' } | { kind: 'addKey'; key: string; value: unknown };

/** A deep copy of `base` with one to three edits at random existing paths. */
export function mutated(base: () => Record<string, unknown>): fc.Arbitrary<unknown> {
  const paths = pathsOf(base());
  const edit: fc.Arbitrary<{ at: (string | number)[]; edit: Edit }> = fc.record({
    at: fc.constantFrom(...paths),
    edit: fc.oneof(
      fc.record({ kind: fc.constant('set' as const), value: nastyJson }),
      fc.constant({ kind: 'delete' as const }),
      fc.record({ kind: fc.constant('addKey' as const), key: nastyString, value: nastyJson }),
    ),
  });
  return fc.array(edit, { minLength: 1, maxLength: 3 }).map((edits) => {
    let root: unknown = base();
    for (const { at, edit: e } of edits) root = apply(root, at, e);
    return root;
  });
}

function apply(root: unknown, at: (string | number)[], e: Edit): unknown {
  if (at.length === 0) {
    if (e.kind === 'set') return e.value;
    if (e.kind === 'delete') return undefined;
  }
  let parent: unknown = root;
  for (const step of at.slice(0, -1)) {
    if (parent === null || typeof parent !== 'object') return root;
    parent = (parent as Record<string | number, unknown>)[step];
  }
  const last = at[at.length - 1];
  const target = at.length === 0 ? root : parent !== null && typeof parent === 'object' && last !== undefined ? (parent as Record<string | number, unknown>)[last] : undefined;
  if (e.kind === 'addKey') {
    if (target !== null && typeof target === 'object' && !Array.isArray(target)) Object.defineProperty(target, e.key, { value: e.value, enumerable: true, writable: true, configurable: true });
    return root;
  }
  if (parent === null || typeof parent !== 'object' || last === undefined) return root;
  if (e.kind === 'delete') delete (parent as Record<string | number, unknown>)[last];
  else (parent as Record<string | number, unknown>)[last] = e.value;
  return root;
}

/** JSON text of a value with a key of its first object repeated: JSON.parse would keep the last silently. */
export function withDuplicateKey(value: Record<string, unknown>, key: string): string {
  const text = JSON.stringify(value);
  return text.replace(/^\{/, `{${JSON.stringify(key)}:"shadowed",`);
}

/** Texts as a file or an HTTP body can hold them: JSON of mutated values, duplicate keys, lone-surrogate escapes, broken text and raw bytes. */
export function bodyText(base: () => Record<string, unknown>): fc.Arbitrary<Uint8Array> {
  const enc = new TextEncoder();
  return fc.oneof(
    { weight: 4, arbitrary: mutated(base).map((v) => enc.encode(JSON.stringify(v) ?? 'null')) },
    { weight: 1, arbitrary: fc.constantFrom(...Object.keys(base())).map((k) => enc.encode(withDuplicateKey(base(), k))) },
    { weight: 1, arbitrary: fc.constantFrom('null', '[]', '"x"', '1', 'true', '{', '', ' ', '{"agentId":"\\ud800"}', '{"task":"\\udc00x"}', '\ufeff{}', '{"a":1}{"b":2}').map((t) => enc.encode(t)) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }) },
    { weight: 1, arbitrary: fc.tuple(fc.nat({ max: 40 }), fc.constantFrom(0xff, 0xc0, 0xed, 0x80)).map(([at, bad]) => {
      const ok = enc.encode(JSON.stringify(base()));
      const out = new Uint8Array(ok);
      out[Math.min(at, out.length - 1)] = bad;
      return out;
    }) },
  );
}
