import { configJsonSchema, validateConfigFile } from '../../config/index.js';
import type { Command } from '../framework.js';
import { EXIT } from '../framework.js';

export const configValidateCommand: Command = {
  name: 'config validate',
  summary: 'Check a spawngate config file (JSON or YAML); every fault is printed with its JSON path.',
  usage: 'spawngate config validate FILE [--json]',
  options: { json: { type: 'boolean' } },
  positionals: [1, 1],
  async run({ values, positionals, io }) {
    const file = positionals[0] ?? '';
    const result = await validateConfigFile(file);
    if (values.json) {
      io.stdout.write(`${JSON.stringify(result.ok ? { ok: true, file } : { ok: false, file, issues: result.issues })}\n`);
    } else if (result.ok) {
      const backends = Object.entries(result.config.agents.executionBackends);
      const profiles = backends.reduce((n, [, b]) => n + Object.keys(b.profiles ?? {}).length, 0);
      io.stdout.write(`${file}: valid (${backends.length} backend(s), ${profiles} profile(s))\n`);
    } else {
      io.stderr.write(`${file}: ${result.issues.length} problem(s)\n`);
      for (const issue of result.issues) io.stderr.write(`  ${issue.path}: ${issue.message}\n`);
    }
    return result.ok ? EXIT.ok : EXIT.failed;
  },
};

export const configSchemaCommand: Command = {
  name: 'config schema',
  summary: 'Print the JSON Schema of the config, generated from the zod schema.',
  usage: 'spawngate config schema',
  options: {},
  run({ io }) {
    io.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
    return Promise.resolve(EXIT.ok);
  },
};
