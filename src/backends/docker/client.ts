/**
 * The one place dockerode is touched: loaded on first use (never at import time, so configs without
 * a container backend never pay for it or need it installed), and every Engine API error turned
 * into a BackendError that carries the engine's own message and HTTP status, not a stack.
 */
import type Dockerode from 'dockerode';
import { BackendError, SpawngateError } from '../../errors.js';

export type DockerClient = Dockerode;

export interface DockerClientOptions {
  /** Engine socket; default: DOCKER_HOST or /var/run/docker.sock, as the docker CLI does. */
  socketPath?: string;
  /** Idle bound on each Engine API request (no bytes for this long fails it); default none. */
  timeoutMs?: number;
}

let dockerodeModule: Promise<typeof Dockerode> | null = null;

/** Imports dockerode once per process; a missing install is DEPENDENCY_MISSING with the loader's error as cause. */
export function loadDockerode(): Promise<typeof Dockerode> {
  dockerodeModule ??= import('dockerode').then(
    (mod) => mod.default,
    (err: unknown) => {
      dockerodeModule = null;
      throw new SpawngateError('DEPENDENCY_MISSING', 'the container backend needs dockerode: install dockerode (npm install dockerode)', { cause: err });
    },
  );
  return dockerodeModule;
}

export async function connectDocker(options: DockerClientOptions = {}): Promise<DockerClient> {
  const Docker = await loadDockerode();
  return new Docker({
    ...(options.socketPath ? { socketPath: options.socketPath } : {}),
    ...(options.timeoutMs ? { timeout: options.timeoutMs } : {}),
  });
}

interface EngineErrorShape {
  statusCode?: number;
  reason?: string;
  json?: { message?: string } | string | null;
  code?: string;
  message?: string;
}

/** Socket-level failures: the engine is not there (yet); trying later can work. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'EACCES', 'ETIMEDOUT']);

export function engineStatus(err: unknown): number | null {
  const status = (err as EngineErrorShape | null)?.statusCode;
  return typeof status === 'number' ? status : null;
}

/** The engine's explanation without dockerode's "(HTTP code 404) no such container -" prefix. */
export function engineMessage(err: unknown): string {
  const e = (err ?? {}) as EngineErrorShape;
  if (e.json && typeof e.json === 'object' && typeof e.json.message === 'string') return e.json.message;
  if (typeof e.json === 'string' && e.json.trim() !== '') return e.json.trim();
  const message = typeof e.message === 'string' ? e.message : String(err);
  return message.replace(/^\(HTTP code \d+\)\s*[^-]*-\s*/, '').trim() || message;
}

/**
 * Maps an Engine API (or transport) error to a BackendError. `action` says what we were doing
 * ("create container", "inspect image"); details always hold `statusCode` (null for transport errors).
 */
export function toBackendError(err: unknown, action: string, details: Record<string, unknown> = {}): SpawngateError {
  if (err instanceof SpawngateError) return err;
  const statusCode = engineStatus(err);
  const errno = (err as EngineErrorShape | null)?.code;
  if (statusCode === null && typeof errno === 'string' && UNREACHABLE.has(errno)) {
    return new BackendError('BACKEND_UNAVAILABLE', `docker engine unreachable during ${action} (${errno}); is dockerd running? (scripts/ensure-docker.sh)`, {
      retryable: true,
      cause: err,
      details: { ...details, statusCode: null, errno, action },
    });
  }
  return new BackendError('BACKEND_FAILED', `docker ${action} failed: ${engineMessage(err)}`, {
    // 5xx from the engine is often transient (daemon busy, containerd restarting); 4xx is our request.
    retryable: statusCode !== null && statusCode >= 500,
    cause: err,
    details: { ...details, statusCode, action },
  });
}

/** Runs an Engine API call and maps its failure. */
export async function engineCall<T>(action: string, call: () => Promise<T>, details?: Record<string, unknown>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw toBackendError(err, action, details);
  }
}

/** Like engineCall, but a 404 (no such container/volume/image) yields `onNotFound`: gone is an answer, not a failure. */
export async function engineCallOr404<T, F>(action: string, call: () => Promise<T>, onNotFound: F, details?: Record<string, unknown>): Promise<T | F> {
  try {
    return await call();
  } catch (err) {
    if (engineStatus(err) === 404) return onNotFound;
    throw toBackendError(err, action, details);
  }
}
