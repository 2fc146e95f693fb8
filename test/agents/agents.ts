/**
 * The real ACP agents this suite drives, installed pinned by scripts/ensure-agents.sh, and their
 * recipes: how each is pointed at a model API (here the mock on loopback) with nothing but
 * `agents.acp.<id>` (command and env; the key as a secretRef). docs/agents.md shows the same recipes.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { agentArgv, agentNative, agentPackage } from '../../src/agents/catalog.js';
import { AGENTS_IN_IMAGE, buildWorkerImage } from '../../src/backends/docker/image.js';
import { fixtureRepoFiles } from '../docker/engine.js';
import { startMockModel } from '../fixtures/mock-model.js';
import type { MockModel } from '../fixtures/mock-model.js';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/**
 * A worker image carrying the given agents under /opt/agents (as `spawngate image build --agent <id>`
 * puts them there) and the fixture repository; a no-op when up to date. Returns each agent's argv
 * inside the image. The Docker and the Kubernetes suites share one tag with all five agents, so the
 * image is built (and imported into the node's containerd) once per run, not once per agent.
 */
export async function buildAgentsImage(tag: string, ids: readonly SuiteAgent[] = ALL_AGENTS): Promise<Record<SuiteAgent, readonly string[]>> {
  ensureAgents(ids);
  const packages = ids.map((id) => {
    const pkg = agentPackage(id);
    if (!pkg) throw new Error(`${id} is not in the agent catalog`);
    return { id, pkg, dir: join(repoRoot, '.tools', 'agents', id) };
  });
  await buildWorkerImage({
    tag,
    agents: packages.map(({ id, pkg, dir }) => ({ id, dir, native: [agentNative(pkg, dir)].filter((p): p is string => p !== null) })),
    extraFiles: await fixtureRepoFiles(),
    log: (line) => void process.stdout.write(`image: ${line}\n`),
  });
  const argv: Partial<Record<SuiteAgent, readonly string[]>> = {};
  for (const { id, pkg, dir } of packages) argv[id] = agentArgv(pkg, dir, join(AGENTS_IN_IMAGE, id));
  return argv as Record<SuiteAgent, readonly string[]>;
}

/** The agents the full suite drives (the lightest two of the five, on two different wire dialects). */
export const SUITE_AGENTS = ['codex-acp', 'claude-code-acp'] as const;
/** The others with a recipe in docs/agents.md: each is checked with a text turn and an edit. */
export const RECIPE_AGENTS = ['qwen-code', 'gemini-cli', 'opencode'] as const;
export type SuiteAgent = (typeof SUITE_AGENTS)[number] | (typeof RECIPE_AGENTS)[number];
export const ALL_AGENTS: readonly SuiteAgent[] = [...SUITE_AGENTS, ...RECIPE_AGENTS];
/** The image the Docker and Kubernetes agent suites run: the worker with all five agents and the fixture repository. */
export const AGENTS_IMAGE = 'spawngate-worker:agents-test';

/** Installs (or finds, cached) the pinned agents; returns each one's ACP argv. */
export function ensureAgents(ids: readonly string[] = ALL_AGENTS): Record<string, string[]> {
  const out = execFileSync('bash', ['scripts/ensure-agents.sh', ...ids], { cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 20 * 60_000 });
  const argv: Record<string, string[]> = {};
  for (const line of out.trim().split('\n')) {
    const [id = '', json = '[]'] = line.split('\t');
    argv[id] = JSON.parse(json) as string[];
  }
  return argv;
}

/**
 * The mock model on 127.0.0.2: a worker's own loopback (127.0.0.1) stays out of its egress proxy
 * (NO_PROXY), so the host's loopback is reached through the proxy at another 127.x address.
 */
export function startModel(): Promise<MockModel> {
  return startMockModel({ host: '127.0.0.2' });
}

