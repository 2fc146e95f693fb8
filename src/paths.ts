import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SpawngateError } from './errors.js';

/** The package root, from src/ (tests) and from dist/ (installed) alike. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../', import.meta.url));

/**
 * A compiled file that runs in a child process (worker, built-in agents). Children always run the
 * compiled JS so a test run and a production run start the very same program.
 */
export function builtFile(relative: string): string {
  const file = join(PACKAGE_ROOT, 'dist', relative);
  if (!existsSync(file)) {
    throw new SpawngateError('DEPENDENCY_MISSING', `${file} does not exist; run \`npm run build\` first`);
  }
  return file;
}

