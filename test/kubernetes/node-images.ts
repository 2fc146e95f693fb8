/**
 * Images for pods on the real test node: built by Docker (test/docker/engine.ts, which also gives
 * the contract image its ACP fixture agent and fixture repository), then copied into the node's
 * private containerd by scripts/k8s-node-image.sh (`docker save | ctr import`, since no registry is
 * reachable here), which skips an image whose Docker id it imported before.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestNode } from '../k8s-infra/global-setup.js';
import { CONTRACT_IMAGE, ensureEngine, ensureImages, repoRoot } from '../docker/engine.js';

const run = promisify(execFile);

export { CONTRACT_IMAGE, fixtureInImage } from '../docker/engine.js';

/** The image `tag` (by default the contract image: worker + ACP fixture agent) in the node's containerd, under its Docker name. */
export async function ensureNodeImage(node: TestNode, tag: string = CONTRACT_IMAGE): Promise<void> {
  await ensureEngine();
  await ensureImages();
  try {
    await run('bash', [join(repoRoot, 'scripts', 'k8s-node-image.sh'), tag], { env: { ...process.env, SPAWNGATE_K8S_NODE_STATE_DIR: node.stateDir }, timeout: 15 * 60_000 });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`importing ${tag} into the test node failed: ${e.stderr?.trim() || e.message}`, { cause: err });
  }
}
