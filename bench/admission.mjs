#!/usr/bin/env node
// Admission benchmark (not a test): the shipped policy evaluated in-process (WASM) versus the same
// policy behind `opa run --server` on loopback REST, in one run, on the same inputs.
//   npm run bench:admission [-- --n 20000 --rest-n 3000]
import { spawn, execFileSync } from 'node:child_process';
import { request as httpRequest, Agent } from 'node:http';
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createAdmission, SHIPPED_BUNDLE, loadConfigFile } from '../dist/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const { values } = parseArgs({ options: { n: { type: 'string' }, 'rest-n': { type: 'string' } } });
const N = Number(values.n ?? 20000);
const REST_N = Number(values['rest-n'] ?? 3000);

const config = await loadConfigFile(`${root}examples/spawngate.example.yaml`);
delete config.spawngate; // the example points at a Redis store and /var/log; the bench measures the policy and the in-memory store
const gate = await createAdmission({ config, bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: false, logger: { debug() {}, info() {}, warn() {}, error() {} } });

const tasks = ['Fix the failing unit test in src/util.ts', 'run the full test suite', 'explain this stack trace', 'npm test && npm run build', 'refactor the parser', 'cargo build --release'];
const kinds = [['telegram', true], ['webchat', true], ['slack', true], ['cron', false], ['webhook', false]];
const agents = ['codex', 'claude', 'gemini', 'echo'];
const requests = Array.from({ length: 64 }, (_, i) => {
  const [kind, interactive] = kinds[i % kinds.length];
  return {
    runtime: 'acp',
    agentId: agents[i % agents.length],
    task: tasks[i % tasks.length],
    caller: { sessionKey: `agent:main:${kind}:${i}`, depth: i % 3, channel: { id: `${kind}:${i % 7}`, kind, interactive }, user: { id: `user${i % 11}`, roles: i % 13 === 0 ? ['admin'] : [] } },
  };
});
// Full admission inputs, captured once from the gate itself. The gate sends the policy the input
// without its catalog, which the engine keeps in the policy's data (runtime data); `opa run` gets
// the full input, as any REST client would send it.
const inputs = [];
for (const r of requests) inputs.push((await gate.admit(r)).input);
const inputJson = inputs.map((i) => JSON.stringify(i));
const gateJson = inputs.map(({ catalog: _catalog, ...rest }) => JSON.stringify(rest));
if (!gate.policy.readsRuntimeCatalog) throw new Error('the shipped bundle does not read data.spawngate.runtime.catalog; rebuild it');

const canonical = (v) => JSON.stringify(v, (_k, x) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x));
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
function summarize(samplesNs, wallMs) {
  const s = Float64Array.from(samplesNs).sort();
  return { n: s.length, perSec: (s.length / wallMs) * 1000, p50us: pct(s, 50) / 1000, p99us: pct(s, 99) / 1000 };
}

function timeEach(n, fn) {
  for (let i = 0; i < 2000; i++) fn(i);
  const samples = new Array(n);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const s = process.hrtime.bigint();
    fn(i);
    samples[i] = Number(process.hrtime.bigint() - s);
  }
  return summarize(samples, performance.now() - t0);
}

// 1. in-process policy evaluation, as the gate does it (catalog in data); for detail, also with the catalog in the input
// Warmed up first, both ways: a gateway that has run a while is what is measured, not start-up
// (the evaluator's spare thread coming up, the JIT), which would otherwise land on whichever runs first.
for (let i = 0; i < 10_000; i++) {
  gate.policy.evaluateJsonWithoutCatalog(gateJson[i % gateJson.length]);
  gate.policy.evaluateJson(inputJson[i % inputJson.length]);
}
const inProcess = timeEach(N, (i) => gate.policy.evaluateJsonWithoutCatalog(gateJson[i % gateJson.length]));
const inProcessFull = timeEach(N, (i) => gate.policy.evaluateJson(inputJson[i % inputJson.length]));
let t0;

