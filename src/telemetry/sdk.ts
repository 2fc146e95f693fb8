/**
 * Trace export configured from the standard OTEL_* environment, for spawngate's own processes
 * (serve, the CLI, the worker, the OpenClaw plugin's gateway). The library itself stays API-only:
 * an embedder that registered its own SDK keeps it, and spawngate's spans go there.
 *
 * The SDK (and its exporters) load only when the environment asks for export, so a plain run pays
 * nothing and never tries the default localhost:4318.
 */
import { ProxyTracerProvider, trace } from '@opentelemetry/api';

type Env = Record<string, string | undefined>;

export interface TelemetryHandle {
  /** Flushes every span not yet exported, then stops; idempotent. */
  shutdown(): Promise<void>;
}

/** True when the environment asks for trace export (an OTLP endpoint or a traces exporter other than none). */
export function traceExportRequested(env: Env = process.env): boolean {
  if (/^(1|true)$/i.test(env['OTEL_SDK_DISABLED'] ?? '')) return false;
  const exporters = (env['OTEL_TRACES_EXPORTER'] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (exporters.includes('none')) return false;
  return exporters.length > 0 || Boolean(env['OTEL_EXPORTER_OTLP_ENDPOINT'] || env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT']);
}

/**
 * True when some tracer provider is already registered globally (an embedder's, OpenClaw's, or
 * ours): the global proxy has a delegate other than the no-op one a fresh proxy falls back to.
 * Asked without making a span (a probe span would land in the host's traces).
 */
function providerRegistered(): boolean {
  const provider = trace.getTracerProvider();
  if (!(provider instanceof ProxyTracerProvider)) return true;
  return provider.getDelegate() !== new ProxyTracerProvider().getDelegate();
}

const STARTED = Symbol.for('spawngate.telemetry.sdk.v1');

/**
 * Starts trace export for this process when the environment asks for it and nobody else did.
 * `service` is the default `service.name` (OTEL_SERVICE_NAME wins); `attributes` are added to the
 * resource (OTEL_RESOURCE_ATTRIBUTES too, read by the SDK). Metrics and logs stay with prom-client
 * and the JSON logs: only traces are exported here.
 */
export async function startTelemetry(options: { service: string; attributes?: Record<string, string>; env?: Env }): Promise<TelemetryHandle | null> {
  const env = options.env ?? process.env;
  const holder = globalThis as unknown as Record<symbol, Promise<TelemetryHandle | null> | undefined>;
  if (holder[STARTED]) return holder[STARTED];
  if (!traceExportRequested(env) || providerRegistered()) return null;
  holder[STARTED] = (async () => {
    const [{ NodeSDK }, { resourceFromAttributes }, { readFileSync }] = await Promise.all([
      import('@opentelemetry/sdk-node'),
      import('@opentelemetry/resources'),
      import('node:fs'),
    ]);
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    const sdk = new NodeSDK({
      // The env detector (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME) runs after this and wins.
      resource: resourceFromAttributes({ 'service.name': options.service, 'service.version': pkg.version, ...options.attributes }),
      // Spans only: metrics are prom-client's, logs are spawngate's JSON lines.
      metricReaders: [],
      logRecordProcessors: [],
      instrumentations: [],
    });
    sdk.start();
    let stopping: Promise<void> | null = null;
    return {
      shutdown: () =>
        (stopping ??= sdk.shutdown().catch((err: unknown) => {
          process.stderr.write(`spawngate: flushing traces failed: ${(err as Error).message}\n`);
        })),
    };
  })();
  return holder[STARTED];
}

/**
 * Exports every finished span now, whoever registered the tracer provider (a host that stops, like
 * a gateway at gateway_stop, may not shut down a provider it does not own).
 */
export async function flushTelemetry(): Promise<void> {
  const provider = trace.getTracerProvider();
  const delegate = (provider instanceof ProxyTracerProvider ? provider.getDelegate() : provider) as { forceFlush?: () => Promise<void> };
  await delegate.forceFlush?.().catch(() => undefined);
}
