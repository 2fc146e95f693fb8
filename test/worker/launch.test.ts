import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { launchAgentEarly, type LaunchedAgent } from '../../src/worker/launch.js';
import { runWorkerFromEnv } from '../../src/worker/main.js';
import type { RunningWorker } from '../../src/worker/worker.js';
import { createWorkerClient, waitForHealthy } from '../../src/protocol/client.js';
import { bounded, eventually, fixtureAgent, isAlive, newToken, spawnWorkerBin, startTestWorker, tempDir, workerBundle } from './helpers.js';

const fixtureCommand = [process.execPath, fixtureAgent];
const quietIo = { stdout: () => undefined, stderr: () => undefined };

function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
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
    const worker = spawnWorkerBin({ SPAWNGATE_WORKER_TOKEN: token, SPAWNGATE_AGENT_ID: 'fixture', SPAWNGATE_AGENT_COMMAND: JSON.stringify(command), SPAWNGATE_LISTEN: '127.0.0.1:0' }, workerBundle);
    cleanup.push(async () => {
      worker.child.kill('SIGTERM');
      await bounded(worker.exited, 30_000, 'worker exit');
    });
    const listening = await bounded(worker.listening, 60_000, 'listening line');
    const client = createWorkerClient({ baseUrl: listening.url ?? '', token });
    await waitForHealthy(client, { timeoutMs: 60_000 });
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
