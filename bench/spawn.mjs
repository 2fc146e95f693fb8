#!/usr/bin/env node
/**
 * Spawn-to-ready latency: spawngate's `gate.spawn()` next to the raw baseline measured in the same
 * run, on the same machine, with the same worker and the same listen/egress mode.
 *
 *   npm run build && npm run bench:spawn -- [--runs 20] [--warmup 2] [--backend auto|process|docker|kubernetes|all] [--poll-ms 0] [--json]
 *     kubernetes only: [--kubeconfig FILE] [--namespace NS] [--image IMAGE]  (default: the test cluster of scripts/k8s-node-up.sh)
 *
 * process backend, two variants:
 *   unix  the gate's default profile (egress none): `unshare --user --map-root-user --net` and a unix
 *         socket. Raw: the same unshare argv around workerBinCommand(), polling /healthz on the socket.
 *   tcp   egress open: the worker on 127.0.0.1:0. Raw: the same argv without unshare, reading the
 *         port from the worker's `{"event":"listening"}` stdout line, polling /healthz over TCP.
 * docker (container backend), one variant:
 *   unix  egress none: NetworkMode none, the worker's unix socket in a bind-mounted host folder.
 *         Raw: dockerode create + start of the same image with the same env contract and hardening,
 *         polling /healthz on the socket. Needs an engine and the worker image (scripts/build-image.sh).
 * kubernetes, one variant:
 *   pod   egress none on a real node. Raw: the same Pod manifest the backend builds (its token as a
 *         plain env value instead of a Secret), created through the API and watched until Ready
 *         with an IP, as the backend's running() does, then GET /healthz on podIP:8080 until 200.
 *         Spawngate also creates the NetworkPolicy and the token Secret and dry-runs all three
 *         first; a second table measures those API calls on their own (median per call).
 *
 * Every sample starts before the first syscall that creates anything and ends when /healthz answers
 * 200 to the worker's bearer token (the echo agent's ACP handshake done). The raw side knows that
 * moment without polling: it waits for the worker's "ACP session ready" log line and then asks
 * /healthz (polling only if that is not 200 yet). A tight /healthz poll instead (--poll-ms N) steals
 * CPU from the starting worker on a small machine and makes the raw side slower, not faster;
 * --poll-ms 100 is the longest pause of waitForHealthy, the /healthz wait of spawngate's readiness
 * strategy (src/sessions/readiness.ts), while the worker does not listen yet. Raw and gate samples
 * alternate so drift on a shared machine hits both alike; warm-up samples are dropped. The gate
 * samples also carry a breakdown by span (admission, reservation, create, ready) from an in-memory
 * exporter, whose cost is microseconds. Bounded: every wait has a deadline, every worker is removed.
 */
import { spawn as spawnChild } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { dockerReadiness, findCluster, markdownTable, quantile } from './lib/engines.mjs';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '2' },
    backend: { type: 'string', default: 'auto' },
    'poll-ms': { type: 'string', default: '0' },
    json: { type: 'boolean', default: false },
    kubeconfig: { type: 'string' },
    namespace: { type: 'string' },
    image: { type: 'string' },
  },
});
const RUNS = Number(args.runs);
const WARMUP = Number(args.warmup);
const POLL_MS = Number(args['poll-ms']);
const BACKENDS = args.backend;
if (!Number.isInteger(RUNS) || RUNS < 1 || RUNS > 500) throw new Error('--runs must be an integer in 1..500');
if (!Number.isInteger(WARMUP) || WARMUP < 0 || WARMUP > 50) throw new Error('--warmup must be an integer in 0..50');
if (!(Number.isInteger(POLL_MS) && POLL_MS >= 0 && POLL_MS <= 1000)) throw new Error('--poll-ms must be an integer in 0..1000');
if (!['auto', 'process', 'docker', 'kubernetes', 'all'].includes(BACKENDS)) throw new Error('--backend must be auto, process, docker, kubernetes or all');

const READY_TIMEOUT_MS = 60_000;
const TARGET_RATIO = 1.15;

