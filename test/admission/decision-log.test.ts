/**
 * The decision log as a gate writes it: OPA's decision-log event format, one line per decision id
 * with the final outcome, trace and span ids of the span that settled it, the bundle's mask rule
 * (OPA's system.log.mask) applied before redaction, and a bundle without one only redacted.
 */
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionLogEntry } from '../../src/admission/decision-log.js';
import { createDecisionRecorder, memoryDecisionLog, rfc3339Nano, spawngateVersion } from '../../src/admission/decision-log.js';
import { readBundle } from '../../src/admission/bundle.js';
import { createAdmission, SHIPPED_BUNDLE, type Admission } from '../../src/admission/gate.js';
import type { PermissionInput } from '../../src/admission/permissions.js';
import { buildBundle, findOpa } from '../../src/cli/policy-tool.js';
import { createTestTracing, type TestTracing } from '../../src/testing.js';
import { SPAN } from '../../src/telemetry/tracing.js';
import { memoryLogger } from '../helpers/logger.js';

const POLICIES = fileURLToPath(new URL('../../policies/', import.meta.url));

const config = {
  agents: {
    executionBackends: { local: { type: 'process', defaultProfile: 'p', profiles: { p: { maxConcurrent: { profile: 1 } } } } },
    execution: { default: { backend: 'local', profile: 'p' } },
  },
};

const caller = (kind = 'telegram') => ({ sessionKey: 'agent:main:t:1', depth: 0, channel: { id: `${kind}:1`, kind }, user: { id: 'alice', roles: [] } });
const request = (task = 'fix the failing test', kind?: string) => ({ agentId: 'echo', task, caller: caller(kind) });

const permission: PermissionInput = {
  spawnId: 's-1',
  agent: 'echo',
  profile: 'p',
  backend: 'local',
  caller: null,
  tool: { toolCallId: 't-1', kind: 'edit', title: 'Write a.txt', rawInput: { file_path: '/ws/a.txt', content: 'the whole file, and api_key=abcd1234efgh' } },
  paths: [{ path: '/ws/a.txt', inWorkspace: true }],
  workspace: { root: '/ws' },
  options: ['allow_once', 'reject_once'],
};

const gates: Admission[] = [];
async function gate(extra: Parameters<typeof createAdmission>[0] = {}): Promise<{ g: Admission; lines: DecisionLogEntry[] }> {
  const log = memoryDecisionLog();
  const g = await createAdmission({ config, bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: log, logger: memoryLogger(), ...extra });
  gates.push(g);
  return { g, lines: log.entries };
}
afterEach(async () => {
  for (const g of gates.splice(0)) await g.close();
});

