/**
 * A real OpenClaw gateway (the pinned npm package, installed by scripts/ensure-openclaw.sh) on
 * loopback, with the spawngate plugin installed the way an operator installs it (npm install of
 * the packed spawngate into the plugin folder), and a small OpenAI-compatible model server of our
 * own that answers a marked user turn with a streamed sessions_spawn tool call.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as netServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const OPENCLAW_ENTRY = join(ROOT, '.tools/openclaw/node_modules/openclaw/openclaw.mjs');
/** The plugin folder global-setup prepared: integrations/openclaw + the packed spawngate installed into it. */
export const PLUGIN_DIR = join(ROOT, '.cache/openclaw-plugin');
export const TOKEN = 'e2e-token-0123456789';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = netServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export interface ModelServer {
  url: string;
  /** Every message list the gateway sent, in order. */
  requests: { messages: { role: string; content: unknown }[] }[];
  /** Whether any request's messages contain `text`. */
  saw(text: string): boolean;
  close(): Promise<void>;
}

/** The marker in a user turn: `SPAWN{...json args...}` → one streamed sessions_spawn call with those args. */
const MARKER = /SPAWN(\{.*\})/s;

function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((p: { text?: unknown }) => (typeof p.text === 'string' ? p.text : '')).join('');
  return JSON.stringify(content ?? '');
}

