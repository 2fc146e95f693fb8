import { describe, expect, it } from 'vitest';
import { AcpProtocolError, AcpRequestError, connectAcpClient, type AcpClientHandlers } from '../../src/worker/acp-client.js';
import { permissionRequestProblem, promptResultProblem, sessionNotificationProblem } from '../../src/worker/acp-messages.js';
import { openAcpSession } from '../../src/worker/acp-session.js';

/**
 * The worker's end of an ACP connection against an agent played by the test, line by line: what a
 * hostile or broken agent can send, which no real agent here sends on purpose. The worker suites
 * drive the same code against the SDK's own agent side (test/fixtures/acp-agent.ts) and the echo agent.
 */
function peer(maxMessageBytes?: number, handlers: Partial<AcpClientHandlers> = {}) {
  let push!: (text: string) => void;
  let end!: () => void;
  const input = new ReadableStream<Uint8Array>({
    start(controller) {
      const encoder = new TextEncoder();
      push = (text) => controller.enqueue(encoder.encode(text));
      end = () => controller.close();
    },
  });
  const sent: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  const decoder = new TextDecoder();
  let partial = '';
  const output = new WritableStream<Uint8Array>({
    write(chunk) {
      partial += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = partial.indexOf('\n')) !== -1) {
        sent.push(JSON.parse(partial.slice(0, i)) as Record<string, unknown>);
        partial = partial.slice(i + 1);
        for (const wake of waiters.splice(0)) wake();
      }
    },
  });
  const notifications: [string, unknown][] = [];
  const client = connectAcpClient(
    input,
    output,
    { onNotification: (method, params) => notifications.push([method, params]), onRequest: () => null, ...handlers },
    maxMessageBytes,
  );
  /** The n-th message the client wrote (0-based), once it has. */
  const nth = async (n: number): Promise<Record<string, unknown>> => {
    while (sent.length <= n) await new Promise<void>((resolve) => waiters.push(resolve));
    return sent[n]!;
  };
  const line = (message: unknown) => push(`${JSON.stringify(message)}\n`);
  return { client, push, end, line, nth, sent, notifications };
}

