import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { configJsonSchema, CONFIG_SCHEMA_ID, defaultConfig } from '../../src/config/index.js';

type Schema = Record<string, unknown>;

const ANNOTATIONS = new Set(['$schema', '$id', '$defs', 'title', 'description', 'default']);
const SUPPORTED = new Set([
  '$ref', 'type', 'properties', 'required', 'additionalProperties', 'propertyNames', 'items', 'enum', 'const', 'pattern',
  'minLength', 'maxLength', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'minItems', 'maxItems', 'anyOf', 'oneOf', 'allOf',
]);

/**
 * Just enough of JSON Schema 2020-12 to check the generated schema against documents, with no
 * new dependency. It refuses keywords it does not know, so it cannot pass a document by ignoring a rule.
 */
function validate(root: Schema, value: unknown): string[] {
  const errors: string[] = [];
  const resolve = (ref: string): Schema => {
    const m = /^#\/\$defs\/(.+)$/.exec(ref);
    const target = m ? (root.$defs as Record<string, Schema> | undefined)?.[m[1] ?? ''] : undefined;
    if (!target) throw new Error(`unresolvable $ref ${ref}`);
    return target;
  };
  const typeOf = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);
  const check = (schema: Schema, v: unknown, path: string, out: string[]): void => {
    for (const key of Object.keys(schema)) {
      if (!SUPPORTED.has(key) && !ANNOTATIONS.has(key)) throw new Error(`validator does not support keyword ${key} at ${path}`);
    }
    if (typeof schema.$ref === 'string') check(resolve(schema.$ref), v, path, out);
    if (schema.type !== undefined) {
      const t = typeOf(v);
      const ok = schema.type === t || (schema.type === 'integer' && Number.isInteger(v)) || (schema.type === 'number' && t === 'number');
      if (!ok) {
        out.push(`${path}: expected ${JSON.stringify(schema.type)}`);
        return;
      }
    }
    if (schema.enum !== undefined && !(schema.enum as unknown[]).includes(v)) out.push(`${path}: not in enum`);
    if ('const' in schema && schema.const !== v) out.push(`${path}: not const`);
    if (typeof v === 'string') {
      const length = [...v].length;
      if (typeof schema.pattern === 'string' && !new RegExp(schema.pattern, 'u').test(v)) out.push(`${path}: pattern`);
      if (typeof schema.minLength === 'number' && length < schema.minLength) out.push(`${path}: minLength`);
      if (typeof schema.maxLength === 'number' && length > schema.maxLength) out.push(`${path}: maxLength`);
    }
    if (typeof v === 'number') {
      if (typeof schema.minimum === 'number' && v < schema.minimum) out.push(`${path}: minimum`);
      if (typeof schema.maximum === 'number' && v > schema.maximum) out.push(`${path}: maximum`);
      if (typeof schema.exclusiveMinimum === 'number' && v <= schema.exclusiveMinimum) out.push(`${path}: exclusiveMinimum`);
      if (typeof schema.exclusiveMaximum === 'number' && v >= schema.exclusiveMaximum) out.push(`${path}: exclusiveMaximum`);
    }
    if (Array.isArray(v)) {
      if (typeof schema.minItems === 'number' && v.length < schema.minItems) out.push(`${path}: minItems`);
      if (typeof schema.maxItems === 'number' && v.length > schema.maxItems) out.push(`${path}: maxItems`);
      if (schema.items) v.forEach((item, i) => check(schema.items as Schema, item, `${path}[${i}]`, out));
    }
    if (typeOf(v) === 'object') {
      const obj = v as Record<string, unknown>;
      const props = (schema.properties ?? {}) as Record<string, Schema>;
      for (const req of (schema.required ?? []) as string[]) if (!(req in obj)) out.push(`${path}.${req}: required`);
      for (const [k, child] of Object.entries(obj)) {
        if (schema.propertyNames) check(schema.propertyNames as Schema, k, `${path}.${k}(name)`, out);
        const sub = props[k];
        if (sub) check(sub, child, `${path}.${k}`, out);
        else if (schema.additionalProperties === false) out.push(`${path}.${k}: additional property`);
        else if (typeof schema.additionalProperties === 'object') check(schema.additionalProperties as Schema, child, `${path}.${k}`, out);
      }
    }
    const branches = (list: unknown): number =>
      (list as Schema[]).filter((s) => {
        const sub: string[] = [];
        check(s, v, path, sub);
        return sub.length === 0;
      }).length;
    if (schema.anyOf && branches(schema.anyOf) === 0) out.push(`${path}: no anyOf branch matches`);
    if (schema.oneOf && branches(schema.oneOf) !== 1) out.push(`${path}: not exactly one oneOf branch matches`);
    if (schema.allOf) for (const s of schema.allOf as Schema[]) check(s, v, path, out);
  };
  check(root, value, '$', errors);
  return errors;
}

