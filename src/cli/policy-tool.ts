/**
 * Node side of the policy toolchain: find the pinned OPA CLI, build the WASM bundle that the
 * admission engine loads, run `opa test` / `fmt` / `check` / `eval`, and compare bundles. CLI-only:
 * the runtime reader of bundles is src/admission/bundle.ts.
 *
 * Bundles are gzipped ustar archives holding exactly /policy.wasm, /data.json and /.manifest.
 * `opa build` also puts (rewritten) copies of the .rego sources in its archive; they are dropped
 * so the shipped artifact is the compiled policy only, and the archive is repacked with fixed
 * headers so that rebuilding unchanged sources gives a byte-identical file.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { PERMISSION_ENTRYPOINT } from '../admission/permissions.js';
import { MASK_ENTRYPOINT } from '../admission/decision-mask.js';
import { BLOCK, BUNDLE_MEMBERS, DECISION_QUERY, DEFAULT_LIMITS, parseManifest, POLICY_ENTRYPOINT, readArchiveFile, readArchiveMembers } from '../admission/bundle.js';
import { PolicyError, SpawngateError } from '../errors.js';

export interface TestResult {
  passed: number;
  failed: number;
  /** Percentage of lines covered in the non-test policy files; set when coverage was asked for and every test passed. */
  coverage?: number;
  output: string;
}

export interface CheckResult {
  ok: boolean;
  /** `opa fmt --diff` output; empty when every file is formatted. */
  formatDiff: string;
  /** `opa check --strict` errors; empty when the check passed. */
  checkErrors: string;
}

export interface BundleComparison {
  equal: boolean;
  /** One line per member that is missing on a side or differs. */
  differences: string[];
}

const OPA_TIMEOUT_MS = 120_000;
// The first ensure-opa.sh run compiles OPA from source, which takes minutes on two cores.
const ENSURE_OPA_TIMEOUT_MS = 20 * 60_000;
const MAX_OUTPUT_BYTES = 64 * 1024 * 1024;

const gzipAsync = promisify(gzip);

// ---------------------------------------------------------------------------------------------
// Running commands

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  cwd?: string;
  stdin?: string;
  timeoutMs?: number;
}

function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: options.timeoutMs ?? OPA_TIMEOUT_MS,
      killSignal: 'SIGKILL',
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let size = 0;
    const collect = (into: Buffer[]) => (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_OUTPUT_BYTES) {
        child.kill('SIGKILL');
        return;
      }
      into.push(chunk);
    };
    child.stdout.on('data', collect(stdout));
    child.stderr.on('data', collect(stderr));
    child.on('error', (err) => {
      reject(
        new PolicyError('POLICY_TOOL_FAILED', `cannot run ${command}: ${err.message}`, {
          cause: err,
          details: { command, args: [...args] },
        }),
      );
    });
    child.on('close', (code, signal) => {
      resolvePromise({ code, signal, stdout: Buffer.concat(stdout).toString('utf8'), stderr: Buffer.concat(stderr).toString('utf8') });
    });
    // opa may exit before reading stdin (e.g. on a load error); that is reported by its exit code.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.stdin ?? '');
  });
}

function toolFailure(what: string, command: string, args: readonly string[], result: RunResult): PolicyError {
  // opa prints most diagnostics (load and parse errors of build, eval and test) on stdout, not stderr.
  const diagnostics = stripAnsi(result.stderr.trim() || result.stdout.trim()).slice(0, 8000);
  const status = result.signal ? `was killed by ${result.signal}` : `exited with code ${String(result.code)}`;
  return new PolicyError('POLICY_TOOL_FAILED', `${what}: opa ${status}${diagnostics ? `: ${diagnostics}` : ''}`, {
    details: { command, args: [...args], exitCode: result.code, signal: result.signal, stderr: result.stderr, stdout: result.stdout },
  });
}

const ANSI_ESCAPE = new RegExp(String.raw`\u001b\[[0-9;]*m`, 'g');

function stripAnsi(text: string): string {
  return text.replace(ANSI_ESCAPE, '');
}

