/**
 * Builds the worker image without a registry: a root filesystem made from what this host already
 * has — the Node binary running spawngate, the shared libraries it links (ldd), the built package and
 * its production dependencies — tarred and `docker import`ed with the entrypoint, user and env set.
 * The image carries a hash of every input as a label, so a rebuild with nothing changed is a no-op.
 *
 * Image layout:
 *   /usr/local/bin/node        the host's Node binary (its real file, not the symlink)
 *   /usr/bin/{sh,bash,git,tar,…}  a userland for coding agents (USERLAND; `userland: false` leaves it out)
 *   /usr/lib/git-core/…        git's helpers (clone over https, file://, ssh)
 *   /etc/ssl/certs/ca-certificates.crt  the host's CA bundle (SSL_CERT_FILE)
 *   /lib…, /usr/lib…           the shared libraries and dynamic loader of all of these, at their host paths
 *   /home/spawngate            HOME, owned by 10001 (the backends mount a tmpfs/emptyDir there)
 *   /app/{package.json,dist,bin,node_modules}
 *   /etc/passwd, /etc/group    root and worker (uid/gid 10001)
 *   /workspace                 owned by 10001 (copied into fresh volumes mounted there)
 *   /tmp, /run/spawngate       mount points
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { chmod, copyFile, link, lstat, mkdir, mkdtemp, readdir, readlink, realpath, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { SpawngateError } from '../../errors.js';
import { isWithin, PACKAGE_ROOT } from '../../paths.js';
import { connectDocker, engineCall, engineCallOr404 } from './client.js';
import { SOCKET_MOUNT, WORKER_UID, WORKSPACE_MOUNT } from './plan.js';

const run = promisify(execFile);

export const WORKER_IMAGE_REPOSITORY = 'spawngate-worker';
export const IMAGE_INPUTS_LABEL = 'spawngate.io/image-inputs';
/** Bump when the layout or the import changes, so old images with equal file inputs are rebuilt. */
const LAYOUT_VERSION = '3';

/**
 * Host programs a coding agent expects to find (a shell, git, the tools its shell commands use),
 * shipped with their shared libraries. Ones this host lacks are left out and logged.
 */
export const USERLAND: readonly string[] = [
  'sh', 'bash', 'env', 'git', 'tar', 'gzip', 'cat', 'ls', 'cp', 'mv', 'rm', 'mkdir', 'rmdir', 'touch', 'chmod', 'ln',
  'grep', 'sed', 'find', 'xargs', 'head', 'tail', 'wc', 'sort', 'uniq', 'cut', 'tr', 'diff', 'patch', 'which',
  'dirname', 'basename', 'realpath', 'readlink', 'sleep', 'id', 'uname', 'date', 'printf', 'echo', 'tee', 'stat', 'test',
];
const HOME_DIR = 'home/spawngate';
const CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

export function packageVersion(packageRoot: string = PACKAGE_ROOT): string {
  const pkg = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
}

/** `spawngate-worker:<package version>`: the image a container backend uses when neither backend nor profile names one. */
export function defaultWorkerImage(packageRoot: string = PACKAGE_ROOT): string {
  return `${WORKER_IMAGE_REPOSITORY}:${packageVersion(packageRoot)}`;
}

export interface BuildWorkerImageOptions {
  /** The spawngate package to put in the image (needs dist/ built); default: this package. */
  packageRoot?: string;
  /** Node binary to ship; default: the one running now. Symlinks are followed. */
  nodeBinary?: string;
  /** Default `spawngate-worker:<version>`. */
  tag?: string;
  /** Engine socket; default DOCKER_HOST or /var/run/docker.sock. */
  socketPath?: string;
  /** Rebuild even when an image with the same inputs exists. */
  force?: boolean;
  /** More files to ship, at absolute image paths (e.g. a test agent at /app/test/fixtures/agent.ts). */
  extraFiles?: readonly { source: string; path: string }[];
  /** Installed agents (an npm prefix folder each) to ship under /opt/agents/<id>; `native`: their native executables, whose shared libraries the image needs too. */
  agents?: readonly { id: string; dir: string; native?: readonly string[] }[];
  /** Where the root filesystem is staged; default the OS temp dir. */
  workDir?: string;
  /** Host programs to ship with their libraries; default USERLAND; false for node and the worker only. */
  userland?: boolean | readonly string[];
  log?: (line: string) => void;
}

