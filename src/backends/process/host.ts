/**
 * What the process backend can enforce on this host, found out once per backend object: under which
 * identity workers run (a uid of their own, or the gateway's), and which cgroup controllers limit
 * them. The backend refuses a spawn it cannot isolate as configured; `spawngate doctor` prints it.
 */
import type { WorkerSpec } from '../types.js';
import { detectCgroups, type CgroupHost, type Controller } from './cgroups.js';
import { DEFAULT_UID_RANGE, dropArgs, missingForUidMode, probeDrop, readPrivileges, type CapabilityName, type Privileges, type UidRange } from './identity.js';
import { LOOPBACK_UP, probeNetworkIsolation, UNSHARE_ARGS, UNSHARE_NET_ARGS, type IsolationProbe } from './isolation.js';

export type UserMode = 'uid' | 'none';
export type CgroupMode = 'auto' | 'required' | 'off';

export interface ProcessIsolationOptions {
  /** "uid" (default): a uid and gid of its own per worker, from uidRange. "none": workers share the gateway's identity. */
  user?: UserMode;
  uidRange?: UidRange;
  /** "auto" (default): use what the host has, refuse a profile whose limits it cannot enforce; "required": refuse every spawn without memory, cpu and pids; "off": no cgroups (profiles with limits are refused). */
  cgroups?: CgroupMode;
  /** The cgroup under which workers' groups are made (a path inside each hierarchy); default the gateway's own + /spawngate. */
  cgroupParent?: string;
  /** pids.max of a worker whose profile sets no pidsLimit; default DEFAULT_PIDS_MAX. */
  pidsMax?: number;
}

/**
 * Threads count as pids: a Node worker and a Node agent use a few dozen, a build with -j on many
 * cores a few hundred. 1024 leaves them room and stops a fork bomb long before the host's pid_max.
 */
export const DEFAULT_PIDS_MAX = 1024;

export interface IdentityReport {
  mode: UserMode;
  /** Whether workers can run under uids of their own here (always true for mode "none"). */
  ok: boolean;
  /** Why not, when not. */
  reason: string | null;
  uid: number;
  missing: CapabilityName[];
  range: UidRange;
  /** The gateway can make network namespaces itself (CAP_SYS_ADMIN) and drops to the worker's uid inside; else the worker makes one in a user namespace of its own. */
  netnsBeforeDrop: boolean;
}

export interface CgroupReport {
  mode: CgroupMode;
  /** null when mode is "off". */
  host: CgroupHost | null;
  pidsMax: number;
}

export interface ProcessHostReport {
  identity: IdentityReport;
  cgroups: CgroupReport;
}

export async function inspectProcessHost(isolation: ProcessIsolationOptions = {}, overrides: { privileges?: Privileges; cgroupMount?: string } = {}): Promise<ProcessHostReport> {
  const mode = isolation.user ?? 'uid';
  const range = isolation.uidRange ?? DEFAULT_UID_RANGE;
  const privileges = overrides.privileges ?? (await readPrivileges());
  const missing = missingForUidMode(privileges);
  let reason: string | null = null;
  if (mode === 'uid') {
    if (missing.length > 0) reason = `the gateway runs as uid ${privileges.uid} without ${missing.join(', ')}`;
    else {
      const probe = await probeDrop(range.start);
      if (!probe.ok) reason = `setpriv cannot drop to uid ${range.start}: ${probe.reason}`;
    }
  }
  const identity: IdentityReport = { mode, ok: mode === 'none' || reason === null, reason, uid: privileges.uid, missing, range, netnsBeforeDrop: privileges.capabilities.has('CAP_SYS_ADMIN') };
  const cgroupMode = isolation.cgroups ?? 'auto';
  const host = cgroupMode === 'off' ? null : await detectCgroups(overrides.cgroupMount, isolation.cgroupParent);
  return { identity, cgroups: { mode: cgroupMode, host, pidsMax: isolation.pidsMax ?? DEFAULT_PIDS_MAX } };
}

export function parseCpu(quantity: string | null): number | null {
  if (!quantity) return null;
  const m = /^(\d+(?:\.\d+)?)(m)?$/.exec(quantity);
  if (!m) return null;
  return Number(m[1]) / (m[2] ? 1000 : 1);
}

/** The controllers a spec's limits need, each with the profile field that asks for it. */
export function neededControllers(spec: WorkerSpec): { controller: Controller; field: string; value: string }[] {
  const needed: { controller: Controller; field: string; value: string }[] = [];
  if (spec.resources.limits.memory) needed.push({ controller: 'memory', field: 'resources.limits.memory', value: spec.resources.limits.memory });
  if (spec.resources.limits.cpu) needed.push({ controller: 'cpu', field: 'resources.limits.cpu', value: spec.resources.limits.cpu });
  if (spec.pidsLimit !== null) needed.push({ controller: 'pids', field: 'pidsLimit', value: String(spec.pidsLimit) });
  return needed;
}

/** One line per controller: what a worker here is limited by, for doctor and errors. */
export function describeCgroups(report: CgroupReport): { enforced: Controller[]; unenforced: { controller: Controller; why: string }[] } {
  const enforced: Controller[] = [];
  const unenforced: { controller: Controller; why: string }[] = [];
  for (const c of ['memory', 'cpu', 'pids'] as const) {
    if (!report.host) unenforced.push({ controller: c, why: 'isolation.cgroups is "off"' });
    else if (report.host.parents[c]) enforced.push(c);
    else unenforced.push({ controller: c, why: report.host.unusable[c] ?? 'unavailable' });
  }
  return { enforced, unenforced };
}

/**
 * Whether a worker of this identity can get an empty network namespace (egress "none"), with its
 * loopback up (egress "proxy" through spawngate's own proxy): made the way create() makes it.
 */
export function probeWorkerNetwork(identity: IdentityReport, withLoopback: boolean): Promise<IsolationProbe> {
  const prefix = withLoopback ? LOOPBACK_UP : [];
  if (identity.mode === 'uid' && identity.netnsBeforeDrop) return probeNetworkIsolation('unshare', 5000, prefix, UNSHARE_NET_ARGS);
  if (identity.mode === 'uid') return probeNetworkIsolation('unshare', 5000, prefix, UNSHARE_ARGS, dropArgs(identity.range.start, identity.range.start));
  return probeNetworkIsolation('unshare', 5000, prefix);
}
