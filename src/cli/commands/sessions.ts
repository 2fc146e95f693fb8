import { readBoundedFile } from '../../files.js';
import { userInfo } from 'node:os';
import { MAX_WAIT_SECONDS, type SpawnRequestInput } from '../../admission/request.js';
import { loadConfigFile, nameSchema } from '../../config/index.js';
import { AdmissionDeniedError, isSpawngateError, UsageError } from '../../errors.js';
import type { ServerClient } from '../../server/client.js';
import { createServerClient, parseServerAddress, ServerApiError } from '../../server/client.js';
import type { Spawngate } from '../../spawngate.js';
import { createSpawngate } from '../../spawngate.js';
import type { SpawnProgress } from '../../sessions/lifecycle.js';
import { delay } from '../../sessions/readiness.js';
import type { WorkerEvent } from '../../protocol/events.js';
import type { Command, Io, Options } from '../framework.js';
import { EXIT, str } from '../framework.js';
import type { OutputFormat } from '../output.js';
import { documentText, formatTable, humanDuration, jsonLinesOption, logLineAsJson, outputFormat, outputOption, writeRecord } from '../output.js';
import { createProgress } from '../progress.js';

type Values = Record<string, unknown>;
type ListedSpawn = Awaited<ReturnType<Spawngate['list']>>[number];
type SweepReport = Awaited<ReturnType<Spawngate['sweep']>>;
type SweepEntry = SweepReport['removed'][number];

/** The owner label of what the CLI spawns itself when neither --owner nor the config names one. */
export const CLI_OWNER = 'spawngate-cli';

const local = {
  config: {
    type: 'string',
    short: 'c',
    value: 'FILE',
    description: 'Config (JSON or YAML) whose backends, profiles and owner this command uses, in this process.',
    default: 'the embedded default: process backend "local" and the shipped policy bundle',
  },
  bundle: { type: 'string', value: 'FILE', description: 'Policy bundle (.tar.gz) to use instead of the config\'s.', default: 'spawngate.bundle of --config, else the shipped bundle' },
} satisfies Options;

const remote = {
  server: {
    type: 'string',
    short: 's',
    value: 'URL',
    description: 'Go through a running spawngate serve instead of a private gate in this process: http://host:port[/prefix], https://… or unix:/path/to/socket. Not combinable with --config, --bundle or --owner (the server\'s own decide).',
  },
  'token-file': { type: 'string', value: 'FILE', description: 'Read the API token for --server from FILE; no flag takes the token itself (command lines are visible to every user).', default: '$SPAWNGATE_API_TOKEN' },
} satisfies Options;

const common = { ...local, ...remote } satisfies Options;

const ownerOptions = {
  owner: { type: 'string', value: 'NAME', description: 'Act as this owner label, in process: see, sweep or label the workers of NAME.', default: `spawngate.owner of --config, else ${CLI_OWNER}` },
  all: { type: 'boolean', description: 'Every owner\'s workers. Needs --config (the backends other gateways use) or --server.' },
} satisfies Options;

