/**
 * Egress "proxy" run by spawngate itself: an HTTP proxy (CONNECT for TLS, absolute-URI requests for
 * plain HTTP) on a unix socket that only one worker can reach, letting through the hosts its profile
 * allows and refusing everything else with 403. The worker has no network of its own (an empty
 * network namespace, Docker's "none"); its only way out is this socket, which it offers to its agent
 * as HTTP(S)_PROXY on its own loopback (src/worker/egress.ts).
 */
import { createServer, request as httpRequest } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { listen } from '../net.js';
import { egressAllowed, parseEgressRule } from '../egress-rules.js';
import type { EgressRule } from '../egress-rules.js';

export interface EgressDecision {
  host: string;
  port: number;
  allowed: boolean;
  method: string;
}

/** A decision as a line of the worker's logs, in the worker's own log format (source "egress-proxy"). */
export function egressLogLine(d: EgressDecision): string {
  return JSON.stringify({ time: new Date().toISOString(), source: 'egress-proxy', level: d.allowed ? 'info' : 'warn', message: `${d.allowed ? 'allowed' : 'refused'} ${d.method} ${d.host}:${d.port}` });
}

export interface EgressProxy {
  readonly socketPath: string;
  close(): Promise<void>;
}

/** Bounds against an agent that opens connections in a loop: the proxy is one socket of the gateway's process. */
const MAX_CONNECTIONS = 256;
const IDLE_MS = 10 * 60_000;

function target(authority: string): { host: string; port: number } | null {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(authority);
  if (!m) return null;
  const port = Number(m[2]);
  return port >= 1 && port <= 65535 ? { host: m[1]!.replace(/^\[|\]$/g, ''), port } : null;
}

function refuse(socket: Socket, status: string, why: string): void {
  // A CONNECT socket is the handler's alone (the HTTP server let go of it): an agent that exits or
  // is killed with this answer unread resets it, and an 'error' nobody listens to would take the
  // whole gateway down with an uncaught ECONNRESET.
  socket.on('error', () => socket.destroy());
  socket.end(`HTTP/1.1 ${status}\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(why) + 1}\r\n\r\n${why}\n`);
}

export async function startEgressProxy(options: { socketPath: string; allow: readonly string[]; onDecision?: (d: EgressDecision) => void }): Promise<EgressProxy> {
  const rules = options.allow.map((p) => parseEgressRule(p)).filter((r): r is EgressRule => r !== null);
  const open = new Set<Socket>();
  const decide = (host: string, port: number, method: string): boolean => {
    const allowed = egressAllowed(rules, host, port);
    options.onDecision?.({ host, port, allowed, method });
    return allowed;
  };
  const deniedText = (host: string, port: number) => `spawngate egress proxy: ${host}:${port} is not on this worker's allow-list (${options.allow.join(', ') || 'empty'})`;

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    // Plain HTTP through a proxy: the request line carries the absolute URL.
    let url: URL;
    try {
      url = new URL(req.url ?? '');
    } catch {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('spawngate egress proxy: expected an absolute http:// URL or CONNECT\n');
      return;
    }
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    if (url.protocol !== 'http:' || !decide(url.hostname, port, req.method ?? 'GET')) {
      res.writeHead(403, { 'content-type': 'text/plain' }).end(`${deniedText(url.hostname, port)}\n`);
      req.resume();
      return;
    }
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    delete headers['proxy-connection'];
    const upstream = httpRequest({ host: url.hostname.replace(/^\[|\]$/g, ''), port, method: req.method, path: `${url.pathname}${url.search}`, headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`spawngate egress proxy: ${err.message}\n`);
      else res.destroy();
    });
    req.pipe(upstream);
  });

  server.on('connect', (req: IncomingMessage, client: Socket, head: Buffer) => {
    const to = target(req.url ?? '');
    if (!to) return refuse(client, '400 Bad Request', 'spawngate egress proxy: CONNECT needs host:port');
    if (!decide(to.host, to.port, 'CONNECT')) return refuse(client, '403 Forbidden', deniedText(to.host, to.port));
    const upstream = connect({ host: to.host, port: to.port });
    upstream.setTimeout(IDLE_MS, () => upstream.destroy());
    client.setTimeout(IDLE_MS, () => client.destroy());
    upstream.once('connect', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    // `on`, not `once`: a socket that errs again after its first error must not crash the gateway.
    upstream.on('error', (err) => {
      if (upstream.connecting) refuse(client, '502 Bad Gateway', `spawngate egress proxy: ${to.host}:${to.port}: ${err.message}`);
      else client.destroy();
    });
    client.on('error', () => upstream.destroy());
    client.once('close', () => upstream.destroy());
  });

  server.on('connection', (socket: Socket) => {
    if (open.size >= MAX_CONNECTIONS) {
      refuse(socket, '503 Service Unavailable', `spawngate egress proxy: more than ${MAX_CONNECTIONS} open connections`);
      return;
    }
    open.add(socket);
    socket.once('close', () => open.delete(socket));
  });
  server.on('clientError', (_err, socket) => socket.destroy());

  await rm(options.socketPath, { force: true });
  // The worker may run as another uid (10001 in the image); the folder around the socket guards it.
  await listen(server, { socketPath: options.socketPath }, { socketWritableByAll: true });
  return {
    socketPath: options.socketPath,
    async close() {
      for (const socket of open) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(options.socketPath, { force: true });
    },
  };
}
