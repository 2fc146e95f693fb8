/**
 * Process entry of the reference worker: `node dist/worker/bin.js`, or from a source checkout
 * `node src/worker/bin.ts` (Node strips the types itself). Exit codes: 0 after a graceful stop,
 * 1 when the agent died or the worker failed, 2 for a bad environment.
 */
import * as nodeModule from 'node:module';
import type { SpawngateError } from '../errors.js';

/** One JSON line on stderr, the worker's log format, for the failures that end it before it runs. */
function fatal(message: string, code: string | null, details: unknown): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), source: 'worker', level: 'error', message, code, details })}\n`);
}

// Before anything else loads: an older Node (a backend configured with the system's node) would
// fail later on a missing API with an error that does not say why.
const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 12)) {
  fatal(`the spawngate worker needs Node.js 22.12 or newer; it was started with Node.js ${process.versions.node} (${process.execPath})`, 'CONFIG_INVALID', {
    node: process.versions.node,
    execPath: process.execPath,
  });
  process.exit(2);
}

if (import.meta.url.endsWith('.ts')) {
  // Running the TypeScript sources (Node 22.18+ strips types; registerHooks is 22.15+): imports say
  // `./x.js` (as compiled output needs) but only x.ts exists. A namespace import, so that the
  // compiled worker still links on a Node without registerHooks.
  nodeModule.registerHooks({
    resolve(specifier, context, nextResolve) {
      try {
        return nextResolve(specifier, context);
      } catch (err) {
        const relativeJs = /^\.\.?\//.test(specifier) && specifier.endsWith('.js');
        if (!relativeJs || (err as { code?: string }).code !== 'ERR_MODULE_NOT_FOUND') throw err;
        return nextResolve(`${specifier.slice(0, -3)}.ts`, context);
      }
    },
  });
}

// The agent first, from a light module: it boots while the rest of the worker loads (launch.ts).
const { launchAgentEarly } = await import('./launch.js');
const launched = launchAgentEarly(process.env);
try {
  const { runWorkerFromEnv } = await import('./main.js');
  await runWorkerFromEnv(process.env, undefined, launched);
} catch (err) {
  // Stopped already unless the worker's code failed to load; never left running on its own.
  await launched?.discard(3000);
  const error = err as Partial<SpawngateError> & Error;
  fatal(error.message, error.code ?? null, error.details ?? null);
  process.exit(error.code === 'CONFIG_INVALID' ? 2 : 1);
}
