/**
 * The evaluator's fast path: the policy's WASM rewritten with fuel (wasm-fuel.ts) and evaluated on
 * the calling thread (fast-path.ts). The rewrite is checked on small modules written in WAT and
 * assembled by wabt, where what must happen is known exactly (a loop that never ends traps; an
 * exponential call tree without loops traps; a bounded loop answers as before), and on the real
 * bundle: the fast path decides every coverage input as the SDK does on the unmodified module, a
 * bundle that spins still ends in policy_timeout (by way of the thread), and one that calls a
 * JavaScript builtin stays off the fast path. No timing assertion: counts and answers.
 */
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import wabtInit from 'wabt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPolicyEngine, ENTRYPOINT, type PolicyEngine } from '../../src/admission/engine.js';
import { readBundle } from '../../src/admission/bundle.js';
import { SHIPPED_BUNDLE } from '../../src/admission/gate.js';
import { FUEL_EXPORT, GLOBAL_EXPORT_PREFIX, INSTRUCTIONS_PER_UNIT, withFuel } from '../../src/admission/wasm-fuel.js';
import { FAST_MAX_INPUT, prepareFastPath } from '../../src/admission/fast-path.js';
import { buildBundle } from '../../src/cli/policy-tool.js';
import type { AdmissionInput } from '../../src/admission/types.js';
import { memoryLogger } from '../helpers/logger.js';
import { coverageInputs } from '../policy/fixtures.js';

interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports?: object) => { exports: Record<string, unknown> };
  RuntimeError: new () => Error;
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
const policiesDir = fileURLToPath(new URL('../../policies', import.meta.url));

type Fuel = { value: number };

async function assemble(wat: string, features: Record<string, boolean> = {}): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const module = wabt.parseWat('test.wat', wat, features);
  try {
    return module.toBinary({}).buffer;
  } finally {
    module.destroy();
  }
}

function instantiate(bytes: Uint8Array, imports: object = {}): Record<string, unknown> {
  return new wasm.Instance(new wasm.Module(bytes), imports).exports;
}