export async function startModelServer(): Promise<ModelServer> {
  const requests: ModelServer['requests'] = [];
  let calls = 0;
  const server: Server = createServer((req, res) => {
    void (async () => {
      const text = await body(req);
      if (req.method === 'GET' && req.url?.endsWith('/models')) {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ object: 'list', data: [{ id: 'm', object: 'model' }] }));
        return;
      }
      let parsed: { messages?: { role: string; content: unknown }[]; stream?: boolean } = {};
      try {
        parsed = JSON.parse(text) as typeof parsed;
      } catch {
        // answered as an empty turn
      }
      const messages = parsed.messages ?? [];
      requests.push({ messages });
      // Only a fresh user turn spawns (the user messages after the last assistant or tool message;
      // OpenClaw appends its own context as a second user message): announce turns replay history
      // and would otherwise loop into many spawns.
      let marker: RegExpExecArray | null = null;
      for (let i = messages.length - 1; i >= 0 && messages[i]?.role === 'user' && !marker; i--) marker = MARKER.exec(contentText(messages[i]?.content));
      // The turn after a tool result takes a few seconds, as a real model's does. Answered at once,
      // the parent's run ends before OpenClaw has registered the ACP child's task, and OpenClaw
      // 2026.9.6's task maintenance then closes the child as "orphaned" (a race inside OpenClaw that
      // a backend slower to start than a local process, such as Docker, loses every time).
      if (messages.at(-1)?.role === 'tool') await new Promise((r) => setTimeout(r, 5000));
      const id = `chatcmpl-${++calls}`;
      const chunk = (delta: unknown, finish: string | null) => `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: 0, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      if (marker?.[1]) {
        res.write(chunk({ role: 'assistant', tool_calls: [{ index: 0, id: `call_${calls}`, type: 'function', function: { name: 'sessions_spawn', arguments: '' } }] }, null));
        res.write(chunk({ tool_calls: [{ index: 0, function: { arguments: marker[1] } }] }, null));
        res.write(chunk({}, 'tool_calls'));
      } else {
        res.write(chunk({ role: 'assistant', content: 'ok, ' }, null));
        res.write(chunk({ content: 'done.' }, null));
        res.write(chunk({}, 'stop'));
      }
      res.end('data: [DONE]\n\n');
    })();
  });
  // Node's default keep-alive timeout is 5 s, as long as the delay above. In one CI run the gateway's
  // fetch failed with "other side closed" after 5.5 s and OpenClaw's retry never reached this
  // server; a close at that timeout is the likely cause (not proven), and a longer one rules it out.
  server.keepAliveTimeout = 120_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    saw: (t) => requests.some((r) => r.messages.some((m) => contentText(m.content).includes(t))),
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        // A kept-alive connection would otherwise hold close() for up to the timeout above.
        server.closeAllConnections();
      }),
  };
}

export interface Gateway {
  url: string;
  dir: string;
  /** POST /tools/invoke of sessions_spawn; answers the HTTP status and JSON body. */
  spawnViaTools(args: Record<string, unknown>): Promise<{ status: number; body: { ok: boolean; result?: unknown; error?: { type: string; message: string } } }>;
  chat(text: string, agentId?: string): Promise<number>;
  /** Runs the openclaw CLI against this gateway (its WebSocket, its token); answers stdout. With `tolerant`, a non-zero exit answers its stdout too. */
  cli(args: string[], options?: { tolerant?: boolean }): Promise<string>;
  /** Log lines of the gateway so far (stdout+stderr). */
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
  start(): Promise<void>;
}

export interface GatewayOptions {
  dir: string;
  model: ModelServer;
  pluginConfig: Record<string, unknown>;
  /** Extra OpenClaw config merged at the top level. */
  extra?: Record<string, unknown>;
  /** Extra environment of the gateway process (OTEL_* for trace export). */
  env?: Record<string, string>;
  readyTimeoutMs?: number;
}

export async function createGateway(options: GatewayOptions): Promise<Gateway> {
  const { dir } = options;
  const port = await freePort();
  mkdirSync(join(dir, 'state'), { recursive: true });
  mkdirSync(join(dir, 'ws'), { recursive: true });
  const config = {
    gateway: { mode: 'local', auth: { mode: 'token', token: TOKEN }, tools: { allow: ['sessions_spawn'] }, http: { endpoints: { chatCompletions: { enabled: true } } } },
    models: { providers: { mock: { baseUrl: options.model.url, api: 'openai-completions', apiKey: 'x', models: [{ id: 'm', name: 'm' }] } } },
    tools: { toolSearch: false },
    agents: {
      ownership: 'explicit',
      defaults: { workspace: join(dir, 'ws'), model: { primary: 'mock/m' } },
      entries: {
        main: {},
        echo: { runtime: { type: 'acp', acp: { agent: 'echo', backend: 'spawngate' } } },
        // The same echo agent, as spawngate agent echo-docker: placed on the Docker backend by the
        // spawngate config. OpenClaw dispatches an ACP child to the agent entry named like its harness.
        'echo-docker': { runtime: { type: 'acp', acp: { agent: 'echo-docker', backend: 'spawngate' } } },
        // And as spawngate agent echo-k8s, placed on the Kubernetes backend (a Pod).
        'echo-k8s': { runtime: { type: 'acp', acp: { agent: 'echo-k8s', backend: 'spawngate' } } },
      },
    },
    acp: { enabled: true, backend: 'spawngate', allowedAgents: ['echo', 'echo-docker', 'echo-k8s'] },
    // memory-core is on by default and only slows the start here.
    plugins: { allow: ['spawngate'], load: { paths: [PLUGIN_DIR] }, entries: { spawngate: { enabled: true, hooks: { allowConversationAccess: true }, config: options.pluginConfig }, 'memory-core': { enabled: false } } },
    logging: { file: join(dir, 'openclaw.log') },
    ...options.extra,
  };
  writeFileSync(join(dir, 'openclaw.json'), JSON.stringify(config, null, 2));
  const logFile = join(dir, 'gateway.out');
  let child: ChildProcess | null = null;
  const url = `http://127.0.0.1:${port}`;

  async function start(): Promise<void> {
    const fd = openSync(logFile, 'a');
    try {
      child = spawn(process.execPath, [OPENCLAW_ENTRY, 'gateway', 'run', '--port', String(port), '--bind', 'loopback'], {
        cwd: dir,
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, OPENCLAW_STATE_DIR: join(dir, 'state'), OPENCLAW_CONFIG_PATH: join(dir, 'openclaw.json'), NO_COLOR: '1', ...options.env },
        stdio: ['ignore', fd, fd],
        // Its own process group: the gateway starts helpers (spawn broker, SQLite workers) that a kill of the gateway alone would orphan.
        detached: true,
      });
    } finally {
      closeSync(fd);
    }
    const started = Date.now();
    const limit = options.readyTimeoutMs ?? 8 * 60_000;
    // /healthz answers earlier; a spawn before /readyz says ready gets "agent unavailable during gateway startup".
    for (let attempt = 0; Date.now() - started < limit; attempt++) {
      if (child.exitCode !== null) throw new Error(`gateway exited ${child.exitCode} before ready:\n${tail()}`);
      const ready = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) })
        .then((r) => r.json() as Promise<{ ready?: boolean }>)
        .then((j) => j.ready === true)
        .catch(() => false);
      if (ready) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
    throw new Error(`gateway not ready after ${limit} ms:\n${tail()}`);
  }

  function tail(): string {
    return existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n').slice(-40).join('\n') : '';
  }

  async function stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    const group = (sig: NodeJS.Signals) => {
      try {
        if (c.pid) process.kill(-c.pid, sig);
      } catch {
        // already gone
      }
    };
    // SIGTERM: the gateway drains (its budget is minutes) and runs gateway_stop; SIGKILL: a crash.
    if (signal === 'SIGKILL') group('SIGKILL');
    else c.kill(signal);
    const timer = setTimeout(() => group('SIGKILL'), 60_000);
    await exited;
    clearTimeout(timer);
    // Whatever helper outlived the gateway.
    group('SIGKILL');
  }

  const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  await start();
  return {
    url,
    dir,
    async spawnViaTools(args) {
      const res = await fetch(`${url}/tools/invoke`, { method: 'POST', headers, body: JSON.stringify({ tool: 'sessions_spawn', args, sessionKey: 'agent:main:main' }), signal: AbortSignal.timeout(120_000) });
      return { status: res.status, body: (await res.json()) as Awaited<ReturnType<Gateway['spawnViaTools']>>['body'] };
    },
    async chat(text, agentId = 'main') {
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { ...headers, 'x-openclaw-agent-id': agentId },
        body: JSON.stringify({ model: 'openclaw/default', messages: [{ role: 'user', content: text }] }),
        signal: AbortSignal.timeout(240_000),
      });
      await res.text();
      return res.status;
    },
    cli: (args, cliOptions = {}) =>
      new Promise((resolve, reject) => {
        execFile(
          process.execPath,
          [OPENCLAW_ENTRY, ...args, '--url', `ws://127.0.0.1:${port}`, '--token', TOKEN],
          { cwd: dir, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, OPENCLAW_STATE_DIR: join(dir, 'state'), OPENCLAW_CONFIG_PATH: join(dir, 'openclaw.json'), NO_COLOR: '1' }, timeout: 300_000, maxBuffer: 16 * 1024 * 1024 },
          (err, stdout, stderr) => (err && !cliOptions.tolerant ? reject(new Error(`openclaw ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve(stdout)),
        );
      }),
    output: () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''),
    stop,
    start,
  };
}

/** Polls `check` until it returns true; bounded. */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 120_000): Promise<void> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}
