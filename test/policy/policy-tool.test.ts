import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isSpawngateError } from '../../src/errors.js';
import { POLICY_ENTRYPOINT, readBundle } from '../../src/admission/bundle.js';
import { buildBundle, checkPolicies, compareBundles, evalPolicy, findOpa, policyRevision, testPolicies } from '../../src/cli/policy-tool.js';
import { coverageInputs } from './fixtures.js';

const ROOT = new URL('../..', import.meta.url).pathname;
const POLICIES = join(ROOT, 'policies');
const COMMITTED = join(ROOT, 'bundles', 'spawngate.tar.gz');
// The first findOpa() on a fresh machine compiles OPA from source (scripts/ensure-opa.sh).
const OPA_BUILD_TIMEOUT = 20 * 60_000;

let opa: string;
let work: string;
let fresh: string;

beforeAll(async () => {
  opa = await findOpa();
  work = await mkdtemp(join(tmpdir(), 'spawngate-policy-test-'));
  fresh = join(work, 'fresh.tar.gz');
  await buildBundle({ policiesDir: POLICIES, outFile: fresh, opa });
}, OPA_BUILD_TIMEOUT);

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** A scratch copy of policies/ to break on purpose. */
async function policiesCopy(name: string): Promise<string> {
  const dir = join(work, name);
  await cp(POLICIES, dir, { recursive: true });
  return dir;
}

/** opa's own diagnostic must reach the caller: in the message, and verbatim in details.stdout/stderr. */
async function expectToolFailure(promise: Promise<unknown>, diagnostic: string): Promise<void> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isSpawngateError(err) && err.code).toBe('POLICY_TOOL_FAILED');
  if (!isSpawngateError(err)) return;
  expect(err.message).toContain(diagnostic);
  expect(`${String(err.details.stderr)}${String(err.details.stdout)}`).toContain(diagnostic);
}

describe('findOpa', () => {
  it('finds the OPA version pinned in tools/opa/go.mod', async () => {
    const pinned = /github\.com\/open-policy-agent\/opa (v\S+)/.exec(await readFile(join(ROOT, 'tools/opa/go.mod'), 'utf8'))?.[1];
    const { stdout } = await promisify(execFile)(opa, ['version']);
    expect(stdout).toContain(`Version: ${pinned?.slice(1)}`);
  });
});