export interface BuiltWorkerImage {
  tag: string;
  imageId: string;
  /** sha256 over every file, mode and image setting that went in. */
  inputsHash: string;
  /** false when an up-to-date image already existed. */
  built: boolean;
}

type Entry =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; source: string }
  | { kind: 'text'; path: string; mode: number; content: string }
  /** A hard link to another file entry of the image (git's helpers are one binary under 100+ names). */
  | { kind: 'link'; path: string; mode: number; target: string }
  /** A symbolic link kept as one (an npm .bin entry, a package's alias): `target` as it was written, relative. */
  | { kind: 'symlink'; path: string; mode: number; target: string };

function buildError(message: string, cause?: unknown, code: 'BACKEND_FAILED' | 'DEPENDENCY_MISSING' = 'BACKEND_FAILED'): SpawngateError {
  return new SpawngateError(code, message, cause === undefined ? {} : { cause });
}

/** Shared libraries and loader a dynamic binary needs, as absolute host paths; [] for a static one. */
export async function sharedLibraries(binary: string): Promise<string[]> {
  let output: string;
  try {
    output = (await run('ldd', [binary])).stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') throw buildError('ldd is needed to find the Node binary\'s shared libraries (install libc-bin)', err, 'DEPENDENCY_MISSING');
    if (`${e.stdout ?? ''}${e.stderr ?? ''}`.includes('not a dynamic executable')) return [];
    throw buildError(`ldd ${binary} failed: ${e.stderr ?? e.message}`, err);
  }
  const libs = new Set<string>();
  for (const line of output.split('\n')) {
    if (line.includes('=> not found')) throw buildError(`${binary} needs a library this host lacks: ${line.trim()}`);
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or, for the loader, "/lib64/ld-linux-x86-64.so.2 (0x…)"
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line);
    if (m?.[1]) libs.add(m[1]);
  }
  return [...libs];
}

