import { admitCommand } from './commands/admit.js';
import { configSchemaCommand, configValidateCommand } from './commands/config.js';
import { doctorCommand } from './commands/doctor.js';
import { policyBuildCommand, policyEvalCommand, policyTestCommand } from './commands/policy.js';
import { workerCommand } from './commands/worker.js';
import { serveCommand } from './commands/serve.js';
import { imageBuildCommand } from './commands/image.js';
import { closeCommand, collectCommand, logsCommand, lsCommand, spawnCommand, statusCommand, sweepCommand, turnCommand } from './commands/sessions.js';
import type { Command, Io } from './framework.js';
import { EXIT, runCommand } from './framework.js';
import { startTelemetry } from '../telemetry/sdk.js';

/** Commands by their words; `policy build` is two words. */
const commands: Command[] = [
  spawnCommand,
  turnCommand,
  lsCommand,
  statusCommand,
  logsCommand,
  collectCommand,
  closeCommand,
  sweepCommand,
  admitCommand,
  policyBuildCommand,
  policyTestCommand,
  policyEvalCommand,
  configValidateCommand,
  configSchemaCommand,
  imageBuildCommand,
  doctorCommand,
  workerCommand,
  serveCommand,
];

/** Commands whose in-process gate makes spans (serve and worker start their own export). */
const TRACED = new Set(['spawn', 'turn', 'close', 'sweep', 'admit']);

/** Runs a command with trace export from OTEL_* (when asked for), flushed before the exit code is returned. */
async function traced(run: () => Promise<number>, io: Io): Promise<number> {
  const telemetry = await startTelemetry({ service: 'spawngate', attributes: { 'spawngate.role': 'cli' }, env: io.env });
  try {
    return await run();
  } finally {
    await telemetry?.shutdown();
  }
}

function overview(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'spawngate — admission and execution layer for AI agent workers',
    '',
    'Usage: spawngate <command> [options]',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Run `spawngate <command> --help` for the options of one command.',
    '',
  ].join('\n');
}

export async function main(argv: string[], io: Io): Promise<number> {
  const [first, second] = argv;
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    (first === undefined ? io.stderr : io.stdout).write(overview());
    return first === undefined ? EXIT.usage : EXIT.ok;
  }
  if (first === '--version' || first === '-v') {
    const { createRequire } = await import('node:module');
    const pkg = createRequire(import.meta.url)('../../package.json') as { version: string };
    io.stdout.write(`${pkg.version}\n`);
    return EXIT.ok;
  }
  const two = commands.find((c) => c.name === `${first} ${second ?? ''}`);
  if (two) return runCommand(two, argv.slice(2), io);
  const one = commands.find((c) => c.name === first);
  if (one) return TRACED.has(one.name) ? traced(() => runCommand(one, argv.slice(1), io), io) : runCommand(one, argv.slice(1), io);
  const group = commands.filter((c) => c.name.startsWith(`${first} `));
  if (group.length) {
    const asked = second === undefined || second === '--help' || second === '-h';
    const text = [`Usage: spawngate ${first} <${group.map((c) => c.name.split(' ')[1]).join('|')}>`, '', ...group.map((c) => `  ${c.name}  ${c.summary}`), ''].join('\n');
    (asked && second !== undefined ? io.stdout : io.stderr).write(second === undefined || asked ? text : `spawngate: unknown command "${first} ${second}"\n\n${text}`);
    return asked && second !== undefined ? EXIT.ok : EXIT.usage;
  }
  io.stderr.write(`spawngate: unknown command "${first}"\n\n${overview()}`);
  return EXIT.usage;
}
