/**
 * The worker's own span export under egress "proxy". Such a worker has no network but loopback (a
 * network namespace, Docker's "none"); its one way out is the gateway's egress proxy socket. The
 * OpenTelemetry SDK knows nothing of unix-socket proxies, so it exports to this relay on the worker's
 * loopback, and the relay sends each request on through the proxy socket as an HTTP proxy request
 * (absolute-form) to the collector the profile named. The proxy applies the profile's egressAllow to
 * it like to anything else: the collector's host:port must be on the list.
 *
 * Only OTLP over plain HTTP (http/protobuf, http/json) can go this way: gRPC is HTTP/2, which the
 * proxy's absolute-form forwarding does not carry, and an https:// collector would need a CONNECT
 * tunnel with TLS on top.
 */
import type { AddressInfo } from 'node:net';
import { traceExportRequested } from '../telemetry/sdk.js';
import { listen } from '../net.js';

// The CommonJS object, not an ESM import: see worker.ts (the facade would load undici at start).
const { createServer, request: httpRequest } = process.getBuiltinModule('node:http');

type Env = Record<string, string | undefined>;

export interface OtlpRelay {
  /** The traces URL the worker's SDK exports to: http://127.0.0.1:<port>/v1/traces. */
  readonly endpoint: string;
  /** The collector's traces URL the relay forwards to. */
  readonly target: string;
  close(): Promise<void>;
}

/** Where the worker's spans should go and how, from the OTEL_* variables the gateway passed. */
export function otlpTracesTarget(env: Env): { url: string; protocol: string } | null {
  const traces = env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'];
  const base = env['OTEL_EXPORTER_OTLP_ENDPOINT'];
  const url = traces || (base ? `${base.replace(/\/+$/, '')}/v1/traces` : '');
  if (!url) return null;
  const protocol = env['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'] || env['OTEL_EXPORTER_OTLP_PROTOCOL'] || 'http/protobuf';
  return { url, protocol };
}

/** Why a target cannot be relayed through the proxy; null when it can. */
export function unrelayable(target: { url: string; protocol: string }): string | null {
  if (target.protocol === 'grpc') return 'OTLP over gRPC cannot go through the egress proxy; set the profile\'s telemetry.protocol to http/protobuf';
  let url: URL;
  try {
    url = new URL(target.url);
  } catch {
    return `${target.url} is not a URL`;
  }
  if (url.protocol !== 'http:') return `only an http:// collector can be reached through the egress proxy, not ${url.protocol}`;
  return null;
}

export async function startOtlpRelay(options: { proxySocket: string; target: string }): Promise<OtlpRelay> {
  const target = new URL(options.target);
  const server = createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/v1/traces') {
      req.resume();
      res.writeHead(404, { 'content-type': 'text/plain' }).end('the worker\'s OTLP relay takes POST /v1/traces only\n');
      return;
    }
    const headers = { ...req.headers, host: target.host };
    const upstream = httpRequest({ socketPath: options.proxySocket, method: 'POST', path: target.href, headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`the worker's OTLP relay: ${err.message}\n`);
      else res.destroy();
    });
    req.pipe(upstream);
  });
  await listen(server, { port: 0, host: '127.0.0.1' });
  // The SDK's final flush goes through here, then the worker exits: the relay must never be what keeps it alive.
  server.unref();
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}/v1/traces`,
    target: target.href,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * Under egress "proxy" (a proxy socket), points this process's trace export at a relay through that
 * socket before the SDK starts (the SDK reads process.env). Returns the relay, to close after the
 * SDK's last flush; null when nothing is exported or there is no proxy. A target the proxy cannot
 * carry turns export off with a warning, rather than a worker that waits 5 s on every flush to fail.
 */
export async function relayTracesThroughProxy(env: Env, proxySocket: string | undefined, warn: (message: string) => void): Promise<OtlpRelay | null> {
  if (!proxySocket || !traceExportRequested(env)) return null;
  const target = otlpTracesTarget(env);
  if (!target) return null;
  const targets = new Set<Env>([env, process.env]);
  const why = unrelayable(target);
  if (why) {
    warn(`the worker's spans are not exported: ${why}`);
    for (const e of targets) e['OTEL_TRACES_EXPORTER'] = 'none';
    return null;
  }
  const relay = await startOtlpRelay({ proxySocket, target: target.url });
  for (const e of targets) e['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] = relay.endpoint;
  return relay;
}
