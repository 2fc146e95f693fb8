/**
 * Clients that misbehave on purpose, for the HTTP hardening tests of `spawngate serve` and of the
 * worker: uploads far past any limit, headers without the body they announce, bytes trickled in.
 */
import { execFile } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import type { OutgoingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  json: unknown;
}

/** One shared upload buffer: 20 uploads need not hold 20 copies. */
export const FIFTY_MB = Buffer.alloc(50 * 1024 * 1024, 0x20);

function hostPort(url: string): { host: string; port: number } {
  const parsed = new URL(url);
  return { host: parsed.hostname, port: Number(parsed.port) };
}

/**
 * node:http's client uploading `body` in one go. It reads a response that comes early while still
 * writing; resolves with that response (read to its end), then drops the request. A request that
 * fails before any response rejects: that is the lost answer the tests look for.
 */
export function upload(url: string, method: string, path: string, headers: OutgoingHttpHeaders, body: Buffer, options: { chunked?: boolean; piped?: boolean } = {}): Promise<Answer> {
  const { host, port } = hostPort(url);
  return new Promise((resolve, reject) => {
    const all: OutgoingHttpHeaders = options.chunked ? { ...headers, 'transfer-encoding': 'chunked' } : { ...headers, 'content-length': body.length };
    const req = httpRequest({ host, port, method, path, headers: all, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      const done = (): void => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, json });
        req.destroy();
      };
      res.once('end', done);
      // The server cuts the upload after answering: a cut after the head still counts as answered.
      res.once('error', done);
      res.once('aborted', done);
    });
    req.on('error', reject);
    if (options.piped) {
      // As a file upload goes: 64 KiB at a time, each written when the socket has taken the last.
      Readable.from(
        (function* () {
          for (let at = 0; at < body.length; at += 64 * 1024) yield body.subarray(at, at + 64 * 1024);
        })(),
      ).pipe(req);
    } else if (options.chunked) {
      // Chunked in 1 MiB pieces, written without waiting: as fast as the socket takes them.
      for (let at = 0; at < body.length; at += 1024 * 1024) req.write(body.subarray(at, at + 1024 * 1024));
      req.end();
    } else req.end(body);
  });
}

/**
 * A raw TCP client that uploads the way a blocking client does (curl, Python's http.client): it
 * writes the request head and all of `body` as fast as the socket takes it and reads nothing until
 * the last byte is written; then it reads until the server closes. Resolves with the status line's
 * code, 0 when no response could be read (the upload failed first: EPIPE, ECONNRESET).
 */
export function rawUpload(url: string, head: string, body: Buffer): Promise<{ status: number; text: string }> {
  const { host, port } = hostPort(url);
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.pause();
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => undefined);
    socket.once('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const match = /^HTTP\/1\.1 (\d{3}) /.exec(text);
      resolve({ status: match ? Number(match[1]) : 0, text });
    });
    socket.write(head);
    for (let at = 0; at < body.length; at += 1024 * 1024) socket.write(body.subarray(at, at + 1024 * 1024));
    // Everything is in the kernel: now, and only now, the response is read.
    socket.write('', () => socket.resume());
  });
}

export interface HeadOnly {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  json: unknown;
  /** Resolves when the server has closed the connection. */
  closed: Promise<void>;
}

/**
 * Sends a request head that announces a body (Content-Length `declared`) and never sends a byte of
 * it: the answer can only come from a server that decided without reading the body.
 */
export function headOnly(url: string, method: string, path: string, headers: Record<string, string>, declared: number): Promise<HeadOnly> {
  const { host, port } = hostPort(url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    const closed = new Promise<void>((done) => socket.once('close', () => done()));
    let text = '';
    socket.on('error', () => undefined);
    socket.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = /\r\ncontent-length: (\d+)/i.exec(text.slice(0, end));
      const bodyText = text.slice(end + 4);
      if (length && Buffer.byteLength(bodyText, 'latin1') < Number(length[1])) return;
      socket.removeAllListeners('data');
      const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
      const parsedHeaders: Record<string, string> = {};
      for (const line of lines) {
        const at = line.indexOf(':');
        parsedHeaders[line.slice(0, at).toLowerCase()] = line.slice(at + 1).trim();
      }
      let json: unknown;
      try {
        json = JSON.parse(Buffer.from(bodyText, 'latin1').toString('utf8'));
      } catch {
        json = undefined;
      }
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine ?? '')?.[1] ?? 0), headers: parsedHeaders, json, closed });
    });
    socket.once('close', () => reject(new Error(`closed without a complete response: ${JSON.stringify(text.slice(0, 200))}`)));
    const head = Object.entries({ host: `${host}:${port}`, ...headers, 'content-length': String(declared) })
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    socket.write(`${method} ${path} HTTP/1.1\r\n${head}\r\n`);
  });
}

/**
 * Writes `head` (and then `body`) one byte at a time, `everyMs` apart, for at most `maxBytes` bytes,
 * reading what the server says. Resolves when the server closes the connection, with what it sent
 * and whether the trickle was still going (false: it ran out of bytes first, so the server did not cut it).
 */
export function trickle(url: string, text: string, everyMs: number): Promise<{ received: string; cutWhileSending: boolean }> {
  const { host, port } = hostPort(url);
  return new Promise((resolve) => {
    const socket: Socket = connect({ host, port });
    let received = '';
    let at = 0;
    let timer: NodeJS.Timeout | undefined;
    socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
    socket.on('error', () => undefined);
    socket.once('close', () => {
      clearInterval(timer);
      resolve({ received, cutWhileSending: at < text.length });
    });
    socket.once('connect', () => {
      timer = setInterval(() => {
        if (at >= text.length) {
          clearInterval(timer);
          // Out of bytes without being cut: stop waiting, the test will fail on cutWhileSending.
          socket.destroy();
          return;
        }
        socket.write(text[at] ?? '');
        at++;
      }, everyMs);
    });
  });
}

const uploadClient = fileURLToPath(new URL('./upload-client.ts', import.meta.url));

/**
 * `count` node:http uploads of 50 MB from a separate process (upload-client.ts): the statuses, or
 * `lost:<errno>` for an upload that failed before its response arrived.
 */
export function uploadFromAnotherProcess(plan: { url: string; path: string; headers: Record<string, string>; count: number; sequential?: boolean; drain?: boolean }): Promise<(number | string)[]> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [uploadClient, JSON.stringify(plan)], { timeout: 120_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`upload client failed: ${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout) as (number | string)[]);
    });
  });
}
