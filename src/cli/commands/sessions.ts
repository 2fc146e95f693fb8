import { readFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import type { SpawnRequestInput } from '../../admission/request.js';
import { loadConfigFile, nameSchema } from '../../config/index.js';
import { AdmissionDeniedError, UsageError } from '../../errors.js';
import type { ServerClient } from '../../server/client.js';
import { createServerClient, parseServerAddress, ServerApiError } from '../../server/client.js';
import type { Spawngate } from '../../spawngate.js';
import { createSpawngate } from '../../spawngate.js';
import type { SpawnProgress } from '../../sessions/lifecycle.js';
import type { WorkerEvent } from '../../protocol/events.js';
import type { Command, Io } from '../framework.js';
import { EXIT, str } from '../framework.js';
import { createProgress } from '../progress.js';

type Values = Record<string, unknown>;
type ListedSpawn = Awaited<ReturnType<Spawngate['list']>>[number];
type SweepReport = Awaited<ReturnType<Spawngate['sweep']>>;
type SweepEntry = SweepReport['removed'][number];

/** The owner label of what the CLI spawns itself when neither --owner nor the config names one. */
export const CLI_OWNER = 'spawngate-cli';

const local = {
  config: { type: 'string', short: 'c' },
  bundle: { type: 'string' },
} as const;

const remote = {
  server: { type: 'string', short: 's' },
  'token-file': { type: 'string' },
} as const;

const common = { ...local, ...remote, json: { type: 'boolean' } } as const;

const ownerOptions = { owner: { type: 'string' }, all: { type: 'boolean' } } as const;

/**
 * Where a command runs: a private gate in this process (the backends of --config, as the owner the
 * flags resolve to), or a running `spawngate serve`, which owns and tracks its workers itself.
 */
type Target = { kind: 'local'; owner: string } | { kind: 'server'; client: ServerClient };

const TOKEN_HINT = 'set SPAWNGATE_API_TOKEN or pass --token-file FILE (never the token itself on the command line)';

async function readToken(values: Values, io: Io): Promise<string | undefined> {
  const file = str(values, 'token-file');
  if (file === undefined) {
    const token = io.env['SPAWNGATE_API_TOKEN'] || undefined;
    if (token !== undefined && !/^\S+$/.test(token)) throw new UsageError('SPAWNGATE_API_TOKEN must hold one token, without whitespace');
    return token;
  }
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    throw new UsageError(`--token-file: cannot read ${file}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`, { cause });
  }
  // Files written by `echo` or an editor end with a newline that is not part of the token.
  const token = text.trim();
  if (token === '') throw new UsageError(`--token-file: ${file} is empty`);
  if (/\s/.test(token)) throw new UsageError(`--token-file: ${file} must hold one token, without whitespace inside it`);
  return token;
}

/**
 * Owner precedence for the in-process gate: --owner, else `spawngate.owner` of --config (so the CLI
 * sees what a server with that config owns), else CLI_OWNER. Not the library's host-name default:
 * the CLI's own workers must never look like a gateway's of the same host.
 */
async function resolveOwner(values: Values): Promise<string> {
  const flag = str(values, 'owner');
  if (flag !== undefined) return flag;
  const config = str(values, 'config');
  if (config !== undefined) {
    const loaded = await loadConfigFile(config);
    if (loaded.spawngate?.owner) return loaded.spawngate.owner;
  }
  return CLI_OWNER;
}

