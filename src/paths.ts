import { fileURLToPath } from 'node:url';

/** The package root, from src/ (tests) and from dist/ (installed) alike. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../', import.meta.url));
