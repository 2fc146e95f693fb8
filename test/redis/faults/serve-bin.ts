/**
 * `spawngate serve` (the whole CLI) from the TypeScript sources, for the fault suite: the CLI's
 * bin runs dist/, which is built only by `npm test`, so a suite run on its own would otherwise
 * test whatever dist/ was compiled from last. Node ≥ 22.18 strips the types; imports say `./x.js`
 * (as compiled output needs), so a resolve hook falls back to `./x.ts`, as src/worker/bin.ts does.
 *   node test/redis/faults/serve-bin.ts serve --config FILE --port 0
 */
import { registerHooks } from 'node:module';

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

const { main } = await import('../../../src/cli/main.js');
process.exitCode = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env });
