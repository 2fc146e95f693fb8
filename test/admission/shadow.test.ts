/**
 * Shadow evaluation and offline replay with real bundles: the live one is the shipped bundle, the
 * candidate the same policy with other data (a stricter nesting depth, a shorter default TTL, an
 * agent denied), packed as an operator would ship it. The candidate never decides; its would-be
 * decisions are counted and logged beside the live ones, and `spawngate policy replay` finds the
 * same differences in the decision log afterwards.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryDecisionLog } from '../../src/admission/decision-log.js';
import { createAdmission, SHIPPED_BUNDLE, type Admission } from '../../src/admission/gate.js';
import { readBundle } from '../../src/admission/bundle.js';
import { compareDecisions } from '../../src/admission/shadow.js';
import type { AllowDecision, Decision } from '../../src/admission/types.js';
import { cli } from '../cli/helpers.js';
import { memoryLogger } from '../helpers/logger.js';
import { sample } from '../telemetry/gate.js';

const tmp = mkdtempSync(join(tmpdir(), 'sg-shadow-'));
let candidate = '';
let admission: Admission;
const log = memoryDecisionLog();

/** The shipped bundle with `edit` applied to its admission config, as a .tar.gz under a new revision. */
async function candidateBundle(name: string, edit: (config: Record<string, unknown>) => void): Promise<string> {
  const shipped = await readBundle(SHIPPED_BUNDLE);
  const data = structuredClone(shipped.data) as { spawngate: { admission: { config: Record<string, unknown> } } };
  edit(data.spawngate.admission.config);
  const dir = join(tmp, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'policy.wasm'), shipped.wasm);
  writeFileSync(join(dir, 'data.json'), JSON.stringify(data));
  const manifest = JSON.parse(execFileSync('tar', ['-xzOf', SHIPPED_BUNDLE, '/.manifest'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as Record<string, unknown>;
  writeFileSync(join(dir, '.manifest'), JSON.stringify({ ...manifest, revision: `candidate-${name}` }));
  const file = join(tmp, `${name}.tar.gz`);
  execFileSync('tar', ['-czf', file, '-C', dir, 'policy.wasm', 'data.json', '.manifest']);
  return file;
}

const config = {
  agents: {
    executionBackends: { local: { type: 'process', defaultProfile: 'small', profiles: { small: { allowedAgents: ['echo', 'fixture'] } } } },
    execution: { default: { backend: 'local', profile: 'small' } },
    acp: { fixture: { command: ['/bin/true'] } },
  },
};

const request = (over: { agentId?: string; depth?: number; user?: string } = {}) => ({
  agentId: over.agentId ?? 'echo',
  task: 'look at the tests',
  caller: { sessionKey: 'agent:main:shadow', depth: over.depth ?? 0, channel: { id: 'shadow-chan', kind: 'cli' }, user: { id: over.user ?? 'shadow-user', roles: [] } },
});

beforeAll(async () => {
  candidate = await candidateBundle('stricter', (c) => {
    c['maxDepth'] = 1;
    (c['ttl'] as Record<string, unknown>)['defaultSeconds'] = 600;
    (c['agents'] as Record<string, unknown>)['deny'] = ['fixture'];
  });
  admission = await createAdmission({ config, shadowBundle: candidate, watchBundle: false, decisionLog: log, logger: memoryLogger() });
});

afterAll(async () => {
  await admission?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('compareDecisions', () => {
  const allow: AllowDecision = { allow: true, backend: 'b', profile: 'p', egress: 'none', ttlSeconds: 60, limits: { concurrency: [], rate: [] }, reasons: [] };
  const deny = (code: string): Decision => ({ allow: false, backend: null, profile: null, egress: null, ttlSeconds: null, limits: { concurrency: [], rate: [] }, reasons: [{ code, message: code }] });
  it('orders differences from allow/deny to placement to terms to reasons', () => {
    expect(compareDecisions(allow, allow)).toBe('same');
    expect(compareDecisions(allow, deny('x'))).toBe('would_deny');
    expect(compareDecisions(deny('x'), allow)).toBe('would_allow');
    expect(compareDecisions(allow, { ...allow, profile: 'q' })).toBe('different_placement');
    expect(compareDecisions(allow, { ...allow, egress: 'open' })).toBe('different_placement');
    expect(compareDecisions(allow, { ...allow, ttlSeconds: 30 })).toBe('different_terms');
    expect(compareDecisions(allow, { ...allow, limits: { concurrency: [{ scope: 'user', key: 'u', max: 1 }], rate: [] } })).toBe('different_terms');
    expect(compareDecisions(deny('x'), deny('x'))).toBe('same');
    expect(compareDecisions(deny('x'), deny('y'))).toBe('different_reason');
  });
});

describe('shadow evaluation beside the live bundle', () => {
  it('never decides, and counts and logs each would-be decision by its difference', async () => {
    const results = [
      await admission.admit(request()), // live allow 3600 s, candidate allow 600 s: different_terms
      await admission.admit(request({ depth: 2 })), // live allow, candidate deny (maxDepth 1): would_deny
      await admission.admit(request({ agentId: 'fixture' })), // live allow, candidate deny (agent denied): would_deny
      await admission.admit(request({ depth: 9 })), // both deny, same reason: same
    ];
    // The live bundle decided: its answers stand.
    expect(results.map((r) => r.decision.allow)).toEqual([true, true, true, false]);
    expect(results[0]?.decision.ttlSeconds).toBe(3600);
    await admission.shadow?.drain();
    const count = (difference: string) => sample(admission.metrics.registry, 'spawngate_shadow_decisions_total', { difference });
    expect(await count('different_terms')).toBe(1);
    expect(await count('would_deny')).toBe(2);
    expect(await count('same')).toBe(1);
    expect(await count('would_allow')).toBe(0);

    const lines = log.entries;
    const shadowLines = lines.filter((l) => l.stage === 'shadow');
    const liveLines = lines.filter((l) => l.stage !== 'shadow');
    expect(shadowLines).toHaveLength(4);
    // One shadow line per live line, under the same decision id, with the candidate's revision and no input of its own.
    expect(new Set(shadowLines.map((l) => l.decision_id))).toEqual(new Set(liveLines.map((l) => l.decision_id)));
    for (const l of shadowLines) {
      expect(l.bundles).toEqual({ spawngate: { revision: 'candidate-stricter' } });
      expect(l.input).toBeUndefined();
    }
    const depthLine = shadowLines.find((l) => l.decision_id === results[1]?.decisionId);
    expect(depthLine).toMatchObject({ difference: 'would_deny', result: { allow: false } });
  });

  it('policy replay finds the same differences in the decision log, and exits 1 because some changed', async () => {
    const file = join(tmp, 'decisions.jsonl');
    writeFileSync(file, `${(log.entries).map((l) => JSON.stringify(l)).join('\n')}\nnot json\n`);
    const configFile = join(tmp, 'config.json');
    writeFileSync(configFile, JSON.stringify(config));
    const run = await cli(['policy', 'replay', '--bundle', candidate, '--log', file, '-c', configFile, '--json']);
    expect(run.code, run.stderr).toBe(1);
    const report = JSON.parse(run.stdout) as { replayed: number; differences: Record<string, number>; skipped: Record<string, number>; otherCatalog: number; changes: { difference: string }[] };
    expect(report.replayed).toBe(4);
    expect(report.differences).toMatchObject({ same: 1, would_deny: 2, different_terms: 1, would_allow: 0 });
    expect(report.skipped).toMatchObject({ shadow: 4, unreadable: 1 });
    expect(report.otherCatalog).toBe(0);
    expect(report.changes.map((c) => c.difference).sort()).toEqual(['different_terms', 'would_deny', 'would_deny']);

    // The live bundle replayed against its own log changes nothing: exit 0.
    const same = await cli(['policy', 'replay', '--bundle', SHIPPED_BUNDLE, '--log', file, '-c', configFile]);
    expect(same.code, same.stderr).toBe(0);
    expect(same.stdout).toMatch(/replayed 4 admission decisions/);

    // Another config than the one the log was made under is said, not hidden.
    const other = await cli(['policy', 'replay', '--bundle', SHIPPED_BUNDLE, '--log', file, '--json']);
    expect((JSON.parse(other.stdout) as { otherCatalog: number }).otherCatalog).toBe(4);
  });

  it('policy replay usage errors exit 2 and name what is wrong', async () => {
    expect((await cli(['policy', 'replay', '--log', 'x'])).stderr).toMatch(/--bundle FILE is required/);
    const missing = await cli(['policy', 'replay', '--bundle', candidate, '--log', join(tmp, 'nope.jsonl')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/nope\.jsonl/);
    const bad = await cli(['policy', 'replay', '--bundle', join(tmp, 'nope.tar.gz'), '--log', '-'], '');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/nope\.tar\.gz/);
  });
});
