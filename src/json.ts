/** How deep a JSON document may nest before it is refused (recursion is bounded, never a stack overflow). */
export const MAX_JSON_DEPTH = 256;

export interface JsonFault {
  offset: number;
  message: string;
  /** Where in the document: the keys and indexes leading to the fault (formatPath() prints it). */
  path: (string | number)[];
}

class JsonFaultSignal extends Error {
  readonly fault: JsonFault;
  constructor(fault: JsonFault) {
    super(fault.message);
    this.fault = fault;
  }
}

/** A strict JSON (RFC 8259) recogniser that reports the first fault's offset, including duplicate keys. */
export function scanJson(text: string): JsonFault | null {
  let i = 0;
  const path: (string | number)[] = [];
  const fail = (message: string, at = i): never => {
    throw new JsonFaultSignal({ offset: at, message, path: [...path] });
  };
  const describe = (at: number): string => (at >= text.length ? 'end of input' : `"${text[at]}"`);
  const ws = (): void => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const string = (): string => {
    const start = i;
    i++;
    for (;;) {
      if (i >= text.length) fail('unterminated string', start);
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        const value = JSON.parse(text.slice(start, i)) as string;
        // A lone surrogate (raw or \u-escaped) is valid JSON but not text: it cannot be encoded as
        // UTF-8 and turns into an evaluation error deep in the policy engine instead of a clear fault here.
        if (!value.isWellFormed()) fail('lone surrogate in string (not valid Unicode text)', start);
        return value;
      }
      if (c < 0x20) fail('control character in string');
      if (c === 0x5c) {
        const e = text[i + 1];
        if (e === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) fail('invalid \\u escape');
          i += 6;
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) i += 2;
        else fail('invalid escape');
      } else i++;
    }
  };
  const numberRe = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  const value = (depth: number): void => {
    if (depth > MAX_JSON_DEPTH) fail(`nesting deeper than ${MAX_JSON_DEPTH}`);
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const keys = new Set<string>();
      ws();
      if (text[i] === '}') {
        i++;
        return;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail(`expected a property name, found ${describe(i)}`);
        const keyAt = i;
        const key = string();
        path.push(key);
        if (keys.has(key)) fail(`duplicate key ${JSON.stringify(key)}`, keyAt);
        keys.add(key);
        ws();
        if (text[i] !== ':') fail(`expected ":", found ${describe(i)}`);
        i++;
        value(depth + 1);
        path.pop();
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return;
        }
        fail(`expected "," or "}", found ${describe(i)}`);
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return;
      }
      for (let index = 0; ; index++) {
        path.push(index);
        value(depth + 1);
        path.pop();
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return;
        }
        fail(`expected "," or "]", found ${describe(i)}`);
      }
    }
    if (c === '"') {
      string();
      return;
    }
    for (const literal of ['true', 'false', 'null']) {
      if (text.startsWith(literal, i)) {
        i += literal.length;
        return;
      }
    }
    numberRe.lastIndex = i;
    const m = numberRe.exec(text);
    if (m && m[0].length > 0) {
      i += m[0].length;
      return;
    }
    fail(`unexpected ${describe(i)}`);
  };
  try {
    value(0);
    ws();
    if (i < text.length) fail(`unexpected ${describe(i)} after the end of the document`);
    return null;
  } catch (signal) {
    if (signal instanceof JsonFaultSignal) return signal.fault;
    throw signal;
  }
}

/** A parse error with where it happened, for a caller to turn into its own error type. */
export class StrictJsonError extends Error {
  readonly offset: number;
  readonly path: (string | number)[];
  constructor(fault: JsonFault) {
    super(fault.message);
    this.name = 'StrictJsonError';
    this.offset = fault.offset;
    this.path = fault.path;
  }
}

/**
 * JSON.parse after a strict scan: duplicate keys (JSON.parse keeps the last silently — a quiet way
 * to override a field a check already read), lone surrogates and nesting past MAX_JSON_DEPTH are faults.
 */
export function parseStrictJson(text: string): unknown {
  const fault = scanJson(text);
  if (fault) throw new StrictJsonError(fault);
  return JSON.parse(text) as unknown;
}