const TOKEN_ENV = [{ name: 'SPAWNGATE_API_TOKEN', description: 'The API token for --server (needed over http(s); optional on a socket served without one).' }];

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
    // Bounded and non-blocking: a FIFO or device given by mistake is refused, not waited on.
    text = (await readBoundedFile(file, 64 * 1024)).toString('utf8');
  } catch (cause) {
    throw new UsageError(`--token-file: cannot read ${file}: ${(cause as Error).message}`, { cause });
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
  const progress = createProgress(io, { json });
  progress.update({ stage: 'requested', server: client.label });
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  let spawned;
  try {
    // Dropping the request is how the server learns to remove what it was starting.
    spawned = await client.spawn(request, { signal: controller.signal });
  } catch (err) {
    progress.fail(err instanceof AdmissionDeniedError ? err : undefined);
    if (err instanceof AdmissionDeniedError) return writeDenied(io, err, json);
    if (controller.signal.aborted) {
      io.stderr.write('spawngate spawn: interrupted; the server removes the worker it was starting\n');
      return EXIT.failed;
    }
    throw err;
  } finally {
    process.removeListener('SIGINT', onSignal);
  }
  const { spawnId } = spawned;
  progress.done(spawned, { server: client.label });
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
    agent: { type: 'string', short: 'a', value: 'ID', description: 'The agent to run (required): agents.acp.<ID> of the config, or a built-in such as echo.' },
    backend: { type: 'string', short: 'b', value: 'NAME', description: 'Ask for this backend (agents.executionBackends.<NAME>); the policy decides.', default: 'the policy\'s choice' },
    profile: { type: 'string', short: 'p', value: 'NAME', description: 'Ask for this profile of the backend; the policy decides.', default: 'the policy\'s choice' },
    keep: { type: 'boolean', description: 'Leave the worker running after the turn, for turn/status/logs/close; its TTL still bounds it.', default: 'close it after the turn' },
    'channel-kind': { type: 'string', value: 'KIND', description: 'The caller.channel.kind the policy sees.', default: 'cli' },
    user: { type: 'string', value: 'ID', description: 'The caller.user.id the policy sees.', default: 'the login name' },
    wait: { type: 'string', value: 'SECONDS', description: 'When a concurrency cap is full, wait up to this long for a slot (the policy may allow less); progress shows the place in the queue.', default: '0: denied at once' },
    owner: { ...ownerOptions.owner, description: 'Label the worker with this owner, in process (what ls, sweep and that owner\'s gateway see).' },
    ...common,
    json: jsonLinesOption('Machine-readable streams: worker events and the spawned/kept/denied records as JSON lines on stdout; progress as JSON lines on stderr.'),
  },
  positionals: [1, 1],
  environment: TOKEN_ENV,
  notes: [
    'Streams: stdout carries what the worker says (with --json: one worker event per line, {"event":"spawned"} when the worker is ready, {"event":"kept"} last with --keep, or {"event":"denied"}). stderr carries progress: one line per stage with the time since the spawn began, including the backend\'s own state while the worker starts (a Pod pending, a container starting), and with --json the same as {"event":"progress","stage":…,"elapsedMs":…} lines.',
    'Exit status: 0 the turn completed, 1 it failed or was cancelled (Ctrl-C cancels it), 2 usage error, 3 denied by the policy.',
  ],
  examples: [
    { description: 'One turn with the built-in echo agent on the embedded default (process backend)', command: 'spawngate spawn --agent echo "hello"' },
    { description: 'Keep a codex worker on the k8s backend of a config, with events as JSON lines', command: 'spawngate spawn -c spawngate.yaml -a codex -b k8s --keep --json "fix the failing test" > events.jsonl' },
    { description: 'Spawn through a running server (token from the environment)', command: 'SPAWNGATE_API_TOKEN=… spawngate spawn --server unix:/run/spawngate/api.sock -a codex --keep "run the tests"' },
  ],
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
    const waitSeconds = Number(str(values, 'wait') ?? '0');
    if (!Number.isInteger(waitSeconds) || waitSeconds < 0 || waitSeconds > MAX_WAIT_SECONDS) {
      io.stderr.write(`spawngate spawn: --wait ${JSON.stringify(str(values, 'wait'))}: must be a whole number of seconds from 0 to ${MAX_WAIT_SECONDS}\n`);
      return EXIT.usage;
    }
    const task = positionals[0] ?? '';
    const request: SpawnRequestInput = {
      runtime: 'acp',
      agentId,
      task,
      ...(backend || profile ? { execution: { ...(backend ? { backend } : {}), ...(profile ? { profile } : {}) } } : {}),
      caller: { sessionKey: `cli:${user}:${process.pid}`, depth: 0, channel: { id: `cli:${user}`, kind }, user: { id: user, roles: [] } },
      ...(waitSeconds > 0 ? { waitSeconds } : {}),
    };
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('spawn', io, () => spawnRemote(client, request, task, values.keep === true, io, json));
    }
    const progress = createProgress(io, { json });
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
        progress.fail(err instanceof AdmissionDeniedError ? err : undefined);
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
  options: {
    server: { ...remote.server, description: 'The spawngate serve that runs the worker (required: only it holds the worker\'s token): http://host:port[/prefix], https://… or unix:/path/to/socket.' },
    'token-file': remote['token-file'],
    json: jsonLinesOption('Worker events as JSON lines on stdout, one per line.'),
  },
  positionals: [2, 2],
  environment: TOKEN_ENV,
  notes: ['Exit status: 0 the turn completed, 1 it failed or was cancelled (the first Ctrl-C asks the server to cancel it), 2 usage error.'],
  examples: [{ description: 'A second turn for a worker kept with spawn --keep', command: 'spawngate turn --server unix:/run/spawngate/api.sock 3f2c9a… "now run the whole suite"' }],
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

