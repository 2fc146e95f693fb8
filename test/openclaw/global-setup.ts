/**
 * Installs the pinned OpenClaw (cached in .tools/openclaw) and prepares the plugin folder as an
 * operator would: integrations/openclaw/ with the packed spawngate npm-installed into it. A failure
 * here fails the suite (never a skip): the suite exists to prove the plugin against a real gateway.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureEngine, ensureImages } from '../docker/engine.js';
import { PLUGIN_DIR, ROOT } from './harness.js';

export default async function setup(): Promise<void> {
  // ACP sessions also run on the Docker backend: the engine and the worker image (both cached).
  await ensureEngine();
  await ensureImages();
  const run = (cmd: string, args: string[], cwd = ROOT) => execFileSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` } }).toString();
  run('bash', ['scripts/ensure-openclaw.sh']);
  // The gateway suite shares caps through Redis, as replicas of a real deployment would.
  run('bash', ['scripts/ensure-redis.sh']);
  // The plugin runs the built package, as users get it.
  run('npm', ['run', '--silent', 'build']);
  const packDir = join(ROOT, '.cache/pack');
  rmSync(packDir, { recursive: true, force: true });
  mkdirSync(packDir, { recursive: true });
  run('npm', ['pack', '--ignore-scripts', '--pack-destination', packDir]);
  const tarball = readdirSync(packDir).find((f) => f.endsWith('.tgz'));
  if (!tarball) throw new Error('npm pack produced no tarball');
  rmSync(PLUGIN_DIR, { recursive: true, force: true });
  mkdirSync(PLUGIN_DIR, { recursive: true });
  for (const f of ['index.js', 'package.json', 'openclaw.plugin.json']) cpSync(join(ROOT, 'integrations/openclaw', f), join(PLUGIN_DIR, f));
  // --prefer-offline: the dependencies are in npm's cache after `npm ci`; the registry is only asked for what is not.
  // ioredis, dockerode, @kubernetes/client-node: spawngate's optional peers for the Redis store and the Docker and Kubernetes backends, installed beside it as an operator would.
  run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--omit=peer', join(packDir, tarball), 'ioredis@^5', 'dockerode@^5', '@kubernetes/client-node@^2'], PLUGIN_DIR);
}
