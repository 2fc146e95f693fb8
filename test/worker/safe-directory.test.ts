/**
 * A workspace folder the worker does not own (a Kubernetes emptyDir belongs to root, the worker
 * runs as its own uid): git refuses it as "dubious ownership" unless the worker marks it safe.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { safeDirectoryEnv } from '../../src/worker/workspace.js';

describe('safeDirectoryEnv', () => {
  it('appends one safe.directory entry after those already in the environment', () => {
    expect(safeDirectoryEnv('/workspace', {})).toEqual({ GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'safe.directory', GIT_CONFIG_VALUE_0: '/workspace' });
    expect(safeDirectoryEnv('/w', { GIT_CONFIG_COUNT: '2' })).toEqual({ GIT_CONFIG_COUNT: '3', GIT_CONFIG_KEY_2: 'safe.directory', GIT_CONFIG_VALUE_2: '/w' });
    expect(safeDirectoryEnv('/w', { GIT_CONFIG_COUNT: 'nonsense' })).toMatchObject({ GIT_CONFIG_COUNT: '1' });
  });

  it.runIf(process.getuid?.() === 0)('lets git work in a repository folder another user owns, which it refuses otherwise', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sg-safe-dir-'));
    const repo = join(dir, 'repo');
    execFileSync('git', ['init', '-q', repo]);
    chownSync(repo, 4242, 4242);
    const env = { ...process.env, GIT_CONFIG_NOSYSTEM: '1', HOME: dir };
    const refused = (() => {
      try {
        execFileSync('git', ['rev-parse', '--git-dir'], { cwd: repo, env, stdio: 'pipe' });
        return '';
      } catch (err) {
        return String((err as { stderr?: Buffer }).stderr);
      }
    })();
    expect(refused).toMatch(/dubious ownership/);
    expect(execFileSync('git', ['rev-parse', '--git-dir'], { cwd: repo, env: { ...env, ...safeDirectoryEnv(repo, env) } }).toString().trim()).toBe('.git');
  });
});