interface PackageJson {
  name?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

function readPackageJson(dir: string): PackageJson {
  return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as PackageJson;
}

/** Node's lookup: <dir>/node_modules/<name> for dir and each ancestor (skipping node_modules folders themselves). */
function findPackage(fromDir: string, name: string): { path: string; owner: string } | null {
  let dir = fromDir;
  for (;;) {
    if (basename(dir) !== 'node_modules') {
      const candidate = join(dir, 'node_modules', name);
      if (existsSync(join(candidate, 'package.json'))) return { path: candidate, owner: dir };
    }
    const parent = dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
}

/**
 * The production dependency closure of `packageRoot`, each placed under app/ where Node will find it
 * from /app/dist: a package nested in another's node_modules stays nested (its version differs from
 * the hoisted one); one found in node_modules of the root or of an ancestor (an installed, hoisted
 * spawngate) goes to app/node_modules. Dev dependencies and optional peers (dockerode…) stay out.
 */
export function productionPackages(root: string): { source: string; dest: string }[] {
  const packageRoot = resolve(root);
  const placedDest = new Map<string, string>([[packageRoot, 'app']]);
  const byDest = new Map<string, string>();
  const out: { source: string; dest: string }[] = [];
  const queue: { dir: string; isRoot: boolean }[] = [{ dir: packageRoot, isRoot: true }];
  while (queue.length > 0) {
    const { dir, isRoot } = queue.shift()!;
    const pkg = readPackageJson(dir);
    const wanted: { name: string; optional: boolean }[] = [
      ...Object.keys(pkg.dependencies ?? {}).map((name) => ({ name, optional: false })),
      ...Object.keys(pkg.optionalDependencies ?? {}).map((name) => ({ name, optional: true })),
      // A root's peers are the gateway's optional SDKs; a dependency's required peers must ship with it.
      ...(isRoot ? [] : Object.keys(pkg.peerDependencies ?? {}).map((name) => ({ name, optional: pkg.peerDependenciesMeta?.[name]?.optional === true }))),
    ];
    for (const { name, optional } of wanted) {
      const found = findPackage(dir, name);
      if (!found) {
        if (optional) continue;
        throw buildError(`${pkg.name ?? dir} depends on ${name}, which is not installed under ${dir}; run npm install`, undefined, 'DEPENDENCY_MISSING');
      }
      if (placedDest.has(found.path)) continue;
      const owner = found.owner;
      const ownerDest = placedDest.get(owner) ?? (isWithin(owner, packageRoot) ? 'app' : null);
      if (ownerDest === null) throw buildError(`cannot place ${found.path} in the image: it is neither nested in a placed package nor hoisted above ${packageRoot}`);
      const dest = `${ownerDest}/node_modules/${name}`;
      const clash = byDest.get(dest);
      if (clash !== undefined) throw buildError(`two different packages map to /${dest}: ${clash} and ${found.path}`);
      byDest.set(dest, found.path);
      placedDest.set(found.path, dest);
      out.push({ source: found.path, dest });
      queue.push({ dir: found.path, isRoot: false });
    }
  }
  return out;
}

/** Every file under `source` as entries under `dest`; symlinks are copied as the files they point to. */
/**
 * The files under `source` as entries under `dest`. What npm made links stays links, so an image
 * holds each file's bytes once (an agent's native binary is often reachable as a .bin symlink and
 * as a hard link under a second package: tripled, it was 741 MB instead of 370 for opencode):
 * a symlink whose target stays inside the tree is kept as the same relative symlink, a second name
 * of an inode becomes a hard link to the first. A symlink leading out of the tree, or absolute, is
 * copied as what it points to: the image must not depend on the builder's filesystem.
 */
async function treeEntries(source: string, dest: string, skipTopLevel: ReadonlySet<string> = new Set()): Promise<Entry[]> {
  const lexicalRoot = resolve(source);
  const root = await realpath(source);
  const inodes = new Map<string, string>();
  const walk = async (from: string, to: string, skip: ReadonlySet<string>): Promise<Entry[]> => {
    const entries: Entry[] = [{ kind: 'dir', path: to, mode: 0o755 }];
    for (const name of (await readdir(from)).sort()) {
      if (skip.has(name)) continue;
      const fromPath = join(from, name);
      const toPath = `${to}/${name}`;
      const own = await lstat(fromPath);
      if (own.isSymbolicLink()) {
        const target = await readlink(fromPath);
        const resolved = await realpath(fromPath).catch(() => null);
        if (!resolved) continue; // dangling symlink
        const lexical = resolve(dirname(fromPath), target);
        // Not into a top-level folder left out here (a package's nested node_modules is placed apart).
        const top = relative(lexicalRoot, lexical).split(sep)[0] ?? '';
        if (!isAbsolute(target) && isWithin(lexicalRoot, lexical) && !skipTopLevel.has(top) && isWithin(root, resolved)) {
          entries.push({ kind: 'symlink', path: toPath, mode: 0o777, target });
          continue;
        }
      }
      const st = await stat(fromPath);
      if (st.isDirectory()) entries.push(...(await walk(fromPath, toPath, new Set())));
      else if (st.isFile()) {
        const inode = `${st.dev}:${st.ino}`;
        const first = own.isSymbolicLink() ? undefined : inodes.get(inode);
        if (first !== undefined) entries.push({ kind: 'link', path: toPath, mode: st.mode & 0o111 ? 0o755 : 0o644, target: first });
        else {
          if (!own.isSymbolicLink()) inodes.set(inode, toPath);
          entries.push({ kind: 'file', path: toPath, mode: st.mode & 0o111 ? 0o755 : 0o644, source: fromPath });
        }
      }
    }
    return entries;
  };
  return walk(source, dest, skipTopLevel);
}

/** The first executable named `name` on PATH, with symlinks resolved to the real file; null when none. */
async function onPath(name: string): Promise<string | null> {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').filter(Boolean)) {
    const candidate = join(dir, name);
    const st = await stat(candidate).catch(() => null);
    if (st?.isFile() && st.mode & 0o111) return candidate;
  }
  return null;
}

async function isElf(path: string): Promise<boolean> {
  const { open } = await import('node:fs/promises');
  const handle = await open(path, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(4), 0, 4, 0);
    return bytesRead === 4 && buffer.toString('latin1') === '\x7fELF';
  } finally {
    await handle.close();
  }
}

