import { execFile } from 'node:child_process';

export const UNSHARE_ARGS = ['--user', '--map-root-user', '--net', '--'] as const;

export type IsolationProbe = { ok: true } | { ok: false; reason: string };

/**
 * Whether this host can give a process worker an empty network namespace (egress "none"):
 * `unshare` from util-linux, and user namespaces the kernel lets this user create. Runs `true`
 * inside one, bounded.
 */
export function probeNetworkIsolation(unshare = 'unshare', timeoutMs = 5000): Promise<IsolationProbe> {
  return new Promise((resolve) => {
    execFile(unshare, [...UNSHARE_ARGS, 'true'], { timeout: timeoutMs }, (err, _stdout, stderr) => {
      if (!err) return resolve({ ok: true });
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${unshare} not found` : (stderr.trim() || err.message);
      resolve({ ok: false, reason: why });
    });
  });
}
