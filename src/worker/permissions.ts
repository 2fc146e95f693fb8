/**
 * What the worker says about an agent's permission request before anyone decides it: the paths it
 * touches, resolved the way the file system will (symlinks included), and whether each stays in the
 * workspace. The gateway's policy decides on these facts; the agent's own words (title) are not trusted
 * for it.
 */
import { realpathSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import type { RequestPermissionRequest } from '@agentclientprotocol/sdk';
import { redact } from '../redact.js';
import { isWithin } from '../paths.js';

/** rawInput keys agents use for the file or folder a tool acts on (Claude Code, Gemini/Qwen, OpenCode, Codex). */
const PATH_KEYS = new Set(['path', 'file_path', 'filePath', 'absolute_path', 'notebook_path', 'filename', 'dir_path', 'directory', 'old_path', 'new_path', 'source', 'destination', 'target_file', 'cwd', 'workdir']);
const MAX_PATHS = 64;
const MAX_RAW_INPUT_CHARS = 4096;

export interface PermissionPath {
  path: string;
  inWorkspace: boolean;
}

/** `p` with every symlink of its longest existing prefix resolved; the rest (a file about to be created) kept as written. */
function realish(p: string): string {
  let existing = p;
  const rest: string[] = [];
  for (let i = 0; i < 4096; i++) {
    try {
      const real = realpathSync(existing);
      return rest.length ? resolve(real, ...rest.reverse()) : real;
    } catch {
      const parent = dirname(existing);
      if (parent === existing) break;
      rest.push(basename(existing));
      existing = parent;
    }
  }
  return p;
}

export function workspaceRoot(cwd: string): string {
  return realish(cwd);
}

/** Every path the request names: its locations, and path-like keys of its rawInput (one level deep). */
export function permissionPaths(request: RequestPermissionRequest, cwd: string, root: string): PermissionPath[] {
  const named: string[] = [];
  for (const location of request.toolCall.locations ?? []) if (typeof location.path === 'string') named.push(location.path);
  const raw = request.toolCall.rawInput;
  if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
    for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
      if (PATH_KEYS.has(key) && typeof value === 'string' && value !== '') named.push(value);
    }
  }
  const seen = new Map<string, PermissionPath>();
  for (const p of named) {
    if (seen.size >= MAX_PATHS) break;
    // "~" is the agent's HOME, never the workspace: kept as written (resolving it against cwd would say the opposite).
    if (p.startsWith('~')) {
      seen.set(p, { path: p, inWorkspace: false });
      continue;
    }
    const absolute = realish(resolve(cwd, p));
    seen.set(absolute, { path: absolute, inWorkspace: isWithin(root, absolute) });
  }
  return [...seen.values()];
}

/** rawInput for the event and the policy: credential shapes cut, at most 4 KiB (as text beyond that). */
export function boundedRawInput(raw: unknown): unknown {
  if (raw === undefined) return null;
  const cleaned = redact(raw);
  let text: string | undefined;
  try {
    text = JSON.stringify(cleaned);
  } catch {
    return null;
  }
  if (text === undefined) return null;
  return text.length <= MAX_RAW_INPUT_CHARS ? cleaned : `${text.slice(0, MAX_RAW_INPUT_CHARS)}…[truncated]`;
}
