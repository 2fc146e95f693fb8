/**
 * The CLI sees what a server owns: ls/status/logs/turn/close/spawn through a running `spawngate serve`
 * (--server), the server's workers through its config's owner label without it, and the orphan
 * sweep after the server was killed with SIGKILL. The servers are the installed bin, as an operator
 * runs them; the CLI runs in this process through the same `main` the bin calls.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SpawnRequestInput } from '../../src/admission/request.js';
import { AdmissionDeniedError, RequestError } from '../../src/errors.js';
import { createServerClient, errorFromBody, parseServerAddress, ServerApiError } from '../../src/server/client.js';
import { eventually, processBackend, spawnRequest, type TestBackend } from '../server/helpers.js';
import { cli, startBin, type CliResult } from './helpers.js';
import { isAlive } from '../worker/helpers.js';

const bin = fileURLToPath(new URL('../../bin/spawngate.js', import.meta.url));

/** The environment without any token of the machine running the tests, plus `extra`. */
function envWith(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SPAWNGATE_')) env[k] = v;
  return { ...env, ...extra };
}


function jsonLines(result: CliResult): Record<string, unknown>[] {
  return result.stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

interface Serve {
  child: ChildProcess;
  /** What --server takes: http://127.0.0.1:PORT or unix:/path. */
  server: string;
  owner: string;
  stderr: () => string;
  exited: Promise<void>;
}

/** Starts `spawngate serve` and waits (bounded) for its listening line. */
async function startServe(args: string[], env: NodeJS.ProcessEnv): Promise<Serve> {
  const child = spawn(process.execPath, [bin, 'serve', ...args], { env: { ...env, SPAWNGATE_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`serve printed no listening line within 30 s; stderr:\n${stderr}`)), 30_000);
  });
  try {
    const first = await Promise.race([lines.next(), timeout]);
    if (first.done) throw new Error(`serve exited before listening; stderr:\n${stderr}`);
    const listening = JSON.parse(first.value) as { event: string; url?: string; socketPath?: string; owner: string };
    expect(listening.event).toBe('listening');
    const server = listening.url ?? `unix:${listening.socketPath ?? ''}`;
    return { child, server, owner: listening.owner, stderr: () => stderr, exited };
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

async function stopServe(serve: Serve | undefined): Promise<void> {
  if (!serve || serve.child.exitCode !== null || serve.child.signalCode !== null) return;
  serve.child.kill('SIGTERM');
  await serve.exited;
}

/** A process backend in a state dir of its own, under a config whose spawngate.owner is `owner`. */
function ownedBackend(owner: string): TestBackend & { configFile: string } {
  const backend = processBackend();
  const configFile = join(backend.stateDir, 'config.json');
  writeFileSync(configFile, JSON.stringify({ ...backend.config, spawngate: { owner } }));
  return { ...backend, configFile };
}

/** Safety net: whatever a failed test left on the backend goes, whoever owns it. */
async function removeEverything(configFile: string): Promise<void> {
  await cli(['sweep', '--all', '--orphans', '--config', configFile], '', envWith());
}

describe('server client: addresses and the mapping of error bodies to SpawngateErrors', () => {
  it('parses http, https and unix addresses and refuses the rest', () => {
    expect(parseServerAddress('unix:/run/sg.sock')).toEqual({ kind: 'unix', socketPath: '/run/sg.sock' });
    expect(parseServerAddress('unix:///run/sg.sock')).toEqual({ kind: 'unix', socketPath: '/run/sg.sock' });
    const v6 = parseServerAddress('http://[::1]:8080/gw/');
    expect(v6.kind === 'tcp' && [v6.url.hostname, v6.url.port, v6.url.pathname]).toEqual(['[::1]', '8080', '/gw/']);
    expect(parseServerAddress('https://spawngate.example').kind).toBe('tcp');
    for (const bad of ['', 'unix:', 'ws://h:1', 'http://h:1/?x=1', 'http://h:1/#f', 'http://u:p@h:1', '127.0.0.1:8080']) {
      expect(() => parseServerAddress(bad), bad).toThrow(/invalid server address/);
    }
  });

  it('gives back the error the server threw, and maps the HTTP layer\'s own codes', () => {
    const denied = errorFromBody(403, { error: { name: 'AdmissionDeniedError', code: 'ADMISSION_DENIED', message: 'spawn denied: x: y', retryable: false, reasons: [{ code: 'x', message: 'y' }], decisionId: 'd1' } }, 'srv');
    expect(denied).toBeInstanceOf(AdmissionDeniedError);
    expect((denied as AdmissionDeniedError).reasons).toEqual([{ code: 'x', message: 'y' }]);
    expect(denied.details).toMatchObject({ decisionId: 'd1', httpStatus: 403 });
    const invalid = errorFromBody(400, { error: { code: 'REQUEST_INVALID', message: 'bad', retryable: false, issues: [{ path: 'task', message: 'required' }] } }, 'srv');
    expect(invalid).toBeInstanceOf(RequestError);
    expect((invalid as RequestError).issues).toEqual([{ path: 'task', message: 'required' }]);
    const config = errorFromBody(500, { error: { code: 'CONFIG_INVALID', message: 'server config', retryable: false } }, 'srv');
    expect(config).toMatchObject({ code: 'CONFIG_INVALID', status: 500 });
    expect(errorFromBody(503, { error: { code: 'RESERVATION_FAILED', message: 'm', retryable: true } }, 'srv')).toMatchObject({ code: 'RESERVATION_FAILED', retryable: true });
    expect(errorFromBody(401, { error: { code: 'UNAUTHORIZED', message: 'm', retryable: false } }, 'srv')).toMatchObject({ code: 'USAGE', details: { serverCode: 'UNAUTHORIZED' } });
    expect(errorFromBody(404, { error: { code: 'ROUTE_NOT_FOUND', message: 'no route /v1/x', retryable: false } }, 'srv')).toMatchObject({ code: 'USAGE' });
    expect(errorFromBody(413, { error: { code: 'PAYLOAD_TOO_LARGE', message: 'm', retryable: false } }, 'srv')).toMatchObject({ code: 'REQUEST_INVALID' });
    expect(errorFromBody(503, { error: { code: 'SHUTTING_DOWN', message: 'm', retryable: true } }, 'srv')).toMatchObject({ code: 'BACKEND_UNAVAILABLE', retryable: true });
    expect(errorFromBody(500, { error: { code: 'INTERNAL', message: 'm', retryable: false } }, 'srv')).toMatchObject({ code: 'BACKEND_FAILED' });
    // A proxy's HTML page in front of the server.
    const proxy = errorFromBody(502, null, 'srv');
    expect(proxy).toBeInstanceOf(ServerApiError);
    expect(proxy).toMatchObject({ code: 'BACKEND_UNAVAILABLE', retryable: true, status: 502 });
  });
});

describe('CLI flags that pick a target: usage errors exit 2 naming the flag', () => {
  const backend = ownedBackend('team-u');
  afterAll(() => backend.remove());
  const env = envWith({ SPAWNGATE_API_TOKEN: 'tok' });

  const usage = async (args: string[], mention: string | RegExp, environment = env) => {
    const result = await cli(args, '', environment);
    expect(result.code, `${args.join(' ')}\n${result.stderr}`).toBe(2);
    expect(result.stderr, args.join(' ')).toMatch(mention);
  };

  it('--server: combined with --config/--owner/--bundle, a bad address, no token on TCP, a token file that is not there', async () => {
    await usage(['ls', '--server', 'http://127.0.0.1:1', '--config', backend.configFile], /--server cannot be combined with --config/);
    await usage(['sweep', '--server', 'http://127.0.0.1:1', '--owner', 'x'], /--server cannot be combined with --owner/);
    await usage(['status', 'id', '--server', 'http://127.0.0.1:1', '--bundle', 'b.tar.gz'], /--server cannot be combined with --bundle/);
    await usage(['ls', '--server', 'ftp://127.0.0.1:1'], /--server: invalid server address.*scheme ftp:/);
    await usage(['ls', '--server', 'localhost:8080'], /--server: invalid server address/);
    await usage(['ls', '--server', 'unix:'], /--server: .*no socket path/);
    await usage(['ls', '--server', 'http://me:secret@127.0.0.1:1'], /--server: .*credentials/);
    await usage(['ls', '--server', 'http://127.0.0.1:1'], /SPAWNGATE_API_TOKEN or pass --token-file/, envWith());
    await usage(['ls', '--server', 'unix:/nonexistent.sock', '--token-file', join(backend.stateDir, 'missing')], /--token-file: cannot read .*ENOENT/);
    const empty = join(backend.stateDir, 'empty-token');
    writeFileSync(empty, '\n');
    await usage(['ls', '--server', 'http://127.0.0.1:1', '--token-file', empty], /--token-file: .* is empty/);
    await usage(['ls', '--token-file', empty], /--token-file only applies with --server/);
  });

  it('--all needs a config or a server, excludes --owner, and a destructive sweep --all needs --orphans', async () => {
    await usage(['ls', '--all'], /--all needs --config FILE/);
    await usage(['sweep', '--all', '--dry-run'], /--all needs --config FILE/);
    await usage(['ls', '--all', '--owner', 'x', '--config', backend.configFile], /--owner and --all cannot be combined/);
    await usage(['sweep', '--all', '--config', backend.configFile], /--all without --dry-run .*--orphans/);
    await usage(['sweep', '--all', '--dry-run', '--server', 'http://127.0.0.1:1'], /--all cannot be combined with --server/);
    await usage(['ls', '--owner', 'not an owner!', '--config', backend.configFile], /--owner "not an owner!"/);
    await usage(['turn', 'some-id', 'more'], /--server URL is required/);
    await usage(['spawn', '--agent', 'echo', '--server', 'http://127.0.0.1:1', '--owner', 'x', 'task'], /--server cannot be combined with --owner/);
    await usage(['status', '--all', 'id'], /--all/);
    await usage(['ls', '--server', 'unix:/x.sock'], /SPAWNGATE_API_TOKEN must hold one token/, envWith({ SPAWNGATE_API_TOKEN: 'two words' }));
  });

  it('turn is a command of its own, with --help', async () => {
    expect((await cli(['--help'])).stdout).toMatch(/^ {2}turn +Stream one more turn/m);
    const help = await cli(['turn', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage:\n  spawngate turn ID TASK --server URL');
  });

  it('a server that is not there is a failure (exit 1), not a usage error', async () => {
    const result = await cli(['ls', '--server', 'http://127.0.0.1:1'], '', env);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('cannot reach spawngate serve at http://127.0.0.1:1 (ECONNREFUSED)');
  });
});

describe('the CLI against a running serve (TCP, token, owner team-a)', () => {
  const backend = ownedBackend('team-a');
  const token = randomBytes(24).toString('base64url');
  const env = envWith({ SPAWNGATE_API_TOKEN: token });
  let serve: Serve | undefined;
  let spawnId = '';
  let workerPid = 0;

  beforeAll(async () => {
    serve = await startServe(['--config', backend.configFile, '--port', '0', '--host', '127.0.0.1'], env);
  });
  afterAll(async () => {
    await stopServe(serve);
    await removeEverything(backend.configFile);
    backend.remove();
  });

  const server = () => serve?.server ?? '';

  it('spawn --server --keep starts a worker there; ls sees it through the server and, without it, through the config\'s owner', async () => {
    expect(serve?.owner).toBe('team-a');
    const spawned = await cli(['spawn', '--server', server(), '--agent', 'echo', '--keep', '--json', 'hello through the server'], '', env);
    expect(spawned.code, spawned.stderr).toBe(0);
    const lines = jsonLines(spawned);
    expect(lines.map((l) => l['event'] ?? l['type'])).toEqual(expect.arrayContaining(['spawned', 'turn.started', 'agent.message.delta', 'turn.completed', 'kept']));
    const kept = lines.find((l) => l['event'] === 'kept') as { spawnId: string; nativeId: string };
    spawnId = kept.spawnId;
    workerPid = Number(kept.nativeId);
    expect(isAlive(workerPid)).toBe(true);

    const viaServer = await cli(['ls', '--server', server(), '--json'], '', env);
    expect(viaServer.code, viaServer.stderr).toBe(0);
    expect(jsonLines(viaServer)).toContainEqual(expect.objectContaining({ spawnId, owner: 'team-a', tracked: true }));

    // No server involved: a private gate on the same backends, as the owner the config names.
    const viaConfig = await cli(['ls', '--config', backend.configFile, '--json'], '', envWith());
    expect(viaConfig.code, viaConfig.stderr).toBe(0);
    expect(jsonLines(viaConfig)).toContainEqual(expect.objectContaining({ spawnId, owner: 'team-a', tracked: false }));
    const table = await cli(['ls', '--config', backend.configFile], '', envWith());
    expect(table.stdout).toMatch(new RegExp(`^${spawnId} +local +small +echo +team-a +running +in `, 'm'));
    const wide = await cli(['ls', '--config', backend.configFile, '-o', 'wide'], '', envWith());
    expect(wide.stdout).toMatch(new RegExp(`^${spawnId} +local +small +echo +team-a +running +in \\S+ +${workerPid} +no +`, 'm'));

    const otherOwner = await cli(['ls', '--config', backend.configFile, '--owner', 'team-z', '--json'], '', envWith());
    expect(otherOwner.code).toBe(0);
    expect(jsonLines(otherOwner).map((r) => r['spawnId'])).not.toContain(spawnId);
    const everyOwner = await cli(['ls', '--config', backend.configFile, '--all', '--json'], '', envWith());
    expect(jsonLines(everyOwner).map((r) => r['spawnId'])).toContain(spawnId);
    const everyOwnerViaServer = await cli(['ls', '--server', server(), '--all', '--json'], '', env);
    expect(jsonLines(everyOwnerViaServer).map((r) => r['spawnId'])).toContain(spawnId);
  });

  it('the client on its own: healthz, admit and list', async () => {
    const client = createServerClient({ server: server(), token });
    expect(await client.healthz()).toMatchObject({ status: 'ok' });
    expect(await client.admit(spawnRequest('dry run', { agentId: 'echo' }) as SpawnRequestInput)).toMatchObject({ decision: { allow: true, backend: 'local', profile: 'small' } });
    expect((await client.list()).map((r) => r.spawnId)).toContain(spawnId);
  });

  it('status, logs and turn go through the server, which tracks the worker live', async () => {
    expect(spawnId).not.toBe('');
    const status = await cli(['status', '--server', server(), '--json', spawnId], '', env);
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ spawnId, tracking: 'live', backendStatus: { ready: true } });

    const logs = await cli(['logs', '--server', server(), '--tail', '50', spawnId], '', env);
    expect(logs.code, logs.stderr).toBe(0);
    expect(logs.stdout).toContain('listening');

    const turn = await cli(['turn', '--server', server(), '--json', spawnId, 'a second turn'], '', env);
    expect(turn.code, turn.stderr).toBe(0);
    const events = jsonLines(turn);
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
    expect(events.filter((e) => e['type'] === 'agent.message.delta').map((e) => e['text']).join('')).toContain('a second turn');
  });

  it('the token comes from --token-file as well; a wrong one exits 2 and says where the CLI took it from', async () => {
    const tokenFile = join(backend.stateDir, 'token');
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    const fromFile = await cli(['status', '--server', server(), '--token-file', tokenFile, spawnId], '', envWith());
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expect(fromFile.stdout).toMatch(/^tracking: live$/m);

    const wrong = await cli(['ls', '--server', server()], '', envWith({ SPAWNGATE_API_TOKEN: 'not-the-token' }));
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain('rejected the API token');
    expect(wrong.stderr).toContain('SPAWNGATE_API_TOKEN');
  });

  it('server errors keep their exit codes: unknown id 1, bad request 2, denied spawn 3', async () => {
    const unknown = await cli(['status', '--server', server(), 'no-such-spawn'], '', env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no-such-spawn');

    const blank = await cli(['turn', '--server', server(), spawnId, '   '], '', env);
    expect(blank.code, blank.stderr).toBe(2);
    expect(blank.stderr).toContain('message');

    // Profile "restricted" allows an agent nobody is: the policy denies, and nothing is started.
    const denied = await cli(['spawn', '--server', server(), '--agent', 'echo', '--profile', 'restricted', '--json', 'never runs'], '', env);
    expect(denied.code, denied.stderr).toBe(3);
    expect(jsonLines(denied)).toContainEqual(expect.objectContaining({ event: 'denied', reasons: expect.arrayContaining([expect.objectContaining({ code: expect.any(String) as unknown })]) as unknown }));
  });

  it('close --server closes it there: the server remembers why, and the worker is gone', async () => {
    const closed = await cli(['close', '--server', server(), spawnId], '', env);
    expect(closed.code, closed.stderr).toBe(0);
    expect(closed.stdout).toBe(`closed ${spawnId}\n`);
    const status = await cli(['status', '--server', server(), '--json', spawnId], '', env);
    expect(JSON.parse(status.stdout)).toMatchObject({ spawnId, tracking: 'closed', closeReason: 'closed' });
    await eventually(() => Promise.resolve(!isAlive(workerPid)), 15_000, 'the closed worker process to be gone');
    const ls = await cli(['ls', '--config', backend.configFile, '--all', '--json'], '', envWith());
    expect(jsonLines(ls).map((r) => r['spawnId'])).not.toContain(spawnId);
  });

  it('spawn --server without --keep streams the turn and closes the worker', async () => {
    const once = await cli(['spawn', '--server', server(), '--agent', 'echo', '--json', 'just once'], '', env);
    expect(once.code, once.stderr).toBe(0);
    const lines = jsonLines(once);
    const id = lines.find((l) => l['event'] === 'spawned')?.['spawnId'] as string;
    expect(lines.some((l) => l['event'] === 'kept')).toBe(false);
    const status = await cli(['status', '--server', server(), '--json', id], '', env);
    expect(JSON.parse(status.stdout)).toMatchObject({ tracking: 'closed', closeReason: 'closed' });
  });

  it('logs -f --server prints each new line once as turns happen, and ends (exit 0) when the server closes the worker', async () => {
    const spawned = await cli(['spawn', '--server', server(), '--agent', 'echo', '--keep', '--json', 'first turn'], '', env);
    expect(spawned.code, spawned.stderr).toBe(0);
    const id = jsonLines(spawned).find((l) => l['event'] === 'kept')?.['spawnId'] as string;
    const follow = startBin(['logs', '-f', '--server', server(), id], env);
    await follow.waitFor(/turn ended/);
    const turns = () => follow.stdout().match(/turn ended/g)?.length ?? 0;
    expect(turns()).toBe(1);
    const turn = await cli(['turn', '--server', server(), id, 'second turn'], '', env);
    expect(turn.code, turn.stderr).toBe(0);
    await follow.waitFor(/turn ended[\s\S]*turn ended/);
    expect(turns()).toBe(2);
    expect((await cli(['close', '--server', server(), id], '', env)).code).toBe(0);
    const result = await follow.exited;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toBe(`spawngate logs: worker ${id} ended (closed: closed)\n`);
    const printed = result.stdout.split('\n').filter(Boolean);
    expect(new Set(printed).size).toBe(printed.length);
    // As the worker wrote them: its JSON lines, not strings of JSON.
    for (const line of printed) expect(JSON.parse(line)).toEqual(expect.any(Object));
  });
});

describe('orphans of a serve killed with SIGKILL (unix socket, no token, owner team-b)', () => {
  const backend = ownedBackend('team-b');
  const socket = join(backend.stateDir, 'api.sock');
  let serve: Serve | undefined;

  afterAll(async () => {
    if (serve && serve.child.exitCode === null && serve.child.signalCode === null) serve.child.kill('SIGKILL');
    await removeEverything(backend.configFile);
    backend.remove();
  });

  it('sweep --orphans as another owner removes none; as the config\'s owner it removes them all', async () => {
    serve = await startServe(['--config', backend.configFile, '--socket', socket], envWith());
    expect(serve.server).toBe(`unix:${socket}`);
    const ids: string[] = [];
    const pids: number[] = [];
    for (const task of ['first', 'second']) {
      const res = await cli(['spawn', '--server', serve.server, '--agent', 'echo', '--keep', '--json', task], '', envWith());
      expect(res.code, res.stderr).toBe(0);
      const kept = jsonLines(res).find((l) => l['event'] === 'kept') as { spawnId: string; nativeId: string };
      ids.push(kept.spawnId);
      pids.push(Number(kept.nativeId));
    }
    const listed = await cli(['ls', '--server', serve.server, '--json'], '', envWith());
    expect(jsonLines(listed).map((r) => r['spawnId']).sort()).toEqual([...ids].sort());

    serve.child.kill('SIGKILL');
    await serve.exited;
    // The premise: the workers outlive their server, and only a sweep will remove them.
    for (const pid of pids) expect(isAlive(pid)).toBe(true);

    const stranger = await cli(['sweep', '--orphans', '--config', backend.configFile, '--owner', 'team-other', '--json'], '', envWith());
    expect(stranger.code, stranger.stderr).toBe(0);
    expect(JSON.parse(stranger.stdout)).toMatchObject({ owner: 'team-other', removed: [] });
    for (const pid of pids) expect(isAlive(pid)).toBe(true);

    const preview = await cli(['sweep', '--all', '--dry-run', '--orphans', '--config', backend.configFile, '--json'], '', envWith());
    expect(preview.code, preview.stderr).toBe(0);
    const previewed = JSON.parse(preview.stdout) as { owners: string[]; removed: { spawnId: string; owner: string; reason: string; deleted: boolean }[] };
    expect(previewed.owners).toEqual(['team-b']);
    expect(previewed.removed.map((e) => e.spawnId).sort()).toEqual([...ids].sort());
    for (const e of previewed.removed) expect(e).toMatchObject({ owner: 'team-b', reason: 'orphaned', deleted: false });
    for (const pid of pids) expect(isAlive(pid)).toBe(true);

    const swept = await cli(['sweep', '--orphans', '--config', backend.configFile, '--json'], '', envWith());
    expect(swept.code, swept.stderr).toBe(0);
    const report = JSON.parse(swept.stdout) as { owner: string; removed: { spawnId: string; reason: string; deleted: boolean }[] };
    expect(report.owner).toBe('team-b');
    expect(swept.stderr).toContain('owner team-b counts as untracked');
    expect(report.removed.map((e) => e.spawnId).sort()).toEqual([...ids].sort());
    for (const e of report.removed) expect(e).toMatchObject({ reason: 'orphaned', deleted: true });
    await eventually(() => Promise.resolve(pids.every((pid) => !isAlive(pid))), 15_000, 'the orphaned worker processes to be gone');
    const after = await cli(['ls', '--config', backend.configFile, '--all', '--json'], '', envWith());
    expect(after.stdout).toBe('');
  }, 90_000);
});
