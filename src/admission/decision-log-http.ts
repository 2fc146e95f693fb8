/**
 * A decision-log sink that POSTs batches of lines as a JSON array to a collector, as OPA's decision
 * log service plugin does (gzip by default), so a service written for OPA's uploads can take
 * spawngate's. Admission never waits for it: write() only queues; a bounded queue drops its oldest
 * line when full, and every line lost on the way is counted on the gate's registry.
 */
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import type { ClientRequest, IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { Registry } from 'prom-client';
import type { DecisionLog, DecisionLogEntry } from './decision-log.js';
import type { DecisionLogDropReason, DecisionLogMetrics } from './decision-log-metrics.js';
import { decisionLogMetrics } from './decision-log-metrics.js';

const gzipAsync = promisify(gzip);

export const HTTP_SINK_DEFAULTS = {
  maxBufferedEntries: 10_000,
  maxBatchEntries: 500,
  flushIntervalMs: 5_000,
  timeoutMs: 10_000,
  maxAttempts: 5,
  retryBaseMs: 500,
  gzip: true,
} as const;

export interface HttpDecisionLogOptions {
  url: string;
  /** Resolved header values (the config names them by secretRef or env; see openDecisionLog). */
  headers?: Readonly<Record<string, string>>;
  /** Lines held while the collector is slow or away; past it the oldest is dropped (reason buffer_full). */
  maxBufferedEntries?: number;
  /** Lines per POST; a full batch is sent at once, a partial one at the next flush interval. */
  maxBatchEntries?: number;
  flushIntervalMs?: number;
  /** Per attempt, connection to the end of the answer. */
  timeoutMs?: number;
  /** Attempts per batch before it is dropped (reason send_failed). */
  maxAttempts?: number;
  /** First retry delay, doubled per attempt and capped at flushIntervalMs. */
  retryBaseMs?: number;
  gzip?: boolean;
  /** Where the counters go; without one they are kept on a registry of their own. */
  registry?: Registry;
  /** Each failed attempt; the sink goes on (retries, then drops and counts). */
  onError?: (err: Error) => void;
}

export interface HttpDecisionLog extends DecisionLog {
  /** Sends everything queued now; resolves once it was accepted or given up (never rejects). */
  flush(): Promise<void>;
  /** Lines queued and not yet taken into a batch. */
  readonly buffered: number;
  readonly metrics: DecisionLogMetrics;
}

const SINK = 'http';

export function httpDecisionLog(options: HttpDecisionLogOptions): HttpDecisionLog {
  const settings = { ...HTTP_SINK_DEFAULTS, ...definedOnly({ maxBufferedEntries: options.maxBufferedEntries, maxBatchEntries: options.maxBatchEntries, flushIntervalMs: options.flushIntervalMs, timeoutMs: options.timeoutMs, maxAttempts: options.maxAttempts, retryBaseMs: options.retryBaseMs, gzip: options.gzip }) };
  const url = new URL(options.url);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`decision log URL must be http:// or https://, not ${url.protocol}`);
  const secure = url.protocol === 'https:';
  // An agent of its own: its keep-alive sockets end with the sink, not with the process.
  const agent = secure ? new HttpsAgent({ keepAlive: true, maxSockets: 1 }) : new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const metrics = decisionLogMetrics(options.registry ?? new Registry());
  const onError = options.onError ?? (() => undefined);

  const queue: string[] = [];
  let sending: Promise<void> | null = null;
  let closing = false;
  let closed: Promise<void> | null = null;
  // Wakes a retry delay early when the sink closes.
  let wake: (() => void) | null = null;
  const open = new Set<ClientRequest>();

  const drop = (count: number, reason: DecisionLogDropReason) => {
    if (count > 0) metrics.dropped.inc({ sink: SINK, reason }, count);
  };
  const gauge = () => metrics.buffered.set({ sink: SINK }, queue.length);

  const timer = setInterval(() => void kick(), settings.flushIntervalMs);
  timer.unref();

  function kick(): Promise<void> {
    // The first batch is taken before drain's first await, so what a write() queued is in it.
    sending ??= drain()
      .catch((err: unknown) => onError(err instanceof Error ? err : new Error(String(err))))
      .finally(() => {
        sending = null;
      });
    return sending;
  }

  async function drain(): Promise<void> {
    while (queue.length > 0) {
      const batch = queue.splice(0, settings.maxBatchEntries);
      gauge();
      const delivered = await deliver(batch);
      if (!delivered && closing) {
        // The collector is failing and the gateway is stopping: waiting on it would hold the shutdown.
        drop(queue.length, 'shutdown');
        queue.length = 0;
        gauge();
      }
    }
  }

  async function deliver(batch: string[]): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        await post(batch);
        metrics.sent.inc({ sink: SINK }, batch.length);
        return true;
      } catch (err) {
        metrics.sendErrors.inc({ sink: SINK });
        onError(err as Error);
        if (closing || attempt >= settings.maxAttempts) {
          drop(batch.length, closing ? 'shutdown' : 'send_failed');
          return false;
        }
        await pause(Math.min(settings.retryBaseMs * 2 ** (attempt - 1), settings.flushIntervalMs));
      }
    }
  }

  function pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      t.unref();
      function done() {
        clearTimeout(t);
        wake = null;
        resolve();
      }
      wake = done;
    });
  }

  async function post(batch: string[]): Promise<void> {
    const json = Buffer.from(`[${batch.join(',')}]`);
    const body = settings.gzip ? await gzipAsync(json) : json;
    const headers: Record<string, string> = {
      ...options.headers,
      'content-type': 'application/json',
      'content-length': String(body.length),
      ...(settings.gzip ? { 'content-encoding': 'gzip' } : {}),
    };
    await new Promise<void>((resolve, reject) => {
      const req = (secure ? httpsRequest : httpRequest)(url, { method: 'POST', headers, agent });
      open.add(req);
      const deadline = setTimeout(() => req.destroy(new Error(`decision log upload to ${url.origin} timed out after ${settings.timeoutMs} ms`)), settings.timeoutMs);
      deadline.unref();
      const settle = (err?: Error) => {
        clearTimeout(deadline);
        open.delete(req);
        if (err) reject(err);
        else resolve();
      };
      req.on('error', (err) => settle(err));
      req.on('response', (res: IncomingMessage) => {
        res.resume();
        res.on('error', (err) => settle(err));
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) settle();
          else settle(new Error(`decision log upload to ${url.origin} answered HTTP ${status}`));
        });
      });
      req.end(body);
    });
  }

  return {
    metrics,
    get buffered() {
      return queue.length;
    },
    write(entry: DecisionLogEntry) {
      if (closing) {
        drop(1, 'shutdown');
        return;
      }
      queue.push(JSON.stringify(entry));
      if (queue.length > settings.maxBufferedEntries) {
        queue.shift();
        drop(1, 'buffer_full');
      }
      gauge();
      if (queue.length >= settings.maxBatchEntries) void kick();
    },
    async flush() {
      // A drain already running may have started before the latest writes: go again after it.
      if (sending) await sending;
      await kick();
    },
    close() {
      closed ??= (async () => {
        closing = true;
        clearInterval(timer);
        wake?.();
        try {
          if (sending) await sending;
          await kick();
        } finally {
          for (const req of open) req.destroy();
          agent.destroy();
        }
      })();
      return closed;
    },
  };
}

function definedOnly<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