/** Checks the flags that pick the target: every fault is a UsageError (exit 2) naming its flag, found before anything starts. */
async function resolveTarget(values: Values, io: Io): Promise<Target> {
  const server = str(values, 'server');
  const owner = str(values, 'owner');
  if (owner !== undefined && values['all'] === true) throw new UsageError('--owner and --all cannot be combined: --all already means every owner');
  if (server !== undefined) {
    for (const flag of ['config', 'bundle', 'owner'] as const) {
      // The server's own config, bundle and owner decide; a flag that would be silently ignored is refused instead.
      if (str(values, flag) !== undefined) throw new UsageError(`--server cannot be combined with --${flag}: the server's own ${flag === 'owner' ? 'owner (spawngate.owner in its config)' : flag} decides`);
    }
    let address;
    try {
      address = parseServerAddress(server);
    } catch (err) {
      throw new UsageError(`--server: ${(err as Error).message}`, { cause: err });
    }
    const token = await readToken(values, io);
    // spawngate serve refuses TCP without a token, so asking without one can only end in a 401.
    if (token === undefined && address.kind === 'tcp') throw new UsageError(`--server ${server} is TCP, where spawngate serve always requires the API token: ${TOKEN_HINT}`);
    return { kind: 'server', client: createServerClient({ server: address, ...(token === undefined ? {} : { token }) }) };
  }
  if (str(values, 'token-file') !== undefined) throw new UsageError('--token-file only applies with --server URL');
  // Other owners' workers are found on the backends other gateways use, which only a config names.
  if (values['all'] === true && str(values, 'config') === undefined) throw new UsageError('--all needs --config FILE (the backends the other owners use) or --server URL');
  if (owner !== undefined && !nameSchema.safeParse(owner).success) {
    throw new UsageError(`--owner ${JSON.stringify(owner)}: must be 1-63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit`);
  }
  return { kind: 'local', owner: await resolveOwner(values) };
}

async function openGate(values: Values, owner: string): Promise<Spawngate> {
  const config = str(values, 'config');
  const bundle = str(values, 'bundle');
  // A CLI invocation is short-lived: no background sweeper, no bundle watch.
  return createSpawngate({ ...(config ? { config } : {}), ...(bundle ? { bundle } : {}), watchBundle: false, sweepIntervalMs: 0, owner });
}

async function withGate<T>(values: Values, owner: string, fn: (gate: Spawngate) => Promise<T>, keepWorkers = true): Promise<T> {
  const gate = await openGate(values, owner);
  try {
    return await fn(gate);
  } finally {
    await gate.shutdown({ keepWorkers });
  }
}

/**
 * What the server says goes through the usual exit codes, with two corrections: a 5xx is the
 * server's own trouble (its CONFIG_INVALID is not this command line's fault, so exit 1, not 2), and
 * a rejected token gets told where the CLI took it from.
 */
async function viaServer(name: string, io: Io, fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ServerApiError && err.status >= 500) {
      io.stderr.write(`spawngate ${name}: ${err.message}\n`);
      return EXIT.failed;
    }
    if (err instanceof ServerApiError && err.details['serverCode'] === 'UNAUTHORIZED') {
      io.stderr.write(`spawngate ${name}: ${err.message}; ${TOKEN_HINT}\n`);
      return EXIT.usage;
    }
    throw err;
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

function writeDenied(io: Io, err: AdmissionDeniedError, json: boolean): number {
  if (json) io.stdout.write(`${JSON.stringify({ event: 'denied', reasons: err.reasons })}\n`);
  else for (const r of err.reasons) io.stderr.write(`  ${r.code}: ${r.message}\n`);
  return EXIT.denied;
}

/** Streams one turn from the server; the first Ctrl-C asks the server to cancel it, so the stream still ends properly. */
async function streamRemoteTurn(client: ServerClient, spawnId: string, message: string, io: Io, json: boolean): Promise<WorkerEvent | null> {
  const onSignal = () => void client.cancel(spawnId).catch((err: unknown) => io.stderr.write(`cancelling the turn failed: ${(err as Error).message}\n`));
  process.once('SIGINT', onSignal);
  try {
    let last: WorkerEvent | null = null;
    for await (const event of client.turn(spawnId, message)) {
      last = event;
      writeEvent(io, event, json);
    }
    return last;
  } finally {
    process.removeListener('SIGINT', onSignal);
  }
}