let dist;
try {
  dist = {
    ...(await import('../dist/index.js')),
    worker: await import('../dist/worker/main.js'),
    testing: await import('../dist/testing.js'),
  };
} catch (err) {
  console.error(`bench/spawn.mjs imports the compiled package: run \`npm run build\` first (${err.message})`);
  process.exit(1);
}
const { createSpawngate, silentLogger } = dist;
const { workerBinCommand } = dist.worker;
const { createTestTracing } = dist.testing;
const kubernetesReadiness = () => findCluster({ kubeconfig: args.kubeconfig, namespace: args.namespace, image: args.image });

const log = (line) => {
  if (!args.json) process.stderr.write(`${line}\n`);
};

// ─── raw helpers ─────────────────────────────────────────────────────────────────────────────

/** GET /healthz once; resolves to the HTTP status, or 0 when nothing answers yet. */
function healthz(target, token) {
  return new Promise((resolve) => {
    const req = request(
      { ...target, path: '/healthz', method: 'GET', headers: { authorization: `Bearer ${token}` }, timeout: 2_000 },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', () => resolve(0));
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
    req.end();
  });
}

async function pollHealthy(target, token, isDead) {
  const deadline = performance.now() + READY_TIMEOUT_MS;
  while (performance.now() < deadline) {
    if ((await healthz(target, token)) === 200) return;
    if (isDead()) throw new Error('the worker exited before it was ready');
    await sleep(Math.max(POLL_MS, 5));
  }
  throw new Error(`not healthy within ${READY_TIMEOUT_MS} ms`);
}

/** Resolves with the first line of `stream` that `match` accepts, or null at its end or the deadline. */
function firstLine(stream, match) {
  const lines = createInterface({ input: stream });
  return Promise.race([
    (async () => {
      for await (const line of lines) if (match(line)) return line;
      return null;
    })(),
    sleep(READY_TIMEOUT_MS).then(() => null),
  ]);
}

const rawChildren = new Set();

/** The worker started by hand, as the process backend does, minus admission, reservation and state files. */
async function rawProcess(variant) {
  const dir = await mkdtemp(join(tmpdir(), 'sgb-'));
  const token = randomBytes(32).toString('base64url');
  const socketPath = join(dir, 'w.sock');
  const command = workerBinCommand();
  const argv = variant === 'unix' ? ['unshare', '--user', '--map-root-user', '--net', '--', ...command] : command;
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: dir,
    SPAWNGATE_WORKER_TOKEN: token,
    SPAWNGATE_AGENT_ID: 'echo',
    SPAWNGATE_LISTEN: variant === 'unix' ? `unix:${socketPath}` : '127.0.0.1:0',
  };
  const started = performance.now();
  const child = spawnChild(argv[0], argv.slice(1), { cwd: dir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  rawChildren.add(child);
  let exited = false;
  const exit = new Promise((resolve) => child.once('exit', () => resolve((exited = true))));
  child.once('error', () => (exited = true));
  // Both streams are read from the start so the worker never blocks on a full pipe.
  const listening = firstLine(child.stdout, (line) => line.includes('"event":"listening"'));
  const sessionReady = firstLine(child.stderr, (line) => line.includes('ACP session ready'));
  try {
    let target;
    if (variant === 'unix') {
      target = { socketPath };
    } else {
      const line = await listening;
      const url = line ? new URL(JSON.parse(line).url) : null;
      if (!url) throw new Error('the worker never printed its listening line');
      target = { host: url.hostname, port: Number(url.port) };
    }
    if (POLL_MS === 0 && !(await sessionReady)) throw new Error('the worker never logged "ACP session ready"');
    await pollHealthy(target, token, () => exited);
    return performance.now() - started;
  } finally {
    child.stdout.destroy();
    child.stderr.destroy();
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    if (!(await Promise.race([exit, sleep(5_000).then(() => false)]))) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await Promise.race([exit, sleep(2_000)]);
    }
    rawChildren.delete(child);
    await rm(dir, { recursive: true, force: true });
  }
}

// ─── gate helpers ────────────────────────────────────────────────────────────────────────────

const SPAN_PHASES = [
  ['spawngate.admission.evaluate', 'admission'],
  ['spawngate.reservation', 'reservation'],
  ['spawngate.backend.create', 'create'],
  ['spawngate.backend.ready', 'ready'],
];

const spanMs = (span) => (span.endTime[0] - span.startTime[0]) * 1e3 + (span.endTime[1] - span.startTime[1]) / 1e6;

async function openGate(backendName, backendConfig, profiles) {
  return createSpawngate({
    config: {
      agents: {
        executionBackends: { [backendName]: { ...backendConfig, defaultProfile: Object.keys(profiles)[0], profiles } },
        execution: { default: { backend: backendName, profile: Object.keys(profiles)[0] } },
      },
    },
    owner: `bench-${randomUUID().slice(0, 8)}`,
    sweepIntervalMs: 0,
    decisionLog: false,
    logger: silentLogger,
  });
}

/** One gate.spawn() to ready, timed from the call; the worker is closed (untimed) before returning. */
async function gateSpawn(gate, tracing, profile) {
  tracing.reset();
  const started = performance.now();
  const handle = await gate.spawn({
    agentId: 'echo',
    task: 'echo bench',
    execution: { profile },
    caller: { sessionKey: `agent:main:bench:${randomUUID()}`, channel: { id: 'bench', kind: 'cli' }, user: { id: 'bench', roles: [] } },
  });
  const ms = performance.now() - started;
  await handle.close();
  const phases = {};
  for (const [name, key] of SPAN_PHASES) {
    const span = tracing.spans(name)[0];
    if (span) phases[key] = spanMs(span);
  }
  return { ms, phases };
}

// ─── statistics and output ───────────────────────────────────────────────────────────────────

const results = [];

async function measure({ backend, variant, raw, gated }) {
  const rawMs = [];
  const gateMs = [];
  const phases = {};
  log(`${backend}/${variant}: ${WARMUP} warm-up + ${RUNS} measured pairs`);
  for (let i = 0; i < WARMUP + RUNS; i++) {
    // Alternate which goes first so neither always runs right after the other's teardown.
    const order = i % 2 === 0 ? [raw, gated] : [gated, raw];
    for (const run of order) {
      const sample = await run();
      if (i < WARMUP) continue;
      if (run === raw) rawMs.push(sample);
      else {
        gateMs.push(sample.ms);
        for (const [k, v] of Object.entries(sample.phases)) (phases[k] ??= []).push(v);
      }
    }
  }
  const row = {
    backend,
    variant,
    n: RUNS,
    raw: { median: quantile(rawMs, 0.5), p95: quantile(rawMs, 0.95) },
    spawngate: { median: quantile(gateMs, 0.5), p95: quantile(gateMs, 0.95) },
    phasesMedian: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, quantile(v, 0.5)])),
  };
  row.ratio = { median: row.spawngate.median / row.raw.median, p95: row.spawngate.p95 / row.raw.p95 };
  results.push(row);
  log(`  raw ${fmt(row.raw.median)}/${fmt(row.raw.p95)} ms, spawngate ${fmt(row.spawngate.median)}/${fmt(row.spawngate.p95)} ms`);
}

