import { jsonLogger } from '../../log.js';
import type { Logger } from '../../log.js';
import type { ServerListen } from '../../server/index.js';
import { createServer } from '../../server/index.js';
import { createSpawngate } from '../../spawngate.js';
import { createMetrics } from '../../telemetry/metrics.js';
import type { Spawngate } from '../../spawngate.js';
import type { Command } from '../framework.js';
import { EXIT, str } from '../framework.js';
import { startTelemetry } from '../../telemetry/sdk.js';

const DEFAULT_PORT = 8080;
const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
type LogLevel = (typeof LOG_LEVELS)[number];

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT'];
    const onSignal = (signal: NodeJS.Signals): void => {
      // Only the first one is ours: a second Ctrl-C gets Node's default and ends the process at once.
      for (const s of signals) process.off(s, onSignal);
      resolve(signal);
    };
    for (const s of signals) process.on(s, onSignal);
  });
}

/**
 * A write function for stdout or stderr that outlives its reader. When a supervisor's pipe closes
 * (EPIPE) or the terminal goes away (EIO), the stream errors; without a listener that error would
 * end the process and orphan every worker it runs. The first error marks the stream gone, and
 * whatever is written after it is dropped.
 */
function survivingWriter(stream: NodeJS.WritableStream, onGone: (err: Error) => void = () => undefined): (text: string) => void {
  let gone = false;
  // Never removed: the error of the last write (the "stopped" line) arrives after run() returned.
  stream.on('error', (err: Error) => {
    if (gone) return;
    gone = true;
    onGone(err);
  });
  return (text) => {
    if (gone || (stream as { destroyed?: boolean }).destroyed === true) return;
    try {
      stream.write(text);
    } catch (err) {
      gone = true;
      onGone(err as Error);
    }
  };
}

/** A log call must not fail the request or shutdown step that makes it (e.g. fields JSON cannot hold). */
function neverThrowing(logger: Logger): Logger {
  const guard =
    (level: keyof Logger) =>
    (msg: string, fields?: Record<string, unknown>): void => {
      try {
        logger[level](msg, fields);
      } catch (err) {
        try {
          logger[level](msg, { unloggableFields: String(err) });
        } catch {
          // Nothing left that could report it.
        }
      }
    };
  return { debug: guard('debug'), info: guard('info'), warn: guard('warn'), error: guard('error') };
}

