import type { ErrorCode } from '../errors.js';
import { isSpawngateError } from '../errors.js';

/**
 * The one table from error codes to HTTP statuses. A `Record` over the whole union, so a new
 * ErrorCode does not compile until someone decides its status here.
 */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = {
  REQUEST_INVALID: 400,
  USAGE: 400,
  ADMISSION_DENIED: 403,
  SPAWN_NOT_FOUND: 404,
  WORKER_BUSY: 409,
  // The worker's workspace cannot give what was asked (not a git checkout, too large, no tar).
  WORKSPACE_UNAVAILABLE: 409,
  // The first request with this key still runs: the same request again, a little later, gets its spawn.
  IDEMPOTENCY_KEY_IN_PROGRESS: 409,
  // The key belongs to a different request (draft-ietf-httpapi-idempotency-key-header: 422).
  IDEMPOTENCY_KEY_REUSED: 422,
  // Problems of this server's own setup, not of the request.
  CONFIG_INVALID: 500,
  CONFIG_UNREADABLE: 500,
  BACKEND_NOT_FOUND: 500,
  DEPENDENCY_MISSING: 500,
  POLICY_TOOL_FAILED: 500,
  // Something behind this server answered badly.
  BACKEND_FAILED: 502,
  WORKER_PROTOCOL: 502,
  WORKER_UNAUTHORIZED: 502,
  // Something behind this server is not there right now; trying again later can work.
  BACKEND_UNAVAILABLE: 503,
  POLICY_UNAVAILABLE: 503,
  POLICY_LOAD_FAILED: 503,
  RESERVATION_FAILED: 503,
  // The store lost the reservation (lease lapsed in an outage): the worker was closed; a new spawn can work.
  LEASE_LOST: 503,
  TIMEOUT: 504,
};

/** Failures of the HTTP exchange itself, which no library call produces. */
export type HttpErrorCode = 'UNAUTHORIZED' | 'ROUTE_NOT_FOUND' | 'METHOD_NOT_ALLOWED' | 'PAYLOAD_TOO_LARGE' | 'UNSUPPORTED_MEDIA_TYPE' | 'SHUTTING_DOWN' | 'INTERNAL';

export const HTTP_ERROR_STATUS: Readonly<Record<HttpErrorCode, number>> = {
  UNAUTHORIZED: 401,
  ROUTE_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  PAYLOAD_TOO_LARGE: 413,
  // A body that is not declared `application/json` (charset utf-8 at most) is not read at all.
  UNSUPPORTED_MEDIA_TYPE: 415,
  INTERNAL: 500,
  SHUTTING_DOWN: 503,
};

export interface ErrorBody {
  error: { name: string; code: string; message: string; retryable: boolean } & Record<string, unknown>;
}

/** Same shape as SpawngateError.toJSON, for the errors of the HTTP layer. */
export function httpErrorBody(code: HttpErrorCode, message: string, details: Record<string, unknown> = {}): ErrorBody {
  return { error: { name: 'HttpError', code, message, retryable: code === 'SHUTTING_DOWN', ...details } };
}

/**
 * Status and body for anything a handler threw. A SpawngateError says what went wrong in its own
 * words and details; anything else is a bug, and its message and stack stay in the server's log.
 */
export function errorReply(err: unknown): { status: number; body: ErrorBody; internal: boolean } {
  if (isSpawngateError(err)) {
    const json = err.toJSON();
    let body: ErrorBody;
    try {
      // Details are free-form; one that cannot be serialized must not turn a clear error into a 500.
      body = JSON.parse(JSON.stringify({ error: json })) as ErrorBody;
    } catch {
      body = { error: { name: err.name, code: err.code, message: err.message, retryable: err.retryable } };
    }
    return { status: HTTP_STATUS[err.code], body, internal: false };
  }
  return { status: 500, body: httpErrorBody('INTERNAL', 'internal server error'), internal: true };
}
