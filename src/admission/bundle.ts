/**
 * Reading the admission engine's bundles at run time: a gzipped ustar archive holding exactly
 * /policy.wasm, /data.json and /.manifest, checked member by member with size limits. Building,
 * testing and comparing bundles is the CLI's tooling (src/cli/policy-tool.ts), never loaded by a gate.
 */
import { BoundedReadError, readBoundedFile } from '../files.js';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { PolicyError } from '../errors.js';

export const POLICY_ENTRYPOINT = 'spawngate/admission/decision';
export const DECISION_QUERY = 'data.spawngate.admission.decision';
export const BUNDLE_MEMBERS = ['.manifest', 'data.json', 'policy.wasm'] as const;
export type BundleMemberName = (typeof BUNDLE_MEMBERS)[number];

export interface BundleManifest {
  revision: string;
  roots?: string[];
  wasm?: { entrypoint: string; module: string }[];
  rego_version?: number;
  [key: string]: unknown;
}

export interface BundleContents {
  wasm: Uint8Array;
  data: unknown;
  manifest: BundleManifest;
  /** manifest.revision, repeated so the result is a PolicyBundle for the engine. */
  revision: string;
}

export interface BundleLimits {
  /** Largest member accepted (bytes). */
  maxMemberBytes?: number;
  /** Largest archive accepted, compressed file and decompressed tar alike (bytes). */
  maxArchiveBytes?: number;
}

export const DEFAULT_LIMITS: Required<BundleLimits> = { maxMemberBytes: 32 * 1024 * 1024, maxArchiveBytes: 64 * 1024 * 1024 };

const gunzipAsync = promisify(gunzip);

// ---------------------------------------------------------------------------------------------
// Reading bundles

/** Reads and validates a bundle file; every fault is a POLICY_LOAD_FAILED with `details.reason`. */
export async function readBundle(file: string, limits: BundleLimits = {}): Promise<BundleContents> {
  const effective = { ...DEFAULT_LIMITS, ...limits };
  return parseBundle(await readArchiveFile(file, effective), { ...effective, source: file });
}

/** Same as readBundle for bytes already in memory (e.g. a bundle fetched over HTTP). */
export async function parseBundle(archive: Uint8Array, options: BundleLimits & { source?: string } = {}): Promise<BundleContents> {
  const limits = { ...DEFAULT_LIMITS, ...options };
  const source = options.source ?? 'bundle';
  if (archive.length > limits.maxArchiveBytes) {
    throw loadFailure(source, 'oversized', `archive is ${archive.length} bytes, more than the ${limits.maxArchiveBytes} allowed`);
  }
  const members = await readArchiveMembers(archive, source, limits);
  for (const name of members.keys()) {
    // A nested data.json would be merged under a sub-path by OPA; this loader knows only the root one.
    if (/(^|\/)data\.(json|ya?ml)$/.test(name) && name !== 'data.json') {
      throw loadFailure(source, 'unsupported_member', `member /${name} is not supported: all data must be in /data.json`, name);
    }
  }
  const wasm = requireMember(members, 'policy.wasm', source);
  const manifest = parseManifest(requireMember(members, '.manifest', source), source);
  const data = parseJsonMember(requireMember(members, 'data.json', source), 'data.json', source);
  return { wasm, data, manifest, revision: manifest.revision };
}

function requireMember(members: Map<string, Uint8Array>, name: BundleMemberName, source: string): Uint8Array {
  const content = members.get(name);
  if (!content) throw loadFailure(source, 'missing_member', `bundle has no /${name}`, name);
  return content;
}

function parseJsonMember(content: Uint8Array, name: string, source: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(content));
  } catch (err) {
    throw loadFailure(source, 'invalid_json', `/${name} is not valid JSON`, name, err);
  }
}

export function parseManifest(content: Uint8Array, source: string): BundleManifest {
  const manifest = parseJsonMember(content, '.manifest', source);
  if (typeof manifest !== 'object' || manifest === null || Array.isArray(manifest) || typeof (manifest as { revision?: unknown }).revision !== 'string') {
    throw loadFailure(source, 'invalid_manifest', '/.manifest must be an object with a string "revision"', '.manifest');
  }
  return manifest as BundleManifest;
}

function loadFailure(source: string, reason: string, message: string, member?: string, cause?: unknown): PolicyError {
  return new PolicyError('POLICY_LOAD_FAILED', `cannot load policy bundle ${source}: ${message}`, {
    cause,
    details: { source, reason, ...(member === undefined ? {} : { member }) },
  });
}

