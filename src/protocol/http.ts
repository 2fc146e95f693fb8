import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
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

/** Reads the request body as UTF-8, refusing more than `limit` bytes. */
export function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new BodyTooLargeError(`body of ${declared} bytes exceeds ${limit}`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(new BodyTooLargeError(`body exceeds ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
  });
}
