/**
 * Where process and Docker backends find the value of a `{ secretRef: { name, key } }` (Kubernetes
 * reads its own Secrets). Two providers, first match wins:
 *   - a folder laid out like a mounted Kubernetes Secret: `<secretsDir>/<name>/<key>` (one file per key;
 *     a trailing newline is dropped), e.g. systemd credentials, Docker/Swarm secrets, a tmpfs;
 *   - the gateway's environment: `SPAWNGATE_SECRET_<NAME>_<KEY>` (upper-cased, other characters `_`).
 * Values are only ever put into the worker's environment: never into argv, logs, labels or errors.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface SecretSource {
  /** Folder of `<name>/<key>` files; checked first. */
  dir?: string | null;
  /** Variables to read `SPAWNGATE_SECRET_*` from; default the gateway's own environment. */
  env?: Readonly<Record<string, string | undefined>>;
}

export function secretVariableName(ref: { name: string; key: string }): string {
  return `SPAWNGATE_SECRET_${ref.name}_${ref.key}`.toUpperCase().replace(/[^A-Z0-9_]/g, '_');
}

/** Where a secret is looked for, for errors that must name the place but never a value. */
export function secretPlaces(ref: { name: string; key: string }, source: SecretSource): string[] {
  return [...(source.dir ? [join(source.dir, ref.name, ref.key)] : []), `$${secretVariableName(ref)}`];
}

/** The value, or undefined when no provider has it. Names are DNS-1123 / key-shaped (the schema checks), so no path escapes the folder. */
export function resolveSecret(ref: { name: string; key: string }, source: SecretSource): string | undefined {
  if (source.dir && ref.key !== '.' && ref.key !== '..') {
    try {
      return readFileSync(join(source.dir, ref.name, ref.key), 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return (source.env ?? process.env)[secretVariableName(ref)];
}