// 1b. This machine's own jitter, the floor under any p99: a fixed CPU task (no allocation, no I/O,
// no other thread) as long as the median evaluation, timed the same way. On a small shared VM its
// p99 is several times its p50 (preemption, interrupts, steal), whatever the code being timed.
let sink = 0;
function spin(iterations) {
  let x = sink;
  for (let i = 0; i < iterations; i++) x = (x * 31 + i) | 0;
  // Kept, so the loop cannot be optimized away.
  sink = x;
}
const floor = (() => {
  const probe = 100_000;
  for (let i = 0; i < 500; i++) spin(probe);
  const probes = [];
  for (let i = 0; i < 300; i++) {
    const s = process.hrtime.bigint();
    spin(probe);
    probes.push(Number(process.hrtime.bigint() - s));
  }
  probes.sort((a, b) => a - b);
  const iterations = Math.max(1, Math.round((probe * inProcess.p50us * 1000) / probes[150]));
  return timeEach(N, () => spin(iterations));
})();

// 1c. A lone evaluation, as a gateway with a spawn now and then makes it: after 20 ms of quiet,
// with the CPU's caches and the process gone cold (and, for a bundle off the fast path, the
// evaluator thread asleep).
const loneN = 150;
const loneSamples = [];
for (let i = 0; i < loneN; i++) {
  await new Promise((r) => setTimeout(r, 20));
  const s = process.hrtime.bigint();
  await gate.policy.evaluateJsonWithoutCatalogAsync(gateJson[i % gateJson.length]);
  loneSamples.push(Number(process.hrtime.bigint() - s));
}
// No rate: the quiet between them is the point.
const lone = { ...summarize(loneSamples, 1), perSec: null };

// 2. the whole admit + reserve path (request validation, selection, usage, policy, atomic reservation), then release
// Measured warm, as the evaluation is: a gateway under enough load for the rate to matter has run
// the path a while. Its JavaScript (validation, selection, store, metrics, tracing) is optimized by
// V8 only after many calls: over the first 20-30 thousand the rate climbs by about 2×. Those first
// calls from a cold start are timed too and printed as a detail row; the target is the warm row.
// Timed in rounds as well: on this kind of machine one round's rate differs from the next by up to
// 2× with nothing else running, and the spread says how much of a run's rate is the machine's.
const allowN = Math.min(N, 20000);
const ROUND = 2000;
const WARM_EXTRA = 10000;
async function reserveRun(n) {
  const samples = new Array(n);
  const rates = [];
  let granted = 0;
  const start = performance.now();
  let roundStart = start;
  for (let i = 0; i < n; i++) {
    const s = process.hrtime.bigint();
    const r = await gate.reserve(requests[i % requests.length]);
    samples[i] = Number(process.hrtime.bigint() - s);
    if (r.allowed) {
      granted++;
      await r.reservation.release();
    }
    if ((i + 1) % ROUND === 0) {
      const end = performance.now();
      rates.push((ROUND / (end - roundStart)) * 1000);
      roundStart = end;
    }
  }
  rates.sort((a, b) => a - b);
  return { result: summarize(samples, performance.now() - start), rates, granted };
}
const coldRun = await reserveRun(allowN);
await reserveRun(WARM_EXTRA);
const warmRun = await reserveRun(allowN);
const reservePath = warmRun.result;
const roundRates = warmRun.rates;
const allowed = warmRun.granted;

