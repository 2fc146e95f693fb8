/**
 * Built-in ACP agent `echo`: answers every prompt with "echo: <prompt>" streamed in 3–5
 * agent_message_chunk updates. Needs no model or key, so a worker, a backend or a whole deployment
 * can be exercised end to end with it. Runs as its own process over stdio:
 *   node dist/agents/echo.js        (built)
 *   node src/agents/echo.ts         (Node ≥ 22.18 strips the types; keep this file erasable-only
 *                                    and free of relative imports, which would need `.ts` specifiers)
 */
import { randomUUID } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import * as acp from '@agentclientprotocol/sdk';
import type { ContentBlock } from '@agentclientprotocol/sdk';

/** Splits text into 3–5 pieces (fewer only when the text is shorter than three characters). */
function echoChunks(text: string): string[] {
  const pieces = Math.min(5, Math.max(3, Math.ceil(text.length / 16)));
  const size = Math.max(1, Math.ceil(text.length / pieces));
  const out: string[] = [];
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size));
  return out;
}

function promptText(blocks: ContentBlock[]): string {
  return blocks
    .map((block) => {
      if (block.type === 'text') return block.text;
      if (block.type === 'resource_link') return block.uri;
      if (block.type === 'resource') return 'text' in block.resource ? block.resource.text : block.resource.uri;
      return `[${block.type}]`;
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
      type: 'select' as const,
      currentValue: models.get(sessionId) ?? 'echo-1',
      options: MODELS.map((value) => ({ value, name: value })),
    },
  ];
}

const app = acp
  .agent({ name: 'spawngate-echo' })
  .onRequest('initialize', () => ({
    protocolVersion: acp.PROTOCOL_VERSION,
    // resume: echo keeps no history, so reopening a session id is all there is to it.
    agentCapabilities: { loadSession: false, sessionCapabilities: { resume: {} } },
    agentInfo: { name: 'spawngate-echo', version: '1.0.0' },
  }))
  .onRequest('session/new', () => {
    const sessionId = randomUUID();
    cancelled.set(sessionId, false);
    return { sessionId, configOptions: modelOption(sessionId) };
  })
  .onRequest('session/resume', ({ params }) => {
    cancelled.set(params.sessionId, false);
    return { configOptions: modelOption(params.sessionId) };
  })
  .onRequest('session/set_config_option', ({ params }) => {
    if (params.configId !== 'model' || typeof params.value !== 'string' || !MODELS.includes(params.value)) {
      throw acp.RequestError.invalidParams({ configId: params.configId }, 'unknown option or value');
    }
    models.set(params.sessionId, params.value);
    return { configOptions: modelOption(params.sessionId) };
  })
  .onRequest('session/prompt', async ({ params, client }) => {
    cancelled.set(params.sessionId, false);
    const model = models.get(params.sessionId);
    const prefix = model && model !== 'echo-1' ? `echo[${model}]` : 'echo';
    for (const text of echoChunks(`${prefix}: ${promptText(params.prompt)}`)) {
      // Yield between chunks so a session/cancel that arrives mid-answer is seen.
      await new Promise((resolve) => setImmediate(resolve));
      if (cancelled.get(params.sessionId)) return { stopReason: 'cancelled' as const };
      await client.notify('session/update', {
        sessionId: params.sessionId,
        update: { sessionUpdate: 'agent_message_chunk', content: { type: 'text', text } },
      });
    }
    return { stopReason: 'end_turn' as const };
  })
  .onNotification('session/cancel', ({ params }) => {
    cancelled.set(params.sessionId, true);
  });

app.connect(
  acp.ndJsonStream(Writable.toWeb(process.stdout) as WritableStream<Uint8Array>, Readable.toWeb(process.stdin) as ReadableStream<Uint8Array>),
);