/** The model key as the recipes name it: secret `model`, key `api-key`, a file under a backend's secretsDir. */
export function writeModelKey(secretsDir: string, key: string): void {
  mkdirSync(join(secretsDir, 'model'), { recursive: true });
  writeFileSync(join(secretsDir, 'model', 'api-key'), key, { mode: 0o600 });
}

/** `agents.acp.<id>` for one agent against the model API at `baseUrl` (http://host:port, no path), the key from secret `model/api-key`. */
export function agentRecipe(id: SuiteAgent, argv: readonly string[], baseUrl: string): Record<string, unknown> {
  const key = { secretRef: { name: 'model', key: 'api-key' } };
  switch (id) {
    case 'codex-acp':
      // Codex reads its settings from -c overrides as well as ~/.codex/config.toml: no file to provision.
      // gpt-5.4-mini: a model codex has metadata for (tools like apply_patch depend on it). sandbox
      // danger-full-access: codex's own sandbox needs bubblewrap; the worker is the sandbox here.
      // approval untrusted: codex asks (ACP session/request_permission) before edits and commands.
      return {
        command: [
          ...argv,
          ...['model="gpt-5.4-mini"', 'model_provider="model"', 'sandbox_mode="danger-full-access"', 'approval_policy="untrusted"', 'check_for_update_on_startup=false', 'analytics.enabled=false', 'feedback.enabled=false']
            .concat([`model_providers.model.name="Model API"`, `model_providers.model.base_url="${baseUrl}/v1"`, 'model_providers.model.env_key="MODEL_API_KEY"', 'model_providers.model.wire_api="responses"'])
            .flatMap((c) => ['-c', c]),
        ],
        env: { MODEL_API_KEY: key },
      };
    case 'claude-code-acp':
      return {
        command: [...argv],
        env: {
          ANTHROPIC_BASE_URL: baseUrl,
          ANTHROPIC_API_KEY: key,
          // No auto-updater, telemetry, error reports or calls to Anthropic outside the base URL.
          CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
          DISABLE_TELEMETRY: '1',
          DISABLE_ERROR_REPORTING: '1',
          DISABLE_AUTOUPDATER: '1',
        },
      };
    case 'qwen-code':
      // OpenAI-compatible Chat Completions; the argv (from the catalog) sets approval mode "default", so it asks before edits.
      return { command: [...argv], env: { OPENAI_BASE_URL: `${baseUrl}/v1`, OPENAI_MODEL: 'mock-model', OPENAI_API_KEY: key } };
    case 'gemini-cli':
      // GEMINI_MODEL: without it every turn first asks a router model which model to use.
      return {
        command: [...argv],
        env: { GOOGLE_GEMINI_BASE_URL: baseUrl, GEMINI_MODEL: 'gemini-2.5-flash', GEMINI_DEFAULT_AUTH_TYPE: 'gemini-api-key', GEMINI_CLI_TRUST_WORKSPACE: 'true', GEMINI_API_KEY: key },
      };
    case 'opencode':
      // The whole config inline (no file to provision); "ask" makes it ask before edits and commands, which it does not by default.
      return {
        command: [...argv],
        env: {
          OPENCODE_CONFIG_CONTENT: JSON.stringify({
            model: 'model/mock-model',
            small_model: 'model/mock-model',
            autoupdate: false,
            share: 'disabled',
            permission: { edit: 'ask', bash: 'ask' },
            provider: { model: { npm: '@ai-sdk/openai-compatible', name: 'Model API', options: { baseURL: `${baseUrl}/v1`, apiKey: '{env:MODEL_API_KEY}' }, models: { 'mock-model': { name: 'Mock model', tool_call: true } } } },
          }),
          OPENCODE_DISABLE_AUTOUPDATE: '1',
          OPENCODE_DISABLE_SHARE: '1',
          OPENCODE_DISABLE_MODELS_FETCH: '1',
          OPENCODE_DISABLE_LSP_DOWNLOAD: '1',
          MODEL_API_KEY: key,
        },
      };
  }
}