/** The archive's bytes: a regular file only (a FIFO or /dev/zero is refused at once, not read for ever), at most maxArchiveBytes. */
export async function readArchiveFile(file: string, limits: Required<BundleLimits>): Promise<Uint8Array> {
  try {
    return await readBoundedFile(file, limits.maxArchiveBytes);
  } catch (err) {
    if (err instanceof BoundedReadError && err.fault.reason === 'too_large') throw loadFailure(file, 'oversized', `file is more than the ${limits.maxArchiveBytes} bytes allowed`, undefined, err);
    if (err instanceof BoundedReadError && err.fault.reason === 'not_regular') throw loadFailure(file, 'unreadable', `it ${err.message}`, undefined, err);
    throw loadFailure(file, 'unreadable', `cannot read it (${(err as Error).message})`, undefined, err);
  }
}

export const BLOCK = 512;

/** gunzip + ustar: regular files only, names normalised without the leading "/", traversal rejected. */
export async function readArchiveMembers(archive: Uint8Array, source: string, limits: Required<BundleLimits>): Promise<Map<string, Uint8Array>> {
  let tar: Buffer;
  try {
    tar = await gunzipAsync(archive, { maxOutputLength: limits.maxArchiveBytes });
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) {
      throw loadFailure(source, 'oversized', `decompressed archive exceeds ${limits.maxArchiveBytes} bytes`, undefined, err);
    }
    const reason = code === 'Z_BUF_ERROR' ? 'truncated' : 'corrupt';
    throw loadFailure(source, reason, `not a readable gzip stream (${(err as Error).message})`, undefined, err);
  }

  const members = new Map<string, Uint8Array>();
  let offset = 0;
  for (;;) {
    if (offset + BLOCK > tar.length) throw loadFailure(source, 'truncated', 'tar ends before its end-of-archive marker');
    const header = tar.subarray(offset, offset + BLOCK);
    if (header.every((byte) => byte === 0)) return members;

    const expected = parseOctal(header.subarray(148, 156));
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0);
    if (expected === undefined || expected !== sum) throw loadFailure(source, 'corrupt', `bad tar header checksum at offset ${offset}`);

    const rawName = tarString(header.subarray(0, 100));
    const magic = tarString(header.subarray(257, 263));
    const prefix = magic.startsWith('ustar') ? tarString(header.subarray(345, 500)) : '';
    const fullName = prefix ? `${prefix}/${rawName}` : rawName;
    const size = parseOctal(header.subarray(124, 136));
    const type = String.fromCharCode(header[156] ?? 0);
    if (size === undefined) throw loadFailure(source, 'corrupt', `bad size field for ${fullName}`, fullName);

    const name = normaliseMemberName(fullName, source);
    const dataStart = offset + BLOCK;
    const dataEnd = dataStart + size;
    offset = dataStart + Math.ceil(size / BLOCK) * BLOCK;

    if (type === '5') continue;
    if (type !== '0' && type !== '\0') {
      throw loadFailure(source, 'unsupported_member', `member ${fullName} has tar type "${type}"; only regular files are allowed`, name);
    }
    if (size > limits.maxMemberBytes) {
      throw loadFailure(source, 'oversized', `member ${fullName} is ${size} bytes, more than the ${limits.maxMemberBytes} allowed`, name);
    }
    if (dataEnd > tar.length) throw loadFailure(source, 'truncated', `member ${fullName} is cut short`, name);
    if (members.has(name)) throw loadFailure(source, 'duplicate_member', `member /${name} appears twice`, name);
    members.set(name, new Uint8Array(tar.subarray(dataStart, dataEnd)));
  }
}

function normaliseMemberName(name: string, source: string): string {
  if (name.includes('\\') || name.includes('\0')) throw loadFailure(source, 'path_traversal', `member name ${JSON.stringify(name)} is not a plain path`);
  const parts = name.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.includes('..')) throw loadFailure(source, 'path_traversal', `member name ${JSON.stringify(name)} escapes the bundle`);
  return parts.join('/');
}

function tarString(field: Uint8Array): string {
  const end = field.indexOf(0);
  return Buffer.from(end === -1 ? field : field.subarray(0, end)).toString('utf8');
}

function parseOctal(field: Uint8Array): number | undefined {
  // A set high bit marks GNU base-256 sizes, only used beyond 8 GiB: never valid in a bundle.
  if (((field[0] ?? 0) & 0x80) !== 0) return undefined;
  const text = tarString(field).trim();
  if (!/^[0-7]+$/.test(text)) return text === '' ? 0 : undefined;
  return Number.parseInt(text, 8);
}
