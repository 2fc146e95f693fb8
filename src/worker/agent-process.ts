import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { closeSync, constants, openSync, readlinkSync, realpathSync, rmSync } from 'node:fs';
import { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { ByteSink, ByteSource } from './acp-client.js';
import { lineSplitter } from './log-buffer.js';
import { procStatFields } from '../procfs.js';

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
  /** What the worker writes to the agent's stdin, and reads from its stdout (the ACP client's side of them). */
  readonly stdin: ByteSink;
  readonly stdout: ByteSource;
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
  const outcome = settleOnce();
  child.once('exit', (code, signal) => outcome.settle({ code, signal, spawnError: null }));
  child.once('error', (err) => {
    // 'error' also fires when a kill() fails on a live process; only a process that never got a pid failed to start.
    if (child.pid === undefined) outcome.settle({ code: null, signal: null, spawnError: err.message });
  });
  return agentProcessOf(() => child.pid ?? null, child.stdin, child.stdout, child.stderr, outcome, options.onStderrLine);
}

/** The agent's three stdio FIFOs as the prelaunch script (backends/process/isolation.ts) left them, and its pid. */
export interface PrelaunchedAgentOptions {
  pid: number;
  /** The folder holding the FIFOs `in`, `out` and `err`. */
  dir: string;
  onStderrLine: (line: string) => void;
}

/**
 * Inherited from the prelaunch script: the read-write end (fd) that kept each FIFO (name, in the
 * prelaunch folder) open until the worker opened its own.
 */
const PRELAUNCH = [
  { fd: 6, name: 'in' },
  { fd: 7, name: 'out' },
  { fd: 8, name: 'err' },
] as const;

/**
 * Takes over an agent that the process backend started beside this worker (the worker's parent
 * shell forked it, then became the worker): its stdio are FIFOs, opened here by path, and the
 * inherited keep-open descriptors are closed, so the agent's stdout ends when the agent does and
 * its stdin ends when this worker stops writing or dies. Node cannot wait for a child it did not
 * spawn, so the exit is read from /proc/<pid>/stat (the exit code of a zombie, field 52) on
 * SIGCHLD, at the end of its stdout, and every second; the zombie is reaped when the worker exits.
 * Throws when the FIFOs cannot be opened (the caller stops the agent and starts its own).
 */
export function attachAgentProcess(options: PrelaunchedAgentOptions): AgentProcess {
  const { pid, dir } = options;
  const open = (name: string, flags: number): number => openSync(join(dir, name), flags | constants.O_NONBLOCK);
  if (!isChild(pid) || prelaunchFdsIn(dir).length !== PRELAUNCH.length) throw new Error(`no agent of this worker's prelaunch at pid ${pid}`);
  // A reader of the agent's stdin (the agent itself) exists unless it died: then ENXIO, and the
  // inherited read-write end serves, whose writes go nowhere while the exit is reported.
  let stdinFd: number;
  let keepStdinFd = false;
  try {
    stdinFd = open(PRELAUNCH[0].name, constants.O_WRONLY);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENXIO') throw err;
    stdinFd = PRELAUNCH[0].fd;
    keepStdinFd = true;
  }
  const stdoutFd = open(PRELAUNCH[1].name, constants.O_RDONLY);
  const stderrFd = open(PRELAUNCH[2].name, constants.O_RDONLY);
  for (const { fd, name } of PRELAUNCH) {
    if (!(keepStdinFd && fd === stdinFd)) closeSync(fd);
    rmSync(join(dir, name), { force: true });
  }

  const stdin = new Socket({ fd: stdinFd, readable: false, writable: true });
  const stdout = new Socket({ fd: stdoutFd, readable: true, writable: false });
  const stderr = new Socket({ fd: stderrFd, readable: true, writable: false });
  const outcome = settleOnce();
  const check = (): void => {
    const exit = zombieExit(pid);
    if (exit) outcome.settle(exit);
  };
  // A SIGCHLD from any child of the worker (git, a fallback agent) is only a reason to look.
  process.on('SIGCHLD', check);
  stdout.once('end', check);
  const poll = setInterval(check, 1000).unref();
  void outcome.exited.then(() => {
    process.off('SIGCHLD', check);
    clearInterval(poll);
  });
  check();
  return agentProcessOf(() => pid, stdin, stdout, stderr, outcome, options.onStderrLine);
}

/**
 * The keep-open ends this worker holds of the prelaunch script's FIFOs in `dir`, by path: Node's
 * own pipes are FIFOs too, and an environment that merely names a prelaunch must not pass for one.
 */
