// Brings the test control plane (scripts/k8s-up.sh) up for Kubernetes tests.
// Usable as a vitest globalSetup file (named `setup`/`teardown`) and directly
// from a test's beforeAll; k8s-up is idempotent, so both may run.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

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

export async function startControlPlane(): Promise<ControlPlane> {
  const env = parseEnvLines(await runScript('scripts/k8s-up.sh', CONTROL_PLANE_START_TIMEOUT_MS));
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

export async function stopControlPlane(): Promise<void> {
  await runScript('scripts/k8s-down.sh', CONTROL_PLANE_STOP_TIMEOUT_MS);
}

let startedHere = false;

/**
 * vitest globalSetup: a plane that was already running (a developer's, or
 * another run's) is reused and left running; one started here is stopped
 * again in teardown unless SPAWNGATE_K8S_KEEP=1.
 */
export async function setup(): Promise<void> {
  const plane = await startControlPlane();
  startedHere = !plane.reused;
}

export async function teardown(): Promise<void> {
  if (startedHere && process.env.SPAWNGATE_K8S_KEEP !== '1') await stopControlPlane();
}
