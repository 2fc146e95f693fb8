/**
 * Resource limits of process workers, enforced by the kernel: each worker gets a cgroup of its own
 * (memory, cpu, pids) before it runs a single instruction of its own, and the cgroup goes with it.
 *
 * cgroup v2 (unified): one folder `<parent>/<spawnId>` with memory.max, cpu.max, pids.max.
 * cgroup v1: one folder per controller hierarchy, `<mount>/<controller><parent>/<spawnId>`, with
 * memory.limit_in_bytes (and memory.memsw.limit_in_bytes where swap is accounted), cpu.cfs_quota_us
 * and pids.max. A hybrid host (v1 controllers, an empty v2 at /sys/fs/cgroup/unified) is v1.
 *
 * The parent defaults to the gateway's own cgroup + /spawngate, in each hierarchy: workers count
 * against the service or container the gateway runs in, as its own children would.
 */
import { randomBytes } from 'node:crypto';
import { access, mkdir, readdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const CONTROLLERS = ['memory', 'cpu', 'pids'] as const;
export type Controller = (typeof CONTROLLERS)[number];

/** The file whose presence says a v1 hierarchy's group has the controller. */
const V1_KNOB: Record<Controller, string> = { memory: 'memory.limit_in_bytes', cpu: 'cpu.cfs_quota_us', pids: 'pids.max' };
const V2_KNOB: Record<Controller, string> = { memory: 'memory.max', cpu: 'cpu.max', pids: 'pids.max' };

export interface CgroupHost {
  version: 1 | 2 | null;
  /** Usable controllers: the folder under which workers' groups are made (v2: the same for all). */
  parents: Partial<Record<Controller, string>>;
  /** Why a controller cannot be used, for each one that cannot. */
  unusable: Partial<Record<Controller, string>>;
}

/** Where a worker's groups are: recorded in its state file, so a restarted gateway removes them. */
export interface CgroupPlan {
  version: 1 | 2;
  dirs: Partial<Record<Controller, string>>;
}

export interface CgroupLimits {
  memoryBytes: number | null;
  /** CPUs (e.g. 0.5); null = unlimited. */
  cpu: number | null;
  pids: number | null;
}

const CPU_PERIOD_US = 100_000;

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `${e.code}${e.path ? ` on ${e.path}` : ''}` : String((err as Error).message ?? err);
}

const exists = (path: string) => access(path).then(() => true, () => false);

/** `<hierarchy>:<path>` of this process, from /proc/self/cgroup: v2 as key "", v1 by each controller of a line. */
async function ownCgroups(): Promise<Map<string, string>> {
  const text = await readFile('/proc/self/cgroup', 'utf8').catch(() => '');
  const own = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === '') own.set('', m[2]!);
    else for (const c of m[1]!.split(',')) own.set(c, m[2]!);
  }
  return own;
}

function normalizeParent(parent: string): string {
  const p = `/${parent.replace(/^\/+|\/+$/g, '')}`;
  return p === '/' ? '' : p;
}