describe('ACP client (the worker side of JSON-RPC over stdio)', () => {
  it('matches answers to requests by id, and a JSON-RPC error becomes AcpRequestError with its code and data', async () => {
    const p = peer();
    const first = p.client.request<{ ok: boolean }>('a', { x: 1 }, () => null);
    const second = p.client.request('b', {}, () => null);
    expect(await p.nth(0)).toEqual({ jsonrpc: '2.0', id: 0, method: 'a', params: { x: 1 } });
    expect(await p.nth(1)).toMatchObject({ id: 1, method: 'b' });
    p.line({ jsonrpc: '2.0', id: 1, error: { code: -32000, message: 'nope', data: { why: 'because' } } });
    p.line({ jsonrpc: '2.0', id: 0, result: { ok: true } });
    expect(await first).toEqual({ ok: true });
    const err = await second.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AcpRequestError);
    expect(err).toMatchObject({ code: -32000, message: 'nope', data: { why: 'because' } });
  });

  it('refuses an answer that is not the protocol\'s shape, naming the field', async () => {
    const p = peer();
    const prompt = p.client.request('session/prompt', {}, promptResultProblem);
    p.line({ jsonrpc: '2.0', id: 0, result: { stopReason: 'because I said so' } });
    const err = await prompt.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AcpProtocolError);
    expect((err as Error).message).toMatch(/session\/prompt.*result\.stopReason: must be one of end_turn/);
  });

  it('a cancelled request sends $/cancel_request with its id and keeps waiting for the answer', async () => {
    const p = peer();
    const abort = new AbortController();
    const prompt = p.client.request('session/prompt', {}, promptResultProblem, { signal: abort.signal });
    await p.nth(0);
    abort.abort();
    expect(await p.nth(1)).toEqual({ jsonrpc: '2.0', method: '$/cancel_request', params: { requestId: 0 } });
    p.line({ jsonrpc: '2.0', id: 0, result: { stopReason: 'cancelled' } });
    expect(await prompt).toEqual({ stopReason: 'cancelled' });
  });

  it('answers a line that is not JSON-RPC with the JSON-RPC error and goes on reading', async () => {
    const p = peer();
    p.push('this is not json\n');
    expect(await p.nth(0)).toMatchObject({ id: null, error: { code: -32700 } });
    p.line([1, 2]);
    expect(await p.nth(1)).toMatchObject({ id: null, error: { code: -32600 } });
    p.line({ jsonrpc: '2.0', method: 'session/update', params: { n: 1 } });
    const pending = p.client.request('x', {}, () => null);
    p.line({ jsonrpc: '2.0', id: 0, result: {} });
    await pending;
    expect(p.notifications).toEqual([['session/update', { n: 1 }]]);
    expect(p.client.signal.aborted).toBe(false);
  });

  it('answers a request it does not serve with -32601 and one its handler refuses with that error', async () => {
    const p = peer(undefined, {
      onRequest: (method) => (method === 'session/request_permission' ? Promise.reject(new AcpRequestError(-32602, 'Invalid params: params.options: must be an array')) : null),
    });
    p.line({ jsonrpc: '2.0', id: 'r1', method: 'fs/read_text_file', params: { path: '/etc/passwd' } });
    expect(await p.nth(0)).toEqual({ jsonrpc: '2.0', id: 'r1', error: { code: -32601, message: '"Method not found": fs/read_text_file' } });
    p.line({ jsonrpc: '2.0', id: 7, method: 'session/request_permission', params: {} });
    expect(await p.nth(1)).toMatchObject({ id: 7, error: { code: -32602, message: expect.stringContaining('params.options') as unknown } });
  });

  it('a message longer than the bound ends the connection and fails what waits, instead of growing without end', async () => {
    const p = peer(1024);
    const pending = p.client.request('session/prompt', {}, promptResultProblem);
    p.push('x'.repeat(600));
    p.push('y'.repeat(600));
    await expect(pending).rejects.toThrow(/longer than 1024 bytes/);
    expect(p.client.signal.aborted).toBe(true);
    await expect(p.client.request('again', {}, () => null)).rejects.toThrow(/longer than 1024 bytes/);
  });

  it('the end of the agent\'s stdout closes the connection and fails what waits', async () => {
    const p = peer();
    const pending = p.client.request('session/new', {}, () => null);
    p.end();
    await expect(pending).rejects.toThrow(/closed its stdout/);
    expect(p.client.signal.aborted).toBe(true);
  });
});

describe('ACP message checks', () => {
  it('name the first fault of a session/update by its path, and let updates the worker does not map through', () => {
    expect(sessionNotificationProblem({ sessionId: 's', update: { sessionUpdate: 'agent_message_chunk', content: { type: 'text', text: 'hi' } } })).toBeNull();
    expect(sessionNotificationProblem({ sessionId: 's', update: { sessionUpdate: 'agent_message_chunk', content: { type: 'text', text: 42 } } })).toBe('params.update.content.text: must be a string');
    expect(sessionNotificationProblem({ sessionId: 's', update: { sessionUpdate: 'tool_call', toolCallId: 't', title: { evil: true } } })).toBe('params.update.title: must be a string');
    expect(sessionNotificationProblem({ sessionId: 's', update: { sessionUpdate: 'tool_call', toolCallId: 't', title: 'ls', kind: 'rm -rf' } })).toMatch(/^params\.update\.kind: must be one of read/);
    expect(sessionNotificationProblem({ sessionId: 's', update: { sessionUpdate: 'tool_call_update', toolCallId: 't', status: 'completed', content: [{ type: 'diff', path: '/a', newText: null }] } })).toBe(
      'params.update.content[0].newText: must be a string',
    );
    expect(sessionNotificationProblem({ sessionId: 's', update: { sessionUpdate: 'plan', entries: [{ content: 'x', priority: 'urgent', status: 'pending' }] } })).toMatch(/^params\.update\.entries\[0\]\.priority/);
    expect(sessionNotificationProblem({ sessionId: 's', update: { sessionUpdate: 'usage_update', used: '10', size: 100 } })).toBe('params.update.used: must be a number');
    expect(sessionNotificationProblem({ sessionId: 's', update: { sessionUpdate: 'current_mode_update', currentModeId: 'ask' } })).toBeNull();
    expect(sessionNotificationProblem({ update: {} })).toBe('params.sessionId: must be a string');
    expect(sessionNotificationProblem(null)).toBe('params: must be an object');
  });

  it('name the first fault of a permission request', () => {
    const ok = { sessionId: 's', toolCall: { toolCallId: 't', title: 'Edit', kind: 'edit', locations: [{ path: '/w/a.ts' }] }, options: [{ optionId: 'y', name: 'Allow', kind: 'allow_once' }] };
    expect(permissionRequestProblem(ok)).toBeNull();
    expect(permissionRequestProblem({ ...ok, options: [{ optionId: 'y', name: 'Allow', kind: 'allow_forever' }] })).toMatch(/^params\.options\[0\]\.kind/);
    expect(permissionRequestProblem({ ...ok, toolCall: { ...ok.toolCall, locations: [{ path: 7 }] } })).toBe('params.toolCall.locations[0].path: must be a string');
    expect(permissionRequestProblem({ ...ok, toolCall: 'x' })).toBe('params.toolCall: must be an object');
  });
});

