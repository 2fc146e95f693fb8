import { readFileSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';

/**
 * A small procfs file (a process's stat or status), read synchronously: the kernel makes its text
 * on read, in microseconds, and no disk is involved. fs/promises' readFile takes about five
 * thread-pool round trips for one (0.15 ms against 0.012 here, and several ms on a busy 2-core
 * host), and a spawn read some on its critical path.
 */
export function readProcText(path: string): string {
  return readFileSync(path, 'utf8');
}

/**
 * Process identity on Linux: a pid is only "ours" if its start time (clock ticks since boot,
 * /proc/<pid>/stat field 22) matches what we recorded at spawn. PIDs are recycled; start times of
 * a recycled pid differ, so a stale state file can never make us signal a stranger.
 */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readProcText(`/proc/${pid}/stat`);
    // comm (field 2) may contain spaces and parentheses: fields are counted after its closing ")".
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); field 22 is rest[19]. A zombie has exited: treat it as gone.
    if (rest[0] === 'Z') return null;
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

export function isOurProcess(pid: number, startTime: string): boolean {
  return processStartTime(pid) === startTime;
}

/** Signals the whole process group (the worker and its agent) — never a bare pid of unknown origin. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

export interface ProcessIdentity {
  pid: number;
  startTime: string;
}

function statFields(pid: number): { state: string; ppid: number; startTime: string } | null {
  try {
    const stat = readProcText(`/proc/${pid}/stat`);
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const startTime = rest[19];
    if (rest[0] === undefined || startTime === undefined) return null;
    return { state: rest[0], ppid: Number(rest[1]), startTime };
  } catch {
    return null;
  }
}

/**
 * Finds the live process that was started with `name=value` in its environment, by reading
 * /proc/<pid>/environ of this user's processes. The environment is fixed at exec, before the
 * program runs a single instruction, so this finds a worker whose pid the gateway never got to
 * record (killed between the spawn and the state write), whatever command the worker runs and
 * however early it dies. When children inherited the variable (the worker's agent), the topmost
 * match wins: the one whose parent does not carry it too. `alsoUid`: the uid the worker was leased,
 * whose processes are searched too (reading their environment needs CAP_SYS_PTRACE; without it the
 * caller finds them by their uid instead).
 */
export async function findProcessByEnv(name: string, value: string, alsoUid: number | null = null): Promise<ProcessIdentity | null> {
  const wanted = `${name}=${value}`;
  const uid = typeof process.getuid === 'function' ? process.getuid() : null;
  // A worker under a uid of its own (leased to it alone) carries that uid once it dropped to it.
  const uids = new Set([uid, alsoUid].filter((u): u is number => u !== null));
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return null;
  }
  const matches = new Map<number, { ppid: number; startTime: string }>();
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    try {
      // Only our own processes: a stranger's process that copies the variable must never be signalled.
      if (uids.size > 0 && !uids.has((await stat(`/proc/${pid}`)).uid)) continue;
      const environ = await readFile(`/proc/${pid}/environ`, 'latin1');
      if (!environ.split('\0').includes(wanted)) continue;
    } catch {
      continue; // exited meanwhile, or not readable
    }
    const fields = statFields(pid);
    if (!fields || fields.state === 'Z') continue;
    matches.set(pid, { ppid: fields.ppid, startTime: fields.startTime });
  }
  for (const [pid, match] of matches) {
    if (!matches.has(match.ppid)) return { pid, startTime: match.startTime };
  }
  return null;
}
