/**
 * The worker's side of an ACP connection: JSON-RPC 2.0 over newline-delimited JSON on the agent's
 * stdio, as the protocol defines it, and no more than the worker uses (its requests with
 * cancellation, its notifications, and the agent's notifications and requests).
 *
 * Why not the ACP SDK's client: loading the SDK, which builds a schema object for every type of the
 * protocol when it loads, took a cold worker about 80 ms of CPU, longer than its agent takes to
 * boot beside it (launch.ts), so it was what a spawn waited for. The SDK still defines the types
 * (acp-messages.ts checks the agent's messages against them) and is the agent side of the tests.
 */

/** A JSON-RPC error the agent answered with. */
export class AcpRequestError extends Error {
  readonly code: number;
  readonly data: unknown;
  constructor(code: number, message: string, data?: unknown) {
    super(message);
    this.name = 'AcpRequestError';
    this.code = code;
    this.data = data;
  }
}

/** An answer of the agent that does not have the protocol's shape (the worker cannot use it). */
export class AcpProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AcpProtocolError';
  }
}

// JSON-RPC's codes.
const PARSE_ERROR = -32700;
const INVALID_REQUEST = -32600;
const METHOD_NOT_FOUND = -32601;
export const INVALID_PARAMS = -32602;
const INTERNAL_ERROR = -32603;

/** The SDK's bound: a line longer than this ends the connection instead of growing without end. */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024;

export interface AcpClientHandlers {
  /** A notification of the agent; an exception here is the handler's own bug and is not the agent's business. */
  onNotification(method: string, params: unknown): void;
  /** A request of the agent: its result, an AcpRequestError to answer with, or null for a method the worker does not serve. */
  onRequest(method: string, params: unknown): Promise<unknown> | null;
}

export interface AcpClient {
  /**
   * Sends a request; resolves with its result once `check` finds no fault in it (a fault rejects
   * with AcpProtocolError). `signal` sends `$/cancel_request` and keeps waiting: the agent's answer
   * is how the caller knows the agent let go.
   */
  request<T>(method: string, params: unknown, check: (result: unknown) => string | null, options?: { signal?: AbortSignal }): Promise<T>;
  notify(method: string, params: unknown): Promise<void>;
  /** Aborts when the connection ends: the agent's stdout closed or broke, or close() was called. */
  readonly signal: AbortSignal;
  close(reason?: Error): void;
}

