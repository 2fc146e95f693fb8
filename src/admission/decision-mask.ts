/**
 * Masking of decision-log events as OPA does it (its decision-log plugin's mask.go): the bundle's
 * `system.log.mask` rule, evaluated on an event, names JSON pointers to erase, or
 * `{op: "remove" | "upsert", path, value}` operations; they apply to the event's `input` and
 * `result`, and what was done is recorded in the event's `erased` and `masked` lists.
 *
 * Where spawngate differs, it is to keep a secret out rather than a line out: OPA drops an event
 * whose mask rule fails; here the line stays (its decision is the audit trail) without its input.
 */

export const MASK_ENTRYPOINT = 'system/log/mask';

/** What the engine's mask evaluation returns: the rule's output as it is, or why there is none. */
export type MaskEvaluation = { ok: true; output: unknown } | { ok: false; error: string };

interface MaskOp {
  op: 'remove' | 'upsert';
  /** The pointer as the rule wrote it, for the erased/masked lists. */
  path: string;
  /** Unescaped reference tokens after the first (`input` or `result`). */
  part: 'input' | 'result' | 'nd_builtin_cache';
  tokens: string[];
  value?: unknown;
}

/** An event's maskable members, changed in place by applyMask. */
export interface Maskable {
  input?: unknown;
  result?: unknown;
}

export interface MaskOutcome {
  erased: string[];
  masked: string[];
  /** Why the rule's output could not be used as it is; non-empty means the whole input was erased. */
  problems: string[];
}

const PARTS = new Set(['input', 'result', 'nd_builtin_cache']);

function parsePointer(path: unknown): { part: MaskOp['part']; tokens: string[] } | string {
  if (typeof path !== 'string' || path === '') return 'a mask must be a non-empty JSON pointer';
  if (!path.startsWith('/')) return `mask ${JSON.stringify(path)} must start with "/"`;
  const [first, ...rest] = path
    .slice(1)
    .split('/')
    .map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (first === undefined || !PARTS.has(first)) return `mask ${JSON.stringify(path)} must start with /input or /result`;
  return { part: first as MaskOp['part'], tokens: rest };
}

function parseOp(entry: unknown): MaskOp | string {
  if (typeof entry === 'string') {
    const pointer = parsePointer(entry);
    return typeof pointer === 'string' ? pointer : { op: 'remove', path: entry, ...pointer };
  }
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) return 'a mask must be a JSON pointer or {op, path, value}';
  const { op = 'remove', path, value } = entry as { op?: unknown; path?: unknown; value?: unknown };
  if (op !== 'remove' && op !== 'upsert') return `mask op ${JSON.stringify(op)} is not "remove" or "upsert"`;
  const pointer = parsePointer(path);
  if (typeof pointer === 'string') return pointer;
  return { op, path: path as string, ...pointer, ...(op === 'upsert' ? { value } : {}) };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function index(token: string, length: number): number | null {
  if (!/^(0|[1-9][0-9]*)$/.test(token)) return null;
  const i = Number(token);
  return i < length ? i : null;
}

/** Removes the member at `tokens`; false (nothing recorded) when the path does not exist. */
function remove(root: unknown, tokens: readonly string[]): boolean {
  let node = root;
  for (const token of tokens.slice(0, -1)) {
    if (isObject(node) && Object.hasOwn(node, token)) node = node[token];
    else if (Array.isArray(node) && index(token, node.length) !== null) node = node[index(token, node.length)!];
    else return false;
  }
  const last = tokens[tokens.length - 1]!;
  if (isObject(node) && Object.hasOwn(node, last)) {
    delete node[last];
    return true;
  }
  if (Array.isArray(node)) {
    const i = index(last, node.length);
    if (i === null) return false;
    node.splice(i, 1);
    return true;
  }
  return false;
}

/** Sets the member at `tokens`, creating missing objects on the way (OPA's mkdirp); false when a step is no container. */
function upsert(root: unknown, tokens: readonly string[], value: unknown): boolean {
  let node = root;
  for (const token of tokens.slice(0, -1)) {
    if (isObject(node)) {
      if (!Object.hasOwn(node, token)) Object.defineProperty(node, token, { value: {}, enumerable: true, writable: true, configurable: true });
      node = node[token];
    } else if (Array.isArray(node) && index(token, node.length) !== null) {
      node = node[index(token, node.length)!];
    } else {
      return false;
    }
  }
  const last = tokens[tokens.length - 1]!;
  if (isObject(node)) {
    Object.defineProperty(node, last, { value, enumerable: true, writable: true, configurable: true });
    return true;
  }
  if (Array.isArray(node)) {
    const i = index(last, node.length);
    if (i === null) return false;
    node[i] = value;
    return true;
  }
  return false;
}

function applyOne(event: Maskable, op: MaskOp): boolean {
  if (op.part === 'nd_builtin_cache') return false; // spawngate's events have none: always undefined
  const present = event[op.part] !== undefined;
  if (op.tokens.length === 0) {
    if (op.op === 'remove') {
      if (!present) return false;
      delete event[op.part];
      return true;
    }
    event[op.part] = op.value;
    return true;
  }
  if (!present) return false;
  return op.op === 'remove' ? remove(event[op.part], op.tokens) : upsert(event[op.part], op.tokens, op.value);
}

/**
 * Applies a mask rule's output to `event` (which must be the caller's own copy). An output that is
 * not a list of valid masks cannot say what to hide, so the input goes whole, and the valid masks
 * still apply to the result.
 */
export function applyMask(event: Maskable, output: unknown): MaskOutcome {
  const outcome: MaskOutcome = { erased: [], masked: [], problems: [] };
  const entries = output === undefined || output === null ? [] : Array.isArray(output) ? output : null;
  if (entries === null) outcome.problems.push('the mask rule did not return a set');
  const ops: MaskOp[] = [];
  for (const entry of entries ?? []) {
    const parsed = parseOp(entry);
    if (typeof parsed === 'string') outcome.problems.push(parsed);
    else ops.push(parsed);
  }
  if (outcome.problems.length > 0) ops.unshift({ op: 'remove', path: '/input', part: 'input', tokens: [] });
  for (const op of ops) {
    if (!applyOne(event, op)) continue;
    (op.op === 'remove' ? outcome.erased : outcome.masked).push(op.path);
  }
  return outcome;
}