// ---------------------------------------------------------------------------------------------
// Finding opa

let opaLookup: Promise<string> | undefined;

/**
 * Locates the OPA CLI: $OPA_BIN, else the pinned build from scripts/ensure-opa.sh (building it
 * when needed), else an existing .tools/opa/<version>/opa, else `opa` on PATH. The answer is
 * cached for the life of the process.
 */
export function findOpa(): Promise<string> {
  opaLookup ??= locateOpa().catch((err: unknown) => {
    opaLookup = undefined;
    throw err;
  });
  return opaLookup;
}

async function locateOpa(): Promise<string> {
  const fromEnv = process.env.OPA_BIN;
  if (fromEnv) {
    if (await isExecutable(fromEnv)) return fromEnv;
    throw new SpawngateError('DEPENDENCY_MISSING', `OPA_BIN is set to ${fromEnv}, which is not an executable file`, {
      details: { dependency: 'opa', path: fromEnv },
    });
  }

  const notes: string[] = [];
  const root = await findPackageRoot();
  if (root) {
    const script = join(root, 'scripts', 'ensure-opa.sh');
    if (await exists(script)) {
      try {
        const result = await run('bash', [script], { cwd: root, timeoutMs: ENSURE_OPA_TIMEOUT_MS });
        const lines = result.stdout.trim().split('\n');
        const path = lines[lines.length - 1]?.trim();
        if (result.code === 0 && path && (await isExecutable(path))) return path;
        notes.push(`scripts/ensure-opa.sh failed: ${result.stderr.trim().split('\n').slice(-5).join(' | ') || `exit ${String(result.code)}`}`);
      } catch (err) {
        notes.push(`scripts/ensure-opa.sh could not run: ${(err as Error).message}`);
      }
    }
    const version = await pinnedOpaVersion(root);
    if (version) {
      const prebuilt = join(root, '.tools', 'opa', version, 'opa');
      if (await isExecutable(prebuilt)) return prebuilt;
    }
  }

  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, 'opa');
    if (await isExecutable(candidate)) return candidate;
  }

  throw new SpawngateError(
    'DEPENDENCY_MISSING',
    'the OPA CLI was not found: set OPA_BIN to an opa binary, run scripts/ensure-opa.sh (needs Go; builds the version pinned in ' +
      'tools/opa/go.mod into .tools/opa/<version>/opa), or put opa on PATH' +
      (notes.length > 0 ? ` (${notes.join('; ')})` : ''),
    { details: { dependency: 'opa', notes } },
  );
}

async function findPackageRoot(): Promise<string | undefined> {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { name?: unknown };
      if (pkg.name === 'spawngate') return dir;
    } catch {
      // no (readable) package.json here: keep walking up
    }
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

async function pinnedOpaVersion(root: string): Promise<string | undefined> {
  try {
    const gomod = await readFile(join(root, 'tools', 'opa', 'go.mod'), 'utf8');
    return /^\s*(?:require\s+)?github\.com\/open-policy-agent\/opa\s+(v\d\S*)/m.exec(gomod)?.[1];
  } catch {
    return undefined;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    const info = await stat(path);
    if (!info.isFile()) return false;
    await access(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Sources and revision

/** Files `opa build` loads from a policies folder, minus tests: relative POSIX paths, sorted. */
export async function policySourceFiles(policiesDir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile() && isPolicySource(entry.name)) out.push(relative(policiesDir, full).split(sep).join('/'));
    }
  };
  await walk(policiesDir);
  return out.sort();
}

function isPolicySource(name: string): boolean {
  if (name.endsWith('_test.rego')) return false;
  return /\.(rego|json|ya?ml)$/.test(name);
}

