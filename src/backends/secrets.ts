/**
 * Where process and Docker backends find the value of a `{ secretRef: { name, key } }` (Kubernetes
 * reads its own Secrets). Two providers, first match wins:
 *   - a folder laid out like a mounted Kubernetes Secret: `<secretsDir>/<name>/<key>` (one file per key;
 *     a trailing newline is dropped), e.g. systemd credentials, Docker/Swarm secrets, a tmpfs;
 *   - the gateway's environment: `SPAWNGATE_SECRET_<NAME>_<KEY>` (upper-cased, other characters `_`).
 * Values are only ever put into the worker's environment: never into argv, logs, labels or errors.
 */
import { join } from 'node:path';
import { BackendError } from '../errors.js';
import { BoundedReadError, readBoundedFileSync } from '../files.js';

/** A key of a mounted Kubernetes Secret is at most 1 MiB (the whole Secret is); so is one here. */
const MAX_SECRET_BYTES = 1024 * 1024;

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
    const file = join(source.dir, ref.name, ref.key);
    try {
      // Bounded and non-blocking: a FIFO or device planted in the folder must not hang the gateway.
      return readBoundedFileSync(file, MAX_SECRET_BYTES).toString('utf8').replace(/\r?\n$/, '');
    } catch (err) {
      if (!(err instanceof BoundedReadError) || err.fault.reason !== 'unreadable' || err.fault.errno !== 'ENOENT') {
        throw new BackendError('BACKEND_FAILED', `secret ${ref.name}/${ref.key}: cannot read ${file}: ${(err as Error).message}`, { details: { reason: 'SecretUnreadable', field: 'secretsDir' } });
      }
    }
  }
  return (source.env ?? process.env)[secretVariableName(ref)];
}