describe('ACP session over a hostile agent', () => {
  it('drops an update that is not ACP, says so, and keeps the valid ones', async () => {
    const agentToWorker = new TransformStream<Uint8Array, Uint8Array>();
    const workerToAgent = new TransformStream<Uint8Array, Uint8Array>();
    const faults: string[] = [];
    const updates: unknown[] = [];
    const opening = openAcpSession({
      stdin: workerToAgent.writable,
      stdout: agentToWorker.readable,
      cwd: '/w',
      onUpdate: (u) => updates.push(u),
      onPermission: () => Promise.reject(new Error('not asked')),
      onProtocolFault: (m) => faults.push(m),
    });
    const writer = agentToWorker.writable.getWriter();
    const encoder = new TextEncoder();
    const send = (m: unknown) => writer.write(encoder.encode(`${JSON.stringify(m)}\n`));
    const reader = workerToAgent.readable.getReader();
    const decoder = new TextDecoder();
    let buffered = '';
    const next = async (): Promise<{ id: number; method: string }> => {
      for (;;) {
        const i = buffered.indexOf('\n');
        if (i !== -1) {
          const line = buffered.slice(0, i);
          buffered = buffered.slice(i + 1);
          return JSON.parse(line) as { id: number; method: string };
        }
        const { value } = await reader.read();
        buffered += decoder.decode(value, { stream: true });
      }
    };
    const init = await next();
    expect(init.method).toBe('initialize');
    await send({ jsonrpc: '2.0', id: init.id, result: { protocolVersion: 1, agentInfo: { name: 'hostile', version: '0' } } });
    const created = await next();
    expect(created.method).toBe('session/new');
    await send({ jsonrpc: '2.0', id: created.id, result: { sessionId: 'S' } });
    const session = await opening;
    expect(session.agentInfo).toEqual({ name: 'hostile', version: '0' });
    await send({ jsonrpc: '2.0', method: 'session/update', params: { sessionId: 'S', update: { sessionUpdate: 'plan', entries: 'all of them' } } });
    await send({ jsonrpc: '2.0', method: 'session/update', params: { sessionId: 'S', update: { sessionUpdate: 'agent_message_chunk', content: { type: 'text', text: 'fine' } } } });
    // Both lines are read in order; the valid one arriving means the first was handled.
    for (let i = 0; i < 100 && updates.length === 0; i++) await new Promise((r) => setImmediate(r));
    expect(updates).toEqual([{ sessionUpdate: 'agent_message_chunk', content: { type: 'text', text: 'fine' } }]);
    expect(faults).toEqual(['dropped a session/update that is not ACP: params.update.entries: must be an array']);
    session.close();
  });
});