/** Makes `<dir>/probe-…` and removes it: proves groups can be made there and carry `knob`. */
async function probeChild(dir: string, knob: string): Promise<string | null> {
  const probe = join(dir, `probe-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await mkdir(probe);
  } catch (err) {
    return `cannot make a cgroup under ${dir}: ${errText(err)}`;
  }
  try {
    if (!(await exists(join(probe, knob)))) return `a cgroup under ${dir} has no ${knob}`;
    return null;
  } finally {
    await rmdir(probe).catch(() => undefined);
  }
}

/**
 * What this host lets the gateway enforce: it makes (and removes) a probe group in each controller
 * it wants, so "usable" means "worked just now", not "is mounted".
 */
export async function detectCgroups(mount = '/sys/fs/cgroup', parentOption?: string): Promise<CgroupHost> {
  const host: CgroupHost = { version: null, parents: {}, unusable: {} };
  const own = await ownCgroups();
  if (await exists(join(mount, 'cgroup.controllers'))) {
    host.version = 2;
    const parent = normalizeParent(parentOption ?? `${own.get('') ?? '/'}/spawngate`);
    const dir = join(mount, parent);
    const wanted = CONTROLLERS.map((c) => `+${c}`).join(' ');
    try {
      // Each level must pass the controllers down (cgroup.subtree_control) to the one below it, the
      // parent itself to the workers' groups. A level with processes in it refuses (EBUSY).
      const levels = parent.split('/').filter(Boolean);
      const atRoot = (await readFile(join(mount, 'cgroup.controllers'), 'utf8')).split(/\s+/);
      for (let i = 0; i <= levels.length; i++) {
        const level = join(mount, ...levels.slice(0, i));
        if (i > 0) await mkdir(level).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'EEXIST') throw err;
        });
        const available = (await readFile(join(level, 'cgroup.controllers'), 'utf8')).split(/\s+/);
        const enable = CONTROLLERS.filter((c) => available.includes(c)).map((c) => `+${c}`);
        if (enable.length > 0) await writeFile(join(level, 'cgroup.subtree_control'), enable.join(' ')).catch(() => undefined);
      }
      const enabled = (await readFile(join(dir, 'cgroup.subtree_control'), 'utf8')).split(/\s+/);
      for (const c of CONTROLLERS) {
        if (!atRoot.includes(c)) {
          host.unusable[c] = `the cgroup v2 hierarchy at ${mount} has no ${c} controller (it is bound to a v1 hierarchy, or not built in)`;
          continue;
        }
        if (!enabled.includes(c)) {
          host.unusable[c] = `the ${c} controller is not delegated to ${dir} (writing "${wanted}" to its cgroup.subtree_control and its parents' did not take: a cgroup with processes in it cannot pass controllers down; set isolation.cgroupParent to a cgroup the gateway may manage)`;
          continue;
        }
        const why = await probeChild(dir, V2_KNOB[c]);
        if (why) host.unusable[c] = why;
        else host.parents[c] = dir;
      }
    } catch (err) {
      for (const c of CONTROLLERS) host.unusable[c] = `cannot prepare the cgroup ${dir}: ${errText(err)}`;
    }
    return host;
  }
  let anyV1 = false;
  for (const c of CONTROLLERS) {
    const hierarchy = join(mount, c);
    if (!(await exists(join(hierarchy, 'cgroup.procs')))) {
      host.unusable[c] = `no cgroup v1 ${c} hierarchy at ${hierarchy} and no cgroup v2 at ${mount}`;
      continue;
    }
    anyV1 = true;
    const dir = join(hierarchy, normalizeParent(parentOption ?? `${own.get(c) ?? '/'}/spawngate`));
    try {
      await mkdir(dir, { recursive: true });
    } catch (err) {
      host.unusable[c] = `cannot make the cgroup ${dir}: ${errText(err)}`;
      continue;
    }
    const why = await probeChild(dir, V1_KNOB[c]);
    if (why) host.unusable[c] = why;
    else host.parents[c] = dir;
  }
  if (anyV1) host.version = 1;
  return host;
}

/** The groups of one worker, by spawn id (the same every time: a restarted gateway finds them without the state file). */
export function planCgroup(host: CgroupHost, spawnId: string): CgroupPlan | null {
  if (host.version === null) return null;
  const dirs: CgroupPlan['dirs'] = {};
  for (const c of CONTROLLERS) {
    const parent = host.parents[c];
    if (parent) dirs[c] = join(parent, spawnId);
  }
  return Object.keys(dirs).length > 0 ? { version: host.version, dirs } : null;
}

function uniqueDirs(plan: CgroupPlan): string[] {
  return [...new Set(Object.values(plan.dirs))];
}

/** The cgroup.procs files the worker's first process writes its pid into, before it execs anything else. */
export function procsFiles(plan: CgroupPlan): string[] {
  return uniqueDirs(plan).map((dir) => join(dir, 'cgroup.procs'));
}

async function writeIfPresent(file: string, value: string): Promise<void> {
  if (await exists(file)) await writeFile(file, value);
}

