/**
 * Test support for the Docker backend: a real engine (started by scripts/ensure-docker.sh when it
 * is not running) and the worker images built from this checkout. Nothing here is skipped when the
 * engine is missing: the setup fails, and with it every test that needs it.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import { buildWorkerImage, defaultWorkerImage } from '../../src/backends/docker/image.js';

const run = promisify(execFile);

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const fixtureSource = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
/** Where the contract image carries test/fixtures/acp-agent.ts; it finds @agentclientprotocol/sdk in /app/node_modules. */
export const fixtureInImage = '/app/test/fixtures/acp-agent.ts';
export const WORKER_IMAGE = defaultWorkerImage();
export const CONTRACT_IMAGE = 'spawngate-worker:contract';

export async function ensureEngine(): Promise<void> {
  try {
    const { stdout } = await run('bash', [`${repoRoot}scripts/ensure-docker.sh`], { timeout: 300_000 });
    process.stdout.write(stdout);
  } catch (err) {
    const e = err as Error & { stdout?: string; stderr?: string };
    throw new Error(`no Docker engine for the docker backend tests (CI=${process.env['CI'] ?? 'unset'}): ${e.stderr || e.stdout || e.message}`, { cause: err });
  }
}

/** A bare repository inside the contract image, for `git` workspaces without any network. */
export const FIXTURE_REPO_IN_IMAGE = '/srv/fixture-repo.git';

/**
 * The bare repository's files (branch main: README.md "hello"; branch feature adds feature.txt),
 * made with fixed dates and identities so its bytes, and the image's input hash, are the same every run.
 */
export async function fixtureRepoFiles(): Promise<{ source: string; path: string }[]> {
  const dir = mkdtempSync(join(tmpdir(), 'sg-fixture-repo-'));
  const work = join(dir, 'work');
  const bare = join(dir, 'bare.git');
  const env = { ...process.env, GIT_CONFIG_NOSYSTEM: '1', HOME: dir, GIT_AUTHOR_NAME: 'fixture', GIT_AUTHOR_EMAIL: 'fixture@example.com', GIT_COMMITTER_NAME: 'fixture', GIT_COMMITTER_EMAIL: 'fixture@example.com', GIT_AUTHOR_DATE: '2026-01-01T00:00:00Z', GIT_COMMITTER_DATE: '2026-01-01T00:00:00Z' };
  const git = (args: string[], cwd: string) => run('git', args, { cwd, env });
  mkdirSync(work);
  await git(['init', '-q', '--template=', '-b', 'main'], work);
  writeFileSync(join(work, 'README.md'), 'hello\n');
  await git(['add', '.'], work);
  await git(['commit', '-q', '-m', 'first'], work);
  await git(['checkout', '-q', '-b', 'feature'], work);
  writeFileSync(join(work, 'feature.txt'), 'on the feature branch\n');
  await git(['add', '.'], work);
  await git(['commit', '-q', '-m', 'feature'], work);
  // Pushed, not cloned: a push this small arrives as loose objects and loose refs, whose bytes do not vary between runs (a pack's could).
  await git(['init', '-q', '--bare', '--template=', '-b', 'main', bare], dir);
  await git(['push', '-q', bare, 'main', 'feature'], work);
  const files: { source: string; path: string }[] = [];
  const walk = (from: string, to: string): void => {
    for (const name of readdirSync(from).sort()) {
      const source = join(from, name);
      if (statSync(source).isDirectory()) walk(source, `${to}/${name}`);
      else files.push({ source, path: `${to}/${name}` });
    }
  };
  walk(bare, FIXTURE_REPO_IN_IMAGE);
  return files;
}

/** The default worker image and one with the ACP test fixture and a fixture repository added; both no-ops when up to date. */
export async function ensureImages(): Promise<void> {
  const log = (line: string): void => void process.stdout.write(`image: ${line}\n`);
  await buildWorkerImage({ log });
  const repo = await fixtureRepoFiles();
  await buildWorkerImage({ tag: CONTRACT_IMAGE, extraFiles: [{ source: fixtureSource, path: fixtureInImage }, ...repo], log });
}

export function engine(): Docker {
  return new Docker();
}
