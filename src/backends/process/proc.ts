import { readdir, readFile, stat } from 'node:fs/promises';
import { procStatFields } from '../../procfs.js';

/**
 * Process identity on Linux: a pid is only "ours" if its start time (clock ticks since boot,
 * /proc/<pid>/stat field 22) matches what we recorded at spawn. PIDs are recycled; start times of
 * a recycled pid differ, so a stale state file can never make us signal a stranger.
 */
export function processStartTime(pid: number): string | null {
  const fields = procStatFields(pid);
  // Field 22 is the start time. A zombie has exited: treat it as gone.
  if (!fields || fields[0] === 'Z') return null;
  return fields[19] ?? null;
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
  const fields = procStatFields(pid);
  const [state, ppid] = fields ?? [];
  const startTime = fields?.[19];
  if (state === undefined || startTime === undefined) return null;
  return { state, ppid: Number(ppid), startTime };
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
