/**
 * `spawngate <args>` from the TypeScript sources, as its own process (the real bin runs dist/):
 * `node --experimental-transform-types test/server/serve-entry.ts serve --port 0`. Signals reach it like they reach the real CLI.
 */
import { registerHooks } from 'node:module';

// The sources import `./x.js` (as compiled output needs), but only x.ts exists here.
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

const { main } = await import('../../src/cli/main.js');
process.exitCode = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env });
