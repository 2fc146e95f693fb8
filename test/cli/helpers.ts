import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { main } from '../../src/cli/main.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI in-process with captured streams — the same `main` that bin/spawngate.js calls. */
export async function cli(args: string[], stdin: string | NodeJS.ReadableStream = '', env: NodeJS.ProcessEnv = process.env): Promise<CliResult> {
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = '';
  let stderr = '';
  out.on('data', (c: Buffer) => (stdout += c.toString()));
  err.on('data', (c: Buffer) => (stderr += c.toString()));
  const code = await main(args, { stdout: out, stderr: err, stdin: typeof stdin === 'string' ? Readable.from([stdin]) : stdin, env });
  return { code, stdout, stderr };
}

export const binPath = fileURLToPath(new URL('../../bin/spawngate.js', import.meta.url));
const root = fileURLToPath(new URL('../../', import.meta.url));

/** A running bin/spawngate.js (the built dist/, as an operator runs it), its output collected as it comes. */
export interface RunningBin {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves when stdout (or stderr) matches, rejects when the process exits first or after `timeoutMs`. */
  waitFor(pattern: RegExp, options?: { stream?: 'stdout' | 'stderr'; timeoutMs?: number }): Promise<void>;
  /** The exit code (or 128 + signal number, as a shell reports it) and the signal that ended it, if one did. */
  exited: Promise<CliResult & { signal: NodeJS.Signals | null }>;
}

const SIGNALS: Record<string, number> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

export function startBin(args: string[], env: NodeJS.ProcessEnv = process.env): RunningBin {
  const child = spawn(process.execPath, [binPath, ...args], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const listeners = new Set<() => void>();
  const notify = () => {
    for (const l of listeners) l();
  };
  child.stdout?.on('data', (c: Buffer) => {
    stdout += c.toString();
    notify();
  });
  child.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString();
    notify();
  });
  const exited = new Promise<CliResult & { signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => {
      notify();
      resolve({ code: code ?? 128 + (SIGNALS[signal ?? ''] ?? 0), stdout, stderr, signal });
    }),
  );
  let done = false;
  void exited.then(() => (done = true));
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    waitFor(pattern, { stream = 'stdout', timeoutMs = 30_000 } = {}) {
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => finish(new Error(`no ${pattern} on ${stream} within ${timeoutMs} ms; stdout:\n${stdout}\nstderr:\n${stderr}`)), timeoutMs);
        const check = () => {
          if (pattern.test(stream === 'stdout' ? stdout : stderr)) finish(null);
          else if (done || child.exitCode !== null || child.signalCode !== null) finish(new Error(`exited before ${pattern} on ${stream}; stdout:\n${stdout}\nstderr:\n${stderr}`));
        };
        function finish(err: Error | null): void {
          clearTimeout(timer);
          listeners.delete(check);
          if (err) reject(err);
          else resolve();
        }
        listeners.add(check);
        check();
      });
    },
  };
}

/** Runs bin/spawngate.js to its end. */
export async function bin(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<CliResult> {
  const { code, stdout, stderr } = await startBin(args, env).exited;
  return { code, stdout, stderr };
}
