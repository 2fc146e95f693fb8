/**
 * The one place @kubernetes/client-node is touched: loaded on first use (configs without a
 * kubernetes backend never load it or need it installed), the kubeconfig found the way kubectl
 * finds it, and every API error turned into a BackendError carrying the API's status code, reason
 * and message — never the client's stack or its dump of response headers.
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type * as K8s from '@kubernetes/client-node';
import { BackendError, SpawngateError } from '../../errors.js';

export type KubernetesModule = typeof K8s;

let clientModule: Promise<KubernetesModule> | null = null;

/** Imports @kubernetes/client-node once per process; a missing install is DEPENDENCY_MISSING with the loader's error as cause. */
export function loadKubernetesClient(): Promise<KubernetesModule> {
  clientModule ??= import('@kubernetes/client-node').then(
    (mod) => mod,
    (err: unknown) => {
      clientModule = null;
      throw new SpawngateError('DEPENDENCY_MISSING', 'the kubernetes backend needs @kubernetes/client-node: install @kubernetes/client-node (npm install @kubernetes/client-node)', {
        cause: err,
      });
    },
  );
  return clientModule;
}

export interface KubernetesConnectOptions {
  /** Path of a kubeconfig file; default KUBECONFIG, then ~/.kube/config, then the in-cluster service account. */
  kubeconfig?: string;
  /** Context in the kubeconfig; default its current-context. */
  context?: string;
}

export interface KubernetesClients {
  k8s: KubernetesModule;
  kc: K8s.KubeConfig;
  core: K8s.CoreV1Api;
  networking: K8s.NetworkingV1Api;
  authorization: K8s.AuthorizationV1Api;
  version: K8s.VersionApi;
  /** Where the credentials came from, for messages: "kubeconfig /path (context x)" or "in-cluster service account". */
  source: string;
  server: string;
}

const IN_CLUSTER_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/**
 * Explicit path → that file; else KUBECONFIG / ~/.kube/config; else the in-cluster service account.
 * Nothing found is BACKEND_UNAVAILABLE, not client-node's silent fallback to http://localhost:8080.
 */
