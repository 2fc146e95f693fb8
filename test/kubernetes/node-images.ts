/**
 * Images for pods on the real test node: built by Docker (test/docker/engine.ts, which also gives
 * the contract image its ACP fixture agent and fixture repository), then copied into the node's
 * private containerd with `docker save | ctr import`, since no registry is reachable here. An
 * image whose Docker id was already imported is not copied again.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestNode } from '../k8s-infra/global-setup.js';
import { CONTRACT_IMAGE, ensureEngine, ensureImages } from '../docker/engine.js';

const run = promisify(execFile);

export { CONTRACT_IMAGE, fixtureInImage } from '../docker/engine.js';

/** containerd's name for a Docker short name, which is what the kubelet asks for. */
function containerdRef(tag: string): string {
  const named = tag.includes('/') ? tag : `docker.io/library/${tag}`;
  return named.includes(':') ? named : `${named}:latest`;
}

async function ctr(node: TestNode, args: string[]): Promise<string> {
  const { stdout } = await run('ctr', ['--address', node.containerdSocket, '--namespace', 'k8s.io', ...args], { maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}

/** `docker save <tag> | ctr images import -`, with both ends' failures reported. */
function importFromDocker(node: TestNode, tag: string, snapshotter: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const save = spawn('docker', ['save', tag], { stdio: ['ignore', 'pipe', 'pipe'] });
    const load = spawn('ctr', ['--address', node.containerdSocket, '--namespace', 'k8s.io', 'images', 'import', '--snapshotter', snapshotter, '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    save.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    load.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    save.stdout.pipe(load.stdin);
    load.stdin.on('error', () => undefined);
    let saveCode: number | null = null;
    save.on('close', (code) => (saveCode = code));
    load.on('close', (code) => {
      if (code === 0 && saveCode === 0) resolve();
      else reject(new Error(`docker save ${tag} | ctr images import failed (save ${saveCode}, import ${code}): ${stderr.trim()}`));
    });
  });
}

/** The contract image (worker + ACP fixture agent) in the node's containerd, under its Docker name. */
export async function ensureNodeImage(node: TestNode, tag: string = CONTRACT_IMAGE): Promise<void> {
  await ensureEngine();
  await ensureImages();
  const { stdout } = await run('docker', ['image', 'inspect', '--format', '{{.Id}}', tag]);
  const id = stdout.trim();
  const stamp = join(node.stateDir, 'containerd', `${tag.replace(/[^A-Za-z0-9_.-]/g, '_')}.id`);
  const present = (await ctr(node, ['images', 'ls', '-q', `name==${containerdRef(tag)}`])).trim() !== '';
  if (present && existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === id) return;
  const snapshotter = readFileSync(join(node.stateDir, 'containerd', 'snapshotter'), 'utf8').trim();
  await importFromDocker(node, tag, snapshotter);
  writeFileSync(stamp, `${id}\n`);
}