function prelaunchFdsIn(dir: string): number[] {
  let real: string;
  try {
    real = realpathSync(dir);
  } catch {
    return [];
  }
  return PRELAUNCH.filter(({ fd, name }) => {
    try {
      // The kernel names the file by its resolved path.
      return readlinkSync(`/proc/self/fd/${fd}`).replace(/ \(deleted\)$/, '') === join(real, name);
    } catch {
      return false;
    }
  }).map(({ fd }) => fd);
}

/** Whether `pid` is a child of this process (what the prelaunch script forked before it became this worker). */
export function isChild(pid: number): boolean {
  return Number(procStatFields(pid)?.[1]) === process.pid;
}

/** Closes the keep-open FIFO ends the prelaunch script left this worker, and only those (prelaunchFdsIn). */
export function closePrelaunchFds(dir: string): void {
  for (const fd of prelaunchFdsIn(dir)) {
    try {
      closeSync(fd);
    } catch {
      // Closed meanwhile.
    }
  }
}

const SIGNAL_NAMES = new Map(Object.entries(osConstants.signals).map(([name, n]) => [n, name as NodeJS.Signals]));

/** The exit of `pid` once it is a zombie (waitpid's status in /proc/<pid>/stat field 52); null while it runs. */
export function zombieExit(pid: number): AgentExit | null {
  const fields = procStatFields(pid);
  // Reaped already (it was not this worker's child after all): gone, without a code.
  if (!fields) return { code: null, signal: null, spawnError: null };
  if (fields[0] !== 'Z' && fields[0] !== 'X') return null;
  const status = Number(fields[49]);
  if (!Number.isInteger(status)) return { code: null, signal: null, spawnError: null };
  const signal = status & 0x7f;
  if (signal === 0) return { code: (status >> 8) & 0xff, signal: null, spawnError: null };
  return { code: null, signal: SIGNAL_NAMES.get(signal) ?? null, spawnError: null };
}

interface Outcome {
  readonly exited: Promise<AgentExit>;
  readonly exit: AgentExit | null;
  settle(value: AgentExit): void;
}

function settleOnce(): Outcome {
  let exit: AgentExit | null = null;
  let resolveExited!: (value: AgentExit) => void;
  const exited = new Promise<AgentExit>((resolve) => {
    resolveExited = resolve;
  });
  return {
    exited,
    get exit() {
      return exit;
    },
    settle(value) {
      if (exit) return;
      exit = value;
      resolveExited(value);
    },
  };
}

// The agent's pipes as the ACP client uses them, straight on the Node streams. Readable.toWeb and
// Writable.toWeb were what the client had before: their first use loads Node's web streams, about
// 8 ms of a cold worker's start, spent before its first answer.

function sourceOf(stream: Readable): ByteSource {
  return {
    getReader() {
      const chunks = stream[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
      return {
        async read() {
          const next = await chunks.next();
          return next.done ? { done: true } : { done: false, value: next.value };
        },
        cancel() {
          stream.destroy();
          return Promise.resolve();
        },
      };
    },
  };
}

function sinkOf(stream: Writable): ByteSink {
  return {
    getWriter() {
      return {
        write: (chunk) => new Promise<void>((resolve, reject) => stream.write(chunk, (err) => (err ? reject(err) : resolve()))),
      };
    },
  };
}

function agentProcessOf(pidOf: () => number | null, stdin: Writable, stdout: Readable, stderr: Readable, outcome: Outcome, onStderrLine: (line: string) => void): AgentProcess {
  const lines = lineSplitter(onStderrLine);
  stderr.setEncoding('utf8');
  stderr.on('data', (chunk: string) => lines.push(chunk));
  stderr.once('end', () => lines.end());
  // A write to the stdin of an agent that already died raises EPIPE; the exit path reports the death.
  stdin.on('error', () => {});
  stderr.on('error', () => {});

  const signalGroup = (signal: NodeJS.Signals): void => {
    const pid = pidOf();
    if (pid === null) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // ESRCH: the group is already gone.
    }
  };

  return {
    get pid() {
      return pidOf();
    },
    stdin: sinkOf(stdin),
    stdout: sourceOf(stdout),
    exited: outcome.exited,
    get exit() {
      return outcome.exit;
    },
    async terminate(graceMs: number): Promise<AgentExit | null> {
      if (!stdin.destroyed) stdin.end();
      signalGroup('SIGTERM');
      await within(outcome.exited, graceMs);
      // Also after a clean leader exit: stragglers in the group must not outlive the worker.
      signalGroup('SIGKILL');
      // SIGKILL cannot be refused, but a process stuck in uninterruptible I/O still takes a moment to be reaped.
      return within(outcome.exited, graceMs);
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
