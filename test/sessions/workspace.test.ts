/**
 * Workspaces a coding agent can use, on the process backend with real git and real workers: a
 * repository checked out before the agent starts, HOME apart from the work, and the results taken
 * out before the worker goes — as a diff against the checked-out commit or as an archive — through
 * the library, `spawngate serve` and the CLI.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { parseConfig } from '../../src/config/index.js';
import { createServer } from '../../src/server/server.js';
import type { Spawngate } from '../../src/spawngate.js';
import { say } from '../helpers/turns.js';
import { testGate } from '../helpers/gate.js';
import { git as gitAs } from '../helpers/git.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sg-ws-'));
// Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
chmodSync(root, 0o711);
const repo = join(root, 'repo');
const stateDir = join(root, 's');
let gate: Spawngate;
let featureCommit = '';

function git(args: string[], cwd = repo): string {
  return gitAs(args, cwd, root);
}

const caller = { sessionKey: 'agent:main:ws', depth: 0, channel: { id: 'ws', kind: 'cli', interactive: true }, user: { id: 'ws-user', roles: [] } };

function io(stdin = '') {
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = '';
  let stderr = '';
  out.on('data', (c: Buffer) => (stdout += c.toString()));
  err.on('data', (c: Buffer) => (stderr += c.toString()));
  return { io: { stdout: out, stderr: err, stdin: Readable.from([stdin]), env: {} }, out: () => stdout, err: () => stderr };
}

beforeAll(async () => {
  mkdirSync(repo, { recursive: true });
  mkdirSync(stateDir);
  git(['init', '--quiet', '-b', 'main']);
  writeFileSync(join(repo, 'README.md'), 'hello\n');
  writeFileSync(join(repo, '.gitignore'), 'build/\n');
  git(['add', '.']);
  git(['commit', '--quiet', '-m', 'first']);
  git(['checkout', '--quiet', '-b', 'feature']);
  writeFileSync(join(repo, 'feature.txt'), 'on the feature branch\n');
  git(['add', '.']);
  git(['commit', '--quiet', '-m', 'feature']);
  featureCommit = git(['rev-parse', 'HEAD']);
  git(['checkout', '--quiet', 'main']);
  const base = { egress: 'none', ttlSeconds: 600, timeoutSeconds: 120 };
  gate = await testGate('ws', {
    agents: {
      executionBackends: {
        local: {
          type: 'process',
          stateDir,
          defaultProfile: 'git',
          profiles: {
            git: { ...base, workspace: { strategy: 'git', repo, ref: 'feature' } },
            head: { ...base, workspace: { strategy: 'git', repo, depth: 1 } },
            badref: { ...base, workspace: { strategy: 'git', repo, ref: 'no-such-branch' } },
            plain: { ...base, workspace: { strategy: 'ephemeral' } },
          },
        },
        // A hostPath is a host folder shared by the profile's workers: only a backend whose workers share the gateway's identity takes it.
        shared: {
          type: 'process',
          stateDir: join(root, 'shared'),
          allowedHostPaths: [join(root, 'host')],
          isolation: { user: 'none' },
          profiles: { host: { ...base, workspace: { strategy: 'hostPath', path: join(root, 'host', 'project') } } },
        },
      },
      execution: { default: { backend: 'local', profile: 'git' } },
      acp: { fixture: { command: [process.execPath, fixture] } },
    },
  });
});

afterAll(async () => {
  await gate?.shutdown();
  rmSync(root, { recursive: true, force: true });
});

describe('git workspaces', () => {
  it('checks the ref out before the agent starts, keeps HOME apart, and gives the diff and the archive of what the agent changed', async () => {
    const handle = await gate.spawn({ agentId: 'fixture', caller });
    try {
      const where = await say(handle, 'where');
      const cwd = /cwd=(\S+)/.exec(where)?.[1] ?? '';
      const home = /home=(\S+)/.exec(where)?.[1] ?? '';
      expect(existsSync(join(cwd, 'feature.txt')), where).toBe(true);
      expect(home).not.toBe(cwd);
      expect(home.startsWith(cwd)).toBe(false);
      // The checkout is a branch, so the agent can commit on it.
      expect(git(['rev-parse', '--abbrev-ref', 'HEAD'], cwd)).toBe('feature');

      await say(handle, 'write README.md changed by the agent');
      await say(handle, 'write notes/new.txt a new file');
      mkdirSync(join(cwd, 'build'));
      writeFileSync(join(cwd, 'build', 'out.bin'), 'ignored output');

      const status = await gate.status(handle.spawnId);
      expect(status.worker?.workspace?.git).toEqual({ repo, ref: 'feature', base: featureCommit });

      const collected = await gate.collect(handle.spawnId, { format: 'diff' });
      expect(collected.base).toBe(featureCommit);
      expect(collected.diff).toContain('--- a/README.md');
      expect(collected.diff).toContain('-hello');
      expect(collected.diff).toContain('+changed by the agent');
      expect(collected.diff).toContain('+++ b/notes/new.txt');
      expect(collected.diff).not.toContain('build/out.bin');
      // The agent's own index is untouched by taking the diff.
      expect(git(['status', '--porcelain'], cwd)).toContain('?? notes/');
      // The diff applies to the checked-out commit: it is the whole result.
      const check = join(root, 'check');
      git(['clone', '--quiet', '--branch', 'feature', repo, check], root);
      const patch = join(root, 'result.patch');
      writeFileSync(patch, collected.diff);
      git(['apply', patch], check);
      expect(readFileSync(join(check, 'README.md'), 'utf8')).toBe('changed by the agent\n');

      const { stream } = await gate.collect(handle.spawnId, { format: 'archive' });
      const chunks: Buffer[] = [];
      for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c);
      const listing = execFileSync('tar', ['-tzf', '-'], { input: Buffer.concat(chunks), encoding: 'utf8' });
      expect(listing).toContain('./notes/new.txt');
      expect(listing).toContain('./feature.txt');
      expect(listing).not.toContain('./.git/');
    } finally {
      await handle.close();
    }
    expect(existsSync(join(stateDir, handle.spawnId))).toBe(false);
  });

  it('without a ref: the default branch, shallow when the profile says so', async () => {
    const handle = await gate.spawn({ agentId: 'fixture', caller, execution: { profile: 'head' } });
    try {
      const cwd = /cwd=(\S+)/.exec(await say(handle, 'where'))?.[1] ?? '';
      expect(existsSync(join(cwd, 'feature.txt'))).toBe(false);
      expect(git(['rev-list', '--count', 'HEAD'], cwd)).toBe('1');
      expect((await gate.collect(handle.spawnId, { format: 'diff' })).diff).toBe('');
    } finally {
      await handle.close();
    }
  });

  it('a ref that does not exist fails the spawn with git\'s reason, and leaves nothing', async () => {
    const err = await gate.spawn({ agentId: 'fixture', caller, execution: { profile: 'badref' } }).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/ref no-such-branch is not a branch, tag or commit/);
    expect(await gate.list()).toEqual([]);
    expect(await gate.store.active()).toEqual([]);
  });

  it('a workspace that is not a git checkout has no diff (WORKSPACE_UNAVAILABLE) but has an archive', async () => {
    const handle = await gate.spawn({ agentId: 'fixture', caller, execution: { profile: 'plain' } });
    try {
      await say(handle, 'write a.txt x');
      await expect(gate.collect(handle.spawnId, { format: 'diff' })).rejects.toMatchObject({ code: 'WORKSPACE_UNAVAILABLE' });
      const { stream } = await gate.collect(handle.spawnId, { format: 'archive' });
      const chunks: Buffer[] = [];
      for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c);
      expect(execFileSync('tar', ['-tzf', '-'], { input: Buffer.concat(chunks), encoding: 'utf8' })).toContain('./a.txt');
    } finally {
      await handle.close();
    }
    await expect(gate.collect(handle.spawnId, { format: 'diff' })).rejects.toMatchObject({ code: 'SPAWN_NOT_FOUND' });
  });

  it('spawngate collect takes both from spawngate serve; usage errors exit 2', async () => {
    const socketPath = join(root, 'api.sock');
    const server = await createServer({ gate, listen: { socketPath } });
    const handle = await gate.spawn({ agentId: 'fixture', caller });
    try {
      await say(handle, 'write README.md from the cli test');
      const diff = io();
      expect(await main(['collect', handle.spawnId, '--server', `unix:${socketPath}`], diff.io), diff.err()).toBe(0);
      expect(diff.out()).toContain('+from the cli test');

      const archive = join(root, 'ws.tar.gz');
      const tar = io();
      expect(await main(['collect', handle.spawnId, '--server', `unix:${socketPath}`, '--archive', archive], tar.io), tar.err()).toBe(0);
      expect(execFileSync('tar', ['-tzf', archive], { encoding: 'utf8' })).toContain('./README.md');
      expect(existsSync(`${archive}.partial`)).toBe(false);

      const noServer = io();
      expect(await main(['collect', handle.spawnId], noServer.io)).toBe(2);
      expect(noServer.err()).toMatch(/--server/);
      const gitWithoutArchive = io();
      expect(await main(['collect', handle.spawnId, '--server', `unix:${socketPath}`, '--git'], gitWithoutArchive.io)).toBe(2);
      const unknown = io();
      expect(await main(['collect', 'no-such-spawn', '--server', `unix:${socketPath}`], unknown.io)).not.toBe(0);
      expect(unknown.err()).toMatch(/no-such-spawn/);
    } finally {
      await handle.close();
      await server.close();
    }
  });
});

describe('hostPath workspaces on the process backend', () => {
  it('refuse a host folder that does not exist, or that a symlink leads out of the allowed paths', async () => {
    const project = join(root, 'host', 'project');
    rmSync(project, { recursive: true, force: true });
    await expect(gate.spawn({ agentId: 'fixture', caller, execution: { backend: 'shared', profile: 'host' } })).rejects.toThrow(/host path .*project cannot be used as the workspace: it does not exist \(create it first\)/);
    const outside = mkdtempSync(join(tmpdir(), 'sg-outside-'));
    mkdirSync(join(root, 'host'), { recursive: true });
    symlinkSync(outside, project);
    try {
      await expect(gate.spawn({ agentId: 'fixture', caller, execution: { backend: 'shared', profile: 'host' } })).rejects.toThrow(/host path .*project leads to .*sg-outside-.* \(symlinks resolved\), which is not under an allowed host path/);
    } finally {
      rmSync(project);
      rmSync(outside, { recursive: true, force: true });
    }
  });

  it('run the agent in the allowed host folder, whose files stay when the worker goes', async () => {
    mkdirSync(join(root, 'host', 'project'), { recursive: true });
    const handle = await gate.spawn({ agentId: 'fixture', caller, execution: { backend: 'shared', profile: 'host' } });
    try {
      expect(await say(handle, 'where')).toContain(`cwd=${join(root, 'host', 'project')} `);
      await say(handle, 'write kept.txt stays on the host');
    } finally {
      await handle.close();
    }
    expect(readFileSync(join(root, 'host', 'project', 'kept.txt'), 'utf8')).toBe('stays on the host\n');
  });

  it('outside allowedHostPaths the config is refused, by path', () => {
    const config = { agents: { executionBackends: { local: { type: 'process', allowedHostPaths: ['/srv/ws'], profiles: { p: { workspace: { strategy: 'hostPath', path: '/etc' } } } } } } };
    expect(() => parseConfig(config)).toThrow(/agents\.executionBackends\.local\.profiles\.p\.workspace\.path.*not under any of the backend's allowedHostPaths/s);
  });
});

describe('git workspace config', () => {
  it.each([
    ['-uhoh', 'an option smuggled in as a repository'],
    ['ext::sh -c touch% /tmp/pwned', 'the ext:: transport'],
    ['relative/path', 'a relative path'],
  ])('refuses repo %j (%s) by its path', (bad) => {
    const config = { agents: { executionBackends: { local: { type: 'process', profiles: { p: { workspace: { strategy: 'git', repo: bad } } } } } } };
    expect(() => parseConfig(config)).toThrow(/agents\.executionBackends\.local\.profiles\.p\.workspace\.repo/);
  });

  it('refuses a ref that git would read as an option or a range', () => {
    for (const ref of ['--upload-pack=x', 'a..b', 'x@{1}']) {
      const config = { agents: { executionBackends: { local: { type: 'process', profiles: { p: { workspace: { strategy: 'git', repo: '/srv/repo', ref } } } } } } };
      expect(() => parseConfig(config), ref).toThrow(/workspace\.ref/);
    }
  });
});
