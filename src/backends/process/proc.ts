import { readFile } from 'node:fs/promises';

/**
 * Process identity on Linux: a pid is only "ours" if its start time (clock ticks since boot,
 * /proc/<pid>/stat field 22) matches what we recorded at spawn. PIDs are recycled; start times of
 * a recycled pid differ, so a stale state file can never make us signal a stranger.
 */
export async function processStartTime(pid: number): Promise<string | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parentheses: fields are counted after its closing ")".
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); field 22 is rest[19]. A zombie has exited: treat it as gone.
    if (rest[0] === 'Z') return null;
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

export async function isOurProcess(pid: number, startTime: string): Promise<boolean> {
  return (await processStartTime(pid)) === startTime;
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
