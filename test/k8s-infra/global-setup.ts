// Brings the test cluster up for Kubernetes tests: the control plane
// (scripts/k8s-up.sh) and, for project "kubernetes", its one real node
// (scripts/k8s-node-up.sh: kubelet + private containerd + bridge CNI).
// Usable as a vitest globalSetup file (named `setup`/`teardown`) and directly
// from a test's beforeAll; both scripts are idempotent, so both may run.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/** A cold start builds kube-apiserver & co. from source: tens of minutes on two shared cores. */
export const CONTROL_PLANE_START_TIMEOUT_MS = 45 * 60_000;
const CONTROL_PLANE_STOP_TIMEOUT_MS = 2 * 60_000;

export interface ControlPlane {
  /** Client cert in group system:masters. */
  readonly adminKubeconfig: string;
  /** Token of ServiceAccount `spawngate` in {@link namespace}, bound by deploy/rbac.yaml. */
  readonly spawngateKubeconfig: string;
  readonly server: string;
  /** Namespace spawngate may use; PodSecurity `restricted` is enforced there. */
  readonly namespace: string;
  /** Kubernetes release of the binaries, e.g. v1.36.3. */
  readonly version: string;
  readonly stateDir: string;
  /** True when an already running plane was reused rather than started. */
  readonly reused: boolean;
}

/** The test node k8s-node-up.sh runs: a kubelet registered with the plane, a private containerd. */
export interface TestNode {
  /** Name of the Node object (default `spawngate-node`). */
  readonly name: string;
  /** The node's InternalIP: the host's address on its default route's interface. */
  readonly ip: string;
  /** Pods get their IPs from this /24 on bridge sgnode0; the host reaches them directly. */
  readonly podCidr: string;
  /** The private containerd's socket (CRI and `ctr --namespace k8s.io`). */
  readonly containerdSocket: string;
  /** The worker image imported into that containerd (also tagged `spawngate-worker:test`); '' when not imported. */
  readonly workerImage: string;
  readonly stateDir: string;
  /** True when an already running node was reused rather than started. */
  readonly reused: boolean;
}

export interface Cluster extends ControlPlane {
  readonly node: TestNode;
}

/** Why this machine cannot run the test node, or null when it can (Linux, root). */
export function nodeUnsupportedReason(): string | null {
  if (process.platform !== 'linux') return `the test node needs Linux, this is ${process.platform}`;
  if (process.getuid?.() !== 0) return 'the test node needs root (cgroups, mounts, a bridge)';
  return null;
}

function runScript(script: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'bash',
      [script],
      { cwd: repoRoot, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error) {
          const tail = stderr.split('\n').slice(-40).join('\n');
          reject(new Error(`${script} failed (${error.message.split('\n')[0]}):\n${tail}`, { cause: error }));
          return;
        }
        resolve(stdout);
      },
    );
  });
}

/** Parses the `KEY=value` lines k8s-up.sh prints (values quoted by bash's printf %q). */
export function parseEnvLines(text: string): Map<string, string> {
  const env = new Map<string, string>();
  for (const line of text.split('\n')) {
    const match = /^([A-Z0-9_]+)=(.*)$/.exec(line);
    if (!match?.[1] || match[2] === undefined) continue;
    const raw = match[2];
    if (raw.startsWith("$'")) throw new Error(`unsupported quoting in k8s-up output: ${line}`);
    env.set(match[1], raw.replace(/\\(.)/g, '$1'));
  }
  return env;
}

function required(env: Map<string, string>, key: string): string {
  const value = env.get(key);
  if (value === undefined || value === '') throw new Error(`k8s-up.sh printed no ${key}`);
  return value;
}

function planeFrom(env: Map<string, string>): ControlPlane {
  return {
    adminKubeconfig: required(env, 'ADMIN_KUBECONFIG'),
    spawngateKubeconfig: required(env, 'SPAWNGATE_KUBECONFIG'),
    server: required(env, 'K8S_SERVER'),
    namespace: required(env, 'K8S_NAMESPACE'),
    version: required(env, 'K8S_VERSION'),
    stateDir: required(env, 'K8S_STATE_DIR'),
    reused: required(env, 'K8S_REUSED') === '1',
  };
}

