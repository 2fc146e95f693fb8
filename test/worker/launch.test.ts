import { createHash } from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { launchAgentEarly, PRELAUNCH_ENV, prelaunchPlan, type LaunchedAgent } from '../../src/worker/launch.js';
import { AGENT_PRELAUNCH } from '../../src/backends/process/isolation.js';
import { runWorkerFromEnv } from '../../src/worker/main.js';
import type { RunningWorker } from '../../src/worker/worker.js';
import { createWorkerClient, waitForHealthy } from '../../src/protocol/client.js';
import { bounded, collect, eventually, fixtureAgent, isAlive, messageText, newToken, repoRoot, spawnWorkerBin, startTestWorker, tempDir, workerBundle, type WorkerChild } from './helpers.js';

const fixtureCommand = [process.execPath, fixtureAgent];
const quietIo = { stdout: () => undefined, stderr: () => undefined };

/** /proc/<pid>/stat from field 3 (state) on. */
function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

function parentOf(pid: number): number {
  return Number(statFields(pid)[1]);
}

/** A built worker started with `env` (behind `before`), stopped after the test. */
function trackedWorkerBin(env: Record<string, string>, before: readonly string[] = []): WorkerChild {
  const worker = spawnWorkerBin(env, workerBundle, before);
  cleanup.push(async () => {
    worker.child.kill('SIGTERM');
    await bounded(worker.exited, 30_000, 'worker exit');
  });
  return worker;
}

/** The client of a worker started by trackedWorkerBin, once it listens and is healthy. */
async function healthyClient(worker: WorkerChild, token: string): Promise<ReturnType<typeof createWorkerClient>> {
  const listening = await bounded(worker.listening, 60_000, 'listening line');
  const client = createWorkerClient({ baseUrl: listening.url ?? '', token });
  await waitForHealthy(client, { timeoutMs: 60_000 });
  return client;
}

/** A worker environment for the fixture agent, listening on an ephemeral loopback port. */
function fixtureEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { SPAWNGATE_WORKER_TOKEN: newToken(), SPAWNGATE_AGENT_ID: 'fixture', SPAWNGATE_AGENT_COMMAND: JSON.stringify(fixtureCommand), SPAWNGATE_LISTEN: '127.0.0.1:0', ...extra };
}

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

function launched(env: Record<string, string>): LaunchedAgent {
  const agent = launchAgentEarly(env);
  if (!agent) throw new Error('expected an early agent');
  cleanup.push(() => agent.discard(1000));
  return agent;
}

