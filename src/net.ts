import { lstat, unlink } from 'node:fs/promises';
import { connect, type Server } from 'node:net';

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

export type ListenAddress = { port: number; host?: string } | { socketPath: string };

/** `server.listen` as a promise that rejects on the listen error (EADDRINUSE, EACCES) instead of emitting it. Port binds default to loopback. */
export function listen(server: Server, where: ListenAddress, options: { socketWritableByAll?: boolean } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    if ('socketPath' in where) {
      const shared = options.socketWritableByAll === true;
      server.listen({ path: where.socketPath, writableAll: shared, readableAll: shared }, onListening);
    } else server.listen(where.port, where.host ?? '127.0.0.1', onListening);
  });
}
