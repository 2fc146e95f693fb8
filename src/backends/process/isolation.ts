import { execFile } from 'node:child_process';

/** An empty network namespace made by an unprivileged user: in a user namespace of its own, mapped to root in it. */
export const UNSHARE_ARGS = ['--user', '--map-root-user', '--net', '--'] as const;

/** An empty network namespace made by a gateway with CAP_SYS_ADMIN, before it drops to the worker's uid: no user namespace needed. */
export const UNSHARE_NET_ARGS = ['--net', '--'] as const;

/** Put after UNSHARE_ARGS: brings the new namespace's loopback up, then runs the command that follows (as $0 "$@"). */
export const LOOPBACK_UP = ['sh', '-c', 'ip link set lo up && exec "$0" "$@"'] as const;

/**
 * The first process of a worker with a cgroup: writes its own pid into each cgroup.procs given
 * before `--`, then execs the rest. It runs as the gateway's user, so nothing of the worker's runs
 * before it is inside its limits; a write that fails stops it (exit 125) before anything else runs.
 */
export const CGROUP_GATE = ['/bin/sh', '-c', 'for f do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"', 'spawngate-cgroup-gate'] as const;

export type IsolationProbe = { ok: true } | { ok: false; reason: string };

/**
 * Whether this host can give a process worker an empty network namespace (egress "none"):
 * `unshare` from util-linux, and user namespaces the kernel lets this user create (or, with `args`
 * UNSHARE_NET_ARGS, the privilege to make one without). Runs `true` inside one, bounded; `before`
 * comes first (e.g. setpriv, to probe as the worker's uid).
 */
export function probeNetworkIsolation(unshare = 'unshare', timeoutMs = 5000, prefix: readonly string[] = [], args: readonly string[] = UNSHARE_ARGS, before: readonly string[] = []): Promise<IsolationProbe> {
  return new Promise((resolve) => {
    const argv = [...before, unshare, ...args, ...prefix, 'true'];
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs }, (err, _stdout, stderr) => {
      if (!err) return resolve({ ok: true });
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${argv[0]} not found` : (stderr.trim() || err.message);
      resolve({ ok: false, reason: why });
    });
  });
}
