/** Turns as tests drive them, through a gate's handle or a worker client alike. */
import { expect } from 'vitest';
import type { WorkerEvent } from '../../src/protocol/events.js';

export interface Turnable {
  turn(message: string): AsyncIterable<WorkerEvent>;
}

/** A caller of the spawn request, named after the test. */
export function callerFor(id: string): { sessionKey: string; depth: number; channel: { id: string; kind: string; interactive: boolean }; user: { id: string; roles: string[] } } {
  return { sessionKey: `agent:main:${id}`, depth: 0, channel: { id, kind: 'cli', interactive: true }, user: { id: `${id}-user`, roles: [] } };
}

export function textOf(events: readonly WorkerEvent[]): string {
  return events.map((e) => (e.type === 'agent.message.delta' ? e.text : '')).join('');
}

/** One turn's events, in order. */
export async function turnEvents(target: Turnable, message: string): Promise<WorkerEvent[]> {
  const events: WorkerEvent[] = [];
  for await (const e of target.turn(message)) events.push(e);
  return events;
}

/** The turn's text; the turn must complete (its text is the failure message otherwise). */
export async function say(target: Turnable, message: string): Promise<string> {
  const events = await turnEvents(target, message);
  expect(events.at(-1)?.type, textOf(events)).toBe('turn.completed');
  return textOf(events);
}
