import { copyFile, cp, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkDecision } from '../../src/admission/decision.js';
import { createPolicyEngine, ENTRYPOINT, type PolicyEngine } from '../../src/admission/engine.js';
import { SHIPPED_BUNDLE } from '../../src/admission/gate.js';
import { readBundle } from '../../src/admission/bundle.js';
import { buildBundle } from '../../src/cli/policy-tool.js';
import type { AdmissionInput } from '../../src/admission/types.js';
import { buildCatalog, defaultConfig } from '../../src/config/index.js';
import { coverageInputs } from '../policy/fixtures.js';

const flakyDir = fileURLToPath(new URL('../fixtures/policies/flaky', import.meta.url));
const policiesDir = fileURLToPath(new URL('../../policies', import.meta.url));

const withoutCatalog = ({ catalog: _catalog, ...rest }: AdmissionInput) => JSON.stringify(rest);

/** A copy of policies/ (sources and data, no tests) with `edit` applied to one file, built into a bundle. */
async function variantBundle(dir: string, name: string, file: string, edit: (text: string) => string): Promise<string> {
  const src = join(dir, name);
  await mkdir(src);
  await cp(policiesDir, src, { recursive: true, filter: (from) => !from.endsWith('_test.rego') });
  await writeFile(join(src, file), edit(await readFile(join(src, file), 'utf8')));
  const out = join(dir, `${name}.tar.gz`);
  await buildBundle({ policiesDir: src, outFile: out });
  return out;
}