/** The control plane alone: pods are admitted and scheduled, none runs unless a node is up. */
export async function startControlPlane(): Promise<ControlPlane> {
  return planeFrom(parseEnvLines(await runScript('scripts/k8s-up.sh', CONTROL_PLANE_START_TIMEOUT_MS)));
}

/**
 * The control plane and its node, Ready. Fails where the node cannot run (not Linux, not root)
 * with the reason; callers that may run there check {@link nodeUnsupportedReason} first.
 */
export async function startCluster(): Promise<Cluster> {
  const unsupported = nodeUnsupportedReason();
  if (unsupported !== null) throw new Error(`cannot start the test node: ${unsupported}`);
  const env = parseEnvLines(await runScript('scripts/k8s-node-up.sh', CONTROL_PLANE_START_TIMEOUT_MS));
  return {
    ...planeFrom(env),
    node: {
      name: required(env, 'NODE_NAME'),
      ip: required(env, 'NODE_IP'),
      podCidr: required(env, 'POD_CIDR'),
      containerdSocket: required(env, 'CONTAINERD_SOCK'),
      workerImage: env.get('WORKER_IMAGE') ?? '',
      stateDir: required(env, 'K8S_NODE_STATE_DIR'),
      reused: required(env, 'K8S_NODE_REUSED') === '1',
    },
  };
}

/** Stops the node (if any) and the control plane. */
export async function stopControlPlane(): Promise<void> {
  await runScript('scripts/k8s-down.sh', CONTROL_PLANE_STOP_TIMEOUT_MS);
}

/** Stops only the node; the control plane keeps running. */
export async function stopNode(): Promise<void> {
  await runScript('scripts/k8s-node-down.sh', CONTROL_PLANE_STOP_TIMEOUT_MS);
}

declare module 'vitest' {
  export interface ProvidedContext {
    /**
     * The cluster globalSetup brought up, for `inject('k8sCluster')`: null when this project got
     * no node. Saves each file a k8s-node-up.sh run (whose worker image check compiles dist/).
     */
    k8sCluster: Cluster | null;
  }
}

/** Projects whose suites run pods (the OpenClaw suite's Kubernetes path too). */
const NODE_PROJECTS = new Set(['kubernetes', 'openclaw']);

let planeStartedHere = false;
let nodeStartedHere = false;

/**
 * vitest globalSetup: a plane (and node) that was already running (a
 * developer's, or another run's) is reused and left running; one started here
 * is stopped again in teardown unless SPAWNGATE_K8S_KEEP=1. Projects
 * "kubernetes" and "openclaw" get the node too; where the node cannot run (not root, not
 * Linux) it fails in CI and falls back to the plane alone elsewhere, saying so.
 */
export async function setup(project?: TestProject): Promise<void> {
  const wantsNode = project === undefined || NODE_PROJECTS.has(project.name);
  const unsupported = nodeUnsupportedReason();
  if (wantsNode && unsupported !== null && process.env.CI !== 'true') {
    console.warn(`[k8s-infra] no test node (${unsupported}); pods will stay Pending`);
  }
  if (wantsNode && (unsupported === null || process.env.CI === 'true')) {
    const cluster = await startCluster();
    planeStartedHere = !cluster.reused;
    nodeStartedHere = !cluster.node.reused;
    project?.provide('k8sCluster', cluster);
    return;
  }
  const plane = await startControlPlane();
  planeStartedHere = !plane.reused;
  project?.provide('k8sCluster', null);
}

export async function teardown(): Promise<void> {
  if (process.env.SPAWNGATE_K8S_KEEP === '1') return;
  // k8s-down.sh stops the node first; a node started on a reused plane goes alone.
  if (planeStartedHere) await stopControlPlane();
  else if (nodeStartedHere) await stopNode();
}
