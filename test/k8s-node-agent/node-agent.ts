/**
 * A test node for the real kube-apiserver of scripts/k8s-up.sh, where no kubelet can run. It only
 * drives the API: it registers a Node (Ready, with capacity and a Lease heartbeat), lets the real
 * kube-scheduler bind pods to it (it never binds pods itself), and runs each bound pod's worker as a
 * LOCAL PROCESS, reporting through the pods/status subresource what a kubelet would.
 *
 * What it does, and what it only imitates:
 *   - The node is tainted `spawngate.io/node-agent=<node>:NoSchedule` and labelled the same; only
 *     pods with the matching toleration and nodeSelector ({@link NodeAgent.placement}) land on it.
 *   - The image is not pulled: an allowed image (glob list) runs the reference worker
 *     (workerBinCommand()); `*:missing` or an image off the list stays Pending with ImagePullBackOff.
 *     The container's command/args are ignored.
 *   - Env is the pod's, with secretKeyRef resolved from the real Secret through the API (missing →
 *     CreateContainerConfigError, retried for a bounded time, as the kubelet retries). Each volume
 *     mount is a local folder; a variable whose value is a mount path (HOME) points at that folder.
 *   - Pod network: none. Each pod gets its own loopback address (127.x.y.z) as podIP, and a
 *     SPAWNGATE_LISTEN of 0.0.0.0:<port> — which in a pod means "my pod IP" — is bound to it. So
 *     clients use podIP:containerPort exactly as in a cluster. NetworkPolicies are NOT enforced.
 *   - Memory limit: the RSS of the pod's process group is sampled; over the limit → SIGKILL,
 *     terminated reason OOMKilled, exit code 137. CPU limits are not enforced.
 *   - activeDeadlineSeconds → kill, phase Failed, reason DeadlineExceeded.
 *   - pods/log: an HTTPS "kubelet" endpoint on 127.0.0.1 serves the container log to the API server
 *     (which, without --kubelet-certificate-authority, does not verify the node's certificate).
 *   - Deletion: a bound pod deleted with a grace period stays Terminating until its kubelet
 *     confirms; here the agent kills the process group and then deletes the pod with
 *     gracePeriodSeconds 0 (uid precondition), which is the kubelet's confirmation.
 */
import type { ChildProcess } from 'node:child_process';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { connect } from 'node:net';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import type { V1Pod } from '@kubernetes/client-node';
import { parseQuantity } from '../../src/config/schema.js';
import { workerBinCommand } from '../../src/worker/main.js';

export const NODE_AGENT_LABEL = 'spawngate.io/node-agent';

export interface NodeAgentOptions {
  /** A kubeconfig allowed to manage nodes, leases, pods/status and read secrets (the admin one). */
  kubeconfig: string;
  nodeName?: string;
  capacity?: { cpu?: string; memory?: string; pods?: string; gpu?: number };
  /** Image globs (`*` = anything) that "pull"; default any image containing "spawngate-worker". */
  allowedImages?: readonly string[];
  /** argv of the worker every pod runs; default the reference worker. */
  workerCommand?: readonly string[];
}

export interface NodeAgent {
  readonly nodeName: string;
  /** Profile/spec fields that put a pod on this node. */
  readonly placement: { nodeSelector: Record<string, string>; tolerations: { key: string; operator: 'Equal'; value: string; effect: 'NoSchedule' }[] };
  /** Worker processes alive right now. */
  running(): number;
  stop(): Promise<void>;
}

interface Run {
  pod: V1Pod;
  key: string;
  dir: string;
  logFile: string;
  child: ChildProcess | null;
  exited: Promise<void>;
  kill: 'OOMKilled' | 'DeadlineExceeded' | 'Deleted' | 'Stopped' | null;
  timers: NodeJS.Timeout[];
  patches: Promise<unknown>;
}

const STRATEGIC = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.StrategicMergePatch);
const MERGE = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
const run = promisify(execFile);

function glob(pattern: string): RegExp {
  return new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

function bytesOf(quantity: string | undefined): number | null {
  const q = quantity ? parseQuantity(quantity) : null;
  return q ? Number(q.num / q.den) : null;
}

/** Resident memory of every process in group `pgid`, from /proc (pages are 4 KiB on the platforms this runs on). */
function groupRss(pgid: number): number {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid) total += Number(fields[21]) * 4096;
    } catch {
      // the process ended between readdir and read
    }
  }
  return total;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

