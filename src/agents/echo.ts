/**
 * Built-in ACP agent `echo`: answers every prompt with "echo: <prompt>" streamed in 3–5
 * agent_message_chunk updates. Needs no model or key, so a worker, a backend or a whole deployment
 * can be exercised end to end with it. Runs as its own process over stdio:
 *   node dist/agents/echo.js        (built)
 *   node src/agents/echo.ts         (Node ≥ 22.18 strips the types; keep this file erasable-only
 *                                    and free of relative imports, which would need `.ts` specifiers)
 *
 * It speaks ACP's JSON-RPC 2.0 over newline-delimited JSON itself, without the ACP SDK: loading the
 * SDK and the zod it builds its schemas with took longer than everything else the agent does before
 * its first answer, and every worker that runs echo waits for that. The SDK's own client checks its
 * session updates against the protocol's schema in test/worker/echo-agent.test.ts.
 */
import { randomUUID } from 'node:crypto';
import { createInterface } from 'node:readline';

const PROTOCOL_VERSION = 1;

/** JSON-RPC error codes (the spec's, as ACP uses them). */
const PARSE_ERROR = -32700;
const INVALID_REQUEST = -32600;
const METHOD_NOT_FOUND = -32601;
const INVALID_PARAMS = -32602;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Id = string | number | null;

class RpcError extends Error {
  readonly code: number;
  readonly data: Json | undefined;
  constructor(code: number, message: string, data?: Json) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

function send(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ jsonrpc: '2.0', ...message })}\n`);
}

function notify(method: string, params: Record<string, unknown>): void {
  send({ method, params });
}

/** Splits text into 3–5 pieces (fewer only when the text is shorter than three characters). */
function echoChunks(text: string): string[] {
  const pieces = Math.min(5, Math.max(3, Math.ceil(text.length / 16)));
  const size = Math.max(1, Math.ceil(text.length / pieces));
  const out: string[] = [];
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size));
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function promptText(blocks: unknown[]): string {
  return blocks
    .map((block) => {
      if (!isObject(block)) return '';
      if (block['type'] === 'text' && typeof block['text'] === 'string') return block['text'];
      if (block['type'] === 'resource_link' && typeof block['uri'] === 'string') return block['uri'];
      const resource = block['resource'];
      if (block['type'] === 'resource' && isObject(resource)) {
        if (typeof resource['text'] === 'string') return resource['text'];
        return typeof resource['uri'] === 'string' ? resource['uri'] : '';
      }
      return `[${String(block['type'])}]`;
    })
    .join('');
}

const cancelled = new Map<string, boolean>();
// A model choice, so that a session's model option can be exercised without a real model.
const MODELS = ['echo-1', 'echo-2'];
const models = new Map<string, string>();

function modelOption(sessionId: string) {
  return [
    {
      id: 'model',
      name: 'Model',
      category: 'model',
      type: 'select',
      currentValue: models.get(sessionId) ?? 'echo-1',
      options: MODELS.map((value) => ({ value, name: value })),
    },
  ];
}

function sessionIdOf(params: Record<string, unknown>): string {
  const id = params['sessionId'];
  if (typeof id !== 'string' || id === '') throw new RpcError(INVALID_PARAMS, 'Invalid params', { sessionId: 'must be a non-empty string' });
  return id;
}

async function prompt(params: Record<string, unknown>): Promise<Record<string, unknown>> {
  const sessionId = sessionIdOf(params);
  const blocks = params['prompt'];
  if (!Array.isArray(blocks)) throw new RpcError(INVALID_PARAMS, 'Invalid params', { prompt: 'must be a list of content blocks' });
  cancelled.set(sessionId, false);
  const model = models.get(sessionId);
  const prefix = model && model !== 'echo-1' ? `echo[${model}]` : 'echo';
  for (const text of echoChunks(`${prefix}: ${promptText(blocks)}`)) {
    // Yield between chunks so a session/cancel that arrives mid-answer is seen.
    await new Promise((resolve) => setImmediate(resolve));
    if (cancelled.get(sessionId)) return { stopReason: 'cancelled' };
    notify('session/update', { sessionId, update: { sessionUpdate: 'agent_message_chunk', content: { type: 'text', text } } });
  }
  return { stopReason: 'end_turn' };
}

const requests: Record<string, (params: Record<string, unknown>) => Record<string, unknown> | Promise<Record<string, unknown>>> = {
  initialize: () => ({
    protocolVersion: PROTOCOL_VERSION,
    // resume: echo keeps no history, so reopening a session id is all there is to it.
    agentCapabilities: { loadSession: false, sessionCapabilities: { resume: {} } },
    agentInfo: { name: 'spawngate-echo', version: '1.0.0' },
    authMethods: [],
  }),
  'session/new': () => {
    const sessionId = randomUUID();
    cancelled.set(sessionId, false);
    return { sessionId, configOptions: modelOption(sessionId) };
  },
  'session/resume': (params) => {
    const sessionId = sessionIdOf(params);
    cancelled.set(sessionId, false);
    return { configOptions: modelOption(sessionId) };
  },
  'session/set_config_option': (params) => {
    const sessionId = sessionIdOf(params);
    const value = params['value'];
    if (params['configId'] !== 'model' || typeof value !== 'string' || !MODELS.includes(value)) {
      throw new RpcError(INVALID_PARAMS, 'unknown option or value', { configId: (params['configId'] ?? null) as Json });
    }
    models.set(sessionId, value);
    return { configOptions: modelOption(sessionId) };
  },
  'session/prompt': prompt,
};

const notifications: Record<string, (params: Record<string, unknown>) => void> = {
  'session/cancel': (params) => {
    if (typeof params['sessionId'] === 'string') cancelled.set(params['sessionId'], true);
  },
};

async function answer(id: Id, method: string, params: Record<string, unknown>): Promise<void> {
  const handler = requests[method];
  try {
    if (!handler) throw new RpcError(METHOD_NOT_FOUND, 'Method not found', { method });
    send({ id, result: await handler(params) });
  } catch (err) {
    const e = err instanceof RpcError ? err : new RpcError(-32603, 'Internal error', { details: (err as Error).message });
    send({ id, error: { code: e.code, message: e.message, ...(e.data === undefined ? {} : { data: e.data }) } });
  }
}

function handle(line: string): void {
  if (line.trim() === '') return;
  let message: unknown;
  try {
    message = JSON.parse(line);
  } catch {
    send({ id: null, error: { code: PARSE_ERROR, message: 'Parse error' } });
    return;
  }
  if (!isObject(message) || message['jsonrpc'] !== '2.0') {
    send({ id: null, error: { code: INVALID_REQUEST, message: 'Invalid Request' } });
    return;
  }
  const { id, method } = message;
  const params = isObject(message['params']) ? message['params'] : {};
  if (typeof method !== 'string') return; // a response to a request of ours: echo sends none
  if (id === undefined) {
    notifications[method]?.(params);
    return;
  }
  if (typeof id !== 'string' && typeof id !== 'number' && id !== null) {
    send({ id: null, error: { code: INVALID_REQUEST, message: 'Invalid Request' } });
    return;
  }
  void answer(id, method, params);
}

// The worker went away mid-answer (EPIPE): there is nobody to answer any more.
process.stdout.on('error', () => process.exit(0));
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', handle);
// The client closed our stdin: nobody is left to answer.
lines.on('close', () => process.exit(0));