const fmt = (ms) => ms.toFixed(1);

function printTable() {
  const header = ['backend', 'variant', 'n', 'raw median', 'raw p95', 'spawngate median', 'spawngate p95', 'ratio median', 'ratio p95', `≤ ${TARGET_RATIO}×`];
  const rows = results.map((r) => [
    r.backend,
    r.variant,
    String(r.n),
    `${fmt(r.raw.median)} ms`,
    `${fmt(r.raw.p95)} ms`,
    `${fmt(r.spawngate.median)} ms`,
    `${fmt(r.spawngate.p95)} ms`,
    `${r.ratio.median.toFixed(2)}×`,
    `${r.ratio.p95.toFixed(2)}×`,
    r.ratio.median <= TARGET_RATIO ? 'yes' : 'no',
  ]);
  console.log(markdownTable(header, rows));
  console.log('\nspawngate median per span (ms):');
  for (const r of results) {
    const parts = SPAN_PHASES.map(([, k]) => (r.phasesMedian[k] === undefined ? null : `${k} ${r.phasesMedian[k].toFixed(2)}`)).filter(Boolean);
    console.log(`  ${r.backend}/${r.variant}: ${parts.join(', ')}`);
  }
  const rawReady = POLL_MS === 0 ? 'process/docker raw waits for the worker\'s "ACP session ready" line, then GET /healthz' : `raw polls /healthz every ${POLL_MS} ms`;
  if (results.some((r) => r.backend === 'kubernetes')) console.log('\nkubernetes raw: watches the pod until Ready with an IP, then GET /healthz on podIP (polled every 5 ms until 200)');
  console.log(`\n${rawReady}; node ${process.version}; ${cpus().length} CPUs; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
}

// ─── sections ────────────────────────────────────────────────────────────────────────────────

async function benchProcess(tracing) {
  const stateDir = await mkdtemp(join(tmpdir(), 'sgb-gate-'));
  const base = { ttlSeconds: 600, timeoutSeconds: 120 };
  const gate = await openGate('local', { type: 'process', stateDir }, { unix: { ...base, egress: 'none' }, tcp: { ...base, egress: 'open' } });
  try {
    for (const variant of ['unix', 'tcp']) {
      await measure({ backend: 'process', variant, raw: () => rawProcess(variant), gated: () => gateSpawn(gate, tracing, variant) });
    }
  } finally {
    await gate.sweep({ orphans: true }).catch(() => undefined);
    await gate.shutdown();
    await rm(stateDir, { recursive: true, force: true });
  }
}

/** The worker container created by hand with the container backend's egress-none shape, minus spawngate. */
async function rawContainer(docker, image) {
  const dir = await mkdtemp(join(tmpdir(), 'sgb-'));
  // The worker runs as uid 10001 and creates its socket in this folder.
  await chown(dir, 10001, 10001);
  const token = randomBytes(32).toString('base64url');
  const started = performance.now();
  let container = null;
  try {
    container = await docker.createContainer({
      name: `spawngate-bench-${randomUUID().slice(0, 12)}`,
      Image: image,
      Env: [`SPAWNGATE_WORKER_TOKEN=${token}`, 'SPAWNGATE_AGENT_ID=echo', 'SPAWNGATE_LISTEN=unix:/run/spawngate/w.sock'],
      User: '10001:10001',
      Labels: { 'spawngate.io/bench': 'raw' },
      HostConfig: {
        NetworkMode: 'none',
        ReadonlyRootfs: true,
        Tmpfs: { '/tmp': 'rw,nosuid,nodev,size=268435456' },
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges'],
        PidsLimit: 256,
        Mounts: [{ Type: 'bind', Source: dir, Target: '/run/spawngate' }],
      },
    });
    let sessionReady = null;
    if (POLL_MS === 0) {
      // Attached before start, so no line is missed; the engine multiplexes stdout and stderr.
      const stream = await container.attach({ stream: true, stdout: true, stderr: true });
      const out = new PassThrough();
      const err = new PassThrough();
      docker.modem.demuxStream(stream, out, err);
      out.resume();
      sessionReady = firstLine(err, (line) => line.includes('ACP session ready')).finally(() => stream.destroy());
    }
    await container.start();
    if (sessionReady && !(await sessionReady)) throw new Error('the worker container never logged "ACP session ready"');
    await pollHealthy({ socketPath: join(dir, 'w.sock') }, token, () => false);
    return performance.now() - started;
  } finally {
    if (container) await container.remove({ force: true }).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

async function benchDocker(tracing, readiness) {
  const gate = await openGate('docker', { type: 'container', image: readiness.image }, { unix: { ttlSeconds: 600, timeoutSeconds: 120, egress: 'none' } });
  try {
    await measure({ backend: 'docker', variant: 'unix', raw: () => rawContainer(readiness.docker, readiness.image), gated: () => gateSpawn(gate, tracing, 'unix') });
  } finally {
    await gate.sweep({ orphans: true }).catch(() => undefined);
    await gate.shutdown();
  }
}

// ─── kubernetes ──────────────────────────────────────────────────────────────────────────────

const K8S_PORT = 8080;

/** The WorkerSpec spawngate's gate makes for the bench profile, for the backend's own manifest builders. */
function benchSpec(image) {
  const spawnId = randomUUID();
  const expiresAt = new Date(Date.now() + 600_000);
  return {
    spawnId,
    owner: 'bench-raw',
    backendName: 'cluster',
    profileName: 'pod',
    agentId: 'echo',
    agentCommand: null,
    image,
    command: null,
    args: null,
    env: {},
    secretEnv: [],
    resources: { requests: { cpu: '100m', memory: '128Mi', ephemeralStorage: null }, limits: { cpu: null, memory: '512Mi', ephemeralStorage: null }, gpu: 0 },
    pidsLimit: null,
    runtimeClassName: null,
    nodeSelector: {},
    tolerations: [],
    egress: 'none',
    egressAllow: [],
    workspace: { strategy: 'ephemeral', sizeLimit: '1Gi' },
    token: randomBytes(32).toString('base64url'),
    timeoutSeconds: 120,
    expiresAt,
    labels: { 'spawngate.io/bench': 'raw', 'spawngate.io/spawn-id': spawnId },
    traceparent: null,
  };
}

async function manifestOptions(ready) {
  const { defaultProxy } = await import('../dist/backends/kubernetes/manifest.js');
  return { backendName: 'cluster', namespace: ready.namespace, defaultImage: ready.image, workerPort: K8S_PORT, proxy: defaultProxy(ready.namespace) };
}

/** Resolves with the pod once `done(pod)` holds, from a watch opened before the create. */
function watchPod(ready, name, done) {
  return new Promise((resolve, reject) => {
    const watch = new ready.k8s.Watch(ready.kc);
    let request = null;
    const timer = setTimeout(() => finish(new Error(`pod ${name} not running within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
    function finish(err, pod) {
      clearTimeout(timer);
      request?.abort();
      if (err) reject(err);
      else resolve(pod);
    }
    watch
      .watch(`/api/v1/namespaces/${ready.namespace}/pods`, { fieldSelector: `metadata.name=${name}` }, (_type, pod) => {
        if (done(pod)) finish(null, pod);
      }, (err) => err && finish(err))
      .then((r) => (request = r), (err) => finish(err));
  });
}