describe('scripts/ensure-opa.sh', () => {
  const script = join(ROOT, 'scripts', 'ensure-opa.sh');
  const run = (cwd: string, env: NodeJS.ProcessEnv) =>
    promisify(execFile)('bash', [join(cwd, 'scripts', 'ensure-opa.sh')], { cwd, env }).then(
      (ok) => ({ code: 0, ...ok }),
      (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
    );

  /** A throwaway repo layout with the real script and a pin that has no binary yet. */
  async function fakeRepo(name: string): Promise<string> {
    const root = join(work, name);
    await cp(script, join(root, 'scripts', 'ensure-opa.sh'));
    await cp(join(ROOT, 'tools', 'opa', 'tools.go'), join(root, 'tools', 'opa', 'tools.go'));
    await writeFile(join(root, 'tools', 'opa', 'go.mod'), 'module example.test/tools\n\ngo 1.26.0\n\nrequire github.com/open-policy-agent/opa v1.99.0\n');
    return root;
  }

  it('prints the pinned binary as its last line without rebuilding it', async () => {
    const result = await run(ROOT, process.env);
    expect(result.code).toBe(0);
    expect(result.stdout.trim().split('\n').at(-1)).toMatch(/\/\.tools\/opa\/v[\d.]+\/opa$/);
    expect(result.stderr).not.toContain('building');
  });

  it('fails loudly when go is missing', async () => {
    const root = await fakeRepo('no-go');
    const result = await run(root, { PATH: '/usr/bin:/bin', HOME: work });
    expect(result.code).not.toBe(0);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain('go is not on PATH');
  });

  it('passes the go error through when the build fails', async () => {
    const root = await fakeRepo('bad-pin');
    // GOPROXY=off keeps this offline: the unknown version must fail on the spot.
    const result = await run(root, { ...process.env, GOPROXY: 'off', GOFLAGS: '-mod=mod' });
    expect(result.code).not.toBe(0);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain('module lookup disabled by GOPROXY=off');
    expect(result.stderr).toContain('ensure-opa: go build of github.com/open-policy-agent/opa@v1.99.0 failed');
  });
});

describe('committed bundle', () => {
  it('equals a fresh build from policies/, member by member', async () => {
    expect(await compareBundles(COMMITTED, fresh)).toEqual({ equal: true, differences: [] });
    expect((await readBundle(COMMITTED)).manifest.revision).toBe(await policyRevision(POLICIES));
  });

  it('holds exactly policy.wasm, data.json and .manifest', async () => {
    const listed = await promisify(execFile)('tar', ['-tzf', COMMITTED]);
    expect(listed.stdout.trim().split('\n').sort()).toEqual(['/.manifest', '/data.json', '/policy.wasm']);
  });
});

describe('buildBundle', () => {
  it('is deterministic down to the archive bytes', async () => {
    const again = join(work, 'again.tar.gz');
    const built = await buildBundle({ policiesDir: POLICIES, outFile: again, opa });
    expect(built.revision).toBe(await policyRevision(POLICIES));
    expect(Buffer.compare(await readFile(again), await readFile(fresh))).toBe(0);
  });

  it('derives the revision from sources and data, not from tests', async () => {
    const dir = await policiesCopy('revision');
    const before = await policyRevision(dir);
    await writeFile(join(dir, 'extra_test.rego'), 'package spawngate.admission_test\n\ntest_extra if true\n');
    expect(await policyRevision(dir)).toBe(before);
    const dataFile = join(dir, 'data.json');
    const data = JSON.parse(await readFile(dataFile, 'utf8')) as { spawngate: { admission: { config: { maxDepth: number } } } };
    data.spawngate.admission.config.maxDepth = 5;
    await writeFile(dataFile, JSON.stringify(data));
    const after = await policyRevision(dir);
    expect(after).not.toBe(before);

    const out = join(work, 'revision.tar.gz');
    expect(await buildBundle({ policiesDir: dir, outFile: out, opa })).toEqual({ revision: after, outFile: out });
    const differences = (await compareBundles(fresh, out)).differences.map((line) => line.split(':')[0]);
    expect(differences).toEqual(['/.manifest', '/data.json']);
  });

  it('reports a compile error with opa stderr', async () => {
    const dir = await policiesCopy('broken-build');
    await writeFile(join(dir, 'broken.rego'), 'package spawngate.admission\n\nbroken if {\n');
    await expectToolFailure(buildBundle({ policiesDir: dir, outFile: join(work, 'never.tar.gz'), opa }), 'rego_parse_error');
  });
});

describe('testPolicies / checkPolicies', () => {
  it('passes every Rego test with at least 90% coverage of the policy files', async () => {
    const result = await testPolicies({ policiesDir: POLICIES, coverage: true, opa });
    expect(result.failed, result.output).toBe(0);
    expect(result.passed).toBeGreaterThanOrEqual(70);
    expect(result.coverage).toBeGreaterThanOrEqual(90);
    expect(result.output).toContain(`${result.passed} passed, 0 failed`);
  });

  it('counts failing tests instead of hiding them', async () => {
    const dir = await policiesCopy('failing');
    const selection = join(dir, 'selection.rego');
    await writeFile(selection, (await readFile(selection, 'utf8')).replace('input.caller.depth >= cfg.maxDepth', 'input.caller.depth > cfg.maxDepth'));
    const result = await testPolicies({ policiesDir: dir, coverage: true, opa });
    expect(result.failed).toBeGreaterThan(0);
    expect(result.coverage).toBeUndefined();
    expect(result.output).toContain('FAIL  data.spawngate.admission_test.test_depth_exceeded');
  });

  it('throws POLICY_TOOL_FAILED with opa stderr when the policies do not parse', async () => {
    const dir = await policiesCopy('unparsable');
    await writeFile(join(dir, 'broken.rego'), 'package spawngate.admission\n\nbroken if {\n');
    await expectToolFailure(testPolicies({ policiesDir: dir, opa }), 'rego_parse_error');
  });

  it('finds policies/ formatted and strict-clean', async () => {
    expect(await checkPolicies({ policiesDir: POLICIES, opa })).toEqual({ ok: true, formatDiff: '', checkErrors: '' });
  });

  it('reports unformatted files and strict-mode errors', async () => {
    const ugly = await policiesCopy('ugly');
    await writeFile(join(ugly, 'ugly.rego'), 'package spawngate.extra\n\nugly   if   { true }\n');
    const unformatted = await checkPolicies({ policiesDir: ugly, opa });
    expect(unformatted.ok).toBe(false);
    expect(unformatted.formatDiff).toContain('ugly');

    const sloppy = await policiesCopy('sloppy');
    await writeFile(join(sloppy, 'sloppy.rego'), 'package spawngate.extra\n\nsloppy if {\n\tx := 1\n}\n');
    const strict = await checkPolicies({ policiesDir: sloppy, opa });
    expect(strict.ok).toBe(false);
    expect(strict.checkErrors).toContain('assigned var x unused');
  });
});

describe('three evaluators agree', () => {
  it('opa eval on sources, opa eval on the bundle (wazero) and the opa-wasm SDK give the same decisions', async () => {
    const bundle = await readBundle(COMMITTED);
    const policy = await loadPolicy(bundle.wasm);
    policy.setData(bundle.data as object);
    for (const [name, admission] of Object.entries(coverageInputs)) {
      const sdk = (policy.evaluate(admission, POLICY_ENTRYPOINT) as { result: unknown }[])[0]?.result;
      expect(sdk, name).toBeDefined();
      expect(await evalPolicy({ policiesDir: POLICIES, input: admission, opa }), name).toEqual(sdk);
      expect(await evalPolicy({ bundle: COMMITTED, input: admission, opa }), name).toEqual(sdk);
    }
  });

  it('returns undefined for an undefined query and fails loudly on a bad one', async () => {
    expect(await evalPolicy({ policiesDir: POLICIES, input: {}, query: 'data.spawngate.admission.no_such_rule', opa })).toBeUndefined();
    await expectToolFailure(evalPolicy({ policiesDir: POLICIES, input: {}, query: 'data.spawngate.admission[', opa }), 'rego_parse_error');
  });
});