describe('wasm fuel rewrite', () => {
  it('stops a loop that never ends, and starts full so start-up code runs as before', async () => {
    const bytes = await assemble(`(module
      (global $ran (mut i32) (i32.const 0))
      (func $init (global.set $ran (i32.const 1)))
      (start $init)
      (func (export "ran") (result i32) (global.get $ran))
      (func (export "spin") (loop $l (br $l))))`);
    const exports = instantiate(withFuel(bytes).bytes);
    expect((exports.ran as () => number)()).toBe(1);
    (exports[FUEL_EXPORT] as Fuel).value = 10_000;
    expect(() => (exports.spin as () => void)()).toThrow(wasm.RuntimeError);
    expect((exports[FUEL_EXPORT] as Fuel).value).toBeLessThan(0);
  });

  it('stops an exponential call tree that has no loop', async () => {
    // 2^60 calls: no loop anywhere, only calls.
    const bytes = await assemble(`(module
      (func $f (param $n i32)
        (if (local.get $n) (then
          (call $f (i32.sub (local.get $n) (i32.const 1)))
          (call $f (i32.sub (local.get $n) (i32.const 1))))))
      (func (export "tree") (param i32) (call $f (local.get 0))))`);
    const exports = instantiate(withFuel(bytes).bytes);
    (exports[FUEL_EXPORT] as Fuel).value = 100_000;
    expect(() => (exports.tree as (n: number) => void)(60)).toThrow(wasm.RuntimeError);
    // A small tree fits, and costs one unit per entry of the recursive function (1 + 2 + 4 + 8 + 16);
    // the export that calls it once is in no cycle and enters one counted function: not counted.
    (exports[FUEL_EXPORT] as Fuel).value = 100_000;
    (exports.tree as (n: number) => void)(4);
    expect(100_000 - (exports[FUEL_EXPORT] as Fuel).value).toBe(31);
  });

  it('stops an exponential tree of distinct functions, with no loop and no recursion', async () => {
    // $f0 calls $f1 twice, $f1 calls $f2 twice, … $f59: 2^60 calls, and no cycle for the call graph to show.
    const levels = 60;
    const funcs = Array.from({ length: levels }, (_, i) => (i === levels - 1 ? `(func $f${i} (global.set $n (i32.add (global.get $n) (i32.const 1))))` : `(func $f${i} (call $f${i + 1}) (call $f${i + 1}))`));
    const bytes = await assemble(`(module
      (global $n (mut i32) (i32.const 0))
      ${funcs.join('\n')}
      (func (export "tree") (call $f0))
      (func (export "small") (call $f${levels - 5}))
      (func (export "leaves") (result i32) (global.get $n)))`);
    const exports = instantiate(withFuel(bytes).bytes);
    const fuel = exports[FUEL_EXPORT] as Fuel;
    fuel.value = 100_000;
    expect(() => (exports.tree as () => void)()).toThrow(wasm.RuntimeError);
    expect(fuel.value).toBeLessThan(0);
    const before = (exports.leaves as () => number)();
    fuel.value = 100_000;
    (exports.small as () => void)();
    expect((exports.leaves as () => number)() - before).toBe(16);
    // A unit an entry here (each body is a few instructions). $f59 to $f57 take at most
    // MAX_UNCOUNTED_UNITS (8) with what they call and go uncounted; $f56 would take 15, so its
    // entry counts and is charged all 15: the two $f56 trees take 30 units for their 30 entries.
    // The export and $f55 above them are left to the host's call.
    expect(100_000 - fuel.value).toBe(30);
  });

  it('leaves what a bounded loop computes as it was, counting one unit per iteration', async () => {
    const wat = `(module
      (import "env" "g" (global $imported i32))
      (global $step (mut i32) (i32.const 3))
      (memory (export "memory") 1)
      (func (export "sum") (param $n i32) (result i32) (local $i i32) (local $acc i32)
        (block $done (loop $next
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (i32.store offset=8 (i32.const 0) (local.get $i))
          (local.set $acc (i32.add (local.get $acc) (i32.add (global.get $step) (global.get $imported))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $next)))
        (local.get $acc)))`;
    const bytes = await assemble(wat);
    const imports = { env: { g: 2 } };
    const plain = instantiate(bytes, imports);
    const fueled = instantiate(withFuel(bytes).bytes, imports);
    (fueled[FUEL_EXPORT] as Fuel).value = 1_000;
    expect((fueled.sum as (n: number) => number)(100)).toBe((plain.sum as (n: number) => number)(100));
    expect((fueled.sum as (n: number) => number)(100)).toBe(500);
    // Two runs of 101 loop heads each; the function calls nothing, so its entry is not counted.
    expect(1_000 - (fueled[FUEL_EXPORT] as Fuel).value).toBe(202);
  });

  it('charges a loop iteration or a function entry a unit more for every INSTRUCTIONS_PER_UNIT instructions', async () => {
    // 100 blocks of 4 instructions, and a few to count the iterations: 400-420 in the loop's body.
    const step = '(global.set $g (i32.add (global.get $g) (i32.const 1)))';
    const bytes = await assemble(`(module
      (global $g (mut i32) (i32.const 0))
      (func (export "long") (param $n i32) (local $i i32)
        (loop $l
          ${Array.from({ length: 100 }, () => step).join(' ')}
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (local.get $n)))))
      (func (export "straight") ${Array.from({ length: 200 }, () => step).join(' ')})
      (func (export "g") (result i32) (global.get $g)))`);
    const exports = instantiate(withFuel(bytes).bytes);
    const fuel = exports[FUEL_EXPORT] as Fuel;
    fuel.value = 100_000;
    (exports.long as (n: number) => void)(10);
    expect((exports.g as () => number)()).toBe(1000);
    const perIteration = 1 + Math.floor(400 / INSTRUCTIONS_PER_UNIT);
    expect(100_000 - fuel.value).toBe(10 * perIteration);
    expect(perIteration).toBe(7);
    // So is a function's entry for its straight-line code: 800 instructions, 13 units, more than
    // an uncounted function may take, so it counts its own entry.
    fuel.value = 100_000;
    (exports.straight as () => void)();
    expect(100_000 - fuel.value).toBe(1 + Math.floor(800 / INSTRUCTIONS_PER_UNIT));
  });

  it('asks the refuel import for more at a function entry, stops when it throws, and lets a loop overdraw only its grace', async () => {
    const wat = (type: string) => `(module
      (import "env" "opa_builtin0" (func $b0 ${type}))
      (global $sp (mut i32) (i32.const 65536))
      (global $const i32 (i32.const 7))
      (func $leaf (global.set $sp (i32.sub (global.get $sp) (i32.const 1))))
      (func $step (param $again i32) (if (local.get $again) (then (call $step (i32.const 0)))) (call $leaf))
      (func (export "calls") (loop $l (call $step (i32.const 0)) (br $l)))
      (func (export "scan") (loop $l (global.set $sp (i32.sub (global.get $sp) (i32.const 1))) (br $l))))`;
    const bytes = await assemble(wat('(param i32 i32) (result i32)'));
    const refuel = { module: 'env', name: 'opa_builtin0', arg: -1 };
    const fueled = withFuel(bytes, { refuel, loopGrace: 100 });
    expect(fueled.refuel).toBe(true);
    // The module's own mutable global (index 0) is exported, so that a host can put it back.
    expect(fueled.globals).toEqual([`${GLOBAL_EXPORT_PREFIX}0`]);
    const calls: number[][] = [];
    class Stop extends Error {}
    const exports = instantiate(fueled.bytes, {
      env: {
        opa_builtin0: (id: number, ctx: number) => {
          calls.push([id, ctx]);
          if (calls.length > 3) throw new Stop('enough');
          return 100;
        },
      },
    });
    const fuel = exports[FUEL_EXPORT] as Fuel;
    const sp = exports[`${GLOBAL_EXPORT_PREFIX}0`] as Fuel;
    // A loop that enters a function whose entry counts (it may call itself): that entry asks, three refuels are given,
    // and the fourth ask throws, which is the only way out.
    fuel.value = 50;
    expect(() => (exports.calls as () => void)()).toThrow(Stop);
    expect(calls).toEqual([[-1, 0], [-1, 0], [-1, 0], [-1, 0]]);
    // A loop that enters none never asks: it runs 50 units, then 100 of grace, and traps at the next count.
    calls.length = 0;
    fuel.value = 50;
    sp.value = 65536;
    expect(() => (exports.scan as () => void)()).toThrow(wasm.RuntimeError);
    expect(calls).toEqual([]);
    expect(65536 - sp.value).toBe(150);
    expect(fuel.value).toBe(-101);
    // An import of another type is not called: running out traps everywhere instead.
    const other = withFuel(await assemble(wat('(param i32) (result i32)')), { refuel, loopGrace: 100 });
    expect(other.refuel).toBe(false);
    const trapping = instantiate(other.bytes, { env: { opa_builtin0: () => 1 } });
    (trapping[FUEL_EXPORT] as Fuel).value = 50;
    expect(() => (trapping.calls as () => void)()).toThrow(wasm.RuntimeError);
    (trapping[FUEL_EXPORT] as Fuel).value = 50;
    expect(() => (trapping.scan as () => void)()).toThrow(wasm.RuntimeError);
    expect((trapping[FUEL_EXPORT] as Fuel).value).toBe(-1);
  });

  it('refuses what it cannot meter or decode, naming the instruction', async () => {
    const fill = await assemble('(module (memory 1) (func (export "f") (memory.fill (i32.const 0) (i32.const 0) (i32.const 65536))))', { bulk_memory: true });
    expect(() => withFuel(fill)).toThrow(/0xfc 11 at byte \d+: its cost is not metered/);
    const simd = await assemble('(module (func (export "f") (result v128) (v128.const i32x4 0 0 0 0)))', { simd: true });
    expect(() => withFuel(simd)).toThrow(/unsupported instruction 0xfd/);
    expect(() => withFuel(new Uint8Array([1, 2, 3]))).toThrow(/not a WebAssembly 1.0 binary module/);
  });
});

