/**
 * Process entry of the reference worker: `node dist/worker/bin.js`, or from a source checkout
 * `node src/worker/bin.ts` (Node strips the types itself). Exit codes: 0 after a graceful stop,
 * 1 when the agent died or the worker failed, 2 for a bad environment.
 */
import { registerHooks } from 'node:module';
import type { SpawngateError } from '../errors.js';

if (import.meta.url.endsWith('.ts')) {
  // Running the TypeScript sources: imports say `./x.js` (as compiled output needs) but only x.ts exists.
  registerHooks({
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
  process.stderr.write(
    `${JSON.stringify({ time: new Date().toISOString(), source: 'worker', level: 'error', message: error.message, code: error.code ?? null, details: error.details ?? null })}\n`,
  );
  process.exit(error.code === 'CONFIG_INVALID' ? 2 : 1);
}
