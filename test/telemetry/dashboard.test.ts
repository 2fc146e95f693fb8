/**
 * dashboards/spawngate.json against the metrics registry: every PromQL expression names only
 * metrics the registry exposes, and every registered metric is on some panel. A renamed metric
 * (or a typo in a panel) fails here instead of showing "No data" in Grafana.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createMetrics, initMetrics } from '../../src/telemetry/metrics.js';

interface Target {
  expr?: string;
  refId?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  query: string | { query: string };
}
interface Dashboard {
  schemaVersion: number;
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Variable[] };
}

const dashboard = JSON.parse(readFileSync(new URL('../../dashboards/spawngate.json', import.meta.url), 'utf8')) as Dashboard;

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'offset', 'and', 'or', 'unless', 'inf', 'nan']);

/**
 * Metric names in a PromQL expression: identifiers that are not functions, keywords, label names
 * (inside `{…}` matchers or `by (…)` lists), strings, durations or Grafana variables.
 */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\$\{[^}]*\}|\$\w+/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\b\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?\b/gi, ' ');
  const names: string[] = [];
  for (const match of stripped.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const rest = stripped.slice(match.index + match[0].length).trimStart();
    if (rest.startsWith('(') || PROMQL_WORDS.has(match[0])) continue;
    names.push(match[0]);
  }
  return names;
}

/** `label_values(metric{…}, label)` names a metric and a label; only the metric is PromQL. */
function variableExpressions(v: Variable): string[] {
  if (v.type !== 'query') return [];
  const query = typeof v.query === 'string' ? v.query : v.query.query;
  const labelValues = /^label_values\(\s*(.+?)\s*,\s*[A-Za-z_]\w*\s*\)$/.exec(query.trim());
  return [labelValues ? labelValues[1]! : query];
}

function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

const panels = allPanels(dashboard.panels);
const expressions = [
  ...panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}" ${t.refId ?? ''}`, expr: t.expr ?? '' }))),
  ...dashboard.templating.list.flatMap((v) => variableExpressions(v).map((expr) => ({ where: `variable $${v.name}`, expr }))),
];

const metricsJson = await createMetrics(undefined, { processMetrics: true }).registry.getMetricsAsJSON();
const registered = new Map(metricsJson.map((m) => [m.name, String(m.type)]));
/** spawngate's own metrics (process_* and nodejs_* are prom-client's: the dashboard shows a few). */
const own = metricsJson.filter((m) => m.name.startsWith('spawngate_'));
/** Label names of each of spawngate's metrics, as the registry declares them (read from a pre-initialised registry). */
const labelsOf = new Map<string, Set<string>>();
{
  const metrics = createMetrics();
  initMetrics(metrics, { backends: [{ name: 'b', profiles: ['p'] }] });
  metrics.httpRequests.inc({ method: 'GET', route: '/healthz', code: '200' }, 0);
  metrics.httpRequestSeconds.zero({ method: 'GET', route: '/healthz' });
  metrics.evaluationSeconds.zero({});
  for (const m of await metrics.registry.getMetricsAsJSON()) labelsOf.set(m.name, new Set(m.values.flatMap((v) => Object.keys(v.labels)).filter((l) => l !== 'le')));
}

/** The registered metric a series name belongs to: itself, or a histogram's _bucket/_sum/_count. */
function registeredMetricOf(series: string): string | null {
  if (registered.has(series)) return series;
  const m = /^(.*)_(bucket|sum|count)$/.exec(series);
  if (m && registered.get(m[1]!) === 'histogram') return m[1]!;
  return null;
}

describe('metricNames (the extractor the dashboard check relies on)', () => {
  it('finds metric selectors and skips functions, label names, strings, durations and variables', () => {
    expect(metricNames('sum by (result, reason) (rate(spawngate_decisions_total{result="deny", reason=~"$reason"}[$__rate_interval]))')).toEqual(['spawngate_decisions_total']);
    expect(metricNames('histogram_quantile(0.99, sum by (le) (rate(foo_bucket[5m]))) / on(instance) group_left bar offset 1h')).toEqual(['foo_bucket', 'bar']);
    expect(metricNames('a / clamp_min(b, 1e-9) > bool 0.5 unless c')).toEqual(['a', 'b', 'c']);
    expect(registeredMetricOf('spawngate_decision_total')).toBeNull();
    expect(registeredMetricOf('spawngate_active_workers_bucket')).toBeNull();
    expect(registeredMetricOf('spawngate_spawn_ready_seconds_bucket')).toBe('spawngate_spawn_ready_seconds');
  });
});

describe('dashboards/spawngate.json', () => {
  it('is a Grafana dashboard over a Prometheus datasource variable', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(39);
    expect(dashboard.uid).toBe('spawngate-overview');
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const panel of panels.filter((p) => p.type !== 'row')) {
      expect(panel.datasource, panel.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const t of panel.targets ?? []) expect(t.datasource, panel.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(panel.gridPos.x + panel.gridPos.w, panel.title).toBeLessThanOrEqual(24);
    }
  });

  it('every expression names only metrics the registry exposes', () => {
    expect(expressions.length).toBeGreaterThan(10);
    const unknown = expressions.flatMap(({ where, expr }) => {
      const names = metricNames(expr);
      if (names.length === 0) return [`${where}: no metric in ${expr}`];
      return names.filter((n) => registeredMetricOf(n) === null).map((n) => `${where}: ${n}`);
    });
    expect(unknown).toEqual([]);
  });

  it('every spawngate metric appears on some panel', () => {
    const shown = new Set(expressions.flatMap(({ where, expr }) => (where.startsWith('panel') ? metricNames(expr) : [])).map((n) => registeredMetricOf(n)));
    expect(own.map((m) => m.name).filter((name) => !shown.has(name))).toEqual([]);
  });

  it('has job and instance variables, and every selector applies every filter its metric has labels for', () => {
    const names = dashboard.templating.list.map((v) => v.name);
    expect(names).toEqual(['datasource', 'job', 'instance', 'backend', 'profile']);
    const missing: string[] = [];
    for (const { where, expr } of expressions.filter((e) => e.where.startsWith('panel'))) {
      // Every selector of the expression: metric name and its matchers.
      for (const m of expr.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}/g)) {
        const metric = registeredMetricOf(m[1]!);
        const matchers = m[2]!;
        const want = ['job', 'instance', ...[...(labelsOf.get(metric ?? '') ?? [])].filter((l) => l === 'backend' || l === 'profile')];
        for (const label of want) if (!matchers.includes(`${label}=~"$${label}"`)) missing.push(`${where}: ${m[1]} lacks ${label}=~"$${label}"`);
      }
      if (!/\{[^}]*job=~"\$job"/.test(expr)) missing.push(`${where}: no selector with the job filter`);
    }
    expect(missing).toEqual([]);
  });
});