interface Pending {
  method: string;
  check: (result: unknown) => string | null;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

function isObj(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * What the client reads the agent's messages from: the part of a web ReadableStream it uses, so
 * that a worker can hand it the agent's stdout without loading Node's web streams (agent-process.ts).
 */
export interface ByteSource {
  getReader(): { read(): Promise<{ done: boolean; value?: Uint8Array }>; cancel(reason?: unknown): Promise<void> };
}

/** What the client writes its messages to: the part of a web WritableStream it uses. */
export interface ByteSink {
  getWriter(): { write(chunk: Uint8Array): Promise<void> };
}

export function connectAcpClient(input: ByteSource, output: ByteSink, handlers: AcpClientHandlers, maxMessageBytes = MAX_MESSAGE_BYTES): AcpClient {
  const closed = new AbortController();
  const pending = new Map<number, Pending>();
  let nextId = 0;
  const encoder = new TextEncoder();
  const writer = output.getWriter();
  // Writes keep their order through the writer's own queue; a failed one (the agent gone) ends the connection.
  const write = (message: Record<string, unknown>): Promise<void> => {
    if (closed.signal.aborted) return Promise.reject(closed.signal.reason as Error);
    return writer.write(encoder.encode(`${JSON.stringify({ jsonrpc: '2.0', ...message })}\n`)).catch((err: unknown) => {
      close(err instanceof Error ? err : new Error(String(err)));
      throw err;
    });
  };
  const answer = (message: Record<string, unknown>): void => {
    void write(message).catch(() => undefined);
  };

  const close = (reason: Error = new Error('ACP connection closed')): void => {
    if (closed.signal.aborted) return;
    closed.abort(reason);
    for (const p of pending.values()) p.reject(reason);
    pending.clear();
    void reader.cancel(reason).catch(() => undefined);
    // The agent's stdin stays open: an agent sees its end as "stop", and stopping it is the worker's
    // decision (AgentProcess.terminate ends it), not a side effect of an unreadable stdout.
  };

  const onResponse = (id: unknown, message: Record<string, unknown>): void => {
    const p = typeof id === 'number' ? pending.get(id) : undefined;
    // An answer to nothing the worker asked (or asked and closed): nothing waits for it.
    if (!p) return;
    pending.delete(id as number);
    if ('error' in message) {
      const error = message['error'];
      if (isObj(error) && Number.isInteger(error['code']) && typeof error['message'] === 'string') p.reject(new AcpRequestError(error['code'] as number, error['message'], error['data']));
      else p.reject(new AcpProtocolError(`the agent answered ${p.method} with a malformed error`));
      return;
    }
    const fault = p.check(message['result']);
    if (fault) p.reject(new AcpProtocolError(`the agent's answer to ${p.method} is not ACP: ${fault}`));
    else p.resolve(message['result']);
  };

  const onIncomingRequest = (id: string | number, method: string, params: unknown): void => {
    let handled: Promise<unknown> | null;
    try {
      handled = handlers.onRequest(method, params);
    } catch (err) {
      handled = Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    if (handled === null) {
      answer({ id, error: { code: METHOD_NOT_FOUND, message: `"Method not found": ${method}` } });
      return;
    }
    handled.then(
      (result) => answer({ id, result }),
      (err: unknown) =>
        answer({
          id,
          error: err instanceof AcpRequestError ? { code: err.code, message: err.message, ...(err.data === undefined ? {} : { data: err.data }) } : { code: INTERNAL_ERROR, message: 'Internal error' },
        }),
    );
  };

  const onLine = (line: string): void => {
    if (line.trim() === '') return;
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch {
      answer({ id: null, error: { code: PARSE_ERROR, message: 'Parse error' } });
      return;
    }
    if (!isObj(message) || message['jsonrpc'] !== '2.0') {
      answer({ id: null, error: { code: INVALID_REQUEST, message: 'Invalid Request' } });
      return;
    }
    const { id, method } = message;
    if (typeof method !== 'string') {
      if ('result' in message || 'error' in message) onResponse(id, message);
      return;
    }
    if (id === undefined) {
      try {
        handlers.onNotification(method, message['params']);
      } catch {
        // The worker's own handler failed; the connection and the agent are not at fault.
      }
      return;
    }
    if (typeof id !== 'string' && typeof id !== 'number') {
      answer({ id: null, error: { code: INVALID_REQUEST, message: 'Invalid Request' } });
      return;
    }
    onIncomingRequest(id, method, message['params']);
  };

  const reader = input.getReader();
  void (async () => {
    const decoder = new TextDecoder();
    let buffered = '';
    // Where the search for the next newline resumes: a long line arriving in many chunks is scanned
    // once, not once per chunk (which an agent could make quadratic).
    let scanFrom = 0;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let newline: number;
        while ((newline = buffered.indexOf('\n', scanFrom)) !== -1) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          scanFrom = 0;
          if (closed.signal.aborted) return;
          onLine(line);
        }
        scanFrom = buffered.length;
        // A UTF-16 unit is at least one byte of UTF-8, so this bounds the bytes too.
        if (buffered.length > maxMessageBytes) throw new AcpProtocolError(`the agent sent a message longer than ${maxMessageBytes} bytes`);
      }
      buffered += decoder.decode();
      if (!closed.signal.aborted && buffered.trim() !== '') onLine(buffered);
      close(new Error('the agent closed its stdout'));
    } catch (err) {
      close(err instanceof Error ? err : new Error(String(err)));
    }
  })();

  return {
    signal: closed.signal,
    close,
    notify(method, params) {
      return write({ method, params });
    },
    request<T>(method: string, params: unknown, check: (result: unknown) => string | null, options: { signal?: AbortSignal } = {}): Promise<T> {
      if (closed.signal.aborted) return Promise.reject(closed.signal.reason as Error);
      const id = nextId++;
      const { signal } = options;
      const cancel = (): void => {
        if (pending.has(id)) answer({ method: '$/cancel_request', params: { requestId: id } });
      };
      const response = new Promise<T>((resolve, reject) => {
        pending.set(id, {
          method,
          check,
          resolve: (value) => {
            signal?.removeEventListener('abort', cancel);
            resolve(value as T);
          },
          reject: (error) => {
            signal?.removeEventListener('abort', cancel);
            reject(error);
          },
        });
      });
      write({ id, method, params }).catch(() => undefined);
      if (signal?.aborted) cancel();
      else signal?.addEventListener('abort', cancel, { once: true });
      return response;
    },
  };
}

