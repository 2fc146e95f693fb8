/**
 * Where the worker image puts production dependencies: the layouts Node resolves from /app/dist,
 * for a spawngate installed (and hoisted) inside someone else's project; and how an agent's
 * install folder keeps its links in a real image.
 */
import { spawn } from 'node:child_process';
import { linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildWorkerImage, productionPackages, sharedLibraries } from '../../src/backends/docker/image.js';
import { engine, ensureEngine } from './engine.js';

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

/** `tar -tv` lines of a container's filesystem under `prefix`: how the engine really stored each name. */
async function listing(image: string, prefix: string): Promise<string[]> {
  const container = await engine().createContainer({ Image: image, Cmd: ['/bin/none'] });
  try {
    const archive = await container.export();
    const tar = spawn('tar', ['-tvf', '-'], { stdio: ['pipe', 'pipe', 'inherit'] });
    archive.pipe(tar.stdin);
    let out = '';
    tar.stdout.on('data', (chunk: Buffer) => (out += chunk.toString('utf8')));
    await new Promise<void>((resolve, reject) => tar.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`tar exited ${code}`)))));
    return out.split('\n').filter((l) => l.includes(` ${prefix}`));
  } finally {
    await container.remove({ force: true });
  }
}

describe('an agent folder in the worker image', () => {
  const tag = 'spawngate-worker:layout-test';
  afterAll(async () => {
    await engine().getImage(tag).remove({ force: true }).catch(() => undefined);
  });

  it('keeps symlinks inside the folder and second names of a file as links, and copies what points out of it', async () => {
    await ensureEngine();
    const agent = join(root, 'agent');
    const bin = join(agent, 'node_modules', 'pkg', 'bin');
    mkdirSync(bin, { recursive: true });
    mkdirSync(join(agent, 'node_modules', '.bin'));
    writeFileSync(join(agent, 'package.json'), '{}');
    writeFileSync(join(bin, 'cli.js'), 'the agent binary\n', { mode: 0o755 });
    linkSync(join(bin, 'cli.js'), join(bin, 'cli.exe'));
    symlinkSync('../pkg/bin/cli.js', join(agent, 'node_modules', '.bin', 'cli'));
    writeFileSync(join(root, 'outside.txt'), 'from outside\n');
    symlinkSync(join(root, 'outside.txt'), join(bin, 'absolute'));
    symlinkSync('../../../../outside.txt', join(bin, 'escaping'));
    symlinkSync('missing', join(bin, 'dangling'));

    await buildWorkerImage({ tag, userland: false, agents: [{ id: 'links', dir: agent }], force: true });
    const lines = await listing(tag, 'opt/agents/links/');
    const line = (path: string): string => lines.find((l) => l.endsWith(` opt/agents/links/${path}`) || l.includes(` opt/agents/links/${path} `)) ?? `(no ${path})`;
    expect(line('node_modules/.bin/cli')).toMatch(/^l.* -> \.\.\/pkg\/bin\/cli\.js$/);
    // One file, two names: whichever tar met first holds the bytes, the other is a hard link to it.
    const names = [line('node_modules/pkg/bin/cli.js'), line('node_modules/pkg/bin/cli.exe')];
    expect(names.filter((l) => l.startsWith('h')).length, names.join('\n')).toBe(1);
    expect(names.filter((l) => l.startsWith('-')).length, names.join('\n')).toBe(1);
    // Out of the folder: the bytes themselves, so the image does not depend on the builder's files.
    expect(line('node_modules/pkg/bin/absolute')).toMatch(/^-/);
    expect(line('node_modules/pkg/bin/escaping')).toMatch(/^-/);
    expect(lines.some((l) => l.includes('/dangling'))).toBe(false);
  });
});
