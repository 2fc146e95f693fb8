/** What a worker learns of the gateway's trace export: where to send spans, never how to authenticate. */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import type { BackendConfig, ProfileConfig } from '../../src/config/index.js';
import { workerTelemetryEnv } from '../../src/sessions/spec.js';

const processBackend = { type: 'process' } as BackendConfig;
const containerBackend = { type: 'container' } as BackendConfig;
const exporting = {
  OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318',
  OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
  OTEL_EXPORTER_OTLP_HEADERS: 'authorization=Bearer gateway-secret',
  OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=prod',
};

describe('workerTelemetryEnv', () => {
  it('gives an open-egress process worker the gateway\'s endpoint, protocol and resource attributes, not its headers', () => {
    expect(workerTelemetryEnv({}, processBackend, 'open', exporting)).toEqual({
      OTEL_TRACES_EXPORTER: 'otlp',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318',
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json',
      OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=prod',
    });
  });

  it('prefers the traces endpoint of the gateway over its base endpoint', () => {
    const env = workerTelemetryEnv({}, processBackend, 'open', { ...exporting, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:9999/v1/traces' });
    expect(env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT']).toBe('http://127.0.0.1:9999/v1/traces');
    expect(env['OTEL_EXPORTER_OTLP_ENDPOINT']).toBeUndefined();
  });

  it('gives nothing where the worker cannot reach the collector or export is off', () => {
    // egress none: no route at all; a loopback endpoint means the container itself; the gateway exports nothing.
    expect(workerTelemetryEnv({}, processBackend, 'none', exporting)).toEqual({});
    expect(workerTelemetryEnv({}, containerBackend, 'open', exporting)).toEqual({});
    expect(workerTelemetryEnv({}, processBackend, 'open', {})).toEqual({});
    expect(workerTelemetryEnv({}, processBackend, 'open', { ...exporting, OTEL_SDK_DISABLED: 'true' })).toEqual({});
    expect(workerTelemetryEnv({ telemetry: { traces: false } }, processBackend, 'open', exporting)).toEqual({});
    // Proxy egress only reaches the proxy: the gateway's endpoint is not assumed reachable.
    expect(workerTelemetryEnv({}, processBackend, 'proxy', exporting)).toEqual({});
  });

  it('a profile names the collector as the worker reaches it (also behind an egress proxy), with its own protocol', () => {
    const profile: ProfileConfig = { telemetry: { endpoint: 'http://otel-collector.observability:4318/v1/traces', protocol: 'http/protobuf' } };
    expect(workerTelemetryEnv(profile, containerBackend, 'proxy', {})).toEqual({
      OTEL_TRACES_EXPORTER: 'otlp',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://otel-collector.observability:4318/v1/traces',
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf',
    });
    expect(workerTelemetryEnv(profile, containerBackend, 'none', {})).toEqual({});
  });

  it('the config refuses a telemetry endpoint that is not an http(s) URL, by path', () => {
    const config = { agents: { executionBackends: { local: { type: 'process', profiles: { p: { telemetry: { endpoint: 'otel-collector:4317' } } } } } } };
    expect(() => parseConfig(config)).toThrow(/agents\.executionBackends\.local\.profiles\.p\.telemetry\.endpoint.*http/s);
  });
});