/** Content hash of the non-test sources and data: the bundle revision. */
export async function policyRevision(policiesDir: string): Promise<string> {
  const hash = createHash('sha256');
  const files = await policySourceFiles(policiesDir);
  if (files.length === 0) {
    throw new PolicyError('POLICY_TOOL_FAILED', `no policy sources (.rego, data.json) in ${policiesDir}`, { details: { policiesDir } });
  }
  for (const file of files) {
    const content = await readFile(join(policiesDir, file));
    // Length-prefixed so that moving bytes between a name and a body changes the hash.
    hash.update(`${file}\n${content.length}\n`);
    hash.update(content);
  }
  return hash.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Build

async function declaredPackages(policiesDir: string): Promise<Set<string>> {
  const found = new Set<string>();
  for (const file of await policySourceFiles(policiesDir)) {
    if (!file.endsWith('.rego') || file.endsWith('_test.rego')) continue;
    for (const m of (await readFile(join(policiesDir, file), 'utf8')).matchAll(/^package\s+([\w.]+)\s*$/gm)) found.add(m[1]!);
  }
  return found;
}

/**
 * Compiles the policies to a WASM bundle at `outFile`. The revision is policyRevision(), the
 * archive holds exactly /policy.wasm, /data.json and /.manifest with fixed tar headers.
 */
export async function buildBundle(opts: { policiesDir: string; outFile: string; opa?: string }): Promise<{ revision: string; outFile: string }> {
  const opa = opts.opa ?? (await findOpa());
  const policiesDir = resolve(opts.policiesDir);
  const outFile = resolve(opts.outFile);
  const revision = await policyRevision(policiesDir);
  const work = await mkdtemp(join(tmpdir(), 'spawngate-bundle-'));
  try {
    const raw = join(work, 'opa-bundle.tar.gz');
    // Run inside the folder with "." so that paths inside opa's output never depend on where the repo lives.
    // A policy set without a permission rule still builds: the engine then rejects every permission request, saying why.
    // Without a decision-log mask rule (package system.log) the log is only redacted.
    const packages = await declaredPackages(policiesDir);
    const entrypoints = [POLICY_ENTRYPOINT, ...(packages.has('spawngate.permissions') ? [PERMISSION_ENTRYPOINT] : []), ...(packages.has('system.log') ? [MASK_ENTRYPOINT] : [])];
    const args = ['build', '-t', 'wasm', ...entrypoints.flatMap((e) => ['-e', e]), '--ignore', '*_test.rego', '--revision', revision, '-o', raw, '.'];
    const result = await run(opa, args, { cwd: policiesDir });
    if (result.code !== 0) throw toolFailure(`opa build of ${policiesDir} failed`, opa, args, result);

    const members = await readArchiveMembers(await readFile(raw), raw, DEFAULT_LIMITS);
    const kept = new Map<string, Uint8Array>();
    for (const name of BUNDLE_MEMBERS) {
      const content = members.get(name);
      if (!content) {
        throw new PolicyError('POLICY_TOOL_FAILED', `opa build produced no /${name}`, { details: { member: name, members: [...members.keys()] } });
      }
      kept.set(name, content);
    }
    const manifest = parseManifest(kept.get('.manifest') ?? new Uint8Array(), raw);
    if (manifest.revision !== revision) {
      throw new PolicyError('POLICY_TOOL_FAILED', `opa build wrote revision ${manifest.revision}, expected ${revision}`, {
        details: { revision: manifest.revision, expected: revision },
      });
    }

    const archive = await gzipAsync(writeTar(kept), { level: 9 });
    const staging = `${outFile}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await writeFile(staging, archive);
      await rename(staging, outFile);
    } catch (err) {
      await rm(staging, { force: true });
      throw new PolicyError('POLICY_TOOL_FAILED', `cannot write ${outFile}: ${(err as Error).message}`, { cause: err, details: { outFile } });
    }
    return { revision, outFile };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Compares two bundle files member by member (the archive bytes themselves may differ). */
export async function compareBundles(a: string, b: string): Promise<BundleComparison> {
  const [left, right] = await Promise.all([readMembersOfFile(a), readMembersOfFile(b)]);
  const differences: string[] = [];
  for (const name of [...new Set([...left.keys(), ...right.keys()])].sort()) {
    const x = left.get(name);
    const y = right.get(name);
    if (!x) differences.push(`/${name}: only in ${b}`);
    else if (!y) differences.push(`/${name}: only in ${a}`);
    else if (!Buffer.from(x).equals(Buffer.from(y))) differences.push(`/${name}: contents differ (${x.length} vs ${y.length} bytes)`);
  }
  return { equal: differences.length === 0, differences };
}

async function readMembersOfFile(file: string): Promise<Map<string, Uint8Array>> {
  return readArchiveMembers(await readArchiveFile(file, DEFAULT_LIMITS), file, DEFAULT_LIMITS);
}

// ---------------------------------------------------------------------------------------------
// opa test / fmt / check / eval

interface OpaTestRecord {
  location?: { file?: string; row?: number };
  package?: string;
  name?: string;
  fail?: boolean;
  skip?: boolean;
  error?: { message?: string; code?: string } | string;
}

interface CoverageReport {
  files?: Record<string, { covered?: { start: { row: number }; end: { row: number } }[]; not_covered?: { start: { row: number }; end: { row: number } }[] }>;
}

/** Runs `opa test` (every *_test.rego under policiesDir); with coverage, also measures line coverage of the non-test files. */
export async function testPolicies(opts: { policiesDir: string; coverage?: boolean; opa?: string }): Promise<TestResult> {
  const opa = opts.opa ?? (await findOpa());
  const policiesDir = resolve(opts.policiesDir);
  const args = ['test', '--format', 'json', '.'];
  const result = await run(opa, args, { cwd: policiesDir });
  // 0: all passed, 2: some failed; anything else (1: load or compile error) leaves no results to count.
  if (result.code !== 0 && result.code !== 2) throw toolFailure(`opa test in ${policiesDir} failed`, opa, args, result);
  const records = parseJson<OpaTestRecord[]>(result.stdout, 'opa test output', opa, args, result);
  if (!Array.isArray(records)) throw toolFailure('opa test printed no result list', opa, args, result);

  const lines: string[] = [];
  let passed = 0;
  let failed = 0;
  for (const record of records) {
    const name = `${record.package ?? '?'}.${record.name ?? '?'}`;
    const where = record.location ? `${record.location.file ?? '?'}:${record.location.row ?? '?'}` : '?';
    if (record.skip) {
      lines.push(`SKIP  ${name} (${where})`);
    } else if (record.fail || record.error) {
      failed += 1;
      const error = typeof record.error === 'string' ? record.error : record.error?.message;
      lines.push(`${record.error ? 'ERROR' : 'FAIL '} ${name} (${where})${error ? `: ${error}` : ''}`);
    } else {
      passed += 1;
    }
  }
  lines.push(`${passed} passed, ${failed} failed`);

  let coverage: number | undefined;
  if (opts.coverage && failed === 0) {
    const coverArgs = ['test', '--coverage', '--format', 'json', '.'];
    const covered = await run(opa, coverArgs, { cwd: policiesDir });
    if (covered.code !== 0) throw toolFailure(`opa test --coverage in ${policiesDir} failed`, opa, coverArgs, covered);
    coverage = policyCoverage(parseJson<CoverageReport>(covered.stdout, 'opa coverage report', opa, coverArgs, covered));
    lines.push(`coverage of policy files: ${coverage.toFixed(2)}%`);
  }
  return { passed, failed, ...(coverage === undefined ? {} : { coverage }), output: lines.join('\n') };
}

function policyCoverage(report: CoverageReport): number {
  const rows = (ranges: { start: { row: number }; end: { row: number } }[] | undefined): Set<number> => {
    const out = new Set<number>();
    for (const range of ranges ?? []) for (let row = range.start.row; row <= range.end.row; row++) out.add(row);
    return out;
  };
  let covered = 0;
  let missed = 0;
  for (const [file, info] of Object.entries(report.files ?? {})) {
    if (file.endsWith('_test.rego')) continue;
    // Ranges are per expression, so one line can appear several times, even in both lists.
    const hit = rows(info.covered);
    covered += hit.size;
    for (const row of rows(info.not_covered)) if (!hit.has(row)) missed += 1;
  }
  return covered + missed === 0 ? 0 : (100 * covered) / (covered + missed);
}

/** `opa check --strict` then `opa fmt --diff` over policiesDir (tests included). */
export async function checkPolicies(opts: { policiesDir: string; opa?: string }): Promise<CheckResult> {
  const opa = opts.opa ?? (await findOpa());
  const policiesDir = resolve(opts.policiesDir);
  const checkArgs = ['check', '--strict', '.'];
  const checked = await run(opa, checkArgs, { cwd: policiesDir });
  if (checked.code !== 0 && checked.code !== 1) throw toolFailure(`opa check in ${policiesDir} failed`, opa, checkArgs, checked);
  const checkErrors = checked.code === 0 ? '' : stripAnsi(`${checked.stderr}${checked.stdout}`).trim() || `opa check exited with code ${String(checked.code)}`;
  if (checkErrors) return { ok: false, formatDiff: '', checkErrors };

  const fmtArgs = ['fmt', '--diff', '.'];
  const formatted = await run(opa, fmtArgs, { cwd: policiesDir });
  if (formatted.code !== 0) throw toolFailure(`opa fmt in ${policiesDir} failed`, opa, fmtArgs, formatted);
  const formatDiff = stripAnsi(formatted.stdout).trim();
  return { ok: formatDiff === '', formatDiff, checkErrors: '' };
}

export type PolicySource = { policiesDir: string; bundle?: never } | { bundle: string; policiesDir?: never };

/**
 * Evaluates `query` (default the decision) with `opa eval`, from sources (tests excluded) or from
 * a built bundle (evaluated through its policy.wasm). Returns undefined when the query is undefined.
 */
export async function evalPolicy(opts: PolicySource & { input: unknown; query?: string; opa?: string }): Promise<unknown> {
  const opa = opts.opa ?? (await findOpa());
  const query = opts.query ?? DECISION_QUERY;
  const source = opts.bundle !== undefined ? ['-b', resolve(opts.bundle)] : ['-d', resolve(opts.policiesDir), '--ignore', '*_test.rego'];
  const args = ['eval', ...source, '--stdin-input', '--format', 'json', query];
  const result = await run(opa, args, { stdin: JSON.stringify(opts.input ?? null) });
  if (result.code !== 0) throw toolFailure(`opa eval of ${query} failed`, opa, args, result);
  const parsed = parseJson<{ result?: { expressions?: { value?: unknown }[] }[] }>(result.stdout, 'opa eval output', opa, args, result);
  const first = parsed.result?.[0]?.expressions?.[0];
  return first ? first.value : undefined;
}

function parseJson<T>(text: string, what: string, command: string, args: readonly string[], result: RunResult): T {
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    const failure = toolFailure(`${what} is not JSON`, command, args, result);
    throw new PolicyError('POLICY_TOOL_FAILED', failure.message, { cause: err, details: failure.details });
  }
}

/** ustar with fixed mode/owner/mtime, members sorted by name, named "/<member>" as opa writes them. */
function writeTar(members: Map<string, Uint8Array>): Buffer {
  const blocks: Buffer[] = [];
  for (const name of [...members.keys()].sort()) {
    const content = members.get(name) ?? new Uint8Array();
    const header = Buffer.alloc(BLOCK);
    header.write(`/${name}`, 0, 100, 'utf8');
    header.write('0000644\0', 100, 'ascii');
    header.write('0000000\0', 108, 'ascii');
    header.write('0000000\0', 116, 'ascii');
    header.write(`${content.length.toString(8).padStart(11, '0')}\0`, 124, 'ascii');
    header.write('00000000000\0', 136, 'ascii');
    header.write('        ', 148, 'ascii');
    header.write('0', 156, 'ascii');
    header.write('ustar\0', 257, 'ascii');
    header.write('00', 263, 'ascii');
    let sum = 0;
    for (const byte of header) sum += byte;
    header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
    blocks.push(header, Buffer.from(content), Buffer.alloc((BLOCK - (content.length % BLOCK)) % BLOCK));
  }
  blocks.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(blocks);
}
