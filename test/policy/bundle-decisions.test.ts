import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import { beforeAll, describe, expect, it } from 'vitest';
import { decisionSchema } from '../../src/admission/decision.js';
import { POLICY_ENTRYPOINT, readBundle, type BundleContents } from '../../src/admission/bundle.js';
import { checkPermissionDecision, PERMISSION_ENTRYPOINT } from '../../src/admission/permissions.js';
import type { PermissionDecision, PermissionInput } from '../../src/admission/permissions.js';
import { MASK_ENTRYPOINT } from '../../src/admission/decision-mask.js';
import type { AdmissionInput, Decision } from '../../src/admission/types.js';
import { coverageInputs, cronChannel, input, merge, webhookChannel } from './fixtures.js';

const BUNDLE = new URL('../../bundles/spawngate.tar.gz', import.meta.url).pathname;

let bundle: BundleContents;

beforeAll(async () => {
  bundle = await readBundle(BUNDLE);
});

/** Evaluates the committed bundle exactly as the engine does: opa-wasm SDK, bundle data (or a variant). */
async function decide(admission: AdmissionInput, data: unknown = bundle.data): Promise<Decision> {
  const policy = await loadPolicy(bundle.wasm);
  policy.setData(data as object);
  const resultSet = policy.evaluate(admission, POLICY_ENTRYPOINT) as { result: unknown }[];
  expect(resultSet).toHaveLength(1);
  const parsed = decisionSchema.safeParse(resultSet[0]?.result);
  if (!parsed.success) throw new Error(`policy output breaks the decision contract: ${parsed.error.message}`);
  return parsed.data;
}

function withConfig(patch: unknown): unknown {
  return merge(bundle.data, { spawngate: { admission: { config: patch } } });
}

/** The slice of the WebAssembly global used here; the project's TS libs do not declare it. */
interface WasmApi {
  compile(bytes: Uint8Array): Promise<object>;
  Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer };
  instantiate(module: object, imports: object): Promise<{ exports: object }>;
}

const codes = (d: Decision) => d.reasons.map((r) => r.code);

