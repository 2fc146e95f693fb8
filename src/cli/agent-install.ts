/**
 * Installs a known agent's pinned npm package into `<base>/<id>/`, once (a stamp names what is
 * there), for `spawngate image build --agent`. The layout is scripts/ensure-agents.sh's, so either
 * one's install serves the other.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { AgentPackage } from '../agents/catalog.js';
import { SpawngateError } from '../errors.js';

export function defaultAgentsDir(env: NodeJS.ProcessEnv = process.env): string {
  return env['SPAWNGATE_AGENTS_DIR'] || join(env['XDG_CACHE_HOME'] || join(homedir(), '.cache'), 'spawngate', 'agents');
}

export async function installAgent(agent: AgentPackage, base: string, log: (line: string) => void): Promise<string> {
  const dir = join(base, agent.id);
  const stamp = join(dir, '.spawngate-installed');
  const spec = `${agent.package}@${agent.version}`;
  const installed = await readFile(stamp, 'utf8').catch(() => '');
  if (installed.trim() === spec && existsSync(join(dir, 'node_modules', '.bin', agent.bin))) {
    log(`${agent.id}: ${spec} already installed in ${dir}`);
    return dir;
  }
  log(`${agent.id}: installing ${spec} into ${dir} with npm (a minute or more)`);
  await rm(stamp, { force: true });
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'package.json'), `${JSON.stringify({ name: `spawngate-agent-${agent.id}`, private: true })}\n`);
  // Install scripts may run the agent (opencode's does): its dotfiles go to a scratch folder, not the user's HOME.
  const scratch = join(dir, '.install-scratch');
  await mkdir(join(scratch, 'tmp'), { recursive: true });
  const env = { ...process.env, XDG_CONFIG_HOME: join(scratch, 'config'), XDG_DATA_HOME: join(scratch, 'data'), XDG_CACHE_HOME: join(scratch, 'cache'), XDG_STATE_HOME: join(scratch, 'state'), TMPDIR: join(scratch, 'tmp') };
  const args = ['install', '--prefix', dir, '--no-audit', '--no-fund', '--save-exact', '--loglevel=error', spec];
  await new Promise<void>((resolve, reject) => {
    execFile('npm', args, { env, timeout: 20 * 60_000, maxBuffer: 16 * 2 ** 20 }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'npm is not on PATH' : stderr.trim().split('\n').slice(-5).join('\n') || err.message;
      reject(new SpawngateError('DEPENDENCY_MISSING', `npm install ${spec} failed: ${why}`, { details: { agent: agent.id, dir } }));
    });
  });
  await rm(scratch, { recursive: true, force: true });
  if (!existsSync(join(dir, 'node_modules', '.bin', agent.bin))) throw new SpawngateError('DEPENDENCY_MISSING', `npm install ${spec} put no node_modules/.bin/${agent.bin} in ${dir}`);
  await writeFile(stamp, `${spec}\n`);
  return dir;
}