describe('decision log lines', () => {
  it('are OPA decision-log events, with spawngate\'s stage, spawn and catalog as extra keys', async () => {
    const { g, lines } = await gate({ instanceId: 'gw-1', clock: () => new Date('2026-03-04T05:06:07.120Z') });
    const res = await g.admit(request());
    expect(lines).toHaveLength(1);
    const line = lines[0]!;
    const revision = (await readBundle(SHIPPED_BUNDLE)).revision;
    expect(Object.keys(line)).toEqual(['labels', 'decision_id', 'bundles', 'path', 'input', 'result', 'timestamp', 'metrics', 'stage', 'catalog_revision']);
    expect(line).toMatchObject({
      labels: { id: 'gw-1', version: spawngateVersion() },
      decision_id: res.decisionId,
      bundles: { spawngate: { revision } },
      path: 'spawngate/admission/decision',
      result: res.decision,
      timestamp: '2026-03-04T05:06:07.12Z',
      stage: 'policy',
    });
    expect(spawngateVersion()).toMatch(/^\d+\.\d+\.\d+/);
    expect(line.input).toEqual(JSON.parse(JSON.stringify({ ...res.input, catalog: undefined })));
    expect(Number.isInteger(line.metrics.timer_rego_query_eval_ns)).toBe(true);
    expect(line.metrics.timer_rego_query_eval_ns).toBeGreaterThan(0);
    expect(line.catalog_revision).toMatch(/^[0-9a-f]{64}$/);
  });

  it('print timestamps as Go\'s RFC3339Nano does: no trailing zeros, no fraction on a whole second', () => {
    expect(rfc3339Nano(new Date('2026-01-02T03:04:05.000Z'))).toBe('2026-01-02T03:04:05Z');
    expect(rfc3339Nano(new Date('2026-01-02T03:04:05.100Z'))).toBe('2026-01-02T03:04:05.1Z');
    expect(rfc3339Nano(new Date('2026-01-02T03:04:00.007Z'))).toBe('2026-01-02T03:04:00.007Z');
    expect(rfc3339Nano(new Date('2026-01-02T03:00:00.000Z'))).toBe('2026-01-02T03:00:00Z');
  });

  it('say the final outcome once: a policy allow the store refuses is one reservation deny line, in reserve and in a dry run', async () => {
    // Cron callers get a user bucket of burst 1: the second spawn is refused by the store, not the policy.
    const { g, lines } = await gate();
    const first = await g.reserve(request('t', 'cron'), { spawnId: 'spawn-1' });
    // Its slot back, its rate token spent.
    if (first.allowed) await first.reservation.release();
    const second = await g.reserve(request('t', 'cron'), { spawnId: 'spawn-2' });
    const dry = await g.admit(request('t', 'cron'));
    expect(first.allowed).toBe(true);
    expect(second).toMatchObject({ allowed: false, stage: 'reservation', decision: { reasons: [{ code: 'rate_limit_user' }] } });
    expect(dry).toMatchObject({ stage: 'reservation', decision: { allow: false } });
    expect(lines.map((l) => [l.decision_id, l.stage, (l.result as { allow: boolean }).allow, l.spawn_id])).toEqual([
      [first.decisionId, 'policy', true, 'spawn-1'],
      [second.decisionId, 'reservation', false, 'spawn-2'],
      [dry.decisionId, 'reservation', false, undefined],
    ]);
    expect(lines[1]!.result).toEqual(second.decision);
  });

  it('carry no line for a request that never got a decision (malformed)', async () => {
    const { g, lines } = await gate();
    await expect(g.admit({ agentId: 7 } as never)).rejects.toThrow();
    expect(lines).toEqual([]);
  });
});

describe('decision log lines join their trace', () => {
  let tracing: TestTracing;
  beforeAll(() => {
    tracing = createTestTracing();
  });
  afterAll(() => tracing.shutdown());

  it('by the span that settled the outcome: admission for a policy deny or a dry run, the reservation for a reserve', async () => {
    const { g, lines } = await gate();
    tracing.reset();
    const allowed = await g.reserve(request());
    const denied = await g.reserve(request()); // profile cap 1: the policy denies on usage
    const dry = await g.admit(request('t2'));
    const admissions = tracing.spans(SPAN.admission);
    const reservations = tracing.spans(SPAN.reservation);
    expect(admissions).toHaveLength(3);
    expect(reservations).toHaveLength(1);
    for (const [i, result] of [allowed, denied, dry].entries()) expect(admissions[i]!.attributes['spawngate.decision_id']).toBe(result.decisionId);
    expect(reservations[0]!.attributes['spawngate.decision_id']).toBe(allowed.decisionId);
    const ids = (span: { spanContext(): { traceId: string; spanId: string } }) => ({ trace_id: span.spanContext().traceId, span_id: span.spanContext().spanId });
    expect(lines.map((l) => ({ trace_id: l.trace_id, span_id: l.span_id }))).toEqual([ids(reservations[0]!), ids(admissions[1]!), ids(admissions[2]!)]);
    expect(denied).toMatchObject({ allowed: false, stage: 'policy' });
    if (allowed.allowed) await allowed.reservation.release();
  });

  it('a permission line by the span active when the request was decided', async () => {
    const { g, lines } = await gate();
    const span = tracing.tracer.startSpan('turn');
    const { context, trace } = await import('@opentelemetry/api');
    context.with(trace.setSpan(context.active(), span), () => g.decidePermission(permission));
    span.end();
    expect(lines[0]).toMatchObject({ trace_id: span.spanContext().traceId, span_id: span.spanContext().spanId, stage: 'permission', spawn_id: 's-1' });
  });
});

