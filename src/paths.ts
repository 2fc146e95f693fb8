import { isAbsolute, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root, from src/ (tests) and from dist/ (installed) alike. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../', import.meta.url));

/** Whether `path` is `root` or lies below it; both absolute and compared as written (resolve symlinks first where that matters). */
export function isWithin(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}
