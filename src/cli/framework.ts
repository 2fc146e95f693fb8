import { parseArgs, type ParseArgsConfig } from 'node:util';
import { isSpawngateError, UsageError } from '../errors.js';

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
  env: NodeJS.ProcessEnv;
}

export type Options = NonNullable<ParseArgsConfig['options']>;

export interface Command {
  name: string;
  summary: string;
  usage: string;
  options: Options;
  /** Positional arguments allowed (min, max). */
  positionals?: [number, number];
  run(args: { values: Record<string, string | boolean | string[] | undefined>; positionals: string[]; io: Io }): Promise<number>;
}

export const EXIT = { ok: 0, failed: 1, usage: 2, denied: 3 } as const;

const helpOption: Options = { help: { type: 'boolean', short: 'h' } };

export function helpText(command: Command): string {
  const lines = [`${command.summary}`, '', `Usage: ${command.usage}`];
  const entries = Object.entries(command.options);
  if (entries.length) {
    lines.push('', 'Options:');
    for (const [name, opt] of entries) {
      const short = opt.short ? `-${opt.short}, ` : '    ';
      const value = opt.type === 'string' ? ` <${name === 'input' || name === 'config' || name.endsWith('file') ? 'file' : 'value'}>` : '';
      lines.push(`  ${short}--${name}${value}`);
    }
  }
  lines.push('  -h, --help');
  return `${lines.join('\n')}\n`;
}

export async function runCommand(command: Command, argv: string[], io: Io): Promise<number> {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options: { ...command.options, ...helpOption }, allowPositionals: true, strict: true });
  } catch (err) {
    io.stderr.write(`spawngate ${command.name}: ${(err as Error).message}\n\n${helpText(command)}`);
    return EXIT.usage;
  }
  if (parsed.values.help) {
    io.stdout.write(helpText(command));
    return EXIT.ok;
  }
  const [min, max] = command.positionals ?? [0, 0];
  if (parsed.positionals.length < min || parsed.positionals.length > max) {
    const want = min === max ? `${min}` : `${min}-${max}`;
    io.stderr.write(`spawngate ${command.name}: expected ${want} argument(s), got ${parsed.positionals.length}\n\n${helpText(command)}`);
    return EXIT.usage;
  }
  try {
    return await command.run({ values: parsed.values as Record<string, string | boolean | string[] | undefined>, positionals: parsed.positionals, io });
  } catch (err) {
    return reportError(command.name, err, io);
  }
}

/** Input the user got wrong is exit 2 with every fault listed; anything else is exit 1. */
export function reportError(name: string, err: unknown, io: Io): number {
  if (isSpawngateError(err)) {
    io.stderr.write(`spawngate ${name}: ${err.message}\n`);
    const usage =
      err instanceof UsageError || err.code === 'CONFIG_INVALID' || err.code === 'CONFIG_UNREADABLE' || err.code === 'REQUEST_INVALID';
    return usage ? EXIT.usage : EXIT.failed;
  }
  io.stderr.write(`spawngate ${name}: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT.failed;
}

export async function readInputFile(path: string, io: Io): Promise<string> {
  if (path === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of io.stdin) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
    return Buffer.concat(chunks).toString('utf8');
  }
  const { readFile } = await import('node:fs/promises');
  try {
    return await readFile(path, 'utf8');
  } catch (cause) {
    throw new UsageError(`cannot read ${path}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`, { cause });
  }
}

export function str(values: Record<string, unknown>, key: string): string | undefined {
  const v = values[key];
  return typeof v === 'string' ? v : undefined;
}
