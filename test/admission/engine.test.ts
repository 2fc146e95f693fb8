import { copyFile, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPolicyEngine, type PolicyEngine } from '../../src/admission/engine.js';
import { SHIPPED_BUNDLE } from '../../src/admission/gate.js';
import { buildBundle, readBundle } from '../../src/admission/policy-tool.js';
import type { AdmissionInput } from '../../src/admission/types.js';
import { buildCatalog, defaultConfig } from '../../src/config/index.js';

const flakyDir = fileURLToPath(new URL('../fixtures/policies/flaky', import.meta.url));

function input(agentId: string): AdmissionInput {
  return {
    request: { runtime: 'acp', agentId, execution: null, task: 'say hi', label: null },
    caller: { sessionKey: 's', parentSessionKey: null, depth: 0, channel: { id: 'c', kind: 'cli', interactive: true }, user: { id: 'u', roles: [] } },
    resolved: { backend: 'local', profile: 'default', source: 'global' },
    catalog: buildCatalog(defaultConfig()),
    usage: { total: 0, user: 0, channel: 0, backends: {}, profiles: {}, userProfiles: {}, channelProfiles: {}, recent: { windowSeconds: 60, user: 0, channel: 0 } },
    now: new Date().toISOString(),
  };
}

async function waitFor(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('policy engine', () => {
  let dir: string;
  let flakyBundle: string;
  const engines: PolicyEngine[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sg-engine-'));
    flakyBundle = join(dir, 'flaky.tar.gz');
    await buildBundle({ policiesDir: flakyDir, outFile: flakyBundle });
  });
  afterAll(async () => {
    for (const e of engines) e.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('evaluates the shipped bundle and reports its revision', async () => {
    const engine = await createPolicyEngine({ source: { path: SHIPPED_BUNDLE }, readBundle });
    engines.push(engine);
    const { decision, revision } = engine.evaluate(input('echo'));
    expect(revision).toBe((await readBundle(SHIPPED_BUNDLE)).revision);
    expect(decision).toMatchObject({ allow: true, backend: 'local', profile: 'default', egress: 'none' });
  });

  it('fails closed when the bundle is missing: every decision is policy_unavailable', async () => {
    const engine = await createPolicyEngine({ source: { path: join(dir, 'nope.tar.gz') }, readBundle });
    engines.push(engine);
    expect(engine.revision).toBeNull();
    expect(engine.lastError?.code).toBe('POLICY_LOAD_FAILED');
    const { decision } = engine.evaluate(input('echo'));
    expect(decision.allow).toBe(false);
    expect(decision.reasons[0]?.code).toBe('policy_unavailable');
  });

  it('fails closed on a corrupt bundle', async () => {
    const bad = join(dir, 'corrupt.tar.gz');
    await writeFile(bad, 'this is not a gzip file');
    const engine = await createPolicyEngine({ source: { path: bad }, readBundle });
    engines.push(engine);
    expect(engine.evaluate(input('echo')).decision.reasons[0]?.code).toBe('policy_unavailable');
  });

  it('turns malformed policy output into policy_output_invalid and an evaluation error into policy_error', async () => {
    const engine = await createPolicyEngine({ source: { path: flakyBundle }, readBundle });
    engines.push(engine);
    expect(engine.evaluate(input('echo')).decision.allow).toBe(true);
    const weird = engine.evaluate(input('weird')).decision;
    expect(weird).toMatchObject({ allow: false, reasons: [{ code: 'policy_output_invalid' }] });
    const boom = engine.evaluate(input('boom')).decision;
    expect(boom).toMatchObject({ allow: false, reasons: [{ code: 'policy_error' }] });
    expect(boom.reasons[0]?.message).toMatch(/conflict/i);
  });

  it('hot-reloads a replaced bundle; a bad replacement is rejected and the old bundle keeps serving', async () => {
    const live = join(dir, 'live.tar.gz');
    await copyFile(SHIPPED_BUNDLE, live);
    const events: { ok: boolean }[] = [];
    const engine = await createPolicyEngine({ source: { path: live }, readBundle, watch: true, onReload: (e) => events.push(e) });
    engines.push(engine);
    const shipped = engine.revision;
    expect(shipped).not.toBeNull();

    // A broken bundle, swapped in atomically by rename as deploy tools do.
    await writeFile(join(dir, 'next.tar.gz'), 'garbage');
    await rename(join(dir, 'next.tar.gz'), live);
    await waitFor(() => events.length >= 2, 'the rejected reload');
    expect(events.at(-1)).toMatchObject({ ok: false });
    expect(engine.revision).toBe(shipped);
    expect(engine.evaluate(input('echo')).decision.allow).toBe(true);

    // A valid, different bundle replaces it.
    await copyFile(flakyBundle, join(dir, 'next.tar.gz'));
    await rename(join(dir, 'next.tar.gz'), live);
    await waitFor(() => engine.revision !== shipped, 'the new revision');
    expect(engine.revision).toBe((await readBundle(flakyBundle)).revision);
    expect(engine.evaluate(input('echo')).decision.ttlSeconds).toBe(60);
  });

  it('rejects a bundle whose wasm does not instantiate', async () => {
    const { wasm, data } = await readBundle(flakyBundle);
    const engine = await createPolicyEngine({ source: { bundle: { wasm: wasm.slice(0, 16), data, revision: 'truncated' } }, readBundle });
    engines.push(engine);
    expect(engine.lastError?.code).toBe('POLICY_LOAD_FAILED');
    expect(engine.evaluate(input('echo')).decision.reasons[0]?.code).toBe('policy_unavailable');
  });
});
