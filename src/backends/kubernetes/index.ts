/**
 * The kubernetes backend: one worker = one Pod (+ its token Secret, + a NetworkPolicy for egress
 * none/proxy) in one namespace, through @kubernetes/client-node (loaded on first use).
 *
 * The API server is the source of truth: refs are `namespace/podName`, names derive from the spawn
 * id, and every object carries the spawn's labels, so list() rebuilds everything after a restart.
 * The worker is reached at podIP:workerPort, so the gateway must run in the cluster (or otherwise
 * route to pod IPs). See docs/kubernetes.md.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { V1NetworkPolicy, V1Pod, V1Secret } from '@kubernetes/client-node';
import { BackendError, SpawngateError } from '../../errors.js';
import { PACKAGE_ROOT } from '../../paths.js';
import type { Backend, ListedWorker, WorkerEndpoint, WorkerPhase, WorkerRef, WorkerSpec, WorkerStatus } from '../types.js';
import { BACKEND_SPEC_VERSION, LABELS } from '../types.js';
import type { ApiAction, KubernetesClients } from './client.js';
import { apiCall, apiCallOr404, connectKubernetes, statusCodeOf, toBackendError } from './client.js';
import type { KubernetesProxyOptions, ManifestOptions } from './manifest.js';
import {
  ANNOTATIONS,
  buildTokenSecret,
  buildWorkerManifests,
  DEFAULT_WORKER_PORT,
  defaultProxy,
  networkPolicyNameOf,
  podNameOf,
  secretNameOf,
  TERMINATION_GRACE_SECONDS,
  WORKER_CONTAINER,
} from './manifest.js';

export type { KubernetesProxyOptions, ManifestOptions, WorkerManifests } from './manifest.js';
export {
  buildNetworkPolicy,
  buildPodManifest,
  buildTokenSecret,
  buildWorkerManifests,
  DEFAULT_WORKER_PORT,
  defaultProxy,
  networkPolicyNameOf,
  podNameOf,
  secretNameOf,
} from './manifest.js';
export { KUBERNETES_PERMISSIONS, permissionResource, roleRuleFor } from './permissions.js';
export type { KubernetesPermission } from './permissions.js';
export { connectKubernetes, loadKubernetesClient } from './client.js';
export type { KubernetesClients, KubernetesConnectOptions } from './client.js';

export interface KubernetesBackendOptions {
  /** The configured name (`agents.executionBackends.<name>`). */
  name: string;
  namespace: string;
  /** kubeconfig path; default KUBECONFIG, ~/.kube/config, then in-cluster. */
  kubeconfig?: string;
  context?: string;
  /** Port the worker listens on inside its pod; default 8080. */
  workerPort?: number;
  /** Image when a profile names none; default `spawngate-worker:<package version>`. */
  image?: string;
  /** Where egress "proxy" may go; default {@link defaultProxy} (spawngate-egress-proxy pods in the namespace, port 3128). */
  proxy?: KubernetesProxyOptions;
  /** How long delete() waits for a pod to be gone before reporting it still terminating; default grace + 20 s. */
  deleteTimeoutMs?: number;
  /**
   * How long a pod may stay Unschedulable before running() gives up; default 10 s. The scheduler
   * retries when nodes change (a node registering, an autoscaler adding one), so the first
   * Unschedulable is not yet a verdict.
   */
  unschedulableGraceMs?: number;
}

/** Waiting reasons no amount of waiting fixes; running() fails on them at once. */
const FAIL_FAST_WAITING = new Set(['ImagePullBackOff', 'ErrImagePull', 'InvalidImageName', 'ErrImageNeverPull', 'CrashLoopBackOff', 'CreateContainerError', 'RunContainerError']);
const RESTART_WATCH_PAUSE_MS = 200;

function defaultImage(): string {
  try {
    const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: unknown };
    return `spawngate-worker:${typeof pkg.version === 'string' ? pkg.version : '0.0.0'}`;
  } catch {
    return 'spawngate-worker:latest';
  }
}

