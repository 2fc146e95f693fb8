/**
 * A real coding agent from npm (codex-acp, pinned) as a Kubernetes Pod, through the real kube-apiserver
 * and scheduler: its key is a real Secret (secretKeyRef, resolved by the node), its workspace a `git`
 * checkout in the pod's emptyDir, its permission requests decided by the gateway. The node is the
 * test node agent (test/k8s-node-agent), which runs the pod's worker as a local process with the pod's
 * env; no image is pulled, so the agent's command is its path on this host (the backend override a
 * cluster would set to its path in the image). Network policy is not enforced there: egress "open".
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { agentRecipe, ensureAgents } from '../agents/agents.js';
import { sha256, startMockModel } from '../fixtures/mock-model.js';
import type { MockModel } from '../fixtures/mock-model.js';
import { callerFor, textOf, turnEvents } from '../helpers/turns.js';
import { startNodeAgent, type NodeAgent } from '../k8s-node-agent/node-agent.js';
import { admin, CONTROL_PLANE_START_TIMEOUT_MS, deleteNamespace, leftovers, restrictedNamespace, type Admin } from './cluster.js';

const root = mkdtempSync(join(tmpdir(), 'sg-k8s-agent-'));
const key = `model-key-${randomUUID()}`;
let a: Admin;
let node: NodeAgent;
let namespace: string;
let mock: MockModel;
let gate: Spawngate;

function git(args: string[], cwd: string): string {
  return execFileSync('git', args, { cwd, encoding: 'utf8', env: { ...process.env, GIT_CONFIG_NOSYSTEM: '1', HOME: root, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com' } }).trim();
}

beforeAll(async () => {
  const argv = ensureAgents(['codex-acp']);
  a = await admin();
  namespace = await restrictedNamespace(a, 'sg-agent');
  node = await startNodeAgent({ kubeconfig: a.plane.adminKubeconfig });
  await a.core.createNamespacedSecret({ namespace, body: { metadata: { name: 'model' }, stringData: { 'api-key': key } } });
  mock = await startMockModel();
  const work = join(root, 'work');
  mkdirSync(work);
  git(['init', '--quiet', '-b', 'main'], work);
  writeFileSync(join(work, 'README.md'), '# project\n');
  git(['add', '.'], work);
  git(['commit', '--quiet', '-m', 'first'], work);
  git(['clone', '--quiet', '--bare', work, join(root, 'repo.git')], root);
  gate = await createSpawngate({
    owner: `k8s-agent-${randomUUID().slice(0, 8)}`,
    sweepIntervalMs: 0,
    decisionLog: false,
    config: {
      agents: {
        executionBackends: {
          cluster: {
            type: 'kubernetes',
            namespace,
            kubeconfig: a.plane.adminKubeconfig,
            image: 'spawngate-worker:test',
            profiles: {
              coder: {
                egress: 'open',
                workspace: { strategy: 'git', repo: join(root, 'repo.git'), ref: 'main' },
                nodeSelector: node.placement.nodeSelector,
                tolerations: node.placement.tolerations,
                resources: { requests: { cpu: '100m', memory: '256Mi' }, limits: { memory: '1Gi' } },
                ttlSeconds: 900,
              },
            },
          },
        },
        execution: { default: { backend: 'cluster', profile: 'coder' } },
        acp: { 'codex-acp': agentRecipe('codex-acp', argv['codex-acp'] ?? [], mock.url.replace(/\/$/, '')) },
      },
    },
  });
}, CONTROL_PLANE_START_TIMEOUT_MS);

afterAll(async () => {
  await gate?.shutdown();
  await node?.stop();
  await mock?.close();
  if (a && namespace) await deleteNamespace(a, namespace);
  rmSync(root, { recursive: true, force: true });
}, 120_000);

describe('codex-acp as a Kubernetes Pod', () => {
  it('answers, edits its git workspace once the policy allows it (collect gives the diff), with its key from a Secret, and leaves nothing', async () => {
    const handle = await gate.spawn({ agentId: 'codex-acp', caller: callerFor('k8s-agent') });
    try {
      expect(handle.nativeId).toMatch(new RegExp(`^${namespace}/spawngate-`));
      const hello = await turnEvents(handle, 'SAY hello from a pod');
      expect(hello.at(-1), JSON.stringify(hello)).toMatchObject({ type: 'turn.completed' });
      expect(textOf(hello)).toContain('hello from a pod');
      const edit = await turnEvents(handle, 'WRITE notes.txt written in a pod');
      expect(edit.at(-1), JSON.stringify(edit)).toMatchObject({ type: 'turn.completed' });
      expect(edit.find((e) => e.type === 'permission.decided')).toMatchObject({ outcome: 'allow_once', by: 'gateway', code: 'allowed' });
      const collected = await gate.collect(handle.spawnId, { format: 'diff' });
      expect(collected.diff).toContain('+written in a pod');
      const calls = mock.requests.filter((r) => r.dialect === 'openai-responses');
      expect(calls.length).toBeGreaterThan(0);
      for (const r of calls) expect(r.authSha256).toBe(sha256(key));
      const outputs = [JSON.stringify(hello), JSON.stringify(edit), JSON.stringify(await handle.status()), ...(await handle.logs(1000))].join('\n');
      expect(outputs.includes(key)).toBe(false);
    } finally {
      await handle.close();
    }
    expect(await leftovers(a, namespace, handle.spawnId)).toEqual([]);
  });
});
