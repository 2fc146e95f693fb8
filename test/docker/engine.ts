/**
 * Test support for the Docker backend: a real engine (started by scripts/ensure-docker.sh when it
 * is not running) and the worker images built from this checkout. Nothing here is skipped when the
 * engine is missing: the setup fails, and with it every test that needs it.
 */
import { execFile } from 'node:child_process';
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

/** The default worker image and one with the ACP test fixture added; both no-ops when up to date. */
export async function ensureImages(): Promise<void> {
  const log = (line: string): void => void process.stdout.write(`image: ${line}\n`);
  await buildWorkerImage({ log });
  await buildWorkerImage({ tag: CONTRACT_IMAGE, extraFiles: [{ source: fixtureSource, path: fixtureInImage }], log });
}

export function engine(): Docker {
  return new Docker();
}