/** The backend's Pod for one spawn, created by hand (token inline), to Running with an IP, then /healthz 200. */
async function rawPod(ready, options, build) {
  const spec = benchSpec(ready.image);
  const pod = build.buildPodManifest(spec, options);
  const container = pod.spec.containers[0];
  container.env = container.env.map((e) => (e.name === 'SPAWNGATE_WORKER_TOKEN' ? { name: e.name, value: spec.token } : e));
  const name = pod.metadata.name;
  const started = performance.now();
  try {
    const isReady = (p) => p.status?.phase === 'Running' && Boolean(p.status.podIP) && Boolean(p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'));
    const running = watchPod(ready, name, isReady);
    await ready.core.createNamespacedPod({ namespace: ready.namespace, body: pod });
    const p = await running;
    await pollHealthy({ host: p.status.podIP, port: K8S_PORT }, spec.token, () => false);
    return performance.now() - started;
  } finally {
    // Untimed, and awaited like the gate's close(): the next sample must not overlap this teardown.
    await ready.core.deleteNamespacedPod({ namespace: ready.namespace, name, gracePeriodSeconds: 0 }).catch(() => undefined);
    const deadline = performance.now() + READY_TIMEOUT_MS;
    while (performance.now() < deadline) {
      const gone = await ready.core.readNamespacedPod({ namespace: ready.namespace, name }).then(() => false, (err) => err?.code === 404);
      if (gone) break;
      await sleep(100);
    }
  }
}

/** Median ms of the API calls spawngate adds to the raw Pod: the dry-runs, the Secret, the NetworkPolicy. */
async function apiOverhead(ready, options, build) {
  const calls = { 'dry-run pod+secret+networkpolicy': [], 'create+delete secret': [], 'create+delete networkpolicy': [] };
  const { namespace } = ready;
  for (let i = 0; i < WARMUP + RUNS; i++) {
    const spec = benchSpec(ready.image);
    const m = build.buildWorkerManifests(spec, options);
    let t = performance.now();
    await ready.networking.createNamespacedNetworkPolicy({ namespace, body: m.networkPolicy, dryRun: 'All' });
    await ready.core.createNamespacedPod({ namespace, body: m.pod, dryRun: 'All' });
    await ready.core.createNamespacedSecret({ namespace, body: build.buildTokenSecret({ ...spec, token: 'dry-run' }, options, null), dryRun: 'All' });
    const dry = performance.now() - t;
    t = performance.now();
    await ready.core.createNamespacedSecret({ namespace, body: build.buildTokenSecret(spec, options, null) });
    await ready.core.deleteNamespacedSecret({ namespace, name: m.secretName });
    const secret = performance.now() - t;
    t = performance.now();
    await ready.networking.createNamespacedNetworkPolicy({ namespace, body: m.networkPolicy });
    await ready.networking.deleteNamespacedNetworkPolicy({ namespace, name: m.networkPolicy.metadata.name });
    const policy = performance.now() - t;
    if (i < WARMUP) continue;
    calls['dry-run pod+secret+networkpolicy'].push(dry);
    calls['create+delete secret'].push(secret);
    calls['create+delete networkpolicy'].push(policy);
  }
  return Object.fromEntries(Object.entries(calls).map(([k, v]) => [k, { median: quantile(v, 0.5), p95: quantile(v, 0.95) }]));
}

let apiCalls = null;

async function benchKubernetes(tracing, ready) {
  const build = await import('../dist/backends/kubernetes/manifest.js');
  const options = await manifestOptions(ready);
  const gate = await openGate(
    'cluster',
    { type: 'kubernetes', namespace: ready.namespace, kubeconfig: ready.kubeconfig, image: ready.image },
    { pod: { ttlSeconds: 600, timeoutSeconds: 120, egress: 'none', workspace: { strategy: 'ephemeral', sizeLimit: '1Gi' }, resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } } } },
  );
  try {
    await measure({ backend: 'kubernetes', variant: 'pod', raw: () => rawPod(ready, options, build), gated: () => gateSpawn(gate, tracing, 'pod') });
    log('kubernetes: API calls spawngate adds to the Pod');
    apiCalls = await apiOverhead(ready, options, build);
  } finally {
    await gate.sweep({ orphans: true }).catch(() => undefined);
    await gate.shutdown();
  }
}

