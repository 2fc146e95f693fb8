import type { SpawnProgress, WorkerHandle } from '../sessions/lifecycle.js';
import type { Io } from './framework.js';

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

function describe(p: SpawnProgress): string {
  switch (p.stage) {
    case 'admission':
      return 'admission: evaluating policy';
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

/**
 * Spawn progress for people and for programs: a spinner line on a TTY, plain lines on stderr
 * otherwise (logs stay readable), JSON lines on stdout with --json.
 */
export function createProgress(io: Io, json: boolean) {
  const tty = !json && (io.stderr as { isTTY?: boolean }).isTTY === true;
  let text = '';
  let frame = 0;
  let timer: NodeJS.Timeout | null = null;
  const draw = () => io.stderr.write(`\r\x1b[2K${FRAMES[frame++ % FRAMES.length]} ${text}`);
  const stop = () => {
    if (timer) clearInterval(timer);
    timer = null;
    if (tty) io.stderr.write('\r\x1b[2K');
  };
  return {
    update(p: SpawnProgress) {
      if (json) {
        io.stdout.write(`${JSON.stringify({ event: 'progress', ...p })}\n`);
        return;
      }
      text = describe(p);
      if (!tty) {
        io.stderr.write(`${text}\n`);
        return;
      }
      timer ??= setInterval(draw, 80);
      draw();
    },
    done(handle: WorkerHandle) {
      stop();
      if (json) io.stdout.write(`${JSON.stringify({ event: 'spawned', spawnId: handle.spawnId, backend: handle.backend, profile: handle.profile, nativeId: handle.nativeId })}\n`);
      else io.stderr.write(`✔ ${handle.backend}/${handle.profile} worker ${handle.nativeId} ready (spawn ${handle.spawnId})\n`);
    },
    fail(err: unknown) {
      stop();
      if (!json) io.stderr.write(`✖ ${(err as Error).message}\n`);
    },
  };
}
