import { configJsonSchema, validateConfigFile } from '../../config/index.js';
import type { Command } from '../framework.js';
import { EXIT } from '../framework.js';
import { documentText, jsonLinesOption, outputFormat, outputOption, writeRecord } from '../output.js';

export const configValidateCommand: Command = {
  name: 'config validate',
  summary: 'Check a spawngate config file (JSON or YAML); every fault is printed with its JSON path.',
  usage: 'spawngate config validate FILE [-o json|yaml | --json]',
  options: {
    output: outputOption(['json', 'yaml'], 'a sentence, or the faults on stderr'),
    json: jsonLinesOption('Print {"ok":…,"file":…,"issues":[…]} as one compact JSON line.'),
  },
  positionals: [1, 1],
  notes: ['Exit status: 0 valid, 2 invalid or unreadable (every fault with its JSON path) or usage error — as for every command that reads a config.'],
  examples: [
    { description: 'Check a config before rolling it out', command: 'spawngate config validate /etc/spawngate/gw.yaml' },
    { description: 'Only the paths of the faults', command: 'spawngate config validate gw.yaml -o json | jq -r \'.issues[].path\'' },
  ],
  async run({ values, positionals, io }) {
    const format = outputFormat(values);
    const file = positionals[0] ?? '';
    const result = await validateConfigFile(file);
    if (format !== 'text') {
      writeRecord(io, format, result.ok ? { ok: true, file } : { ok: false, file, issues: result.issues }, () => '');
    } else if (result.ok) {
      const backends = Object.entries(result.config.agents.executionBackends);
      const profiles = backends.reduce((n, [, b]) => n + Object.keys(b.profiles ?? {}).length, 0);
      io.stdout.write(`${file}: valid (${backends.length} backend(s), ${profiles} profile(s))\n`);
    } else {
      io.stderr.write(`${file}: ${result.issues.length} problem(s)\n`);
      for (const issue of result.issues) io.stderr.write(`  ${issue.path}: ${issue.message}\n`);
    }
    return result.ok ? EXIT.ok : EXIT.usage;
  },
};

export const configSchemaCommand: Command = {
  name: 'config schema',
  summary: 'Print the JSON Schema of the config, generated from the zod schema.',
  usage: 'spawngate config schema [-o json|yaml]',
  options: { output: outputOption(['json', 'yaml'], 'json') },
  examples: [{ description: 'Give an editor the schema, for completion in spawngate.yaml', command: 'spawngate config schema > spawngate.schema.json' }],
  run({ values, io }) {
    io.stdout.write(documentText(outputFormat(values) === 'yaml' ? 'yaml' : 'json', configJsonSchema()));
    return Promise.resolve(EXIT.ok);
  },
};