// ─── main ────────────────────────────────────────────────────────────────────────────────────

const onSignal = () => {
  for (const child of rawChildren) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  process.exit(130);
};
process.once('SIGINT', onSignal);
process.once('SIGTERM', onSignal);

const tracing = createTestTracing();
const skipped = [];
try {
  if (['auto', 'process', 'all'].includes(BACKENDS)) await benchProcess(tracing);
  if (['auto', 'docker', 'all'].includes(BACKENDS)) {
    const readiness = await dockerReadiness();
    if (readiness.ok) await benchDocker(tracing, readiness);
    else if (BACKENDS === 'docker' || BACKENDS === 'all') throw new Error(`docker section cannot run: ${readiness.why}`);
    else skipped.push(`docker: skipped, ${readiness.why}`);
  }
  if (['auto', 'kubernetes', 'all'].includes(BACKENDS)) {
    const readiness = await kubernetesReadiness();
    if (readiness.ok) await benchKubernetes(tracing, readiness);
    else if (BACKENDS === 'kubernetes' || BACKENDS === 'all') throw new Error(`kubernetes section cannot run: ${readiness.why}`);
    else skipped.push(`kubernetes: skipped, ${readiness.why}`);
  }
} finally {
  await tracing.shutdown();
}

if (args.json) console.log(JSON.stringify({ runs: RUNS, warmup: WARMUP, pollMs: POLL_MS, node: process.version, results, apiCalls, skipped }, null, 2));
else {
  await printTable();
  if (apiCalls) {
    console.log('\nkubernetes: API calls spawngate makes besides the Pod (median / p95 per call, ms):');
    for (const [name, v] of Object.entries(apiCalls)) console.log(`  ${name}: ${fmt(v.median)} / ${fmt(v.p95)}`);
  }
  for (const s of skipped) console.log(s);
}
