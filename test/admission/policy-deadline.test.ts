/**
 * Policy evaluation has a deadline: a bundle that spins on some inputs (the shipped policies plus
 * rules that loop ~10^9 times when the input asks for it) is denied with policy_timeout, counted,
 * and the evaluator recovers for the next input; `spawngate serve` answers /healthz while such an
 * evaluation runs. Orderings only (what finished before what), never wall-clock bounds.
 */
import { readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import { checkDecision } from '../../src/admission/decision.js';
import { createPolicyEngine, ENTRYPOINT, type PolicyEngine } from '../../src/admission/engine.js';
import { createAdmission, SHIPPED_BUNDLE, type Admission } from '../../src/admission/gate.js';
import { readBundle } from '../../src/admission/bundle.js';
import type { PermissionInput } from '../../src/admission/permissions.js';
import type { SpawnRequestInput } from '../../src/admission/request.js';
import { buildBundle } from '../../src/cli/policy-tool.js';
import { defaultConfig } from '../../src/config/index.js';
import { startBin, type RunningBin } from '../cli/helpers.js';
import { memoryLogger } from '../helpers/logger.js';
import { call } from '../server/helpers.js';

const policiesDir = fileURLToPath(new URL('../../policies', import.meta.url));

// ~1.6 * 10^9 comparisons over two 40,000-element ranges: minutes of CPU, little memory.
const SLOW_REGO = `package spawngate.slow

import rego.v1

spin if {
	xs := numbers.range(1, 40000)
	count([1 | some i in xs; some j in xs; i == j + 1000000]) >= 0
}
`;

/** The shipped policies, made to spin when an input asks for it: task "spin", tool title "spin", a logged task "spin". */
const SPIN_RULES: Record<string, string> = {
  'slow.rego': SLOW_REGO,
  'admission_slow.rego': `package spawngate.admission

import rego.v1

deny contains [1, "spin_finished", "the spin ended"] if {
	input.request.task == "spin"
	data.spawngate.slow.spin
}
`,
  'permissions_slow.rego': `package spawngate.permissions

import rego.v1

problems contains "the spin ended" if {
	input.tool.title == "spin"
	data.spawngate.slow.spin
}
`,
  'log_slow.rego': `package system.log

import rego.v1

mask contains "/input/spin" if {
	input.input.spin == true
	data.spawngate.slow.spin
}
`,
};

const raw = (r: unknown) => r as SpawnRequestInput;

function request(task: string): SpawnRequestInput {
  return raw({
    agentId: 'echo',
    task,
    caller: { sessionKey: 'agent:main:cli:deadline', depth: 0, channel: { id: 'cli:1', kind: 'cli', interactive: true }, user: { id: 'alice', roles: [] } },
  });
}

function permission(title: string): PermissionInput {
  return {
    spawnId: 'sp-1',
    agent: 'echo',
    profile: 'default',
    backend: 'local',
    caller: null,
    tool: { toolCallId: 't1', kind: 'read', title, rawInput: {} },
    paths: [{ path: '/work/a.txt', inWorkspace: true }],
    workspace: { root: '/work' },
    options: ['allow_once', 'reject_once'],
  };
}

/** CPU time (user + system, in clock ticks) a process has used: how the test knows the policy is spinning. */
function cpuTicks(pid: number): number {
  // The command name (field 2) is in parentheses and may hold spaces: count fields after its ")".
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

async function counterValue(gate: Admission, name: 'decisions' | 'permissionDecisions', labels: Record<string, string>): Promise<number> {
  const { values } = await gate.metrics[name].get();
  return values.filter((v) => Object.entries(labels).every(([k, want]) => (v.labels as Record<string, unknown>)[k] === want)).reduce((sum, v) => sum + v.value, 0);
}

describe('policy evaluation deadline', () => {
  let dir: string;
  let slowBundle: string;
  const gates: Admission[] = [];
  const engines: PolicyEngine[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sg-deadline-'));
    const src = join(dir, 'policies');
    await mkdir(src);
    await cp(policiesDir, src, { recursive: true, filter: (from) => !from.endsWith('_test.rego') });
    for (const [file, text] of Object.entries(SPIN_RULES)) await writeFile(join(src, file), text);
    slowBundle = join(dir, 'slow.tar.gz');
    await buildBundle({ policiesDir: src, outFile: slowBundle });
  });
  afterAll(async () => {
    for (const g of gates) await g.close();
    for (const e of engines) e.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function gate(timeoutMs: number): Promise<Admission> {
    const g = await createAdmission({ bundle: slowBundle, watchBundle: false, decisionLog: false, policyEvaluationTimeoutMs: timeoutMs, logger: memoryLogger() });
    gates.push(g);
    return g;
  }

  it('denies an admission that overruns the deadline with policy_timeout, counts it, and decides the next one', async () => {
    const g = await gate(200);
    expect((await g.admit(request('say hi'))).decision.allow).toBe(true);

    const slow = await g.admit(request('spin'));
    expect(slow.decision.allow).toBe(false);
    expect(slow.stage).toBe('policy');
    expect(slow.decision.reasons).toEqual([{ code: 'policy_timeout', message: expect.stringMatching(/did not finish within its 200 ms deadline/) as string }]);
    expect(await counterValue(g, 'decisions', { result: 'deny', reason: 'policy_timeout', mode: 'dry_run' })).toBe(1);
    expect(g.policy.health.state).toBe('erroring');
    expect(g.policy.health.problems[0]).toMatch(/^policy_timeout: /);
    expect((g.logger as ReturnType<typeof memoryLogger>).lines).toContainEqual(expect.objectContaining({ level: 'warn', msg: expect.stringMatching(/overran its deadline/) as string }));

    // A fresh evaluator thread took over: the next input is decided, and health clears.
    expect((await g.admit(request('say hi'))).decision.allow).toBe(true);
    expect(g.policy.health).toEqual({ state: 'ok', problems: [] });

    // reserve counts it too, as a spawn denied at the policy stage.
    const reserved = await g.reserve(request('spin'));
    expect(reserved.allowed).toBe(false);
    expect(reserved.decision.reasons[0]?.code).toBe('policy_timeout');
    expect(await counterValue(g, 'decisions', { result: 'deny', reason: 'policy_timeout', mode: 'spawn' })).toBe(1);
  });

  it('bounds the evaluations queued behind a slow one: each settles, allowed or policy_timeout', async () => {
    const g = await gate(200);
    const results = await Promise.all([g.admit(request('spin')), g.admit(request('say hi')), g.admit(request('say hi again'))]);
    expect(results[0]?.decision.reasons[0]?.code).toBe('policy_timeout');
    for (const r of results.slice(1)) {
      // Behind the spin, each waited out its own deadline (or, on a machine fast enough, was decided by the fresh thread).
      if (!r.decision.allow) expect(r.decision.reasons[0]).toMatchObject({ code: 'policy_timeout', message: expect.stringMatching(/did not start within its 200 ms deadline/) as string });
    }
    expect((await g.admit(request('after the queue'))).decision.allow).toBe(true);
  });

  it('has the sync API, permission requests and the decision-log mask under the same deadline', async () => {
    const g = await gate(200);
    const before = g.decidePermission(permission('cat a file'));
    expect(before.code).not.toBe('policy_timeout');

    const slow = g.decidePermission(permission('spin'));
    expect(slow).toMatchObject({ outcome: 'reject', code: 'policy_timeout' });
    expect(await counterValue(g, 'permissionDecisions', { code: 'policy_timeout', outcome: 'reject' })).toBe(1);
    expect(g.decidePermission(permission('cat a file'))).toEqual(before);

    // A fresh gate each time a spin is to be followed by a decision: its spare thread is up (one is
    // started again after every timeout, and is not waited for).
    const masking = await gate(200);
    const mask = masking.policy.evaluateMask(JSON.stringify({ input: { spin: true }, result: {} }));
    expect(mask).toMatchObject({ ok: false, error: expect.stringMatching(/timed out/) as string });
    expect(masking.policy.evaluateMask(JSON.stringify({ input: { spin: false }, result: {} })).ok).toBe(true);

    const engine = await createPolicyEngine({ source: { path: slowBundle }, readBundle, evaluationTimeoutMs: 200 });
    engines.push(engine);
    const admitted = await g.admit(request('say hi'));
    const input = admitted.input;
    expect(engine.evaluate({ ...input, request: { ...input.request, task: 'spin' } }).decision.reasons[0]?.code).toBe('policy_timeout');
    expect(engine.evaluate(input).decision.allow).toBe(true);
  });

  it('passes an input too large for the shared buffer as a message, and decides it as the SDK does', async () => {
    const engine = await createPolicyEngine({ source: { path: SHIPPED_BUNDLE }, readBundle });
    engines.push(engine);
    const bundle = await readBundle(SHIPPED_BUNDLE);
    const sdk = await loadPolicy(bundle.wasm);
    sdk.setData(bundle.data as object);
    const g = await gate(200);
    const { input } = await g.admit(request('say hi'));
    // 100,000 "€" are 300 KB of UTF-8, beyond the 256 KiB that go through shared memory.
    for (const task of ['say hi', `${'€'.repeat(100_000)} npm test`, `${'a'.repeat(300_000)} npm test`]) {
      const full = { ...input, request: { ...input.request, task } };
      const viaSdk = checkDecision((sdk.evaluate(full, ENTRYPOINT) as { result: unknown }[])[0]?.result);
      expect(engine.evaluate(full).decision).toEqual(viaSdk);
    }
  });

  it('gives the spare thread that takes over after a timeout the runtime data in force, not the data it was started with', async () => {
    const g = await gate(200);
    const { input } = await g.admit(request('say hi'));
    const engine = await createPolicyEngine({ source: { path: slowBundle }, readBundle, evaluationTimeoutMs: 200, runtimeData: { catalog: input.catalog } });
    engines.push(engine);
    expect(engine.readsRuntimeCatalog).toBe(true);
    const { catalog: _catalog, ...rest } = input;
    const fast = JSON.stringify(rest);
    expect(engine.evaluateJsonWithoutCatalog(fast).decision.allow).toBe(true);
    // The data changes after the spare thread started (which holds the bundle's data without any catalog).
    engine.setRuntimeData({ catalog: { backends: {} } });
    expect(engine.evaluateJsonWithoutCatalog(fast).decision.reasons[0]?.code).toBe('unknown_backend');
    engine.setRuntimeData({ catalog: input.catalog });
    expect(engine.evaluateJsonWithoutCatalog(JSON.stringify({ ...rest, request: { ...rest.request, task: 'spin' } })).decision.reasons[0]?.code).toBe('policy_timeout');
    expect(engine.evaluateJsonWithoutCatalog(fast).decision.allow).toBe(true);
  });

  it('answers an evaluation still running when the engine is closed (policy_error), instead of leaving it waiting', async () => {
    const g = await gate(200);
    const { input } = await g.admit(request('say hi'));
    const engine = await createPolicyEngine({ source: { path: slowBundle }, readBundle, evaluationTimeoutMs: 60_000, runtimeData: { catalog: input.catalog } });
    const { catalog: _catalog, ...rest } = input;
    // call() sends before it returns: the spin is running on the policy's thread when close() comes.
    const pending = engine.evaluateJsonWithoutCatalogAsync(JSON.stringify({ ...rest, request: { ...rest.request, task: 'spin' } }));
    engine.close();
    expect((await pending).decision.reasons).toEqual([{ code: 'policy_error', message: expect.stringMatching(/closed/) as string }]);
  });

  it('refuses a deadline that is not a positive number', async () => {
    await expect(createPolicyEngine({ source: { path: slowBundle }, readBundle, evaluationTimeoutMs: 0 })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });

  describe('spawngate serve', () => {
    let serve: RunningBin | null = null;
    afterAll(async () => {
      if (!serve) return;
      serve.child.kill('SIGTERM');
      await serve.exited;
    });

    it('answers /healthz while an admission is stuck in the policy, then reports it erroring', async () => {
      const token = 'deadline-test-token-0123456789abcdef';
      const configFile = join(dir, 'serve.json');
      // A long deadline, so the admission is surely still in the policy when /healthz is asked; the config key is what serve honours.
      await writeFile(configFile, JSON.stringify({ ...defaultConfig(), spawngate: { policyEvaluationTimeoutMs: 10_000, stateDir: join(dir, 'state') } }));
      serve = startBin(['serve', '--config', configFile, '--bundle', slowBundle, '--port', '0', '--host', '127.0.0.1'], { ...process.env, SPAWNGATE_API_TOKEN: token });
      await serve.waitFor(/"listening"/, { timeoutMs: 60_000 });
      const { url } = JSON.parse(serve.stdout().split('\n').find((l) => l.includes('"listening"'))!) as { url: string };

      const pid = serve.child.pid!;
      const order: string[] = [];
      const idle = cpuTicks(pid);
      const stuck = call({ url }, 'POST', '/v1/admit', { token, body: request('spin') }).then((reply) => {
        order.push('admit');
        return reply;
      });
      // The server idles at about no CPU: a third of a second of it (clock ticks are 1/100 s) is the
      // policy spinning, so /healthz is asked while the admission is surely inside the evaluation.
      while (cpuTicks(pid) - idle < 30 && order.length === 0) await new Promise((r) => setTimeout(r, 20));
      expect(order, 'the admission was answered before the policy was seen spinning').toEqual([]);
      const health = await call({ url }, 'GET', '/healthz');
      order.push('healthz');
      expect(health.status).toBe(200);

      const admitted = await stuck;
      expect(order).toEqual(['healthz', 'admit']);
      expect(admitted.status).toBe(200);
      expect((admitted.json as { decision: { reasons: { code: string; message: string }[] } }).decision.reasons[0]).toMatchObject({ code: 'policy_timeout', message: expect.stringMatching(/10000 ms deadline/) as string });

      const after = await call({ url }, 'GET', '/healthz');
      expect(after.json).toMatchObject({ status: 'degraded', policy: 'erroring', problems: [expect.stringMatching(/^policy_timeout: /) as string] });
      const metrics = await call({ url }, 'GET', '/metrics', { token });
      expect(metrics.text).toMatch(/spawngate_decisions_total\{[^}]*reason="policy_timeout"[^}]*mode="dry_run"[^}]*\} 1/);
    }, 120_000);
  });
});