// 3. the same policy behind `opa run --server` (REST sidecar) on loopback
const opa = process.env.OPA_BIN ?? execFileSync('bash', [`${root}scripts/ensure-opa.sh`], { encoding: 'utf8' }).trim().split('\n').at(-1);
const port = await new Promise((resolve) => {
  const srv = createServer().listen(0, '127.0.0.1', () => {
    const { port: p } = srv.address();
    srv.close(() => resolve(p));
  });
});
const server = spawn(opa, ['run', '--server', '--addr', `127.0.0.1:${port}`, '--log-level', 'error', '--ignore', '*_test.rego', `${root}policies`], { stdio: ['ignore', 'ignore', 'inherit'] });
const agent = new Agent({ keepAlive: true, maxSockets: 1 });
function send(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method, agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(text)) : res.statusCode === 204 ? resolve(null) : reject(new Error(`HTTP ${res.statusCode}: ${text}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}
const post = (body) => send('POST', '/v1/data/spawngate/admission/decision', body);
const put = (path, body) => send('PUT', path, body);
const bodies = inputs.map((input) => JSON.stringify({ input }));
let rest;
let beside;
let restData;
let fastPath;
try {
  for (let i = 0; ; i++) {
    try {
      await post(bodies[0]);
      break;
    } catch (err) {
      if (i >= 200) throw new Error(`opa server did not answer: ${err.message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  // Same answers from both: the comparison is only fair if they compute the same thing.
  for (let i = 0; i < inputs.length; i++) {
    const viaRest = (await post(bodies[i])).result;
    const viaWasm = gate.policy.evaluateJsonWithoutCatalog(gateJson[i]).decision;
    const viaWasmFull = gate.policy.evaluateJson(inputJson[i]).decision;
    if (canonical(viaRest) !== canonical(viaWasm) || canonical(viaRest) !== canonical(viaWasmFull)) {
      throw new Error(`decision mismatch on input ${i}:\nREST ${JSON.stringify(viaRest)}\nWASM ${JSON.stringify(viaWasm)}\nWASM, catalog in input ${JSON.stringify(viaWasmFull)}`);
    }
  }
  for (let i = 0; i < 200; i++) await post(bodies[i % bodies.length]);
  // In rounds, each followed by a round of in-process evaluations: the ratio's two sides then share
  // the same minutes of the machine. On a shared VM its speed drifts by tens of percent from one
  // minute to the next, which moved the ratio of two runs measured apart by as much.
  const restSamples = new Array(REST_N);
  const besideSamples = [];
  const rounds = 10;
  let restMs = 0;
  for (let round = 0, i = 0; round < rounds; round++) {
    t0 = performance.now();
    for (const end = Math.round(((round + 1) * REST_N) / rounds); i < end; i++) {
      const s = process.hrtime.bigint();
      await post(bodies[i % bodies.length]);
      restSamples[i] = Number(process.hrtime.bigint() - s);
    }
    restMs += performance.now() - t0;
    for (let k = 0; k < N / rounds; k++) {
      const s = process.hrtime.bigint();
      gate.policy.evaluateJsonWithoutCatalog(gateJson[k % gateJson.length]);
      besideSamples.push(Number(process.hrtime.bigint() - s));
    }
  }
  rest = summarize(restSamples, restMs);
  // No rate: REST's rounds lie between its samples.
  beside = { ...summarize(besideSamples, 1), perSec: null };

  // For detail: the sidecar given the same advantage, the catalog pushed once into its data.
  await put('/v1/data/spawngate/runtime', JSON.stringify({ catalog: inputs[0].catalog }));
  const restBodies = gateJson.map((json) => `{"input":${json}}`);
  for (let i = 0; i < inputs.length; i++) {
    const viaRest = (await post(restBodies[i])).result;
    if (canonical(viaRest) !== canonical(gate.policy.evaluateJsonWithoutCatalog(gateJson[i]).decision)) throw new Error(`decision mismatch on input ${i} with the catalog in the sidecar's data`);
  }
  for (let i = 0; i < 200; i++) await post(restBodies[i % restBodies.length]);
  const restDataSamples = new Array(REST_N);
  t0 = performance.now();
  for (let i = 0; i < REST_N; i++) {
    const s = process.hrtime.bigint();
    await post(restBodies[i % restBodies.length]);
    restDataSamples[i] = Number(process.hrtime.bigint() - s);
  }
  restData = summarize(restDataSamples, performance.now() - t0);
} finally {
  server.kill('SIGTERM');
  agent.destroy();
  fastPath = gate.policy.fastPath;
  await gate.close();
}

const row = (name, r) => `${name.padEnd(44)} ${String(r.n).padStart(6)} ${(r.perSec === null ? '-' : r.perSec.toFixed(0)).padStart(10)} ${r.p50us.toFixed(1).padStart(9)} ${r.p99us.toFixed(1).padStart(9)}`;
console.log(`node ${process.version}, ${inputs.length} distinct inputs, bundle ${gate.policy.revision}`);
console.log(`${'path'.padEnd(44)} ${'n'.padStart(6)} ${'ops/s'.padStart(10)} ${'p50 µs'.padStart(9)} ${'p99 µs'.padStart(9)}`);
console.log(row('in-process WASM policy evaluation', inProcess));
console.log(row('  the same, catalog in the input (detail)', inProcessFull));
console.log(row(`admit+reserve+release (${allowed} allowed)`, reservePath));
console.log(row('  the same, its first calls from a cold start', coldRun.result));
console.log(row('machine floor: fixed CPU task, same p50', floor));
console.log(row('one evaluation after 20 ms of quiet', lone));
console.log(row('opa run --server, loopback REST (baseline)', rest));
console.log(row('  the same, catalog in its data (detail)', restData));
console.log(`policy fast path (evaluation on the calling thread, with fuel and a time budget): ${fastPath.on ? 'on' : `off, ${fastPath.reason}`}; ${fastPath.answered} evaluations answered there, ${fastPath.misses} sent on to the evaluator thread, ${fastPath.long} sent there for their length`);
console.log(`input JSON: ${Math.round(gateJson.reduce((n, j) => n + j.length, 0) / gateJson.length)} bytes to the engine, ${Math.round(inputJson.reduce((n, j) => n + j.length, 0) / inputJson.length)} with the catalog`);
console.log(`\nREST / in-process: p50 ${(rest.p50us / beside.p50us).toFixed(1)}× (in-process p50 ${beside.p50us.toFixed(1)} µs in the rounds between REST's, the target's ratio; ${(rest.p50us / inProcess.p50us).toFixed(1)}× against the row above), p99 ${(rest.p99us / inProcess.p99us).toFixed(1)}×, throughput ${(inProcess.perSec / rest.perSec).toFixed(1)}×`);
console.log(`REST with the catalog in its data / in-process (detail): p50 ${(restData.p50us / inProcess.p50us).toFixed(1)}×`);
const spread = (rates) => `slowest ${rates[0].toFixed(0)}/s, median ${rates[Math.floor(rates.length / 2)].toFixed(0)}/s, fastest ${rates.at(-1).toFixed(0)}/s`;
if (roundRates.length) console.log(`admit+reserve+release, warm, ${roundRates.length} rounds of ${ROUND}: ${spread(roundRates)} (the row and the target: the whole warm run)`);
if (coldRun.rates.length) console.log(`admit+reserve+release, its first ${allowN} calls from a cold start (the JIT at work), ${coldRun.rates.length} rounds of ${ROUND}: ${spread(coldRun.rates)}`);
console.log(`machine floor: a fixed CPU task with the evaluation's p50 has p99 ${floor.p99us.toFixed(0)} µs here (${(floor.p99us / floor.p50us).toFixed(1)}× its p50); the evaluation's p99 is ${(inProcess.p99us / floor.p99us).toFixed(2)}× that floor`);
console.log(`targets (issue 13): in-process p99 ≤ 100 µs: ${inProcess.p99us <= 100 ? 'met' : 'NOT met'}; ≥ 50× faster than REST (p50): ${rest.p50us / beside.p50us >= 50 ? 'met' : 'NOT met'}; ≥ 10,000 admit+reserve+release/s: ${reservePath.perSec >= 10000 ? 'met' : 'NOT met'}`);
