/** `spawngate serve`: flags, the token rule, and a real process that shuts down gracefully on SIGTERM. */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { call, eventually, openStream, processBackend, readAll, spawnRequest } from './helpers.js';

// The installed bin (dist/, built by `npm test` before the suites), as an operator runs it.
const bin = fileURLToPath(new URL('../../bin/spawngate.js', import.meta.url));

async function serveInProcess(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> {
  const err = new PassThrough();
  let stderr = '';
  err.on('data', (c: Buffer) => (stderr += c.toString()));
  const code = await main(['serve', ...args], { stdout: new PassThrough(), stderr: err, stdin: Readable.from(['']), env });
  return { code, stderr };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('spawngate serve', () => {
  const backend = processBackend();
  afterAll(() => backend.remove());

  it('refuses bad flags and TCP without SPAWNGATE_API_TOKEN (exit 2) before starting anything', async () => {
    const noToken = await serveInProcess(['--port', '0'], {});
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toContain('SPAWNGATE_API_TOKEN');
    expect((await serveInProcess(['--port', '70000'], { SPAWNGATE_API_TOKEN: 't' })).code).toBe(2);
    expect((await serveInProcess(['--socket', join(backend.stateDir, 's.sock'), '--port', '1'], {})).code).toBe(2);
    expect((await serveInProcess(['--port', '0'], { SPAWNGATE_API_TOKEN: 't', SPAWNGATE_LOG_LEVEL: 'loud' })).code).toBe(2);
  });

  it('prints a listening line, serves, and on SIGTERM ends open turns and closes its workers', async () => {
    const token = randomBytes(24).toString('base64url');
    const configFile = join(backend.stateDir, 'config.json');
    writeFileSync(configFile, JSON.stringify(backend.config));
    // Transform, not just strip: some sources use TypeScript-only syntax (parameter properties).
    const child = spawn(process.execPath, [bin, 'serve', '--config', configFile, '--port', '0', '--host', '127.0.0.1'], {
      env: { ...process.env, SPAWNGATE_API_TOKEN: token, SPAWNGATE_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const stdout = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    try {
      const first = await stdout.next();
      expect(first.done, stderr).toBe(false);
      const listening = JSON.parse(first.value as string) as { event: string; url: string; pid: number; bundleRevision: string | null };
      expect(listening).toMatchObject({ event: 'listening', url: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+$/) as unknown, pid: child.pid });
      expect(listening.bundleRevision).toEqual(expect.any(String));
      const target = { url: listening.url };

      expect((await call(target, 'GET', '/healthz')).status).toBe(200);
      expect((await call(target, 'GET', '/v1/spawns')).status).toBe(401);
      const created = await call(target, 'POST', '/v1/spawns', { token, body: spawnRequest('serve test') });
      expect(created.status, created.text).toBe(201);
      const { spawnId, nativeId } = created.json as { spawnId: string; nativeId: string };
      const workerPid = Number(nativeId);
      expect(alive(workerPid)).toBe(true);

      const stream = await openStream(target, `/v1/spawns/${spawnId}/turns`, { message: 'slow 400' }, token);
      for (let deltas = 0; deltas < 2; ) {
        const next = await stream.lines.next();
        if (next.done) throw new Error('turn ended early');
        if (next.value['type'] === 'agent.message.delta') deltas++;
      }
      child.kill('SIGTERM');
      const rest = await readAll(stream);
      expect(rest.at(-1)).toMatchObject({ type: 'turn.cancelled' });
      expect(await exited, stderr).toBe(0);
      const stopped = await stdout.next();
      expect(JSON.parse(stopped.value as string)).toEqual({ event: 'stopped', signal: 'SIGTERM' });
      await eventually(() => Promise.resolve(!alive(workerPid)), 10_000, 'the worker process to be gone');
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
