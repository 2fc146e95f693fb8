/**
 * The pieces behind the CLI's progress and logs: the `waiting` stage a spawn reports with the
 * backend's own state while the worker starts (a Pod pending, a container being created), how the
 * CLI renders stages with their elapsed time, and how `logs -f` finds the new lines of a tail.
 */
import { PassThrough, Readable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Backend, WorkerStatus } from '../../src/backends/types.js';
import { linesAfter } from '../../src/cli/commands/sessions.js';
import type { Io } from '../../src/cli/framework.js';
import { logLineAsJson } from '../../src/cli/output.js';
import { createProgress } from '../../src/cli/progress.js';
import type { SpawnProgress } from '../../src/sessions/lifecycle.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { createFakeBackend } from '../../src/testing.js';
import { waitForWorker } from '../../src/sessions/readiness.js';

function captureIo(tty = false): { io: Io; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  const stdout = new PassThrough();
  const stderr = Object.assign(new PassThrough(), tty ? { isTTY: true, columns: 60 } : {});
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  return { io: { stdout, stderr, stdin: Readable.from(['']), env: {} }, out: () => out, err: () => err };
}

const gates: Spawngate[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const g of gates.splice(0)) await g.shutdown();
});

type Scripted = Pick<WorkerStatus, 'phase' | 'reason' | 'message'>;

/**
 * The fake backend, with a start that waits on the cluster: until `script` is used up, running()
 * does not resolve and status() answers the script's states one call at a time, as a Pod that is
 * first unschedulable and then has its containers created would.
 */
function slowStarting(script: Scripted[]): Backend {
  const fake = createFakeBackend();
  let started!: () => void;
  const scriptDone = new Promise<void>((resolve) => (started = resolve));
  const left = [...script];
  return {
    ...fake,
    async running(ref, options) {
      await scriptDone;
      return fake.running(ref, options);
    },
    async status(ref) {
      const next = left.shift();
      if (next === undefined) {
        started();
        return fake.status(ref);
      }
      return { ...(await fake.status(ref)), ...next, ready: false };
    },
  };
}

describe('spawn progress: the backend\'s own state while the worker starts', () => {
  it('a `waiting` stage for each change of phase, reason or message, between created and ready; the CLI prints each with its elapsed time', async () => {
    const unschedulable = { phase: 'pending', reason: 'Unschedulable', message: '0/1 nodes are available: 1 Insufficient cpu.' } as const;
    const backend = slowStarting([unschedulable, unschedulable, { phase: 'starting', reason: 'ContainerCreating', message: null }, { phase: 'starting', reason: 'ContainerCreating', message: null }]);
    const gate = await createSpawngate({
      config: {
        agents: {
          executionBackends: { fake: { type: 'process', defaultProfile: 'p', profiles: { p: { egress: 'open', ttlSeconds: 600, timeoutSeconds: 60 } } } },
          execution: { default: { backend: 'fake', profile: 'p' } },
        },
      },
      resolveBackend: () => Promise.resolve(backend),
      owner: 'progress-test',
      sweepIntervalMs: 0,
      decisionLog: false,
    });
    gates.push(gate);
    const seen: SpawnProgress[] = [];
    const { io, err } = captureIo();
    const progress = createProgress(io, { json: false });
    const handle = await gate.spawn(
      { agentId: 'echo', task: 'x', caller: { sessionKey: 's', depth: 0, channel: { id: 'c', kind: 'cli' }, user: { id: 'u', roles: [] } } },
      {
        onProgress: (p) => {
          seen.push(p);
          progress.update(p);
        },
      },
    );
    progress.done(handle);
    const stages = seen.map((p) => p.stage);
    expect(stages.slice(0, 4)).toEqual(['admission', 'admitted', 'creating', 'created']);
    expect(stages.at(-1)).toBe('ready');
    const waiting = seen.filter((p) => p.stage === 'waiting');
    // The repeated states are reported once; what follows them is the backend's real "running", if the poll saw it before ready.
    expect(waiting.slice(0, 2)).toEqual([
      { stage: 'waiting', nativeId: handle.nativeId, ...unschedulable },
      { stage: 'waiting', nativeId: handle.nativeId, phase: 'starting', reason: 'ContainerCreating', message: null },
    ]);
    expect(waiting.slice(2).every((p) => p.stage === 'waiting' && p.phase === 'running')).toBe(true);
    expect(waiting.length).toBeLessThanOrEqual(3);

    const text = err().split('\n');
    expect(text).toContainEqual(expect.stringMatching(new RegExp(`^\\[ +\\d+\\.\\ds\\] waiting for ${handle.nativeId}: pending \\(Unschedulable: 0/1 nodes are available: 1 Insufficient cpu\\.\\)$`)));
    expect(text).toContainEqual(expect.stringMatching(new RegExp(`^\\[ +\\d+\\.\\ds\\] waiting for ${handle.nativeId}: starting \\(ContainerCreating\\)$`)));
    await handle.close();
  });

  it('only a watched wait asks the backend for its status while running() waits: a gateway\'s spawns cost the backend nothing more', async () => {
    vi.useFakeTimers();
    const statusCalls = async (onStatus?: (s: WorkerStatus) => void): Promise<number> => {
      let calls = 0;
      const stuck: Backend = {
        ...createFakeBackend(),
        // A Pod that stays Pending: running() only ends when the caller's signal does, as the real backends' do.
        running: (_ref, options) => new Promise((_, reject) => options.signal?.addEventListener('abort', () => reject(options.signal?.reason as Error), { once: true })),
        status: (ref) => {
          calls++;
          return Promise.resolve({ nativeId: ref.nativeId, phase: 'pending', ready: false, reason: 'Unschedulable', message: null, exitCode: null, attributes: {} });
        },
      };
      const controller = new AbortController();
      const waited = waitForWorker({ backend: stuck, ref: { spawnId: 's', backendName: 'fake', nativeId: 'ns/p' }, token: 't', timeoutMs: 60_000, signal: controller.signal, ...(onStatus ? { onStatus } : {}) }).catch(() => 'ended');
      await vi.advanceTimersByTimeAsync(10_000);
      controller.abort(new Error('stop'));
      expect(await waited).toBe('ended');
      return calls;
    };
    expect(await statusCalls()).toBe(0);
    const seen: WorkerStatus[] = [];
    // Polled with back-off to once a second, reported once since nothing changed.
    expect(await statusCalls((s) => seen.push(s))).toBeGreaterThanOrEqual(10);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ phase: 'pending', reason: 'Unschedulable' });
  });
});

