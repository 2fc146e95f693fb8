import { createWriteStream } from 'node:fs';
import type { WriteStream } from 'node:fs';
import type { Writable } from 'node:stream';
import type { AdmissionInput, Decision } from './types.js';
import type { PermissionDecision } from './permissions.js';
import { redact, redactString } from '../redact.js';

export { redact, redactString };

export interface DecisionLogEntry {
  decision_id: string;
  /** W3C ids of the span the decision was taken in, when it was traced. */
  trace_id?: string;
  span_id?: string;
  time: string;
  bundle_revision: string | null;
  /** sha256 of the catalog (the config the decision saw), which the logged input leaves out; with the bundle revision it makes a line replayable. */
  catalog_revision: string;
  /**
   * Which step produced `result`: the admission policy, the reservation store enforcing its limits,
   * or the permission policy answering an agent's request during a turn (then `result` is a
   * PermissionDecision and `spawn_id` names the worker).
   */
  stage: 'policy' | 'reservation' | 'permission';
  spawn_id?: string;
  input: unknown;
  result: Decision | PermissionDecision;
  eval_us: number;
}

export interface DecisionLog {
  write(entry: DecisionLogEntry): void;
  /**
   * For a sink writing to a named file: start over at that path, because something (logrotate)
   * moved the file away. Lines written before the call still end up in the old file. The built-in
   * stream and memory sinks do nothing; optional, so a custom sink need not have it.
   */
  reopen?(): void;
  close(): Promise<void>;
}

export function redactInput(input: AdmissionInput): unknown {
  // The catalog is config, identical on every line; the revision and backend names locate it.
  const { catalog: _catalog, ...rest } = input;
  return redact(rest);
}

function line(entry: DecisionLogEntry): string {
  return `${JSON.stringify(entry)}\n`;
}

/**
 * Appends JSON lines to a file (created if missing). A write error (unwritable path, full disk) is
 * reported through `onError` and never crashes the gateway: the audit trail is not worth an outage.
 * `reopen()` (what `spawngate serve` does on SIGHUP) starts a fresh file at `path`; after an error
 * it is also the way to try the path again.
 */
export function fileDecisionLog(path: string, onError: (err: Error) => void = () => undefined): DecisionLog {
  const open = (): WriteStream => {
    const opened = createWriteStream(path, { flags: 'a', mode: 0o600 });
    opened.on('error', onError);
    return opened;
  };
  // end()'s callback also runs (with the error) for a stream that failed, so this always settles.
  const end = (ending: WriteStream): Promise<void> => new Promise((resolve) => ending.end(() => resolve()));
  let stream = open();
  let closed = false;
  let retired: Promise<unknown> = Promise.resolve();
  return {
    write(entry) {
      stream.write(line(entry));
    },
    reopen() {
      if (closed) return;
      const previous = stream;
      stream = open();
      // Its queued lines still reach the old (renamed) file: the descriptor follows the file, not the name.
      retired = Promise.all([retired, end(previous)]);
    },
    async close() {
      closed = true;
      await Promise.all([retired, end(stream)]);
    },
  };
}

/** Writes to a stream it does not own: `close()` leaves it open, and there is no file to reopen. */
export function streamDecisionLog(stream: Writable): DecisionLog {
  return {
    write(entry) {
      stream.write(line(entry));
    },
    reopen() {},
    close: () => Promise.resolve(),
  };
}

/** Keeps entries in memory — for tests and for gateways that ship entries themselves. */
export function memoryDecisionLog(limit = 10_000): DecisionLog & { entries: DecisionLogEntry[] } {
  const entries: DecisionLogEntry[] = [];
  return {
    entries,
    write(entry) {
      entries.push(entry);
      if (entries.length > limit) entries.shift();
    },
    reopen() {},
    close: () => Promise.resolve(),
  };
}
