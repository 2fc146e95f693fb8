import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPolicyEngine } from '../../admission/engine.js';
import { SHIPPED_BUNDLE } from '../../admission/gate.js';
import { readBundle } from '../../admission/bundle.js';
import { buildBundle, checkPolicies, compareBundles, evalPolicy, testPolicies } from '../policy-tool.js';
import type { AdmissionInput } from '../../admission/types.js';
import { PACKAGE_ROOT } from '../../paths.js';
import type { Command } from '../framework.js';
import { EXIT, readInputFile, str } from '../framework.js';
import { formatDecision, parseJsonInput } from './admit.js';

const DEFAULT_POLICIES = join(PACKAGE_ROOT, 'policies');

export const policyBuildCommand: Command = {
  name: 'policy build',
  summary: 'Compile policies/ to a WASM bundle (policy.wasm, data.json, .manifest); --check compares with the committed one.',
  usage: 'spawngate policy build [--policies DIR] [--out FILE] [--check] [--json]',
  options: { policies: { type: 'string' }, out: { type: 'string', short: 'o' }, check: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, io }) {
    const policiesDir = str(values, 'policies') ?? DEFAULT_POLICIES;
    const outFile = str(values, 'out') ?? SHIPPED_BUNDLE;
    if (!values.check) {
      const built = await buildBundle({ policiesDir, outFile });
      io.stdout.write(values.json ? `${JSON.stringify(built)}\n` : `wrote ${built.outFile} (revision ${built.revision})\n`);
      return EXIT.ok;
    }
    const dir = await mkdtemp(join(tmpdir(), 'spawngate-bundle-'));
    try {
      const fresh = await buildBundle({ policiesDir, outFile: join(dir, 'fresh.tar.gz') });
      const comparison = await compareBundles(outFile, fresh.outFile);
      if (values.json) io.stdout.write(`${JSON.stringify({ ...comparison, revision: fresh.revision, bundle: outFile })}\n`);
      else if (comparison.equal) io.stdout.write(`${outFile} matches ${policiesDir} (revision ${fresh.revision})\n`);
      else {
        io.stderr.write(`${outFile} does not match a fresh build of ${policiesDir}:\n`);
        for (const d of comparison.differences) io.stderr.write(`  ${d}\n`);
        io.stderr.write('rebuild it with: spawngate policy build\n');
      }
      return comparison.equal ? EXIT.ok : EXIT.failed;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
};

export const policyTestCommand: Command = {
  name: 'policy test',
  summary: 'Run the Rego unit tests (opa test), with --coverage the covered percentage, and opa fmt/check.',
  usage: 'spawngate policy test [--policies DIR] [--coverage] [--json]',
  options: { policies: { type: 'string' }, coverage: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, io }) {
    const policiesDir = str(values, 'policies') ?? DEFAULT_POLICIES;
    const [result, check] = await Promise.all([testPolicies({ policiesDir, coverage: values.coverage === true }), checkPolicies({ policiesDir })]);
    if (values.json) {
      io.stdout.write(`${JSON.stringify({ passed: result.passed, failed: result.failed, coverage: result.coverage ?? null, formatted: check.formatDiff === '', checkErrors: check.checkErrors || null })}\n`);
    } else {
      io.stdout.write(result.output.endsWith('\n') ? result.output : `${result.output}\n`);
      if (result.coverage !== undefined) io.stdout.write(`coverage: ${result.coverage.toFixed(2)}%\n`);
      if (check.formatDiff) io.stderr.write(`not opa-fmt formatted:\n${check.formatDiff}\n`);
      if (check.checkErrors) io.stderr.write(`opa check --strict:\n${check.checkErrors}\n`);
    }
    return result.failed === 0 && check.ok ? EXIT.ok : EXIT.failed;
  },
};

export const policyEvalCommand: Command = {
  name: 'policy eval',
  summary: 'Evaluate a full admission input (see src/admission/types.ts) against the bundle in-process, or the Rego source with --opa.',
  usage: 'spawngate policy eval --input FILE|- [--bundle FILE] [--opa [--policies DIR]] [--json]',
  options: { input: { type: 'string', short: 'i' }, bundle: { type: 'string' }, policies: { type: 'string' }, opa: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, io }) {
    const inputPath = str(values, 'input');
    if (!inputPath) {
      io.stderr.write('spawngate policy eval: --input FILE is required (an admission input as JSON; - reads stdin)\n');
      return EXIT.usage;
    }
    const input = parseJsonInput(await readInputFile(inputPath, io), inputPath);
    if (values.opa) {
      const result = await evalPolicy({ policiesDir: str(values, 'policies') ?? DEFAULT_POLICIES, input });
      io.stdout.write(`${JSON.stringify(result, null, values.json ? undefined : 2)}\n`);
      return EXIT.ok;
    }
    const engine = await createPolicyEngine({ source: { path: str(values, 'bundle') ?? SHIPPED_BUNDLE }, readBundle });
    try {
      const { decision, revision } = engine.evaluate(input as AdmissionInput);
      io.stdout.write(values.json ? `${JSON.stringify({ revision, ...decision })}\n` : formatDecision(decision));
      return decision.allow ? EXIT.ok : EXIT.denied;
    } finally {
      engine.close();
    }
  },
};