describe('masking by the bundle\'s system.log.mask rule, then redaction', () => {
  it('cuts a long task (masked), leaves the caller\'s result untouched, and redacts what is left', async () => {
    const { g, lines } = await gate();
    const task = `deploy with password: hunter2hunter2 ${'x'.repeat(2100)}`;
    const res = await g.admit(request(task));
    const line = lines[0]!;
    expect(line.masked).toEqual(['/input/request/task']);
    expect(line.erased).toBeUndefined();
    const logged = (line.input as { request: { task: string } }).request.task;
    expect(logged).toBe(`deploy with password: [REDACTED] ${'x'.repeat(2000 - 'deploy with password: hunter2hunter2 '.length)}…[137 more characters]`);
    // The rule's change is the line's alone: what admit() returned still holds the whole task.
    expect(res.input.request.task).toBe(task);
  });

  it('erases a permission request\'s rawInput (erased) and keeps the paths and kind that decided', async () => {
    const { g, lines } = await gate();
    g.decidePermission(permission);
    const line = lines[0]!;
    expect(line).toMatchObject({ path: 'spawngate/permissions/decision', stage: 'permission', erased: ['/input/tool/rawInput'], result: { outcome: 'allow_once' } });
    expect(line.input).toMatchObject({ tool: { kind: 'edit', title: 'Write a.txt' }, paths: permission.paths });
    expect(JSON.stringify(line)).not.toContain('the whole file');
    expect(permission.tool.rawInput).toMatchObject({ content: expect.stringContaining('the whole file') as unknown });
  });

  it('follows spawngate.policyData.decisionLog: whole tasks and tool inputs, still redacted', async () => {
    const { g, lines } = await gate({ config: { ...config, spawngate: { policyData: { decisionLog: { taskMaxChars: null, eraseToolInput: false } } } } });
    await g.admit(request(`use sk-${'a'.repeat(30)} ${'y'.repeat(3000)}`));
    g.decidePermission(permission);
    expect(lines.map((l) => [l.erased, l.masked])).toEqual([[undefined, undefined], [undefined, undefined]]);
    expect((lines[0]!.input as { request: { task: string } }).request.task).toBe(`use [REDACTED] ${'y'.repeat(3000)}`);
    expect((lines[1]!.input as { tool: { rawInput: unknown } }).tool.rawInput).toEqual({ file_path: '/ws/a.txt', content: 'the whole file, and api_key=[REDACTED]' });
  });

  describe('a bundle built without a mask rule', () => {
    let dir = '';
    let bundle = '';
    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'sg-nomask-'));
      cpSync(POLICIES, join(dir, 'policies'), { recursive: true, filter: (src) => !/log(_test)?\.rego$/.test(src) });
      bundle = join(dir, 'bundle.tar.gz');
      await buildBundle({ policiesDir: join(dir, 'policies'), outFile: bundle, opa: await findOpa() });
    }, 600_000);
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('has no mask entrypoint, and its lines are only redacted', async () => {
      expect((await readBundle(bundle)).manifest.wasm?.map((w) => w.entrypoint)).toEqual(['spawngate/admission/decision', 'spawngate/permissions/decision']);
      const { g, lines } = await gate({ bundle });
      const task = `token ghp_${'b'.repeat(36)} ${'z'.repeat(2500)}`;
      await g.admit(request(task));
      g.decidePermission(permission);
      expect(lines.map((l) => [l.erased, l.masked])).toEqual([[undefined, undefined], [undefined, undefined]]);
      expect((lines[0]!.input as { request: { task: string } }).request.task).toBe(`token [REDACTED] ${'z'.repeat(2500)}`);
      expect((lines[1]!.input as { tool: { rawInput: { content: string } } }).tool.rawInput.content).toBe('the whole file, and api_key=[REDACTED]');
    });
  });
});