export async function connectKubernetes(options: KubernetesConnectOptions = {}): Promise<KubernetesClients> {
  const k8s = await loadKubernetesClient();
  const kc = new k8s.KubeConfig();
  let source: string;
  try {
    if (options.kubeconfig) {
      if (!existsSync(options.kubeconfig)) throw new Error(`file ${options.kubeconfig} does not exist`);
      kc.loadFromFile(options.kubeconfig);
      source = `kubeconfig ${options.kubeconfig}`;
    } else if (process.env['KUBECONFIG']) {
      kc.loadFromDefault();
      source = `kubeconfig ${process.env['KUBECONFIG']} (KUBECONFIG)`;
    } else if (existsSync(join(homedir(), '.kube', 'config'))) {
      kc.loadFromDefault();
      source = `kubeconfig ${join(homedir(), '.kube', 'config')}`;
    } else if (process.env['KUBERNETES_SERVICE_HOST'] && existsSync(IN_CLUSTER_TOKEN)) {
      kc.loadFromCluster();
      source = 'in-cluster service account';
    } else {
      throw new BackendError(
        'BACKEND_UNAVAILABLE',
        'no Kubernetes credentials found: set `kubeconfig` on the backend, or KUBECONFIG, or create ~/.kube/config, or run spawngate in a pod with a service account',
        { details: { reason: 'NoKubeconfig' } },
      );
    }
  } catch (err) {
    if (err instanceof SpawngateError) throw err;
    throw new BackendError('BACKEND_UNAVAILABLE', `cannot load Kubernetes credentials: ${(err as Error).message}`, { cause: err, details: { reason: 'KubeconfigUnreadable' } });
  }
  if (options.context) {
    if (!kc.getContexts().some((c) => c.name === options.context)) {
      throw new BackendError('BACKEND_UNAVAILABLE', `context ${options.context} is not in ${source} (contexts: ${kc.getContexts().map((c) => c.name).join(', ') || 'none'})`, {
        details: { reason: 'ContextNotFound' },
      });
    }
    kc.setCurrentContext(options.context);
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new BackendError('BACKEND_UNAVAILABLE', `${source} has no current cluster`, { details: { reason: 'NoCluster' } });
  const context = kc.getCurrentContext();
  return {
    k8s,
    kc,
    core: kc.makeApiClient(k8s.CoreV1Api),
    networking: kc.makeApiClient(k8s.NetworkingV1Api),
    authorization: kc.makeApiClient(k8s.AuthorizationV1Api),
    version: kc.makeApiClient(k8s.VersionApi),
    source: context && source.startsWith('kubeconfig') ? `${source} (context ${context})` : source,
    server: cluster.server,
  };
}

/** A metav1.Status cause: which field, and what is wrong with it. */
export interface StatusCause {
  field?: string;
  message?: string;
  reason?: string;
}

export interface ApiStatus {
  statusCode: number | null;
  reason: string | null;
  message: string | null;
  kind: string | null;
  causes: StatusCause[];
}

interface ApiExceptionShape {
  code?: unknown;
  body?: unknown;
}

/** The HTTP status and Kubernetes Status body of a failed call; null when it never reached the API. */
export function apiStatus(err: unknown): ApiStatus | null {
  const e = err as ApiExceptionShape | null;
  if (typeof e?.code !== 'number') {
    // Watch failures carry `statusCode` instead.
    const watchCode = (err as { statusCode?: unknown } | null)?.statusCode;
    if (typeof watchCode !== 'number') return null;
    // Its message is only the HTTP status text; the API's Status body is not kept by client-node.
    return { statusCode: watchCode, reason: null, message: null, kind: null, causes: [] };
  }
  type StatusBody = { reason?: string; message?: string; details?: { kind?: string; causes?: StatusCause[] } };
  let body: StatusBody | null = null;
  if (typeof e.body === 'string') {
    try {
      body = JSON.parse(e.body) as StatusBody;
    } catch {
      body = { message: e.body.trim() || undefined };
    }
  } else if (e.body && typeof e.body === 'object') {
    body = e.body;
  }
  return {
    statusCode: e.code,
    reason: body?.reason ?? null,
    message: body?.message ?? null,
    kind: body?.details?.kind ?? null,
    causes: Array.isArray(body?.details?.causes) ? body.details.causes : [],
  };
}

export function statusCodeOf(err: unknown): number | null {
  return apiStatus(err)?.statusCode ?? null;
}

/** Socket-level failures: the API server is not there (yet); trying later can work. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET']);

function transportCode(err: unknown): string | null {
  let current: unknown = err;
  for (let depth = 0; depth < 4 && current; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    current = (current as { cause?: unknown }).cause;
  }
  return null;
}

/** What the backend was doing, for messages: verb and resource as RBAC names them. */
export interface ApiAction {
  verb: string;
  resource: string;
  namespace: string;
  name?: string;
}

/**
 * Maps a client-node error to a BackendError. details always carry `statusCode` and `reason` (null
 * for transport errors) and `action`; an Invalid (422) answer also carries `field` and `causes`.
 */
export function toBackendError(err: unknown, action: ApiAction, extra: Record<string, unknown> = {}): SpawngateError {
  if (err instanceof SpawngateError) return err;
  const what = `${action.verb} ${action.resource}${action.name ? ` ${action.name}` : ''} in namespace ${action.namespace}`;
  const status = apiStatus(err);
  const actionText = `${action.verb} ${action.resource}`;
  if (!status) {
    const code = transportCode(err);
    const cause = (err as { cause?: { message?: unknown } } | null)?.cause?.message;
    return new BackendError('BACKEND_UNAVAILABLE', `Kubernetes API unreachable during ${what}${code ? ` (${code})` : ''}: ${typeof cause === 'string' ? cause : ((err as Error).message ?? String(err))}`, {
      // A refused or reset connection can heal; a TLS or DNS-name mismatch will not.
      retryable: code !== null && UNREACHABLE.has(code),
      cause: err,
      details: { ...extra, statusCode: null, reason: code ?? 'Unreachable', action: actionText },
    });
  }
  const { statusCode, reason, message, kind, causes } = status;
  const details = { ...extra, statusCode, reason, action: actionText };
  const apiSays = message ? `: ${message}` : '';
  if (statusCode === 401) {
    return new BackendError('BACKEND_FAILED', `unauthorized: the API server rejected the credentials during ${what} (expired token or wrong kubeconfig)`, { cause: err, details });
  }
  if (statusCode === 403) {
    // PodSecurity admission answers 403 as well; what it refuses is the pod, not the account.
    if (message?.includes('violates PodSecurity')) {
      return new BackendError('BACKEND_FAILED', `the namespace's PodSecurity admission refused the pod${apiSays}`, { cause: err, details: { ...details, reason: 'PodSecurityViolation' } });
    }
    const user = /User "([^"]+)"/.exec(message ?? '')?.[1];
    // Other admission plugins (RuntimeClass, ResourceQuota, LimitRanger…) refuse with 403 too; only
    // an authorizer's answer names a user.
    if (!user && message && !/\bcannot\b/.test(message)) {
      return new BackendError('BACKEND_FAILED', `admission refused ${action.resource}${action.name ? ` ${action.name}` : ''} in namespace ${action.namespace}${apiSays}`, {
        cause: err,
        details: { ...details, reason: 'AdmissionRefused' },
      });
    }
    return new BackendError('BACKEND_FAILED', `forbidden: ${user ? `${user}` : 'the service account'} cannot ${action.verb} ${action.resource} in namespace ${action.namespace}${apiSays ? ` (API${apiSays})` : ''}`, {
      cause: err,
      details,
    });
  }
  if (statusCode === 404 && kind === 'namespaces') {
    return new BackendError('BACKEND_FAILED', `namespace ${action.namespace} does not exist`, { cause: err, details: { ...details, reason: 'NamespaceNotFound' } });
  }
  if (statusCode === 404) {
    return new BackendError('BACKEND_NOT_FOUND', `${action.resource}${action.name ? ` ${action.name}` : ''} not found in namespace ${action.namespace}`, { cause: err, details });
  }
  if (statusCode === 422 || reason === 'Invalid') {
    const fields = causes.filter((c) => c.field).map((c) => `${c.field}: ${c.message ?? c.reason ?? 'invalid'}`);
    return new BackendError('BACKEND_FAILED', `the API server rejected ${action.resource}${action.name ? ` ${action.name}` : ''}: ${fields.length ? fields.join('; ') : (message ?? 'invalid')}`, {
      cause: err,
      details: { ...details, field: causes.find((c) => c.field)?.field ?? null, causes },
    });
  }
  return new BackendError('BACKEND_FAILED', `Kubernetes API refused to ${what} (HTTP ${statusCode}${reason ? ` ${reason}` : ''})${apiSays}`, {
    // 5xx and 429 are the server's state, not our request.
    retryable: statusCode !== null && (statusCode >= 500 || statusCode === 429),
    cause: err,
    details,
  });
}

/** Runs one API call and maps its failure. */
export async function apiCall<T>(action: ApiAction, call: () => Promise<T>, extra?: Record<string, unknown>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw toBackendError(err, action, extra);
  }
}

/** Like apiCall, but 404 (the object is gone) yields `onNotFound`; a missing namespace is still an error. */
export async function apiCallOr404<T, F>(action: ApiAction, call: () => Promise<T>, onNotFound: F, extra?: Record<string, unknown>): Promise<T | F> {
  try {
    return await call();
  } catch (err) {
    const status = apiStatus(err);
    if (status?.statusCode === 404 && status.kind !== 'namespaces') return onNotFound;
    throw toBackendError(err, action, extra);
  }
}