export const serveCommand: Command = {
  name: 'serve',
  summary: 'Run the HTTP API for gateways (/v1, /healthz, /metrics); bearer token from SPAWNGATE_API_TOKEN.',
  usage: 'SPAWNGATE_API_TOKEN=… spawngate serve [--config FILE] [--bundle FILE] [--port N [--host H] | --socket PATH]',
  options: {
    config: { type: 'string', short: 'c', value: 'FILE', description: 'The spawngate config (JSON or YAML).', default: 'the embedded default: process backend "local"' },
    bundle: { type: 'string', value: 'FILE', description: 'The policy bundle, reloaded when the file changes.', default: 'spawngate.bundle of --config, else the shipped bundle' },
    port: { type: 'string', short: 'p', value: 'N', description: 'TCP port; 0 picks a free one (the listening line names it).', default: String(DEFAULT_PORT) },
    host: { type: 'string', value: 'ADDRESS', description: 'TCP address to bind; 0.0.0.0 (or a pod IP) serves other hosts.', default: '127.0.0.1' },
    socket: { type: 'string', value: 'PATH', description: 'Serve on a unix socket instead of TCP (not with --port or --host); the token is then optional.' },
  },
  environment: [
    { name: 'SPAWNGATE_API_TOKEN', description: 'The bearer token every /v1 request must carry; required on TCP.' },
    { name: 'SPAWNGATE_LOG_LEVEL', description: 'debug, info (default), warn or error; JSON log lines go to stderr.' },
    { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', description: 'Export traces over OTLP (and the other standard OTEL_* variables).' },
  ],
  notes: [
    'stdout carries only {"event":"listening",…} once the API listens and {"event":"stopped",…} after SIGTERM/SIGINT, when every worker is closed; logs go to stderr. SIGHUP reopens the decision log.',
    'Exit status: 0 stopped by a signal, 1 failed, 2 usage error or invalid config.',
  ],
  examples: [
    { description: 'Serve other hosts on port 8080', command: 'SPAWNGATE_API_TOKEN="$(cat /run/secrets/spawngate-token)" spawngate serve -c /etc/spawngate/gw.yaml --host 0.0.0.0' },
    { description: 'Serve the gateway on the same host through a socket', command: 'spawngate serve -c gw.yaml --socket /run/spawngate/api.sock' },
  ],
  async run({ values, io }) {
    const writeErr = survivingWriter(io.stderr);
    const usage = (message: string): number => {
      writeErr(`spawngate serve: ${message}\n`);
      return EXIT.usage;
    };
    const socketPath = str(values, 'socket');
    const portText = str(values, 'port');
    const host = str(values, 'host');
    if (socketPath !== undefined && (portText !== undefined || host !== undefined)) return usage('--socket cannot be combined with --port or --host');
    const port = Number(portText ?? DEFAULT_PORT);
    if (!Number.isInteger(port) || port < 0 || port > 65535) return usage('--port must be an integer from 0 to 65535');
    const token = io.env['SPAWNGATE_API_TOKEN'] || undefined;
    if (token === undefined && socketPath === undefined) return usage('set SPAWNGATE_API_TOKEN: the API refuses TCP without a bearer token (only --socket may go without one)');
    const levelText = io.env['SPAWNGATE_LOG_LEVEL'] ?? 'info';
    if (!(LOG_LEVELS as readonly string[]).includes(levelText)) return usage(`SPAWNGATE_LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}`);
    const listen: ServerListen = socketPath !== undefined ? { socketPath } : { port, ...(host ? { host } : {}) };

    // Log lines go to stderr; stdout carries only the listening/stopped events a supervisor reads.
    const logger = neverThrowing(jsonLogger(levelText as LogLevel, writeErr));
    const writeOut = survivingWriter(io.stdout, (err) => logger.warn('stdout is gone; its events are dropped from now on', { error: err.message }));
    const config = str(values, 'config');
    const bundle = str(values, 'bundle');

    // SIGHUP is logrotate's "reopen your files", not the end: its default action would kill serve
    // and orphan its workers. Taken from the start, so a rotation during start-up is harmless too.
    let gate: Spawngate | undefined;
    const onHangup = (): void => {
      gate?.reopenDecisionLog();
      logger.info('reopened the decision log', { signal: 'SIGHUP' });
    };
    process.on('SIGHUP', onHangup);
    // Trace export from OTEL_*, flushed after the last close span of the shutdown.
    const telemetry = await startTelemetry({ service: 'spawngate', attributes: { 'spawngate.role': 'server' }, env: io.env });
    try {
      // A standalone server is the process: its process_*/nodejs_* series belong on its /metrics.
      gate = await createSpawngate({ ...(config ? { config } : {}), ...(bundle ? { bundle } : {}), logger, metrics: createMetrics(undefined, { processMetrics: true }), warmPools: true });
      let server;
      try {
        server = await createServer({ gate, listen, logger, ...(token === undefined ? {} : { token }) });
      } catch (err) {
        await gate.shutdown();
        throw err;
      }
      const signalled = waitForSignal();
      writeOut(`${JSON.stringify({ event: 'listening', ...server.address, pid: process.pid, owner: gate.owner, instanceId: gate.instanceId, bundleRevision: gate.policy.revision })}\n`);
      const signal = await signalled;
      logger.info('shutting down', { signal });
      // Turn streams end first (cancelled), then the gate closes every worker it still runs.
      await server.close();
      await gate.shutdown();
      writeOut(`${JSON.stringify({ event: 'stopped', signal })}\n`);
      return EXIT.ok;
    } finally {
      process.off('SIGHUP', onHangup);
      await telemetry?.shutdown();
    }
  },
};