/** Makes the worker's groups and sets their limits; removes them again when a limit cannot be set. */
export async function createCgroup(plan: CgroupPlan, limits: CgroupLimits): Promise<void> {
  try {
    for (const dir of uniqueDirs(plan)) await mkdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    const { memory, cpu, pids } = plan.dirs;
    const quota = limits.cpu === null ? null : Math.max(1000, Math.round(limits.cpu * CPU_PERIOD_US));
    if (plan.version === 2) {
      if (memory && limits.memoryBytes !== null) {
        await writeFile(join(memory, 'memory.max'), String(limits.memoryBytes));
        // No swap beyond the limit (as the kubelet does), and an OOM kill takes the whole worker, not a random child.
        await writeIfPresent(join(memory, 'memory.swap.max'), '0');
      }
      if (memory) await writeIfPresent(join(memory, 'memory.oom.group'), '1');
      if (cpu && quota !== null) await writeFile(join(cpu, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`);
      if (pids && limits.pids !== null) await writeFile(join(pids, 'pids.max'), String(limits.pids));
    } else {
      if (memory && limits.memoryBytes !== null) {
        await writeFile(join(memory, 'memory.limit_in_bytes'), String(limits.memoryBytes));
        await writeIfPresent(join(memory, 'memory.memsw.limit_in_bytes'), String(limits.memoryBytes));
      }
      if (cpu && quota !== null) {
        await writeFile(join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
        await writeFile(join(cpu, 'cpu.cfs_quota_us'), String(quota));
      }
      if (pids && limits.pids !== null) await writeFile(join(pids, 'pids.max'), String(limits.pids));
    }
  } catch (err) {
    await removeCgroup(plan).catch(() => undefined);
    throw err;
  }
}

/** How many processes the kernel's OOM killer killed in the worker's memory group (0 when unknown). */
export async function oomKills(plan: CgroupPlan): Promise<number> {
  const dir = plan.dirs.memory;
  if (!dir) return 0;
  const text = await readFile(join(dir, plan.version === 2 ? 'memory.events' : 'memory.oom_control'), 'utf8').catch(() => '');
  return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0);
}

async function pidsIn(dir: string): Promise<number[]> {
  const text = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map(Number);
}

/** SIGKILLs everything in the worker's groups, also what left its process group (setsid); bounded. */
export async function killCgroup(plan: CgroupPlan): Promise<boolean> {
  const dirs = uniqueDirs(plan);
  if (plan.version === 2) for (const dir of dirs) await writeIfPresent(join(dir, 'cgroup.kill'), '1').catch(() => undefined);
  for (let round = 0; round < 100; round++) {
    let left = 0;
    for (const dir of dirs) {
      for (const pid of await pidsIn(dir)) {
        left++;
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    }
    if (left === 0) return true;
    await sleep(round < 10 ? 10 : 50);
  }
  return false;
}

/** Kills what is left in the worker's groups and removes them; idempotent. */
export async function removeCgroup(plan: CgroupPlan): Promise<void> {
  await killCgroup(plan);
  for (const dir of uniqueDirs(plan)) {
    // A killed process leaves its group once its parent reaped it: a few retries.
    for (let attempt = 0; ; attempt++) {
      try {
        await rmdir(dir);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        if (code !== 'EBUSY' || attempt >= 100) throw err;
        await sleep(50);
      }
    }
  }
}

/** Whether a folder is a cgroup that still exists (for tests and doctor). */
export async function cgroupExists(dir: string): Promise<boolean> {
  return stat(dir).then((s) => s.isDirectory(), () => false);
}

/**
 * Removes workers' groups nobody will delete (their spawn's folder was removed by hand): under each
 * parent, an empty group older than `minAgeMs` whose spawn `isLive` denies. Returns the folders removed.
 */
export async function collectCgroups(host: CgroupHost, isLive: (spawnId: string) => Promise<boolean>, minAgeMs = 10 * 60_000): Promise<string[]> {
  const removed: string[] = [];
  for (const parent of new Set(Object.values(host.parents))) {
    const names = await readdir(parent, { withFileTypes: true }).catch(() => []);
    for (const entry of names) {
      if (!entry.isDirectory() || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(entry.name)) continue;
      const dir = join(parent, entry.name);
      const age = await stat(dir).then((st) => Date.now() - st.mtimeMs, () => 0);
      if (age < minAgeMs || (await pidsIn(dir)).length > 0 || (await isLive(entry.name))) continue;
      if (await rmdir(dir).then(() => true, () => false)) removed.push(dir);
    }
  }
  return removed;
}
