/**
 * A host folder a profile wants as its workspace (strategy hostPath), checked the way the file system
 * will see it: symlinks resolved on both sides, so a link inside an allowed folder cannot lead out.
 */
import { realpath } from 'node:fs/promises';
import { isWithin } from '../paths.js';

export type HostPathCheck =
  | { ok: true; real: string }
  | { ok: false; reason: 'HostPathNotFound'; error: NodeJS.ErrnoException }
  | { ok: false; reason: 'HostPathNotAllowed'; real: string };

export async function resolveHostPath(wanted: string, allowedRoots: readonly string[]): Promise<HostPathCheck> {
  let real: string;
  try {
    real = await realpath(wanted);
  } catch (err) {
    return { ok: false, reason: 'HostPathNotFound', error: err as NodeJS.ErrnoException };
  }
  const roots = await Promise.all(allowedRoots.map((root) => realpath(root).catch(() => null)));
  return roots.some((root) => root !== null && isWithin(root, real)) ? { ok: true, real } : { ok: false, reason: 'HostPathNotAllowed', real };
}
