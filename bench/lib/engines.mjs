/**
 * What the benchmarks share: nearest-rank quantiles, and finding a Docker Engine with the worker
 * image or a Kubernetes cluster with a Ready node (the test cluster of scripts/k8s-node-up.sh by
 * default). Each finder says why a section cannot run instead of failing.
 */
import { setTimeout as sleep } from 'node:timers/promises';

/** A Markdown table, columns padded to their widest cell. */
export function markdownTable(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

export function quantile(samples, q) {
  const sorted = [...samples].sort((a, b) => a - b);
  // Nearest rank: p95 of 20 samples is the 19th, an actually observed value.
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** The engine and the worker image, or why the docker section cannot run. */
export async function dockerReadiness() {
  let Docker;
  try {
    Docker = (await import('dockerode')).default;
  } catch {
    return { ok: false, why: 'dockerode is not installed' };
  }
  const { defaultWorkerImage } = await import('../../dist/backends/docker/image.js').catch(() => ({}));
  if (!defaultWorkerImage) return { ok: false, why: 'dist/ has no docker backend (npm run build)' };
  const docker = new Docker(process.env.DOCKER_HOST ? undefined : { socketPath: '/var/run/docker.sock' });
  const ping = await Promise.race([docker.ping().then(() => true, () => false), sleep(5_000).then(() => false)]);
  if (!ping) return { ok: false, why: 'no Docker Engine answers (scripts/ensure-docker.sh)' };
  const image = defaultWorkerImage();
  const found = await docker
    .getImage(image)
    .inspect()
    .then(() => true, () => false);
  if (!found) return { ok: false, why: `image ${image} is missing (scripts/build-image.sh)` };
  return { ok: true, docker, image };
}

/** Shell assignments (KEY=value, bash %q quoting of plain paths) of the test cluster's env files. */
async function testClusterEnv() {
  const { readFile } = await import('node:fs/promises');
  const env = {};
  for (const file of ['.cache/k8s/env', '.cache/k8s-node/env']) {
    const text = await readFile(new URL(`../../${file}`, import.meta.url), 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      const m = /^([A-Z0-9_]+)=(.*)$/.exec(line);
      if (m) env[m[1]] = m[2].replace(/^''$/, '').replace(/\\(.)/g, '$1');
    }
  }
  return env;
}

/** The cluster, namespace and image, or why the kubernetes section cannot run. */
/** @param {{ kubeconfig?: string, namespace?: string, image?: string }} args */
export async function findCluster(args) {
  let k8s;
  try {
    k8s = await import('@kubernetes/client-node');
  } catch {
    return { ok: false, why: '@kubernetes/client-node is not installed' };
  }
  const env = await testClusterEnv();
  const kubeconfig = args.kubeconfig ?? env.ADMIN_KUBECONFIG ?? process.env.KUBECONFIG;
  if (!kubeconfig) return { ok: false, why: 'no --kubeconfig, no KUBECONFIG and no test cluster (bash scripts/k8s-node-up.sh)' };
  const namespace = args.namespace ?? env.K8S_NAMESPACE ?? 'default';
  const { defaultWorkerImage } = await import('../../dist/backends/docker/image.js');
  const image = args.image ?? (env.WORKER_IMAGE || defaultWorkerImage());
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const nodes = await Promise.race([core.listNode().then((l) => l.items, () => null), sleep(10_000).then(() => null)]);
  if (!nodes) return { ok: false, why: `the API server of ${kubeconfig} does not answer` };
  const ready = nodes.filter((n) => n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'));
  if (ready.length === 0) return { ok: false, why: 'no node is Ready (bash scripts/k8s-node-up.sh)' };
  return { ok: true, k8s, kc, core, networking: kc.makeApiClient(k8s.NetworkingV1Api), kubeconfig, namespace, image };
}
