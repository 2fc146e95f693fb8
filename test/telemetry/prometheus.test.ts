/**
 * The dashboard against a real Prometheus (Debian's package) scraping a real `spawngate serve` (the
 * installed bin) under scripted traffic: every panel's expression, with the dashboard's variables
 * filled in as Grafana would, must return the numbers the traffic implies: counts turned into
 * rates over the window, gauges, and quantiles of the histograms the server exposed.
 *
 * Exactness: every series exists at zero from the first scrape (pre-initialised label values), and
 * the queries are evaluated at the timestamp of a scrape taken after the traffic, so Prometheus's
 * extrapolation has nothing to stretch at either end: `increase` is the count and `rate` is the
 * count over the window.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, type Target } from '../server/helpers.js';
import { eventually } from '../worker/helpers.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'bin/spawngate.js');
const fixtureAgent = join(root, 'test/fixtures/acp-agent.ts');
const dashboard = JSON.parse(readFileSync(join(root, 'dashboards/spawngate.json'), 'utf8')) as Dashboard;

interface PanelTarget {
  expr: string;
  refId: string;
}
interface Panel {
  type: string;
  title: string;
  targets?: PanelTarget[];
}
interface Dashboard {
  panels: Panel[];
}
interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

/** prometheus from PATH, or installed by the project's script; null outside CI when it cannot be had. */
function findPrometheus(): string | null {
  const given = process.env['PROMETHEUS_BIN'];
  if (given && existsSync(given)) return given;
  try {
    const out = execFileSync('bash', [join(root, 'scripts/ensure-prometheus.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const path = out.trim().split('\n').at(-1) ?? '';
    if (existsSync(path)) return path;
  } catch (err) {
    if (process.env['CI']) throw err;
  }
  if (process.env['CI']) throw new Error('scripts/ensure-prometheus.sh gave no prometheus binary');
  return null;
}

async function freePort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Prometheus's histogram_quantile over cumulative buckets (upper bound → count), for the expectations. */
function histogramQuantile(q: number, buckets: Map<number, number>): number {
  const sorted = [...buckets.entries()].sort((a, b) => a[0] - b[0]);
  const total = sorted.at(-1)?.[1] ?? 0;
  if (total === 0) return Number.NaN;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, count] of sorted) {
    if (count >= rank) {
      if (le === Infinity) return lowerBound;
      if (le === sorted[0]![0] && le <= 0) return le;
      return lowerBound + (le - lowerBound) * ((rank - lowerCount) / (count - lowerCount));
    }
    lowerBound = le;
    lowerCount = count;
  }
  return Number.NaN;
}

/** One series' identity: its labels other than the name, empty values left out (Prometheus drops them). */
function keyOf(labels: Record<string, string>, only?: readonly string[]): string {
  const entries = Object.entries(labels).filter(([k, v]) => k !== '__name__' && v !== '' && (!only || only.includes(k)));
  return JSON.stringify(Object.fromEntries(entries.sort(([a], [b]) => a.localeCompare(b))));
}

/** The /metrics text of serve parsed into samples (name, labels, value). */
function parseExposition(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const out: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, '$1');
    out.push({ name: m[1]!, labels, value: m[3] === '+Inf' ? Infinity : Number(m[3]) });
  }
  return out;
}

const prometheusBin = findPrometheus();

