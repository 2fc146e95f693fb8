/**
 * Where the worker image puts production dependencies: the layouts Node resolves from /app/dist,
 * for a spawngate installed (and hoisted) inside someone else's project.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { productionPackages, sharedLibraries } from '../../src/backends/docker/image.js';

const root = mkdtempSync(join(tmpdir(), 'sg-layout-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function pkg(dir: string, body: Record<string, unknown>): string {
  const path = join(root, dir);
  mkdirSync(path, { recursive: true });
  writeFileSync(join(path, 'package.json'), JSON.stringify(body));
  return path;
}

describe('worker image layout', () => {
  it('keeps nested versions nested, hoists the rest under /app, and leaves out dev deps and optional peers', () => {
    const self = pkg('project/node_modules/spawngate', {
      name: 'spawngate',
      dependencies: { a: '^1', '@s/b': '^1' },
      optionalDependencies: { 'not-installed': '^1' },
      devDependencies: { vitest: '^1' },
      peerDependencies: { dockerode: '^5' },
      peerDependenciesMeta: { dockerode: { optional: true } },
    });
    pkg('project/node_modules/a', { name: 'a', dependencies: { c: '^2' } });
    pkg('project/node_modules/a/node_modules/c', { name: 'c', version: '2.0.0' });
    pkg('project/node_modules/@s/b', { name: '@s/b', dependencies: { c: '^1' }, peerDependencies: { a: '^1' } });
    pkg('project/node_modules/c', { name: 'c', version: '1.0.0' });
    pkg('project/node_modules/dockerode', { name: 'dockerode' });
    pkg('project/node_modules/vitest', { name: 'vitest' });

    const placed = productionPackages(self).map((p) => [p.dest, p.source.slice(root.length + 1)]);
    expect(Object.fromEntries(placed)).toEqual({
      'app/node_modules/a': 'project/node_modules/a',
      'app/node_modules/@s/b': 'project/node_modules/@s/b',
      'app/node_modules/a/node_modules/c': 'project/node_modules/a/node_modules/c',
      'app/node_modules/c': 'project/node_modules/c',
    });
  });

  it('refuses a missing required dependency', () => {
    const broken = pkg('broken', { name: 'broken', dependencies: { 'nowhere-to-be-found': '^1' } });
    expect(() => productionPackages(broken)).toThrow(expect.objectContaining({ code: 'DEPENDENCY_MISSING' }));
  });

  it('finds the dynamic loader and libc of the Node binary', async () => {
    const libs = await sharedLibraries(process.execPath);
    expect(libs.some((l) => /\/ld-linux[^/]*\.so/.test(l))).toBe(true);
    expect(libs.some((l) => /\/libc\.so/.test(l))).toBe(true);
  });
});
