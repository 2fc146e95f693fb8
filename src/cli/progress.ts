import type { SpawnProgress, WorkerHandle } from '../sessions/lifecycle.js';
import type { Io } from './framework.js';

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/** A spawn handed to `spawngate serve`, which reports nothing until the worker is ready. */
export type CliProgress = SpawnProgress | { stage: 'requested'; server: string };

function describe(p: CliProgress): string {
  switch (p.stage) {
    case 'requested':
      return `spawning through spawngate serve at ${p.server}; waiting until the worker is ready`;
    case 'admission':
      return 'admission: evaluating policy';
    case 'queued':
      return `waiting for a free slot: ${p.position === 1 ? 'next in the queue' : `number ${p.position} in the queue`}`;
    case 'admitted':
      return `admitted: ${p.backend}/${p.profile}, egress ${p.egress}, ttl ${p.ttlSeconds}s`;
    case 'creating':
      return `creating worker on ${p.backend}/${p.profile}`;
    case 'created':
      return `created ${p.nativeId}; waiting until ready`;
    case 'waiting': {
      const why = [p.reason, p.message].filter((x): x is string => x !== null && x !== '').join(': ');
      return `waiting for ${p.nativeId}: ${p.phase}${why ? ` (${why})` : ''}`;
    }
    case 'ready':
      return `ready ${p.nativeId} in ${Math.round(p.readyMs)} ms`;
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

export interface ProgressOptions {
  /** JSON lines on stderr instead of text. */
  json: boolean;
  /** Milliseconds on a monotonic clock; injectable so elapsed times can be checked. */
  now?: () => number;
}

/**
 * Spawn progress, always on stderr so that stdout carries only what the worker said (and, with
 * --json, the records a program needs). Each stage is a line with the time since the spawn began;
 * on a terminal a spinner under them keeps counting while a stage lasts. With --json each stage is
 * {"event":"progress","stage":…,"elapsedMs":…}.
 */
export function createProgress(io: Io, options: ProgressOptions) {
  const { json } = options;
  const now = options.now ?? (() => performance.now());
  const started = now();
  const tty = !json && (io.stderr as { isTTY?: boolean }).isTTY === true;
  const width = (io.stderr as { columns?: number }).columns ?? 100;
  let text = '';
  let frame = 0;
  let timer: NodeJS.Timeout | null = null;
  const elapsed = () => now() - started;
  const draw = () => {
    const line = `${FRAMES[frame++ % FRAMES.length]} ${text} ${seconds(elapsed())}`;
    io.stderr.write(`\r\x1b[2K${line.length > width - 1 ? `${line.slice(0, width - 2)}…` : line}`);
  };
  const stop = () => {
    if (timer) clearInterval(timer);
    timer = null;
    if (tty) io.stderr.write('\r\x1b[2K');
  };
  return {
    update(p: CliProgress) {
      const ms = elapsed();
      if (json) {
        io.stderr.write(`${JSON.stringify({ event: 'progress', ...p, elapsedMs: Math.round(ms) })}\n`);
        return;
      }
      text = describe(p);
      if (tty) io.stderr.write('\r\x1b[2K');
      io.stderr.write(`[${seconds(ms).padStart(6)}] ${text}\n`);
      if (!tty) return;
      // A person watching a slow start sees the clock run; the spinner line is erased before anything else is written.
      timer ??= setInterval(draw, 80);
      timer.unref();
      draw();
    },
    /** The worker is ready: with --json the `spawned` record goes to stdout, the one progress line a program reading stdout needs. */
    done(handle: Pick<WorkerHandle, 'spawnId' | 'backend' | 'profile' | 'nativeId'>, extra: Record<string, unknown> = {}) {
      stop();
      const ms = Math.round(elapsed());
      if (json) io.stdout.write(`${JSON.stringify({ event: 'spawned', spawnId: handle.spawnId, backend: handle.backend, profile: handle.profile, nativeId: handle.nativeId, ...extra, elapsedMs: ms })}\n`);
      else io.stderr.write(`✔ ${handle.backend}/${handle.profile} worker ${handle.nativeId} ready after ${seconds(ms)} (spawn ${handle.spawnId})\n`);
    },
    /** The spawn ended without a worker; `err` is said on stderr unless the caller reports it itself. */
    fail(err?: Error) {
      stop();
      if (!json && err !== undefined) io.stderr.write(`✖ ${err.message} (after ${seconds(elapsed())})\n`);
    },
  };
}