export interface PodFacts {
  phase: WorkerPhase;
  ready: boolean;
  reason: string | null;
  message: string | null;
  exitCode: number | null;
  /** The pod can never become ready: running() stops waiting. */
  hopeless: boolean;
  /** The scheduler found no node for it (so far); hopeless only once it stays so. */
  unschedulable: boolean;
}

/** Reads what a pod's status says about the worker, in the WorkerStatus vocabulary. */
export function podFacts(pod: V1Pod): PodFacts {
  const status = pod.status ?? {};
  const container = status.containerStatuses?.find((c) => c.name === WORKER_CONTAINER) ?? status.containerStatuses?.[0];
  const terminated = container?.state?.terminated ?? null;
  const waiting = container?.state?.waiting ?? null;
  const scheduled = status.conditions?.find((c) => c.type === 'PodScheduled');
  const unschedulable = scheduled?.status === 'False' && scheduled.reason === 'Unschedulable';
  const readyCondition = status.conditions?.find((c) => c.type === 'Ready')?.status === 'True';

  let phase: WorkerPhase;
  switch (status.phase) {
    case 'Pending':
      phase = scheduled?.status === 'True' ? 'starting' : 'pending';
      break;
    case 'Running':
      phase = 'running';
      break;
    case 'Succeeded':
      phase = 'succeeded';
      break;
    case 'Failed':
      phase = 'failed';
      break;
    default:
      phase = status.phase ? 'unknown' : 'pending';
  }
  const exitCode = terminated?.exitCode ?? null;
  let reason: string | null = null;
  let message: string | null = null;
  // The pod-level reason (DeadlineExceeded, Evicted) explains a container's "Error" better than the container does.
  if (status.reason) {
    reason = status.reason;
    message = status.message ?? null;
  } else if (terminated) {
    reason = terminated.reason ?? (exitCode === 0 ? 'Completed' : 'Error');
    message = terminated.message ?? `exited with code ${exitCode ?? 'unknown'}${terminated.signal ? `, signal ${terminated.signal}` : ''}`;
  } else if (waiting?.reason && waiting.reason !== 'ContainerCreating') {
    reason = waiting.reason;
    message = waiting.message ?? null;
  } else if (unschedulable) {
    reason = 'Unschedulable';
    message = scheduled.message ?? null;
  } else if (pod.metadata?.deletionTimestamp) {
    reason = 'Terminating';
    message = `deletion requested at ${new Date(pod.metadata.deletionTimestamp).toISOString()}`;
  } else if (waiting?.reason === 'ContainerCreating') {
    // Not a reason (nothing is wrong yet), but what someone watching a slow start wants to read:
    // the kubelet is pulling the image or setting up volumes and the sandbox.
    message = waiting.message ?? 'ContainerCreating: the kubelet is pulling the image or setting up volumes and the pod sandbox';
  }
  const hopeless =
    phase === 'failed' ||
    phase === 'succeeded' ||
    terminated !== null ||
    (waiting?.reason !== undefined && FAIL_FAST_WAITING.has(waiting.reason)) ||
    Boolean(pod.metadata?.deletionTimestamp);
  return { phase, ready: phase === 'running' && readyCondition, reason, message, exitCode, hopeless, unschedulable };
}

function expiresAtOf(labels: Readonly<Record<string, string>>): Date | null {
  const raw = labels[LABELS.expiresAt];
  if (raw === undefined || !/^\d+$/.test(raw)) return null;
  return new Date(Number(raw) * 1000);
}

function endpointOf(podIP: string, port: number): WorkerEndpoint {
  return { baseUrl: podIP.includes(':') ? `http://[${podIP}]:${port}` : `http://${podIP}:${port}` };
}

type Snapshot = V1Pod | null;

interface PodTracker {
  /** Resolves with `pick`'s first non-undefined answer over the pod's snapshots (null = the pod is gone). */
  until<T>(pick: (pod: Snapshot) => T | undefined): Promise<T>;
  latest(): Snapshot | undefined;
  /** Re-runs pending `until` picks on the latest snapshot (for conditions that change with time, not with the pod). */
  recheck(): void;
  stop(): void;
}