/** "in 59m" or "3m ago": when a worker's TTL ends, as a person reads it. */
function expiresIn(expiresAt: string | null, now: number): string {
  if (expiresAt === null) return '-';
  const left = Date.parse(expiresAt) - now;
  if (Number.isNaN(left)) return expiresAt;
  return left >= 0 ? `in ${humanDuration(left)}` : `${humanDuration(-left)} ago`;
}

function writeList(io: Io, rows: readonly ListedSpawn[], format: OutputFormat, scope: string | null): void {
  if (format === 'jsonl') {
    for (const r of rows) io.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  if (format === 'json' || format === 'yaml') {
    io.stdout.write(documentText(format, rows));
    return;
  }
  if (format === 'name') {
    for (const r of rows) io.stdout.write(`${r.spawnId}\n`);
    return;
  }
  if (rows.length === 0) {
    // On stderr, as kubectl says "No resources found": stdout stays empty for whoever counts its lines.
    io.stderr.write(scope ? `no workers of owner ${scope} (--all for every owner)\n` : 'no workers\n');
    return;
  }
  const now = Date.now();
  if (format === 'wide') {
    io.stdout.write(
      formatTable(
        ['SPAWN ID', 'BACKEND', 'PROFILE', 'AGENT', 'OWNER', 'PHASE', 'EXPIRES', 'NATIVE ID', 'TRACKED', 'EXPIRES AT'],
        rows.map((r) => [r.spawnId, r.backend, r.profile ?? '-', r.agentId ?? '-', r.owner ?? '-', r.phase, expiresIn(r.expiresAt, now), r.nativeId, r.tracked ? 'yes' : 'no', r.expiresAt ?? '-']),
      ),
    );
    return;
  }
  io.stdout.write(
    formatTable(
      ['SPAWN ID', 'BACKEND', 'PROFILE', 'AGENT', 'OWNER', 'PHASE', 'EXPIRES'],
      rows.map((r) => [r.spawnId, r.backend, r.profile ?? '-', r.agentId ?? '-', r.owner ?? '-', r.phase, expiresIn(r.expiresAt, now)]),
    ),
  );
}

export const lsCommand: Command = {
  name: 'ls',
  summary: 'List workers on every configured backend: one owner\'s (--owner, else the config\'s, else the CLI\'s) or --all.',
  usage: 'spawngate ls [--config FILE] [--owner NAME | --all] [--server URL [--token-file FILE]] [-o json|yaml|wide|name | --json]',
  options: {
    ...ownerOptions,
    ...common,
    output: outputOption(['json', 'yaml', 'wide', 'name']),
    json: jsonLinesOption('One compact JSON object per worker, one per line (JSON lines); -o json prints one JSON array instead.'),
  },
  environment: TOKEN_ENV,
  examples: [
    { description: 'The CLI\'s own workers on the embedded default backend', command: 'spawngate ls' },
    { description: 'Every owner\'s workers on the backends of a config, with native ids and expiry times', command: 'spawngate ls --all -c /etc/spawngate/gw.yaml -o wide' },
    { description: 'What a running server tracks, as one JSON array', command: 'spawngate ls --server http://127.0.0.1:8080 -o json | jq \'.[] | select(.phase != "running")\'' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const target = await resolveTarget(values, io);
    const all = values.all === true;
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('ls', io, async () => {
        writeList(io, await client.list({ all }), format, null);
        return EXIT.ok;
      });
    }
    return withGate(values, target.owner, async (gate) => {
      writeList(io, await gate.list({ allOwners: all }), format, all ? null : gate.owner);
      return EXIT.ok;
    });
  },
};

type StatusOf = Awaited<ReturnType<Spawngate['status']>>;

function statusText(s: StatusOf, wide: boolean): string {
  const b = s.backendStatus;
  const lines = [
    `spawn:    ${s.spawnId}`,
    `tracking: ${s.tracking}${s.closeReason ? ` (${s.closeReason})` : ''}`,
    `backend:  ${s.backend}${s.profile ? `/${s.profile}` : ''} (${b.nativeId})`,
    `phase:    ${b.phase}${b.ready ? ' (ready)' : ''}`,
    `reason:   ${b.reason ?? '-'}${b.message ? ` — ${b.message}` : ''}`,
    `expires:  ${s.expiresAt ?? '-'}${s.expiresAt ? ` (${expiresIn(s.expiresAt, Date.now())})` : ''}`,
  ];
  if (wide) {
    lines.push(`agent:    ${s.agentId ?? '-'}`, `exit:     ${b.exitCode ?? '-'}`);
    for (const [k, v] of Object.entries(b.attributes)) lines.push(`  ${k}: ${v}`);
    const w = s.worker;
    if (w) {
      lines.push(
        `worker:   ${w.state}, ${w.turns} turn(s) (${w.outcomes.completed} completed, ${w.outcomes.failed} failed, ${w.outcomes.cancelled} cancelled), started ${w.startedAt}`,
        `  current turn: ${w.currentTurnId ?? '-'}; last event: ${w.lastEventAt ?? '-'}; agent pid: ${w.agentPid ?? '-'}`,
      );
      if (w.session) lines.push(`  session: ${w.session.id}${w.session.resumed ? ' (resumed)' : ''}${w.session.model ? `, model ${w.session.model.requested}${w.session.model.applied ? '' : ' (not applied)'}` : ''}`);
    } else lines.push('worker:   - (its /status did not answer, or the worker is not tracked here)');
  }
  return `${lines.join('\n')}\n`;
}

export const statusCommand: Command = {
  name: 'status',
  summary: 'Show a worker\'s backend status (native id, phase, readiness, failure reason) and its /status.',
  usage: 'spawngate status ID [--config FILE | --server URL [--token-file FILE]] [-o json|yaml|wide | --json]',
  options: {
    ...common,
    output: outputOption(['json', 'yaml', 'wide'], 'a few lines'),
    json: jsonLinesOption(),
  },
  positionals: [1, 1],
  environment: TOKEN_ENV,
  notes: ['Exit status: 0 found, 1 no such worker (or the backend failed), 2 usage error.'],
  examples: [
    { description: 'Why has a worker not become ready? (its phase and the backend\'s reason)', command: 'spawngate status 3f2c9a…' },
    { description: 'Everything, including the backend\'s attributes (node, pod uid) and the worker\'s own /status', command: 'spawngate status --server unix:/run/spawngate/api.sock 3f2c9a… -o wide' },
  ],
  async run({ values, positionals, io }) {
    const format = outputFormat(values);
    const target = await resolveTarget(values, io);
    const id = positionals[0] ?? '';
    const show = (s: StatusOf): number => {
      writeRecord(io, format, s, () => statusText(s, format === 'wide'));
      return EXIT.ok;
    };
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('status', io, async () => show(await client.status(id)));
    }
    return withGate(values, target.owner, async (gate) => show(await gate.status(id)));
  },
};

