import type { WorkerLogLine } from '../protocol/events.js';

/** The most /logs ever returns, and the default capacity. */
export const MAX_LOG_TAIL = 1000;
/** A single runaway line (an agent dumping a minified bundle to stderr) must not eat the whole buffer's memory. */
const MAX_LINE_CHARS = 4096;

/** Fixed-capacity ring of recent log lines: the worker's own and the agent's stderr. */
export class LogBuffer {
  readonly #lines: (WorkerLogLine | undefined)[];
  #next = 0;
  #size = 0;

  constructor(capacity: number = MAX_LOG_TAIL) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`log capacity must be a positive integer, got ${capacity}`);
    this.#lines = new Array<WorkerLogLine | undefined>(capacity);
  }

  push(line: WorkerLogLine): void {
    const message = line.message.length > MAX_LINE_CHARS ? `${line.message.slice(0, MAX_LINE_CHARS)}…[truncated]` : line.message;
    this.#lines[this.#next] = { ...line, message };
    this.#next = (this.#next + 1) % this.#lines.length;
    this.#size = Math.min(this.#size + 1, this.#lines.length);
  }

  /** The last `n` lines, oldest first. */
  tail(n: number): WorkerLogLine[] {
    const count = Math.max(0, Math.min(n, this.#size));
    const out: WorkerLogLine[] = [];
    const capacity = this.#lines.length;
    for (let i = count; i > 0; i--) {
      const line = this.#lines[(this.#next - i + capacity) % capacity];
      if (line) out.push(line);
    }
    return out;
  }
}

/**
 * Splits a byte stream into lines, bounding how much an unterminated line may buffer: past `maxChars`
 * the partial line is flushed as-is so a child that never writes '\n' cannot grow memory without limit.
 */
export function lineSplitter(onLine: (line: string) => void, maxChars = MAX_LINE_CHARS): { push(chunk: string): void; end(): void } {
  let pending = '';
  return {
    push(chunk: string) {
      pending += chunk;
      let index: number;
      while ((index = pending.indexOf('\n')) !== -1) {
        onLine(pending.slice(0, index).replace(/\r$/, ''));
        pending = pending.slice(index + 1);
      }
      while (pending.length > maxChars) {
        onLine(pending.slice(0, maxChars));
        pending = pending.slice(maxChars);
      }
    },
    end() {
      if (pending) onLine(pending);
      pending = '';
    },
  };
}
