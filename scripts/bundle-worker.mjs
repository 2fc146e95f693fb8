#!/usr/bin/env node
/**
 * Bundles the compiled reference worker (dist/worker/bin.js) into dist/worker/bundle/: worker.js
 * plus one chunk per lazily imported part (the ACP SDK, the OpenTelemetry SDK, …), which still load
 * only when used. Part of `npm run build`; run after tsc.
 *
 * Why: a cold worker spent most of its start resolving and reading modules, about 220 files (its
 * own graph and the ACP SDK with zod, counted with a module load hook), each a stat, a
 * package.json lookup and a read. One file per load step cuts about a third of the time to a
 * ready worker (npm run bench:spawn). The process backend, the image and `spawngate worker` start
 * this bundle when it exists and bin.js otherwise; both run the same code.
 *
 * `import.meta.url` keeps meaning the original module's place: it is rewritten, in every bundled
 * module, to that module's path relative to the bundle, so `new URL('../../package.json', …)` and the
 * built-in agents' scripts resolve as they do unbundled, wherever the package is installed.
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { dirname, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const entry = resolve(root, 'dist/worker/bin.js');
const outDir = resolve(root, 'dist/worker/bundle');

if (!existsSync(entry)) {
  console.error(`bundle-worker: ${relative(root, entry)} does not exist; run tsc -p tsconfig.build.json first`);
  process.exit(1);
}

let rolldown;
try {
  ({ rolldown } = await import('rolldown'));
} catch (err) {
  console.error(`bundle-worker: the bundler (devDependency rolldown) is not installed: ${err.message}; run npm ci`);
  process.exit(1);
}

await rm(outDir, { recursive: true, force: true });
const bundle = await rolldown({
  input: { worker: entry },
  platform: 'node',
  logLevel: 'warn',
  plugins: [
    {
      name: 'keep-import-meta-url',
      transform(code, id) {
        if (!code.includes('import.meta.url')) return null;
        const fromBundle = relative(outDir, id).split(sep).join('/');
        return { code: code.replaceAll('import.meta.url', `new URL(${JSON.stringify(fromBundle)}, import.meta.url).href`), map: null };
      },
    },
  ],
});
try {
  await bundle.write({ dir: outDir, format: 'esm', entryFileNames: '[name].js', chunkFileNames: '[name]-[hash].js', sourcemap: false });
} finally {
  await bundle.close();
}