async function spawnRemote(client: ServerClient, request: SpawnRequestInput, task: string, keepWanted: boolean, io: Io, json: boolean): Promise<number> {
  if (!json) io.stderr.write(`spawning through spawngate serve at ${client.label}; waiting until the worker is ready\n`);
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  let spawned;
  try {
    // Dropping the request is how the server learns to remove what it was starting.
    spawned = await client.spawn(request, { signal: controller.signal });
  } catch (err) {
    if (err instanceof AdmissionDeniedError) {
      if (!json) io.stderr.write(`✖ ${err.message}\n`);
      return writeDenied(io, err, json);
    }
    if (controller.signal.aborted) {
      io.stderr.write('spawngate spawn: interrupted; the server removes the worker it was starting\n');
      return EXIT.failed;
    }
    throw err;
  } finally {
    process.removeListener('SIGINT', onSignal);
  }
  const { spawnId } = spawned;
  if (json) io.stdout.write(`${JSON.stringify({ event: 'spawned', spawnId, backend: spawned.backend, profile: spawned.profile, nativeId: spawned.nativeId, server: client.label })}\n`);
  else io.stderr.write(`✔ ${spawned.backend}/${spawned.profile} worker ${spawned.nativeId} ready (spawn ${spawnId})\n`);
  let keep = keepWanted;
  try {
    const last = await streamRemoteTurn(client, spawnId, task, io, json);
    if (keep) {
      if (json) io.stdout.write(`${JSON.stringify({ event: 'kept', spawnId, nativeId: spawned.nativeId, expiresAt: spawned.expiresAt, server: client.label })}\n`);
      else io.stderr.write(`worker ${spawnId} kept on ${client.label} (expires ${spawned.expiresAt}); next turn: spawngate turn --server ${client.label} ${spawnId} TASK; close: spawngate close --server ${client.label} ${spawnId}\n`);
    }
    return last?.type === 'turn.completed' ? EXIT.ok : EXIT.failed;
  } catch (err) {
    keep = false;
    throw err;
  } finally {
    if (!keep) {
      await client.close(spawnId).catch((err: unknown) => io.stderr.write(`spawngate spawn: closing ${spawnId} failed (${(err as Error).message}); its TTL still bounds it\n`));
    }
  }
}

