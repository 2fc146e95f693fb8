import { formatPath, RequestError, UsageError } from '../../errors.js';
import { parseStrictJson, StrictJsonError } from '../../json.js';
import type { Decision } from '../../admission/types.js';
import { createAdmission } from '../../admission/gate.js';
import type { SpawnRequestInput } from '../../admission/request.js';
import type { Command } from '../framework.js';
import { EXIT, readInputFile, str } from '../framework.js';
import { jsonLinesOption, outputFormat, outputOption, writeRecord } from '../output.js';

export function formatDecision(decision: Decision): string {
  const lines: string[] = [];
  if (decision.allow) {
    lines.push(`ALLOWED  backend=${decision.backend} profile=${decision.profile} egress=${decision.egress} ttl=${decision.ttlSeconds}s`);
  } else {
    lines.push('DENIED');
  }
  for (const r of decision.reasons) lines.push(`  ${r.code}: ${r.message}`);
  const { concurrency, rate, tree } = decision.limits;
  if (concurrency.length) lines.push(`  concurrency: ${concurrency.map((c) => `${c.scope}/${c.key}≤${c.max}`).join(', ')}`);
  if (rate.length) lines.push(`  rate: ${rate.map((r) => `${r.scope}/${r.key} ${r.perMinute}/min burst ${r.burst}`).join(', ')}`);
  if (tree) {
    const caps = [tree.maxSpawns === null ? null : `spawns≤${tree.maxSpawns}`, tree.maxWorkerSeconds === null ? null : `worker-seconds≤${tree.maxWorkerSeconds}`].filter((c) => c !== null);
    lines.push(`  tree: ${tree.root} ${caps.join(', ')} (kept ${tree.windowSeconds}s past its last TTL)`);
  }
  return `${lines.join('\n')}\n`;
}

/** Strict JSON (no duplicate keys, no lone surrogates): a fault is REQUEST_INVALID naming where, by JSON path and offset. */
export function parseJsonInput(text: string, what: string): unknown {
  try {
    return parseStrictJson(text);
  } catch (cause) {
    if (!(cause instanceof StrictJsonError)) throw cause;
    const path = formatPath(cause.path);
    throw new RequestError(`${what} is not valid JSON: ${cause.message} (at ${path}, offset ${cause.offset})`, [{ path, message: cause.message }], { cause, details: { offset: cause.offset } });
  }
}

export const admitCommand: Command = {
  name: 'admit',
  summary: 'Decide a spawn request without starting anything (exit 0 allowed, 3 denied, 2 bad input).',
  usage: 'spawngate admit --input FILE|- [--config FILE] [--bundle FILE] [-o json|yaml | --json]',
  options: {
    input: { type: 'string', short: 'i', value: 'FILE|-', description: 'The spawn request as JSON (required; - reads stdin): agentId, task, caller, optional execution.' },
    config: { type: 'string', short: 'c', value: 'FILE', description: 'Config (JSON or YAML) whose backends, profiles and policy data the decision uses.', default: 'the embedded default config' },
    bundle: { type: 'string', value: 'FILE', description: 'Policy bundle (.tar.gz) to decide with.', default: 'spawngate.bundle of --config, else the shipped bundle' },
    output: outputOption(['json', 'yaml'], 'the decision in a few lines'),
    json: jsonLinesOption('Print the decision (with decisionId, bundleRevision and stage) as one compact JSON line.'),
  },
  notes: ['Nothing is reserved and no decision-log line is written: this is a dry run of the policy on this machine.', 'Exit status: 0 allowed, 3 denied, 2 bad input (every fault with its JSON path) or usage error.'],
  examples: [
    { description: 'Would this request be admitted under the shipped policy?', command: 'spawngate admit -i request.json' },
    { description: 'The decision of a gateway\'s config, from stdin, as YAML', command: 'cat request.json | spawngate admit -c /etc/spawngate/gw.yaml -i - -o yaml' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const inputPath = str(values, 'input');
    if (!inputPath) {
      io.stderr.write('spawngate admit: --input FILE is required (a spawn request as JSON; - reads stdin)\n');
      return EXIT.usage;
    }
    const request = parseJsonInput(await readInputFile(inputPath, io), inputPath);
    const configPath = str(values, 'config');
    const bundle = str(values, 'bundle');
    const gate = await createAdmission({
      ...(configPath ? { config: configPath } : {}),
      ...(bundle ? { bundle } : {}),
      watchBundle: false,
      decisionLog: false,
    });
    try {
      // The gate fails closed (every decision a policy_unavailable deny); this command says why instead.
      const unloaded = gate.policy.health.state === 'unavailable' ? gate.policy.lastError : null;
      if (unloaded) throw bundle ? new UsageError(`--bundle ${bundle}: ${unloaded.message}`, { cause: unloaded }) : unloaded;
      const result = await gate.admit(request as SpawnRequestInput);
      writeRecord(io, format, { decisionId: result.decisionId, bundleRevision: result.bundleRevision, stage: result.stage, ...result.decision }, () => formatDecision(result.decision));
      return result.decision.allow ? EXIT.ok : EXIT.denied;
    } finally {
      await gate.close();
    }
  },
};
