import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { createWorkerClient, waitForHealthy } from '../../src/protocol/client.js';
import type { WorkerClient } from '../../src/protocol/client.js';
import { ConfigError } from '../../src/errors.js';
import { builtinAgents } from '../../src/agents/index.js';
import type { WorkerEvent } from '../../src/protocol/events.js';
import { parseListen, workerBinCommand, workerOptionsFromEnv } from '../../src/worker/main.js';
import { WORKER_EXIT_DEADLINE } from '../../src/protocol/events.js';
import { bounded, eventually, fixtureAgent, isAlive, newToken, spawnWorkerBin as spawnWorker, repoRoot, tempDir, workerBin, workerBundle } from './helpers.js';

const execFileAsync = promisify(execFile);

const fixtureCommand = JSON.stringify([process.execPath, fixtureAgent]);

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('worker environment', () => {
  it('parses SPAWNGATE_LISTEN forms', () => {
    expect(parseListen('8080')).toEqual({ port: 8080, host: '127.0.0.1' });
    expect(parseListen('0.0.0.0:9000')).toEqual({ port: 9000, host: '0.0.0.0' });
    expect(parseListen('[::1]:9000')).toEqual({ port: 9000, host: '::1' });
    expect(parseListen('unix:/run/w.sock')).toEqual({ socketPath: '/run/w.sock' });
    expect(parseListen(undefined)).toEqual({ port: 0, host: '127.0.0.1' });
    expect(parseListen('70000')).toMatchObject({ path: 'SPAWNGATE_LISTEN' });
    expect(parseListen('unix:')).toMatchObject({ path: 'SPAWNGATE_LISTEN' });
    expect(parseListen('host:port')).toMatchObject({ path: 'SPAWNGATE_LISTEN' });
  });

  it('defaults to the built-in echo agent', () => {
    const options = workerOptionsFromEnv({ SPAWNGATE_WORKER_TOKEN: 't0k' });
    expect(options.agentId).toBe('echo');
    expect([options.agentCommand, ...options.agentArgs]).toEqual(builtinAgents['echo']?.command);
  });

  it('reads an explicit agent command, cwd and cancel grace', () => {
    const options = workerOptionsFromEnv({
      SPAWNGATE_WORKER_TOKEN: 't0k',
      SPAWNGATE_AGENT_ID: 'codex',
      SPAWNGATE_AGENT_COMMAND: '["npx","codex-acp","--flag"]',
      SPAWNGATE_LISTEN: 'unix:/tmp/w.sock',
      SPAWNGATE_WORKER_CWD: '/workspace',
      SPAWNGATE_CANCEL_GRACE_MS: '2500',
    });
    expect(options).toMatchObject({
      agentId: 'codex',
      agentCommand: 'npx',
      agentArgs: ['codex-acp', '--flag'],
      listen: { socketPath: '/tmp/w.sock' },
      cwd: '/workspace',
      cancelGraceMs: 2500,
    });
  });

  it('reports every bad variable by name', () => {
    const err = configError(() =>
      workerOptionsFromEnv({ SPAWNGATE_AGENT_ID: 'codex', SPAWNGATE_LISTEN: 'nope', SPAWNGATE_CANCEL_GRACE_MS: '-1' }),
    );
    expect(err.issues.map((i) => i.path).sort()).toEqual(['SPAWNGATE_AGENT_COMMAND', 'SPAWNGATE_CANCEL_GRACE_MS', 'SPAWNGATE_LISTEN', 'SPAWNGATE_WORKER_TOKEN']);
    const badCommand = configError(() => workerOptionsFromEnv({ SPAWNGATE_WORKER_TOKEN: 't', SPAWNGATE_AGENT_COMMAND: '"node agent.js"' }));
    expect(badCommand.issues).toEqual([expect.objectContaining({ path: 'SPAWNGATE_AGENT_COMMAND' })]);
  });

  it('points workerBinCommand at the bin entry next to main', () => {
    expect(workerBinCommand()).toEqual([process.execPath, workerBin]);
  });

  it('once built, points workerBinCommand at the bundle, and at bin.js where only tsc ran', async () => {
    const built = join(repoRoot, 'dist/worker/main.js');
    if (!existsSync(built) || !existsSync(workerBundle)) throw new Error('dist/ is not built: run `npm run build` first');
    const argvOf = async (mainJs: string) => {
      const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', `const m = await import(${JSON.stringify(pathToFileURL(mainJs).href)}); console.log(JSON.stringify(m.workerBinCommand()));`]);
      return JSON.parse(stdout) as string[];
    };
    expect(await argvOf(built)).toEqual([process.execPath, workerBundle]);
    // A copy of dist/ without the bundle folder, below node_modules so its imports still resolve.
    await mkdir(join(repoRoot, 'node_modules/.cache'), { recursive: true });
    const dir = await mkdtemp(join(repoRoot, 'node_modules/.cache/spawngate-dist-'));
    try {
      const bundleDir = dirname(workerBundle);
      await cp(join(repoRoot, 'dist'), join(dir, 'dist'), { recursive: true, filter: (source) => source !== bundleDir });
      expect(await argvOf(join(dir, 'dist/worker/main.js'))).toEqual([process.execPath, join(dir, 'dist/worker/bin.js')]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** The `message` of every line the worker logged itself (its stderr also carries the agent's lines). */
function workerLogMessages(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as { source?: string; message?: string })
    .filter((line) => line.source === 'worker')
    .map((line) => line.message ?? '');
}

function clientFor(listening: { url?: string; socketPath?: string }, token: string): WorkerClient {
  return listening.url ? createWorkerClient({ baseUrl: listening.url, token }) : createWorkerClient({ socketPath: listening.socketPath, token });
}

// Generous: each test starts Node twice (worker, agent), which a loaded 2-core machine does slowly.
// The sources run under Node's type stripping; the bundle is what a built install starts. `npm test`
// builds before the suites, so in CI a missing bundle fails here instead of being skipped.
const entries = [
  { entry: 'node src/worker/bin.ts', script: workerBin },
  { entry: 'node dist/worker/bundle/worker.js', script: workerBundle },
];

describe.each(entries)('worker process ($entry)', { timeout: 120_000 }, ({ script }) => {
  beforeAll(() => {
    if (!existsSync(script)) throw new Error(`${script} does not exist: run \`npm run build\` first`);
  });
  const spawnWorkerBin = (env: Record<string, string>) => spawnWorker(env, script);

  it('stops itself at SPAWNGATE_DEADLINE: stops the agent, then exits with status 124', async () => {
    // The deadline comes from the wall clock, so whether it falls before or after the worker is ready
    // depends on the machine's speed; nothing below depends on which. The turn that is open at the
    // deadline is driven on a fake clock in deadline.test.ts.
    const deadline = Math.floor(Date.now() / 1000) + 2;
    const worker = spawnWorkerBin({
      SPAWNGATE_WORKER_TOKEN: newToken(),
      SPAWNGATE_AGENT_ID: 'fixture',
      SPAWNGATE_AGENT_COMMAND: fixtureCommand,
      SPAWNGATE_LISTEN: '127.0.0.1:0',
      SPAWNGATE_DEADLINE: String(deadline),
    });
    try {
      expect(await bounded(worker.exited, 60_000, 'worker exit')).toEqual({ code: WORKER_EXIT_DEADLINE, signal: null });
      const own = workerLogMessages(worker.stderr());
      const reached = own.findIndex((m) => m.startsWith('deadline reached'));
      expect(own[reached], worker.stderr()).toContain(new Date(deadline * 1000).toISOString());
      // The worker waits for its agent to be gone before it reports this and exits.
      expect(own.findIndex((m) => m.startsWith('agent stopped'))).toBeGreaterThan(reached);
    } finally {
      worker.child.kill('SIGKILL');
    }
  });

  it('refuses a malformed SPAWNGATE_DEADLINE with exit status 2, naming the variable', async () => {
    const worker = spawnWorkerBin({ SPAWNGATE_WORKER_TOKEN: newToken(), SPAWNGATE_LISTEN: '0', SPAWNGATE_DEADLINE: 'tomorrow' });
    expect(await bounded(worker.exited, 60_000, 'worker exit')).toEqual({ code: 2, signal: null });
    expect(worker.stderr()).toContain('SPAWNGATE_DEADLINE');
  });

  it('stops gracefully on SIGTERM: cancels the open turn, kills the agent, exits 0', async () => {
    const token = newToken();
    const dir = tempDir();
    const worker = spawnWorkerBin({
      SPAWNGATE_WORKER_TOKEN: token,
      SPAWNGATE_AGENT_ID: 'fixture',
      SPAWNGATE_AGENT_COMMAND: fixtureCommand,
      SPAWNGATE_LISTEN: `unix:${join(dir.path, 'w.sock')}`,
    });
    try {
      const listening = await bounded(worker.listening, 60_000, 'listening line');
      expect(listening).toMatchObject({ event: 'listening', socketPath: join(dir.path, 'w.sock'), agentId: 'fixture', pid: worker.child.pid });
      expect(worker.stdoutLines).toHaveLength(1);
      const client = clientFor(listening, token);
      await waitForHealthy(client, { timeoutMs: 60_000 });
      const agentPid = (await client.status()).agentPid as number;
      expect(isAlive(agentPid)).toBe(true);

      const events: WorkerEvent[] = [];
      for await (const e of client.turn('slow 100000')) {
        events.push(e);
        if (e.type === 'agent.message.delta' && events.filter((x) => x.type === 'agent.message.delta').length === 1) worker.child.kill('SIGTERM');
      }
      expect(events.at(-1)).toMatchObject({ type: 'turn.cancelled', reason: 'shutdown' });
      expect(await bounded(worker.exited, 60_000, 'worker exit')).toEqual({ code: 0, signal: null });
      await eventually(() => (isAlive(agentPid) ? undefined : true), 20_000);
      // The agent never sees the worker's token.
      expect(worker.stderr()).not.toContain(token);
    } finally {
      worker.child.kill('SIGKILL');
      dir.remove();
    }
  });

  it('exits non-zero on its own when the agent dies', async () => {
    const token = newToken();
    const worker = spawnWorkerBin({ SPAWNGATE_WORKER_TOKEN: token, SPAWNGATE_AGENT_ID: 'fixture', SPAWNGATE_AGENT_COMMAND: fixtureCommand, SPAWNGATE_LISTEN: '0' });
    try {
      const listening = await bounded(worker.listening, 60_000, 'listening line');
      const client = clientFor(listening, token);
      await waitForHealthy(client, { timeoutMs: 60_000 });
      const events: WorkerEvent[] = [];
      for await (const e of client.turn('crash')) events.push(e);
      expect(events.at(-1)).toMatchObject({ type: 'turn.failed', error: { code: 'agent_exited', exitCode: 3 } });
      expect((await bounded(worker.exited, 60_000, 'worker exit')).code).toBe(1);
    } finally {
      worker.child.kill('SIGKILL');
    }
  });

  it('on a Node.js older than 22.12 exits 2 at once with a JSON error line naming the version', async () => {
    // The version is faked in the running Node, so the test needs no old Node on the machine.
    const run = (version: string) =>
      execFileAsync(process.execPath, ['--input-type=module', '-e', `Object.defineProperty(process.versions, 'node', { value: '${version}' }); await import(${JSON.stringify(pathToFileURL(script).href)});`], {
        env: { ...process.env, SPAWNGATE_LISTEN: '0' },
      }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
      );
    for (const version of ['20.19.0', '22.11.0']) {
      const old = await run(version);
      expect(old.code, version).toBe(2);
      const line = JSON.parse(old.stderr.trim()) as { code?: string; message?: string; details?: { node?: string } };
      expect(line.code).toBe('CONFIG_INVALID');
      expect(line.message).toContain(`needs Node.js 22.12 or newer; it was started with Node.js ${version}`);
      expect(line.details?.node).toBe(version);
    }
  });

  it('exits 2 with a JSON error line for a bad environment', async () => {
    const worker = spawnWorkerBin({ SPAWNGATE_LISTEN: '0' });
    expect((await bounded(worker.exited, 60_000, 'worker exit')).code).toBe(2);
    const last = JSON.parse(worker.stderr().trim().split('\n').at(-1) ?? '{}') as { code?: string; details?: { issues?: { path: string }[] } };
    expect(last.code).toBe('CONFIG_INVALID');
    expect(last.details?.issues?.map((i) => i.path)).toEqual(['SPAWNGATE_WORKER_TOKEN']);
  });

  it('runs the built-in echo agent when no command is given', async () => {
    const token = newToken();
    const worker = spawnWorkerBin({ SPAWNGATE_WORKER_TOKEN: token, SPAWNGATE_LISTEN: '127.0.0.1:0' });
    try {
      const listening = await bounded(worker.listening, 60_000, 'listening line');
      expect(listening.agentId).toBe('echo');
      const client = clientFor(listening, token);
      await waitForHealthy(client, { timeoutMs: 60_000 });
      const events: WorkerEvent[] = [];
      for await (const e of client.turn('from the container entry')) events.push(e);
      expect(events.map((e) => (e.type === 'agent.message.delta' ? e.text : '')).join('')).toBe('echo: from the container entry');
      worker.child.kill('SIGTERM');
      expect((await bounded(worker.exited, 60_000, 'worker exit')).code).toBe(0);
    } finally {
      worker.child.kill('SIGKILL');
    }
  });
});
