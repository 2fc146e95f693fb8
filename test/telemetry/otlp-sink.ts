/**
 * An OTLP/HTTP receiver for tests, on loopback: what the OpenTelemetry exporters of spawngate's
 * processes (serve, the worker, the OpenClaw gateway's plugin) send with
 * OTEL_EXPORTER_OTLP_PROTOCOL=http/json, decoded into flat spans. It speaks the real wire format,
 * so the exporters under test are the real ones.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SinkSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  attributes: Record<string, unknown>;
  resource: Record<string, unknown>;
  status: { code?: number; message?: string };
}

export interface OtlpSink {
  /** Base URL; the traces endpoint is `${url}/v1/traces`. */
  url: string;
  spans: SinkSpan[];
  /** Requests that were not OTLP JSON (counted so a test can assert there were none). */
  rejected: number;
  close(): Promise<void>;
}

type AnyValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number; arrayValue?: { values?: AnyValue[] } };
type KeyValue = { key: string; value: AnyValue };

function valueOf(v: AnyValue): unknown {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(valueOf);
  return null;
}

function attributes(list: KeyValue[] | undefined): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, valueOf(kv.value)]));
}

/** Ids are hex in OTLP JSON; base64 is accepted too (older encoders). */
function hexId(id: string | undefined): string | null {
  if (!id) return null;
  if (/^[0-9a-f]+$/i.test(id)) return id.toLowerCase();
  return Buffer.from(id, 'base64').toString('hex');
}

export async function startOtlpSink(): Promise<OtlpSink> {
  const sink: OtlpSink = { url: '', spans: [], rejected: 0, close: () => Promise.resolve() };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        if (req.method !== 'POST' || req.url !== '/v1/traces') throw new Error(`unexpected ${req.method} ${req.url}`);
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          resourceSpans?: { resource?: { attributes?: KeyValue[] }; scopeSpans?: { spans?: { traceId: string; spanId: string; parentSpanId?: string; name: string; kind?: number; attributes?: KeyValue[]; status?: { code?: number; message?: string } }[] }[] }[];
        };
        for (const rs of body.resourceSpans ?? []) {
          const resource = attributes(rs.resource?.attributes);
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              sink.spans.push({
                traceId: hexId(s.traceId) ?? '',
                spanId: hexId(s.spanId) ?? '',
                parentSpanId: hexId(s.parentSpanId),
                name: s.name,
                kind: s.kind ?? 0,
                attributes: attributes(s.attributes),
                resource,
                status: s.status ?? {},
              });
            }
          }
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } catch {
        sink.rejected++;
        res.writeHead(400).end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  sink.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  sink.close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  return sink;
}
