import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { loadConfigFile, MAX_CONFIG_BYTES, parseConfigText, validateConfigFile } from '../../src/config/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'spawngate-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function write(name: string, text: string | Buffer): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

async function loadError(path: string): Promise<ConfigError> {
  try {
    await loadConfigFile(path);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error(`expected ${path} to fail`);
}

function parseError(text: string, format?: 'json' | 'yaml'): ConfigError {
  try {
    parseConfigText(text, { source: 'inline', format });
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected the text to fail');
}

const VALID_YAML = `agents:\n  executionBackends:\n    local: { type: process }\n`;

describe('loadConfigFile', () => {
  it('reads YAML by extension and sniffs JSON in files without one', async () => {
    const yaml = await loadConfigFile(await write('a.yml', VALID_YAML));
    const sniffed = await loadConfigFile(await write('config', '  {"agents":{"executionBackends":{"local":{"type":"process"}}}}'));
    const sniffedYaml = await loadConfigFile(await write('config2', VALID_YAML));
    expect(sniffed).toEqual(yaml);
    expect(sniffedYaml).toEqual(yaml);
  });

  it('accepts a UTF-8 byte order mark', async () => {
    const config = await loadConfigFile(await write('bom.json', '\uFEFF{"agents":{"executionBackends":{}}}'));
    expect(config.agents.executionBackends).toEqual({});
  });

  it('reports an unreadable file as CONFIG_UNREADABLE', async () => {
    const err = await loadError(join(dir, 'missing.yaml'));
    expect(err.code).toBe('CONFIG_UNREADABLE');
    expect(err.message).toContain('missing.yaml');
    const dirErr = await loadError(dir);
    expect(dirErr.code).toBe('CONFIG_UNREADABLE');
  });

  it('refuses files above the size limit', async () => {
    const err = await loadError(await write('big.yaml', Buffer.alloc(MAX_CONFIG_BYTES + 10, 0x20)));
    expect(err.code).toBe('CONFIG_UNREADABLE');
    expect(err.issues[0]?.message).toMatch(/larger than/);
  });

  it('refuses invalid UTF-8', async () => {
    const err = await loadError(await write('bad.yaml', Buffer.from([0x61, 0x3a, 0x20, 0xff, 0xfe])));
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.message).toMatch(/UTF-8/);
  });

  it('carries the file name into schema errors', async () => {
    const err = await loadError(await write('schema.yaml', 'agents:\n  executionBackends:\n    local: { type: proces }\n'));
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.message).toContain('schema.yaml');
    expect(err.issues).toEqual([{ path: 'agents.executionBackends.local.type', message: 'must be one of: "process", "container", "kubernetes"' }]);
  });

  it('validateConfigFile reports every kind of fault as issues', async () => {
    expect(await validateConfigFile(await write('ok.yaml', VALID_YAML))).toEqual(expect.objectContaining({ ok: true }));
    const missing = await validateConfigFile(join(dir, 'nope.yaml'));
    expect(missing.ok).toBe(false);
    const bad = await validateConfigFile(await write('bad2.yaml', 'agents: [\n'));
    expect(bad.ok).toBe(false);
    if (!bad.ok) expect(bad.issues[0]?.message).toMatch(/^line \d+, column \d+: /);
  });
});

describe('syntax errors', () => {
  it('locates JSON syntax errors by line and column', () => {
    const err = parseError('{\n  "agents": {\n    "executionBackends": {,}\n  }\n}');
    expect(err.details).toEqual(expect.objectContaining({ line: 3, column: 27, source: 'inline' }));
    expect(err.message).toContain('inline:3:27');
    expect(err.issues[0]?.message).toMatch(/^line 3, column 27: expected a property name/);
  });

  it('rejects trailing commas, comments and trailing garbage in JSON', () => {
    expect(parseError('{"agents": {"executionBackends": {}},}').details).toEqual(expect.objectContaining({ line: 1, column: 38 }));
    expect(parseError('{"agents": {} // c\n}').details).toEqual(expect.objectContaining({ line: 1, column: 15 }));
    expect(parseError('{"agents": {}} x').message).toMatch(/after the end of the document/);
    expect(parseError('{"a": "\u0001"}').message).toMatch(/control character/);
    expect(parseError('{"a": 01}').message).toMatch(/expected "," or "}"/);
    expect(parseError('{"a": "x').message).toMatch(/unterminated string/);
  });

  it('rejects duplicate keys in JSON, which JSON.parse would silently merge', () => {
    const err = parseError('{"agents": {"executionBackends": {}},\n "agents": {}}');
    expect(err.message).toMatch(/duplicate key "agents"/);
    expect(err.details).toEqual(expect.objectContaining({ line: 2, column: 2 }));
    // Escapes are compared after decoding.
    expect(parseError('{"a": 1, "\\u0061": 2}').message).toMatch(/duplicate key "a"/);
  });

  it('rejects absurd JSON nesting instead of overflowing the stack', () => {
    expect(parseError(`${'['.repeat(10_000)}${']'.repeat(10_000)}`, 'json').message).toMatch(/nesting deeper than/);
  });

  it('rejects duplicate keys in YAML with their position', () => {
    const err = parseError('agents:\n  executionBackends: {}\n  executionBackends: {}\n');
    expect(err.message).toMatch(/duplicate key/);
    expect(err.details).toEqual(expect.objectContaining({ line: 3, column: 3 }));
  });

  it('reports YAML syntax errors with their position', () => {
    const err = parseError('agents:\n  executionBackends:\n    local: { type: process\n');
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.details).toEqual(expect.objectContaining({ line: 4, column: 1 }));
    expect(parseError('a: 1\n---\nb: 2\n').message).toMatch(/exactly one YAML document/);
    expect(parseError('\tagents: {}\n').message).toMatch(/inline:1:1: Tabs/);
  });

  it('refuses YAML alias bombs', () => {
    const lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]'];
    for (let i = 0; i < 8; i++) {
      const prev = String.fromCharCode(97 + i);
      const next = String.fromCharCode(98 + i);
      lines.push(`${next}: &${next} [${Array.from({ length: 10 }, () => `*${prev}`).join(',')}]`);
    }
    expect(parseError(`${lines.join('\n')}\n`).message).toMatch(/alias/i);
  });

  it('does not turn YAML scalars into the wrong types silently', () => {
    const err = parseError(
      'agents:\n  executionBackends:\n    k:\n      type: kubernetes\n      namespace: a\n      profiles:\n        p:\n          nodeSelector: { gpu: true }\n',
    );
    expect(err.issues).toEqual([{ path: 'agents.executionBackends.k.profiles.p.nodeSelector.gpu', message: 'expected string, received boolean' }]);
  });
});
