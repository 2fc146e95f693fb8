import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPolicyEngine } from '../../admission/engine.js';
import { SHIPPED_BUNDLE } from '../../admission/gate.js';
import { readBundle } from '../../admission/bundle.js';
import { buildBundle, checkPolicies, compareBundles, evalPolicy, testPolicies } from '../policy-tool.js';
import type { AdmissionInput } from '../../admission/types.js';
import { UsageError } from '../../errors.js';
import { PACKAGE_ROOT } from '../../paths.js';
import type { Command } from '../framework.js';
import { EXIT, readInputFile, str } from '../framework.js';
import type { Options } from '../framework.js';
import { jsonLinesOption, outputFormat, outputOption, writeRecord } from '../output.js';
import { formatDecision, parseJsonInput } from './admit.js';

const DEFAULT_POLICIES = join(PACKAGE_ROOT, 'policies');

const policiesOption = { type: 'string', value: 'DIR', description: 'The Rego policies (and their tests and data).', default: 'policies/ of the spawngate package' } satisfies Options[string];
const OPA_ENV = [{ name: 'OPA_BIN', description: 'The opa binary to run; otherwise the pinned build in .tools/opa/ (scripts/ensure-opa.sh, needs Go) or opa on PATH.' }];

export const policyBuildCommand: Command = {
  name: 'policy build',
  summary: 'Compile policies/ to a WASM bundle (policy.wasm, data.json, .manifest); --check compares with the committed one.',
  usage: 'spawngate policy build [--policies DIR] [--out FILE] [--check] [-o json|yaml | --json]',
  options: {
    policies: policiesOption,
    out: { type: 'string', value: 'FILE', description: 'Where the bundle is written; with --check, the bundle to compare.', default: 'bundles/spawngate.tar.gz of the package' },
    check: { type: 'boolean', description: 'Build into a temporary file and compare it with --out instead of writing it (CI: is the committed bundle fresh?).', default: 'write the bundle' },
    output: outputOption(['json', 'yaml'], 'a sentence'),
    json: jsonLinesOption(),
  },
  environment: OPA_ENV,
  notes: ['Exit status: 0 written or equal, 1 the bundle differs from a fresh build (--check) or opa failed, 2 usage error.'],
  examples: [
    { description: 'Rebuild the shipped bundle after editing policies/', command: 'spawngate policy build' },
    { description: 'In CI: fail when the committed bundle is not what policies/ builds to', command: 'spawngate policy build --check' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const policiesDir = str(values, 'policies') ?? DEFAULT_POLICIES;
    const outFile = str(values, 'out') ?? SHIPPED_BUNDLE;
    if (!values.check) {
      const built = await buildBundle({ policiesDir, outFile });
      writeRecord(io, format, built, () => `wrote ${built.outFile} (revision ${built.revision})\n`);
      return EXIT.ok;
    }
    const dir = await mkdtemp(join(tmpdir(), 'spawngate-bundle-'));
    try {
      const fresh = await buildBundle({ policiesDir, outFile: join(dir, 'fresh.tar.gz') });
      const comparison = await compareBundles(outFile, fresh.outFile);
      if (format !== 'text') writeRecord(io, format, { ...comparison, revision: fresh.revision, bundle: outFile }, () => '');
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
  usage: 'spawngate policy test [--policies DIR] [--coverage] [-o json|yaml | --json]',
  options: {
    policies: policiesOption,
    coverage: { type: 'boolean', description: 'Also report the percentage of Rego lines the tests cover.', default: 'no coverage' },
    output: outputOption(['json', 'yaml'], 'opa test\'s own output'),
    json: jsonLinesOption('Print {"passed","failed","coverage","formatted","checkErrors"} as one compact JSON line.'),
  },
  environment: OPA_ENV,
  notes: ['Exit status: 0 every test passed and opa fmt/check are clean, 1 otherwise, 2 usage error.'],
  examples: [
    { description: 'Test a policy change with its coverage', command: 'spawngate policy test --coverage' },
    { description: 'Test policies kept outside the package', command: 'spawngate policy test --policies ./my-policies -o json' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const policiesDir = str(values, 'policies') ?? DEFAULT_POLICIES;
    const [result, check] = await Promise.all([testPolicies({ policiesDir, coverage: values.coverage === true }), checkPolicies({ policiesDir })]);
    if (format !== 'text') {
      writeRecord(io, format, { passed: result.passed, failed: result.failed, coverage: result.coverage ?? null, formatted: check.formatDiff === '', checkErrors: check.checkErrors || null }, () => '');
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
  usage: 'spawngate policy eval --input FILE|- [--bundle FILE] [--opa [--policies DIR]] [-o json|yaml | --json]',
  options: {
    input: { type: 'string', short: 'i', value: 'FILE|-', description: 'A full admission input as JSON (required; - reads stdin), e.g. the input of a decision-log line.' },
    bundle: { type: 'string', value: 'FILE', description: 'The bundle to evaluate in process.', default: 'the shipped bundle' },
    opa: { type: 'boolean', description: 'Evaluate the Rego source with opa eval instead of the WASM bundle (to compare the two).', default: 'the bundle, in process' },
    policies: { ...policiesOption, description: 'The Rego policies for --opa.' },
    output: outputOption(['json', 'yaml'], 'the decision in a few lines (with --opa: indented JSON)'),
    json: jsonLinesOption(),
  },
  environment: OPA_ENV,
  notes: ['Exit status: 0 allowed, 3 denied (in process; --opa always 0), 2 bad input or usage error.'],
  examples: [
    { description: 'Replay a logged decision\'s input against a new bundle', command: 'jq .input decision.json | spawngate policy eval -i - --bundle new.tar.gz' },
    { description: 'The same input through opa eval on the Rego source, to compare with the bundle\'s answer', command: 'spawngate policy eval --opa -i input.json' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const inputPath = str(values, 'input');
    if (!inputPath) {
      io.stderr.write('spawngate policy eval: --input FILE is required (an admission input as JSON; - reads stdin)\n');
      return EXIT.usage;
    }
    const input = parseJsonInput(await readInputFile(inputPath, io), inputPath);
    if (values.opa) {
      const result = await evalPolicy({ policiesDir: str(values, 'policies') ?? DEFAULT_POLICIES, input });
      writeRecord(io, format, result, () => `${JSON.stringify(result, null, 2)}\n`);
      return EXIT.ok;
    }
    const bundle = str(values, 'bundle');
    const engine = await createPolicyEngine({ source: { path: bundle ?? SHIPPED_BUNDLE }, readBundle });
    try {
      const unloaded = engine.health.state === 'unavailable' ? engine.lastError : null;
      if (unloaded) throw bundle ? new UsageError(`--bundle ${bundle}: ${unloaded.message}`, { cause: unloaded }) : unloaded;
      const { decision, revision } = engine.evaluate(input as AdmissionInput);
      writeRecord(io, format, { revision, ...decision }, () => formatDecision(decision));
      return decision.allow ? EXIT.ok : EXIT.denied;
    } finally {
      engine.close();
    }
  },
};