export const spawnCommand: Command = {
  name: 'spawn',
  summary: 'Admit, start a worker, stream one turn of TASK, then close it (unless --keep); in process or through --server.',
  usage: 'spawngate spawn --agent ID [--backend B] [--profile P] [--config FILE [--owner NAME] | --server URL [--token-file FILE]] [--keep] [--json] TASK',
  options: {
    agent: { type: 'string', short: 'a' },
    backend: { type: 'string', short: 'b' },
    profile: { type: 'string', short: 'p' },
    keep: { type: 'boolean' },
    'channel-kind': { type: 'string' },
    user: { type: 'string' },
    owner: { type: 'string' },
    ...common,
  },
  positionals: [1, 1],
  async run({ values, positionals, io }) {
    const agentId = str(values, 'agent');
    if (!agentId) {
      io.stderr.write('spawngate spawn: --agent ID is required (try --agent echo)\n');
      return EXIT.usage;
    }
    const target = await resolveTarget(values, io);
    const json = values.json === true;
    const backend = str(values, 'backend');
    const profile = str(values, 'profile');
    const user = str(values, 'user') ?? userInfo().username;
    const kind = str(values, 'channel-kind') ?? 'cli';
    const task = positionals[0] ?? '';
    const request: SpawnRequestInput = {
      runtime: 'acp',
      agentId,
      task,
      ...(backend || profile ? { execution: { ...(backend ? { backend } : {}), ...(profile ? { profile } : {}) } } : {}),
      caller: { sessionKey: `cli:${user}:${process.pid}`, depth: 0, channel: { id: `cli:${user}`, kind }, user: { id: user, roles: [] } },
    };
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('spawn', io, () => spawnRemote(client, request, task, values.keep === true, io, json));
    }
    const progress = createProgress(io, json);
    const gate = await openGate(values, target.owner);
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
        if (err instanceof AdmissionDeniedError) return writeDenied(io, err, json);
        throw err;
      }
      progress.done(handle);
      let last: WorkerEvent | null = null;
      const onCancel = () => void handle.cancel().catch(() => undefined);
      controller.signal.addEventListener('abort', onCancel, { once: true });
      for await (const event of handle.turn(task)) {
        last = event;
        writeEvent(io, event, json);
      }
      if (keep) {
        if (json) io.stdout.write(`${JSON.stringify({ event: 'kept', spawnId: handle.spawnId, nativeId: handle.nativeId, expiresAt: handle.expiresAt.toISOString(), owner: gate.owner })}\n`);
        else io.stderr.write(`worker ${handle.spawnId} kept (owner ${gate.owner}, expires ${handle.expiresAt.toISOString()}); close it with: spawngate close ${handle.spawnId}\n`);
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

export const turnCommand: Command = {
  name: 'turn',
  summary: 'Stream one more turn of TASK to a worker kept on a running spawngate serve (--server).',
  usage: 'spawngate turn ID TASK --server URL [--token-file FILE] [--json]',
  options: { ...remote, json: { type: 'boolean' } },
  positionals: [2, 2],
  async run({ values, positionals, io }) {
    if (str(values, 'server') === undefined) {
      // The worker's bearer token lives only in the gateway that spawned it; no other process can take a turn.
      throw new UsageError('--server URL is required: only the spawngate serve that started a worker holds the token its turns need');
    }
    const target = await resolveTarget(values, io);
    if (target.kind !== 'server') throw new UsageError('--server URL is required');
    const [spawnId = '', task = ''] = positionals;
    return viaServer('turn', io, async () => {
      const last = await streamRemoteTurn(target.client, spawnId, task, io, values.json === true);
      return last?.type === 'turn.completed' ? EXIT.ok : EXIT.failed;
    });
  },
};

function writeList(io: Io, rows: readonly ListedSpawn[], json: boolean, scope: string | null): void {
  if (json) {
    for (const r of rows) io.stdout.write(`${JSON.stringify(r)}\n`);
  } else if (rows.length === 0) {
    io.stdout.write(scope ? `no workers of owner ${scope} (--all for every owner)\n` : 'no workers\n');
  } else {
    io.stdout.write(`${['SPAWN ID', 'BACKEND', 'PROFILE', 'AGENT', 'OWNER', 'NATIVE ID', 'PHASE', 'EXPIRES'].join('\t')}\n`);
    for (const r of rows) io.stdout.write(`${[r.spawnId, r.backend, r.profile ?? '-', r.agentId ?? '-', r.owner ?? '-', r.nativeId, r.phase, r.expiresAt ?? '-'].join('\t')}\n`);
  }
}

export const lsCommand: Command = {
  name: 'ls',
  summary: 'List workers on every configured backend: one owner\'s (--owner, else the config\'s, else the CLI\'s) or --all.',
  usage: 'spawngate ls [--config FILE] [--owner NAME | --all] [--server URL [--token-file FILE]] [--json]',
  options: { ...ownerOptions, ...common },
  async run({ values, io }) {
    const target = await resolveTarget(values, io);
    const all = values.all === true;
    const json = values.json === true;
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('ls', io, async () => {
        writeList(io, await client.list({ all }), json, null);
        return EXIT.ok;
      });
    }
    return withGate(values, target.owner, async (gate) => {
      writeList(io, await gate.list({ allOwners: all }), json, all ? null : gate.owner);
      return EXIT.ok;
    });
  },
};

export const statusCommand: Command = {
  name: 'status',
  summary: 'Show a worker\'s backend status (native id, phase, readiness, failure reason) and its /status.',
  usage: 'spawngate status ID [--config FILE | --server URL [--token-file FILE]] [--json]',
  options: common,
  positionals: [1, 1],
  async run({ values, positionals, io }) {
    const target = await resolveTarget(values, io);
    const id = positionals[0] ?? '';
    const show = (s: Awaited<ReturnType<Spawngate['status']>>): number => {
      if (values.json) {
        io.stdout.write(`${JSON.stringify(s)}\n`);
        return EXIT.ok;
      }
      const b = s.backendStatus;
      io.stdout.write(
        `${[
          `spawn:    ${s.spawnId}`,
          `tracking: ${s.tracking}${s.closeReason ? ` (${s.closeReason})` : ''}`,
          `backend:  ${s.backend}${s.profile ? `/${s.profile}` : ''} (${b.nativeId})`,
          `phase:    ${b.phase}${b.ready ? ' (ready)' : ''}`,
          `reason:   ${b.reason ?? '-'}${b.message ? ` — ${b.message}` : ''}`,
          `expires:  ${s.expiresAt ?? '-'}`,
        ].join('\n')}\n`,
      );
      return EXIT.ok;
    };
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('status', io, async () => show(await client.status(id)));
    }
    return withGate(values, target.owner, async (gate) => show(await gate.status(id)));
  },
};

