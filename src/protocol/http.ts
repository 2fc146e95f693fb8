import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, Server, ServerOptions as HttpServerOptions, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { parseStrictJson, StrictJsonError } from '../json.js';
import type { WorkerErrorBody } from './events.js';

/**
 * Bearer-token check in constant time. Both sides are hashed first so the comparison runs over equal
 * lengths and the token's length does not leak through timing either.
 */
export function tokenVerifier(token: string): (req: IncomingMessage) => boolean {
  const expected = createHash('sha256').update(token).digest();
  return (req) => {
    const header = req.headers.authorization;
    if (typeof header !== 'string') return false;
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    const provided = createHash('sha256').update(match?.[1] ?? '').digest();
    // Hash compare first, then require a match: no early return that depends on the token's bytes.
    return timingSafeEqual(provided, expected) && match !== null;
  };
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** W3C trace context: a malformed header is ignored (the spec says to start a new trace rather than fail the request). */
export function parseTraceparent(value: string | string[] | undefined): { traceparent: string; traceId: string } | null {
  if (typeof value !== 'string') return null;
  const trimmed = value.trim().toLowerCase();
  const match = TRACEPARENT.exec(trimmed);
  if (!match) return null;
  const [, version, traceId, spanId] = match;
  if (version === 'ff' || !traceId || /^0+$/.test(traceId) || !spanId || /^0+$/.test(spanId)) return null;
  return { traceparent: trimmed, traceId };
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(payload),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(payload);
}

export function sendError(
  res: ServerResponse,
  status: number,
  code: WorkerErrorBody['error']['code'],
  message: string,
  extra: { headers?: Record<string, string>; currentTurnId?: string } = {},
): void {
  const body: WorkerErrorBody = { error: { code, message, ...(extra.currentTurnId ? { currentTurnId: extra.currentTurnId } : {}) } };
  sendJson(res, status, body, extra.headers);
}

export class BodyTooLargeError extends Error {}

/** Bounds of one HTTP server's connections (docs/server.md, "Request bodies, limits and timeouts"). */
export interface HttpLimits {
  /** Time to receive a request's headers, from the connection or the first byte of the request. */
  headersTimeoutMs: number;
  /** Time to receive a whole request, headers and body; a response that streams (a turn) is not bound by it. */
  requestTimeoutMs: number;
  /** How long an idle keep-alive connection waits for its next request. */
  keepAliveTimeoutMs: number;
  /**
   * After a refusal with a body still coming, the connection swallows it (unparsed) so that the
   * client can finish writing and read the answer: it is cut once the client sends nothing for
   * `lingerMs`, ...
   */
  lingerMs: number;
  /** ...or `lingerMaxMs` after the answer in all, ... */
  lingerMaxMs: number;
  /** ...or once it has swallowed `lingerBytes`. */
  lingerBytes: number;
}

export const DEFAULT_HTTP_LIMITS: Readonly<HttpLimits> = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  lingerMs: 2_000,
  lingerMaxMs: 10_000,
  lingerBytes: 64 * 1024 * 1024,
};

/** Problems with `limits`, named by field, for the caller's own options error. */
export function httpLimitIssues(limits: Partial<HttpLimits>, prefix = ''): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  for (const key of ['headersTimeoutMs', 'requestTimeoutMs', 'keepAliveTimeoutMs', 'lingerMs', 'lingerMaxMs', 'lingerBytes'] as const) {
    const value = limits[key];
    if (value !== undefined && (!Number.isInteger(value) || value < 1)) issues.push({ path: `${prefix}${key}`, message: 'must be a positive integer' });
  }
  const headers = limits.headersTimeoutMs ?? DEFAULT_HTTP_LIMITS.headersTimeoutMs;
  const request = limits.requestTimeoutMs ?? DEFAULT_HTTP_LIMITS.requestTimeoutMs;
  // node:http refuses the pair otherwise, and a request cannot take less time than its own headers.
  if (issues.length === 0 && headers > request) issues.push({ path: `${prefix}headersTimeoutMs`, message: `must not exceed requestTimeoutMs (${request})` });
  return issues;
}

/**
 * node:http server options for `limits`. Node enforces headersTimeout and requestTimeout only when
 * its connection check runs (every 30 s by default), so the check runs at a fraction of the shorter
 * one: a slow client is cut close to its limit, not up to 30 s later.
 */
export function httpServerOptions(limits: HttpLimits): HttpServerOptions {
  return {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(limits.headersTimeoutMs / 4))),
  };
}

/**
 * What node:http does with a client error, minus the silence: a request cut by headersTimeout or
 * requestTimeout is told 408 (when nothing was written yet), a malformed one 400, then the
 * connection goes.
 */
export function onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  const code = err.code ?? '';
  if (socket.writable && (socket as Socket).bytesWritten === 0) {
    const status = code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : code.startsWith('HPE_') ? '400 Bad Request' : null;
    if (status) {
      socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
      // end() may never finish against a client that does not read: the socket goes regardless.
      setTimeout(() => socket.destroy(), 1000).unref();
      return;
    }
  }
  socket.destroy();
}

/** Whether the request says a body follows (a Content-Length above 0, or any Transfer-Encoding). */
export function announcesBody(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const length = req.headers['content-length'];
  return length !== undefined && length !== '0' && Number(length) !== 0;
}

const JSON_CONTENT_TYPE = /^application\/json[ \t]*(?:;[ \t]*charset[ \t]*=[ \t]*(?:utf-8|"utf-8")[ \t]*)?$/i;

/** `application/json`, alone or with `charset=utf-8` (any case): the only body spawngate reads. */
export function isJsonContentType(value: string | undefined): boolean {
  return value !== undefined && JSON_CONTENT_TYPE.test(value.trim());
}

