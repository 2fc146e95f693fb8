import { spawn } from 'node:child_process';
import { Readable, Writable } from 'node:stream';
import * as acp from '@agentclientprotocol/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtinAgents, resolveBuiltinAgent } from '../../src/agents/index.js';
import type { WorkerEvent } from '../../src/protocol/events.js';
import { collect, messageText, startTestWorker, types } from './helpers.js';
import type { TestWorker } from './helpers.js';

describe('built-in echo agent', () => {
  let w: TestWorker;

  beforeAll(async () => {
    const echo = resolveBuiltinAgent('echo');
    if (!echo) throw new Error('echo is not registered');
    const [command = '', ...args] = echo.command;
    w = await startTestWorker('tcp', { agentCommand: command, agentArgs: args, agentId: 'echo' });
    await w.worker.ready;
  });
  afterAll(async () => {
    await w.close();
  });

  it('is started with the running node binary', () => {
    expect(builtinAgents['echo']?.command[0]).toBe(process.execPath);
    expect(resolveBuiltinAgent('no-such-agent')).toBeNull();
    expect(resolveBuiltinAgent('toString')).toBeNull();
  });

  it('streams "echo: <prompt>" in 3 to 5 chunks and ends the turn', async () => {
    for (const prompt of ['hi', 'hello world', 'a much longer prompt that should still come back in at most five pieces']) {
      const events = await collect(w.client.turn(prompt));
      const deltas = events.filter((e): e is Extract<WorkerEvent, { type: 'agent.message.delta' }> => e.type === 'agent.message.delta');
      expect(deltas.length).toBeGreaterThanOrEqual(3);
      expect(deltas.length).toBeLessThanOrEqual(5);
      expect(messageText(events)).toBe(`echo: ${prompt}`);
      expect(types(events)[0]).toBe('turn.started');
      expect(events.at(-1)).toMatchObject({ type: 'turn.completed', stopReason: 'end_turn' });
    }
    expect((await w.client.healthz()).agentInfo).toEqual({ name: 'spawngate-echo', version: '1.0.0' });
  });

  it("answers the ACP SDK's own client, which checks each session/update against the protocol's schema", async () => {
    const [command = '', ...args] = resolveBuiltinAgent('echo')?.command ?? [];
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const updates: acp.SessionUpdate[] = [];
      const connection = acp
        .client({ name: 'spawngate-test' })
        .onNotification('session/update', ({ params }) => {
          updates.push(params.update);
        })
        .connect(acp.ndJsonStream(Writable.toWeb(child.stdin) as WritableStream<Uint8Array>, Readable.toWeb(child.stdout) as ReadableStream<Uint8Array>));
      const init = await connection.agent.request('initialize', { protocolVersion: acp.PROTOCOL_VERSION, clientCapabilities: {}, clientInfo: { name: 'spawngate-test', version: '1' } });
      expect(init.agentInfo).toMatchObject({ name: 'spawngate-echo' });
      const { sessionId } = await connection.agent.request('session/new', { cwd: process.cwd(), mcpServers: [] });
      const answer = await connection.agent.request('session/prompt', { sessionId, prompt: [{ type: 'text', text: 'checked by the SDK' }] });
      expect(answer.stopReason).toBe('end_turn');
      const text = updates.map((u) => (u.sessionUpdate === 'agent_message_chunk' && u.content.type === 'text' ? u.content.text : '')).join('');
      expect(text).toBe('echo: checked by the SDK');
      connection.close();
    } finally {
      child.kill('SIGKILL');
    }
  });
});
