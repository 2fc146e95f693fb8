/**
 * The fuzz and abuse suite: generated requests and configs through the library, the CLI and the
 * HTTP API. Whatever comes in, the answer is a decision or a spawngate error that names where the
 * input was wrong; never a crash, a 500, a TypeError or a stack trace. Seeded (FUZZ_SEED to vary
 * it), so CI runs the same cases every time and a failure prints the seed and the shrunk input.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAdmission, SHIPPED_BUNDLE, type Admission } from '../../src/admission/gate.js';
import { parseConfigText, validateConfig } from '../../src/config/load.js';
import { ConfigError, SpawngateError } from '../../src/errors.js';
import { createServer, type RunningServer } from '../../src/server/index.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import { cli } from '../cli/helpers.js';
import { bodyText, mutated, nastyJson, validConfig, validRequest } from './arbitraries.js';

const seed = Number(process.env['FUZZ_SEED'] ?? 20261202);
/** Runs per road; together ≥ 10^4 generated inputs. */
const RUNS = { libraryAdmit: 3000, libraryAnything: 1500, configValue: 2500, configText: 1500, http: 2000, cli: 150 };
const counted: Record<string, number> = {};
const count = (road: string) => (counted[road] = (counted[road] ?? 0) + 1);

/** An issue list as a refusal must carry it: at least one, each with a path and a message. */
function expectIssues(issues: unknown): void {
  expect(Array.isArray(issues) && issues.length > 0, `issues: ${JSON.stringify(issues)}`).toBe(true);
  for (const issue of issues as { path?: unknown; message?: unknown }[]) {
    expect(typeof issue.path === 'string' && issue.path.length > 0, JSON.stringify(issue)).toBe(true);
    expect(typeof issue.message === 'string' && issue.message.length > 0, JSON.stringify(issue)).toBe(true);
  }
}

function expectDecision(decision: { allow: unknown; reasons: unknown }): void {
  expect(typeof decision.allow).toBe('boolean');
  expect(Array.isArray(decision.reasons)).toBe(true);
}

describe('fuzz: library', () => {
  let admission: Admission;
  beforeAll(async () => {
    admission = await createAdmission({ config: validConfig(), bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: false });
  });
  afterAll(async () => {
    await admission?.close();
  });

  async function admitOnce(value: unknown): Promise<void> {
    count('library');
    let result;
    try {
      result = await admission.admit(value as never);
    } catch (err) {
      expect(err, String((err as Error)?.stack)).toBeInstanceOf(SpawngateError);
      expect((err as SpawngateError).code).toBe('REQUEST_INVALID');
      expectIssues((err as SpawngateError).details['issues']);
      return;
    }
    expectDecision(result.decision);
  }

  it(`admit: ${RUNS.libraryAdmit} requests taken apart at random paths`, async () => {
    await fc.assert(fc.asyncProperty(mutated(validRequest), admitOnce), { numRuns: RUNS.libraryAdmit, seed });
  }, 300_000);

  it(`admit: ${RUNS.libraryAnything} values of any JS shape (null prototypes, Maps, BigInts, sparse arrays…)`, async () => {
    const anything = fc.anything({ maxDepth: 3, withNullPrototype: true, withBigInt: true, withDate: true, withMap: true, withSet: true, withTypedArray: true, withSparseArray: true, withBoxedValues: true, withObjectString: true, withUnicodeString: true });
    await fc.assert(fc.asyncProperty(fc.oneof(anything, nastyJson), admitOnce), { numRuns: RUNS.libraryAnything, seed });
  }, 300_000);

  it(`config: ${RUNS.configValue} configs taken apart at random paths`, () => {
    fc.assert(
      fc.property(mutated(validConfig), (value) => {
        count('config');
        const result = validateConfig(value);
        if (!result.ok) expectIssues(result.issues);
      }),
      { numRuns: RUNS.configValue, seed },
    );
  }, 300_000);

  it(`config: ${RUNS.configText} config texts (JSON and YAML, broken, duplicate keys, lone surrogates, raw bytes)`, () => {
    const yamlish = mutated(validConfig).map((v) => `# yaml\nagents: ${JSON.stringify((v as { agents?: unknown } | null)?.agents ?? v)}\n`);
    const texts = fc.oneof(bodyText(validConfig).map((b) => Buffer.from(b).toString('utf8')), yamlish, fc.string({ unit: 'binary', maxLength: 200 }));
    fc.assert(
      fc.property(texts, (text) => {
        count('config');
        try {
          parseConfigText(text);
        } catch (err) {
          expect(err, String((err as Error)?.stack)).toBeInstanceOf(ConfigError);
          expectIssues((err as ConfigError).issues);
        }
      }),
      { numRuns: RUNS.configText, seed },
    );
  }, 300_000);
});

