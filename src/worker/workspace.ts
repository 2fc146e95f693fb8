/**
 * The worker's side of a workspace: the `git` checkout made before the agent starts, and the
 * results taken out before the worker goes (a diff against the checked-out commit, or an archive).
 *
 * git runs in the worker's own sandbox (same uid, same filesystem as the agent), so hardening here
 * is hygiene, not a boundary: no prompts, no system config, no ext:: transport, no hooks, no
 * fsmonitor, no external diff drivers.
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcessByStdio } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';

export interface GitCheckout {
  repo: string;
  ref: string | null;
  depth: number | null;
}

export interface CheckedOut {
  /** The repository, with any user:password@ in the URL removed. */
  repo: string;
  ref: string | null;
  /** The commit checked out; diffs are against it. */
  base: string;
}

/** A failure of git, with what git said (its stderr's last lines). */
export class GitError extends Error {
  readonly stderr: string;
  constructor(message: string, stderr: string) {
    super(stderr ? `${message}: ${stderr}` : message);
    this.stderr = stderr;
  }
}

/** The diff would exceed its bound. */
export class DiffTooLargeError extends Error {}

const SAFE_CONFIG = ['-c', 'protocol.ext.allow=never', '-c', 'protocol.fd.allow=never', '-c', 'core.hooksPath=/dev/null', '-c', 'core.fsmonitor=false', '-c', 'advice.detachedHead=false'];

/**
 * Marks `dir` as a safe.directory through git's environment config (command scope, which git
 * trusts for safe.directory, unlike a repository's own config), keeping entries already there. A
 * Kubernetes emptyDir belongs to root while the worker runs as its own uid, and git refuses to
 * work in a repository whose folder another user owns ("dubious ownership"). The folder is the
 * worker's own workspace, so it is trusted for the worker and its agent alike.
 */
export function safeDirectoryEnv(dir: string, env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const count = Number(env['GIT_CONFIG_COUNT'] ?? '0');
  const at = Number.isInteger(count) && count >= 0 ? count : 0;
  return { GIT_CONFIG_COUNT: String(at + 1), [`GIT_CONFIG_KEY_${at}`]: 'safe.directory', [`GIT_CONFIG_VALUE_${at}`]: dir };
}

function gitEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== 'SPAWNGATE_WORKER_TOKEN') env[k] = v;
  return { ...env, GIT_TERMINAL_PROMPT: '0', GIT_CONFIG_NOSYSTEM: '1', GIT_ASKPASS: 'true', SSH_ASKPASS: 'true', LC_ALL: 'C', ...extra };
}

function lastLines(text: string, n = 8): string {
  return text.trim().split('\n').slice(-n).join('\n');
}

function git(args: string[], options: { cwd: string; timeoutMs: number; maxBuffer?: number; env?: Record<string, string> }): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'git',
      [...SAFE_CONFIG, ...args],
      { cwd: options.cwd, env: gitEnv({ ...safeDirectoryEnv(options.cwd, process.env), ...options.env }), timeout: options.timeoutMs, maxBuffer: options.maxBuffer ?? 16 * 1024 * 1024, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return reject(new GitError('git is not installed where the worker runs (the worker image needs git for a "git" workspace)', ''));
        if (code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') return reject(new DiffTooLargeError(`git output exceeds ${options.maxBuffer} bytes`));
        if ((err as { killed?: boolean }).killed) return reject(new GitError(`git ${args[0]} did not finish within ${options.timeoutMs} ms`, lastLines(stderr)));
        reject(new GitError(`git ${args[0]} failed`, lastLines(stderr)));
      },
    );
  });
}

/** A repository URL fit for logs and status: credentials in it are dropped. */
export function displayRepo(repo: string): string {
  return repo.replace(/^([a-z]+:\/\/)[^/@\s]*@/i, '$1');
}

/**
 * Clones `checkout.repo` into the empty folder `dir` and checks out `ref` (a branch, tag or commit;
 * default the remote's default branch). A branch stays a branch (the agent can commit on it).
 */
