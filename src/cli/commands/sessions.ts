import { userInfo } from 'node:os';
import type { SpawnRequestInput } from '../../admission/request.js';
import { AdmissionDeniedError } from '../../errors.js';
import type { Spawngate } from '../../spawngate.js';
import { createSpawngate } from '../../spawngate.js';
import type { SpawnProgress } from '../../sessions/lifecycle.js';
import type { WorkerEvent } from '../../worker/events.js';
import type { Command, Io } from '../framework.js';
import { EXIT, str } from '../framework.js';
import { createProgress } from '../progress.js';

const common = {
  config: { type: 'string', short: 'c' },
  bundle: { type: 'string' },
  json: { type: 'boolean' },
} as const;

async function openGate(values: Record<string, unknown>): Promise<Spawngate> {
  const config = str(values, 'config');
  const bundle = str(values, 'bundle');
  // A CLI invocation is short-lived: no background sweeper, no bundle watch.
  return createSpawngate({ ...(config ? { config } : {}), ...(bundle ? { bundle } : {}), watchBundle: false, sweepIntervalMs: 0, owner: 'spawngate-cli' });
}

async function withGate<T>(values: Record<string, unknown>, fn: (gate: Spawngate) => Promise<T>, keepWorkers = true): Promise<T> {
  const gate = await openGate(values);
  try {
    return await fn(gate);
  } finally {
    await gate.shutdown({ keepWorkers });
  }
}

function writeEvent(io: Io, event: WorkerEvent, json: boolean): void {
  if (json) {
    io.stdout.write(`${JSON.stringify(event)}\n`);
    return;
  }
  switch (event.type) {
    case 'turn.started':
      break;
    case 'agent.message.delta':
      io.stdout.write(event.text);
      break;
    case 'agent.thought.delta':
      io.stderr.write(`(thinking) ${event.text}\n`);
      break;
    case 'tool.call':
      io.stdout.write(`\n[tool] ${event.title} (${event.kind}, ${event.status})\n`);
      break;
    case 'tool.result':
      io.stdout.write(`[tool ${event.status}] ${event.title ?? event.toolCallId}${event.content ? `: ${event.content}` : ''}\n`);
      break;
    case 'turn.completed':
      io.stdout.write(`\n— turn completed (${event.stopReason})\n`);
      break;
    case 'turn.failed':
      io.stdout.write(`\n— turn failed: ${event.error.code}: ${event.error.message}\n`);
      break;
    case 'turn.cancelled':
      io.stdout.write(`\n— turn cancelled (${event.reason})\n`);
      break;
  }
}

export const spawnCommand: Command = {
  name: 'spawn',
  summary: 'Admit, start a worker, stream one turn of TASK, then close it (unless --keep).',
  usage: 'spawngate spawn --agent ID [--backend B] [--profile P] [--config FILE] [--keep] [--json] TASK',
  options: {
    agent: { type: 'string', short: 'a' },
    backend: { type: 'string', short: 'b' },
    profile: { type: 'string', short: 'p' },
    keep: { type: 'boolean' },
    'channel-kind': { type: 'string' },
    user: { type: 'string' },
    ...common,
  },
  positionals: [1, 1],
  async run({ values, positionals, io }) {
    const agentId = str(values, 'agent');
    if (!agentId) {
      io.stderr.write('spawngate spawn: --agent ID is required (try --agent echo)\n');
      return EXIT.usage;
    }
    const json = values.json === true;
    const backend = str(values, 'backend');
    const profile = str(values, 'profile');
    const user = str(values, 'user') ?? userInfo().username;
    const kind = str(values, 'channel-kind') ?? 'cli';
    const request: SpawnRequestInput = {
      runtime: 'acp',
      agentId,
      task: positionals[0] ?? '',
      ...(backend || profile ? { execution: { ...(backend ? { backend } : {}), ...(profile ? { profile } : {}) } } : {}),
      caller: { sessionKey: `cli:${user}:${process.pid}`, depth: 0, channel: { id: `cli:${user}`, kind }, user: { id: user, roles: [] } },
    };
    const progress = createProgress(io, json);
    const gate = await openGate(values);
    let keep = values.keep === true;
    const controller = new AbortController();
    const onSignal = () => controller.abort();
    process.once('SIGINT', onSignal);
    try {
      let handle;
      try {
        handle = await gate.spawn(request, { signal: controller.signal, onProgress: (p: SpawnProgress) => progress.update(p) });
      } catch (err) {
        progress.fail(err);
        if (err instanceof AdmissionDeniedError) {
          if (json) io.stdout.write(`${JSON.stringify({ event: 'denied', reasons: err.reasons })}\n`);
          else for (const r of err.reasons) io.stderr.write(`  ${r.code}: ${r.message}\n`);
          return EXIT.denied;
        }
        throw err;
      }
      progress.done(handle);
      let last: WorkerEvent | null = null;
      const onCancel = () => void handle.cancel().catch(() => undefined);
      controller.signal.addEventListener('abort', onCancel, { once: true });
      for await (const event of handle.turn(positionals[0] ?? '')) {
        last = event;
        writeEvent(io, event, json);
      }
      if (keep) {
        if (json) io.stdout.write(`${JSON.stringify({ event: 'kept', spawnId: handle.spawnId, nativeId: handle.nativeId, expiresAt: handle.expiresAt.toISOString() })}\n`);
        else io.stderr.write(`worker ${handle.spawnId} kept (expires ${handle.expiresAt.toISOString()}); close it with: spawngate close ${handle.spawnId}\n`);
      }
      return last?.type === 'turn.completed' ? EXIT.ok : EXIT.failed;
    } catch (err) {
      keep = false;
      throw err;
    } finally {
      process.removeListener('SIGINT', onSignal);
      await gate.shutdown({ keepWorkers: keep });
    }
  },
};

