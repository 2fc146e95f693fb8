/** git as the tests run it: no system or user config, a fixed identity. */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export function git(args: string[], cwd: string, home: string): string {
  // safe.directory: the tests also look into workers' checkouts, which are owned by the workers' uids.
  return execFileSync('git', ['-c', 'safe.directory=*', ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, GIT_CONFIG_NOSYSTEM: '1', HOME: home, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com' },
  }).trim();
}

/** A bare repository at `<root>/repo.git` with one commit on main (a README), for `git` workspaces; returns its path. */
export function bareRepo(root: string): string {
  const work = join(root, 'work');
  const repo = join(root, 'repo.git');
  mkdirSync(work);
  git(['init', '--quiet', '-b', 'main'], work, root);
  writeFileSync(join(work, 'README.md'), '# project\n');
  git(['add', '.'], work, root);
  git(['commit', '--quiet', '-m', 'first'], work, root);
  git(['clone', '--quiet', '--bare', work, repo], root, root);
  return repo;
}
