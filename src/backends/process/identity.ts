/**
 * Worker identities of the process backend: each worker runs under a uid (and the gid of the same
 * number) of its own, leased from a range, with no supplementary groups. The gateway drops to it
 * with setpriv after it has put the worker into its cgroup and network namespace.
 *
 * Leases live in /run/spawngate/uids (see createUidPool): two workers never hold one uid,
 * whichever gateway process made them, whatever its stateDir (the folder is the host's, not a
 * backend's). /run is emptied at boot, as are the workers. A lease is released only once no
 * process of its uid is left.
 */
import { execFile } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdir, readdir, readFile, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { readProcText } from '../../procfs.js';

/** Linux capability numbers (include/uapi/linux/capability.h) the uid mode needs, and the one that lets the gateway make network namespaces itself. */
export const CAPABILITIES = {
  CAP_CHOWN: 0,
  CAP_DAC_OVERRIDE: 1,
  CAP_FOWNER: 3,
  CAP_KILL: 5,
  CAP_SETGID: 6,
  CAP_SETUID: 7,
  CAP_SYS_ADMIN: 21,
} as const;

export type CapabilityName = keyof typeof CAPABILITIES;

/**
 * What the gateway needs to run workers under uids of their own: switch uid and gid (setpriv), hand
 * the worker its folders (chown), and stop and clean up after it whatever it did (signal and remove
 * another uid's processes and files).
 */
export const UID_MODE_CAPABILITIES: readonly CapabilityName[] = ['CAP_SETUID', 'CAP_SETGID', 'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_KILL'];

export interface Privileges {
  uid: number;
  gid: number;
  /** Effective capabilities, by name (only those spawngate cares about). */
  capabilities: ReadonlySet<CapabilityName>;
}

/** This process's uid and effective capabilities, from /proc/self/status. */
export async function readPrivileges(statusText?: string): Promise<Privileges> {
  const text = statusText ?? (await readFile('/proc/self/status', 'utf8').catch(() => ''));
  const capEff = /^CapEff:\s*([0-9a-f]+)$/im.exec(text)?.[1];
  const bits = capEff ? BigInt(`0x${capEff}`) : 0n;
  const capabilities = new Set<CapabilityName>();
  for (const [name, bit] of Object.entries(CAPABILITIES) as [CapabilityName, number][]) if ((bits >> BigInt(bit)) & 1n) capabilities.add(name);
  return { uid: process.getuid?.() ?? -1, gid: process.getgid?.() ?? -1, capabilities };
}

export function missingForUidMode(privileges: Privileges): CapabilityName[] {
  return UID_MODE_CAPABILITIES.filter((cap) => !privileges.capabilities.has(cap));
}

/** setpriv's arguments that become `uid`: that uid and gid, no supplementary groups, no inheritable capabilities, no privileges from setuid files. */
export function dropArgs(uid: number, gid: number): string[] {
  return ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--inh-caps=-all', '--no-new-privs', '--'];
}

export type DropProbe = { ok: true } | { ok: false; reason: string };