describe.skipIf(prometheusBin === null)('the Grafana dashboard on a real Prometheus scraping spawngate serve', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sg-prom-'));
  // Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
  chmodSync(dir, 0o711);
  const token = randomBytes(24).toString('base64url');
  const children: ChildProcess[] = [];
  let api: Target;
  let serveAddress = '';
  let promUrl = '';
  let promStarted = 0;
  /** What the test saw: every API answer by method, route template and status. */
  const tally = new Map<string, number>();
  const count = (method: string, route: string, code: number) => {
    const key = keyOf({ route, code: String(code), method });
    tally.set(key, (tally.get(key) ?? 0) + 1);
  };

  async function promQuery(query: string, time?: number): Promise<Sample[]> {
    const url = new URL('/api/v1/query', promUrl);
    url.searchParams.set('query', query);
    if (time !== undefined) url.searchParams.set('time', String(time));
    const res = await fetch(url);
    const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: Sample[] } };
    if (body.status !== 'success' || !body.data) throw new Error(`query ${query} failed: ${body.error ?? res.status}`);
    if (body.data.resultType !== 'vector') throw new Error(`query ${query} returned a ${body.data.resultType}`);
    return body.data.result;
  }

  beforeAll(async () => {
    // serve: the process backend with the fixture ACP agent; profiles that allow, deny and fail.
    const base = { ttlSeconds: 600, timeoutSeconds: 60 };
    const config = {
      agents: {
        executionBackends: {
          local: {
            type: 'process',
            stateDir: join(dir, 'w'),
            defaultProfile: 'default',
            profiles: {
              default: base,
              restricted: { ...base, allowedAgents: ['nobody'] },
              broken: { ...base, env: { ACP_FIXTURE_FAIL_INIT: '1' } },
            },
          },
        },
        execution: { default: { backend: 'local', profile: 'default' } },
        acp: { fixture: { command: [process.execPath, fixtureAgent] } },
      },
      // The shipped bundle as its own shadow: every would-be decision is "same", which the shadow panel must show.
      spawngate: { shadow: { bundle: join(root, 'bundles/spawngate.tar.gz') } },
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const serve = spawn(process.execPath, [bin, 'serve', '--config', join(dir, 'config.json'), '--port', '0', '--host', '127.0.0.1'], {
      env: { ...process.env, SPAWNGATE_API_TOKEN: token, OTEL_SDK_DISABLED: 'true' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(serve);
    const listening = await new Promise<{ url: string }>((resolve, reject) => {
      const lines = createInterface({ input: serve.stdout });
      lines.on('line', (line) => {
        const event = JSON.parse(line) as { event: string; url: string };
        if (event.event === 'listening') resolve(event);
      });
      serve.once('exit', (code) => reject(new Error(`spawngate serve exited with ${code} before listening`)));
    });
    api = { url: listening.url };
    serveAddress = new URL(listening.url).host;

    // Prometheus: scrapes serve every second into a throw-away TSDB, with the shipped rules loaded.
    const promPort = await freePort();
    promUrl = `http://127.0.0.1:${promPort}`;
    writeFileSync(
      join(dir, 'prometheus.yml'),
      [
        'global:',
        '  scrape_interval: 1s',
        '  evaluation_interval: 1s',
        'rule_files:',
        `  - ${join(root, 'deploy/prometheus/spawngate-rules.yml')}`,
        'scrape_configs:',
        '  - job_name: spawngate',
        '    static_configs:',
        `      - targets: ['${serveAddress}']`,
        '',
      ].join('\n'),
    );
    promStarted = Date.now() / 1000;
    const prometheus = spawn(
      prometheusBin!,
      [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    children.push(prometheus);
    // Up, and one scrape holding the zero series, before any traffic: their first sample is 0.
    await eventually(async () => {
      const up = await promQuery(`up{job="spawngate"}`);
      const zeros = await promQuery(`count(spawngate_decisions_total{job="spawngate"} == 0)`);
      if (up[0]?.value[1] === '1' && Number(zeros[0]?.value[1] ?? 0) > 0) return true;
      // Said when the wait runs out: why the target is not up.
      const targets = (await (await fetch(new URL('/api/v1/targets', promUrl))).json()) as { data: { activeTargets: { health: string; lastError: string }[] } };
      throw new Error(`Prometheus has not scraped serve yet: up=${up[0]?.value[1] ?? 'none'}, zero series ${zeros[0]?.value[1] ?? 0}, targets ${JSON.stringify(targets.data.activeTargets.map((t) => [t.health, t.lastError]))}`);
    }, 60_000, 200);
  }, 120_000);

  afterAll(async () => {
    for (const child of children.reverse()) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('every panel returns what the traffic implies', async () => {
    const caller = (over: { user?: string; channel?: { id: string; kind: string } } = {}) => ({
      sessionKey: `agent:main:prom:${randomUUID()}`,
      depth: 0,
      channel: over.channel ?? { id: 'prom-chat', kind: 'cli', interactive: true },
      user: { id: over.user ?? 'prom-user', roles: [] },
    });
    const spawnCall = async (extra: Record<string, unknown> = {}) => {
      const reply = await call(api, 'POST', '/v1/spawns', { token, body: { agentId: 'fixture', task: 'hello', caller: caller(), ...extra } });
      count('POST', '/v1/spawns', reply.status);
      return reply;
    };

    // Three workers, two turns each; two of them closed, one kept (an active worker at the end).
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const reply = await spawnCall();
      expect(reply.status, reply.text).toBe(201);
      ids.push((reply.json as { spawnId: string }).spawnId);
    }
    for (const id of ids) {
      for (let t = 0; t < 2; t++) {
        const reply = await call(api, 'POST', `/v1/spawns/${id}/turns`, { token, body: { message: `turn ${t}` } });
        count('POST', '/v1/spawns/{id}/turns', reply.status);
        expect(reply.status).toBe(200);
        expect(reply.text).toContain('"turn.completed"');
      }
    }
    for (const id of ids.slice(0, 2)) {
      const reply = await call(api, 'DELETE', `/v1/spawns/${id}`, { token });
      count('DELETE', '/v1/spawns/{id}', reply.status);
      expect(reply.status).toBe(204);
    }
    // Denied by the policy: an agent the profile does not allow (twice), a backend nobody configured.
    for (let i = 0; i < 2; i++) expect((await spawnCall({ execution: { profile: 'restricted' } })).status).toBe(403);
    expect((await spawnCall({ execution: { backend: `made-up-${randomUUID()}` } })).status).toBe(403);
    // A cron automation: the first spawn passes, the second finds its rate bucket empty (burst 1).
    const cron = { user: 'prom-cron-user', channel: { id: 'prom-cron', kind: 'cron' } };
    const cronFirst = await spawnCall({ caller: caller(cron) });
    expect(cronFirst.status).toBe(201);
    const cronId = (cronFirst.json as { spawnId: string }).spawnId;
    const closed = await call(api, 'DELETE', `/v1/spawns/${cronId}`, { token });
    count('DELETE', '/v1/spawns/{id}', closed.status);
    const limited = await spawnCall({ caller: caller(cron) });
    expect(limited.status).toBe(403);
    const rateCode = (limited.json as { error: { reasons: { code: string }[] } }).error.reasons[0]!.code;
    expect(rateCode).toMatch(/^rate_limit_(user|channel)$/);
    // A worker that never becomes ready.
    const broken = await spawnCall({ execution: { profile: 'broken' } });
    expect(broken.status).toBeGreaterThanOrEqual(500);
    // Dry runs: one allow, one deny.
    for (const execution of [{}, { profile: 'restricted' }]) {
      const reply = await call(api, 'POST', '/v1/admit', { token, body: { agentId: 'fixture', task: 'dry', caller: caller(), execution } });
      count('POST', '/v1/admit', reply.status);
    }
    const missing = await call(api, 'GET', `/v1/spawns/${randomUUID()}`, { token });
    count('GET', '/v1/spawns/{id}', missing.status);
    expect(missing.status).toBe(404);

    // A successful scrape that started after the last answer: it holds every count. (A scrape cut by
    // its timeout on a loaded machine has up 0 and no samples: the next one is waited for.)
    const trafficEnd = Date.now() / 1000;
    const at = await eventually(async () => {
      // timestamp() of a raw selector is the scrape's own time (of anything computed, the query's).
      const [s] = await promQuery(`timestamp(up{job="spawngate"})`);
      const ts = s ? Number(s.value[1]) : 0;
      if (ts <= trafficEnd + 0.05) return undefined;
      const [up] = await promQuery(`up{job="spawngate"}`, ts);
      return up?.value[1] === '1' ? ts : undefined;
    });
    // The window reaches back past Prometheus's start, so every series starts inside it, at 0.
    const window = Math.ceil(at - promStarted) + 5;

    // The server's own exposition, for the histograms' expected quantiles (no traffic since).
    const exposition = parseExposition((await call(api, 'GET', '/metrics')).text);
    const quantileOf = (q: number, metric: string, by: readonly string[], keep: (l: Record<string, string>) => boolean = () => true) => {
      const groups = new Map<string, Map<number, number>>();
      for (const s of exposition.filter((e) => e.name === `${metric}_bucket` && keep(e.labels))) {
        const key = keyOf(s.labels, by);
        const buckets = groups.get(key) ?? new Map<number, number>();
        const le = s.labels['le'] === '+Inf' ? Infinity : Number(s.labels['le']);
        buckets.set(le, (buckets.get(le) ?? 0) + s.value);
        groups.set(key, buckets);
      }
      const out = new Map<string, number>();
      for (const [key, buckets] of groups) {
        const value = histogramQuantile(q, buckets);
        if (!Number.isNaN(value)) out.set(key, value);
      }
      return out;
    };

    const rate = (n: number) => n / window;
    const tallyBy = (by: readonly string[], keep: (route: string) => boolean) => {
      const out = new Map<string, number>();
      for (const [key, n] of tally) {
        const labels = JSON.parse(key) as Record<string, string>;
        if (!keep(labels['route']!)) continue;
        const k = keyOf(labels, by);
        out.set(k, (out.get(k) ?? 0) + rate(n));
      }
      return out;
    };
    const m = (...entries: [Record<string, string>, number][]) => new Map(entries.map(([l, v]) => [keyOf(l), v]));
    const readyLocal = (l: Record<string, string>) => l['backend'] === 'local';

    /**
     * What each panel must show: the non-zero series by their labels (all of them; zero series may
     * be there too), or a check of its own for the process panels, whose values are the process's.
     */
    const expected: Record<string, Record<string, Map<string, number> | ((samples: Sample[]) => void)>> = {
      'Active workers': { A: m([{}, 1]) },
      'Spawns in flight': { A: new Map() },
      // Nobody waits for a slot in this run: the gauges and the wait histogram are all zero.
      'Spawns waiting for a slot': { A: new Map(), B: new Map() },
      // No profile of this run keeps a warm pool: no series at all.
      'Warm pools': { A: new Map(), B: new Map() },
      'Decisions / s': { A: m([{}, rate(9)]) },
      'Deny ratio': { A: m([{}, 4 / 9]) },
      'Spawn-to-ready p95': { A: quantileOf(0.95, 'spawngate_spawn_ready_seconds', []) },
      'Policy state': { A: m([{ state: 'ok' }, 1]) },
      'Decisions / s by result and reason': {
        A: m([{ result: 'allow' }, rate(5)], [{ result: 'deny', reason: 'agent_not_allowed' }, rate(2)], [{ result: 'deny', reason: 'unknown_backend' }, rate(1)], [{ result: 'deny', reason: rateCode }, rate(1)]),
      },
      'Denies / s by deciding stage': {
        A: m([{ stage: 'policy', reason: 'agent_not_allowed' }, rate(2)], [{ stage: 'policy', reason: 'unknown_backend' }, rate(1)], [{ stage: 'reservation', reason: rateCode }, rate(1)]),
      },
      'Dry-run admits / s by result and reason': { A: m([{ result: 'allow' }, rate(1)], [{ result: 'deny', reason: 'agent_not_allowed' }, rate(1)]) },
      'Policy evaluation latency': {
        A: quantileOf(0.5, 'spawngate_policy_evaluation_seconds', []),
        B: quantileOf(0.99, 'spawngate_policy_evaluation_seconds', []),
        C: (samples) => {
          const sum = exposition.find((e) => e.name === 'spawngate_policy_evaluation_seconds_sum')!.value;
          const n = exposition.find((e) => e.name === 'spawngate_policy_evaluation_seconds_count')!.value;
          expect(n).toBe(11);
          expect(Number(samples[0]?.value[1])).toBeCloseTo(sum / n, 9);
        },
      },
      'Reservations rejected / s by code': { A: m([{ code: rateCode }, rate(1)]) },
      'Rate limited / s by scope': { A: m([{ scope: rateCode.slice('rate_limit_'.length) }, rate(1)]) },
      // The start-up load happened before the first scrape: no load inside the window.
      'Bundle loads by result': { A: new Map() },
      // Every policy evaluation (9 spawns, 2 dry runs) is shadowed once, after the live decision.
      'Shadow bundle: would-be decisions / s by difference': { A: m([{ difference: 'same' }, rate(11)]) },
      'Bundle revision in force': {
        A: (samples) => {
          expect(samples).toHaveLength(1);
          expect(samples[0]!.metric['revision']).toMatch(/^[0-9a-f]{64}$/);
          expect(samples[0]!.value[1]).toBe('1');
        },
      },
      'Spawns / s by outcome': {
        A: m([{ backend: 'local', outcome: 'ready' }, rate(4)], [{ backend: 'local', outcome: 'denied' }, rate(3)], [{ backend: 'local', outcome: 'failed' }, rate(1)], [{ outcome: 'denied' }, rate(1)]),
      },
      'Active workers by backend / profile': { A: m([{ backend: 'local', profile: 'default' }, 1]) },
      'Spawn-to-ready latency by backend': {
        A: quantileOf(0.5, 'spawngate_spawn_ready_seconds', ['backend'], readyLocal),
        B: quantileOf(0.95, 'spawngate_spawn_ready_seconds', ['backend'], readyLocal),
      },
      'Spawns in flight by backend / profile': { A: new Map() },
      'Worker failures by reason': {
        A: (samples) => {
          const nonZero = samples.filter((s) => Number(s.value[1]) !== 0);
          expect(nonZero).toHaveLength(1);
          expect(nonZero[0]!.metric['backend']).toBe('local');
          expect(Number(nonZero[0]!.value[1])).toBe(1);
        },
      },
      'Sweeper deletions by reason': { A: new Map() },
      'Turns / s by outcome': { A: m([{ backend: 'local', outcome: 'completed' }, rate(6)]) },
      'Turn duration by outcome': {
        A: quantileOf(0.5, 'spawngate_turn_duration_seconds', ['outcome']),
        B: quantileOf(0.95, 'spawngate_turn_duration_seconds', ['outcome']),
      },
      'Agent permission requests / s by outcome and code': { A: new Map() },
      // Prometheus's own scrapes of /metrics (and nobody's /healthz) are left out: the test did not make them.
      'API requests / s by route and status': { A: tallyBy(['route', 'code'], () => true) },
      'API latency p95 by route': { A: quantileOf(0.95, 'spawngate_http_request_duration_seconds', ['route'], (l) => l['route'] !== '/metrics') },
      CPU: { A: (s) => expect(Number(s[0]?.value[1])).toBeGreaterThan(0) },
      Memory: {
        A: (s) => expect(Number(s[0]?.value[1])).toBeGreaterThan(20 * 2 ** 20),
        B: (s) => expect(Number(s[0]?.value[1])).toBeGreaterThan(2 ** 20),
      },
      'Event loop lag p99': { A: (s) => expect(Number(s[0]?.value[1])).toBeGreaterThanOrEqual(0) },
      'Open file descriptors': { A: (s) => expect(Number(s[0]?.value[1])).toBeGreaterThan(3) },
      Versions: {
        A: (samples) => {
          expect(samples.map((s) => s.metric['version'])).toEqual([JSON.parse(execFileSync(process.execPath, ['-p', 'JSON.stringify(require("./package.json").version)'], { cwd: root, encoding: 'utf8' })) as string]);
        },
      },
    };

    const panels = dashboard.panels.filter((p) => p.type !== 'row');
    expect(panels.map((p) => p.title).sort()).toEqual(Object.keys(expected).sort());
    const render = (expr: string, vars: Record<string, string>) =>
      expr.replace(/\$__rate_interval|\$__range|\$(job|instance|backend|profile)\b/g, (v, name: string | undefined) => (name ? vars[name]! : `${window}s`));
    const all = { job: 'spawngate', instance: '.*', backend: '.*', profile: '.*' };
    const problems: string[] = [];
    for (const panel of panels) {
      for (const target of panel.targets ?? []) {
        const want = expected[panel.title]?.[target.refId];
        const where = `${panel.title} ${target.refId}`;
        if (!want) {
          problems.push(`${where}: no expectation`);
          continue;
        }
        const samples = await promQuery(render(target.expr, all), at);
        if (typeof want === 'function') {
          want(samples);
          continue;
        }
        const got = new Map<string, number>();
        for (const s of samples) {
          const value = Number(s.value[1]);
          if (value === 0 || Number.isNaN(value)) continue;
          const labels = { ...s.metric };
          // /metrics is Prometheus's own traffic, not the test's.
          if (panel.title.startsWith('API ') && labels['route'] === '/metrics') continue;
          got.set(keyOf(labels), value);
        }
        const wantKeys = [...want.keys()].filter((k) => want.get(k) !== 0).sort();
        if (JSON.stringify([...got.keys()].sort()) !== JSON.stringify(wantKeys)) {
          problems.push(`${where}: series ${JSON.stringify([...got.keys()].sort())}, expected ${JSON.stringify(wantKeys)}`);
          continue;
        }
        for (const [key, value] of want) {
          const actual = got.get(key) ?? 0;
          if (Math.abs(actual - value) > 1e-9 * Math.max(1, Math.abs(value))) problems.push(`${where} ${key}: ${actual}, expected ${value}`);
        }
      }
    }
    expect(problems).toEqual([]);

    // The filters apply: one profile's decisions only, and an instance nobody has returns nothing.
    const decisions = panels.find((p) => p.title === 'Decisions / s by result and reason')!.targets![0]!.expr;
    const restricted = await promQuery(render(decisions, { ...all, backend: 'local', profile: 'restricted' }), at);
    expect(restricted.filter((s) => Number(s.value[1]) > 0).map((s) => [s.metric['reason'], Number(s.value[1])])).toEqual([['agent_not_allowed', rate(2)]]);
    expect(await promQuery(render(decisions, { ...all, instance: 'nobody:1' }), at)).toEqual([]);
    // The variables' own queries find this job and instance.
    const values = async (label: string, match: string) => {
      const url = new URL(`/api/v1/label/${label}/values`, promUrl);
      url.searchParams.set('match[]', match);
      return ((await (await fetch(url)).json()) as { data: string[] }).data;
    };
    expect(await values('job', 'spawngate_build_info')).toEqual(['spawngate']);
    expect(await values('instance', 'spawngate_build_info{job=~"spawngate"}')).toEqual([serveAddress]);
    expect(await values('backend', 'spawngate_spawns_total{job=~"spawngate", instance=~".*"}')).toEqual(['local']);
    expect((await values('profile', 'spawngate_spawns_total{job=~"spawngate", instance=~".*", backend=~"local"}')).sort()).toEqual(['broken', 'default', 'restricted']);
    // The shipped rules loaded into this Prometheus.
    const rules = (await (await fetch(new URL('/api/v1/rules', promUrl))).json()) as { data: { groups: { name: string; rules: unknown[] }[] } };
    expect(rules.data.groups.map((g) => [g.name, g.rules.length]).sort()).toEqual([
      ['spawngate.alerts', 11],
      ['spawngate.recording', 7],
    ]);
  }, 240_000);
});