const withoutCatalog = ({ catalog: _catalog, ...rest }: AdmissionInput) => JSON.stringify(rest);

/** A rule that spins for seconds when the task is "spin". */
const SPIN = `package spawngate.admission

deny contains [1, "spin_finished", "the spin ended"] if {
	input.request.task == "spin"
	xs := numbers.range(1, 40000)
	count([1 | some i in xs; some j in xs; i == j + 1000000]) >= 0
}
`;

/** A copy of policies/ (no tests) with extra files, built into a bundle. */
async function bundleWith(dir: string, name: string, extra: Record<string, string>): Promise<string> {
  const src = join(dir, name);
  await mkdir(src);
  await cp(policiesDir, src, { recursive: true, filter: (from) => !from.endsWith('_test.rego') });
  for (const [file, text] of Object.entries(extra)) await writeFile(join(src, file), text);
  const out = join(dir, `${name}.tar.gz`);
  await buildBundle({ policiesDir: src, outFile: out });
  return out;
}

describe('policy fast path', () => {
  let dir: string;
  const engines: PolicyEngine[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sg-fast-'));
  });
  afterAll(async () => {
    for (const e of engines) e.close();
    await rm(dir, { recursive: true, force: true });
  });

  // These tests count what the fast path answers: a budget wider than a busy machine's pauses
  // (below the deadline) keeps an ordinary evaluation from going to the thread on time alone.
  async function engine(source: Parameters<typeof createPolicyEngine>[0]['source'], timeoutMs = 250): Promise<PolicyEngine> {
    const e = await createPolicyEngine({ source, readBundle, evaluationTimeoutMs: timeoutMs, fastPath: { budgetMs: timeoutMs * 0.75 } });
    engines.push(e);
    return e;
  }

  it('decides every coverage input as the SDK does on the unmodified module, all on the fast path', async () => {
    const bundle = await readBundle(SHIPPED_BUNDLE);
    const e = await engine({ path: SHIPPED_BUNDLE });
    expect(e.fastPath).toMatchObject({ on: true, reason: null, misses: 0 });
    const sdk = await loadPolicy(bundle.wasm);
    sdk.setData(bundle.data as object);
    const inputs = Object.entries(coverageInputs);
    expect(inputs.length).toBeGreaterThan(10);
    for (const [name, input] of inputs) {
      e.setRuntimeData({ catalog: input.catalog });
      const [expected] = sdk.evaluate(input, ENTRYPOINT) as [{ result: unknown }];
      expect(e.evaluateJson(JSON.stringify(input)).decision, name).toEqual(expected.result);
      expect((await e.evaluateJsonWithoutCatalogAsync(withoutCatalog(input))).decision.allow, name).toBe((expected.result as { allow: boolean }).allow);
    }
    expect(e.fastPath).toMatchObject({ on: true, misses: 0 });
    expect(e.fastPath.answered).toBeGreaterThanOrEqual(inputs.length * 2);
  });

  it('sends an evaluation that runs out of time to the thread, which stops it at the deadline, then answers the next ones itself', async () => {
    const spin = await bundleWith(dir, 'spin', { 'spin.rego': SPIN });
    const e = await engine({ path: spin }, 200);
    const ordinary = coverageInputs[Object.keys(coverageInputs)[0]!]!;
    const hi = () => e.evaluateJson(JSON.stringify(ordinary)).decision;
    const expected = hi();
    e.setRuntimeData({ catalog: ordinary.catalog });
    const before = e.fastPath;
    const slow = await e.evaluateJsonWithoutCatalogAsync(withoutCatalog({ ...ordinary, request: { ...ordinary.request, task: 'spin' } }));
    expect(slow.decision.reasons).toEqual([{ code: 'policy_timeout', message: expect.stringMatching(/did not finish within its 200 ms deadline/) as string }]);
    expect(e.fastPath.misses).toBe(before.misses + 1);
    // The call right after a miss goes to the thread (the thread that overran was replaced); then the fast path again.
    expect(hi()).toEqual(expected);
    expect(hi()).toEqual(expected);
    expect(e.fastPath).toMatchObject({ on: true, misses: before.misses + 1, answered: before.answered + 1 });
  });

  it('stops a spinning evaluation at its first look at the clock past the budget, then answers from the same instance put back', async () => {
    const bundle = await readBundle(await bundleWith(dir, 'spin-clock', { 'spin.rego': SPIN }));
    let t = 0;
    let reads = 0;
    // Each look at this clock moves it 0.5 ms on.
    const fast = await prepareFastPath(bundle.wasm, { budgetMs: 2, now: () => ((reads += 1), (t += 0.5)) });
    const sdk = await loadPolicy(bundle.wasm);
    sdk.setData(bundle.data as object);
    const data = new TextEncoder().encode(JSON.stringify(bundle.data)).buffer;
    const ask = (input: AdmissionInput) => {
      const text = fast.evaluate(0, JSON.stringify(input), data);
      return text === null ? null : (JSON.parse(text) as unknown);
    };
    const expectedOf = (input: AdmissionInput) => sdk.evaluate(input, ENTRYPOINT) as unknown;
    const inputs = Object.values(coverageInputs);
    const ordinary = inputs[0]!;
    expect(ask(ordinary)).toEqual(expectedOf(ordinary));
    reads = 0;
    expect(ask({ ...ordinary, request: { ...ordinary.request, task: 'spin' } })).toBeNull();
    // One look at the start (deadline 0.5 + 2), refuels at 1, 1.5, 2 and 2.5, and the one at 3 stops it.
    expect(reads).toBe(6);
    expect(fast.status()).toMatchObject({ on: true, misses: 1, instances: 1 });
    // The call right after a miss is the thread's; then every input is decided here as the SDK
    // decides it, by the instance that was stopped mid-evaluation and put back.
    expect(ask(ordinary)).toBeNull();
    for (const input of inputs) expect(ask(input)).toEqual(expectedOf(input));
    expect(fast.status()).toMatchObject({ misses: 1, instances: 1, answered: 1 + inputs.length });
    fast.close();
  });

  it('keeps a bundle that calls a builtin run by JavaScript off the fast path, and still decides with it', async () => {
    const bundle = await bundleWith(dir, 'sprintf', {
      'sprintf.rego': `package spawngate.admission

deny contains [1, "named", sprintf("task %s", [input.request.task])] if input.request.task == "deny me"
`,
    });
    const e = await engine({ path: bundle });
    expect(e.fastPath.on).toBe(false);
    expect(e.fastPath.reason).toMatch(/builtins that run as JavaScript \(sprintf\)/);
    const ordinary = coverageInputs[Object.keys(coverageInputs)[0]!]!;
    const denied = e.evaluateJson(JSON.stringify({ ...ordinary, request: { ...ordinary.request, task: 'deny me' } })).decision;
    expect(denied.reasons).toContainEqual({ code: 'named', message: 'task deny me' });
    expect(e.fastPath.answered).toBe(0);
  });

  it('sends an input longer than FAST_MAX_INPUT straight to the thread, without a try or a miss', async () => {
    const e = await engine({ path: SHIPPED_BUNDLE });
    const bundle = await readBundle(SHIPPED_BUNDLE);
    const sdk = await loadPolicy(bundle.wasm);
    sdk.setData(bundle.data as object);
    const ordinary = coverageInputs[Object.keys(coverageInputs)[0]!]!;
    const task = 'run the tests and fix the build '.repeat(Math.ceil(FAST_MAX_INPUT / 32));
    const long = { ...ordinary, request: { ...ordinary.request, task } };
    const [expected] = sdk.evaluate(long, ENTRYPOINT) as [{ result: unknown }];
    const before = e.fastPath;
    expect(e.evaluateJson(JSON.stringify(long)).decision).toEqual(expected.result);
    expect(e.fastPath).toMatchObject({ long: before.long + 1, misses: before.misses, answered: before.answered });
    // The short one after it is not held back by it.
    e.evaluateJson(JSON.stringify(ordinary));
    expect(e.fastPath).toMatchObject({ long: before.long + 1, misses: before.misses, answered: before.answered + 1 });
  });

  it('evaluates against new runtime data from the first call after it is set', async () => {
    const e = await engine({ path: SHIPPED_BUNDLE });
    const input = coverageInputs[Object.keys(coverageInputs)[0]!]!;
    e.setRuntimeData({ catalog: input.catalog });
    const withIt = e.evaluateJsonWithoutCatalog(withoutCatalog(input)).decision;
    expect(withIt).toEqual(e.evaluateJson(JSON.stringify(input)).decision);
    // The same backend, gone from the catalog: the very next evaluation must not see the old one.
    e.setRuntimeData({ catalog: { backends: {} } });
    const without = e.evaluateJsonWithoutCatalog(withoutCatalog(input)).decision;
    expect(without.allow).toBe(false);
    expect(without.reasons.map((r) => r.code)).toContain('unknown_backend');
    expect(e.fastPath.misses).toBe(0);
  });

  it('says in the bundle-loaded log line whether the fast path is on, and why not', async () => {
    const logger = memoryLogger();
    engines.push(await createPolicyEngine({ source: { path: SHIPPED_BUNDLE }, readBundle, logger }));
    expect(logger.lines).toContainEqual(expect.objectContaining({ msg: 'policy bundle loaded', fields: expect.objectContaining({ fastPath: 'on' }) as unknown }));
  });
});