export function createKubernetesBackend(options: KubernetesBackendOptions): Backend {
  const { name, namespace } = options;
  const unschedulableGraceMs = options.unschedulableGraceMs ?? 10_000;
  const workerPort = options.workerPort ?? DEFAULT_WORKER_PORT;
  const manifestOptions: ManifestOptions = {
    backendName: name,
    namespace,
    defaultImage: options.image ?? defaultImage(),
    workerPort,
    proxy: options.proxy ?? defaultProxy(namespace),
  };
  const deleteTimeoutMs = options.deleteTimeoutMs ?? (TERMINATION_GRACE_SECONDS + 20) * 1000;
  const trackers = new Set<PodTracker>();
  let connection: Promise<KubernetesClients> | null = null;

  function clients(): Promise<KubernetesClients> {
    connection ??= connectKubernetes({ ...(options.kubeconfig ? { kubeconfig: options.kubeconfig } : {}), ...(options.context ? { context: options.context } : {}) });
    connection.catch(() => {
      connection = null;
    });
    return connection;
  }

  const act = (verb: string, resource: string, objectName?: string): ApiAction => ({ verb, resource, namespace, ...(objectName ? { name: objectName } : {}) });

  function podOf(ref: WorkerRef): { namespace: string; pod: string } {
    const slash = ref.nativeId.indexOf('/');
    if (slash > 0) return { namespace: ref.nativeId.slice(0, slash), pod: ref.nativeId.slice(slash + 1) };
    return { namespace, pod: podNameOf(ref.spawnId) };
  }

  /**
   * Follows one pod: a GET, then a watch from its resourceVersion; when the watch ends (server
   * timeout, 410 Gone, dropped connection) it starts over with a fresh GET. Stops on stop() or `signal`.
   */
  function trackPod(c: KubernetesClients, ns: string, pod: string, signal: AbortSignal): PodTracker {
    let latest: Snapshot | undefined;
    let failure: Error | null = null;
    let stopped = false;
    let activeWatch: AbortController | null = null;
    const waiters = new Set<() => void>();
    const notify = () => {
      for (const waiter of [...waiters]) waiter();
    };
    const stop = () => {
      if (stopped) return;
      stopped = true;
      activeWatch?.abort();
      trackers.delete(tracker);
      notify();
    };
    signal.addEventListener('abort', stop, { once: true });

    async function follow(): Promise<void> {
      const refused: { error: SpawngateError | null } = { error: null };
      while (!stopped) {
        const current = await apiCallOr404(act('get', 'pods', pod), () => c.core.readNamespacedPod({ name: pod, namespace: ns }), null);
        latest = current;
        notify();
        if (!current || stopped) return;
        await new Promise<void>((resolve) => {
          new c.k8s.Watch(c.kc)
            .watch(
              `/api/v1/namespaces/${encodeURIComponent(ns)}/pods`,
              { fieldSelector: `metadata.name=${pod}`, resourceVersion: current.metadata?.resourceVersion, timeoutSeconds: 60 },
              (type: string, object: V1Pod) => {
                if (type === 'ADDED' || type === 'MODIFIED') latest = object;
                else if (type === 'DELETED') latest = null;
                else if (type === 'ERROR') {
                  // 410 Gone (resourceVersion too old) and friends: start over with a fresh GET.
                  resolve();
                  return;
                }
                notify();
                if (latest === null) resolve();
              },
              (err: unknown) => {
                // Refused by the API (403 without watch permission, …): say so instead of retrying forever.
                const code = statusCodeOf(err);
                if (!stopped && (code === 401 || code === 403)) refused.error = toBackendError(err, act('watch', 'pods', pod));
                resolve();
              },
            )
            .then(
              (controller) => {
                activeWatch = controller;
                if (stopped) controller.abort();
              },
              () => resolve(),
            );
        });
        activeWatch = null;
        if (refused.error) throw refused.error;
        if (latest === null) return;
        // A watch that ends at once (a proxy cutting idle streams) must not turn this into a busy loop.
        if (!stopped) await sleep(RESTART_WATCH_PAUSE_MS);
      }
    }

    const tracker: PodTracker = {
      until<T>(pick: (snapshot: Snapshot) => T | undefined): Promise<T> {
        return new Promise<T>((resolve, reject) => {
          const check = () => {
            const failed = failure;
            if (failed) return settle(() => reject(failed));
            if (signal.aborted) return settle(() => reject(signal.reason as Error));
            if (latest !== undefined) {
              const answer = pick(latest);
              if (answer !== undefined) return settle(() => resolve(answer));
              // Gone and not what the caller wanted: no later snapshot can change that.
              if (latest === null) return settle(() => reject(new BackendError('BACKEND_NOT_FOUND', `pod ${ns}/${pod} no longer exists`, { details: { reason: 'NotFound' } })));
            }
            if (stopped) settle(() => reject(new BackendError('BACKEND_FAILED', `stopped following pod ${ns}/${pod}`, { details: { reason: 'Stopped' } })));
          };
          const settle = (finish: () => void) => {
            waiters.delete(check);
            finish();
          };
          waiters.add(check);
          check();
        });
      },
      latest: () => latest,
      recheck: notify,
      stop,
    };
    trackers.add(tracker);
    follow().then(
      () => notify(),
      (err: unknown) => {
        failure = err instanceof Error ? err : new Error(String(err));
        notify();
      },
    );
    return tracker;
  }

  /** The pod's own verdict; the worker's log tail is added by the sessions layer, which reads it for every backend. */
  function failureOf(ref: WorkerRef, pod: Snapshot, action: string): BackendError {
    const { namespace: ns, pod: podName } = podOf(ref);
    if (!pod) return new BackendError('BACKEND_NOT_FOUND', `worker pod ${ns}/${podName} of spawn ${ref.spawnId} was deleted before it was running`, { details: { reason: 'NotFound' } });
    const facts = podFacts(pod);
    return new BackendError('BACKEND_FAILED', `worker pod ${ns}/${podName} ${action}: ${facts.reason ?? pod.status?.phase ?? 'unknown'}${facts.message ? ` (${facts.message})` : ''}`, {
      details: { reason: facts.reason ?? 'Unknown', exitCode: facts.exitCode, phase: pod.status?.phase ?? null, pod: `${ns}/${podName}` },
    });
  }

  /** Deletes the pod, its Secret and, once the pod is gone, its NetworkPolicy; every 404 counts as done. */
  async function removeWorker(c: KubernetesClients, ns: string, pod: string, spawnId: string): Promise<void> {
    const secret = secretNameOf(spawnId);
    const policy = networkPolicyNameOf(spawnId);
    const podExisted = await apiCallOr404(
      act('delete', 'pods', pod),
      () => c.core.deleteNamespacedPod({ name: pod, namespace: ns, propagationPolicy: 'Background' }).then(() => true),
      false,
    );
    // Explicitly, not through ownerReferences: a cluster may run no garbage collector, and the sweeper must not depend on one.
    await apiCallOr404(act('delete', 'secrets', secret), () => c.core.deleteNamespacedSecret({ name: secret, namespace: ns }), null);
    if (podExisted) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(new BackendError('TIMEOUT', `worker pod ${ns}/${pod} is still terminating ${Math.round(deleteTimeoutMs / 1000)} s after its deletion; its node has not confirmed it. Its NetworkPolicy is kept until it is gone; the sweeper retries`, { retryable: true, details: { reason: 'Terminating' } })), deleteTimeoutMs);
      const tracker = trackPod(c, ns, pod, controller.signal);
      try {
        await tracker.until((p) => (p === null ? true : undefined));
      } catch (err) {
        if (!(err instanceof BackendError && err.code === 'BACKEND_NOT_FOUND')) throw err;
      } finally {
        clearTimeout(timer);
        tracker.stop();
      }
    }
    // Last: a pod still running must never be left without its egress policy.
    await apiCallOr404(act('delete', 'networkpolicies', policy), () => c.networking.deleteNamespacedNetworkPolicy({ name: policy, namespace: ns }), null);
  }

  async function checkReferencedSecrets(c: KubernetesClients, spec: WorkerSpec): Promise<void> {
    for (const ref of spec.secretEnv) {
      const { name: secretName, key } = ref.secretRef;
      const secret: V1Secret | null = await apiCallOr404(act('get', 'secrets', secretName), () => c.core.readNamespacedSecret({ name: secretName, namespace }), null, {
        field: `env.${ref.name}`,
      });
      if (!secret) {
        throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: env ${ref.name} references secret ${secretName}, which does not exist in namespace ${namespace}`, {
          details: { field: `env.${ref.name}`, reason: 'SecretNotFound', statusCode: 404 },
        });
      }
      if (!Object.hasOwn(secret.data ?? {}, key) && !Object.hasOwn(secret.stringData ?? {}, key)) {
        throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: env ${ref.name} references key ${key} of secret ${secretName}, which has no such key`, {
          details: { field: `env.${ref.name}`, reason: 'SecretKeyNotFound' },
        });
      }
    }
  }

  const backend: Backend = {
    specVersion: BACKEND_SPEC_VERSION,
    kind: 'kubernetes',
    name,

    async validate(spec) {
      const manifests = buildWorkerManifests(spec, manifestOptions);
      const c = await clients();
      const dryRun = 'All';
      const policy = manifests.networkPolicy;
      if (policy) {
        await apiCall(act('create', 'networkpolicies', networkPolicyNameOf(spec.spawnId)), () => c.networking.createNamespacedNetworkPolicy({ namespace, body: policy, dryRun }));
      }
      await apiCall(act('create', 'pods', manifests.podName), () => c.core.createNamespacedPod({ namespace, body: manifests.pod, dryRun }), { profile: spec.profileName });
      // A stand-in token: a dry run must not put the real one in request logs for nothing.
      await apiCall(act('create', 'secrets', manifests.secretName), () => c.core.createNamespacedSecret({ namespace, body: buildTokenSecret({ ...spec, token: 'dry-run' }, manifestOptions, null), dryRun }));
      await checkReferencedSecrets(c, spec);
    },

    async create(spec) {
      const manifests = buildWorkerManifests(spec, manifestOptions);
      const c = await clients();
      const { podName } = manifests;
      try {
        // NetworkPolicy first: it selects by label, so it is in force before the pod gets an IP. Every
        // object carries the spawn's labels from its creation, so list() sees whatever a crash leaves.
        const policy: V1NetworkPolicy | null = manifests.networkPolicy;
        if (policy) {
          await apiCall(act('create', 'networkpolicies', networkPolicyNameOf(spec.spawnId)), () => c.networking.createNamespacedNetworkPolicy({ namespace, body: policy }));
        }
        const pod = await apiCall(act('create', 'pods', podName), () => c.core.createNamespacedPod({ namespace, body: manifests.pod }));
        const uid = pod.metadata?.uid;
        if (!uid) throw new BackendError('BACKEND_FAILED', `the API server returned pod ${namespace}/${podName} without a uid`, { details: { reason: 'NoUid' } });
        // The Secret comes after the pod because it is owned by it (the uid exists only now). Until it
        // exists the kubelet holds the container in CreateContainerConfigError and retries, so the
        // worker never starts without its token; running() does not treat that reason as fatal.
        const secret = buildTokenSecret(spec, manifestOptions, { name: podName, uid });
        await apiCall(act('create', 'secrets', manifests.secretName), () => c.core.createNamespacedSecret({ namespace, body: secret }));
        return { spawnId: spec.spawnId, backendName: name, nativeId: `${namespace}/${podName}` };
      } catch (err) {
        // Nothing half-made may outlive a failed create: the caller gets no ref to delete it by. Also
        // when no call succeeded: one that failed on its way back (a time-out, a reset) may have
        // created its object all the same. Not on 409, which names an object this call did not make.
        if (!(err instanceof SpawngateError && err.details['statusCode'] === 409)) await removeWorker(c, namespace, podName, spec.spawnId).catch(() => undefined);
        throw err instanceof SpawngateError ? err : toBackendError(err, act('create', 'pods', podName));
      }
    },

    async running(ref, { timeoutMs, signal }) {
      const c = await clients();
      const { namespace: ns, pod: podName } = podOf(ref);
      const timeout = AbortSignal.timeout(Math.max(1, timeoutMs));
      const bounded = signal ? AbortSignal.any([signal, timeout]) : timeout;
      const tracker = trackPod(c, ns, podName, bounded);
      let unschedulableSince: number | null = null;
      let graceTimer: NodeJS.Timeout | undefined;
      try {
        const gaveUpScheduling = (facts: PodFacts): boolean => {
          if (!facts.unschedulable) {
            unschedulableSince = null;
            return false;
          }
          if (unschedulableSince === null) {
            unschedulableSince = Date.now();
            graceTimer = setTimeout(() => tracker.recheck(), unschedulableGraceMs);
          }
          return Date.now() - unschedulableSince >= unschedulableGraceMs;
        };
        const pod = await tracker.until((p) => {
          if (p === null) return p;
          const facts = podFacts(p);
          // Ready, not only Running: the status callers read next says what the cluster says.
          return facts.hopeless || gaveUpScheduling(facts) || (facts.ready && p.status?.podIP) ? p : undefined;
        });
        if (!pod || podFacts(pod).hopeless || podFacts(pod).unschedulable) throw failureOf(ref, pod, 'cannot run');
        const podIP = pod.status?.podIP as string;
        // "open" has no policy by design; anything else without one would run with unconfined egress.
        const policyName = networkPolicyNameOf(ref.spawnId);
        if (pod.metadata?.annotations?.[ANNOTATIONS.egress] !== 'open') {
          const policy = await apiCallOr404(act('get', 'networkpolicies', policyName), () => c.networking.readNamespacedNetworkPolicy({ name: policyName, namespace: ns }), null);
          if (!policy) {
            throw new BackendError('BACKEND_FAILED', `worker pod ${ns}/${podName} has no NetworkPolicy ${policyName}; refusing to hand out a worker whose egress is not confined`, {
              details: { reason: 'NetworkPolicyMissing' },
            });
          }
        }
        // In a real cluster the gateway must run in-cluster (or route to pod IPs) to reach this.
        return endpointOf(podIP, workerPort);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (timeout.aborted) {
          const last = tracker.latest();
          const facts = last ? podFacts(last) : null;
          throw new BackendError('TIMEOUT', `worker pod ${ns}/${podName} was not running and ready within ${timeoutMs} ms: waiting for it to be scheduled, started and pass its readiness probe; pod phase ${last?.status?.phase ?? 'unknown'}${last && last.status?.phase === 'Running' && !podFacts(last).ready ? ', not Ready' : ''}${facts?.reason ? `, ${facts.reason}${facts.message ? ` (${facts.message})` : ''}` : ''}`, {
            retryable: true,
            cause: err,
            details: { reason: facts?.reason ?? 'StartTimeout', phase: last?.status?.phase ?? null, pod: `${ns}/${podName}` },
          });
        }
        throw err;
      } finally {
        clearTimeout(graceTimer);
        tracker.stop();
      }
    },

    async status(ref) {
      const c = await clients();
      const { namespace: ns, pod: podName } = podOf(ref);
      const attributes = { 'k8s.namespace.name': ns, 'k8s.pod.name': podName };
      const pod = await apiCallOr404(act('get', 'pods', podName), () => c.core.readNamespacedPod({ name: podName, namespace: ns }), null);
      if (!pod) return { nativeId: `${ns}/${podName}`, phase: 'gone', ready: false, reason: 'NotFound', message: 'the pod does not exist', exitCode: null, attributes };
      const facts = podFacts(pod);
      const status: WorkerStatus = {
        nativeId: `${ns}/${podName}`,
        phase: facts.phase,
        ready: facts.ready,
        reason: facts.reason,
        message: facts.message,
        exitCode: facts.exitCode,
        attributes: {
          ...attributes,
          ...(pod.metadata?.uid ? { 'k8s.pod.uid': pod.metadata.uid } : {}),
          ...(pod.spec?.nodeName ? { 'k8s.node.name': pod.spec.nodeName } : {}),
        },
      };
      return status;
    },

    async logs(ref, { tail = 200 } = {}) {
      const c = await clients();
      const { namespace: ns, pod: podName } = podOf(ref);
      let text: string;
      try {
        text = await c.core.readNamespacedPodLog({ name: podName, namespace: ns, container: WORKER_CONTAINER, tailLines: tail });
      } catch (err) {
        const code = statusCodeOf(err);
        // 400: the container has not started, so there is no log yet.
        if (code === 400) return [];
        const mapped = toBackendError(err, act('get', 'pods/log', podName));
        throw mapped;
      }
      const lines = String(text ?? '').split('\n');
      if (lines.at(-1) === '') lines.pop();
      return lines.slice(-tail);
    },

    async delete(ref) {
      const c = await clients();
      const { namespace: ns, pod: podName } = podOf(ref);
      await removeWorker(c, ns, podName, ref.spawnId);
    },

    async claimed(ref, change) {
      const c = await clients();
      const { namespace: ns, pod: podName } = podOf(ref);
      const pod = await apiCall(act('get', 'pods', podName), () => c.core.readNamespacedPod({ name: podName, namespace: ns }));
      // activeDeadlineSeconds counts from the pod's start, and the API lets it only come down.
      const startedAt = pod.status?.startTime ? new Date(pod.status.startTime).getTime() : Date.now();
      const seconds = Math.max(1, Math.ceil((change.deadline.getTime() - startedAt) / 1000));
      const current = pod.spec?.activeDeadlineSeconds;
      const body = { metadata: { labels: change.labels }, ...(current === undefined || seconds < current ? { spec: { activeDeadlineSeconds: seconds } } : {}) };
      await apiCall(act('patch', 'pods', podName), () =>
        c.core.patchNamespacedPod({ name: podName, namespace: ns, body }, c.k8s.setHeaderOptions('Content-Type', c.k8s.PatchStrategy.MergePatch)),
      );
    },

    async list(selector) {
      const c = await clients();
      const labelSelector = Object.entries({ ...selector, [LABELS.backend]: name })
        .map(([k, v]) => `${k}=${v}`)
        .join(',');
      const [pods, secrets, policies] = await Promise.all([
        apiCall(act('list', 'pods'), () => c.core.listNamespacedPod({ namespace, labelSelector })),
        apiCall(act('list', 'secrets'), () => c.core.listNamespacedSecret({ namespace, labelSelector })),
        apiCall(act('list', 'networkpolicies'), () => c.networking.listNamespacedNetworkPolicy({ namespace, labelSelector })),
      ]);
      const found: ListedWorker[] = [];
      const seen = new Set<string>();
      for (const pod of pods.items) {
        const labels = pod.metadata?.labels ?? {};
        const spawnId = labels[LABELS.spawnId];
        if (!spawnId || !pod.metadata?.name) continue;
        seen.add(spawnId);
        found.push({ ref: { spawnId, backendName: name, nativeId: `${namespace}/${pod.metadata.name}` }, labels, expiresAt: expiresAtOf(labels), phase: podFacts(pod).phase });
      }
      // A Secret or NetworkPolicy whose pod is gone (a crash between deletes, a pod deleted by hand)
      // is listed as a "gone" worker, so one sweep removes it too.
      for (const object of [...secrets.items, ...policies.items]) {
        const labels = object.metadata?.labels ?? {};
        const spawnId = labels[LABELS.spawnId];
        if (!spawnId || seen.has(spawnId)) continue;
        seen.add(spawnId);
        found.push({ ref: { spawnId, backendName: name, nativeId: `${namespace}/${podNameOf(spawnId)}` }, labels, expiresAt: expiresAtOf(labels), phase: 'gone' });
      }
      return found;
    },

    close() {
      for (const tracker of [...trackers]) tracker.stop();
      connection = null;
      return Promise.resolve();
    },
  };

  return backend;
}
