import { parseArgs } from 'node:util';
import { isSpawngateError, RequestError, UsageError } from '../errors.js';
import { BoundedReadError, readBoundedFile, readBoundedStream, strictUtf8 } from '../files.js';

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
  env: NodeJS.ProcessEnv;
}

/** One flag: what node:util parseArgs needs, plus what --help says about it. */
export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  multiple?: boolean;
  description: string;
  /** The value's name in help and usage lines: FILE, N, URL. */
  value?: string;
  /** What applies when the flag is absent, in words (help only: the command applies it). */
  default?: string;
  /** The only values accepted; anything else is a usage error that lists them. */
  choices?: readonly string[];
}

export type Options = Record<string, OptionSpec>;

export interface Example {
  /** One line saying what the command line does. */
  description: string;
  command: string;
}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  options: Options;
  /** Positional arguments allowed (min, max). */
  positionals?: [number, number];
  /** Environment variables the command reads. */
  environment?: { name: string; description: string }[];
  /** Paragraphs after the options: output streams, exit codes, anything a flag table cannot say. */
  notes?: string[];
  examples: Example[];
  run(args: { values: Record<string, string | boolean | string[] | undefined>; positionals: string[]; io: Io }): Promise<number>;
}

/** 130 is what a shell reports for a process ended by SIGINT; a command that stops cleanly on Ctrl-C says the same. */
export const EXIT = { ok: 0, failed: 1, usage: 2, denied: 3, interrupted: 130 } as const;

const helpOption: Options = { help: { type: 'boolean', short: 'h', description: 'Show this help and exit.' } };

/** Help is read in terminals and pasted into tickets: a fixed width keeps it the same everywhere. */
const HELP_WIDTH = 100;

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === '' ? word : `${line} ${word}`;
  }
  if (line !== '') lines.push(line);
  return lines.length ? lines : [''];
}

/** Two columns, the second wrapped under itself, as in kubectl and git help. */
function columns(rows: [string, string][]): string[] {
  const left = Math.min(32, Math.max(...rows.map(([l]) => l.length)));
  const out: string[] = [];
  for (const [l, r] of rows) {
    const text = wrap(r, HELP_WIDTH - left - 4);
    if (l.length > left) {
      out.push(`  ${l}`);
      for (const t of text) out.push(`  ${' '.repeat(left)}  ${t}`);
    } else {
      out.push(`  ${l.padEnd(left)}  ${text[0] ?? ''}`);
      for (const t of text.slice(1)) out.push(`  ${' '.repeat(left)}  ${t}`);
    }
  }
  return out;
}

function flagLabel(name: string, opt: OptionSpec): string {
  const short = opt.short ? `-${opt.short}, ` : '    ';
  const value = opt.type === 'string' ? ` ${opt.value ?? (opt.choices ? opt.choices.join('|') : 'VALUE')}` : '';
  return `${short}--${name}${value}`;
}

function flagText(opt: OptionSpec): string {
  const parts = [opt.description];
  if (opt.choices && opt.value) parts.push(`One of: ${opt.choices.join(', ')}.`);
  if (opt.multiple) parts.push('Repeatable.');
  if (opt.default !== undefined) parts.push(`(default: ${opt.default})`);
  return parts.join(' ');
}

export function helpText(command: Command): string {
  const lines = [...wrap(command.summary, HELP_WIDTH), '', 'Usage:', `  ${command.usage}`, '', 'Options:'];
  lines.push(...columns(Object.entries({ ...command.options, ...helpOption }).map(([name, opt]) => [flagLabel(name, opt), flagText(opt)])));
  if (command.environment?.length) {
    lines.push('', 'Environment:', ...columns(command.environment.map((e) => [e.name, e.description])));
  }
  for (const note of command.notes ?? []) lines.push('', ...wrap(note, HELP_WIDTH));
  if (command.examples.length) {
    lines.push('', 'Examples:');
    command.examples.forEach((e, i) => {
      if (i > 0) lines.push('');
      lines.push(...wrap(e.description, HELP_WIDTH - 4).map((l) => `  # ${l}`), `  ${e.command}`);
    });
  }
  return `${lines.join('\n')}\n`;
}

function parserOptions(options: Options): NonNullable<Parameters<typeof parseArgs>[0]>['options'] {
  return Object.fromEntries(
    Object.entries(options).map(([name, o]) => [name, { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) }]),
  );
}

