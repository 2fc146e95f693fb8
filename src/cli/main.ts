import { admitCommand } from './commands/admit.js';
import { configSchemaCommand, configValidateCommand } from './commands/config.js';
import { doctorCommand } from './commands/doctor.js';
import { policyBuildCommand, policyEvalCommand, policyReplayCommand, policyTestCommand } from './commands/policy.js';
import { workerCommand } from './commands/worker.js';
import { versionCommand } from './commands/version.js';
import { serveCommand } from './commands/serve.js';
import { imageBuildCommand } from './commands/image.js';
import { closeCommand, collectCommand, logsCommand, lsCommand, spawnCommand, statusCommand, sweepCommand, turnCommand } from './commands/sessions.js';
import type { Command, Io } from './framework.js';
import { EXIT, runCommand } from './framework.js';
import { startTelemetry } from '../telemetry/sdk.js';

/** Commands by their words; `policy build` is two words. */
export const commands: Command[] = [
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
  policyReplayCommand,
  configValidateCommand,
  configSchemaCommand,
  imageBuildCommand,
  doctorCommand,
  workerCommand,
  serveCommand,
  versionCommand,
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

/** Levenshtein distance, for "did you mean" on a mistyped command. */
function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min((row[j] ?? 0) + 1, (next[j - 1] ?? 0) + 1, (row[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length] ?? 0;
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
    'Options:',
    '  -h, --help       Show this help; `spawngate <command> --help` shows a command\'s options, defaults and examples.',
    '  -v, --version    Same as `spawngate version`.',
    '',
    'Output: results go to stdout, progress and diagnostics to stderr. -o json prints one JSON document,',
    '-o yaml the same as YAML, -o wide more columns; --json prints JSON lines (one object per line), which',
    'is also the format of the streams of spawn, turn and logs.',
    '',
    'Exit status: 0 ok, 1 failed, 2 usage error (unknown command or flag, bad value, invalid config or',
    'request), 3 denied by the policy, 130 interrupted (logs -f).',
    '',
    'Docs: README.md and docs/cli.md in the spawngate package.',
    '',
  ].join('\n');
}

export async function main(argv: string[], io: Io): Promise<number> {
  const [first, second] = argv;
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    (first === undefined ? io.stderr : io.stdout).write(overview());
    return first === undefined ? EXIT.usage : EXIT.ok;
  }
  if (first === '--version' || first === '-v') return runCommand(versionCommand, argv.slice(1), io);
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
  const near = first.startsWith('-') ? [] : commands.map((c) => c.name).filter((n) => editDistance(n.split(' ')[0] ?? n, first) <= 2);
  io.stderr.write(`spawngate: unknown ${first.startsWith('-') ? 'option' : 'command'} "${first}"${near.length ? ` (did you mean ${near.join(' or ')}?)` : ''}\n\n${overview()}`);
  return EXIT.usage;
}