/** Userland programs (at /usr/bin/<name>), git's helpers, the CA bundle, and every library they link. */
async function userlandEntries(programs: readonly string[], log: (line: string) => void): Promise<{ entries: Entry[]; libraries: Set<string> }> {
  const entries: Entry[] = [];
  const libraries = new Set<string>();
  const missing: string[] = [];
  // One copy per inode: a second name of the same file is a hard link in the image, and ldd runs once.
  const shipped = new Map<string, string>();
  const ship = async (source: string, path: string): Promise<void> => {
    const real = await realpath(source);
    const st = await stat(real);
    const inode = `${st.dev}:${st.ino}`;
    const first = shipped.get(inode);
    if (first !== undefined) {
      entries.push({ kind: 'link', path, mode: 0o755, target: first });
      return;
    }
    shipped.set(inode, path);
    entries.push({ kind: 'file', path, mode: 0o755, source: real });
    if (await isElf(real)) for (const lib of await sharedLibraries(real)) libraries.add(lib);
  };
  for (const name of programs) {
    const found = await onPath(name);
    if (found) await ship(found, `usr/bin/${name}`);
    else missing.push(name);
  }
  // `#!/bin/sh` scripts and child_process.exec name /bin/sh itself.
  for (const name of ['sh', 'bash']) {
    const found = programs.includes(name) ? await onPath(name) : null;
    if (found) await ship(found, `bin/${name}`);
  }
  if (programs.includes('git')) {
    const gitCore = '/usr/lib/git-core';
    for (const name of existsSync(gitCore) ? (await readdir(gitCore)).sort() : []) {
      const from = join(gitCore, name);
      const st = await stat(from).catch(() => null);
      if (st?.isFile()) await ship(from, `usr/lib/git-core/${name}`);
    }
  }
  // Without its templates `git init` warns on every repository it makes.
  const templates = '/usr/share/git-core/templates';
  if (programs.includes('git') && existsSync(templates)) entries.push(...(await treeEntries(templates, templates.slice(1))));
  if (existsSync(CA_BUNDLE)) entries.push({ kind: 'file', path: CA_BUNDLE.slice(1), mode: 0o644, source: await realpath(CA_BUNDLE) });
  else missing.push(CA_BUNDLE);
  if (missing.length) log(`userland: not on this host, left out: ${missing.join(', ')}`);
  return { entries, libraries };
}

/** Where `image build --agent` puts an agent's install folder. */
export const AGENTS_IN_IMAGE = '/opt/agents';