export async function checkoutGit(dir: string, checkout: GitCheckout, timeoutMs: number): Promise<CheckedOut> {
  // --depth is ignored for a plain local path; file:// makes git honour it.
  const source = checkout.depth && checkout.repo.startsWith('/') ? `file://${checkout.repo}` : checkout.repo;
  const shallow = checkout.depth ? ['--depth', String(checkout.depth), ...(checkout.ref ? ['--no-single-branch'] : [])] : [];
  const deadline = Date.now() + timeoutMs;
  const left = () => Math.max(1000, deadline - Date.now());
  // A local source the operator named (a read-only mount, a repository baked into the image) is
  // usually owned by another uid than the worker's; git's ownership check would refuse to read it.
  // The exception must reach git-upload-pack, a process of its own that reads only protected config:
  // a global config file of the clone's own (not `-c`, which it does not honour for this check).
  const local = checkout.repo.startsWith('/') ? checkout.repo : checkout.repo.startsWith('file://') ? checkout.repo.slice('file://'.length) : null;
  const globalConfig = join(tmpdir(), `spawngate-clone-${randomBytes(6).toString('hex')}.gitconfig`);
  try {
    // Both the folder and its .git: git names a non-bare repository by its .git when it checks.
    const safe = local ? local.replace(/\/+$/, '') : null;
    await writeFile(globalConfig, safe ? `[safe]\n\tdirectory = ${safe}\n\tdirectory = ${safe}/.git\n` : '', { mode: 0o600 });
    await git(['clone', '--quiet', ...(checkout.ref ? ['--no-checkout'] : []), ...shallow, '--', source, dir], { cwd: dir, timeoutMs: left(), env: { GIT_CONFIG_GLOBAL: globalConfig } });
  } finally {
    await rm(globalConfig, { force: true });
  }
  if (checkout.ref) {
    const ref = checkout.ref;
    const commitOf = (name: string) => git(['rev-parse', '--verify', '--quiet', `${name}^{commit}`], { cwd: dir, timeoutMs: left() }).then((s) => s.trim(), () => null);
    const remoteBranch = await commitOf(`refs/remotes/origin/${ref}`);
    if (remoteBranch) {
      await git(['checkout', '--quiet', '-B', ref, '--track', `origin/${ref}`], { cwd: dir, timeoutMs: left() });
    } else {
      const commit = (await commitOf(`refs/tags/${ref}`)) ?? (await commitOf(ref));
      if (!commit) throw new GitError(`ref ${ref} is not a branch, tag or commit of ${displayRepo(checkout.repo)}${checkout.depth ? ` (within the last ${checkout.depth} commits: a shallow clone)` : ''}`, '');
      await git(['checkout', '--quiet', '--detach', commit], { cwd: dir, timeoutMs: left() });
    }
  }
  const base = (await git(['rev-parse', 'HEAD'], { cwd: dir, timeoutMs: left() })).trim();
  return { repo: displayRepo(checkout.repo), ref: checkout.ref, base };
}

/**
 * Everything that changed in `dir` since `base`: commits the agent made, staged and unstaged edits,
 * new files (not ignored ones), deletions; a unified diff with binary patches. Uses an index of its
 * own, so the agent's index is untouched.
 */
export async function gitDiff(dir: string, base: string, maxBytes: number, timeoutMs = 60_000): Promise<string> {
  const index = join(tmpdir(), `spawngate-diff-${randomBytes(6).toString('hex')}.index`);
  const env = { GIT_INDEX_FILE: index };
  try {
    await git(['read-tree', base], { cwd: dir, timeoutMs, env });
    await git(['add', '--all', '--', '.'], { cwd: dir, timeoutMs, env });
    return await git(['diff', '--cached', '--binary', '--no-color', '--no-ext-diff', '--no-textconv', base], { cwd: dir, timeoutMs, env, maxBuffer: maxBytes });
  } finally {
    await rm(index, { force: true });
  }
}

/** A gzipped tar of `dir` (without .git unless asked), streamed from the system's tar. */
export function archive(dir: string, includeGit: boolean): ChildProcessByStdio<null, Readable, Readable> {
  return spawn('tar', ['-czf', '-', ...(includeGit ? [] : ['--exclude=./.git']), '-C', dir, '.'], { stdio: ['ignore', 'pipe', 'pipe'], env: gitEnv() });
}