export const lsCommand: Command = {
  name: 'ls',
  summary: 'List workers on every configured backend (this CLI\'s by default; --all for every owner).',
  usage: 'spawngate ls [--all] [--config FILE] [--json]',
  options: { all: { type: 'boolean' }, ...common },
  run: ({ values, io }) =>
    withGate(values, async (gate) => {
      const rows = await gate.list({ allOwners: values.all === true });
      if (values.json) {
        for (const r of rows) io.stdout.write(`${JSON.stringify(r)}\n`);
      } else if (rows.length === 0) {
        io.stdout.write('no workers\n');
      } else {
        io.stdout.write(`${['SPAWN ID', 'BACKEND', 'PROFILE', 'AGENT', 'NATIVE ID', 'PHASE', 'EXPIRES'].join('\t')}\n`);
        for (const r of rows) io.stdout.write(`${[r.spawnId, r.backend, r.profile ?? '-', r.agentId ?? '-', r.nativeId, r.phase, r.expiresAt ?? '-'].join('\t')}\n`);
      }
      return EXIT.ok;
    }),
};

export const statusCommand: Command = {
  name: 'status',
  summary: 'Show a worker\'s backend status (native id, phase, readiness, failure reason) and its /status.',
  usage: 'spawngate status ID [--config FILE] [--json]',
  options: common,
  positionals: [1, 1],
  run: ({ values, positionals, io }) =>
    withGate(values, async (gate) => {
      const s = await gate.status(positionals[0] ?? '');
      if (values.json) io.stdout.write(`${JSON.stringify(s)}\n`);
      else {
        const b = s.backendStatus;
        io.stdout.write(
          `${[
            `spawn:    ${s.spawnId}`,
            `backend:  ${s.backend}${s.profile ? `/${s.profile}` : ''} (${b.nativeId})`,
            `phase:    ${b.phase}${b.ready ? ' (ready)' : ''}`,
            `reason:   ${b.reason ?? '-'}${b.message ? ` — ${b.message}` : ''}`,
            `expires:  ${s.expiresAt ?? '-'}`,
          ].join('\n')}\n`,
        );
      }
      return EXIT.ok;
    }),
};

export const logsCommand: Command = {
  name: 'logs',
  summary: 'Print the last lines of a worker\'s log.',
  usage: 'spawngate logs ID [--tail N] [--config FILE] [--json]',
  options: { tail: { type: 'string', short: 'n' }, ...common },
  positionals: [1, 1],
  run: ({ values, positionals, io }) => {
    const tail = Number(str(values, 'tail') ?? '200');
    if (!Number.isInteger(tail) || tail < 1 || tail > 100_000) {
      io.stderr.write('spawngate logs: --tail must be an integer from 1 to 100000\n');
      return Promise.resolve(EXIT.usage);
    }
    return withGate(values, async (gate) => {
      const lines = await gate.logs(positionals[0] ?? '', tail);
      for (const line of lines) io.stdout.write(values.json ? `${JSON.stringify({ line })}\n` : `${line}\n`);
      return EXIT.ok;
    });
  },
};

export const closeCommand: Command = {
  name: 'close',
  summary: 'Delete a worker and everything created for it.',
  usage: 'spawngate close ID [--config FILE] [--json]',
  options: common,
  positionals: [1, 1],
  run: ({ values, positionals, io }) =>
    withGate(values, async (gate) => {
      const id = positionals[0] ?? '';
      await gate.close(id);
      io.stdout.write(values.json ? `${JSON.stringify({ event: 'closed', spawnId: id })}\n` : `closed ${id}\n`);
      return EXIT.ok;
    }),
};

export const sweepCommand: Command = {
  name: 'sweep',
  summary: 'Delete expired, exited and (with --orphans) all untracked workers of this owner.',
  usage: 'spawngate sweep [--dry-run] [--orphans] [--config FILE] [--json]',
  options: { 'dry-run': { type: 'boolean' }, orphans: { type: 'boolean' }, ...common },
  run: ({ values, io }) =>
    withGate(values, async (gate) => {
      const report = await gate.sweep({ dryRun: values['dry-run'] === true, orphans: values.orphans === true });
      if (values.json) io.stdout.write(`${JSON.stringify(report)}\n`);
      else {
        const verb = report.dryRun ? 'would remove' : 'removed';
        for (const e of report.removed) io.stdout.write(`${verb} ${e.spawnId} (${e.backend} ${e.nativeId}): ${e.reason}${e.error ? ` — failed: ${e.error}` : ''}\n`);
        for (const e of report.errors) io.stderr.write(`backend ${e.backend}: ${e.error}\n`);
        io.stdout.write(`${verb} ${report.removed.length}, kept ${report.kept}\n`);
      }
      return report.errors.length || report.removed.some((e) => e.error) ? EXIT.failed : EXIT.ok;
    }),
};