describe('committed bundle evaluated with @open-policy-agent/opa-wasm', () => {
  it('names its entrypoint and revision in the manifest', () => {
    expect(bundle.manifest.wasm).toEqual([
      { entrypoint: POLICY_ENTRYPOINT, module: '/policy.wasm' },
      { entrypoint: PERMISSION_ENTRYPOINT, module: '/policy.wasm' },
      { entrypoint: MASK_ENTRYPOINT, module: '/policy.wasm' },
    ]);
    expect(bundle.manifest.revision).toMatch(/^[0-9a-f]{64}$/);
    expect(bundle.revision).toBe(bundle.manifest.revision);
  });

  it('needs no host builtin that the opa-wasm SDK does not implement, and today none at all', async () => {
    // Builtins compiled natively into policy.wasm need nothing; the rest are called on the host by
    // name and must exist in the SDK, or evaluation throws "not implemented" on first use. Each
    // host call also serialises its arguments and result through JSON (sprintf alone used to cost
    // more than the rest of an allow decision), so the policy keeps to native builtins.
    const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
    const module = await wasm.compile(bundle.wasm);
    const memory = new wasm.Memory({ initial: 5 });
    const unused = () => 0;
    const env = { memory, opa_abort: unused, opa_println: unused, opa_builtin0: unused, opa_builtin1: unused, opa_builtin2: unused, opa_builtin3: unused, opa_builtin4: unused };
    const instance = await wasm.instantiate(module, { env });
    const exports = instance.exports as { builtins: () => number; opa_json_dump: (addr: number) => number; memory?: { buffer: ArrayBuffer } };
    const heap = new Uint8Array((exports.memory ?? memory).buffer);
    const start = exports.opa_json_dump(exports.builtins());
    const table: unknown = JSON.parse(new TextDecoder().decode(heap.subarray(start, heap.indexOf(0, start))));
    expect(table).toBeTypeOf('object');
    expect(table).not.toBeNull();
    const hostBuiltins = Object.keys(table as object);

    const require = createRequire(import.meta.url);
    const sdkBuiltins = require(join(dirname(require.resolve('@open-policy-agent/opa-wasm')), 'builtins', 'index.js')) as Record<string, unknown>;
    expect(Object.keys(sdkBuiltins)).toContain('sprintf');
    for (const name of hostBuiltins) expect(typeof sdkBuiltins[name], name).toBe('function');
    expect(hostBuiltins).toEqual([]);
  });

  it('allows a plain interactive spawn with every cap and no rate limit', async () => {
    expect(await decide(input())).toEqual({
      allow: true,
      backend: 'k8s',
      profile: 'small',
      egress: 'proxy',
      egressAllow: ['api.openai.com'],
      ttlSeconds: 3600,
      limits: {
        concurrency: [
          { scope: 'total', key: '*', max: 64 },
          { scope: 'backend', key: 'k8s', max: 20 },
          { scope: 'profile', key: 'k8s/small', max: 10 },
          { scope: 'user', key: 'alice', max: 4 },
          { scope: 'channel', key: 'tg-1', max: 8 },
          { scope: 'profile_user', key: 'k8s/small/alice', max: 2 },
          { scope: 'profile_channel', key: 'k8s/small/tg-1', max: 3 },
          { scope: 'parent', key: 'agent:main:main', max: 8 },
        ],
        rate: [],
      },
      reasons: [],
    });
  });

  it.each([
    ['backend_unresolved', input({ resolved: { backend: null } })],
    ['unknown_backend', input({ resolved: { backend: 'gpu-farm' } })],
    ['unknown_profile', input({ resolved: { profile: 'huge' } })],
    ['unknown_profile', input({ resolved: { backend: 'local' } })],
    ['agent_not_allowed', input({ request: { agentId: 'gemini' }, resolved: { profile: 'build' } })],
    ['interactive_only_profile', input({ caller: { channel: cronChannel }, catalog: { backends: { k8s: { profiles: { small: { interactiveOnly: true } } } } } })],
    ['depth_exceeded', input({ caller: { depth: 3 } })],
    ['concurrency_limit_total', input({ usage: { total: 64 } })],
    ['concurrency_limit_backend', input({ usage: { backends: { k8s: 20 } } })],
    ['concurrency_limit_profile', input({ usage: { profiles: { 'k8s/small': 10 } } })],
    ['concurrency_limit_user', input({ usage: { user: 4 } })],
    ['concurrency_limit_channel', input({ usage: { channel: 8 } })],
    ['concurrency_limit_profile_user', input({ usage: { userProfiles: { 'k8s/small': 2 } } })],
    ['concurrency_limit_profile_channel', input({ usage: { channelProfiles: { 'k8s/small': 3 } } })],
  ] as const)('denies with %s', async (code, admission) => {
    const d = await decide(admission);
    expect(d.allow).toBe(false);
    expect(codes(d)).toEqual([code]);
    expect(d.reasons[0]?.message).not.toBe('');
  });

  it('denies through the data-driven agent lists', async () => {
    const denied = await decide(input(), withConfig({ agents: { deny: ['codex'] } }));
    expect(denied.reasons).toEqual([{ code: 'agent_not_allowed', message: 'agent "codex" is on the deny-list' }]);
    const notListed = await decide(input({ request: { agentId: 'gemini' } }), withConfig({ agents: { allow: ['codex'] } }));
    expect(notListed.reasons).toEqual([{ code: 'agent_not_allowed', message: 'agent "gemini" is not on the allow-list' }]);
  });

  it('denies everything with policy_config_invalid when the bundle data is missing', async () => {
    const d = await decide(input(), {});
    expect(d.allow).toBe(false);
    expect(new Set(codes(d))).toEqual(new Set(['policy_config_invalid']));
    expect(d.reasons.map((r) => r.message)).toContain('policy configuration is invalid: maxDepth is missing');
  });

  it('lists every applicable deny reason in a stable order', async () => {
    const d = await decide(coverageInputs.everythingFull!);
    expect(codes(d)).toEqual([
      'depth_exceeded',
      'concurrency_limit_total',
      'concurrency_limit_backend',
      'concurrency_limit_profile',
      'concurrency_limit_user',
      'concurrency_limit_channel',
      'concurrency_limit_profile_user',
      'concurrency_limit_profile_channel',
    ]);
    expect(d).toMatchObject({ backend: 'k8s', profile: 'small', egress: 'proxy', ttlSeconds: 3600 });
  });

  it('places build/test work on the build profile, and only that', async () => {
    const placed = await decide(input({ request: { task: 'Run the full test suite, then fix what fails' } }));
    expect(placed).toMatchObject({ allow: true, profile: 'build', egress: 'open', ttlSeconds: 7200 });
    expect(placed.reasons).toEqual([
      { code: 'placed_on_build_profile', message: 'build/test task placed on profile "k8s/build" instead of "k8s/small"' },
    ]);
    expect(placed.limits.concurrency).toContainEqual({ scope: 'profile_user', key: 'k8s/build/alice', max: 1 });

    for (const task of ['go test ./...', 'cargo build --release', 'pytest -q', 'make', 'npm test', 'why is CI failing?']) {
      expect((await decide(input({ request: { task } }))).profile, task).toBe('build');
    }
    for (const task of ['make the button blue', 'summarize the test plan', 'fix the typo']) {
      expect((await decide(input({ request: { task } }))).profile, task).toBe('small');
    }
    const explicit = await decide(coverageInputs.explicitSmall!);
    expect(explicit.profile).toBe('small');
    const notAllowedOnBuild = await decide(input({ request: { task: 'npm test', agentId: 'gemini' } }));
    expect(notAllowedOnBuild).toMatchObject({ allow: true, profile: 'small' });
  });

  it('tightens egress for untrusted channels and on request, never loosens it', async () => {
    const webhook = await decide(input({ caller: { channel: webhookChannel } }));
    expect(webhook.egress).toBe('none');
    expect(codes(webhook)).toContain('egress_tightened');
    expect((await decide(input({ request: { execution: { backend: null, profile: null, egress: 'none' } } }))).egress).toBe('none');
    expect((await decide(input({ request: { execution: { backend: null, profile: null, egress: 'open' } } }))).egress).toBe('proxy');
    expect(
      (await decide(input({ resolved: { backend: 'local', profile: 'default' }, request: { execution: { backend: null, profile: null, egress: 'proxy' } } })))
        .egress,
    ).toBe('proxy');
  });

  it('gives non-interactive callers rate limits and shorter lifetimes', async () => {
    const cron = await decide(input({ caller: { channel: cronChannel } }));
    expect(cron.limits.rate).toEqual([
      { scope: 'user', key: 'cron/alice', perMinute: 2, burst: 1 },
      { scope: 'channel', key: 'cron-nightly', perMinute: 2, burst: 1 },
    ]);
    expect(cron.ttlSeconds).toBe(1800);
    const api = await decide(input({ caller: { channel: { id: 'api-1', kind: 'api', interactive: false } }, resolved: { profile: 'build' } }));
    expect(api.limits.rate).toEqual([
      { scope: 'user', key: 'api/alice', perMinute: 6, burst: 3 },
      { scope: 'channel', key: 'api-1', perMinute: 12, burst: 4 },
    ]);
    expect(api.ttlSeconds).toBe(3600);
  });

  it('raises the per-user cap for admins', async () => {
    const d = await decide(input({ caller: { user: { id: 'root', roles: ['admin'] } } }));
    expect(d.limits.concurrency).toContainEqual({ scope: 'user', key: 'root', max: 16 });
  });

  it('answers every coverage input with a contract-valid decision', async () => {
    for (const [name, admission] of Object.entries(coverageInputs)) {
      const d = await decide(admission);
      expect(d.reasons.length > 0 || d.allow, name).toBe(true);
    }
  });
});

