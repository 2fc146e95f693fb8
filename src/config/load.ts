import { extname } from 'node:path';
import { parseDocument } from 'yaml';
import { ConfigError, formatPath, type Issue } from '../errors.js';
import { BoundedReadError, readBoundedFile, strictUtf8 } from '../files.js';
import { errorMap, reservedKeyIssues, toIssues } from './issues.js';
import { scanJson } from '../json.js';
import { configSchema, TYPE_SPECIFIC_KEYS, type SpawngateConfig } from './schema.js';

/** A config is a few KiB; anything near this is a mistake (wrong file, or a device). */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;
const MAX_YAML_ALIASES = 100;

export type ConfigFormat = 'json' | 'yaml';

export type ValidationResult = { ok: true; config: SpawngateConfig } | { ok: false; issues: Issue[] };

/** Reads a JSON or YAML config file and validates it. */
export async function loadConfigFile(path: string): Promise<SpawngateConfig> {
  const text = await readBounded(path);
  return parseConfigText(text, { source: path, format: formatFromPath(path) });
}

/**
 * Like loadConfigFile, but reports faults (unreadable file, syntax, schema) as issues instead of
 * throwing; for `spawngate config validate`.
 */
export async function validateConfigFile(path: string): Promise<ValidationResult> {
  try {
    return { ok: true, config: await loadConfigFile(path) };
  } catch (err) {
    if (err instanceof ConfigError) return { ok: false, issues: [...err.issues] };
    throw err;
  }
}

/**
 * Parses config text. `format` defaults to sniffing: text starting with "{" is JSON, anything
 * else YAML — so the JSON parser, which is stricter and rejects duplicate keys too, gets JSON.
 */
export function parseConfigText(text: string, options: { source?: string; format?: ConfigFormat } = {}): SpawngateConfig {
  const source = options.source;
  const body = text.startsWith('\uFEFF') ? text.slice(1) : text;
  const format = options.format ?? (/^\s*\{/.test(body) ? 'json' : 'yaml');
  const value = format === 'json' ? parseJson(body, source) : parseYaml(body, source);
  return parseConfig(value, source);
}

/** Validates an already-parsed value; throws ConfigError listing every fault by JSON path. */
export function parseConfig(value: unknown, source?: string): SpawngateConfig {
  const result = validateConfig(value);
  if (result.ok) return result.config;
  const where = source ? ` in ${source}` : '';
  const lines = result.issues.map((i) => `  ${i.path}: ${i.message}`).join('\n');
  throw new ConfigError(`invalid config${where} (${result.issues.length} ${result.issues.length === 1 ? 'problem' : 'problems'}):\n${lines}`, result.issues, {
    details: source ? { source } : {},
  });
}

export function validateConfig(value: unknown): ValidationResult {
  const reserved = reservedKeyIssues(value);
  const result = configSchema.safeParse(value, { error: errorMap });
  if (result.success && reserved.length === 0) return { ok: true, config: result.data };
  return { ok: false, issues: [...(result.success ? [] : toIssues(result.error, typeSpecificHint)), ...reserved] };
}

/** The embedded default: one process backend, deny-by-default egress. */
export function defaultConfig(): SpawngateConfig {
  return {
    agents: {
      executionBackends: {
        local: {
          type: 'process',
          defaultProfile: 'default',
          profiles: { default: { egress: 'none', ttlSeconds: 3600, timeoutSeconds: 3600 } },
        },
      },
      execution: { default: { backend: 'local', profile: 'default' } },
    },
  };
}

function typeSpecificHint(parent: readonly PropertyKey[], key: string): string | undefined {
  if (parent.length !== 3 || parent[0] !== 'agents' || parent[1] !== 'executionBackends') return undefined;
  // Own keys only: "constructor" or "toString" would otherwise find Object.prototype's functions.
  const owner = Object.hasOwn(TYPE_SPECIFIC_KEYS, key) ? TYPE_SPECIFIC_KEYS[key] : undefined;
  return owner ? `"${key}" is only valid on ${owner} backends` : undefined;
}

function formatFromPath(path: string): ConfigFormat | undefined {
  const ext = extname(path).toLowerCase();
  if (ext === '.json') return 'json';
  if (ext === '.yaml' || ext === '.yml') return 'yaml';
  return undefined;
}

async function readBounded(path: string): Promise<string> {
  let bytes: Buffer;
  try {
    bytes = await readBoundedFile(path, MAX_CONFIG_BYTES);
  } catch (cause) {
    const reason = cause instanceof BoundedReadError && cause.fault.reason === 'too_large' ? `file is larger than ${MAX_CONFIG_BYTES} bytes` : cause instanceof Error ? cause.message : String(cause);
    throw new ConfigError(`cannot read config ${path}: ${reason}`, [{ path: '(root)', message: reason }], {
      code: 'CONFIG_UNREADABLE',
      cause,
      details: { source: path, ...(cause instanceof BoundedReadError ? { reason: cause.fault.reason } : {}) },
    });
  }
  const text = strictUtf8(bytes);
  if (text === null) throw syntaxError(path, 'file is not valid UTF-8');
  return text;
}

function syntaxError(source: string | undefined, message: string, pos?: { line: number; column: number }, cause?: unknown, at: readonly (string | number)[] = []): ConfigError {
  const where = pos ? `${source ?? 'config'}:${pos.line}:${pos.column}` : (source ?? 'config');
  const text = pos ? `line ${pos.line}, column ${pos.column}: ${message}` : message;
  const path = formatPath(at);
  return new ConfigError(`cannot parse ${where}${at.length ? ` at ${path}` : ''}: ${message}`, [{ path, message: text }], {
    cause,
    details: { ...(source ? { source } : {}), ...(pos ?? {}) },
  });
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  const end = Math.min(offset, text.length);
  for (let i = 0; i < end; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: end - lineStart + 1 };
}

function parseYaml(text: string, source: string | undefined): unknown {
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true, version: '1.2' });
  const first = doc.errors[0];
  if (first) {
    const message =
      first.code === 'DUPLICATE_KEY' ? 'duplicate key' : first.code === 'MULTIPLE_DOCS' ? 'a config file holds exactly one YAML document' : first.message;
    throw syntaxError(source, message, lineColumn(text, first.pos[0]), first);
  }
  try {
    return doc.toJS({ maxAliasCount: MAX_YAML_ALIASES });
  } catch (cause) {
    throw syntaxError(source, cause instanceof Error ? cause.message : String(cause), undefined, cause);
  }
}

function parseJson(text: string, source: string | undefined): unknown {
  // JSON.parse alone neither reports where a fault is in every engine version nor catches
  // duplicate keys (it silently keeps the last — a quiet way to override a security setting).
  const fault = scanJson(text);
  if (fault) throw syntaxError(source, fault.message, lineColumn(text, fault.offset), undefined, fault.path);
  return JSON.parse(text) as unknown;
}

