/**
 * The five real coding agents from npm (pinned: codex-acp, claude-code-acp, qwen-code, gemini-cli,
 * opencode), each as a Kubernetes Pod on the real test node: the image carries them under
 * /opt/agents as `spawngate image build --agent <id>` puts them there (plus a bare repository to
 * check out), imported into the node's containerd. Its key is a real Secret
 * (secretKeyRef, resolved by the kubelet), its workspace a `git` checkout in the pod's emptyDir, its
 * permission requests decided by the gateway. The mock model listens on the node's bridge address,
 * the pods' gateway; egress is "open" (a proxy pod is what "proxy" would need, see egress.test.ts).
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { testGate } from '../helpers/gate.js';
import { AGENTS_IMAGE, agentRecipe, ALL_AGENTS, buildAgentsImage } from '../agents/agents.js';
import { FIXTURE_REPO_IN_IMAGE } from '../docker/engine.js';
import { sha256, startMockModel } from '../fixtures/mock-model.js';
import type { MockModel } from '../fixtures/mock-model.js';
import { callerFor, textOf, turnEvents } from '../helpers/turns.js';
import { adminOnNode, CONTROL_PLANE_START_TIMEOUT_MS, deleteNamespace, leftovers, restrictedNamespace, type Admin } from './cluster.js';
import { ensureNodeImage } from './node-images.js';

const IMAGE = AGENTS_IMAGE;
const key = `model-key-${randomUUID()}`;
let a: Admin;
let namespace: string;
let mock: MockModel;
let gate: Spawngate;

beforeAll(async () => {
  const onNode = await adminOnNode();
  a = onNode;
  const inImage = await buildAgentsImage(IMAGE);
  await ensureNodeImage(onNode.node, IMAGE);
  namespace = await restrictedNamespace(a, 'sg-agent');
  await a.core.createNamespacedSecret({ namespace, body: { metadata: { name: 'model' }, stringData: { 'api-key': key } } });
  // The pods' default gateway: the node itself on the bridge k8s-node-up.sh made.
  mock = await startMockModel({ host: onNode.node.podCidr.replace(/\.0\/24$/, '.1') });
  gate = await testGate('k8s-agent', {
    agents: {
      executionBackends: {
        cluster: {
          type: 'kubernetes',
          namespace,
          kubeconfig: a.plane.adminKubeconfig,
          image: IMAGE,
          profiles: {
            coder: {
              egress: 'open',
              workspace: { strategy: 'git', repo: FIXTURE_REPO_IN_IMAGE },
              resources: { requests: { cpu: '100m', memory: '256Mi' }, limits: { memory: '1Gi' } },
              ttlSeconds: 900,
              timeoutSeconds: 600,
            },
          },
        },
      },
      execution: { default: { backend: 'cluster', profile: 'coder' } },
      acp: Object.fromEntries(ALL_AGENTS.map((id) => [id, agentRecipe(id, inImage[id], mock.url.replace(/\/$/, ''))])),
    },
  });
}, CONTROL_PLANE_START_TIMEOUT_MS);

afterAll(async () => {
  await gate?.shutdown();
  await mock?.close();
  if (a && namespace) await deleteNamespace(a, namespace);
}, 120_000);

describe.each(ALL_AGENTS)('%s as a Kubernetes Pod', (agentId) => {
  it('answers, edits its git workspace once the policy allows it (collect gives the diff), with its key from a Secret, and leaves nothing', async () => {
    const before = mock.requests.length;
    const handle = await gate.spawn({ agentId, caller: callerFor('k8s-agent') });
    try {
      expect(handle.nativeId).toMatch(new RegExp(`^${namespace}/spawngate-`));
      const hello = await turnEvents(handle, `SAY hello from ${agentId} in a pod`);
      expect(hello.at(-1), JSON.stringify(hello)).toMatchObject({ type: 'turn.completed' });
      expect(textOf(hello)).toContain(`hello from ${agentId} in a pod`);
      const edit = await turnEvents(handle, `WRITE notes.txt written by ${agentId} in a pod`);
      expect(edit.at(-1), JSON.stringify(edit)).toMatchObject({ type: 'turn.completed' });
      expect(edit.find((e) => e.type === 'permission.decided'), JSON.stringify(edit)).toMatchObject({ outcome: 'allow_once', by: 'gateway', code: 'allowed' });
      const collected = await gate.collect(handle.spawnId, { format: 'diff' });
      expect(collected.diff).toContain('+++ b/notes.txt');
      expect(collected.diff).toContain(`+written by ${agentId} in a pod`);
      // Every model call this agent made carried the key the kubelet put in from the Secret.
      const calls = mock.requests.slice(before).filter((r) => r.reply !== null);
      expect(calls.length).toBeGreaterThan(0);
      for (const r of calls) expect(r.authSha256, `${r.dialect} ${r.path}`).toBe(sha256(key));
      const outputs = [JSON.stringify(hello), JSON.stringify(edit), JSON.stringify(await handle.status()), ...(await handle.logs(1000))].join('\n');
      expect(outputs.includes(key)).toBe(false);
    } finally {
      await handle.close();
    }
    expect(await leftovers(a, namespace, handle.spawnId)).toEqual([]);
  });
});