function input(agentId: string): AdmissionInput {
  return {
    request: { runtime: 'acp', agentId, execution: null, task: 'say hi', label: null, cwd: null, model: null, resumeSessionId: null, envNames: [], waitSeconds: 0 },
    caller: { sessionKey: 's', parentSessionKey: null, rootSessionKey: 's', depth: 0, channel: { id: 'c', kind: 'cli', interactive: true }, user: { id: 'u', roles: [] } },
    resolved: { backend: 'local', profile: 'default', source: 'global' },
    catalog: buildCatalog(defaultConfig()),
    usage: { total: 0, user: 0, channel: 0, backends: {}, profiles: {}, userProfiles: {}, channelProfiles: {}, children: 0, recent: { windowSeconds: 60, user: 0, channel: 0 } },
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

  it('rejects every permission request, saying why, with a bundle built without a permission rule or no bundle at all', async () => {
    const request = { spawnId: 's', agent: 'echo', profile: 'default', backend: 'local', caller: null, tool: { toolCallId: 't', kind: 'read', title: null, rawInput: null }, paths: [], workspace: { root: '/ws' }, options: ['allow_once'] };
    const withoutRule = await createPolicyEngine({ source: { path: flakyBundle }, readBundle });
    const none = await createPolicyEngine({ source: { path: join(dir, 'nope.tar.gz') }, readBundle });
    engines.push(withoutRule, none);
    expect(withoutRule.evaluatePermission(request).decision).toMatchObject({ outcome: 'reject', code: 'permission_policy_missing' });
    expect(none.evaluatePermission(request).decision).toMatchObject({ outcome: 'reject', code: 'policy_unavailable' });
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

  it('decides a catalog-less input against the runtime catalog exactly as the full input', async () => {
    const engine = await createPolicyEngine({ source: { path: SHIPPED_BUNDLE }, readBundle, runtimeData: { catalog: buildCatalog(defaultConfig()) } });
    engines.push(engine);
    expect(engine.readsRuntimeCatalog).toBe(true);
    expect(engine.evaluateJsonWithoutCatalog(withoutCatalog(input('echo'))).decision).toEqual(engine.evaluate(input('echo')).decision);
    // Each coverage input brings its own catalog variant: setRuntimeData swaps it in.
    const codes = new Set<string>();
    for (const [name, full] of Object.entries(coverageInputs)) {
      engine.setRuntimeData({ catalog: full.catalog });
      const viaData = engine.evaluateJsonWithoutCatalog(withoutCatalog(full)).decision;
      expect(viaData, name).toEqual(engine.evaluate(full).decision);
      for (const r of viaData.reasons) codes.add(r.code);
    }
    expect(codes).toContain('interactive_only_profile');
    expect(codes).toContain('ttl_capped');
  });

  it('keeps the runtime data across hot reloads', async () => {
    const live = join(dir, 'runtime-live.tar.gz');
    await copyFile(SHIPPED_BUNDLE, live);
    const engine = await createPolicyEngine({ source: { path: live }, readBundle, runtimeData: { catalog: buildCatalog(defaultConfig()) } });
    engines.push(engine);
    const partial = withoutCatalog(input('echo'));
    expect(engine.evaluateJsonWithoutCatalog(partial).decision).toMatchObject({ allow: true, backend: 'local' });
    engine.setRuntimeData({ catalog: { backends: {} } });
    expect(engine.evaluateJsonWithoutCatalog(partial).decision.reasons).toEqual([{ code: 'unknown_backend', message: 'backend "local" is not configured' }]);
    expect(await engine.reload()).toMatchObject({ ok: true });
    expect(engine.evaluateJsonWithoutCatalog(partial).decision.reasons[0]?.code).toBe('unknown_backend');
    engine.setRuntimeData({ catalog: buildCatalog(defaultConfig()) });
    expect(engine.evaluateJsonWithoutCatalog(partial).decision.allow).toBe(true);
  });

  it('splices the catalog into the input for a bundle that reads it only from the input', async () => {
    const legacy = await variantBundle(dir, 'legacy', 'selection.rego', (text) => {
      const edited = text.replace(/^catalog := input\.catalog if \{\n\tinput\.catalog\n\} else := data\.spawngate\.runtime\.catalog$/m, 'catalog := input.catalog');
      expect(edited).not.toBe(text);
      return edited;
    });
    const engine = await createPolicyEngine({ source: { path: legacy }, readBundle, runtimeData: { catalog: buildCatalog(defaultConfig()) } });
    engines.push(engine);
    expect(engine.revision).not.toBeNull();
    expect(engine.readsRuntimeCatalog).toBe(false);
    for (const agent of ['echo', 'codex']) {
      expect(engine.evaluateJsonWithoutCatalog(withoutCatalog(input(agent))).decision, agent).toEqual(engine.evaluate(input(agent)).decision);
    }
  });

  it('denies with policy_unavailable when asked to supply a catalog it was never given', async () => {
    const engine = await createPolicyEngine({ source: { path: SHIPPED_BUNDLE }, readBundle });
    engines.push(engine);
    const { decision } = engine.evaluateJsonWithoutCatalog(withoutCatalog(input('echo')));
    expect(decision).toMatchObject({ allow: false, reasons: [{ code: 'policy_unavailable' }] });
    expect(engine.evaluate(input('echo')).decision.allow).toBe(true);
  });

  it('keeps checking and denying on every evaluation when the bundle config is broken', async () => {
    const broken = await variantBundle(dir, 'broken-config', 'data.json', (text) => {
      const data = JSON.parse(text) as { spawngate: { admission: { config: Record<string, unknown> } } };
      delete data.spawngate.admission.config.maxDepth;
      return JSON.stringify(data);
    });
    const engine = await createPolicyEngine({ source: { path: broken }, readBundle, runtimeData: { catalog: buildCatalog(defaultConfig()) } });
    engines.push(engine);
    expect(engine.revision).not.toBeNull();
    for (let i = 0; i < 3; i++) {
      for (const decision of [engine.evaluate(input('echo')).decision, engine.evaluateJsonWithoutCatalog(withoutCatalog(input('echo'))).decision]) {
        expect(decision.allow).toBe(false);
        expect(decision.reasons).toEqual([{ code: 'policy_config_invalid', message: 'policy configuration is invalid: maxDepth is missing' }]);
      }
    }
  });

  it('writes the runtime data at data.spawngate.runtime, configChecked only after a canary without policy_config_invalid', async () => {
    // A policy that reports what it finds at data.spawngate.runtime, and calls its config invalid when data says so.
    const probe = join(dir, 'probe');
    await mkdir(probe);
    await writeFile(
      join(probe, 'probe.rego'),
      [
        'package spawngate.admission',
        'default runtime := {}',
        'runtime := data.spawngate.runtime',
        'default checked := "unchecked"',
        'checked := "checked" if runtime.configChecked == true',
        'default code := "probe"',
        'code := "policy_config_invalid" if data.spawngate.broken',
        'decision := {"allow": false, "backend": null, "profile": null, "egress": null, "ttlSeconds": null, "limits": {"concurrency": [], "rate": []},',
        '\t"reasons": [{"code": code, "message": concat(" ", [checked, concat(",", sort(object.keys(runtime)))])}]}',
        '',
      ].join('\n'),
    );
    await writeFile(join(probe, 'data.json'), JSON.stringify({ spawngate: { broken: false, runtime: { planted: true, configChecked: true } } }));
    const ok = join(dir, 'probe.tar.gz');
    await buildBundle({ policiesDir: probe, outFile: ok });
    await writeFile(join(probe, 'data.json'), JSON.stringify({ spawngate: { broken: true } }));
    const bad = join(dir, 'probe-broken.tar.gz');
    await buildBundle({ policiesDir: probe, outFile: bad });

    const catalog = buildCatalog(defaultConfig());
    const checked = await createPolicyEngine({ source: { path: ok }, readBundle, runtimeData: { catalog } });
    const unchecked = await createPolicyEngine({ source: { path: bad }, readBundle, runtimeData: { catalog } });
    const bare = await createPolicyEngine({ source: { path: ok }, readBundle });
    engines.push(checked, unchecked, bare);
    // The bundle's own runtime entries are replaced, not merged.
    expect(checked.evaluate(input('echo')).decision.reasons[0]?.message).toBe('checked catalog,configChecked');
    expect(unchecked.evaluate(input('echo')).decision.reasons[0]).toEqual({ code: 'policy_config_invalid', message: 'unchecked catalog' });
    expect(bare.evaluate(input('echo')).decision.reasons[0]?.message).toBe('checked configChecked');
  });

  it('decides as the opa-wasm SDK does, also for inputs that make the WASM memory grow', async () => {
    const engine = await createPolicyEngine({ source: { path: SHIPPED_BUNDLE }, readBundle });
    engines.push(engine);
    const bundle = await readBundle(SHIPPED_BUNDLE);
    const sdk = await loadPolicy(bundle.wasm);
    sdk.setData(bundle.data as object);
    const viaSdk = (full: AdmissionInput) => checkDecision((sdk.evaluate(full, ENTRYPOINT) as { result: unknown }[])[0]?.result);
    // Multi-byte text: 3 UTF-8 bytes per UTF-16 unit for "€", 4 per surrogate pair, up to the 64 KiB task limit.
    const long = (unit: string, bytes: number) => ({ ...input('echo'), request: { ...input('echo').request, task: `${unit.repeat(Math.floor(bytes / Buffer.byteLength(unit)) - 4)} npm test` } });
    for (const full of [input('echo'), long('€', 65_536), long('😀', 65_536), long('a', 65_536), input('codex'), { ...input('echo'), caller: { ...input('echo').caller, depth: 7 } }]) {
      expect(engine.evaluate(full).decision).toEqual(viaSdk(full));
    }
  });

  it('rejects a bundle whose wasm does not instantiate', async () => {
    const { wasm, data } = await readBundle(flakyBundle);
    const engine = await createPolicyEngine({ source: { bundle: { wasm: wasm.slice(0, 16), data, revision: 'truncated' } }, readBundle });
    engines.push(engine);
    expect(engine.lastError?.code).toBe('POLICY_LOAD_FAILED');
    expect(engine.evaluate(input('echo')).decision.reasons[0]?.code).toBe('policy_unavailable');
  });
});