/**
 * The permission rule compiled to WASM decides as `opa test` says it does (policies/permissions_test.rego):
 * builtins behave differently there (sprintf has no %q in WASM), so the compiled bundle is checked itself.
 */
describe('committed bundle: the permission rule in WASM', () => {
  async function permit(overrides: Partial<PermissionInput>, data: unknown = bundle.data): Promise<PermissionDecision> {
    const policy = await loadPolicy(bundle.wasm);
    policy.setData(data as object);
    const request: PermissionInput = {
      spawnId: 's-1',
      agent: 'qwen',
      profile: 'default',
      backend: 'local',
      caller: null,
      tool: { toolCallId: 't-1', kind: 'edit', title: 'Write notes.txt', rawInput: {} },
      paths: [{ path: '/ws/notes.txt', inWorkspace: true }],
      workspace: { root: '/ws' },
      options: ['allow_once', 'reject_once'],
      ...overrides,
    };
    const resultSet = policy.evaluate(request, PERMISSION_ENTRYPOINT) as { result: unknown }[];
    expect(resultSet).toHaveLength(1);
    const decision = checkPermissionDecision(resultSet[0]?.result);
    // A well-formed answer, never the engine's fallbacks for a broken rule.
    expect(decision.code).not.toMatch(/^permission_policy_/);
    return decision;
  }

  it('allows an edit inside the workspace once, saying why', async () => {
    expect(await permit({})).toEqual({ outcome: 'allow_once', code: 'allowed', reason: '"Write notes.txt": tool kind "edit" is allowed in profile default (inside the workspace)' });
    expect((await permit({ tool: { toolCallId: 't', kind: 'execute', title: 'npm test', rawInput: null }, paths: [] })).reason).toBe('"npm test": tool kind "execute" is allowed in profile default');
  });

  it('rejects a path outside the workspace, an edit naming no path, and a kind the profile does not allow', async () => {
    expect(await permit({ paths: [{ path: '/etc/passwd', inWorkspace: false }, { path: '/ws/a', inWorkspace: true }] })).toEqual({
      outcome: 'reject',
      code: 'path_outside_workspace',
      reason: '"Write notes.txt" names /etc/passwd, outside the workspace /ws',
    });
    expect(await permit({ paths: [], tool: { toolCallId: 't', kind: 'edit', title: null, rawInput: null } })).toEqual({ outcome: 'reject', code: 'path_unknown', reason: 'the tool call: a "edit" request must name the paths it touches' });
    const readonly = withConfig({ permissions: { profiles: { review: { allowKinds: ['read'] } } } });
    expect(await permit({ profile: 'review' }, readonly)).toEqual({ outcome: 'reject', code: 'tool_kind_not_allowed', reason: '"Write notes.txt": tool kind "edit" is not allowed in profile review' });
    expect((await permit({}, withConfig({ permissions: { default: { grant: 'sometimes' } } }))).code).toBe('permission_config_invalid');
  });
});

