import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isSpawngateError } from '../../src/errors.js';
import { parseBundle, readBundle, type BundleLimits } from '../../src/admission/bundle.js';
import { compareBundles } from '../../src/cli/policy-tool.js';

const COMMITTED = new URL('../../bundles/spawngate.tar.gz', import.meta.url).pathname;

interface Entry {
  name: string;
  content?: Uint8Array | string;
  type?: string;
  /** Header size field when it should lie about the content. */
  declaredSize?: number;
  prefix?: string;
}

/** Independent ustar writer, so the reader is not only tested against its own writer. */
function tar(entries: Entry[], { trailer = true } = {}): Buffer {
  const blocks: Buffer[] = [];
  for (const entry of entries) {
    const content = Buffer.from(entry.content ?? '');
    const header = Buffer.alloc(512);
    header.write(entry.name, 0, 100, 'utf8');
    header.write('0000644\0', 100);
    header.write('0000000\0', 108);
    header.write('0000000\0', 116);
    header.write(`${(entry.declaredSize ?? content.length).toString(8).padStart(11, '0')}\0`, 124);
    header.write('14000000000\0', 136);
    header.write(entry.type ?? '0', 156);
    header.write('ustar\0', 257);
    header.write('00', 263);
    if (entry.prefix) header.write(entry.prefix, 345, 155, 'utf8');
    header.fill(' ', 148, 156);
    let sum = 0;
    for (const byte of header) sum += byte;
    header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    blocks.push(header, content, Buffer.alloc((512 - (content.length % 512)) % 512));
  }
  if (trailer) blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

const manifest = JSON.stringify({ revision: 'r1', roots: [''] });
const good: Entry[] = [
  { name: '/.manifest', content: manifest },
  { name: '/data.json', content: '{"a":1}' },
  { name: '/policy.wasm', content: Buffer.from([0, 0x61, 0x73, 0x6d]) },
];

async function loadFailure(archive: Uint8Array, limits: BundleLimits = {}): Promise<{ reason: unknown; member: unknown; message: string }> {
  const err: unknown = await parseBundle(archive, { ...limits, source: 'test.tar.gz' }).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isSpawngateError(err)) throw new Error(`expected a SpawngateError, got ${String(err)}`);
  expect(err.code).toBe('POLICY_LOAD_FAILED');
  return { reason: err.details.reason, member: err.details.member, message: err.message };
}

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'spawngate-read-bundle-'));
});
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('readBundle', () => {
  it('reads a well-formed bundle, with or without leading slashes, ignoring directories and extra files', async () => {
    const bundle = await parseBundle(
      gzipSync(
        tar([
          { name: 'policies/', type: '5' },
          { name: 'policies/admission.rego', content: 'package x' },
          { name: './.manifest', content: manifest },
          { name: 'data.json', content: '{"a":1}' },
          { name: '/policy.wasm', content: Buffer.from([0, 0x61, 0x73, 0x6d]) },
        ]),
      ),
    );
    expect(bundle.manifest).toEqual({ revision: 'r1', roots: [''] });
    expect(bundle.revision).toBe('r1');
    expect(bundle.data).toEqual({ a: 1 });
    expect([...bundle.wasm]).toEqual([0, 0x61, 0x73, 0x6d]);
  });

  it('reads the committed bundle', async () => {
    const bundle = await readBundle(COMMITTED);
    expect(Buffer.from(bundle.wasm.subarray(0, 4)).toString('latin1')).toBe('\0asm');
    expect(bundle.data).toHaveProperty('spawngate.admission.config.maxDepth');
  });

  it('rejects bytes that are not gzip', async () => {
    expect((await loadFailure(Buffer.from('definitely not a bundle'))).reason).toBe('corrupt');
  });

  it('rejects a truncated gzip stream', async () => {
    const whole = await readFile(COMMITTED);
    expect((await loadFailure(whole.subarray(0, Math.floor(whole.length / 2)))).reason).toBe('truncated');
  });

  it('rejects a tar cut inside a member or before its end marker', async () => {
    const full = tar(good);
    expect((await loadFailure(gzipSync(full.subarray(0, 512 * 5 + 100)))).reason).toBe('truncated');
    expect((await loadFailure(gzipSync(tar(good, { trailer: false })))).reason).toBe('truncated');
    expect((await loadFailure(gzipSync(tar([{ name: '/policy.wasm', content: 'abc', declaredSize: 4096 }])))).reason).toBe('truncated');
  });

  it('rejects a header whose checksum does not match', async () => {
    const broken = tar(good);
    broken[10] = 0x41;
    expect((await loadFailure(gzipSync(broken))).reason).toBe('corrupt');
  });

  it.each(['../policy.wasm', '/../../etc/passwd', 'a/../../data.json', 'dir\\..\\x'])('rejects path traversal in %s', async (name) => {
    const failure = await loadFailure(gzipSync(tar([...good, { name, content: 'x' }])));
    expect(failure.reason).toBe('path_traversal');
  });

  it('rejects traversal hidden in the ustar prefix field', async () => {
    expect((await loadFailure(gzipSync(tar([...good, { name: 'x', prefix: '..', content: 'x' }])))).reason).toBe('path_traversal');
  });

  it('rejects links and other non-file members', async () => {
    const failure = await loadFailure(gzipSync(tar([...good, { name: '/evil', type: '2' }])));
    expect(failure).toMatchObject({ reason: 'unsupported_member', member: 'evil' });
  });

  it.each(['.manifest', 'data.json', 'policy.wasm'])('rejects a bundle without /%s', async (missing) => {
    const failure = await loadFailure(gzipSync(tar(good.filter((e) => e.name !== `/${missing}`))));
    expect(failure).toMatchObject({ reason: 'missing_member', member: missing });
  });

  it('rejects oversized members and archives', async () => {
    const big = [...good.slice(0, 2), { name: '/policy.wasm', content: Buffer.alloc(4096) }];
    expect((await loadFailure(gzipSync(tar(big)), { maxMemberBytes: 1024 })).reason).toBe('oversized');
    expect((await loadFailure(gzipSync(tar(big)), { maxArchiveBytes: 2048 })).reason).toBe('oversized');
    const onDisk = join(work, 'big.tar.gz');
    await writeFile(onDisk, gzipSync(tar(big)));
    const err: unknown = await readBundle(onDisk, { maxArchiveBytes: 64 }).catch((e: unknown) => e);
    expect(isSpawngateError(err) && err.details.reason).toBe('oversized');
  });

  it('rejects duplicate members, nested data documents and bad JSON', async () => {
    expect((await loadFailure(gzipSync(tar([...good, { name: 'data.json', content: '{}' }])))).reason).toBe('duplicate_member');
    expect((await loadFailure(gzipSync(tar([...good, { name: '/extra/data.json', content: '{}' }])))).reason).toBe('unsupported_member');
    const badData = good.map((e) => (e.name === '/data.json' ? { ...e, content: '{nope' } : e));
    expect(await loadFailure(gzipSync(tar(badData)))).toMatchObject({ reason: 'invalid_json', member: 'data.json' });
    const noRevision = good.map((e) => (e.name === '/.manifest' ? { ...e, content: '{"roots":[]}' } : e));
    expect(await loadFailure(gzipSync(tar(noRevision)))).toMatchObject({ reason: 'invalid_manifest', member: '.manifest' });
  });

  it('reports a missing file as unreadable', async () => {
    const err: unknown = await readBundle(join(work, 'absent.tar.gz')).catch((e: unknown) => e);
    expect(isSpawngateError(err) && err.code).toBe('POLICY_LOAD_FAILED');
    expect(isSpawngateError(err) && err.details.reason).toBe('unreadable');
  });
});

describe('compareBundles', () => {
  it('tells equal contents apart from different ones, whatever the archive bytes', async () => {
    const a = join(work, 'a.tar.gz');
    const b = join(work, 'b.tar.gz');
    const c = join(work, 'c.tar.gz');
    await writeFile(a, gzipSync(tar(good), { level: 1 }));
    // Same members, different order, mtime and compression: still equal.
    await writeFile(b, gzipSync(tar([...good].reverse()), { level: 9 }));
    await writeFile(c, gzipSync(tar([...good.slice(0, 2), { name: '/policy.wasm', content: 'other' }, { name: '/x.rego', content: 'package x' }])));
    expect(gunzipSync(await readFile(a)).equals(gunzipSync(await readFile(b)))).toBe(false);
    expect(await compareBundles(a, b)).toEqual({ equal: true, differences: [] });
    const diff = await compareBundles(a, c);
    expect(diff.equal).toBe(false);
    expect(diff.differences).toEqual([`/policy.wasm: contents differ (4 vs 5 bytes)`, `/x.rego: only in ${c}`]);
  });
});