/** The first flag whose value is not among its choices, as a message naming both. */
function badChoice(options: Options, values: Record<string, unknown>): string | null {
  for (const [name, opt] of Object.entries(options)) {
    if (!opt.choices) continue;
    const given = values[name];
    for (const v of Array.isArray(given) ? given : given === undefined ? [] : [given]) {
      if (typeof v === 'string' && !opt.choices.includes(v)) return `--${name} ${JSON.stringify(v)}: must be one of ${opt.choices.join(', ')}`;
    }
  }
  return null;
}

export async function runCommand(command: Command, argv: string[], io: Io): Promise<number> {
  const usageError = (message: string): number => {
    io.stderr.write(`spawngate ${command.name}: ${message}\n\nRun \`spawngate ${command.name} --help\` for its options and examples.\n`);
    return EXIT.usage;
  };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options: parserOptions({ ...command.options, ...helpOption }), allowPositionals: true, strict: true });
  } catch (err) {
    return usageError((err as Error).message);
  }
  if (parsed.values.help) {
    io.stdout.write(helpText(command));
    return EXIT.ok;
  }
  const choice = badChoice(command.options, parsed.values);
  if (choice) return usageError(choice);
  const [min, max] = command.positionals ?? [0, 0];
  if (parsed.positionals.length < min || parsed.positionals.length > max) {
    const want = min === max ? `${min}` : `${min}-${max}`;
    return usageError(`expected ${want} argument(s), got ${parsed.positionals.length}${parsed.positionals.length > max ? ` (${parsed.positionals.slice(max).map((p) => JSON.stringify(p)).join(' ')} is too many)` : ''}; usage: ${command.usage}`);
  }
  try {
    return await command.run({ values: parsed.values as Record<string, string | boolean | string[] | undefined>, positionals: parsed.positionals, io });
  } catch (err) {
    return reportError(command.name, err, io);
  }
}

/** The one table from error codes to exit codes (docs/cli.md): bad input 2, a deny 3, anything else 1. */
export function exitCodeOf(err: unknown): number {
  if (!isSpawngateError(err)) return EXIT.failed;
  if (err instanceof UsageError || err.code === 'CONFIG_INVALID' || err.code === 'CONFIG_UNREADABLE' || err.code === 'REQUEST_INVALID') return EXIT.usage;
  return err.code === 'ADMISSION_DENIED' ? EXIT.denied : EXIT.failed;
}

/** Input the user got wrong is exit 2 with every fault listed; a deny 3; anything else is exit 1. */
export function reportError(name: string, err: unknown, io: Io): number {
  if (isSpawngateError(err)) {
    io.stderr.write(`spawngate ${name}: ${err.message}\n`);
    return exitCodeOf(err);
  }
  io.stderr.write(`spawngate ${name}: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT.failed;
}

/** A request or policy input is a few KiB; the server takes at most 1 MiB (its body limit). */
export const MAX_INPUT_BYTES = 1024 * 1024;
/** How long `--input -` waits for the next byte of a pipe whose writer neither writes nor closes. */
export const STDIN_IDLE_MS = 30_000;

/**
 * A JSON input as text: a regular file or `-` (stdin), bounded in size, strict UTF-8. A FIFO or a
 * device given as FILE is refused (it could block or never end); piped stdin gives up after
 * STDIN_IDLE_MS without a byte (a terminal does not: a person there can press Ctrl-D or Ctrl-C).
 */
export async function readInputFile(path: string, io: Io, what = '--input'): Promise<string> {
  let bytes: Buffer;
  const source = path === '-' ? 'stdin' : path;
  try {
    if (path === '-') {
      const tty = (io.stdin as { isTTY?: boolean }).isTTY === true;
      bytes = await readBoundedStream(io.stdin, MAX_INPUT_BYTES, tty ? null : STDIN_IDLE_MS);
    } else {
      bytes = await readBoundedFile(path, MAX_INPUT_BYTES);
    }
  } catch (cause) {
    if (!(cause instanceof BoundedReadError)) throw cause;
    throw new UsageError(`${what}: cannot read ${source}: ${cause.message}`, { cause, details: { reason: cause.fault.reason } });
  }
  const text = strictUtf8(bytes);
  if (text === null) throw new RequestError(`${what}: ${source} is not valid UTF-8`, [{ path: '(root)', message: 'not valid UTF-8' }]);
  return text;
}

export function str(values: Record<string, unknown>, key: string): string | undefined {
  const v = values[key];
  return typeof v === 'string' ? v : undefined;
}