/** Whether setpriv is there and can drop to `uid` here: runs `true` under it, bounded. */
export function probeDrop(uid: number, timeoutMs = 5000): Promise<DropProbe> {
  return new Promise((resolve) => {
    const [cmd, ...args] = dropArgs(uid, uid);
    execFile(cmd!, [...args, 'true'], { timeout: timeoutMs }, (err, _stdout, stderr) => {
      if (!err) return resolve({ ok: true });
      resolve({ ok: false, reason: (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'setpriv (util-linux) not found' : stderr.trim() || err.message });
    });
  });
}

interface ProcUids {
  pid: number;
  ppid: number;
  uids: number[];
  zombie: boolean;
}

function procUids(pid: number): ProcUids | null {
  try {
    const status = readProcText(`/proc/${pid}/status`);
    const uids = /^Uid:\s*(.*)$/m.exec(status)?.[1]?.trim().split(/\s+/).map(Number) ?? [];
    const ppid = Number(/^PPid:\s*(\d+)/m.exec(status)?.[1] ?? 0);
    const zombie = /^State:\s*[ZX]/m.test(status);
    return { pid, ppid, uids, zombie };
  } catch {
    return null;
  }
}

/**
 * Status files read between two turns of the event loop: read synchronously (readProcText), about
 * 15 µs each, so a slice holds the loop for about 2 ms however many processes the host runs. Read
 * through fs/promises, the scan of a quiet host (70 processes) took 2.5-6 ms of a spawn's critical
 * path against 1.1 ms.
 */
const PROC_READ_SLICE = 128;

/** Every live (not zombie) process with its uids, from one pass over /proc. */
async function liveProcesses(): Promise<ProcUids[]> {
  let entries: string[];
  try {
    entries = (await readdir('/proc')).filter((entry) => /^\d+$/.test(entry));
  } catch {
    return [];
  }
  const live: ProcUids[] = [];
  for (let i = 0; i < entries.length; i += PROC_READ_SLICE) {
    if (i > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    for (const entry of entries.slice(i, i + PROC_READ_SLICE)) {
      const proc = procUids(Number(entry));
      if (proc && !proc.zombie) live.push(proc);
    }
  }
  return live;
}

/** Live (not zombie) processes any of whose real, effective, saved or file-system uid is `uid`. */
export async function processesOfUid(uid: number): Promise<ProcUids[]> {
  return (await liveProcesses()).filter((proc) => proc.uids.includes(uid));
}

/** The first process of `uid` whose parent is not of `uid` too: the worker, when nothing else runs as its uid. */
export async function topmostOfUid(uid: number): Promise<number | null> {
  const procs = await processesOfUid(uid);
  const pids = new Set(procs.map((p) => p.pid));
  return procs.find((p) => !pids.has(p.ppid))?.pid ?? null;
}

/**
 * SIGKILLs every process of `uid` until none is left (a forking process is outrun round by round).
 * Returns whether none is left.
 */
export async function killUid(uid: number, rounds = 100): Promise<boolean> {
  for (let round = 0; round < rounds; round++) {
    const procs = await processesOfUid(uid);
    if (procs.length === 0) return true;
    for (const p of procs) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    await sleep(round < 10 ? 10 : 50);
  }
  return (await processesOfUid(uid)).length === 0;
}

let accountIds: Promise<{ uids: Set<number>; gids: Set<number> }> | null = null;

/** Uids and gids named in /etc/passwd and /etc/group: never leased, whatever the range says. */
function knownAccounts(): Promise<{ uids: Set<number>; gids: Set<number> }> {
  const ids = (text: string) => new Set(text.split('\n').map((line) => Number(line.split(':')[2])).filter((n) => Number.isInteger(n)));
  accountIds ??= Promise.all([readFile('/etc/passwd', 'utf8').catch(() => ''), readFile('/etc/group', 'utf8').catch(() => '')]).then(([passwd, group]) => ({ uids: ids(passwd), gids: ids(group) }));
  return accountIds;
}

export interface UidRange {
  start: number;
  count: number;
}

/**
 * 2,000,000,000 + 65,536: below 2^31 (software that keeps uids in a signed int breaks above it),
 * far above login users (≤ 60000), systemd's dynamic users (61184–65519) and nobody (65534), the
 * blocks useradd hands out in /etc/subuid (100000 + 65536·n) and systemd-nspawn's container range
 * (up to 1879048191). Configurable: isolation.uidRange.
 */
export const DEFAULT_UID_RANGE: UidRange = { start: 2_000_000_000, count: 65_536 };

/** Where every gateway of the host keeps its uid leases. */
export const DEFAULT_UID_LEASE_DIR = '/run/spawngate/uids';

export interface UidLease {
  spawnId: string;
  /** The stateDir of the gateway that leased it: where the spawn's folder is. */
  stateDir: string;
}

export interface UidPool {
  /** A uid (its gid the same number) leased to `spawnId` of `stateDir`; throws when the range is used up. */
  acquire(spawnId: string, stateDir: string): Promise<number>;
  /** Whether `uid` is leased to `spawnId` right now. */
  holds(uid: number, spawnId: string): Promise<boolean>;
  /** SIGKILLs every process of each uid leased to `spawnId`; throws when some survive. */
  kill(spawnId: string): Promise<void>;
  /** Kills (as kill()), then releases each uid leased to `spawnId`. Idempotent. */
  release(spawnId: string): Promise<void>;
  /** Leases held now, by uid. */
  leases(): Promise<Map<number, UidLease>>;
  /**
   * Releases leases whose spawn's folder is gone (removed by hand, not by delete) and whose uid runs
   * no process: nothing can reach them any more. Returns the uids released.
   */
  collect(options?: { minAgeMs?: number }): Promise<number[]>;
}

/** Uids any live process runs as (real, effective, saved or file-system), from one pass over /proc. */
async function uidsInUse(): Promise<Set<number>> {
  return new Set((await liveProcesses()).flatMap((proc) => proc.uids));
}

/**
 * A lease is a folder `<dir>/<uid>` holding one marker file named by the spawn id (its content: the
 * stateDir). mkdir(2) makes the folder only if it does not exist; a marker is removed only by its
 * own name. A taker checks, after writing its marker, that the folder holds its marker alone (a
 * folder removed and made again between its mkdir and its write is then seen and left), so no two
 * spawns ever hold one uid, and releasing or collecting one spawn's lease cannot touch another's.
 */
export function createUidPool(dir: string, range: UidRange): UidPool {
  const leaseDir = (uid: number) => join(dir, String(uid));
  const marker = (uid: number, spawnId: string) => join(dir, String(uid), spawnId);
  /** Drops one spawn's marker, then the folder if it is empty now (a newer taker's keeps it). */
  const drop = async (uid: number, spawnId: string) => {
    await rm(marker(uid, spawnId), { force: true });
    await rmdir(leaseDir(uid)).catch(() => undefined);
  };

  async function leases(): Promise<Map<number, UidLease>> {
    const held = new Map<number, UidLease>();
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!/^\d+$/.test(name)) continue;
      for (const spawnId of await readdir(join(dir, name)).catch(() => [] as string[])) {
        const stateDir = await readFile(join(dir, name, spawnId), 'utf8').catch(() => null);
        if (stateDir !== null && !held.has(Number(name))) held.set(Number(name), { spawnId, stateDir: stateDir.trim() });
      }
    }
    return held;
  }

  async function uidsOf(spawnId: string): Promise<number[]> {
    const uids: number[] = [];
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (/^\d+$/.test(name) && (await stat(join(dir, name, spawnId)).then(() => true, () => false))) uids.push(Number(name));
    }
    return uids;
  }

  const pool: UidPool = {
    async acquire(spawnId, stateDir) {
      const { uids, gids } = await knownAccounts();
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // From a random place in the range, not the lowest free uid: a released uid comes back late
      // (files a worker left in world-writable places such as /tmp stay owned by its uid).
      const first = randomInt(range.count);
      for (let i = 0; i < range.count; i++) {
        const uid = range.start + ((first + i) % range.count);
        if (uids.has(uid) || gids.has(uid)) continue;
        try {
          await mkdir(leaseDir(uid), { mode: 0o700 });
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue;
          throw err;
        }
        const written = await writeFile(marker(uid, spawnId), `${stateDir}\n`, { flag: 'wx', mode: 0o600 }).then(() => true, () => false);
        const alone = written && (await readdir(leaseDir(uid)).catch(() => [] as string[])).join('/') === spawnId;
        // A process of this uid that no lease accounts for (another program's, or left by hand)
        // would share the worker's identity: the uid is skipped.
        if (!alone || (await processesOfUid(uid)).length > 0) {
          if (written) await drop(uid, spawnId);
          continue;
        }
        return uid;
      }
      throw new Error(`every uid of ${range.start}–${range.start + range.count - 1} is leased to a live worker (isolation.uidRange)`);
    },

    async holds(uid, spawnId) {
      return stat(marker(uid, spawnId)).then(() => true, () => false);
    },

    async kill(spawnId) {
      for (const uid of await uidsOf(spawnId)) {
        if (!(await killUid(uid))) throw new Error(`processes of uid ${uid} (worker ${spawnId}) survived 100 rounds of SIGKILL; its lease is kept`);
      }
    },

    async release(spawnId) {
      await pool.kill(spawnId);
      for (const uid of await uidsOf(spawnId)) await drop(uid, spawnId);
    },

    leases,

    async collect({ minAgeMs = 60_000 } = {}) {
      const inUse = await uidsInUse();
      const released: number[] = [];
      const old = async (path: string) => (await stat(path).then((st) => Date.now() - st.mtimeMs, () => 0)) >= minAgeMs;
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        if (!/^\d+$/.test(name)) continue;
        const uid = Number(name);
        const markers = await readdir(leaseDir(uid)).catch(() => null);
        if (markers === null) continue;
        // A folder without a marker: a taker that died between its mkdir and its write.
        if (markers.length === 0) {
          if (await old(leaseDir(uid))) await rmdir(leaseDir(uid)).catch(() => undefined);
          continue;
        }
        if (inUse.has(uid)) continue;
        for (const spawnId of markers) {
          const stateDir = (await readFile(marker(uid, spawnId), 'utf8').catch(() => '')).trim();
          // A lease is taken only once its spawn's folder exists, and released before that folder is removed.
          if (!stateDir.startsWith('/') || !(await old(marker(uid, spawnId)))) continue;
          const gone = async (name: string) => !(await stat(join(stateDir, name)).then(() => true, () => false));
          if ((await gone(spawnId)) && (await gone(`.creating-${spawnId}`))) {
            await drop(uid, spawnId);
            released.push(uid);
          }
        }
      }
      return released;
    },
  };
  return pool;
}