const lingering = new WeakSet<Duplex>();

type LingerLimits = Pick<HttpLimits, 'lingerMs' | 'lingerMaxMs' | 'lingerBytes'>;

/**
 * Makes `res` the last response on its connection without reading the request's body: sent with
 * `Connection: close`, then the connection is half-closed and whatever the client still sends is
 * swallowed, unparsed, within the linger limits, before the socket is destroyed (nginx's lingering
 * close). Closing at once, with the client's upload still arriving, makes the kernel answer with a
 * RST, and a client that writes its whole body before it reads (curl, most blocking clients) then
 * fails with EPIPE and never reads the response that was already on its way.
 */
export function closeWithoutReading(req: IncomingMessage, res: ServerResponse, limits: LingerLimits): void {
  if (!res.headersSent) res.setHeader('connection', 'close');
  const socket = req.socket as Socket | null;
  if (!socket || lingering.has(socket)) return;
  lingering.add(socket);
  req.pause();
  // node:http ends a `Connection: close` response with socket.destroySoon(): end, then destroy once
  // the response is flushed, which is the abrupt close this replaces. Replaced for this socket only.
  socket.destroySoon = () => linger(socket, limits);
}

function linger(socket: Socket, limits: LingerLimits): void {
  if (socket.destroyed) return;
  if (socket.readableEnded) {
    socket.end();
    socket.once('finish', () => socket.destroy());
    return;
  }
  // The parser's listeners go: what arrives now is dropped, not parsed as more of the body.
  const parserListeners = socket.listeners('data') as ((chunk: Buffer) => void)[];
  // Idle-based: twenty clients uploading 50 MB at once through one loaded core take more than a
  // couple of seconds in all, and each is cut only when it stops sending (or hits the caps).
  const idle = setTimeout(() => socket.destroy(), limits.lingerMs);
  const cap = setTimeout(() => socket.destroy(), limits.lingerMaxMs);
  idle.unref();
  cap.unref();
  let swallowed = 0;
  socket.on('data', (chunk: Buffer) => {
    swallowed += chunk.length;
    if (swallowed > limits.lingerBytes) socket.destroy();
    else idle.refresh();
  });
  for (const listener of parserListeners) socket.removeListener('data', listener);
  socket.once('close', () => {
    clearTimeout(idle);
    clearTimeout(cap);
  });
  // The client has read the response and closed its side: nothing is left to protect.
  socket.once('end', () => socket.destroy());
  socket.end();
  socket.resume();
}

/**
 * Reads the request body, refusing more than `limit` bytes: a declared Content-Length over it is
 * refused before any byte is read, a longer stream as soon as it passes the limit (reading stops
 * there; the caller answers with closeWithoutReading).
 */
export function readBody(req: IncomingMessage, res: ServerResponse, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new BodyTooLargeError(`body of ${declared} bytes exceeds the limit of ${limit}`));
      return;
    }
    // A client that asked first (curl does for bodies over 1 MiB) sends the body only now.
    if (expectsContinue(req)) res.writeContinue();
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        req.off('data', onData);
        req.pause();
        reject(new BodyTooLargeError(`body exceeds the limit of ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

function expectsContinue(req: IncomingMessage): boolean {
  const expect = req.headers.expect;
  return typeof expect === 'string' && expect.trim().toLowerCase() === '100-continue';
}

/**
 * Serves `Expect: 100-continue` requests with the same handler, which answers 100 only once it is
 * about to read the body (readBody): node:http would otherwise say 100 at once, and the client would
 * upload a body that a 401 or 413 is about to refuse.
 */
export function answerContinueLate(server: Server, handler: (req: IncomingMessage, res: ServerResponse) => void): void {
  server.on('checkContinue', handler);
}

/** Where in a body a fault is: byte offset always, line and column (1-based, in characters) when the text decoded. */
export interface BodyFault {
  message: string;
  offset: number;
  line?: number;
  column?: number;
  /** The keys and indexes leading to the fault (a duplicate key's own name last). */
  path?: (string | number)[];
}

export type DecodedBody = { ok: true; value: unknown } | { ok: false; fault: BodyFault };

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A request body as strict JSON: UTF-8 that does not decode is a fault (not U+FFFD), and so are
 * duplicate keys, lone surrogates and nesting past the parser's depth (parseStrictJson).
 */
export function decodeJsonBody(body: Buffer): DecodedBody {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    const offset = firstInvalidUtf8(body);
    return { ok: false, fault: { message: `invalid UTF-8 at byte offset ${offset}`, offset } };
  }
  try {
    return { ok: true, value: parseStrictJson(text) };
  } catch (err) {
    if (!(err instanceof StrictJsonError)) throw err;
    const before = text.slice(0, err.offset);
    const line = before.split('\n').length;
    const column = err.offset - before.lastIndexOf('\n');
    const offset = Buffer.byteLength(before);
    return { ok: false, fault: { message: `${err.message} at line ${line} column ${column} (byte offset ${offset})`, offset, line, column, path: err.path } };
  }
}

/** Byte offset of the first sequence that is not UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF). */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i] as number;
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let min: number;
    if (b >= 0xc2 && b <= 0xdf) [need, min] = [1, 0x80];
    else if (b >= 0xe0 && b <= 0xef) [need, min] = [2, 0x800];
    else if (b >= 0xf0 && b <= 0xf4) [need, min] = [3, 0x10000];
    else return i;
    let cp = b & (0x3f >> need);
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if (c === undefined || (c & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += need + 1;
  }
  return bytes.length;
}