describe('createDecisionRecorder with a given mask output (OPA\'s mask semantics)', () => {
  const record = {
    decisionId: 'd-1',
    path: 'spawngate/admission/decision',
    stage: 'policy' as const,
    bundleRevision: 'r1',
    input: { request: { task: 'secret plan', tags: ['a', 'b', 'c'] }, caller: { user: { id: 'alice' } } },
    result: { allow: true, reasons: [{ code: 'x', message: 'm' }] },
    evalMicros: 1.5,
  };
  function recordWith(output: unknown, ok = true) {
    const log = memoryDecisionLog();
    const logger = memoryLogger();
    const seen: unknown[] = [];
    const recorder = createDecisionRecorder({
      sink: log,
      mask: (json) => {
        seen.push(JSON.parse(json));
        return ok ? { ok: true, output } : { ok: false, error: String(output) };
      },
      labels: { id: 'gw', version: '1.0.0' },
      catalogRevision: 'c',
      clock: () => new Date('2026-01-01T00:00:00Z'),
      logger,
    });
    const input = structuredClone(record.input);
    recorder({ ...record, input });
    return { line: log.entries[0]!, seen, logger, input };
  }

  it('gives the rule the whole event as OPA would, before redaction', () => {
    const { seen } = recordWith([]);
    expect(seen).toEqual([
      {
        labels: { id: 'gw', version: '1.0.0' },
        decision_id: 'd-1',
        bundles: { spawngate: { revision: 'r1' } },
        path: 'spawngate/admission/decision',
        input: record.input,
        result: record.result,
        timestamp: '2026-01-01T00:00:00Z',
        stage: 'policy',
        catalog_revision: 'c',
      },
    ]);
  });

  it('erases pointers (array elements too), upserts values, creates missing objects, and records only what it did', () => {
    const { line, input } = recordWith([
      '/input/request/task',
      '/input/request/tags/1',
      '/input/nothing/here',
      { op: 'upsert', path: '/input/caller/user/id', value: 'hidden' },
      { op: 'upsert', path: '/result/extra/note', value: 1 },
      { op: 'remove', path: '/result/reasons' },
    ]);
    expect(line.input).toEqual({ request: { tags: ['a', 'c'] }, caller: { user: { id: 'hidden' } } });
    expect(line.result).toEqual({ allow: true, extra: { note: 1 } });
    expect(line.erased).toEqual(['/input/request/task', '/input/request/tags/1', '/result/reasons']);
    expect(line.masked).toEqual(['/input/caller/user/id', '/result/extra/note']);
    expect(input).toEqual(record.input); // the caller's object is never changed
  });

  it('erases /input whole, and /result whole, when the rule says so', () => {
    expect(recordWith(['/input'])).toMatchObject({ line: { erased: ['/input'], result: record.result } });
    expect(recordWith(['/input']).line).not.toHaveProperty('input');
    expect(recordWith([{ op: 'upsert', path: '/result', value: 'masked' }]).line).toMatchObject({ result: 'masked', masked: ['/result'] });
  });

  it('keeps the line but erases its input when the rule fails or says something it cannot mean', () => {
    for (const [output, ok, problem] of [
      ['wasm trap', false, 'wasm trap'],
      [['/caller/user'], true, 'must start with /input or /result'],
      [[{ op: 'replace', path: '/input/x' }], true, 'is not "remove" or "upsert"'],
      ['not-a-set', true, 'did not return a set'],
    ] as const) {
      const { line, logger } = recordWith(output, ok);
      expect(line.input, JSON.stringify(output)).toBeUndefined();
      expect(line.erased).toEqual(['/input']);
      expect(line.result).toEqual(record.result);
      expect(logger.lines.find((l) => l.msg.startsWith('decision log mask rule failed'))?.fields?.['problem']).toContain(problem);
    }
  });
});