const example = async (name: string): Promise<unknown> => {
  const text = await readFile(new URL(`../../examples/${name}`, import.meta.url), 'utf8');
  return name.endsWith('.yaml') ? (parseYaml(text) as unknown) : (JSON.parse(text) as unknown);
};

describe('configJsonSchema', () => {
  const schema = configJsonSchema();

  it('is plain JSON with draft 2020-12, an $id and a title', () => {
    expect(JSON.parse(JSON.stringify(schema))).toEqual(schema);
    expect(schema.$schema).toBe('https://json-schema.org/draft/2020-12/schema');
    expect(schema.$id).toBe(CONFIG_SCHEMA_ID);
    expect(schema.title).toBe('spawngate configuration');
    expect(Object.keys(schema.$defs as object)).toEqual(expect.arrayContaining(['Profile', 'Quantity']));
  });

  it('accepts the examples and the default config', async () => {
    expect(validate(schema, await example('design-example.json'))).toEqual([]);
    expect(validate(schema, await example('spawngate.example.yaml'))).toEqual([]);
    expect(validate(schema, await example('spawngate.example.json'))).toEqual([]);
    expect(validate(schema, defaultConfig())).toEqual([]);
  });

  it('rejects what the zod schema rejects structurally', () => {
    const base = (backend: unknown) => ({ agents: { executionBackends: { k: backend } } });
    expect(validate(schema, base({ type: 'kubernetes' }))).toContain('$.agents.executionBackends.k: not exactly one oneOf branch matches');
    expect(validate(schema, base({ type: 'process', namespace: 'x' }))).not.toEqual([]);
    expect(validate(schema, base({ type: 'process', profiles: { p: { resources: { requests: { cpu: '1 GB' } } } } }))).not.toEqual([]);
    expect(validate(schema, base({ type: 'process', profiles: { p: { egress: 'all' } } }))).not.toEqual([]);
    expect(validate(schema, { agents: { executionBackends: {} }, extra: true })).toEqual(['$.extra: additional property']);
    expect(validate(schema, base({ type: 'process', profiles: { 'bad/name': {} } }))).not.toEqual([]);
  });
});

describe('configJsonSchema: spawngate.policyData', () => {
  const schema = configJsonSchema();
  const defs = schema.$defs as Record<string, Schema>;
  const withData = (policyData: unknown) => ({ agents: { executionBackends: {} }, spawngate: { policyData } });

  it('is a described $def, referenced from the spawngate section', () => {
    const spawngate = (schema.properties as Record<string, Schema>).spawngate as Schema;
    expect((spawngate.properties as Record<string, Schema>).policyData).toEqual({ $ref: '#/$defs/PolicyData' });
    expect(defs.PolicyData?.description).toMatch(/deep-merged/);
    expect(defs.RateBucket?.required).toEqual(['perMinute', 'burst']);
    const concurrency = (defs.PolicyData?.properties as Record<string, Schema>).concurrency as Schema;
    expect(((concurrency.properties as Record<string, Schema>).user as Schema).description).toMatch(/null: no cap/);
  });

  it('accepts and rejects what the zod schema does', () => {
    expect(validate(schema, withData({ concurrency: { user: 1, total: null }, rate: { kinds: { cron: { user: { perMinute: 2, burst: 1 }, channel: null } } } }))).toEqual([]);
    expect(validate(schema, withData({ concurrency: { users: 1 } }))).toEqual(['$.spawngate.policyData.concurrency.users: additional property']);
    expect(validate(schema, withData({ rate: { kinds: { cron: { user: { perMinute: 2 } } } } }))).not.toEqual([]);
    expect(validate(schema, withData({ ttl: { defaultSeconds: null } }))).not.toEqual([]);
    expect(validate(schema, withData({ channels: { untrustedKinds: ['web/hook'] } }))).not.toEqual([]);
  });
});
