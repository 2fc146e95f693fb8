/**
 * One error family for the whole library. Callers branch on `code` (stable, documented),
 * never on message text. `retryable` tells a gateway whether trying the same call later can work.
 */
export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'CONFIG_UNREADABLE'
  | 'REQUEST_INVALID'
  | 'USAGE'
  | 'ADMISSION_DENIED'
  | 'POLICY_UNAVAILABLE'
  | 'POLICY_LOAD_FAILED'
  | 'POLICY_TOOL_FAILED'
  | 'RESERVATION_FAILED'
  | 'LEASE_LOST'
  | 'BACKEND_UNAVAILABLE'
  | 'BACKEND_FAILED'
  | 'BACKEND_NOT_FOUND'
  | 'DEPENDENCY_MISSING'
  | 'WORKER_PROTOCOL'
  | 'WORKER_BUSY'
  | 'WORKER_UNAUTHORIZED'
  | 'SPAWN_NOT_FOUND'
  | 'WORKSPACE_UNAVAILABLE'
  | 'IDEMPOTENCY_KEY_REUSED'
  | 'IDEMPOTENCY_KEY_IN_PROGRESS'
  | 'TIMEOUT';

export interface SpawngateErrorOptions {
  cause?: unknown;
  retryable?: boolean;
  details?: Record<string, unknown>;
}

export class SpawngateError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: SpawngateErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = options.details ?? {};
  }

  toJSON(): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, retryable: this.retryable, ...this.details };
  }
}

/** One fault in a config file or request, located by its JSON path (e.g. `agents.executionBackends.k8s.type`). */
export interface Issue {
  path: string;
  message: string;
}

export class ConfigError extends SpawngateError {
  readonly issues: readonly Issue[];
  constructor(message: string, issues: readonly Issue[] = [], options: SpawngateErrorOptions & { code?: 'CONFIG_INVALID' | 'CONFIG_UNREADABLE' } = {}) {
    super(options.code ?? 'CONFIG_INVALID', message, { ...options, details: { ...options.details, issues } });
    this.issues = issues;
  }
}

export class RequestError extends SpawngateError {
  readonly issues: readonly Issue[];
  constructor(message: string, issues: readonly Issue[] = [], options: SpawngateErrorOptions = {}) {
    super('REQUEST_INVALID', message, { ...options, details: { ...options.details, issues } });
    this.issues = issues;
  }
}

/** Bad command line: the CLI maps it to exit code 2. */
export class UsageError extends SpawngateError {
  constructor(message: string, options: SpawngateErrorOptions = {}) {
    super('USAGE', message, options);
  }
}

export interface DenyReason {
  code: string;
  message: string;
}

export class AdmissionDeniedError extends SpawngateError {
  readonly reasons: readonly DenyReason[];
  constructor(reasons: readonly DenyReason[], options: SpawngateErrorOptions = {}) {
    const first = reasons[0];
    super('ADMISSION_DENIED', first ? `spawn denied: ${first.code}: ${first.message}` : 'spawn denied', {
      ...options,
      details: { ...options.details, reasons },
    });
    this.reasons = reasons;
  }
}

export class PolicyError extends SpawngateError {}

export class BackendError extends SpawngateError {}

export class WorkerProtocolError extends SpawngateError {}

/** Formats zod-style issue paths as `a.b[0].c`, the form shown to users. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else {
      const key = String(part);
      out += /^[A-Za-z_$][\w$-]*$/.test(key) ? (out ? `.${key}` : key) : `[${JSON.stringify(key)}]`;
    }
  }
  return out || '(root)';
}

export function isSpawngateError(err: unknown): err is SpawngateError {
  return err instanceof SpawngateError;
}
