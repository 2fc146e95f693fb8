import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { Readable, Writable } from 'node:stream';
import { lineSplitter } from './log-buffer.js';

export interface AgentExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the process could not be started at all (ENOENT, EACCES…). */
  spawnError: string | null;
}

export interface AgentProcessOptions {
  command: string;
  args: readonly string[];
  cwd: string;
  env: Record<string, string>;
  onStderrLine: (line: string) => void;
}

export interface AgentProcess {
  readonly pid: number | null;
  /** Web streams for ndJsonStream: what the worker writes to the agent's stdin, and reads from its stdout. */
  readonly stdin: WritableStream<Uint8Array>;
  readonly stdout: ReadableStream<Uint8Array>;
  /** Resolves once, when the process has exited (or failed to start). */
  readonly exited: Promise<AgentExit>;
  readonly exit: AgentExit | null;
  /**
   * SIGTERM to the whole process group, then SIGKILL once the leader exits or `graceMs` passes.
   * Resolves with the exit, or null if the leader was still not reaped after another `graceMs`.
   */
  terminate(graceMs: number): Promise<AgentExit | null>;
}

/**
 * Spawns the ACP agent in its own process group (detached) so that terminating it also reaches the
 * helpers it started (language servers, shells), which would otherwise outlive the worker.
 */
export function spawnAgentProcess(options: AgentProcessOptions): AgentProcess {
  const child: ChildProcessWithoutNullStreams = spawn(options.command, [...options.args], {
    cwd: options.cwd,
    env: options.env,
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });

  let exit: AgentExit | null = null;
  let resolveExited!: (value: AgentExit) => void;
  const exited = new Promise<AgentExit>((resolve) => {
    resolveExited = resolve;
  });
  const settle = (value: AgentExit): void => {
    if (exit) return;
    exit = value;
    resolveExited(value);
  };
  child.once('exit', (code, signal) => settle({ code, signal, spawnError: null }));
  child.once('error', (err) => {
    // 'error' also fires when a kill() fails on a live process; only a process that never got a pid failed to start.
    if (child.pid === undefined) settle({ code: null, signal: null, spawnError: err.message });
  });

  const stderr = lineSplitter(options.onStderrLine);
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => stderr.push(chunk));
  child.stderr.once('end', () => stderr.end());
  // A write to the stdin of an agent that already died raises EPIPE; the exit path reports the death.
  child.stdin.on('error', () => {});

  const signalGroup = (signal: NodeJS.Signals): void => {
    const pid = child.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // ESRCH: the group is already gone.
    }
  };

  return {
    get pid() {
      return child.pid ?? null;
    },
    stdin: Writable.toWeb(child.stdin) as WritableStream<Uint8Array>,
    stdout: Readable.toWeb(child.stdout) as ReadableStream<Uint8Array>,
    exited,
    get exit() {
      return exit;
    },
    async terminate(graceMs: number): Promise<AgentExit | null> {
      if (!child.stdin.destroyed) child.stdin.end();
      signalGroup('SIGTERM');
      await within(exited, graceMs);
      // Also after a clean leader exit: stragglers in the group must not outlive the worker.
      signalGroup('SIGKILL');
      // SIGKILL cannot be refused, but a process stuck in uninterruptible I/O still takes a moment to be reaped.
      return within(exited, graceMs);
    },
  };
}

/** The promise's value, or null when it has not settled within `ms`. */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