describe('CLI progress rendering', () => {
  it('text: one line per stage with the time since the start, a ready line with the total', () => {
    let now = 1000;
    const { io, out, err } = captureIo();
    const progress = createProgress(io, { json: false, now: () => now });
    progress.update({ stage: 'admission' });
    now += 2_500;
    progress.update({ stage: 'waiting', nativeId: 'ns/pod-1', phase: 'pending', reason: 'Unschedulable', message: '0/1 nodes' });
    now += 72_040;
    progress.update({ stage: 'waiting', nativeId: 'ns/pod-1', phase: 'starting', reason: null, message: null });
    progress.done({ spawnId: 'id-1', backend: 'k8s', profile: 'small', nativeId: 'ns/pod-1' });
    expect(err()).toBe(
      '[  0.0s] admission: evaluating policy\n' +
        '[  2.5s] waiting for ns/pod-1: pending (Unschedulable: 0/1 nodes)\n' +
        '[ 74.5s] waiting for ns/pod-1: starting\n' +
        '✔ k8s/small worker ns/pod-1 ready after 74.5s (spawn id-1)\n',
    );
    expect(out()).toBe('');
  });

  it('--json: progress as JSON lines with elapsedMs on stderr; stdout gets only the spawned record', () => {
    let now = 0;
    const { io, out, err } = captureIo();
    const progress = createProgress(io, { json: true, now: () => now });
    progress.update({ stage: 'created', nativeId: 'c1' });
    now = 1234.4;
    progress.update({ stage: 'waiting', nativeId: 'c1', phase: 'starting', reason: null, message: null });
    progress.done({ spawnId: 's1', backend: 'docker', profile: 'p', nativeId: 'c1' });
    expect(err().split('\n').filter(Boolean).map((l) => JSON.parse(l) as unknown)).toEqual([
      { event: 'progress', stage: 'created', nativeId: 'c1', elapsedMs: 0 },
      { event: 'progress', stage: 'waiting', nativeId: 'c1', phase: 'starting', reason: null, message: null, elapsedMs: 1234 },
    ]);
    expect(JSON.parse(out()) as unknown).toEqual({ event: 'spawned', spawnId: 's1', backend: 'docker', profile: 'p', nativeId: 'c1', elapsedMs: 1234 });
  });

  it('on a terminal a spinner line keeps the clock running, fits the width, and is erased when the spawn ends', () => {
    vi.useFakeTimers();
    let now = 0;
    const { io, err } = captureIo(true);
    const progress = createProgress(io, { json: false, now: () => now });
    progress.update({ stage: 'waiting', nativeId: 'ns/a-pod-with-a-long-name', phase: 'pending', reason: 'Unschedulable', message: '0/3 nodes are available: 3 Insufficient memory.' });
    now = 3_300;
    vi.advanceTimersByTime(80);
    const spinner = err().split('\r\x1b[2K').at(-1) ?? '';
    expect(spinner).toMatch(/^⠙ waiting for ns\/a-pod-with-a-long-name: pending \(Unsche.*…$/);
    expect(spinner.length).toBeLessThanOrEqual(59);
    now = 4_000;
    progress.fail();
    const ended = err().length;
    expect(err().endsWith('\r\x1b[2K')).toBe(true);
    vi.advanceTimersByTime(1_000);
    expect(err().length).toBe(ended);
  });
});

describe('logs -f: the new lines of a tail', () => {
  it('a log shorter than the window: exactly what was appended, repeated lines included', () => {
    expect(linesAfter(['a', 'a'], ['a', 'a', 'a'])).toEqual({ lines: ['a'], gap: false });
    expect(linesAfter([], ['x', 'y'])).toEqual({ lines: ['x', 'y'], gap: false });
    expect(linesAfter(['x', 'y'], ['x', 'y'])).toEqual({ lines: [], gap: false });
  });

  it('a log longer than the window: what follows the overlap; no overlap is a gap', () => {
    expect(linesAfter(['1', '2', '3', '4'], ['3', '4', '5', '6'])).toEqual({ lines: ['5', '6'], gap: false });
    expect(linesAfter(['1', '2'], ['7', '8'])).toEqual({ lines: ['7', '8'], gap: true });
    // Gone (closed) between two reads: nothing new, and no gap to report.
    expect(linesAfter(['1', '2'], [])).toEqual({ lines: [], gap: false });
  });

  it('--json keeps a JSON object line as it is and wraps anything else once', () => {
    const line = '{"time":"t","level":"info","message":"turn started {\\"turnId\\":\\"x\\"}"}';
    expect(logLineAsJson(line)).toBe(line);
    expect(logLineAsJson(`${line}\r`)).toBe(line);
    expect(logLineAsJson('node: warning')).toBe('{"line":"node: warning"}');
    expect(logLineAsJson('["an","array"]')).toBe('{"line":"[\\"an\\",\\"array\\"]"}');
    expect(logLineAsJson('{not json}')).toBe('{"line":"{not json}"}');
  });
});