const DEFAULT_TAIL = 200;
const MAX_TAIL = 100_000;
const FOLLOW_INTERVAL_MS = 1000;
/**
 * Every poll of --follow reads this many last lines (at least --tail), so that a poll overlaps the
 * one before it and new lines are found after the overlap; no backend gives log offsets.
 */
const FOLLOW_WINDOW = 1000;
/** How long --follow keeps going past a worker's expiry, for a backend that has not removed it yet. */
const FOLLOW_EXPIRY_GRACE_MS = 60_000;
const TERMINAL_PHASES: ReadonlySet<string> = new Set(['failed', 'succeeded', 'gone']);

/**
 * The lines of `next` after what `previous` ended with. Both are the last lines of the same
 * append-only log, read with the same window: `next` starts with a suffix of `previous`, the longest
 * one that fits is taken. `gap` says no overlap was found (the log moved on by more than a window,
 * or it was rotated), so lines may be missing between the two.
 */
export function linesAfter(previous: readonly string[], next: readonly string[]): { lines: string[]; gap: boolean } {
  for (let k = Math.min(previous.length, next.length); k > 0; k--) {
    let same = true;
    for (let i = 0; i < k && same; i++) same = next[i] === previous[previous.length - k + i];
    if (same) return { lines: next.slice(k), gap: false };
  }
  return { lines: [...next], gap: previous.length > 0 && next.length > 0 };
}

