import { execFile } from 'node:child_process';

export const UNSHARE_ARGS = ['--user', '--map-root-user', '--net', '--'] as const;

/** Put after UNSHARE_ARGS: brings the new namespace's loopback up, then runs the command that follows (as $0 "$@"). */
export const LOOPBACK_UP = ['sh', '-c', 'ip link set lo up && exec "$0" "$@"'] as const;

export type IsolationProbe = { ok: true } | { ok: false; reason: string };

/**
 * Whether this host can give a process worker an empty network namespace (egress "none"):
 * `unshare` from util-linux, and user namespaces the kernel lets this user create. Runs `true`
 * inside one, bounded.
 */
export function probeNetworkIsolation(unshare = 'unshare', timeoutMs = 5000, prefix: readonly string[] = []): Promise<IsolationProbe> {
  return new Promise((resolve) => {
    execFile(unshare, [...UNSHARE_ARGS, ...prefix, 'true'], { timeout: timeoutMs }, (err, _stdout, stderr) => {
      if (!err) return resolve({ ok: true });
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${unshare} not found` : (stderr.trim() || err.message);
      resolve({ ok: false, reason: why });
    });
  });
}
