/**
 * Abuse of the inputs themselves: special files where a file is expected, endless or silent stdin,
 * null and non-text requests, duplicate keys, an agent nobody can start. Each gets a clear error
 * with the path, the documented exit code, and nothing is created.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { createAdmission, SHIPPED_BUNDLE } from '../../src/admission/gate.js';
import { validateConfig } from '../../src/config/load.js';
import { AdmissionDeniedError, RequestError } from '../../src/errors.js';
import { BoundedReadError, readBoundedStream } from '../../src/files.js';
import { createServer } from '../../src/server/index.js';
import { cli } from '../cli/helpers.js';
import { testGate } from '../helpers/gate.js';
import { validRequest } from './arbitraries.js';

const dir = mkdtempSync(join(tmpdir(), 'sg-inputs-'));
const file = (name: string, content: string | Uint8Array) => {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
};
const fifo = (name: string) => {
  const path = join(dir, name);
  execFileSync('mkfifo', [path]);
  return path;
};

describe('special files and streams', () => {
  it('a FIFO with no writer as --config, --input or --bundle is refused at once (exit 2), never waited on', async () => {
    const request = file('r.json', JSON.stringify(validRequest()));
    for (const [flag, args] of [
      ['--config', ['admit', '--config', fifo('c.fifo'), '--input', request]],
      ['--input', ['admit', '--input', fifo('i.fifo')]],
      ['--bundle', ['admit', '--bundle', fifo('b.fifo'), '--input', request]],
    ] as const) {
      const res = await cli([...args]);
      expect(res.code, `${flag}: ${res.stderr}`).toBe(2);
      expect(res.stderr, flag).toMatch(/FIFO/);
      expect(res.stderr).not.toMatch(/unexpected error/);
    }
  });

  it('a device as --bundle or --config (/dev/zero) is refused before a byte is read', async () => {
    const request = file('r2.json', JSON.stringify(validRequest()));
    const bundle = await cli(['admit', '--bundle', '/dev/zero', '--input', request]);
    expect(bundle.code, bundle.stderr).toBe(2);
    expect(bundle.stderr).toMatch(/character device/);
    const config = await cli(['config', 'validate', '/dev/zero']);
    expect(config.code).toBe(2);
    expect(config.stderr).toMatch(/character device/);
  });

  it('endless stdin is cut at 1 MiB (exit 2), not read to the end', async () => {
    let produced = 0;
    const endless = new Readable({
      read() {
        produced += 64 * 1024;
        // Bounded even if the reader never stopped: 64 MiB is far past the limit.
        this.push(produced > 64 * 1024 * 1024 ? null : Buffer.alloc(64 * 1024, 0x20));
      },
    });
    const res = await cli(['admit', '--input', '-'], endless);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/more than the 1048576 bytes allowed/);
    expect(produced).toBeLessThan(4 * 1024 * 1024);
  });

  it('a stdin pipe whose writer never writes nor closes fails after the idle bound', async () => {
    const silent = new PassThrough();
    await expect(readBoundedStream(silent, 1024, 50)).rejects.toMatchObject({ fault: { reason: 'idle_timeout' } });
    const bytes = new PassThrough();
    const reading = readBoundedStream(bytes, 1024, 5_000);
    bytes.end('{"a":1}');
    expect((await reading).toString()).toBe('{"a":1}');
    await expect(readBoundedStream(Readable.from([Buffer.alloc(2048)]), 1024, null)).rejects.toBeInstanceOf(BoundedReadError);
  });
});

describe('requests that are not what they claim', () => {
  const admissions: Awaited<ReturnType<typeof createAdmission>>[] = [];
  afterAll(async () => {
    for (const a of admissions) await a.close();
  });
  const admission = async () => {
    const a = await createAdmission({ config: { agents: { executionBackends: { local: { type: 'process' } }, execution: { default: { backend: 'local' } } } }, bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: false });
    admissions.push(a);
    return a;
  };

  it('null, arrays and strings are REQUEST_INVALID at (root), in the library and the CLI', async () => {
    const a = await admission();
    for (const value of [null, [], 'x', 1, undefined]) {
      const err = await a.admit(value as never).then(() => null, (e: unknown) => e);
      expect(err, JSON.stringify(value)).toBeInstanceOf(RequestError);
      expect((err as RequestError).issues[0]?.path).toBe('(root)');
    }
    const res = await cli(['admit', '--input', file('null.json', 'null')]);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/\(root\): expected object, received null/);
  });

  it('lone surrogates are REQUEST_INVALID at their path, from JS and from JSON text', async () => {
    const a = await admission();
    const err = await a.admit({ ...validRequest(), task: 'fix \ud800 this' } as never).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(RequestError);
    expect((err as RequestError).issues).toEqual([{ path: 'task', message: expect.stringMatching(/lone surrogate/) as unknown }]);
    const text = JSON.stringify(validRequest()).replace('"fuzz-user"', '"\\udc00"');
    const res = await cli(['admit', '--input', file('surrogate.json', text)]);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/lone surrogate.*at caller\.user\.id/);
  });

  it('duplicate keys in --input are refused, naming the key and where', async () => {
    const text = JSON.stringify(validRequest()).replace('"user":{', '"user":{"id":"mallory",');
    const res = await cli(['admit', '--input', file('dup.json', text)]);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/duplicate key "id" \(at caller\.user\.id, offset \d+\)/);
  });

  it('invalid UTF-8 in --input is refused, not replaced', async () => {
    const bytes = Buffer.from(JSON.stringify(validRequest()));
    bytes[bytes.indexOf('fix')] = 0xff;
    const res = await cli(['admit', '--input', file('bad-utf8.json', bytes)]);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/not valid UTF-8/);
  });

  it('an inherited key in the config is an unknown key, not a printed function', () => {
    const result = validateConfig({ agents: { executionBackends: { local: { type: 'process', constructor: 1, toString: 2 } } } });
    expect(result.ok).toBe(false);
    const issues = result.ok ? [] : result.issues;
    expect(issues).toEqual(expect.arrayContaining([{ path: 'agents.executionBackends.local.constructor', message: 'unknown key' }]));
    expect(JSON.stringify(issues)).not.toMatch(/function|native code/);
  });
});

describe('agents nobody can start', () => {
  it('admit denies agent_unknown first; a subagent is the gateway\'s own and not checked', async () => {
    const a = await createAdmission({ config: { agents: { executionBackends: { local: { type: 'process', profiles: { p: { allowedAgents: ['echo'] } }, defaultProfile: 'p' } }, execution: { default: { backend: 'local' } } } }, bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: false });
    try {
      const acp = await a.admit({ ...validRequest(), agentId: 'nosuch' } as never);
      expect(acp.decision.allow).toBe(false);
      expect(acp.decision.reasons.map((r) => r.code)).toEqual(['agent_unknown', 'agent_not_allowed']);
      expect(acp.decision.reasons[0]?.message).toMatch(/agents\.acp\.nosuch\.command/);
      const proto = await a.admit({ ...validRequest(), agentId: 'constructor' } as never);
      expect(proto.decision.reasons[0]?.code).toBe('agent_unknown');
      const sub = await a.admit({ ...validRequest(), agentId: 'nosuch', runtime: 'subagent' } as never);
      expect(sub.decision.reasons.map((r) => r.code)).toEqual(['agent_not_allowed']);
      const echo = await a.admit(validRequest() as never);
      expect(echo.decision.allow).toBe(true);
    } finally {
      await a.close();
    }
    const res = await cli(['admit', '--json', '--input', file('unknown.json', JSON.stringify({ ...validRequest(), agentId: 'nosuch' }))]);
    expect(res.code).toBe(3);
    expect(JSON.parse(res.stdout)).toMatchObject({ allow: false, reasons: [{ code: 'agent_unknown' }] });
  });

  it('spawn of an unknown agent is a deny (library AdmissionDeniedError, HTTP 403), and no worker is created', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'sg-unknown-'));
    const config = { agents: { executionBackends: { local: { type: 'process', stateDir } }, execution: { default: { backend: 'local' } } } };
    const gate = await testGate('unknown-agent', config);
    const token = randomUUID();
    const server = await createServer({ gate, token, listen: { port: 0, host: '127.0.0.1' } });
    try {
      await expect(gate.spawn({ ...validRequest(), agentId: 'nosuch' } as never)).rejects.toBeInstanceOf(AdmissionDeniedError);
      const url = (server.address as { url: string }).url;
      const res = await fetch(`${url}/v1/spawns`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ ...validRequest(), agentId: 'nosuch' }) });
      expect(res.status).toBe(403);
      expect(await res.json()).toMatchObject({ error: { code: 'ADMISSION_DENIED', reasons: [{ code: 'agent_unknown' }] } });
      expect(await gate.list()).toEqual([]);
      expect(readdirSync(stateDir)).toEqual([]);
    } finally {
      await server.close();
      await gate.shutdown();
    }
  });
});

describe('agents that die before they speak', () => {
  it.each(['open', 'none'])('an agent that exits before the ACP handshake fails the spawn (HTTP 502 BACKEND_FAILED, with its exit), not 503 "try again" (egress %s)', async (egress) => {
    const stateDir = mkdtempSync(join(tmpdir(), 'sg-dies-'));
    const config = {
      agents: {
        acp: { dies: { command: ['sh', '-c', 'echo "no key configured" >&2; exit 3'] } },
        executionBackends: { local: { type: 'process', stateDir, profiles: { p: { egress } }, defaultProfile: 'p' } },
        execution: { default: { backend: 'local' } },
      },
    };
    const gate = await testGate('dies', config);
    const token = randomUUID();
    const server = await createServer({ gate, token, listen: { port: 0, host: '127.0.0.1' } });
    try {
      const url = (server.address as { url: string }).url;
      const res = await fetch(`${url}/v1/spawns`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ ...validRequest(), agentId: 'dies' }) });
      const body = (await res.json()) as { error: { code: string; retryable: boolean; message: string } };
      expect(res.status, JSON.stringify(body)).toBe(502);
      expect(body.error).toMatchObject({ code: 'BACKEND_FAILED', retryable: false });
      expect(body.error.message).toMatch(/no key configured/);
      expect(await gate.list()).toEqual([]);
    } finally {
      await server.close();
      await gate.shutdown();
    }
  }, 60_000);
});
