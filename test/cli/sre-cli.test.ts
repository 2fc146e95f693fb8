/**
 * The CLI as an SRE meets it, through the installed bin (dist/, as `npm run build` leaves it): help
 * with descriptions, defaults and examples; `version`; `-o json|yaml|wide|name` next to the JSON
 * lines of `--json`; worker log lines passed through, not re-encoded; `logs -f`; and `spawn`
 * keeping progress (stderr) apart from what the worker says (stdout). Every worker runs on a process
 * backend in a state dir of this file's own, so nothing here sees another suite's workers.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { readBundle } from '../../src/admission/bundle.js';
import { SHIPPED_BUNDLE } from '../../src/admission/gate.js';
import { commands } from '../../src/cli/main.js';
import { processBackend } from '../server/helpers.js';
import { bin, startBin } from './helpers.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const backend = processBackend();
const owner = `sre-${randomUUID().slice(0, 8)}`;
const config = join(backend.stateDir, 'config.json');
writeFileSync(config, JSON.stringify({ ...backend.config, spawngate: { owner } }));

afterAll(async () => {
  // Whatever a failed test left running goes with the state dir.
  await bin(['sweep', '--all', '--orphans', '--config', config]);
  backend.remove();
});

const collapse = (text: string) => text.replace(/\s+/g, ' ');
const lines = (text: string) => text.split('\n').filter((l) => l.trim() !== '');
const jsonLines = (text: string) => lines(text).map((l) => JSON.parse(l) as Record<string, unknown>);

describe('--help', () => {
  it('every command shows each option with its description and default, its usage and examples', async () => {
    expect(commands.length).toBeGreaterThanOrEqual(19);
    for (const command of commands) {
      const help = await bin([...command.name.split(' '), '--help']);
      expect(help.code, command.name).toBe(0);
      expect(help.stderr, command.name).toBe('');
      expect(help.stdout).toContain(`Usage:\n  ${command.usage}\n`);
      const text = collapse(help.stdout);
      for (const [name, option] of Object.entries(command.options)) {
        const flag = `${option.short ? `-${option.short}, ` : '    '}--${name}${option.type === 'string' ? ` ${option.value ?? ''}` : ''}`.trimEnd();
        expect(help.stdout, `${command.name} --${name}`).toContain(`\n  ${flag} `);
        expect(text, `${command.name} --${name}`).toContain(collapse(option.description));
        if (option.default !== undefined) expect(text, `${command.name} --${name}`).toContain(`(default: ${collapse(option.default)})`);
      }
      expect(help.stdout).toMatch(/\n {2}-h, --help +Show this help and exit\.\n/);
      expect(command.examples.length, command.name).toBeGreaterThan(0);
      expect(help.stdout).toContain('\nExamples:\n');
      for (const example of command.examples) expect(help.stdout, command.name).toContain(`\n  ${example.command}\n`);
    }
  }, 120_000);

  it('spawngate --help lists every command with its summary, the output conventions and the exit codes', async () => {
    const top = await bin(['--help']);
    expect(top.code).toBe(0);
    for (const command of commands) expect(top.stdout).toMatch(new RegExp(`^ {2}${command.name} +${command.summary.slice(0, 20).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`, 'm'));
    expect(top.stdout).toContain('-o json prints one JSON document');
    expect(top.stdout).toContain('Exit status: 0 ok, 1 failed, 2 usage error');
  });
});

describe('usage errors exit 2 and name what was wrong', () => {
  const cases: [string[], RegExp][] = [
    [[], /Commands:/],
    [['vresion'], /unknown command "vresion" \(did you mean version\?\)/],
    [['--frobnicate'], /unknown option "--frobnicate"/],
    [['ls', '--nope'], /spawngate ls: Unknown option '--nope'[\s\S]*spawngate ls --help/],
    [['ls', '-o', 'xml'], /--output "xml": must be one of json, yaml, wide, name/],
    [['status', 'some-id', '-o', 'name'], /--output "name": must be one of json, yaml, wide/],
    [['ls', '--json', '-o', 'json'], /--json and --output json cannot be combined/],
    [['logs', 'some-id', '--tail', '0'], /--tail "0": must be an integer from 1 to 100000/],
    [['logs'], /expected 1 argument\(s\), got 0/],
    [['version', 'extra'], /expected 0 argument\(s\), got 1 \("extra" is too many\)/],
    [['policy', 'build', '-o', 'bundle.tar.gz'], /--output "bundle.tar.gz": must be one of json, yaml/],
  ];
  it.each(cases)('spawngate %j', async (args, message) => {
    const result = await bin(args);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(message);
  });
});

describe('version', () => {
  it('names spawngate, Node.js, the shipped bundle revision and the platform; --version says the same', async () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
    const { revision } = await readBundle(SHIPPED_BUNDLE);
    const text = await bin(['version']);
    expect(text.code).toBe(0);
    expect(text.stdout).toBe(
      `spawngate ${pkg.version}\nnode      ${process.versions.node}\nbundle    ${revision} (bundles/spawngate.tar.gz)\nplatform  ${process.platform}/${process.arch}\n`,
    );
    expect((await bin(['--version'])).stdout).toBe(text.stdout);

    const json = await bin(['version', '-o', 'json']);
    const doc = JSON.parse(json.stdout) as unknown;
    expect(doc).toEqual({ spawngate: pkg.version, node: process.versions.node, bundle: { path: 'bundles/spawngate.tar.gz', revision }, platform: `${process.platform}/${process.arch}` });
    expect(parseYaml((await bin(['--version', '-o', 'yaml'])).stdout)).toEqual(doc);
  });
});

describe('a kept worker: spawn streams, -o formats, logs and logs -f', () => {
  let spawned: { spawnId: string; nativeId: string };

  beforeAll(async () => {
    const result = await bin(['spawn', '--config', config, '--json', '--keep', '--agent', 'echo', 'streams apart']);
    expect(result.code, result.stderr).toBe(0);
    spawned = jsonLines(result.stdout)[0] as typeof spawned;
  });

  it('spawn --json: stdout has only the spawned record, the worker events and the kept record; progress is JSON lines on stderr', async () => {
    const result = await bin(['spawn', '--config', config, '--json', '--keep', '--agent', 'echo', 'two streams']);
    expect(result.code, result.stderr).toBe(0);
    const out = jsonLines(result.stdout);
    expect(out[0]).toMatchObject({ event: 'spawned', backend: 'local', profile: 'small' });
    expect(out.at(-1)).toMatchObject({ event: 'kept', spawnId: out[0]?.['spawnId'] });
    const events = out.slice(1, -1);
    expect(events.map((e) => e['type'])).toEqual(['turn.started', ...events.slice(1, -1).map(() => 'agent.message.delta'), 'turn.completed']);
    expect(events.filter((e) => e['type'] === 'agent.message.delta').map((e) => e['text']).join('')).toBe('echo: two streams');

    const progress = jsonLines(result.stderr);
    for (const p of progress) expect(p).toMatchObject({ event: 'progress', elapsedMs: expect.any(Number) as unknown });
    const stages = progress.map((p) => p['stage']);
    expect(stages.filter((s) => s !== 'waiting')).toEqual(['admission', 'admitted', 'creating', 'created', 'ready']);
    // The backend's own state while it starts comes between created and ready, and names the worker.
    expect(stages.indexOf('waiting') === -1 || (stages.indexOf('waiting') > stages.indexOf('created') && stages.lastIndexOf('waiting') < stages.indexOf('ready'))).toBe(true);
    for (const w of progress.filter((p) => p['stage'] === 'waiting')) expect(w).toMatchObject({ nativeId: out[0]?.['nativeId'], phase: expect.any(String) as unknown });
    const elapsed = progress.map((p) => p['elapsedMs'] as number);
    expect(elapsed).toEqual([...elapsed].sort((a, b) => a - b));
    await bin(['close', '--config', config, out[0]?.['spawnId'] as string]);
  });

  it('spawn without --json: the reply on stdout; on stderr one line per stage with the elapsed time, then the ready line', async () => {
    const result = await bin(['spawn', '--config', config, '--agent', 'echo', 'for people']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe('echo: for people\n— turn completed (end_turn)\n');
    const stderr = lines(result.stderr);
    const staged = stderr.filter((l) => !l.includes('] waiting for '));
    expect(staged.slice(0, 5)).toEqual([
      expect.stringMatching(/^\[ +\d+\.\ds\] admission: evaluating policy$/),
      expect.stringMatching(/^\[ +\d+\.\ds\] admitted: local\/small, egress none, ttl 600s$/),
      expect.stringMatching(/^\[ +\d+\.\ds\] creating worker on local\/small$/),
      expect.stringMatching(/^\[ +\d+\.\ds\] created \d+; waiting until ready$/),
      expect.stringMatching(/^\[ +\d+\.\ds\] ready \d+ in \d+ ms$/),
    ]);
    expect(staged[5]).toMatch(/^✔ local\/small worker \d+ ready after \d+\.\ds \(spawn [0-9a-f-]{36}\)$/);
    for (const w of stderr.filter((l) => l.includes('] waiting for '))) expect(w).toMatch(/^\[ +\d+\.\ds\] waiting for \d+: (pending|starting|running)/);
  });

  it('ls: a table, -o wide with more columns, -o name, -o json as one array, -o yaml the same, --json as JSON lines', async () => {
    const { spawnId, nativeId } = spawned;
    const json = await bin(['ls', '--config', config, '-o', 'json']);
    expect(json.code, json.stderr).toBe(0);
    const rows = JSON.parse(json.stdout) as Record<string, unknown>[];
    expect(Array.isArray(rows)).toBe(true);
    expect(rows).toContainEqual(expect.objectContaining({ spawnId, nativeId, owner, backend: 'local', profile: 'small', agentId: 'echo', phase: 'running', tracked: false }));
    expect(parseYaml((await bin(['ls', '--config', config, '-o', 'yaml'])).stdout)).toEqual(rows);
    const jsonl = await bin(['ls', '--config', config, '--json']);
    expect(jsonLines(jsonl.stdout)).toEqual(rows);
    expect(lines((await bin(['ls', '--config', config, '-o', 'name'])).stdout)).toEqual(rows.map((r) => r['spawnId']));

    const table = lines((await bin(['ls', '--config', config])).stdout);
    expect(table[0]).toMatch(/^SPAWN ID +BACKEND +PROFILE +AGENT +OWNER +PHASE +EXPIRES$/);
    expect(table).toContainEqual(expect.stringMatching(new RegExp(`^${spawnId} +local +small +echo +${owner} +running +in \\d+m`)));
    const wide = lines((await bin(['ls', '--config', config, '-o', 'wide'])).stdout);
    expect(wide[0]).toMatch(/^SPAWN ID +BACKEND +PROFILE +AGENT +OWNER +PHASE +EXPIRES +NATIVE ID +TRACKED +EXPIRES AT$/);
    const expiresAt = rows.find((r) => r['spawnId'] === spawnId)?.['expiresAt'] as string;
    expect(wide).toContainEqual(expect.stringMatching(new RegExp(`^${spawnId} +local +small +echo +${owner} +running +in \\S+ +${nativeId} +no +${expiresAt.replace(/\./g, '\\.')}$`)));

    // Nothing found: the table says so on stderr and leaves stdout empty; -o json is still one document.
    const none = await bin(['ls', '--config', config, '--owner', 'nobody-here']);
    expect(none).toMatchObject({ code: 0, stdout: '', stderr: 'no workers of owner nobody-here (--all for every owner)\n' });
    expect(JSON.parse((await bin(['ls', '--config', config, '--owner', 'nobody-here', '-o', 'json'])).stdout)).toEqual([]);
  });

  it('status, sweep, doctor, admit: -o json one indented document, -o yaml the same, --json one line; status -o wide adds the backend\'s attributes', async () => {
    const { spawnId, nativeId } = spawned;
    const json = await bin(['status', '--config', config, spawnId, '-o', 'json']);
    expect(json.stdout.split('\n').length).toBeGreaterThan(3);
    const doc = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(doc).toMatchObject({ spawnId, tracking: 'untracked', backendStatus: { nativeId, phase: 'running' } });
    const yamlDoc = parseYaml((await bin(['status', '--config', config, spawnId, '-o', 'yaml'])).stdout) as Record<string, unknown>;
    expect(yamlDoc).toMatchObject({ spawnId, backend: 'local', profile: 'small', backendStatus: { nativeId, phase: 'running' } });
    const line = await bin(['status', '--config', config, spawnId, '--json']);
    expect(lines(line.stdout)).toHaveLength(1);
    expect(JSON.parse(line.stdout)).toMatchObject({ spawnId });
    const wide = await bin(['status', '--config', config, spawnId, '-o', 'wide']);
    expect(wide.stdout).toMatch(/^phase: +running \(ready\)$/m);
    expect(wide.stdout).toContain(`  process.pid: ${nativeId}\n`);
    expect(wide.stdout).toMatch(/^agent: +echo$/m);

    const sweep = await bin(['sweep', '--config', config, '--dry-run', '-o', 'json']);
    expect(sweep.code, sweep.stderr).toBe(0);
    expect(JSON.parse(sweep.stdout)).toMatchObject({ dryRun: true, owner, removed: [] });
    expect(parseYaml((await bin(['sweep', '--config', config, '--dry-run', '-o', 'yaml'])).stdout)).toEqual(JSON.parse(sweep.stdout));

    const doctorJson = await bin(['doctor', '--config', config, '-o', 'json']);
    const report = JSON.parse(doctorJson.stdout) as { ok: boolean; checks: { check: string; result: string; detail: string }[] };
    expect(report.checks[0]).toMatchObject({ check: 'policy bundle', result: 'ok' });
    expect(doctorJson.code).toBe(report.ok ? 0 : 1);
    expect(parseYaml((await bin(['doctor', '--config', config, '-o', 'yaml'])).stdout)).toEqual(report);
    const doctorWide = lines((await bin(['doctor', '--config', config, '-o', 'wide'])).stdout);
    expect(doctorWide[0]).toMatch(/^CHECK +RESULT +DETAIL +FIX$/);
    expect(doctorWide[1]).toMatch(new RegExp(`^policy bundle +ok +${report.checks[0]?.detail.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} +-$`));

    const request = join(backend.stateDir, 'request.json');
    writeFileSync(request, JSON.stringify({ agentId: 'echo', task: 't', caller: { sessionKey: 's', depth: 0, channel: { id: 'c', kind: 'cli' }, user: { id: 'u', roles: [] } } }));
    const admitted = await bin(['admit', '--config', config, '-i', request, '-o', 'yaml']);
    expect(admitted.code).toBe(0);
    expect(parseYaml(admitted.stdout)).toMatchObject({ allow: true, backend: 'local', profile: 'small', decisionId: expect.any(String) as unknown });
  });

  it('logs prints the worker\'s lines as written; --json passes its JSON lines through instead of encoding them again', async () => {
    const raw = await bin(['logs', '--config', config, spawned.spawnId]);
    expect(raw.code, raw.stderr).toBe(0);
    const written = lines(raw.stdout);
    const listening = written.find((l) => l.includes('"event":"listening"'));
    expect(listening).toBeDefined();
    const json = lines((await bin(['logs', '--config', config, '--json', spawned.spawnId])).stdout);
    expect(json).toEqual(written.map((l) => (l.trim().startsWith('{') ? l.trim() : JSON.stringify({ line: l }))));
    expect(JSON.parse(json.find((l) => l.includes('"event":"listening"')) ?? '{}')).toMatchObject({ event: 'listening', agentId: 'echo' });
  });

  it('logs -f: Ctrl-C stops following with exit 130', async () => {
    const follow = startBin(['logs', '-f', '--config', config, spawned.spawnId]);
    await follow.waitFor(/"event":"listening"/);
    follow.child.kill('SIGINT');
    const result = await follow.exited;
    // Stopped by its own handler, which returns 130, not killed by the signal's default action.
    expect(result.signal).toBeNull();
    expect(result.code, result.stderr).toBe(130);
    expect(result.stderr).toBe('');
  });

  it('logs -f: prints the tail once, and ends (exit 0) when the worker is closed', async () => {
    const before = lines((await bin(['logs', '--config', config, spawned.spawnId])).stdout);
    const follow = startBin(['logs', '-f', '--config', config, spawned.spawnId]);
    await follow.waitFor(/"event":"listening"/);
    const closed = await bin(['close', '--config', config, spawned.spawnId]);
    expect(closed.code, closed.stderr).toBe(0);
    const result = await follow.exited;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(new RegExp(`^spawngate logs: worker ${spawned.spawnId} (is gone|ended \\(.+\\))\\n$`));
    const printed = lines(result.stdout);
    expect(printed.slice(0, before.length)).toEqual(before);
    expect(new Set(printed).size).toBe(printed.length);
  });
});
