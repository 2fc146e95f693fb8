/**
 * The process backend does not trust its agents: each worker runs under a uid of its own (no
 * supplementary groups, no capabilities, no_new_privs), in cgroups that enforce its profile's
 * memory, cpu and pids limits, and cannot read the gateway's environment, the state of the backend
 * or another worker's folders and socket. Real processes, real cgroups, run as root; without root
 * (or cgroups) these tests are skipped, except under CI, where that is a failure.
 *
 * The hostile agent is test/fixtures/escape-probe.mjs, run as the worker command: it reports the
 * errno of every attempt, so a test sees that it really tried, and a control run with
 * isolation.user "none" shows the same attempts succeed where workers share the gateway's identity.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessBackend, type ProcessBackendOptions } from '../../src/backends/process/index.js';
import { inspectProcessHost } from '../../src/backends/process/host.js';
import type { Backend, WorkerRef, WorkerSpec } from '../../src/backends/types.js';
import { BackendError } from '../../src/errors.js';
import { waitForWorker } from '../../src/sessions/readiness.js';
import { createWorkerClient } from '../../src/protocol/client.js';
import { testWorkerSpec } from '../helpers/worker-spec.js';

const probe = fileURLToPath(new URL('../fixtures/escape-probe.mjs', import.meta.url));
/** The host's uid leases (every gateway's, whatever its stateDir). */
const LEASES = '/run/spawngate/uids';
const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = process.getuid?.() === 0;
const ci = Boolean(process.env['CI']);
const dirs: string[] = [];
const backends: Backend[] = [];
const refs: { backend: Backend; ref: WorkerRef }[] = [];

function stateDirFor(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `sg-wi-${name}-`));
  dirs.push(dir);
  return dir;
}

function backendOf(options: Partial<ProcessBackendOptions> & { stateDir: string }): Backend {
  const backend = createProcessBackend({ name: 'local', killGraceMs: 1000, ...options });
  backends.push(backend);
  return backend;
}

interface ProbeRecord {
  probe: string;
  ok?: boolean;
  code?: string | null;
  names?: string[];
  hasToken?: boolean;
  uid?: number;
  gid?: number;
  groups?: string;
  noNewPrivs?: string;
  capEff?: string;
  cgroup?: string[];
  netns?: string;
  userns?: string;
  envNames?: string[];
  mib?: number;
  started?: number;
  error?: string | null;
  pid?: number;
}

function probeSpec(args: string[], overrides: Partial<WorkerSpec> = {}): WorkerSpec {
  return testWorkerSpec({ command: [process.execPath, probe, ...args], egress: 'open', timeoutSeconds: 120 }, overrides);
}

