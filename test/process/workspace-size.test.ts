/**
 * A process worker's workspace has no quota of its own: its sizeLimit is measured, and a worker whose
 * workspace outgrows it is stopped with reason WorkspaceSizeExceeded (as the kubelet evicts a pod
 * whose emptyDir does). The agent is the fixture's `fill`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { createProcessBackend } from '../../src/backends/process/index.js';
import { createWorkerClient } from '../../src/protocol/client.js';
import { waitForWorker } from '../../src/sessions/readiness.js';
import { testWorkerSpec } from '../helpers/worker-spec.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const stateDir = mkdtempSync(join(tmpdir(), 'sg-wsize-'));
const backend = createProcessBackend({ name: 'local', stateDir, workspaceCheckIntervalMs: 100 });

afterAll(() => rmSync(stateDir, { recursive: true, force: true }));

describe('workspace sizeLimit on the process backend', () => {
  it('stops a worker whose workspace outgrows it, with reason WorkspaceSizeExceeded; one within it runs on', async () => {
    const spec = (sizeLimit: string) =>
      testWorkerSpec({ backendName: 'local', egress: 'open', agentId: 'fixture', agentCommand: [process.execPath, fixture], workspace: { strategy: 'ephemeral', sizeLimit } });
    const small = spec('1Mi');
    const roomy = spec('8Mi');
    const refs = [await backend.create(small), await backend.create(roomy)];
    try {
      for (const [i, s] of [small, roomy].entries()) {
        const ref = refs[i]!;
        const endpoint = await waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 });
        let text = '';
        for await (const e of createWorkerClient({ ...endpoint, token: s.token }).turn('fill big.bin 3')) if (e.type === 'agent.message.delta') text += e.text;
        expect(text).toBe('filled');
      }
      // Bounded: the check runs every 100 ms; the loop ends the test long before the suite's timeout if it never comes.
      let status = await backend.status(refs[0]!);
      for (let i = 0; i < 300 && status.phase === 'running'; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        status = await backend.status(refs[0]!);
      }
      expect(status).toMatchObject({ phase: 'failed', reason: 'WorkspaceSizeExceeded' });
      expect((await backend.status(refs[1]!)).phase).toBe('running');
    } finally {
      for (const ref of refs) await backend.delete(ref);
    }
  });
});