describe('early agent launch', { timeout: 120_000 }, () => {
  it('starts nothing for an environment the worker would refuse, or whose agent needs a checkout or the egress forwarder first', () => {
    expect(launchAgentEarly({ SPAWNGATE_AGENT_COMMAND: JSON.stringify(fixtureCommand) })).toBeNull();
    expect(launchAgentEarly(fixtureEnv({ SPAWNGATE_LISTEN: 'nope' }))).toBeNull();
    expect(launchAgentEarly(fixtureEnv({ SPAWNGATE_GIT_REPO: 'https://example.invalid/repo.git' }))).toBeNull();
    expect(launchAgentEarly(fixtureEnv({ SPAWNGATE_EGRESS_PROXY_SOCKET: '/run/spawngate/egress.sock' }))).toBeNull();
  });

  it('the worker adopts the agent started for its launch: one agent, the early one, with which the session opened', async () => {
    const env = fixtureEnv();
    const agent = launched(env);
    const dir = tempDir();
    cleanup.push(() => Promise.resolve(dir.remove()));
    const worker: RunningWorker = await runWorkerFromEnv(env, quietIo, agent);
    cleanup.push(() => worker.close());
    const client = createWorkerClient({ baseUrl: (worker.address as { url: string }).url, token: env['SPAWNGATE_WORKER_TOKEN'] ?? '' });
    await waitForHealthy(client, { timeoutMs: 60_000 });
    expect((await client.status()).agentPid).toBe(agent.pid);
    // Adopted: no longer the launcher's to stop.
    await agent.discard(1000);
    expect(isAlive(agent.pid ?? -1)).toBe(true);
    await worker.close();
    await eventually(() => (isAlive(agent.pid ?? -1) ? undefined : true), 20_000);
  });

  it('an agent started for another launch is stopped, and the worker starts its own', async () => {
    const agent = launched(fixtureEnv());
    const early = agent.pid ?? -1;
    const test = await startTestWorker('tcp', { launched: agent, agentEnv: { SOMETHING_ELSE: '1' } });
    cleanup.push(() => test.close());
    await waitForHealthy(test.client, { timeoutMs: 60_000 });
    const own = (await test.client.status()).agentPid as number;
    expect(own).not.toBe(early);
    expect(isAlive(own)).toBe(true);
    expect(isAlive(early)).toBe(false);
  });

  it('a worker that fails to start stops the agent started for it', async () => {
    const dir = tempDir();
    cleanup.push(() => Promise.resolve(dir.remove()));
    // A socket in a folder that does not exist: listen fails after the agent was started.
    const env = fixtureEnv({ SPAWNGATE_LISTEN: `unix:${join(dir.path, 'missing', 'w.sock')}` });
    const agent = launched(env);
    const pid = agent.pid ?? -1;
    expect(isAlive(pid)).toBe(true);
    await expect(runWorkerFromEnv(env, quietIo, agent)).rejects.toThrow();
    expect(isAlive(pid)).toBe(false);
  });

  it('from the built entry: the agent is the worker\'s child, and what it printed before the worker took it is in /logs', async () => {
    const token = newToken();
    // The agent's first line is written at once, long before the worker's server exists.
    const command = ['/bin/sh', '-c', `echo "early line from the agent" >&2; exec "$0" "$1"`, ...fixtureCommand];
    const worker = trackedWorkerBin({ SPAWNGATE_WORKER_TOKEN: token, SPAWNGATE_AGENT_ID: 'fixture', SPAWNGATE_AGENT_COMMAND: JSON.stringify(command), SPAWNGATE_LISTEN: '127.0.0.1:0' });
    const client = await healthyClient(worker, token);
    const agentPid = (await client.status()).agentPid as number;
    expect(parentOf(agentPid)).toBe(worker.child.pid);
    expect(await client.logs()).toContainEqual(expect.objectContaining({ source: 'agent', message: 'early line from the agent' }));
  });

  it('a bad environment still exits 2 from the built entry, and no agent was started', async () => {
    const dir = tempDir();
    cleanup.push(() => Promise.resolve(dir.remove()));
    const marker = join(dir.path, 'agent-started');
    const command = ['/bin/sh', '-c', 'touch "$0"; exec "$1" "$2"', marker, ...fixtureCommand];
    // No token: the worker refuses its environment.
    const worker = spawnWorkerBin({ SPAWNGATE_AGENT_COMMAND: JSON.stringify(command), SPAWNGATE_LISTEN: '0' }, workerBundle);
    expect(await bounded(worker.exited, 60_000, 'worker exit')).toEqual({ code: 2, signal: null });
    expect(worker.stderr()).toContain('SPAWNGATE_WORKER_TOKEN');
    expect(existsSync(marker)).toBe(false);
  });
});

/** The built worker behind the process backend's prelaunch script, as the backend starts it (minus the isolation wrappers). */
function prelaunchedWorker(extra: Record<string, string> = {}, sumOverride?: string): { worker: WorkerChild; token: string; fifos: string } {
  const token = newToken();
  const dir = tempDir();
  cleanup.push(() => Promise.resolve(dir.remove()));
  const fifos = join(dir.path, 'a');
  mkdirSync(fifos);
  const env = { SPAWNGATE_WORKER_TOKEN: token, SPAWNGATE_AGENT_ID: 'fixture', SPAWNGATE_AGENT_COMMAND: JSON.stringify(fixtureCommand), SPAWNGATE_LISTEN: '127.0.0.1:0', ...extra };
  const plan = prelaunchPlan(env, realpathSync(repoRoot));
  if (!plan) throw new Error('expected a prelaunch plan');
  const pairs = Object.entries(plan.extraEnv).map(([k, v]) => `${k}=${v}`);
  const worker = trackedWorkerBin({ ...env, [PRELAUNCH_ENV.dir]: fifos, [PRELAUNCH_ENV.sum]: sumOverride ?? plan.sum }, [
    ...AGENT_PRELAUNCH,
    fifos,
    String(plan.argv.length),
    String(pairs.length),
    ...pairs,
    ...plan.argv,
  ]);
  return { worker, token, fifos };
}

const sha = (value: string) => createHash('sha256').update(value).digest('hex');