async function until<T>(what: string, check: () => Promise<T | null | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== null && value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

async function records(backend: Backend, ref: WorkerRef): Promise<ProbeRecord[]> {
  return (await backend.logs(ref, { tail: 1000 })).filter((l) => l.startsWith('{"probe"')).map((l) => JSON.parse(l) as ProbeRecord);
}

/** The probe's records once it printed "done" (or `stop` says enough), by probe name. */
async function probed(backend: Backend, ref: WorkerRef, stop: (r: ProbeRecord[]) => boolean = (r) => r.some((x) => x.probe === 'done')): Promise<Map<string, ProbeRecord>> {
  const all = await until(`the probe's report of ${ref.spawnId}`, async () => {
    const r = await records(backend, ref);
    return stop(r) ? r : null;
  });
  return new Map(all.map((r) => [r.probe, r]));
}

async function create(backend: Backend, spec: WorkerSpec): Promise<WorkerRef> {
  const ref = await backend.create(spec);
  refs.push({ backend, ref });
  return ref;
}

interface StateView {
  pid: number;
  uid: number | null;
  dir: string;
  socketPath: string | null;
  token: string;
  cgroup: { version: 1 | 2; dirs: Record<string, string> } | null;
}

const stateOf = (stateDir: string, spawnId: string) => JSON.parse(readFileSync(join(stateDir, spawnId, 'state.json'), 'utf8')) as StateView;

function procUid(pid: number): number | null {
  try {
    return Number(/^Uid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    return !/^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

afterAll(async () => {
  for (const { backend, ref } of refs) await backend.delete(ref).catch(() => undefined);
  for (const backend of backends) await backend.close?.();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

const suite = root || ci ? describe : describe.skip;

// Real workers on a machine that may be busy: a start can take seconds.
suite('process backend: workers under uids of their own, in cgroups', { timeout: 120_000 }, () => {
  it('this host gives the gateway what the tests need (root, a writable cgroup hierarchy): under CI a failure, not a skip', async () => {
    expect(process.getuid?.(), 'the process backend isolation tests run as root').toBe(0);
    const report = await inspectProcessHost();
    expect(report.identity).toMatchObject({ mode: 'uid', ok: true });
    expect(report.cgroups.host?.unusable, 'every controller is usable').toEqual({});
    expect(Object.keys(report.cgroups.host?.parents ?? {}).sort()).toEqual(['cpu', 'memory', 'pids']);
  });

  describe('the red-team escapes fail', () => {
    const secret = `gateway-api-token-${randomUUID()}`;
    const saved = { token: process.env['SPAWNGATE_API_TOKEN'], other: process.env['SG_GATEWAY_ONLY_SECRET'] };
    beforeAll(() => {
      // The gateway's secrets: in its environment, never in a worker's.
      process.env['SPAWNGATE_API_TOKEN'] = secret;
      process.env['SG_GATEWAY_ONLY_SECRET'] = secret;
    });
    afterAll(() => {
      for (const [name, value] of [['SPAWNGATE_API_TOKEN', saved.token], ['SG_GATEWAY_ONLY_SECRET', saved.other]] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    });

    /** A neighbour (a real worker on a unix socket, egress none) and a probe (egress open) of one backend; the probe's report. */
    async function escapeAttempt(backend: Backend, stateDir: string, egress: WorkerSpec['egress'] = 'open') {
      const neighbourSpec = testWorkerSpec({ agentId: 'fixture', agentCommand: [process.execPath, fixture], egress: 'none' });
      const neighbour = await create(backend, neighbourSpec);
      await waitForWorker({ backend, ref: neighbour, token: neighbourSpec.token, timeoutMs: 60_000 });
      const state = stateOf(stateDir, neighbour.spawnId);
      const env = {
        PROBE_GATEWAY_PID: String(process.pid),
        PROBE_NEIGHBOUR_STATE: join(stateDir, neighbour.spawnId, 'state.json'),
        PROBE_NEIGHBOUR_PID: String(state.pid),
        PROBE_NEIGHBOUR_WORKSPACE: join(state.dir, 'workspace'),
        PROBE_NEIGHBOUR_SOCKET: state.socketPath ?? '',
        PROBE_STATE_DIR: stateDir,
        PROBE_LEASE_DIR: LEASES,
      };
      // Each target is there: an EACCES below is a refusal, not a wrong path.
      expect(readFileSync(env.PROBE_NEIGHBOUR_STATE, 'utf8')).toContain(neighbourSpec.token);
      expect(lstatSync(env.PROBE_NEIGHBOUR_SOCKET).isSocket()).toBe(true);
      expect(statSync(env.PROBE_NEIGHBOUR_WORKSPACE).isDirectory()).toBe(true);
      const prober = await create(backend, probeSpec(['escape'], { env, egress }));
      const report = await probed(backend, prober);
      return { report, prober, neighbour, neighbourState: state, proberState: stateOf(stateDir, prober.spawnId) };
    }

    it.each(['open', 'none'] as const)('an agent under egress "%s" cannot read the gateway\'s environment, the backend\'s state, a neighbour\'s state, token, environment or workspace, nor connect to its socket', async (egress) => {
      const stateDir = stateDirFor('escape');
      const backend = backendOf({ stateDir });
      const { report, proberState, neighbourState } = await escapeAttempt(backend, stateDir, egress);

      const self = report.get('self')!;
      expect(proberState.uid).toEqual(expect.any(Number));
      expect(self.uid).toBe(proberState.uid);
      expect(self.gid).toBe(proberState.uid);
      expect(self.uid).not.toBe(neighbourState.uid);
      expect(self.uid).not.toBe(0);
      expect(self.groups, 'no supplementary groups').toBe('');
      expect(self.noNewPrivs).toBe('1');
      expect(self.capEff).toMatch(/^0+$/);
      // The gateway's secrets never enter the worker's environment.
      expect(self.envNames).not.toContain('SPAWNGATE_API_TOKEN');
      expect(self.envNames).not.toContain('SG_GATEWAY_ONLY_SECRET');
      expect(self.envNames).toContain('SPAWNGATE_WORKER_TOKEN');

      for (const attempt of ['gateway-environ', 'neighbour-state', 'neighbour-environ', 'neighbour-workspace', 'state-dir-listing', 'uid-leases', 'neighbour-socket']) {
        expect(report.get(attempt), attempt).toEqual(expect.objectContaining({ probe: attempt, ok: false, code: 'EACCES' }));
      }
    });

    it('control: with isolation.user "none" the same probe gets all of it (the probe is real)', async () => {
      const stateDir = stateDirFor('shared');
      const backend = backendOf({ stateDir, isolation: { user: 'none' } });
      const { report } = await escapeAttempt(backend, stateDir);
      expect(report.get('self')).toMatchObject({ uid: process.getuid?.() });
      expect(report.get('gateway-environ')).toMatchObject({ ok: true, names: expect.arrayContaining(['PATH']) as unknown });
      expect(report.get('neighbour-state')).toMatchObject({ ok: true, hasToken: true });
      expect(report.get('neighbour-environ')).toMatchObject({ ok: true, names: expect.arrayContaining(['SPAWNGATE_WORKER_TOKEN']) as unknown });
      expect(report.get('neighbour-socket')).toMatchObject({ ok: true });
      // Even so, the allow-listed environment keeps the gateway's secrets out.
      expect(report.get('self')?.envNames).not.toContain('SPAWNGATE_API_TOKEN');
    });
  });

  describe('limits', () => {
    let stateDir = '';
    let backend: Backend;
    beforeAll(() => {
      stateDir = stateDirFor('limits');
      backend = backendOf({ stateDir });
    });

    it('a 64Mi worker that allocates 400 MiB is killed by the kernel, and its status says OOMKilled', async () => {
      const spec = probeSpec(['alloc', '400'], { resources: { requests: { cpu: null, memory: null, ephemeralStorage: null }, limits: { cpu: null, memory: '64Mi', ephemeralStorage: null }, gpu: 0 } });
      const ref = await create(backend, spec);
      const status = await until('the worker to fail', async () => {
        const s = await backend.status(ref);
        return s.phase === 'running' ? null : s;
      });
      expect(status).toMatchObject({ phase: 'failed', reason: 'OOMKilled' });
      const allocated = (await records(backend, ref)).filter((r) => r.probe === 'alloc').map((r) => r.mib ?? 0);
      expect(Math.max(0, ...allocated)).toBeLessThan(400);
      const state = stateOf(stateDir, ref.spawnId);
      expect(readFileSync(join(state.cgroup!.dirs['memory']!, state.cgroup!.version === 2 ? 'memory.events' : 'memory.oom_control'), 'utf8')).toMatch(/^oom_kill [1-9]/m);
      await backend.delete(ref);
      expect(existsSync(state.cgroup!.dirs['memory']!)).toBe(false);
    });

    it('a pids limit stops a bounded fork loop', async () => {
      const ref = await create(backend, probeSpec(['fork', '300'], { pidsLimit: 40 }));
      const report = await probed(backend, ref);
      const fork = report.get('fork')!;
      expect(fork.started).toBeLessThan(40);
      expect(fork.error).toBe('EAGAIN');
      const state = stateOf(stateDir, ref.spawnId);
      expect(readFileSync(join(state.cgroup!.dirs['pids']!, 'pids.max'), 'utf8').trim()).toBe('40');
      await backend.delete(ref);
    });

    it('a worker whose profile sets no limit still gets the backend\'s pids.max, and a cpu limit becomes a CFS quota', async () => {
      const limited = createProcessBackend({ name: 'local', stateDir, isolation: { pidsMax: 77 } });
      backends.push(limited);
      const spec = probeSpec(['idle'], { resources: { requests: { cpu: null, memory: null, ephemeralStorage: null }, limits: { cpu: '250m', memory: null, ephemeralStorage: null }, gpu: 0 } });
      const ref = await create(limited, spec);
      const self = (await probed(limited, ref)).get('self')!;
      const state = stateOf(stateDir, ref.spawnId);
      const { pids, cpu } = state.cgroup!.dirs;
      expect(readFileSync(join(pids!, 'pids.max'), 'utf8').trim()).toBe('77');
      if (state.cgroup!.version === 1) expect(readFileSync(join(cpu!, 'cpu.cfs_quota_us'), 'utf8').trim()).toBe('25000');
      else expect(readFileSync(join(cpu!, 'cpu.max'), 'utf8').trim()).toBe('25000 100000');
      // It ran inside them from its first instruction: its own /proc/self/cgroup names them.
      expect(self.cgroup?.join('\n')).toContain(ref.spawnId);
      await limited.delete(ref);
      for (const dir of Object.values(state.cgroup!.dirs)) expect(existsSync(dir)).toBe(false);
    });
  });

  describe('identities', () => {
    it('gateways on one stateDir, and one on another, give concurrent workers distinct uids; folders are the worker\'s, state the gateway\'s; delete (after a restart) kills all, removes the cgroups and frees the lease', async () => {
      const stateDir = stateDirFor('uids');
      const otherDir = stateDirFor('uids-other');
      const gateways = [backendOf({ stateDir }), backendOf({ stateDir }), backendOf({ stateDir: otherDir })];
      const dirOf = (i: number) => (i % 3 === 2 ? otherDir : stateDir);
      const created = await Promise.all(Array.from({ length: 9 }, (_, i) => create(gateways[i % 3]!, probeSpec(['idle']))));
      const states = created.map((ref, i) => stateOf(dirOf(i), ref.spawnId));
      expect(new Set(states.map((s) => s.uid)).size).toBe(9);
      for (const [i, ref] of created.entries()) {
        const state = states[i]!;
        const uid = state.uid!;
        await probed(gateways[i % 3]!, ref);
        expect(procUid(state.pid)).toBe(uid);
        expect(readdirSync(join(LEASES, String(uid)))).toEqual([ref.spawnId]);
        expect(readFileSync(join(LEASES, String(uid), ref.spawnId), 'utf8').trim()).toBe(dirOf(i));
        for (const own of ['workspace', 'home', 'tmp']) {
          const st = statSync(join(state.dir, own));
          expect({ own, uid: st.uid, gid: st.gid, mode: st.mode & 0o777 }).toEqual({ own, uid, gid: uid, mode: 0o700 });
        }
        const st = statSync(join(state.dir, 'state.json'));
        expect({ uid: st.uid, mode: st.mode & 0o777 }).toEqual({ uid: 0, mode: 0o600 });
        expect(statSync(state.dir).uid).toBe(0);
      }
      expect(statSync(stateDir).mode & 0o007, 'others may pass through stateDir, not list it').toBe(0o001);

      // Restarted gateways: backend objects that created none of them delete them all.
      const restarted = [backendOf({ stateDir }), backendOf({ stateDir: otherDir })];
      for (const [i, ref] of created.entries()) {
        const state = states[i]!;
        await restarted[i % 3 === 2 ? 1 : 0]!.delete(ref);
        expect(alive(state.pid)).toBe(false);
        expect(existsSync(join(LEASES, String(state.uid)))).toBe(false);
        for (const dir of Object.values(state.cgroup!.dirs)) expect(existsSync(dir)).toBe(false);
        expect(existsSync(state.dir)).toBe(false);
      }
      expect([...readdirSync(stateDir), ...readdirSync(otherDir)], 'stateDirs hold workers only').toEqual([]);
    });

    it('egress "none": an empty network namespace made before the drop; a gateway without CAP_SYS_ADMIN drops first and the worker makes it in a user namespace of its own', async () => {
      const { UID_MODE_CAPABILITIES } = await import('../../src/backends/process/identity.js');
      const own = { net: readlinkSync('/proc/self/ns/net'), user: readlinkSync('/proc/self/ns/user') };
      for (const [privileges, userns] of [[undefined, false], [{ uid: 0, gid: 0, capabilities: new Set(UID_MODE_CAPABILITIES) }, true]] as const) {
        const stateDir = stateDirFor('netns');
        const backend = backendOf({ stateDir, ...(privileges ? { privileges } : {}) });
        const spec = probeSpec(['idle'], { egress: 'none' });
        await backend.validate(spec);
        const ref = await create(backend, spec);
        const self = (await probed(backend, ref)).get('self')!;
        const state = stateOf(stateDir, ref.spawnId);
        expect(procUid(state.pid), 'the worker\'s uid, as the host sees it').toBe(state.uid);
        expect(self.netns).not.toBe(own.net);
        expect(self.userns !== own.user, `user namespace of its own: ${userns}`).toBe(userns);
        await backend.delete(ref);
      }
    });

    it('a process that left the worker\'s process group (setsid) is killed by delete, after a restart too', async () => {
      const stateDir = stateDirFor('setsid');
      const backend = backendOf({ stateDir });
      const ref = await create(backend, probeSpec(['escapee']));
      const escapee = (await probed(backend, ref)).get('escapee')!.pid!;
      expect(alive(escapee)).toBe(true);
      expect(procUid(escapee)).toBe(stateOf(stateDir, ref.spawnId).uid);
      await backendOf({ stateDir }).delete(ref);
      await until('the escapee to be gone', () => Promise.resolve(alive(escapee) ? null : true), 5000);
    });
    it('the reference worker\'s agent is started beside it, as its child on FIFOs, under its uid, in its cgroup and network namespace; a worker of the profile\'s own command gets none; delete (after a restart) stops it', async () => {
      const stateDir = stateDirFor('prelaunch');
      const backend = backendOf({ stateDir });
      const spec = testWorkerSpec({ egress: 'none' });
      const ref = await create(backend, spec);
      const endpoint = await waitForWorker({ backend, ref, token: spec.token, timeoutMs: 60_000 });
      const agentPid = (await createWorkerClient({ ...endpoint, token: spec.token }).status()).agentPid as number;
      const state = stateOf(stateDir, ref.spawnId);
      const stat = readFileSync(`/proc/${agentPid}/stat`, 'utf8');
      expect(Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]), 'the agent\'s parent').toBe(state.pid);
      expect(readlinkSync(`/proc/${agentPid}/fd/0`)).toBe(`${join(state.dir, 'a', 'in')} (deleted)`);
      expect(procUid(agentPid)).toBe(state.uid);
      expect(readFileSync(`/proc/${agentPid}/cgroup`, 'utf8')).toBe(readFileSync(`/proc/${state.pid}/cgroup`, 'utf8'));
      expect(readlinkSync(`/proc/${agentPid}/ns/net`)).toBe(readlinkSync(`/proc/${state.pid}/ns/net`));
      expect(readlinkSync(`/proc/${agentPid}/ns/net`)).not.toBe(readlinkSync('/proc/self/ns/net'));
      await backendOf({ stateDir }).delete(ref);
      expect(alive(agentPid)).toBe(false);

      // The profile's own worker command may not know to adopt an agent: none is started for it.
      const own = await create(backend, probeSpec(['idle'], { egress: 'none' }));
      await probed(backend, own);
      expect(existsSync(join(stateOf(stateDir, own.spawnId).dir, 'a'))).toBe(false);
    });
  });

  describe('refused, never silently unenforced', () => {
    const limitsSpec = (limits: Partial<WorkerSpec['resources']['limits']>, overrides: Partial<WorkerSpec> = {}) =>
      probeSpec(['idle'], { profileName: 'small', resources: { requests: { cpu: null, memory: null, ephemeralStorage: null }, limits: { cpu: null, memory: null, ephemeralStorage: null, ...limits }, gpu: 0 }, ...overrides });

    it.each([
      ['isolation.cgroups "off"', { isolation: { cgroups: 'off' as const } }, /isolation\.cgroups is "off"/],
      ['no cgroup hierarchy where the backend looks', { cgroupMount: '/nonexistent/cgroup' }, /no cgroup v1 (memory|cpu|pids) hierarchy at \/nonexistent\/cgroup\/\1 and no cgroup v2 at \/nonexistent\/cgroup/],
    ])('%s: a profile with limits is refused at validate and create, by profile and field', async (_what, options, why) => {
      const stateDir = stateDirFor('refused');
      const backend = backendOf({ stateDir, ...options });
      for (const [limits, overrides, field] of [
        [{ memory: '64Mi' }, {}, 'resources.limits.memory'],
        [{ cpu: '500m' }, {}, 'resources.limits.cpu'],
        [{}, { pidsLimit: 64 }, 'pidsLimit'],
      ] as const) {
        const spec = limitsSpec(limits, overrides);
        for (const call of [() => backend.validate(spec), () => backend.create(spec)]) {
          const err = await call().then(() => null, (e: unknown) => e);
          expect(err).toBeInstanceOf(BackendError);
          expect(err).toMatchObject({ code: 'BACKEND_UNAVAILABLE', details: { reason: 'LimitsUnenforceable', field } });
          expect((err as Error).message).toMatch(new RegExp(`^profile small: ${field.replace(/\./g, '\\.')} `));
          expect((err as Error).message).toMatch(why);
        }
      }
      expect(readdirSync(stateDir).filter((n) => !n.startsWith('.'))).toEqual([]);
      // Without limits the same backend runs workers (under their own uid).
      await backend.validate(limitsSpec({}));
    });

    // A hybrid host's empty cgroup v2 (its controllers are bound to the v1 hierarchies): the v2 path, refusing.
    const unified = '/sys/fs/cgroup/unified';
    const emptyV2 = existsSync(join(unified, 'cgroup.controllers')) && !readFileSync(join(unified, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('memory');
    it.skipIf(!emptyV2)('a cgroup v2 hierarchy without the controllers: a memory limit is refused, saying so', async () => {
      const backend = backendOf({ stateDir: stateDirFor('v2'), cgroupMount: unified, isolation: { cgroupParent: `/sg-test-${randomUUID().slice(0, 8)}` } });
      try {
        await expect(backend.validate(limitsSpec({ memory: '64Mi' }))).rejects.toThrow(/resources\.limits\.memory 64Mi cannot be enforced .*the cgroup v2 hierarchy at \/sys\/fs\/cgroup\/unified has no memory controller/);
      } finally {
        for (const name of readdirSync(unified)) if (name.startsWith('sg-test-')) rmdirSync(join(unified, name));
      }
    });

    it('isolation.cgroups "required" refuses every spawn where cgroups are not usable', async () => {
      const backend = backendOf({ stateDir: stateDirFor('required'), cgroupMount: '/nonexistent/cgroup', isolation: { cgroups: 'required' } });
      await expect(backend.validate(limitsSpec({}))).rejects.toMatchObject({ details: { reason: 'CgroupsUnavailable', field: 'isolation.cgroups' } });
    });

    it('a gateway that cannot switch uids refuses spawns, saying how to fix it; isolation.user "none" is the explicit opt-out', async () => {
      const unprivileged = { uid: 1000, gid: 1000, capabilities: new Set<never>() };
      const stateDir = stateDirFor('unpriv');
      const backend = backendOf({ stateDir, privileges: unprivileged, isolation: { cgroups: 'off' } });
      const err = await backend.validate(limitsSpec({})).then(() => null, (e: unknown) => e);
      expect(err).toMatchObject({ code: 'BACKEND_UNAVAILABLE', details: { reason: 'IdentityUnavailable', field: 'isolation.user' } });
      expect((err as Error).message).toMatch(/runs as uid 1000 without CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_KILL/);
      expect((err as Error).message).toMatch(/Run the gateway as root/);
      expect((err as Error).message).toMatch(/isolation\.user: none/);
      await expect(backend.create(limitsSpec({}))).rejects.toMatchObject({ details: { reason: 'IdentityUnavailable' } });
      expect(readdirSync(stateDir)).toEqual([]);
      const optedOut = backendOf({ stateDir, privileges: unprivileged, isolation: { user: 'none', cgroups: 'off' } });
      await optedOut.validate(limitsSpec({}));
    });

    it('a real unprivileged gateway (uid 65534, no capabilities) refuses too', async () => {
      const script = fileURLToPath(new URL('../fixtures/unprivileged-validate.mjs', import.meta.url));
      const stateDir = mkdtempSync(join(tmpdir(), 'sg-wi-nobody-'));
      dirs.push(stateDir);
      chownSync(stateDir, 65534, 65534);
      const out = await new Promise<string>((resolve, reject) =>
        execFile('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', process.execPath, script, stateDir], { timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout))),
      );
      const result = JSON.parse(out.trim().split('\n').at(-1)!) as { code: string; reason: string; message: string };
      expect(result).toMatchObject({ code: 'BACKEND_UNAVAILABLE', reason: 'IdentityUnavailable' });
      expect(result.message).toMatch(/runs as uid 65534 without CAP_SETUID/);
    });

    it('a worker or agent command a worker\'s uid cannot read (a private copy of spawngate, an agent in root\'s home) is refused, naming the folder', async () => {
      const closed = stateDirFor('private');
      const script = join(closed, 'worker.mjs');
      writeFileSync(script, '#!/usr/bin/env node\nsetInterval(() => {}, 1000);\n', { mode: 0o755 });
      const backend = backendOf({ stateDir: stateDirFor('private-state') });
      for (const [spec, field] of [
        [limitsSpec({}, { command: [process.execPath, script] }), 'command'],
        [limitsSpec({}, { command: null, agentId: 'mine', agentCommand: [process.execPath, script] }), 'agents.acp.mine.command'],
        [limitsSpec({}, { command: [script] }), 'command'],
      ] as const) {
        const err = await backend.validate(spec).then(() => null, (e: unknown) => e);
        expect(err, field).toMatchObject({ code: 'BACKEND_UNAVAILABLE', details: { reason: 'CommandUnreadable', field } });
        expect((err as Error).message).toContain(`${closed} (mode 0700) lets only its owner in`);
      }
      // The workers' own programs (this Node, the reference worker, the probe) are fine.
      await backend.validate(limitsSpec({}));
    });

    it('a hostPath workspace, or a stateDir others cannot pass through, is refused under uid isolation', async () => {
      const closed = stateDirFor('closed');
      const backend = backendOf({ stateDir: join(closed, 'state'), allowedHostPaths: [closed] });
      await expect(backend.validate(limitsSpec({}, { workspace: { strategy: 'hostPath', path: closed } }))).rejects.toMatchObject({ details: { reason: 'HostPathUnsupported', field: 'workspace.strategy' } });
      const err = await backend.validate(limitsSpec({})).then(() => null, (e: unknown) => e);
      expect(err).toMatchObject({ details: { reason: 'StateDirNotTraversable', field: 'stateDir' } });
      expect((err as Error).message).toContain(`chmod o+x ${closed}`);
      mkdirSync(join(closed, 'state'));
    });
  });
});

suite('spawngate doctor on process backends', () => {
  it('says which identity workers get and whether the gateway can give it, which limits cgroups enforce, and flags an opt-out', async () => {
    const { runDoctor } = await import('../../src/cli/commands/doctor.js');
    const report = await runDoctor({
      agents: {
        executionBackends: {
          local: { type: 'process', profiles: { small: { resources: { limits: { memory: '64Mi', cpu: '500m' } }, pidsLimit: 64 } } },
          shared: { type: 'process', isolation: { user: 'none', cgroups: 'off' }, profiles: { p: { egress: 'open', pidsLimit: 10 } } },
        },
      },
    });
    const check = (name: string) => report.checks.find((c) => c.check === name);
    expect(check('local: worker identity')).toMatchObject({ result: 'ok', detail: expect.stringMatching(/a uid and gid of its own from 2000000000–2000065535, no supplementary groups.*the gateway runs as root/) as unknown });
    expect(check('local: resource limits (cgroups)')).toMatchObject({ result: 'ok', detail: expect.stringMatching(/^cgroup v[12]: memory, cpu, pids enforced per worker \(pids\.max 1024/) as unknown });
    expect(check('local: egress "none" isolation (unshare)')).toMatchObject({ result: 'ok' });
    expect(check('shared: worker identity')).toMatchObject({ result: 'warn', detail: expect.stringMatching(/workers share the gateway's identity/) as unknown });
    expect(check('shared: resource limits (cgroups)')).toMatchObject({ result: 'fail', detail: expect.stringMatching(/isolation\.cgroups is "off".*refused: profile p \(pidsLimit\)/) as unknown, fix: expect.stringMatching(/remove isolation\.cgroups: off/) as unknown });
    expect(report.ok).toBe(false);
    const { formatDoctorTable } = await import('../../src/cli/commands/doctor.js');
    expect(formatDoctorTable(report)).toMatch(/shared: worker identity\s+WARN/);
  });
});

describe('process backend isolation config', () => {
  it('takes user, uidRange, cgroups, cgroupParent and pidsMax, and refuses what cannot work, by path', async () => {
    const { parseConfig } = await import('../../src/config/index.js');
    const { processBackendOptions } = await import('../../src/backends/process/index.js');
    const backend = (isolation: unknown, type = 'process') => ({ agents: { executionBackends: { local: { type, isolation } } } });
    const parsed = parseConfig(backend({ user: 'uid', uidRange: { start: 3_000_000_000, count: 1000 }, cgroups: 'required', cgroupParent: '/spawngate.slice/workers', pidsMax: 256 }));
    const local = parsed.agents.executionBackends['local'];
    expect(local?.type === 'process' && processBackendOptions('local', local)).toMatchObject({
      name: 'local',
      isolation: { user: 'uid', uidRange: { start: 3_000_000_000, count: 1000 }, cgroups: 'required', cgroupParent: '/spawngate.slice/workers', pidsMax: 256 },
    });
    for (const [bad, path] of [
      [{ user: 'root' }, /isolation\.user/],
      [{ uidRange: { start: 0, count: 10 } }, /isolation\.uidRange\.start/],
      [{ uidRange: { start: 4_294_967_290, count: 10 } }, /isolation\.uidRange.*4294967294/s],
      [{ cgroups: 'maybe' }, /isolation\.cgroups/],
      [{ cgroupParent: 'relative' }, /isolation\.cgroupParent/],
      [{ cgroupParent: '/a/../b' }, /isolation\.cgroupParent/],
      [{ pidsMax: 0 }, /isolation\.pidsMax/],
    ] as const) {
      expect(() => parseConfig(backend(bad)), JSON.stringify(bad)).toThrow(path);
    }
    expect(() => parseConfig({ agents: { executionBackends: { d: { type: 'container', isolation: { user: 'none' } } } } })).toThrow(/isolation.*process/s);
  });
});

describe('uid leases', () => {
  it('concurrent takers (two pools on one folder, as two gateways) never share a uid; a lease whose spawn folder was removed by hand is collected, a live one is not', async () => {
    const { createUidPool } = await import('../../src/backends/process/identity.js');
    const leases = mkdtempSync(join(tmpdir(), 'sg-wi-leases-'));
    const stateDir = mkdtempSync(join(tmpdir(), 'sg-wi-leasestate-'));
    dirs.push(leases, stateDir);
    // A small range, so that takers collide: 40 takers for 48 uids.
    const range = { start: 3_000_000_000, count: 48 };
    const pools = [createUidPool(leases, range), createUidPool(leases, range)];
    const spawnIds = Array.from({ length: 40 }, () => randomUUID());
    for (const id of spawnIds) mkdirSync(join(stateDir, id));
    const uids = await Promise.all(spawnIds.map((id, i) => pools[i % 2]!.acquire(id, stateDir)));
    expect(new Set(uids).size).toBe(40);
    for (const [i, uid] of uids.entries()) expect(await pools[(i + 1) % 2]!.holds(uid, spawnIds[i]!)).toBe(true);
    expect((await pools[0]!.leases()).size).toBe(40);

    // The rest of the range, then none.
    const more = await Promise.all(Array.from({ length: 8 }, () => randomUUID()).map((id) => (mkdirSync(join(stateDir, id)), pools[0]!.acquire(id, stateDir))));
    expect(new Set([...uids, ...more]).size).toBe(48);
    await expect(pools[1]!.acquire(randomUUID(), stateDir)).rejects.toThrow(/every uid of 3000000000–3000000047 is leased/);

    // Folders removed by hand: those leases are collected; the others are kept.
    for (const id of spawnIds.slice(0, 10)) rmSync(join(stateDir, id), { recursive: true });
    expect((await pools[1]!.collect({ minAgeMs: 0 })).sort()).toEqual(uids.slice(0, 10).sort());
    expect((await pools[0]!.leases()).size).toBe(38);
    await pools[0]!.release(spawnIds[10]!);
    expect(await pools[1]!.holds(uids[10]!, spawnIds[10]!)).toBe(false);
    expect(readdirSync(leases)).toHaveLength(37);
  });
});

describe('cgroups nobody will delete', () => {
  it('are collected when empty, old enough and of no live spawn; anything else stays', async () => {
    const { collectCgroups } = await import('../../src/backends/process/cgroups.js');
    const parent = mkdtempSync(join(tmpdir(), 'sg-wi-cg-'));
    dirs.push(parent);
    const [orphan, live, other] = [randomUUID(), randomUUID(), 'not-a-spawn'];
    for (const name of [orphan, live, other]) mkdirSync(join(parent, name));
    const host = { version: 1 as const, parents: { memory: parent, pids: parent }, unusable: {} };
    expect(await collectCgroups(host, (id) => Promise.resolve(id === live), 60_000)).toEqual([]);
    expect(await collectCgroups(host, (id) => Promise.resolve(id === live), 0)).toEqual([join(parent, orphan)]);
    expect(readdirSync(parent).sort()).toEqual([live, other].sort());
  });
});
