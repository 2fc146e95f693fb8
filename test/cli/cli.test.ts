import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { cli } from './helpers.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const example = (name: string) => join(root, 'examples', name);
const tmp = mkdtempSync(join(tmpdir(), 'sg-cli-'));
const file = (name: string, content: unknown) => {
  const path = join(tmp, name);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
};
const request = (over: Record<string, unknown> = {}) => ({
  agentId: 'echo',
  task: 'hi',
  caller: { sessionKey: 's', depth: 0, channel: { id: 'cli:t', kind: 'cli' }, user: { id: 't', roles: [] } },
  ...over,
});

describe('spawngate CLI', () => {
  it('--help works on every command and lists them all', async () => {
    const top = await cli(['--help']);
    expect(top.code).toBe(0);
    const names = ['spawn', 'ls', 'status', 'logs', 'close', 'sweep', 'admit', 'policy build', 'policy test', 'policy eval', 'policy replay', 'config validate', 'config schema', 'image build', 'doctor', 'serve', 'worker'];
    for (const name of names) {
      expect(top.stdout).toContain(name);
      const help = await cli([...name.split(' '), '--help']);
      expect(help.code, name).toBe(0);
      expect(help.stdout, name).toContain('Usage:\n  ');
    }
  });

  it('usage errors exit 2 and say what was wrong', async () => {
    expect((await cli([])).code).toBe(2);
    const unknown = await cli(['frobnicate']);
    expect(unknown).toMatchObject({ code: 2 });
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
    const badFlag = await cli(['admit', '--nope']);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toContain('--nope');
    expect((await cli(['admit'])).stderr).toContain('--input FILE is required');
    expect((await cli(['config', 'validate'])).code).toBe(2);
    expect((await cli(['policy'])).code).toBe(2);
  });

  it('image build --agent: an unknown agent or --minimal is a usage error, before anything is installed or built', async () => {
    const agentsDir = mkdtempSync(join(tmpdir(), 'sg-cli-agents-'));
    const unknown = await cli(['image', 'build', '--agent', 'codex-acp', '--agent', 'cursor', '--agents-dir', agentsDir]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--agent "cursor": not an agent spawngate installs (known: codex-acp, claude-code-acp, qwen-code, gemini-cli, opencode)');
    const minimal = await cli(['image', 'build', '--agent', 'codex-acp', '--minimal', '--agents-dir', agentsDir]);
    expect(minimal.code).toBe(2);
    expect(minimal.stderr).toContain('--agent cannot be combined with --minimal');
    expect(readdirSync(agentsDir)).toEqual([]);
  });

  it('admit: exit 0 allowed, 3 denied, 2 for bad input naming the JSON path', async () => {
    const allowed = await cli(['admit', '--input', file('ok.json', request())]);
    expect(allowed.code).toBe(0);
    expect(allowed.stdout).toMatch(/^ALLOWED {2}backend=local profile=default egress=none/);

    const denied = await cli(['admit', '--json', '--input', file('deep.json', request({ caller: { ...request().caller, depth: 9 } }))]);
    expect(denied.code).toBe(3);
    expect(JSON.parse(denied.stdout)).toMatchObject({ allow: false, reasons: [{ code: 'depth_exceeded' }] });

    const bad = await cli(['admit', '--input', file('bad.json', request({ caller: { ...request().caller, user: { id: 5 } } }))]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('caller.user.id');

    const notJson = await cli(['admit', '--input', file('broken.json', '{"agentId": ')]);
    expect(notJson.code).toBe(2);
    expect(notJson.stderr).toContain('not valid JSON');

    expect((await cli(['admit', '--input', join(tmp, 'missing.json')])).code).toBe(2);
    const stdin = await cli(['admit', '--input', '-'], JSON.stringify(request()));
    expect(stdin.code).toBe(0);
  });

  it('admit with the seed examples: the seed request is denied agent_unknown by the bare DESIGN config, admitted once codex is configured', async () => {
    const bare = await cli(['admit', '--json', '--config', example('design-example.json'), '--input', example('seed-spawn-request.json')]);
    expect(bare.code).toBe(3);
    expect(JSON.parse(bare.stdout)).toMatchObject({ allow: false, reasons: [{ code: 'agent_unknown' }] });
    const design = JSON.parse(readFileSync(example('design-example.json'), 'utf8')) as { agents: Record<string, unknown> };
    const withCodex = file('design-codex.json', { ...design, agents: { ...design.agents, acp: { codex: { command: ['codex-acp'] } } } });
    const res = await cli(['admit', '--json', '--config', withCodex, '--input', example('seed-spawn-request.json')]);
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout)).toMatchObject({ allow: true, backend: 'k8s', profile: 'small' });
  });

  it('admit with a bad config exits 2 and lists every fault with its path', async () => {
    const cfg = file('bad-config.json', { agents: { executionBackends: { k8s: { type: 'kubernetes', namespace: 'Bad_NS', profiles: { s: { resources: { requests: { cpu: '1 GB' } } } } } } } });
    const res = await cli(['admit', '--config', cfg, '--input', file('r.json', request())]);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('agents.executionBackends.k8s.namespace');
    expect(res.stderr).toContain('agents.executionBackends.k8s.profiles.s.resources.requests.cpu');
  });

  it('config validate and config schema', async () => {
    const ok = await cli(['config', 'validate', example('spawngate.example.yaml')]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('valid (3 backend(s)');
    const bad = await cli(['config', 'validate', '--json', file('bad.yaml', 'agents:\n  executionBackends:\n    x: { type: process, bogus: 1 }\n')]);
    expect(bad.code).toBe(2);
    expect(JSON.parse(bad.stdout)).toMatchObject({ ok: false, issues: [expect.objectContaining({ path: 'agents.executionBackends.x.bogus' })] });
    const schema = await cli(['config', 'schema']);
    expect(schema.code).toBe(0);
    expect(JSON.parse(schema.stdout)).toMatchObject({ $schema: 'https://json-schema.org/draft/2020-12/schema' });
  });

  it('policy build --check: the committed bundle matches policies/', async () => {
    const res = await cli(['policy', 'build', '--check', '--json']);
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toMatchObject({ equal: true });
  }, 120_000);

  it('policy eval: a full admission input through the shipped bundle, and through opa eval', async () => {
    const admitted = await cli(['admit', '--json', '--input', file('r2.json', request())]);
    expect(admitted.code).toBe(0);
    const { createAdmission } = await import('../../src/admission/gate.js');
    const gate = await createAdmission({ watchBundle: false, decisionLog: false });
    const { input } = await gate.admit(request());
    await gate.close();
    const inputFile = file('input.json', input);
    const wasm = await cli(['policy', 'eval', '--json', '--input', inputFile]);
    expect(wasm.code).toBe(0);
    const viaOpa = await cli(['policy', 'eval', '--opa', '--json', '--input', inputFile]);
    expect(viaOpa.code).toBe(0);
    const { revision: _r, ...decision } = JSON.parse(wasm.stdout) as Record<string, unknown>;
    expect(JSON.parse(viaOpa.stdout)).toEqual(decision);
  }, 120_000);

  it('the installed bin on a Node.js older than 22.12 exits 2 at once with what to do, before loading anything', async () => {
    // The version is faked in the running Node 24, so the test needs no old Node on the machine.
    const fake = (version: string) =>
      promisify(execFile)(process.execPath, ['--input-type=module', '-e', `Object.defineProperty(process.versions, 'node', { value: '${version}' }); await import(${JSON.stringify(join(root, 'bin/spawngate.js'))});`, 'spawngate', '--version'], { cwd: root }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
      );
    for (const version of ['20.19.0', '22.11.0']) {
      const old = await fake(version);
      expect(old.code, version).toBe(2);
      expect(old.stderr).toContain(`spawngate needs Node.js 22.12 or newer; this is Node.js ${version}`);
      expect(old.stderr).toContain('npx spawngate');
    }
    expect((await fake('22.12.0')).code).toBe(0);
  });

  it('the installed bin runs a real spawn with the echo agent on the embedded default', async () => {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [join(root, 'bin/spawngate.js'), 'spawn', '--agent', 'echo', 'hello from the test'], { cwd: root });
    expect(stdout).toContain('hello from the test');
    expect(stdout).toContain('turn completed (end_turn)');
    // Each stage with the time since the spawn began; the backend's own state may come between created and ready.
    expect(stderr.replace(/^\[ *\d+\.\ds\] waiting for \d+: .*\n/gm, '')).toMatch(
      /^\[ *\d+\.\ds\] admission: evaluating policy\n\[ *\d+\.\ds\] admitted: local\/default, egress none, ttl 3600s\n\[ *\d+\.\ds\] creating worker on local\/default\n\[ *\d+\.\ds\] created \d+; waiting until ready\n\[ *\d+\.\ds\] ready \d+ in \d+ ms\n✔ local\/default worker \d+ ready after \d+\.\ds/,
    );
  });

  it('spawn --json streams one JSON object per line (progress on stderr); --keep leaves a worker that ls/status/logs/close see', async () => {
    const kept = await cli(['spawn', '--json', '--keep', '--agent', 'echo', 'keep me']);
    expect(kept.code, kept.stderr).toBe(0);
    const lines = kept.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => l.event ?? l.type)).toEqual(expect.arrayContaining(['spawned', 'turn.started', 'agent.message.delta', 'turn.completed', 'kept']));
    expect(lines.some((l) => l.event === 'progress')).toBe(false);
    expect(kept.stderr.trim().split('\n').map((l) => (JSON.parse(l) as { event: string }).event)).toEqual(expect.arrayContaining(['progress']));
    const spawnId = lines.find((l) => l.event === 'kept')?.spawnId as string;

    const ls = await cli(['ls', '--json']);
    expect(ls.stdout.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { spawnId: string }).spawnId)).toContain(spawnId);
    const status = await cli(['status', '--json', spawnId]);
    expect(JSON.parse(status.stdout)).toMatchObject({ spawnId, tracking: 'untracked', backendStatus: { phase: 'running', ready: true } });
    const logs = await cli(['logs', spawnId]);
    expect(logs.stdout).toContain('listening');
    expect((await cli(['close', spawnId])).code).toBe(0);
    expect((await cli(['status', spawnId])).code).toBe(1);
    expect((await cli(['sweep', '--dry-run', '--json'])).code).toBe(0);
  });
});
