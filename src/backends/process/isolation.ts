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

/**
 * The last step before the worker: starts the worker's agent beside it, so that the two Node boots
 * (each most of a cold start) overlap instead of following each other. Runs as the worker's uid in
 * its namespaces and cgroup, like the worker. Arguments: FIFO folder, n, m, m `NAME=value` pairs
 * (the agent's additions to the worker's environment), the n words of the agent's argv, the
 * worker's argv. The agent gets its stdio from three FIFOs, in its own process group (setsid, as
 * the worker's own agent launch makes one), without the worker's credential; the worker, exec'd
 * from this shell, is the agent's parent and finds its pid in SPAWNGATE_PRELAUNCH_PID. Every FIFO is
 * opened here, before the fork: read-write ends first (6, 7, 8: opening a FIFO for one direction
 * blocks until the other end is open), then the agent's ends (3, 4, 5), so the agent holds its
 * ends from the moment it exists and the worker, whenever it boots, opens its own by path and
 * closes 6-8 (worker/agent-process.ts). Where mkfifo fails the worker starts its agent itself.
 */
export const AGENT_PRELAUNCH = [
  '/bin/sh',
  '-c',
  [
    'd=$1 n=$2 m=$3; shift 3',
    'if mkfifo -m 600 "$d/in" "$d/out" "$d/err" 2>/dev/null; then',
    '  exec 6<>"$d/in" 7<>"$d/out" 8<>"$d/err"',
    '  exec 3<"$d/in" 4>"$d/out" 5>"$d/err"',
    '  (',
    '    unset SPAWNGATE_WORKER_TOKEN SPAWNGATE_PRELAUNCH_DIR SPAWNGATE_PRELAUNCH_SUM',
    '    i=0',
    '    for a do',
    '      i=$((i + 1))',
    '      if [ "$i" -le "$m" ]; then export "$a"; elif [ "$i" -le $((m + n)) ]; then set -- "$@" "$a"; fi',
    '    done',
    '    shift "$i"',
    '    exec setsid "$@" <&3 >&4 2>&5 3<&- 4>&- 5>&- 6>&- 7>&- 8>&-',
    '  ) &',
    '  SPAWNGATE_PRELAUNCH_PID=$!',
    '  export SPAWNGATE_PRELAUNCH_PID',
    '  exec 3<&- 4>&- 5>&-',
    'fi',
    'shift $((m + n))',
    'exec "$@"',
  ].join('\n'),
  'spawngate-prelaunch',
] as const;

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
