import { mkdtemp, open, rm } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPolicyEngine } from '../../admission/engine.js';
import { applyGateRules, catalogOf, resolveConfig, SHIPPED_BUNDLE } from '../../admission/gate.js';
import type { ReplayChange, ReplayReport } from '../../admission/replay.js';
import { changedCount, replayDecisionLog } from '../../admission/replay.js';
import { readBundle } from '../../admission/bundle.js';
import { buildBundle, checkPolicies, compareBundles, evalPolicy, testPolicies } from '../policy-tool.js';
import type { AdmissionInput } from '../../admission/types.js';
import { UsageError } from '../../errors.js';
import { PACKAGE_ROOT } from '../../paths.js';
import type { Command } from '../framework.js';
import { EXIT, readInputFile, str } from '../framework.js';
import type { Options } from '../framework.js';
import { formatTable, jsonLinesOption, outputFormat, outputOption, writeRecord } from '../output.js';
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

export const policyReplayCommand: Command = {
  name: 'policy replay',
  summary: 'Replay a decision log against a candidate bundle and report which decisions it would change.',
  usage: 'spawngate policy replay --bundle FILE --log FILE|- [--config FILE] [--max-changes N] [-o json|yaml | --json]',
  options: {
    bundle: { type: 'string', value: 'FILE', description: 'The candidate bundle (a .tar.gz or directory; required).' },
    log: { type: 'string', value: 'FILE|-', description: 'A decision log (JSON lines, as spawngate.decisionLog writes them; required; - reads stdin).' },
    config: { type: 'string', short: 'c', value: 'FILE', description: 'The config whose catalog and policy data the candidate sees (the log\'s inputs leave the catalog out).', default: 'the embedded default config' },
    'max-changes': { type: 'string', value: 'N', description: 'How many changed decisions to list.', default: '50' },
    output: outputOption(['json', 'yaml'], 'counts by difference and the changed decisions'),
    json: jsonLinesOption(),
  },
  notes: [
    'Differences: would_deny, would_allow, different_placement (backend, profile or egress), different_terms (TTL, caps, allow-list), different_reason (both deny, another first code), failed (the candidate did not decide).',
    'Lines of permission decisions and shadow lines are skipped; lines whose input the mask rule erased are skipped, and those it changed are replayed on what is left (counted as approximate).',
    'Exit status: 0 the candidate decides every replayed line as logged, 1 it would change some, 2 usage error (no such file, not a bundle).',
  ],
  examples: [
    { description: 'What would the new bundle change on last week\'s traffic?', command: 'spawngate policy replay --bundle new.tar.gz --log /var/log/spawngate/decisions.jsonl -c spawngate.yaml' },
    { description: 'In CI, gate a policy change on recorded decisions', command: 'spawngate policy build --out new.tar.gz && spawngate policy replay --bundle new.tar.gz --log recorded.jsonl --json' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const bundle = str(values, 'bundle');
    const logPath = str(values, 'log');
    if (!bundle) throw new UsageError('--bundle FILE is required (the candidate bundle)');
    if (!logPath) throw new UsageError('--log FILE is required (a decision log; - reads stdin)');
    const maxRaw = str(values, 'max-changes') ?? '50';
    const maxChanges = Number(maxRaw);
    if (!Number.isInteger(maxChanges) || maxChanges < 0 || maxChanges > 100_000) throw new UsageError(`--max-changes must be an integer from 0 to 100000, got ${JSON.stringify(maxRaw)}`);
    const configPath = str(values, 'config');
    const config = await resolveConfig(configPath);
    const catalog = catalogOf(config);
    // Opened now (a missing file is a usage error before any work), read only once the engine is
    // up: readline starts reading at once, and lines emitted before the loop listens are lost.
    const opened =
      logPath === '-'
        ? null
        : await open(logPath).catch((err: unknown) => {
            throw new UsageError(`--log ${logPath}: ${(err as Error).message}`, { cause: err });
          });
    const engine = await createPolicyEngine({
      source: { path: bundle },
      readBundle,
      runtimeData: { catalog: catalog.prepared.catalog },
      ...(config.spawngate?.policyData ? { policyData: config.spawngate.policyData } : {}),
    });
    try {
      const unloaded = engine.health.state === 'unavailable' ? engine.lastError : null;
      if (unloaded) throw new UsageError(`--bundle ${bundle}: ${unloaded.message}`, { cause: unloaded });
      const lines = createInterface({ input: opened ? opened.createReadStream() : io.stdin, crlfDelay: Infinity });
      const report = await replayDecisionLog({
        engine,
        lines,
        catalogRevision: catalog.revision,
        maxChanges,
        finish: (decision, input) => {
          const request = input['request'] as { runtime?: unknown; agentId?: unknown } | undefined;
          return typeof request?.runtime === 'string' && typeof request.agentId === 'string' ? applyGateRules(config, { runtime: request.runtime, agentId: request.agentId }, decision) : decision;
        },
      });
      writeRecord(io, format, { bundle, log: logPath, ...report }, () => replayText(report, bundle, logPath));
      return changedCount(report) === 0 ? EXIT.ok : EXIT.failed;
    } finally {
      engine.close();
      await opened?.close();
    }
  },
};

function replayText(report: ReplayReport, bundle: string, log: string): string {
  const out: string[] = [];
  out.push(`replayed ${report.replayed} admission decision${report.replayed === 1 ? '' : 's'} of ${log} (${report.lines} lines) against ${bundle} (revision ${report.candidateRevision ?? 'none'})`);
  out.push(formatTable(['DIFFERENCE', 'DECISIONS'], Object.entries(report.differences).map(([d, n]) => [d, String(n)])).trimEnd());
  const skipped = report.skipped;
  const notes = [
    skipped.permission ? `${skipped.permission} permission decisions skipped` : '',
    skipped.shadow ? `${skipped.shadow} shadow lines skipped` : '',
    skipped.noInput ? `${skipped.noInput} lines without input skipped (erased by the mask rule)` : '',
    skipped.unreadable ? `${skipped.unreadable} unreadable lines skipped (${report.unreadable.join('; ')})` : '',
    report.approximate ? `${report.approximate} replayed on an input the mask rule changed` : '',
    report.otherCatalog ? `${report.otherCatalog} logged under another config than --config (catalog_revision differs): the candidate saw --config's` : '',
  ].filter(Boolean);
  for (const note of notes) out.push(`note: ${note}`);
  if (report.changes.length > 0) {
    out.push(`changed decisions${report.changes.length < changedCount(report) ? ` (first ${report.changes.length} of ${changedCount(report)})` : ''}:`);
    const show = (d: ReplayChange['live'] | null) => (d === null ? 'no decision' : d.allow ? `allow ${d.backend}/${d.profile} egress ${d.egress}` : `deny ${d.reason}`);
    out.push(
      formatTable(
        ['LINE', 'DECISION ID', 'DIFFERENCE', 'LOGGED', 'CANDIDATE'],
        report.changes.map((c) => [String(c.line), c.decisionId, c.difference, show(c.live), show(c.candidate)]),
      ).trimEnd(),
    );
  }
  return `${out.join('\n')}\n`;
}