function tcpOpen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: 500 });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
    socket.once('timeout', () => done(false));
  });
}

function isNotFound(err: unknown): boolean {
  return (err as { code?: unknown }).code === 404;
}

export async function startNodeAgent(options: NodeAgentOptions): Promise<NodeAgent> {
  const nodeName = options.nodeName ?? `sg-node-${randomBytes(3).toString('hex')}`;
  const allowed = (options.allowedImages ?? ['*spawngate-worker*']).map(glob);
  const workerCommand = options.workerCommand ?? workerBinCommand();
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(options.kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const coordination = kc.makeApiClient(k8s.CoordinationV1Api);
  const stateDir = await mkdtemp(join(tmpdir(), 'sg-node-'));
  const runs = new Map<string, Run>();
  // A second octet of our own, so two agents on one machine never hand out the same pod IP.
  const ipBase = 64 + (randomBytes(1)[0] ?? 0) % 190;
  let nextIp = 1;
  let stopped = false;
  let watchController: AbortController | null = null;

  // ── the "kubelet" HTTPS endpoint the API server proxies pods/log to
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${nodeName}`,
    '-keyout', join(stateDir, 'key.pem'), '-out', join(stateDir, 'cert.pem')]);
  const server: Server = createServer({ key: readFileSync(join(stateDir, 'key.pem')), cert: readFileSync(join(stateDir, 'cert.pem')) }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://node');
    const m = /^\/containerLogs\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(url.pathname);
    const target = m ? runs.get(`${decodeURIComponent(m[1] ?? '')}/${decodeURIComponent(m[2] ?? '')}`) : undefined;
    if (!target) {
      res.writeHead(404).end('not found');
      return;
    }
    readFile(target.logFile, 'utf8').then(
      (text) => {
        const tail = Number(url.searchParams.get('tailLines') ?? 'NaN');
        const lines = text.split('\n');
        if (lines.at(-1) === '') lines.pop();
        const chosen = Number.isInteger(tail) && tail >= 0 ? lines.slice(lines.length - Math.min(tail, lines.length)) : lines;
        res.writeHead(200, { 'content-type': 'text/plain' }).end(chosen.map((l) => `${l}\n`).join(''));
      },
      () => res.writeHead(200).end(''),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const kubeletPort = (server.address() as { port: number }).port;

  // ── the Node and its heartbeat
  const gpu = options.capacity?.gpu ?? 0;
  const capacity = {
    cpu: options.capacity?.cpu ?? '16',
    memory: options.capacity?.memory ?? '64Gi',
    pods: options.capacity?.pods ?? '110',
    'ephemeral-storage': '100Gi',
    ...(gpu > 0 ? { 'nvidia.com/gpu': String(gpu) } : {}),
  };
  const now = () => new Date();
  await core.createNode({
    body: {
      metadata: { name: nodeName, labels: { 'kubernetes.io/hostname': nodeName, 'kubernetes.io/os': 'linux', [NODE_AGENT_LABEL]: nodeName } },
      spec: { taints: [{ key: NODE_AGENT_LABEL, value: nodeName, effect: 'NoSchedule' }] },
      status: {
        capacity,
        allocatable: capacity,
        conditions: [
          { type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'spawngate test node agent', lastHeartbeatTime: now(), lastTransitionTime: now() },
          ...['MemoryPressure', 'DiskPressure', 'PIDPressure'].map((type) => ({ type, status: 'False', reason: 'NodeAgent', lastHeartbeatTime: now(), lastTransitionTime: now() })),
        ],
        // InternalIP only: the API server dials the first of its preferred address types it finds.
        addresses: [{ type: 'InternalIP', address: '127.0.0.1' }],
        daemonEndpoints: { kubeletEndpoint: { Port: kubeletPort } },
        nodeInfo: { architecture: process.arch, bootID: '', containerRuntimeVersion: 'spawngate-node-agent://0', kernelVersion: '', kubeProxyVersion: '', kubeletVersion: 'v0.0.0-node-agent', machineID: '', operatingSystem: 'linux', osImage: 'local processes', systemUUID: '' },
      },
    },
  });
  // Without a renewed Lease the node lifecycle controller marks the node unreachable and taints it NoExecute.
  await coordination.createNamespacedLease({ namespace: 'kube-node-lease', body: { metadata: { name: nodeName }, spec: { holderIdentity: nodeName, leaseDurationSeconds: 40 } } });
  const renew = () =>
    coordination
      .patchNamespacedLease({ namespace: 'kube-node-lease', name: nodeName, body: { spec: { renewTime: new Date().toISOString().replace('Z', '000Z') } } }, MERGE)
      .catch(() => undefined);
  await renew();
  const heartbeat = setInterval(() => void renew(), 10_000);

  // ── pod status, through the real API
  function patchStatus(r: Run, status: Record<string, unknown>): Promise<unknown> {
    const { namespace, name } = r.pod.metadata ?? {};
    // Serialised per pod: a readiness patch must not land after the exit patch.
    r.patches = r.patches.then(() =>
      core.patchNamespacedPodStatus({ namespace: namespace ?? '', name: name ?? '', body: { status } }, STRATEGIC).catch(() => undefined),
    );
    return r.patches;
  }

  const containerOf = (pod: V1Pod) => pod.spec?.containers[0];
  const containerStatus = (pod: V1Pod, ready: boolean, state: Record<string, unknown>) => {
    const c = containerOf(pod);
    return { name: c?.name ?? 'worker', image: c?.image ?? '', imageID: '', ready, started: Boolean(state['running']), restartCount: 0, state };
  };
  const condition = (type: string, ok: boolean, reason?: string) => ({ type, status: ok ? 'True' : 'False', lastTransitionTime: now(), ...(reason ? { reason } : {}) });

  async function resolveEnv(r: Run): Promise<Record<string, string> | null> {
    const namespace = r.pod.metadata?.namespace ?? '';
    for (let attempt = 0; attempt < 120 && !r.kill; attempt++) {
      const env: Record<string, string> = {};
      let missing: string | null = null;
      for (const entry of containerOf(r.pod)?.env ?? []) {
        const ref = entry.valueFrom?.secretKeyRef;
        if (entry.value !== undefined) env[entry.name] = entry.value;
        else if (ref) {
          const secretName = ref.name ?? '';
          const secret = await core.readNamespacedSecret({ namespace, name: secretName }).catch(() => null);
          const value = secret?.data?.[ref.key];
          if (value === undefined) missing = secret ? `couldn't find key ${ref.key} in Secret ${namespace}/${secretName}` : `secret "${secretName}" not found`;
          else env[entry.name] = Buffer.from(value, 'base64').toString('utf8');
        } else if (entry.valueFrom) missing = `env ${entry.name}: only value and secretKeyRef are supported by the test node agent`;
      }
      if (!missing) return env;
      if (attempt === 0) {
        await patchStatus(r, { phase: 'Pending', containerStatuses: [containerStatus(r.pod, false, { waiting: { reason: 'CreateContainerConfigError', message: missing } })] });
      }
      await sleep(250);
    }
    return null;
  }

  async function start(pod: V1Pod): Promise<void> {
    const key = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
    const r: Run = { pod, key, dir: join(stateDir, pod.metadata?.uid ?? key), logFile: '', child: null, exited: Promise.resolve(), kill: null, timers: [], patches: Promise.resolve() };
    r.logFile = join(r.dir, 'container.log');
    runs.set(key, r);
    await mkdir(r.dir, { recursive: true });
    const container = containerOf(pod);
    const image = container?.image ?? '';
    if (image.endsWith(':missing') || !allowed.some((re) => re.test(image))) {
      await patchStatus(r, {
        phase: 'Pending',
        conditions: [condition('Initialized', true), condition('Ready', false, 'ContainersNotReady'), condition('ContainersReady', false, 'ContainersNotReady')],
        containerStatuses: [containerStatus(pod, false, { waiting: { reason: 'ImagePullBackOff', message: `Back-off pulling image "${image}"` } })],
      });
      return;
    }
    const env = await resolveEnv(r);
    if (!env || r.kill) return;
    const podIP = `127.${ipBase}.${Math.floor(nextIp / 250)}.${(nextIp % 250) + 1}`;
    nextIp++;
    const port = container?.ports?.[0]?.containerPort ?? 8080;
    // 0.0.0.0 inside a pod is the pod's own address; here that is its loopback alias.
    const listen = /^0\.0\.0\.0:(\d+)$/.exec(env['SPAWNGATE_LISTEN'] ?? '');
    if (listen) env['SPAWNGATE_LISTEN'] = `${podIP}:${listen[1]}`;
    const dirs: Record<string, string> = {};
    for (const mount of container?.volumeMounts ?? []) {
      dirs[mount.mountPath] = join(r.dir, 'volumes', mount.name);
      await mkdir(dirs[mount.mountPath] ?? r.dir, { recursive: true });
    }
    const cwd = (container?.workingDir && dirs[container.workingDir]) ?? r.dir;
    // A variable naming a mount path (HOME=/home/spawngate) means the mounted folder, here a local one.
    for (const [name, value] of Object.entries(env)) if (dirs[value] !== undefined) env[name] = dirs[value];
    const logFd = openSync(r.logFile, 'a');
    const [cmd = process.execPath, ...args] = workerCommand;
    const child = spawn(cmd, args, {
      cwd,
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: cwd, TMPDIR: dirs['/tmp'] ?? r.dir, ...env },
      detached: true,
      stdio: ['ignore', logFd, logFd],
    });
    closeSync(logFd);
    r.child = child;
    // Deleted while it was being started: it must not outlive the pod.
    if ((r.kill || !runs.has(key)) && child.pid !== undefined) signalGroup(child.pid, 'SIGKILL');
    r.exited = new Promise((resolve) => child.once('exit', (code, signal) => void onExit(r, code, signal).finally(resolve)));
    child.once('error', () => undefined);
    const startedAt = now();
    await patchStatus(r, {
      phase: 'Running',
      startTime: startedAt,
      hostIP: '127.0.0.1',
      hostIPs: [{ ip: '127.0.0.1' }],
      podIP,
      podIPs: [{ ip: podIP }],
      conditions: [condition('Initialized', true), condition('Ready', false, 'ContainersNotReady'), condition('ContainersReady', false, 'ContainersNotReady')],
      containerStatuses: [containerStatus(pod, false, { waiting: null, running: { startedAt } })],
    });
    const pid = child.pid;
    if (pid === undefined) return;
    const deadline = pod.spec?.activeDeadlineSeconds;
    if (deadline) r.timers.push(setTimeout(() => terminate(r, 'DeadlineExceeded', 0), deadline * 1000));
    const limit = bytesOf(container?.resources?.limits?.['memory']);
    if (limit !== null) {
      r.timers.push(setInterval(() => {
        if (!r.kill && groupRss(pid) > limit) terminate(r, 'OOMKilled', 0);
      }, 300));
    }
    // The pod's tcpSocket readiness probe, run the way a kubelet runs it.
    const probePort = Number(container?.readinessProbe?.tcpSocket?.port ?? port);
    for (let i = 0; i < 600 && !r.kill && child.exitCode === null && child.signalCode === null; i++) {
      if (await tcpOpen(podIP, probePort)) {
        if (!r.kill && child.exitCode === null) {
          await patchStatus(r, {
            conditions: [condition('Ready', true), condition('ContainersReady', true)],
            containerStatuses: [containerStatus(pod, true, { running: { startedAt } })],
          });
        }
        return;
      }
      await sleep(100);
    }
  }

  async function onExit(r: Run, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    for (const t of r.timers) clearTimeout(t);
    if (r.kill === 'Deleted' || r.kill === 'Stopped') return;
    const exitCode = code ?? (signal === 'SIGKILL' ? 137 : 143);
    const reason = r.kill === 'OOMKilled' ? 'OOMKilled' : exitCode === 0 && !r.kill ? 'Completed' : 'Error';
    const finishedAt = now();
    await patchStatus(r, {
      phase: exitCode === 0 && !r.kill ? 'Succeeded' : 'Failed',
      ...(r.kill === 'DeadlineExceeded' ? { reason: 'DeadlineExceeded', message: 'Pod was active on the node longer than the specified deadline' } : {}),
      conditions: [condition('Ready', false, 'PodCompleted'), condition('ContainersReady', false, 'PodCompleted')],
      containerStatuses: [containerStatus(r.pod, false, { running: null, terminated: { exitCode, reason, ...(signal ? { signal: constants.signals[signal] } : {}), finishedAt, startedAt: r.pod.status?.startTime ?? finishedAt } })],
    });
  }

  function terminate(r: Run, why: NonNullable<Run['kill']>, graceMs: number): void {
    if (r.kill) return;
    r.kill = why;
    const pid = r.child?.pid;
    if (pid === undefined || r.child?.exitCode !== null || r.child.signalCode !== null) return;
    if (graceMs <= 0) return signalGroup(pid, 'SIGKILL');
    signalGroup(pid, 'SIGTERM');
    r.timers.push(setTimeout(() => signalGroup(pid, 'SIGKILL'), graceMs));
  }

  async function confirmDeletion(pod: V1Pod): Promise<void> {
    const key = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
    const r = runs.get(key);
    if (r) {
      terminate(r, 'Deleted', Math.min(pod.metadata?.deletionGracePeriodSeconds ?? 30, 5) * 1000);
      await Promise.race([r.exited, sleep(10_000)]);
      await r.patches;
    }
    await core
      .deleteNamespacedPod({ namespace: pod.metadata?.namespace ?? '', name: pod.metadata?.name ?? '', gracePeriodSeconds: 0, body: { gracePeriodSeconds: 0, preconditions: { uid: pod.metadata?.uid ?? '' } } })
      .catch((err: unknown) => (isNotFound(err) ? undefined : Promise.reject(err as Error)));
    await forget(key);
  }

  async function forget(key: string): Promise<void> {
    const r = runs.get(key);
    if (!r) return;
    runs.delete(key);
    for (const t of r.timers) clearTimeout(t);
    if (r.child?.pid !== undefined) {
      r.kill ??= 'Deleted';
      // The whole group: the agent the worker started may outlive a worker that already exited.
      signalGroup(r.child.pid, 'SIGKILL');
      await Promise.race([r.exited, sleep(5_000)]);
    }
    await rm(r.dir, { recursive: true, force: true, maxRetries: 5 }).catch(() => undefined);
  }

  function handle(type: string, pod: V1Pod): void {
    const key = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
    const known = runs.get(key);
    if (known && known.pod.metadata?.uid !== pod.metadata?.uid) void forget(key).catch(() => undefined);
    if (type === 'DELETED') return void forget(key).catch(() => undefined);
    if (pod.metadata?.deletionTimestamp) {
      if (!known || known.kill !== 'Deleted') void confirmDeletion(pod).catch(() => undefined);
      return;
    }
    const done = pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed';
    if (!runs.has(key) && !done) void start(pod).catch(() => undefined);
  }

  // ── list + watch the pods bound to this node, starting over whenever the watch ends
  const watcher = new k8s.Watch(kc);
  const fieldSelector = `spec.nodeName=${nodeName}`;
  const loop = (async () => {
    while (!stopped) {
      try {
        const list = await core.listPodForAllNamespaces({ fieldSelector });
        for (const pod of list.items) handle('ADDED', pod);
        await new Promise<void>((resolve) => {
          watcher
            .watch('/api/v1/pods', { fieldSelector, resourceVersion: list.metadata?.resourceVersion, timeoutSeconds: 60 }, (type: string, pod: V1Pod) => {
              if (type === 'ERROR') return resolve();
              handle(type, pod);
            }, () => resolve())
            .then((c) => {
              watchController = c;
              if (stopped) c.abort();
            }, () => resolve());
        });
      } catch {
        // the API server restarted or refused once; list again
      }
      if (!stopped) await sleep(200);
    }
  })();

  return {
    nodeName,
    placement: {
      nodeSelector: { [NODE_AGENT_LABEL]: nodeName },
      tolerations: [{ key: NODE_AGENT_LABEL, operator: 'Equal', value: nodeName, effect: 'NoSchedule' }],
    },
    running: () => [...runs.values()].filter((r) => r.child && r.child.exitCode === null && r.child.signalCode === null).length,
    async stop() {
      stopped = true;
      watchController?.abort();
      clearInterval(heartbeat);
      for (const r of runs.values()) {
        r.kill ??= 'Stopped';
        // The whole group, even when the worker itself has exited: its agent may not have.
        if (r.child?.pid !== undefined) signalGroup(r.child.pid, 'SIGKILL');
      }
      await Promise.all([...runs.values()].map((r) => Promise.race([r.exited, sleep(5_000)])));
      for (const r of runs.values()) for (const t of r.timers) clearTimeout(t);
      await loop;
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await coordination.deleteNamespacedLease({ namespace: 'kube-node-lease', name: nodeName }).catch(() => undefined);
      await core.deleteNode({ name: nodeName }).catch(() => undefined);
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}