describe('agent started beside the worker (the process backend\'s prelaunch)', { timeout: 120_000 }, () => {
  it('the worker adopts it: its child in a process group of its own, on the FIFOs, without the worker\'s credential, answering turns; it ends with the worker', async () => {
    const { worker, token, fifos } = prelaunchedWorker();
    const client = await healthyClient(worker, token);
    const agentPid = (await client.status()).agentPid as number;
    expect(parentOf(agentPid)).toBe(worker.child.pid);
    expect(Number(statFields(agentPid)[2])).toBe(agentPid);
    // Its stdin is the FIFO the script made (unlinked once the worker opened its ends), not a pipe the worker made.
    expect(readlinkSync(`/proc/${agentPid}/fd/0`)).toBe(`${join(fifos, 'in')} (deleted)`);
    expect(readdirSync(fifos)).toEqual([]);
    // Only one agent: the worker started none of its own.
    const children = execFileSync('ps', ['-o', 'pid=', '--ppid', String(worker.child.pid)], { encoding: 'utf8' }).trim().split(/\s+/).map(Number);
    expect(children).toEqual([agentPid]);
    const say = async (text: string) => messageText(await collect(client.turn(text)));
    expect(await say('hasenv SPAWNGATE_WORKER_TOKEN')).toBe('SPAWNGATE_WORKER_TOKEN unset');
    expect(await say('hasenv SPAWNGATE_PRELAUNCH_SUM')).toBe('SPAWNGATE_PRELAUNCH_SUM unset');
    expect(await say('hasenv SPAWNGATE_PRELAUNCH_PID')).toBe('SPAWNGATE_PRELAUNCH_PID unset');
    expect(await say('hasenv GIT_CONFIG_VALUE_0')).toBe(`GIT_CONFIG_VALUE_0 sha256=${sha(realpathSync(repoRoot))}`);
    expect(await say('hasenv SPAWNGATE_AGENT_ID')).toBe(`SPAWNGATE_AGENT_ID sha256=${sha('fixture')}`);
    worker.child.kill('SIGTERM');
    expect(await bounded(worker.exited, 30_000, 'worker exit')).toEqual({ code: 0, signal: null });
    await eventually(() => (isAlive(agentPid) ? undefined : true), 20_000);
  });

  it('an agent that dies at start-up is reported with its exit code and its stderr, and the worker exits 1 without starting another', async () => {
    const dir = tempDir();
    cleanup.push(() => Promise.resolve(dir.remove()));
    const starts = join(dir.path, 'starts');
    const command = ['/bin/sh', '-c', 'echo start >> "$0"; exec "$1" "$2"', starts, ...fixtureCommand];
    const { worker } = prelaunchedWorker({ ACP_FIXTURE_EXIT_AT_START: '7', SPAWNGATE_AGENT_COMMAND: JSON.stringify(command) });
    expect(await bounded(worker.exited, 60_000, 'worker exit')).toEqual({ code: 1, signal: null });
    expect(readFileSync(starts, 'utf8')).toBe('start\n');
    const lines = worker
      .stderr()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { source: string; message: string });
    expect(lines.some((line) => line.source === 'worker' && line.message.startsWith('agent process ended {"exitCode":7,"signal":null'))).toBe(true);
    expect(lines.some((line) => line.source === 'agent')).toBe(true);
  });

  it('an agent started for another launch is stopped, and the worker starts its own', async () => {
    const { worker, token } = prelaunchedWorker({}, 'not-this-launch');
    const client = await healthyClient(worker, token);
    const agentPid = (await client.status()).agentPid as number;
    // The prelaunched agent was killed; a zombie until the worker exits (Node reaps only its own children).
    const others = execFileSync('ps', ['-o', 'pid=', '--ppid', String(worker.child.pid)], { encoding: 'utf8' }).trim().split(/\s+/).map(Number).filter((pid) => pid !== agentPid);
    expect(others).toHaveLength(1);
    expect(isAlive(others[0] ?? -1)).toBe(false);
    expect(isAlive(agentPid)).toBe(true);
    expect(readlinkSync(`/proc/${agentPid}/fd/0`)).toMatch(/^(socket|pipe):/);
    expect(messageText(await collect(client.turn('hello')))).toContain('hello');
  });

  it('an environment that merely names a prelaunch (set by hand) stops nothing and closes nothing of the worker\'s: it starts its own agent', async () => {
    const bystander = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
    cleanup.push(async () => {
      bystander.kill('SIGKILL');
      await once(bystander, 'exit');
    });
    const pid = bystander.pid ?? -1;
    const token = newToken();
    const env = fixtureEnv({ SPAWNGATE_WORKER_TOKEN: token, [PRELAUNCH_ENV.pid]: String(pid), [PRELAUNCH_ENV.dir]: '/nonexistent', [PRELAUNCH_ENV.sum]: 'x' });
    const worker = trackedWorkerBin(env);
    const client = await healthyClient(worker, token);
    expect(messageText(await collect(client.turn('hello')))).toContain('hello');
    expect(parentOf((await client.status()).agentPid as number)).toBe(worker.child.pid);
    expect(isAlive(pid)).toBe(true);
  });
});
