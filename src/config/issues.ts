import type { z } from 'zod';
import { formatPath, type Issue } from '../errors.js';

/**
 * Turns zod issues into `{path, message}` pairs a person can act on. zod reports an unknown key
 * on its parent object; we point at the key itself, because that is where the typo is.
 */
export function toIssues(error: z.ZodError, hintForKey?: (path: readonly PropertyKey[], key: string) => string | undefined): Issue[] {
  const out: Issue[] = [];
  for (const issue of error.issues) {
    switch (issue.code) {
      case 'unrecognized_keys':
        for (const key of issue.keys) {
          const path = [...issue.path, key];
          const hint = hintForKey?.(issue.path, key);
          out.push({ path: formatPath(path), message: hint ? `unknown key; ${hint}` : 'unknown key' });
        }
        break;
      case 'invalid_key': {
        const key = issue.path[issue.path.length - 1];
        const inner = issue.issues[0]?.message ?? 'invalid name';
        out.push({ path: formatPath(issue.path), message: `invalid key ${JSON.stringify(String(key))}: ${inner}` });
        break;
      }
      default:
        out.push({ path: formatPath(issue.path), message: issue.message });
    }
  }
  return dedupe(out);
}

function dedupe(issues: Issue[]): Issue[] {
  const seen = new Set<string>();
  return issues.filter((i) => {
    const k = `${i.path}\u0000${i.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

function describeValue(input: unknown): string {
  if (input === null) return 'null';
  if (Array.isArray(input)) return 'array';
  return typeof input;
}

/**
 * Per-parse error map: plainer wording than zod's defaults. Schema-level messages (regex hints,
 * cross-field checks) take precedence over this, so it only shapes the generic cases.
 */
export const errorMap: z.core.$ZodErrorMap = (issue) => {
  switch (issue.code) {
    case 'invalid_type':
      if (issue.input === undefined) return 'required';
      return `expected ${issue.expected}, received ${describeValue(issue.input)}`;
    case 'too_big': {
      const max = String(issue.maximum);
      if (issue.origin === 'string') return `must be at most ${max} characters`;
      if (issue.origin === 'array') return `must have at most ${max} items`;
      if (issue.origin === 'number' || issue.origin === 'int') return issue.inclusive === false ? `must be less than ${max}` : `must be at most ${max}`;
      return undefined;
    }
    case 'too_small': {
      const min = String(issue.minimum);
      if (issue.origin === 'string') return issue.minimum === 1 ? 'must not be empty' : `must be at least ${min} characters`;
      if (issue.origin === 'array') return `must have at least ${min} items`;
      if (issue.origin === 'number' || issue.origin === 'int') return issue.inclusive === false ? `must be greater than ${min}` : `must be at least ${min}`;
      return undefined;
    }
    case 'invalid_value':
      return `must be ${issue.values.length === 1 ? JSON.stringify(issue.values[0]) : `one of: ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`}`;
    case 'invalid_union':
      if (issue.note === 'No matching discriminator' && 'options' in issue && Array.isArray(issue.options)) {
        const options = (issue.options as unknown[]).map((v) => JSON.stringify(v)).join(', ');
        // zod hands over the object that lacks a matching discriminator, not the discriminator's value.
        const holder = issue.input;
        const missing = typeof holder !== 'object' || holder === null || !('discriminator' in issue) || (holder as Record<string, unknown>)[String(issue.discriminator)] === undefined;
        return missing ? `required; one of: ${options}` : `must be one of: ${options}`;
      }
      return undefined;
    default:
      return undefined;
  }
};

/**
 * What zod lets through without a word: a "__proto__" key (dropped from records) and strings that
 * are not text (lone surrogates); for a strict config or request that silence is wrong, so both are
 * reported wherever they appear.
 */
export function reservedKeyIssues(value: unknown): Issue[] {
  const out: Issue[] = [];
  const seen = new Set<object>();
  // A lone surrogate (a "\ud800" escape, or a JS string cut in half) is no text: it cannot be written
  // as UTF-8, and left in it surfaces as an evaluation error deep in the policy engine.
  const notText = 'is not valid Unicode text (contains a lone surrogate)';
  // One path, extended and cut back as the walk goes: this runs on every spawn request, and a copy
  // of the path per key was most of its cost. It is copied only into an issue.
  const path: PropertyKey[] = [];
  const issueAt = (key: PropertyKey, message: string): void => {
    out.push({ path: formatPath([...path, key]), message });
  };
  const walk = (v: unknown): void => {
    if (typeof v === 'string') {
      if (!v.isWellFormed()) out.push({ path: formatPath(path), message: notText });
      return;
    }
    if (typeof v !== 'object' || v === null || seen.has(v) || path.length > 64) return;
    seen.add(v);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        path.push(i);
        walk(v[i]);
        path.pop();
      }
      return;
    }
    for (const key of Object.keys(v)) {
      if (key === '__proto__') issueAt(key, 'reserved key');
      else if (!key.isWellFormed()) issueAt(key, `key ${notText}`);
      else {
        path.push(key);
        walk((v as Record<string, unknown>)[key]);
        path.pop();
      }
    }
  };
  walk(value);
  return out;
}