interface LogSource {
  logs(tail: number): Promise<string[]>;
  status(): Promise<StatusOf>;
}

function isNotFound(err: unknown): boolean {
  return isSpawngateError(err) && err.code === 'SPAWN_NOT_FOUND';
}

/**
 * --follow: prints the tail, then polls for new lines until the worker ends (closed, exited, gone),
 * its TTL is well past, or Ctrl-C (exit 130).
 */
async function followLogs(id: string, source: LogSource, tail: number, print: (lines: readonly string[]) => void, io: Io): Promise<number> {
  const window = Math.max(tail, FOLLOW_WINDOW);
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  try {
    let previous = await source.logs(window);
    print(previous.slice(-tail));
    // Bounded: a worker ends at the latest at its TTL, and the loop by FOLLOW_EXPIRY_GRACE_MS after it.
    for (;;) {
      await delay(FOLLOW_INTERVAL_MS, controller.signal);
      if (controller.signal.aborted) return EXIT.interrupted;
      let status: StatusOf | null;
      try {
        status = await source.status();
      } catch (err) {
        if (!isNotFound(err)) throw err;
        status = null;
      }
      let next: string[];
      try {
        next = await source.logs(window);
      } catch (err) {
        if (!isNotFound(err)) throw err;
        next = [];
      }
      const { lines, gap } = linesAfter(previous, next);
      if (gap) io.stderr.write(`spawngate logs: more than ${window} lines arrived between two reads, or the log was rotated; lines may be missing here\n`);
      print(lines);
      if (next.length) previous = next;
      if (status === null) {
        io.stderr.write(`spawngate logs: worker ${id} is gone\n`);
        return EXIT.ok;
      }
      if (status.tracking === 'closed' || TERMINAL_PHASES.has(status.backendStatus.phase)) {
        const b = status.backendStatus;
        io.stderr.write(`spawngate logs: worker ${id} ended (${status.tracking === 'closed' ? `closed: ${status.closeReason ?? 'closed'}` : `${b.phase}${b.reason ? `: ${b.reason}` : ''}`})\n`);
        return EXIT.ok;
      }
      if (status.expiresAt !== null && Date.now() > Date.parse(status.expiresAt) + FOLLOW_EXPIRY_GRACE_MS) {
        io.stderr.write(`spawngate logs: worker ${id} expired at ${status.expiresAt} and still runs; stopped following (spawngate sweep removes it)\n`);
        return EXIT.ok;
      }
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
  }
}

export const logsCommand: Command = {
  name: 'logs',
  summary: 'Print the last lines of a worker\'s log; -f keeps printing new ones until the worker ends.',
  usage: 'spawngate logs ID [-f] [--tail N] [--config FILE | --server URL [--token-file FILE]] [--json]',
  options: {
    follow: { type: 'boolean', short: 'f', description: `Keep printing new lines (read every ${FOLLOW_INTERVAL_MS / 1000} s) until the worker is closed, exits or is gone, or Ctrl-C (exit 130).`, default: 'print and exit' },
    tail: { type: 'string', short: 'n', value: 'N', description: `How many of the last lines to print first, 1 to ${MAX_TAIL}.`, default: String(DEFAULT_TAIL) },
    ...common,
    json: jsonLinesOption('JSON lines: a line the worker logged as a JSON object is printed as it is, any other line as {"line": "…"}.'),
  },
  positionals: [1, 1],
  environment: TOKEN_ENV,
  notes: ['Lines go to stdout exactly as the worker wrote them (the reference worker writes JSON lines); what the command itself has to say goes to stderr.'],
  examples: [
    { description: 'The last 50 lines', command: 'spawngate logs -n 50 3f2c9a…' },
    { description: 'Follow a worker run by a server, turn by turn, keeping only warnings and errors', command: 'spawngate logs -f --server unix:/run/spawngate/api.sock 3f2c9a… | jq -c \'select(.level == "warn" or .level == "error")\'' },
  ],
  async run({ values, positionals, io }) {
    const tail = Number(str(values, 'tail') ?? String(DEFAULT_TAIL));
    if (!Number.isInteger(tail) || tail < 1 || tail > MAX_TAIL) {
      io.stderr.write(`spawngate logs: --tail ${JSON.stringify(str(values, 'tail'))}: must be an integer from 1 to ${MAX_TAIL}\n`);
      return EXIT.usage;
    }
    const target = await resolveTarget(values, io);
    const id = positionals[0] ?? '';
    const json = values.json === true;
    const print = (lines: readonly string[]): void => {
      for (const line of lines) io.stdout.write(`${json ? logLineAsJson(line) : line}\n`);
    };
    const run = async (source: LogSource): Promise<number> => {
      if (values.follow === true) return followLogs(id, source, tail, print, io);
      print(await source.logs(tail));
      return EXIT.ok;
    };
    if (target.kind === 'server') {
      const { client } = target;
      return viaServer('logs', io, () => run({ logs: (n) => client.logs(id, n), status: () => client.status(id) }));
    }
    return withGate(values, target.owner, (gate) => run({ logs: (n) => gate.logs(id, n), status: () => gate.status(id) }));
  },
};

export const closeCommand: Command = {
  name: 'close',
  summary: 'Delete a worker and everything created for it (through --server: also releases its slots there at once).',
  usage: 'spawngate close ID [--config FILE | --server URL [--token-file FILE]] [--json]',
  options: { ...common, json: jsonLinesOption('Print {"event":"closed","spawnId":…} instead of a sentence.') },
  positionals: [1, 1],
  environment: TOKEN_ENV,
  notes: ['Exit status: 0 closed, 1 no such worker (or the backend failed), 2 usage error.'],
  examples: [
    { description: 'Close a worker kept by spawn --keep in process', command: 'spawngate close 3f2c9a…' },
    { description: 'Close it on the server that runs it, which releases its slots at once', command: 'spawngate close --server unix:/run/spawngate/api.sock 3f2c9a…' },
  ],
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

function writeSweep(io: Io, report: SweepOutput, format: OutputFormat, scope: string): number {
  writeRecord(io, format, report, () => {
    const verb = report.dryRun ? 'would remove' : 'removed';
    const lines = report.removed.map((e) => `${verb} ${e.spawnId} (${e.backend} ${e.nativeId}${e.owner ? `, owner ${e.owner}` : ''}): ${e.reason}${e.error ? ` — failed: ${e.error}` : ''}\n`);
    for (const e of report.errors) io.stderr.write(`backend ${e.backend}: ${e.error}\n`);
    return `${lines.join('')}${verb} ${report.removed.length}, kept ${report.kept} (${scope})\n`;
  });
  return report.errors.length || report.removed.some((e) => e.error) ? EXIT.failed : EXIT.ok;
}

export const sweepCommand: Command = {
  name: 'sweep',
  summary: 'Delete one owner\'s expired, exited and (with --orphans) untracked workers; --all --dry-run previews every owner.',
  usage: 'spawngate sweep [--dry-run] [--orphans] [--config FILE] [--owner NAME | --all] [--server URL [--token-file FILE]] [-o json|yaml | --json]',
  options: {
    'dry-run': { type: 'boolean', description: 'Only say what would be removed.', default: 'remove' },
    orphans: {
      type: 'boolean',
      description: 'Also remove workers no live lease holds. In process with a memory store that is every worker of the owner, a running gateway\'s too: sweep a running gateway through it (--server).',
      default: 'expired and exited workers only',
    },
    ...ownerOptions,
    all: { ...ownerOptions.all, description: 'Every owner, each judged as its own sweeper would. Needs --config; without --dry-run also --orphans, to confirm.' },
    ...common,
    output: outputOption(['json', 'yaml'], 'one line per worker and a total'),
    json: jsonLinesOption(),
  },
  environment: TOKEN_ENV,
  notes: ['Exit status: 0 swept (or nothing to sweep), 1 a removal or a backend failed, 2 usage error.'],
  examples: [
    { description: 'Preview what every owner left behind', command: 'spawngate sweep --all --dry-run --orphans -c /etc/spawngate/gw.yaml' },
    { description: 'Remove what a crashed gateway (owner of gw.yaml) left behind', command: 'spawngate sweep --orphans -c /etc/spawngate/gw.yaml' },
    { description: 'Sweep through the running server, as a YAML report', command: 'spawngate sweep --server http://127.0.0.1:8080 -o yaml' },
  ],
  async run({ values, io }) {
    const dryRun = values['dry-run'] === true;
    const orphans = values.orphans === true;
    const all = values.all === true;
    const format = outputFormat(values);
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
      return viaServer('sweep', io, async () => writeSweep(io, await client.sweep({ dryRun, orphans }), format, `owner of ${client.label}`));
    }
    if (orphans && (all || target.owner !== CLI_OWNER)) {
      // The one way this command can hurt a healthy gateway: say so before it happens, not in the docs only.
      io.stderr.write(
        `note: in process every worker of ${all ? 'another owner' : `owner ${target.owner}`} counts as untracked unless a lease in a shared store shows it alive; if such a gateway is running, sweep through it with --server\n`,
      );
    }
    if (all) return writeSweep(io, await sweepAllOwners(values, target.owner, { dryRun, orphans }), format, 'every owner');
    return withGate(values, target.owner, async (gate) => writeSweep(io, { ...(await gate.sweep({ dryRun, orphans })), owner: gate.owner }, format, `owner ${gate.owner}`));
  },
};

export const collectCommand: Command = {
  name: 'collect',
  summary: 'Take a worker\'s results before it goes: the diff of its git workspace, or the workspace as a .tar.gz (from spawngate serve).',
  usage: 'spawngate collect ID --server URL [--token-file FILE] [--archive FILE|- [--git]]',
  options: {
    server: { ...remote.server, description: 'The spawngate serve that runs the worker (required: only it can read the workspace): http://host:port[/prefix], https://… or unix:/path/to/socket.' },
    'token-file': remote['token-file'],
    archive: { type: 'string', short: 'a', value: 'FILE|-', description: 'Write the whole workspace as a .tar.gz to FILE (- for stdout) instead of printing the diff; a cut transfer leaves no FILE.', default: 'print the diff since the checked-out commit' },
    git: { type: 'boolean', description: 'Keep .git in the archive (only with --archive).', default: 'left out' },
  },
  positionals: [1, 1],
  environment: TOKEN_ENV,
  examples: [
    { description: 'Apply what the agent changed to a local checkout', command: 'spawngate collect --server unix:/run/spawngate/api.sock 3f2c9a… | git apply' },
    { description: 'Save the whole workspace, history included', command: 'spawngate collect --server unix:/run/spawngate/api.sock 3f2c9a… --archive ws.tar.gz --git' },
  ],
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
