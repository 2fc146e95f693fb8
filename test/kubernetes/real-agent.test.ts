/**
 * A real coding agent from npm (codex-acp, pinned) as a Kubernetes Pod, through the real kube-apiserver
 * and scheduler: its key is a real Secret (secretKeyRef, resolved by the node), its workspace a `git`
 * checkout in the pod's emptyDir, its permission requests decided by the gateway. The node is the
 * test node agent (test/k8s-node-agent), which runs the pod's worker as a local process with the pod's
 * env; no image is pulled, so the agent's command is its path on this host (the backend override a
 * cluster would set to its path in the image). Network policy is not enforced there: egress "open".
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { testGate } from '../helpers/gate.js';
import { bareRepo } from '../helpers/git.js';
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

beforeAll(async () => {
  const argv = ensureAgents(['codex-acp']);
  a = await admin();
  namespace = await restrictedNamespace(a, 'sg-agent');
  node = await startNodeAgent({ kubeconfig: a.plane.adminKubeconfig });
  await a.core.createNamespacedSecret({ namespace, body: { metadata: { name: 'model' }, stringData: { 'api-key': key } } });
  mock = await startMockModel();
  const repo = bareRepo(root);
  gate = await testGate('k8s-agent', {
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
              workspace: { strategy: 'git', repo, ref: 'main' },
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
