/**
 * The spawngate plugin in a real OpenClaw gateway (pinned npm version), installed as an operator
 * installs it, with caps shared through a real Redis and ACP sessions in process workers:
 *   (a) allowed, denied (agent not allowed) and capped spawns over POST /tools/invoke;
 *   (b) the model path with runtime "acp": the agent runs in a spawngate worker on the process
 *       backend, on Docker, and as a Pod on Kubernetes, and its answer comes back into the chat;
 *   (c) a cron automation whose second spawn is rate limited while the same user's chat spawns pass;
 *   (d) slots come back after children end, and after the gateway is killed (-9) and restarted;
 *   (e) one trace from OpenClaw's ctx.trace through spawngate's spans (exported by the plugin from
 *       the gateway's OTEL_* variables) into the worker's own spans.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway, ModelServer } from './harness.js';
import { createGateway, ROOT, startModelServer, until } from './harness.js';
import { engine, WORKER_IMAGE } from '../docker/engine.js';
import { createStoreFromConfig } from '../../src/admission/store/index.js';
import { silentLogger } from '../../src/log.js';
import type { Admin } from '../kubernetes/cluster.js';
import { adminOnNode, CONTRACT_IMAGE } from '../kubernetes/cluster.js';
import type { OtlpSink } from '../telemetry/otlp-sink.js';
import { startOtlpSink } from '../telemetry/otlp-sink.js';

let cluster: Admin;

async function podsOf(owner: string): Promise<number> {
  return (await cluster.core.listNamespacedPod({ namespace: cluster.plane.namespace, labelSelector: `spawngate.io/owner=${owner}` })).items.length;
}

async function containersOf(owner: string): Promise<number> {
  return (await engine().listContainers({ all: true, filters: { label: [`spawngate.io/owner=${owner}`] } })).length;
}

const dir = mkdtempSync(join(tmpdir(), 'sg-oc-'));
const stateDir = mkdtempSync(join(tmpdir(), 'sg-ocw-'));
const decisions = join(dir, 'decisions.log');
let model: ModelServer;
let gateway: Gateway;
let sink: OtlpSink;

const CAP = 3;
const store = { type: 'redis' as const, url: 'redis://127.0.0.1:6390', keyPrefix: `sg-oc-${randomUUID().slice(0, 8)}:` };

function decisionLines(): { stage: string; result: { allow: boolean; reasons: { code: string }[] }; input: { request: { agentId: string; runtime: string }; caller: { channel: { kind: string }; user: { id: string } } }; trace_id?: string; span_id?: string }[] {
  if (!existsSync(decisions)) return [];
  return readFileSync(decisions, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as ReturnType<typeof decisionLines>[number]);
}

beforeAll(async () => {
  model = await startModelServer();
  sink = await startOtlpSink();
  // The cluster and its real node are up (this project's globalSetup); the contract image goes into the node's containerd.
  cluster = await adminOnNode();
  gateway = await createGateway({
    dir,
    model,
    // What an operator sets to export traces; the plugin starts the export, workers inherit the endpoint.
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '500' },
    pluginConfig: {
      ownerUser: 'owner',
      claimSeconds: 60,
      config: {
        spawngate: {
          owner: 'oc-e2e',
          decisionLog: decisions,
          store,
          // Shorter than the default 30 s, so that the kill -9 below frees its slots sooner; not
          // shorter still: OpenClaw blocks its event loop for seconds at a time (SQLite work), and a
          // lease must outlive that in a gateway that is alive.
          leaseSeconds: 20,
          renewSeconds: 5,
          sweepIntervalSeconds: 2,
          policyData: {
            agents: { deny: ['forbidden'] },
            concurrency: { user: CAP },
            rate: {
              kinds: {
                api: { user: { perMinute: 600, burst: 100 }, channel: { perMinute: 600, burst: 100 } },
                cron: { user: { perMinute: 1, burst: 1 }, channel: { perMinute: 60, burst: 10 } },
              },
            },
          },
        },
        agents: {
          executionBackends: {
            // Workers run under uids of their own, and OpenClaw keeps its copy of the plugin (spawngate
            // included) private (0700): the worker is a copy everyone can read, as an operator installs it.
            local: { type: 'process', stateDir, defaultProfile: 'p', profiles: { p: { egress: 'open', ttlSeconds: 900, timeoutSeconds: 900, command: [process.execPath, join(ROOT, 'dist/worker/bin.js')] } } },
            docker: {
              type: 'container',
              image: WORKER_IMAGE,
              defaultProfile: 'small',
              profiles: { small: { egress: 'none', workspace: { strategy: 'ephemeral' }, ttlSeconds: 600, timeoutSeconds: 300, resources: { limits: { cpu: '500m', memory: '256Mi' } } } },
            },
            k8s: {
              type: 'kubernetes',
              namespace: cluster.plane.namespace,
              // The ServiceAccount of deploy/rbac.yaml, as an operator deploys it.
              kubeconfig: cluster.plane.spawngateKubeconfig,
              defaultProfile: 'pod',
              profiles: {
                pod: {
                  image: CONTRACT_IMAGE,
                  resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
                  egress: 'none',
                  ttlSeconds: 600,
                  timeoutSeconds: 300,
                },
              },
            },
          },
          execution: { default: { backend: 'local', profile: 'p' }, agents: { 'echo-docker': { backend: 'docker' }, 'echo-k8s': { backend: 'k8s' } } },
          acp: {
            'echo-docker': { command: ['/usr/local/bin/node', '/app/dist/agents/echo.js'] },
            'echo-k8s': { command: ['/usr/local/bin/node', '/app/dist/agents/echo.js'] },
          },
        },
      },
    },
  });
});

afterAll(async () => {
  await gateway?.stop();
  await model?.close();
  await sink?.close();
  // Kept for whoever reads a failed run (CI keeps .cache/).
  mkdirSync(join(ROOT, '.cache'), { recursive: true });
  writeFileSync(join(ROOT, '.cache/openclaw-e2e-gateway.log'), gateway?.output() ?? '');
  if (existsSync(join(dir, 'openclaw.log'))) writeFileSync(join(ROOT, '.cache/openclaw-e2e-openclaw.log'), readFileSync(join(dir, 'openclaw.log')));
  if (existsSync(decisions)) writeFileSync(join(ROOT, '.cache/openclaw-e2e-decisions.log'), readFileSync(decisions));
  writeFileSync(join(ROOT, '.cache/openclaw-e2e-model.json'), JSON.stringify(model?.requests ?? [], null, 1));
  writeFileSync(join(ROOT, '.cache/openclaw-e2e-spans.json'), JSON.stringify(sink?.spans ?? [], null, 1));
  rmSync(dir, { recursive: true, force: true });
  rmSync(stateDir, { recursive: true, force: true });
});

describe('spawngate in a real OpenClaw gateway', () => {
  it('(a) admits, denies an agent the policy does not allow, and caps a user, over /tools/invoke', async () => {
    const ok = await gateway.spawnViaTools({ task: 'say hi', label: 'a-1' });
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);

    const denied = await gateway.spawnViaTools({ task: 'say hi', agentId: 'forbidden' });
    expect(denied.status).toBe(403);
    expect(denied.body.error?.type).toBe('tool_call_blocked');
    expect(denied.body.error?.message).toMatch(/spawngate denied this spawn \[agent_not_allowed\]/);

    const last = decisionLines().at(-1);
    expect(last?.input.caller.channel.kind).toBe('api');
    expect(last?.input.caller.user.id).toBe('owner');
  });

  it('(d) a capped user gets its slots back when the children end', async () => {
    // Fill the cap (the child of (a) may still hold one), then one more is denied with the cap's code.
    const statuses: number[] = [];
    let capped: Awaited<ReturnType<Gateway['spawnViaTools']>> | null = null;
    for (let i = 0; i < CAP + 1 && !capped; i++) {
      const r = await gateway.spawnViaTools({ task: `child ${i}`, label: `d-${i}` });
      statuses.push(r.status);
      if (r.status === 403) capped = r;
    }
    expect(capped?.body.error?.message, JSON.stringify(statuses)).toMatch(/\[concurrency_limit_user\]: user "owner" already has 3 active workers/);
    // The children answer at once (the model server says "ok, done."), so their slots come back.
    await until('a spawn admitted again after the children ended', async () => (await gateway.spawnViaTools({ task: 'again', label: 'd-again' })).status === 200, 180_000);
  });

  it('(b) the model path with runtime acp runs the agent in a spawngate worker and streams its answer back into the chat', async () => {
    const task = `hello from acp ${randomUUID().slice(0, 8)}`;
    const status = await gateway.chat(`please SPAWN${JSON.stringify({ runtime: 'acp', agentId: 'echo', task, mode: 'run' })}`);
    expect(status).toBe(200);
    // The echo agent answers "echo: <task>" in the worker; OpenClaw announces the child's result to the parent turn.
    await until('the ACP answer in the chat', () => model.saw(`echo: ${task}`), 240_000);
    const acp = decisionLines().filter((d) => d.input.request.runtime === 'acp');
    expect(acp.length).toBeGreaterThan(0);
    expect(acp[0]?.input.request.agentId).toBe('echo');
    expect(acp[0]?.input.caller.channel.kind).not.toBe('unknown');
    // One-shot sessions are closed by OpenClaw ("oneshot-complete"): nothing is left on the backend.
    await until('the worker removed', () => readdirSync(stateDir).filter((e) => !e.startsWith('.')).length === 0, 120_000);

    // (e) One trace: OpenClaw's ctx.trace became the request's traceparent, the decision was taken in
    // it, spawngate's spans (exported by the plugin) and the worker's own spans carry it.
    const decided = acp.find((d) => d.input.request.agentId === 'echo' && d.result.allow && d.stage === 'policy');
    const traceId = decided?.trace_id;
    expect(traceId, 'the ACP decision carries the trace id of OpenClaw\'s ctx.trace').toMatch(/^[0-9a-f]{32}$/);
    const inTrace = (name: string) => sink.spans.filter((s) => s.traceId === traceId && s.name === name);
    await until('the worker\'s turn span in the collector', () => inTrace('spawngate.worker.turn').length === 1, 60_000);
    const spawn = inTrace('spawngate.spawn');
    expect(spawn, JSON.stringify(sink.spans.map((s) => `${s.traceId.slice(0, 8)} ${s.name}`))).toHaveLength(1);
    expect(spawn[0]?.resource).toMatchObject({ 'spawngate.role': 'openclaw-plugin' });
    // One record per decision, written where the outcome was settled: a reserve's is the reservation span.
    expect(inTrace('spawngate.reservation').map((s) => s.spanId)).toContain(decided?.span_id);
    expect(inTrace('spawngate.worker.start')[0]?.parentSpanId).toBe(spawn[0]?.spanId);
    // The worker answers the gateway's CLIENT span of POST /turn, which runs under spawngate.turn.
    expect(inTrace('POST /turn')[0]?.parentSpanId).toBe(inTrace('spawngate.turn')[0]?.spanId);
    expect(inTrace('spawngate.worker.turn')[0]?.parentSpanId).toBe(inTrace('POST /turn')[0]?.spanId);
    expect(inTrace('spawngate.worker.turn')[0]?.resource).toMatchObject({ 'service.name': 'spawngate-worker' });
  });

  it('(b) the same on the Docker backend: the agent runs in a container and its answer comes back into the chat', async () => {
    const task = `hello from docker ${randomUUID().slice(0, 8)}`;
    expect(await gateway.chat(`please SPAWN${JSON.stringify({ runtime: 'acp', agentId: 'echo-docker', task, mode: 'run' })}`)).toBe(200);
    await until('the ACP answer from the container in the chat', () => model.saw(`echo: ${task}`), 240_000);
    const placed = decisionLines().filter((d) => d.input.request.agentId === 'echo-docker' && d.result.allow);
    expect((placed[0]?.result as unknown as { backend?: string } | undefined)?.backend).toBe('docker');
    await until('the container removed', async () => (await containersOf('oc-e2e')) === 0, 120_000);
  });

  it('(b) the same on Kubernetes: the agent runs in a Pod and its answer comes back into the chat', async () => {
    const task = `hello from a pod ${randomUUID().slice(0, 8)}`;
    expect(await gateway.chat(`please SPAWN${JSON.stringify({ runtime: 'acp', agentId: 'echo-k8s', task, mode: 'run' })}`)).toBe(200);
    await until('the ACP answer from the pod in the chat', () => model.saw(`echo: ${task}`), 240_000);
    const placed = decisionLines().filter((d) => d.input.request.agentId === 'echo-k8s' && d.result.allow);
    expect((placed[0]?.result as unknown as { backend?: string } | undefined)?.backend).toBe('k8s');
    // The session's worker is named as Kubernetes names it: namespace/podName.
    expect(gateway.output()).toMatch(new RegExp(`runs in worker \\S+ on k8s/pod as ${cluster.plane.namespace}/\\S+`));
    await until('the pod removed', async () => (await podsOf('oc-e2e')) === 0, 120_000);
  });

  it('(c) a cron automation: its second spawn is rate limited, while the same user\'s chat spawns still pass', async () => {
    const added = await gateway.cli(['cron', 'add', '--name', 'e2e-cron', '--every', '1h', '--agent', 'main', '--message', `SPAWN${JSON.stringify({ task: 'cron child', label: 'cron' })}`, '--json']);
    const id = /"id"\s*:\s*"([^"]+)"/.exec(added)?.[1];
    if (!id) throw new Error(`no job id in: ${added}`);
    const cron = () => decisionLines().filter((d) => d.input.caller.channel.kind === 'cron');
    // The run itself ends in an error (a cron run has nowhere to deliver the child's result); only the spawn's admission matters here.
    await gateway.cli(['cron', 'run', id, '--wait', '--wait-timeout', '4m'], { tolerant: true });
    await until('the first cron spawn decided', () => cron().length >= 1, 120_000);
    await gateway.cli(['cron', 'run', id, '--wait', '--wait-timeout', '4m'], { tolerant: true });
    await until('the second cron spawn decided', () => cron().some((d) => d.result.reasons[0]?.code === 'rate_limit_user'), 120_000);
    expect(cron()[0]?.result.allow).toBe(true);
    expect(cron().every((d) => d.input.caller.user.id === 'owner')).toBe(true);
    // The same user from the chat: its own bucket (webchat/owner), untouched by cron's.
    const before = decisionLines().length;
    expect(await gateway.chat(`please SPAWN${JSON.stringify({ task: 'chat child' })}`)).toBe(200);
    await until('the chat spawn decided', () => decisionLines().slice(before).some((d) => d.input.caller.channel.kind === 'webchat'), 120_000);
    const chat = decisionLines().slice(before).filter((d) => d.input.caller.channel.kind === 'webchat');
    expect(chat.at(-1)?.input.caller.user.id).toBe('owner');
    expect(chat.at(-1)?.result.allow).toBe(true);
  });

  it('(d) after kill -9 and a restart: the slots come back (leases) and no worker is left', async () => {
    // Hold the cap with ACP children that stay open (mode session), then kill the gateway.
    for (let i = 0; i < CAP; i++) await gateway.spawnViaTools({ task: `hold ${i}`, label: `k-${i}` });
    await gateway.stop('SIGKILL');
    await gateway.start();
    await until('spawns admitted after the restart', async () => (await gateway.spawnViaTools({ task: 'after restart', label: 'r-1' })).status === 200, 120_000);
    await until('no worker left on the backend', () => readdirSync(stateDir).filter((e) => !e.startsWith('.')).length === 0, 120_000);
  });

  it('(d) in the end, after every path and the restart: 0 slots held in the store, 0 workers on any backend', async () => {
    const shared = await createStoreFromConfig({ spawngate: { store } }, silentLogger);
    try {
      await until('0 slots held in Redis', async () => (await shared.active()).length === 0, 120_000);
    } finally {
      await shared.close();
    }
    expect(readdirSync(stateDir).filter((e) => !e.startsWith('.'))).toEqual([]);
    expect(await containersOf('oc-e2e')).toBe(0);
    expect(await podsOf('oc-e2e')).toBe(0);
    const admitted = decisionLines().filter((d) => d.result.allow && d.stage === 'policy').length;
    console.log(`OPENCLAW_E2E ${JSON.stringify({ decisions: decisionLines().length, admittedByPolicy: admitted, slotsHeld: 0, workersLeft: 0, containersLeft: 0, podsLeft: 0 })}`);
  });
});
