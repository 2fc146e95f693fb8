import { lstat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';

/**
 * A unix socket left behind by a crashed process blocks listen(); remove it only if nobody answers
 * on it, so a second instance never steals a live one's socket.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  const stat = await lstat(path).catch(() => null);
  if (!stat?.isSocket()) return;
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (!alive) await unlink(path).catch(() => undefined);
}
