/**
 * @kubernetes/client-node is an optional peer dependency: the process backend never loads it, the
 * kubernetes backend loads it on its first API call, and a missing install is DEPENDENCY_MISSING
 * with "install @kubernetes/client-node". Checked in a fresh Node process whose module resolution
 * is observed (and, for the last case, made to fail) by a resolve hook.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const registry = fileURLToPath(new URL('../../src/backends/registry.ts', import.meta.url));

function script(hideClient: boolean): string {
  return `
import { registerHooks } from 'node:module';
const seen = [];
registerHooks({
  resolve(specifier, context, next) {
    if (/^@kubernetes\\/client-node|^dockerode/.test(specifier)) {
      seen.push(specifier);
      if (${hideClient}) { const e = new Error('Cannot find package ' + specifier); e.code = 'ERR_MODULE_NOT_FOUND'; throw e; }
    }
    try { return next(specifier, context); } catch (err) {
      if (/^\\.\\.?\\//.test(specifier) && specifier.endsWith('.js') && err.code === 'ERR_MODULE_NOT_FOUND') return next(specifier.slice(0, -3) + '.ts', context);
      throw err;
    }
  },
});
const { defaultBackendResolver } = await import(${JSON.stringify(registry)});
const resolve = defaultBackendResolver();
const local = await resolve('local', { type: 'process', stateDir: ${JSON.stringify(mkdtempSync(join(tmpdir(), 'sg-lazy-')))} });
await local.list({});
const cluster = await resolve('k8s', { type: 'kubernetes', namespace: 'x', kubeconfig: '/nonexistent/kubeconfig' });
const before = [...seen];
const failure = await cluster.list({}).then(() => null, (err) => ({ code: err.code, message: err.message, cause: Boolean(err.cause) }));
process.stdout.write(JSON.stringify({ before, after: seen, failure }));
`;
}

async function observe(hideClient: boolean): Promise<{ before: string[]; after: string[]; failure: { code: string; message: string; cause: boolean } | null }> {
  const { stdout } = await run(process.execPath, ['--input-type=module', '--eval', script(hideClient)], { timeout: 30_000 });
  return JSON.parse(stdout) as { before: string[]; after: string[]; failure: { code: string; message: string; cause: boolean } | null };
}

describe('kubernetes backend: lazy loading of @kubernetes/client-node', () => {
  it('is not loaded by the process backend, nor by creating the kubernetes backend; only by its first API call', async () => {
    const result = await observe(false);
    expect(result.before).toEqual([]);
    expect(result.after).toContain('@kubernetes/client-node');
    // The kubeconfig does not exist: a clear error after loading, not a crash.
    expect(result.failure).toMatchObject({ code: 'BACKEND_UNAVAILABLE', message: expect.stringContaining('/nonexistent/kubeconfig') as string });
  });

  it('missing, it is DEPENDENCY_MISSING with the install hint and the loader error as cause', async () => {
    const result = await observe(true);
    expect(result.failure).toEqual({
      code: 'DEPENDENCY_MISSING',
      message: 'the kubernetes backend needs @kubernetes/client-node: install @kubernetes/client-node (npm install @kubernetes/client-node)',
      cause: true,
    });
  });
});