export const logsCommand: Command = {
  name: 'logs',
  summary: 'Print the last lines of a worker\'s log.',
  usage: 'spawngate logs ID [--tail N] [--config FILE | --server URL [--token-file FILE]] [--json]',
  options: { tail: { type: 'string', short: 'n' }, ...common },
  positionals: [1, 1],
  async run({ values, positionals, io }) {
    const tail = Number(str(values, 'tail') ?? '200');
    if (!Number.isInteger(tail) || tail < 1 || tail > 100_000) {
      io.stderr.write('spawngate logs: --tail must be an integer from 1 to 100000\n');
      return EXIT.usage;
    }
    const target = await resolveTarget(values, io);
    const id = positionals[0] ?? '';
    const print = (lines: readonly string[]): number => {
      for (const line of lines) io.stdout.write(values.json ? `${JSON.stringify({ line })}\n` : `${line}\n`);
      return EXIT.ok;
    };
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('logs', io, async () => print(await client.logs(id, tail)));
    }
    return withGate(values, target.owner, async (gate) => print(await gate.logs(id, tail)));
  },
};

export const closeCommand: Command = {
  name: 'close',
  summary: 'Delete a worker and everything created for it (through --server: also releases its slots there at once).',
  usage: 'spawngate close ID [--config FILE | --server URL [--token-file FILE]] [--json]',
  options: common,
  positionals: [1, 1],
  async run({ values, positionals, io }) {
    const target = await resolveTarget(values, io);
    const id = positionals[0] ?? '';
    const done = (): number => {
      io.stdout.write(values.json ? `${JSON.stringify({ event: 'closed', spawnId: id })}\n` : `closed ${id}\n`);
      return EXIT.ok;
    };
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('close', io, async () => {
        await client.close(id);
        return done();
      });
    }
    return withGate(values, target.owner, async (gate) => {
      await gate.close(id);
      return done();
    });
  },
};

interface OwnedSweep {
  dryRun: boolean;
  owners: string[];
  removed: (SweepEntry & { owner: string })[];
  kept: number;
  errors: SweepReport['errors'];
}

/**
 * Sweeps every owner found on the backends. The library sweeps one owner per gate (its own label),
 * so this opens one short-lived gate per owner; each judges that owner's workers exactly as the
 * owner's own sweeper would.
 */
async function sweepAllOwners(values: Values, owner: string, options: { dryRun: boolean; orphans: boolean }): Promise<OwnedSweep> {
  const owners = await withGate(values, owner, async (gate) => {
    const rows = await gate.list({ allOwners: true });
    return [...new Set(rows.map((r) => r.owner).filter((o): o is string => o !== null))].sort();
  });
  const out: OwnedSweep = { dryRun: options.dryRun, owners, removed: [], kept: 0, errors: [] };
  for (const o of owners) {
    const report = await withGate(values, o, (gate) => gate.sweep(options));
    out.removed.push(...report.removed.map((e) => ({ ...e, owner: o })));
    out.kept += report.kept;
    out.errors.push(...report.errors);
  }
  return out;
}

/** A report as the library or the server gives it, or merged over owners (each entry then names its owner). */
interface SweepOutput {
  dryRun: boolean;
  removed: readonly (SweepEntry & { owner?: string })[];
  kept: number;
  errors: SweepReport['errors'];
  owner?: string;
}

function writeSweep(io: Io, report: SweepOutput, json: boolean, scope: string): number {
  if (json) io.stdout.write(`${JSON.stringify(report)}\n`);
  else {
    const verb = report.dryRun ? 'would remove' : 'removed';
    for (const e of report.removed) {
      io.stdout.write(`${verb} ${e.spawnId} (${e.backend} ${e.nativeId}${e.owner ? `, owner ${e.owner}` : ''}): ${e.reason}${e.error ? ` — failed: ${e.error}` : ''}\n`);
    }
    for (const e of report.errors) io.stderr.write(`backend ${e.backend}: ${e.error}\n`);
    io.stdout.write(`${verb} ${report.removed.length}, kept ${report.kept} (${scope})\n`);
  }
  return report.errors.length || report.removed.some((e) => e.error) ? EXIT.failed : EXIT.ok;
}