describe('fuzz: HTTP API', () => {
  const token = randomBytes(24).toString('base64url');
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  let gate: Spawngate;
  let server: RunningServer;
  let port = 0;

  beforeAll(async () => {
    gate = await createSpawngate({ config: validConfig(), owner: `fuzz-${randomUUID().slice(0, 8)}`, sweepIntervalMs: 0, decisionLog: false, watchBundle: false });
    server = await createServer({ gate, token, listen: { port: 0, host: '127.0.0.1' } });
    port = Number(new URL((server.address as { url: string }).url).port);
  });
  afterAll(async () => {
    agent.destroy();
    await server?.close();
    await gate?.shutdown();
  });

  function post(path: string, body: Uint8Array): Promise<{ status: number; json: unknown }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        { host: '127.0.0.1', port, path, method: 'POST', agent, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': body.length } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let json: unknown = null;
            try {
              json = JSON.parse(text);
            } catch {
              json = text;
            }
            resolve({ status: res.statusCode ?? 0, json });
          });
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  it(`POST /v1/admit: ${RUNS.http} generated bodies; never a 5xx, every 400 names its path`, async () => {
    await fc.assert(
      fc.asyncProperty(bodyText(validRequest), async (body) => {
        count('http');
        const { status, json } = await post('/v1/admit', body);
        expect(status, JSON.stringify(json)).toBeLessThan(500);
        if (status === 200) {
          expectDecision((json as { decision: { allow: unknown; reasons: unknown } }).decision ?? (json as never));
          return;
        }
        expect(status, JSON.stringify(json)).toBe(400);
        const error = (json as { error: { code: string; issues?: unknown } }).error;
        expect(error.code).toBe('REQUEST_INVALID');
        expectIssues(error.issues);
      }),
      { numRuns: RUNS.http, seed },
    );
  }, 300_000);
});

describe('fuzz: CLI', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sg-fuzz-'));
  let n = 0;
  it(`admit --input: ${RUNS.cli} generated files; exit 0/2/3 only, 2 names where, never a stack trace`, async () => {
    await fc.assert(
      fc.asyncProperty(bodyText(validRequest), async (body) => {
        count('cli');
        const file = join(dir, `in-${n++}.json`);
        writeFileSync(file, body);
        const res = await cli(['admit', '--input', file, '--json']);
        expect([0, 2, 3], res.stderr).toContain(res.code);
        expect(res.stderr).not.toMatch(/unexpected error|\n\s+at /);
        // A refusal names where: an issue line "  <path>: <message>", a parse fault "(at <path>, offset N)", or the encoding.
        if (res.code === 2) expect(res.stderr).toMatch(/^spawngate admit: .*(\n {2}\S[^\n]*: \S|\(at \S+, offset \d+\)|is not valid UTF-8)/s);
        else expect(JSON.parse(res.stdout)).toHaveProperty('allow');
      }),
      { numRuns: RUNS.cli, seed },
    );
  }, 300_000);

});

describe('fuzz: totals', () => {
  it('went through at least 10^4 generated inputs across the three roads', () => {
    const total = Object.values(counted).reduce((a, b) => a + b, 0);
    // The figure for the closing note, and a floor the suite keeps.
    process.stdout.write(`fuzz: ${total} generated inputs (${Object.entries(counted).map(([k, v]) => `${k} ${v}`).join(', ')}), seed ${seed}\n`);
    expect(total).toBeGreaterThanOrEqual(10_000);
    for (const road of ['library', 'config', 'http', 'cli']) expect(counted[road], road).toBeGreaterThan(0);
  });
});
