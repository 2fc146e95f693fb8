/**
 * Credentials that never leak, on the process backend with real workers: secret references resolved
 * from a folder of files and from the gateway's SPAWNGATE_SECRET_* variables reach the agent's
 * environment, and appear in no output — events, status, logs, the decision log, the listing, the
 * state folder, argv.
 */
import { createHash, randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerEvent } from '../../src/protocol/events.js';
import type { Spawngate } from '../../src/spawngate.js';
import { testGate } from '../helpers/gate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sg-sec-'));
// Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
chmodSync(root, 0o711);
const stateDir = join(root, 's');
const secretsDir = join(root, 'secrets');
const decisions = join(root, 'decisions.log');
// Random, and shaped like nothing the redaction knows: absent by design, not by luck.
const fileSecret = `f1le-${randomUUID()}`;
const envSecret = `3nv-${randomUUID()}`;
const ENV_VAR = 'SPAWNGATE_SECRET_GH_TOKEN';
let gate: Spawngate;

const caller = { sessionKey: 'agent:main:sec', depth: 0, channel: { id: 'sec', kind: 'cli', interactive: true }, user: { id: 'sec-user', roles: [] } };
const sha = (v: string) => createHash('sha256').update(v).digest('hex');

/** Every file under a folder, recursively (the process backend's state: state.json, logs, sockets skipped). */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    const st = statSync(path);
    if (st.isDirectory()) out.push(...filesUnder(path));
    else if (st.isFile()) out.push(path);
  }
  return out;
}

beforeAll(async () => {
  mkdirSync(join(secretsDir, 'openai'), { recursive: true });
  writeFileSync(join(secretsDir, 'openai', 'api-key'), `${fileSecret}\n`, { mode: 0o600 });
  process.env[ENV_VAR] = envSecret;
  const base = { egress: 'none', ttlSeconds: 600, timeoutSeconds: 120 };
  gate = await testGate('sec', {
    agents: {
      executionBackends: {
        local: {
          type: 'process',
          stateDir,
          secretsDir,
          defaultProfile: 'keys',
          profiles: {
            keys: { ...base, env: { OPENAI_API_KEY: { secretRef: { name: 'openai', key: 'api-key' } }, GH_TOKEN: { secretRef: { name: 'gh', key: 'token' } } } },
            missing: { ...base, env: { ANTHROPIC_API_KEY: { secretRef: { name: 'anthropic', key: 'api-key' } } } },
          },
        },
      },
      execution: { default: { backend: 'local', profile: 'keys' } },
      acp: { fixture: { command: [process.execPath, fixture] } },
    },
  }, { decisionLog: decisions });
});

afterAll(async () => {
  await gate?.shutdown();
  delete process.env[ENV_VAR];
  rmSync(root, { recursive: true, force: true });
});

describe('secret references on the process backend', () => {
  it('reach the agent from a secrets folder and from the gateway environment, and appear in no output', async () => {
    const handle = await gate.spawn({ agentId: 'fixture', task: 'use the keys', caller });
    const outputs: string[] = [];
    try {
      const events: WorkerEvent[] = [];
      for (const cmd of ['hasenv OPENAI_API_KEY', 'hasenv GH_TOKEN', 'stderr hello from the agent']) {
        for await (const e of handle.turn(cmd)) events.push(e);
      }
      const said = events.filter((e) => e.type === 'agent.message.delta').map((e) => (e as { text: string }).text).join('');
      expect(said).toContain(`OPENAI_API_KEY sha256=${sha(fileSecret)}`);
      expect(said).toContain(`GH_TOKEN sha256=${sha(envSecret)}`);
      outputs.push(JSON.stringify(events));
      outputs.push(JSON.stringify(await gate.status(handle.spawnId)));
      outputs.push((await gate.logs(handle.spawnId, 10_000)).join('\n'));
      outputs.push(JSON.stringify(await gate.list()));
      outputs.push(JSON.stringify(handle));
      // argv of the worker (its environment has them, as it must).
      outputs.push(readFileSync(`/proc/${handle.nativeId}/cmdline`, 'utf8'));
      expect(readFileSync(`/proc/${handle.nativeId}/environ`, 'utf8')).toContain(fileSecret);
      for (const file of filesUnder(stateDir)) outputs.push(readFileSync(file, 'utf8'));
    } finally {
      await handle.close();
    }
    outputs.push(readFileSync(decisions, 'utf8'));
    const all = outputs.join('\n');
    expect(all.length).toBeGreaterThan(1000);
    expect(all).toContain('hello from the agent');
    expect(all.includes(fileSecret), 'the file secret leaked').toBe(false);
    expect(all.includes(envSecret), 'the environment secret leaked').toBe(false);
  });

  it('a reference nobody can resolve refuses the spawn, naming where it looked and no value; nothing is created or held', async () => {
    const err = await gate.spawn({ agentId: 'fixture', task: 'x', caller, execution: { profile: 'missing' } }).then(
      () => null,
      (e: unknown) => e as Error & { code?: string; details?: Record<string, unknown> },
    );
    expect(err?.code).toBe('BACKEND_FAILED');
    expect(err?.message).toContain(join(secretsDir, 'anthropic', 'api-key'));
    expect(err?.message).toContain('$SPAWNGATE_SECRET_ANTHROPIC_API_KEY');
    expect(err?.details).toMatchObject({ reason: 'SecretNotFound', field: 'env.ANTHROPIC_API_KEY' });
    expect(await gate.list()).toEqual([]);
    expect(await gate.store.active()).toEqual([]);
  });
});
