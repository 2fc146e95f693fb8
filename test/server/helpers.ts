import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import type { ClientRequest, IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { createServer, type RunningServer } from '../../src/server/index.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import type { Logger } from '../../src/log.js';
import { memoryLogger } from '../helpers/logger.js';

export const fixtureAgent = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));

/** Where a test talks to the server: its http:// URL or its unix socket. */
export type Target = { url: string } | { socketPath: string };

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** The parsed body; undefined when it is not JSON. */
  json: unknown;
}

export interface CallOptions {
  token?: string;
  body?: unknown;
  /** Sent as is instead of JSON-encoding `body`. */
  raw?: string;
  headers?: OutgoingHttpHeaders;
}

function requestOptions(target: Target, method: string, path: string, headers: OutgoingHttpHeaders) {
  if ('socketPath' in target) return { socketPath: target.socketPath, method, path, headers, agent: false as const };
  const url = new URL(target.url);
  return { hostname: url.hostname, port: url.port, method, path, headers, agent: false as const };
}

/** `headers` entries set to undefined remove a default (e.g. content-length, to send a chunked body). */
function headersFor(options: CallOptions, payload: string | null): OutgoingHttpHeaders {
  const merged: OutgoingHttpHeaders = {
    ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
    ...(payload === null ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }),
    ...options.headers,
  };
  return Object.fromEntries(Object.entries(merged).filter(([, value]) => value !== undefined));
}

/** One request without keep-alive (agent: false), so closing the server never waits on an idle test socket. */
export function call(target: Target, method: string, path: string, options: CallOptions = {}): Promise<Reply> {
  const payload = options.raw ?? (options.body === undefined ? null : JSON.stringify(options.body));
  return new Promise((resolve, reject) => {
    const req = httpRequest(requestOptions(target, method, path, headersFor(options, payload)), (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('error', reject);
      res.once('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
    });
    req.once('error', reject);
    req.end(payload ?? undefined);
  });
}

export interface OpenStream {
  req: ClientRequest;
  res: IncomingMessage;
  /** Parsed NDJSON lines as they arrive. */
  lines: AsyncIterator<Record<string, unknown>>;
}

/** POSTs a turn and hands back the live response, for reading line by line or dropping midway. */
export function openStream(target: Target, path: string, body: unknown, token: string): Promise<OpenStream> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(requestOptions(target, 'POST', path, headersFor({ token }, payload)), (res) => {
      // Taken at once: readline drops lines emitted before its iterator exists.
      const raw = createInterface({ input: res, crlfDelay: Infinity })[Symbol.asyncIterator]();
      async function* parsed(): AsyncGenerator<Record<string, unknown>> {
        for (let next = await raw.next(); !next.done; next = await raw.next()) {
          if (next.value.trim() !== '') yield JSON.parse(next.value) as Record<string, unknown>;
        }
      }
      resolve({ req, res, lines: parsed() });
    });
    req.once('error', reject);
    req.end(payload);
  });
}

export async function readAll(stream: OpenStream): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for (let next = await stream.lines.next(); !next.done; next = await stream.lines.next()) out.push(next.value);
  return out;
}

/** Polls `check` (bounded) until it returns true. */
export async function eventually(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

export interface TestBackend {
  stateDir: string;
  config: Record<string, unknown>;
  remove(): void;
}

/**
 * A process backend `local` in a state dir of its own: profiles `small` (the default),
 * `restricted` (allowed for an agent nobody is) and `stuck` (never ready), and the fixture ACP
 * agent as agent `fixture`.
 */
export function processBackend(): TestBackend {
  // Short: unix socket paths max out at 107 bytes and the worker's socket lives under stateDir/<uuid>/.
  const stateDir = mkdtempSync(join(tmpdir(), 'sg-srv-'));
  const base = { ttlSeconds: 600, timeoutSeconds: 60 };
  return {
    stateDir,
    config: {
      agents: {
        executionBackends: {
          local: {
            type: 'process',
            stateDir,
            defaultProfile: 'small',
            profiles: {
              small: base,
              restricted: { ...base, allowedAgents: ['nobody'] },
              // The fixture's session/new waits for a file nobody creates: the worker never turns ready.
              stuck: { ...base, env: { ACP_FIXTURE_SESSION_GATE: join(stateDir, 'never') } },
            },
          },
        },
        execution: { default: { backend: 'local', profile: 'small' } },
        acp: { fixture: { command: [process.execPath, fixtureAgent] } },
      },
    },
    remove: () => rmSync(stateDir, { recursive: true, force: true }),
  };
}

export function spawnRequest(task: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    agentId: 'fixture',
    task,
    caller: {
      sessionKey: `agent:main:server-test:${randomUUID()}`,
      depth: 0,
      channel: { id: 'server-test-channel', kind: 'cli', interactive: true },
      user: { id: 'server-test-user', roles: [] },
    },
    ...extra,
  };
}

export interface Served {
  gate: Spawngate;
  server: RunningServer;
  target: Target;
  /** Closes the server, sweeps every worker the gate left, shuts the gate down. */
  close(): Promise<void>;
}

/** A gate on `config` (no sweeper, no decision log, no bundle watch) behind a server on 127.0.0.1:0. */
export async function serveGate(config: unknown, options: { token: string; owner: string; logger?: Logger }): Promise<Served> {
  const gate = await createSpawngate({ config, owner: options.owner, sweepIntervalMs: 0, decisionLog: false, watchBundle: false, logger: options.logger ?? memoryLogger() });
  const server = await createServer({ gate, token: options.token, listen: { port: 0, host: '127.0.0.1' } });
  return {
    gate,
    server,
    target: server.address,
    async close() {
      await server.close();
      await gate.sweep({ orphans: true }).catch(() => undefined);
      await gate.shutdown();
    },
  };
}
