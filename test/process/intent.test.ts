/**
 * Intent before creation on the process backend: the state file exists before the child does, so a
 * gateway killed between the two leaves nothing list() cannot see. Simulated by writing the intent a
 * killed gateway leaves (no pid), with and without a worker process that carries its spawn id; and a
 * create() that fails leaves nothing behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { afterAll, describe, expect, it } from 'vitest';
import { createProcessBackend } from '../../src/backends/process/index.js';
import { LABELS } from '../../src/backends/types.js';
import { BackendError } from '../../src/errors.js';
import { waitForWorker } from '../../src/sessions/readiness.js';
import { createSpawngate } from '../../src/spawngate.js';
import { testWorkerSpec } from '../helpers/worker-spec.js';

const stateDir = mkdtempSync(join(tmpdir(), 'sg-intent-'));
const owner = `intent-${randomUUID().slice(0, 8)}`;
const backend = createProcessBackend({ name: 'local', stateDir });
const children: ChildProcess[] = [];

afterAll(async () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await backend.close?.();
  await rm(stateDir, { recursive: true, force: true });
});

/** What a gateway killed right after writing its intent leaves: a state file with no pid. */
async function writeIntent(spawnId: string): Promise<void> {
  const dir = join(stateDir, spawnId);
  await mkdir(dir, { mode: 0o700 });
  const now = new Date();
  const expiresAt = new Date(now.getTime() + 600_000);
  await writeFile(
    join(dir, 'state.json'),
    JSON.stringify({
      spawnId,
      backendName: 'local',
      pid: null,
      startTime: null,
      creating: true,
      labels: { [LABELS.spawnId]: spawnId, [LABELS.owner]: owner, [LABELS.backend]: 'local', [LABELS.expiresAt]: String(Math.floor(expiresAt.getTime() / 1000)) },
      expiresAt: expiresAt.toISOString(),
      createdAt: now.toISOString(),
      deadlineAt: expiresAt.toISOString(),
      dir,
      logFile: join(dir, 'worker.log'),
      socketPath: null,
      token: randomBytes(16).toString('base64url'),
      exit: null,
    }),
    { mode: 0o600 },
  );
}

/** A stand-in worker started by the killed gateway: it carries the spawn id and has a child that inherited it. */
async function orphanProcess(spawnId: string): Promise<ChildProcess> {
  const program = `require('node:child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' }); setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['-e', program], { env: { ...process.env, SPAWNGATE_SPAWN_ID: spawnId }, detached: true, stdio: 'ignore' });
  children.push(child);
  await once(child, 'spawn');
  return child;
}

describe('process backend: intent before creation', () => {
  it('an intent whose child never started is listed, reported gone, and swept', async () => {
    const spawnId = randomUUID();
    await writeIntent(spawnId);
    const listed = await backend.list({ [LABELS.owner]: owner });
    expect(listed).toEqual([expect.objectContaining({ ref: { spawnId, backendName: 'local', nativeId: '' }, phase: 'gone' })]);
    expect(await backend.status(listed[0]!.ref)).toMatchObject({ phase: 'gone', ready: false, nativeId: '' });

    const gate = await createSpawngate({
      config: { agents: { executionBackends: { local: { type: 'process', stateDir } }, execution: { default: { backend: 'local' } } } },
      owner,
      sweepIntervalMs: 0,
      decisionLog: false,
    });
    try {
      const report = await gate.sweep();
      expect(report.removed).toEqual([expect.objectContaining({ spawnId, deleted: true })]);
    } finally {
      await gate.shutdown();
    }
    expect(existsSync(join(stateDir, spawnId))).toBe(false);
    expect(await backend.list({ [LABELS.owner]: owner })).toEqual([]);
  });

  it('an intent whose worker runs without a recorded pid is found by its spawn id, and delete stops it', async () => {
    const spawnId = randomUUID();
    await writeIntent(spawnId);
    const child = await orphanProcess(spawnId);
    const exited = once(child, 'exit');
    // The worker's own child inherited the spawn id; the worker, not its child, is the one reported.
    const [listed] = await backend.list({ [LABELS.spawnId]: spawnId });
    expect(listed).toMatchObject({ ref: { nativeId: String(child.pid) }, phase: 'running' });
    expect(await backend.status(listed!.ref)).toMatchObject({ phase: 'running', nativeId: String(child.pid), reason: null, attributes: { 'process.pid': child.pid } });

    await backend.delete(listed!.ref);
    await exited;
    expect(existsSync(join(stateDir, spawnId))).toBe(false);
    expect(await backend.status(listed!.ref)).toMatchObject({ phase: 'gone', reason: 'NotFound' });
  });

  it('a create() that cannot start its worker leaves no state dir and no process', async () => {
    const s = testWorkerSpec({ owner, backendName: 'local', egress: 'open', command: [join(stateDir, 'no-such-worker')] });
    await expect(backend.create(s)).rejects.toMatchObject({ code: 'BACKEND_FAILED', details: { reason: 'StartError' } });
    expect(readdirSync(stateDir).filter((name) => name.includes(s.spawnId))).toEqual([]);
    expect(await backend.list({ [LABELS.spawnId]: s.spawnId })).toEqual([]);
  });

  it('a worker that dies at once is a created worker whose wait fails with its exit, not a failed create', async () => {
    const s = testWorkerSpec({ owner, backendName: 'local', egress: 'open', command: [process.execPath, '-e', 'console.error("dying at once"); process.exit(5)'] });
    const ref = await backend.create(s);
    const err = await waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ code: 'BACKEND_FAILED', details: { reason: 'Error', exitCode: 5, logTail: ['dying at once'] } });
    await backend.delete(ref);
    expect(existsSync(join(stateDir, s.spawnId))).toBe(false);
  });

  it('ended(): the exit of a child it spawned, with its reason, without polling; null once aborted, and for a worker it did not start', async () => {
    const s = testWorkerSpec({ owner, backendName: 'local', egress: 'open', command: [process.execPath, '-e', 'setTimeout(() => process.exit(4), 300)'] });
    const ref = await backend.create(s);
    const aborted = new AbortController();
    const early = backend.ended?.(ref, aborted.signal);
    aborted.abort();
    expect(await early).toBeNull();
    const status = await backend.ended?.(ref, new AbortController().signal);
    expect(status).toMatchObject({ phase: 'failed', exitCode: 4, reason: 'Error' });
    // Another backend object on the same folder (a restarted gateway) has no child to watch: the caller polls.
    expect(createProcessBackend({ name: 'local', stateDir }).ended?.(ref, new AbortController().signal)).toBeNull();
    await backend.delete(ref);
  });
});