async function imageEntries(
  packageRoot: string,
  nodeBinary: string,
  extraFiles: readonly { source: string; path: string }[],
  userland: readonly string[],
  log: (line: string) => void,
  agents: readonly { id: string; dir: string; native?: readonly string[] }[] = [],
): Promise<Entry[]> {
  const entries: Entry[] = [];
  const dir = (path: string, mode = 0o755): void => void entries.push({ kind: 'dir', path, mode });
  for (const d of ['etc', 'usr', 'usr/local', 'usr/local/bin', 'run', SOCKET_MOUNT.slice(1), 'app']) dir(d);
  dir('tmp', 0o1777);
  dir(WORKSPACE_MOUNT.slice(1), 0o755);
  dir('home');
  dir(HOME_DIR, 0o700);

  entries.push({ kind: 'file', path: 'usr/local/bin/node', mode: 0o755, source: nodeBinary });
  const libraries = new Set(await sharedLibraries(nodeBinary));
  // A native agent (codex-acp links libssl, libcrypto, libz) needs its libraries in the image as node does.
  for (const agent of agents) for (const binary of agent.native ?? []) for (const lib of await sharedLibraries(binary)) libraries.add(lib);
  if (userland.length) {
    const extra = await userlandEntries(userland, log);
    for (const e of extra.entries) {
      const parts = e.path.split('/');
      for (let i = 1; i < parts.length; i++) dir(parts.slice(0, i).join('/'));
      entries.push(e);
    }
    for (const lib of extra.libraries) libraries.add(lib);
  }
  for (const lib of [...libraries].sort()) {
    const parts = lib.slice(1).split('/');
    for (let i = 1; i < parts.length; i++) dir(parts.slice(0, i).join('/'));
    // The loader and libs are often symlinks (/lib64/ld-linux… → …): ship the real bytes at the path ldd named.
    entries.push({ kind: 'file', path: lib.slice(1), mode: 0o755, source: await realpath(lib) });
  }
  entries.push(
    { kind: 'text', path: 'etc/passwd', mode: 0o644, content: `root:x:0:0:root:/root:/usr/sbin/nologin\nworker:x:${WORKER_UID}:${WORKER_UID}:spawngate worker:/${HOME_DIR}:${userland.includes('sh') ? '/usr/bin/sh' : '/usr/sbin/nologin'}\n` },
    { kind: 'text', path: 'etc/group', mode: 0o644, content: `root:x:0:\nworker:x:${WORKER_UID}:\n` },
  );

  entries.push({ kind: 'file', path: 'app/package.json', mode: 0o644, source: join(packageRoot, 'package.json') });
  entries.push(...(await treeEntries(join(packageRoot, 'dist'), 'app/dist')));
  if (existsSync(join(packageRoot, 'bin'))) entries.push(...(await treeEntries(join(packageRoot, 'bin'), 'app/bin')));
  dir('app/node_modules');
  for (const pkg of productionPackages(packageRoot)) {
    const parts = pkg.dest.split('/');
    for (let i = 1; i < parts.length; i++) dir(parts.slice(0, i).join('/'));
    // Nested dependencies are placed by productionPackages, not copied wholesale with their parent.
    entries.push(...(await treeEntries(pkg.source, pkg.dest, new Set(['node_modules']))));
  }

  for (const agent of agents) {
    const dest = `${AGENTS_IN_IMAGE.slice(1)}/${agent.id}`;
    for (const d of ['opt', AGENTS_IN_IMAGE.slice(1), dest]) dir(d);
    entries.push(...(await treeEntries(join(agent.dir, 'node_modules'), `${dest}/node_modules`)));
    entries.push({ kind: 'file', path: `${dest}/package.json`, mode: 0o644, source: join(agent.dir, 'package.json') });
  }

  for (const extra of extraFiles) {
    if (!isAbsolute(extra.path) || extra.path.split('/').includes('..')) throw buildError(`extra file path ${extra.path} must be absolute, without ".."`);
    if (entries.some((e) => e.path === extra.path.slice(1))) throw buildError(`extra file ${extra.path} would replace a file of the image`);
    const parts = extra.path.slice(1).split('/');
    for (let i = 1; i < parts.length; i++) dir(parts.slice(0, i).join('/'));
    const mode = (await stat(extra.source)).mode & 0o111 ? 0o755 : 0o644;
    entries.push({ kind: 'file', path: extra.path.slice(1), mode, source: extra.source });
  }

  // Later duplicates (a parent dir named twice) add nothing; keep the first of each path.
  const seen = new Set<string>();
  return entries.filter((e) => (seen.has(e.path) ? false : (seen.add(e.path), true))).sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

function importChanges(inputsHash: string, version: string): string[] {
  return [
    `ENTRYPOINT ["/usr/local/bin/node","/app/dist/worker/bundle/worker.js"]`,
    `USER ${WORKER_UID}`,
    `WORKDIR ${WORKSPACE_MOUNT}`,
    'ENV NODE_ENV=production',
    `ENV HOME=/${HOME_DIR}`,
    'ENV PATH=/usr/local/bin:/usr/bin:/bin',
    `ENV SSL_CERT_FILE=${CA_BUNDLE}`,
    `LABEL ${IMAGE_INPUTS_LABEL}=${inputsHash}`,
    `LABEL org.opencontainers.image.title=${WORKER_IMAGE_REPOSITORY}`,
    `LABEL org.opencontainers.image.version=${version}`,
  ];
}

async function hashInputs(entries: readonly Entry[], settings: readonly string[]): Promise<string> {
  const hash = createHash('sha256');
  hash.update(`layout ${LAYOUT_VERSION}\n`);
  for (const setting of settings) hash.update(`setting ${setting}\n`);
  for (const entry of entries) {
    hash.update(`${entry.kind} ${entry.path} ${entry.mode.toString(8)}\n`);
    if (entry.kind === 'text') hash.update(entry.content);
    if (entry.kind === 'link' || entry.kind === 'symlink') hash.update(entry.target);
    if (entry.kind === 'file') {
      for await (const chunk of createReadStream(entry.source)) hash.update(chunk as Buffer);
    }
  }
  return `sha256:${hash.digest('hex')}`;
}

async function stage(entries: readonly Entry[], rootfs: string): Promise<void> {
  // Links last: their targets must exist. tar stores a second name of an inode as a hard link.
  const last = (e: Entry): boolean => e.kind === 'link' || e.kind === 'symlink';
  for (const entry of [...entries.filter((e) => !last(e)), ...entries.filter(last)]) {
    const target = join(rootfs, entry.path);
    if (entry.kind === 'dir') await mkdir(target, { recursive: true });
    else {
      await mkdir(dirname(target), { recursive: true });
      if (entry.kind === 'file') await copyFile(entry.source, target);
      else if (entry.kind === 'link') await link(join(rootfs, entry.target), target);
      else if (entry.kind === 'symlink') await symlink(entry.target, target);
      else await writeFile(target, entry.content);
    }
    if (!last(entry)) await chmod(target, entry.mode);
  }
}

async function tarRootfs(rootfs: string, tarball: string): Promise<void> {
  const workspace = WORKSPACE_MOUNT.slice(1);
  const top = (await readdir(rootfs)).filter((name) => name !== workspace && name !== 'home').sort();
  // Ownership is set in the archive, not on disk, so a non-root builder makes the same image:
  // everything root's, except the workspace folder the worker must be able to write.
  const common = ['--numeric-owner', '--sort=name', '--mtime=@0', '-C', rootfs];
  try {
    await run('tar', [...common, '--owner=0', '--group=0', '-cf', tarball, ...top]);
    await run('tar', [...common, '--owner=0', '--group=0', '--no-recursion', '-rf', tarball, 'home']);
    await run('tar', [...common, `--owner=${WORKER_UID}`, `--group=${WORKER_UID}`, '-rf', tarball, workspace, HOME_DIR]);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw buildError('GNU tar is needed to build the worker image', err, 'DEPENDENCY_MISSING');
    throw buildError(`tar failed: ${e.stderr ?? e.message}`, err);
  }
}

/**
 * Builds (or finds up to date) the worker image. Needs `dist/` built (npm run build) and an engine
 * (scripts/ensure-docker.sh). Nothing is pulled: the engine may have no registry at all.
 */
export async function buildWorkerImage(options: BuildWorkerImageOptions = {}): Promise<BuiltWorkerImage> {
  const log = options.log ?? (() => undefined);
  const packageRoot = resolve(options.packageRoot ?? PACKAGE_ROOT);
  // The entry point is the bundle (scripts/bundle-worker.mjs): one file to load, a faster start.
  const entry = join(packageRoot, 'dist', 'worker', 'bundle', 'worker.js');
  if (!existsSync(entry)) {
    throw buildError(`${entry} does not exist; run \`npm run build\` first`, undefined, 'DEPENDENCY_MISSING');
  }
  const version = packageVersion(packageRoot);
  const tag = options.tag ?? defaultWorkerImage(packageRoot);
  const nodeBinary = await realpath(options.nodeBinary ?? process.execPath);
  if (!(await lstat(nodeBinary)).isFile()) throw buildError(`${nodeBinary} is not a file`);

  const userland = options.userland === false ? [] : options.userland === true || options.userland === undefined ? USERLAND : options.userland;
  const entries = await imageEntries(packageRoot, nodeBinary, options.extraFiles ?? [], userland, log, options.agents ?? []);
  const inputsHash = await hashInputs(entries, importChanges('', version));
  const changes = importChanges(inputsHash, version);

  const docker = await connectDocker(options.socketPath ? { socketPath: options.socketPath } : {});
  const existing = await engineCallOr404('inspect image', () => docker.getImage(tag).inspect(), null, { image: tag });
  if (existing && !options.force && existing.Config.Labels?.[IMAGE_INPUTS_LABEL] === inputsHash) {
    log(`${tag} is up to date (${inputsHash.slice(0, 19)}…); nothing to build`);
    return { tag, imageId: existing.Id, inputsHash, built: false };
  }

  const workDir = await mkdtemp(join(options.workDir ?? tmpdir(), 'spawngate-image-'));
  try {
    const rootfs = join(workDir, 'rootfs');
    const tarball = join(workDir, 'rootfs.tar');
    log(`staging ${entries.length} entries (node ${nodeBinary}) in ${rootfs}`);
    await stage(entries, rootfs);
    await tarRootfs(rootfs, tarball);
    const size = (await stat(tarball)).size;
    log(`importing ${(size / 2 ** 20).toFixed(1)} MiB root filesystem as ${tag}`);
    const [repo, tagPart] = splitTag(tag);
    const progress = await engineCall('import image', () => docker.importImage(createReadStream(tarball), { repo, tag: tagPart, changes }));
    await new Promise<void>((resolve, reject) => {
      docker.modem.followProgress(progress, (err: Error | null, output: { error?: string; errorDetail?: { message?: string } }[]) => {
        const failed = err ?? output.find((o) => o.error);
        if (failed) reject(buildError(`docker import of ${tag} failed: ${failed instanceof Error ? failed.message : (failed.errorDetail?.message ?? failed.error)}`, failed));
        else resolve();
      });
    });
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
  const image = await engineCall('inspect image', () => docker.getImage(tag).inspect(), { image: tag });
  log(`built ${tag} ${image.Id}`);
  if (existing && existing.Id !== image.Id) {
    // The tag moved; the previous build would linger as a dangling 160 MB image. In use (409) → keep it.
    await docker
      .getImage(existing.Id)
      .remove()
      .then(() => log(`removed the previous ${tag} ${existing.Id}`))
      .catch(() => undefined);
  }
  return { tag, imageId: image.Id, inputsHash, built: true };
}

/** "repo:tag" → [repo, tag]; a registry port ("host:5000/repo") is not a tag. */
function splitTag(reference: string): [string, string] {
  const slash = reference.lastIndexOf('/');
  const colon = reference.lastIndexOf(':');
  return colon > slash ? [reference.slice(0, colon), reference.slice(colon + 1)] : [reference, 'latest'];
}