/**
 * The decision-log mask rule (policies/log.rego) compiled to WASM: substring and count are per
 * character there as in `opa test` (a multi-byte task is cut between characters, not bytes).
 */
describe('committed bundle: the decision-log mask rule in WASM', () => {
  async function masks(event: unknown, data: unknown = bundle.data): Promise<unknown[]> {
    const policy = await loadPolicy(bundle.wasm);
    policy.setData(data as object);
    const resultSet = policy.evaluate(event, MASK_ENTRYPOINT) as { result: unknown[] }[];
    expect(resultSet).toHaveLength(1);
    return resultSet[0]!.result;
  }
  const admission = (task: string) => ({ decision_id: 'd', path: 'spawngate/admission/decision', input: { request: { task } }, result: { allow: true } });

  it('cuts a task longer than taskMaxChars and says how much, by characters', async () => {
    const task = `${'é'.repeat(1999)}ü${'ß'.repeat(7)}`;
    expect(await masks(admission(task))).toEqual([{ op: 'upsert', path: '/input/request/task', value: `${'é'.repeat(1999)}ü…[7 more characters]` }]);
    expect(await masks(admission('é'.repeat(2000)))).toEqual([]);
  });

  it('erases a permission request\'s rawInput and nothing else', async () => {
    const event = { decision_id: 'd', path: 'spawngate/permissions/decision', input: { tool: { kind: 'edit', rawInput: { content: 'x' } } }, result: { outcome: 'allow_once' } };
    expect(await masks(event)).toEqual(['/input/tool/rawInput']);
    expect(await masks(event, withConfig({ decisionLog: { eraseToolInput: false } }))).toEqual([]);
  });
});