export const sweepCommand: Command = {
  name: 'sweep',
  summary: 'Delete one owner\'s expired, exited and (with --orphans) untracked workers; --all --dry-run previews every owner.',
  usage: 'spawngate sweep [--dry-run] [--orphans] [--config FILE] [--owner NAME | --all] [--server URL [--token-file FILE]] [--json]',
  options: { 'dry-run': { type: 'boolean' }, orphans: { type: 'boolean' }, ...ownerOptions, ...common },
  async run({ values, io }) {
    const dryRun = values['dry-run'] === true;
    const orphans = values.orphans === true;
    const all = values.all === true;
    const json = values.json === true;
    if (all && str(values, 'server') !== undefined) {
      throw new UsageError('--all cannot be combined with --server: a server sweeps only its own owner\'s workers (use --all --config FILE on the backends instead)');
    }
    // Deleting other owners' workers must never be a side effect. To this process every worker
    // another gateway runs is untracked (only leases in a shared store show it alive), so a
    // destructive --all is only run when the user also says --orphans, the flag for exactly that.
    if (all && !dryRun && !orphans) {
      throw new UsageError('--all without --dry-run deletes other owners\' workers: preview with --all --dry-run [--orphans], or confirm with --all --orphans (expired, exited and untracked workers of every owner)');
    }
    const target = await resolveTarget(values, io);
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('sweep', io, async () => writeSweep(io, await client.sweep({ dryRun, orphans }), json, `owner of ${client.label}`));
    }
    if (orphans && (all || target.owner !== CLI_OWNER)) {
      // The one way this command can hurt a healthy gateway: say so before it happens, not in the docs only.
      io.stderr.write(
        `note: in process every worker of ${all ? 'another owner' : `owner ${target.owner}`} counts as untracked unless a lease in a shared store shows it alive; if such a gateway is running, sweep through it with --server\n`,
      );
    }
    if (all) return writeSweep(io, await sweepAllOwners(values, target.owner, { dryRun, orphans }), json, 'every owner');
    return withGate(values, target.owner, async (gate) => writeSweep(io, { ...(await gate.sweep({ dryRun, orphans })), owner: gate.owner }, json, `owner ${gate.owner}`));
  },
};

export const collectCommand: Command = {
  name: 'collect',
  summary: 'Take a worker\'s results before it goes: the diff of its git workspace, or the workspace as a .tar.gz (from spawngate serve).',
  usage: 'spawngate collect ID --server URL [--token-file FILE] [--archive FILE|- [--git]]',
  options: { ...remote, archive: { type: 'string', short: 'a' }, git: { type: 'boolean' } },
  positionals: [1, 1],
  async run({ values, positionals, io }) {
    // Only the gateway that runs a worker holds its token, so only a running serve can read its workspace.
    if (str(values, 'server') === undefined) throw new UsageError('collect needs --server URL: only the spawngate serve that runs a worker can read its workspace');
    if (values['git'] === true && str(values, 'archive') === undefined) throw new UsageError('--git only applies with --archive (it keeps .git in the archive)');
    const target = await resolveTarget(values, io);
    if (target.kind !== 'server') throw new UsageError('collect needs --server URL');
    const { client } = target;
    const id = positionals[0] ?? '';
    const archiveTo = str(values, 'archive');
    return viaServer('collect', io, async () => {
      if (archiveTo === undefined) {
        const { diff } = await client.workspaceDiff(id);
        io.stdout.write(diff);
        return EXIT.ok;
      }
      const stream = await client.workspaceArchive(id, { git: values['git'] === true });
      const { createWriteStream } = await import('node:fs');
      const { pipeline } = await import('node:stream/promises');
      // Written beside, then renamed: a cut stream never leaves a truncated archive under the name asked for.
      if (archiveTo === '-') await pipeline(stream, io.stdout, { end: false });
      else {
        const partial = `${archiveTo}.partial`;
        await pipeline(stream, createWriteStream(partial, { mode: 0o600 }));
        const { rename } = await import('node:fs/promises');
        await rename(partial, archiveTo);
        io.stderr.write(`wrote ${archiveTo}\n`);
      }
      return EXIT.ok;
    });
  },
};
