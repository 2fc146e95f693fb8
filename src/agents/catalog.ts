/**
 * Coding agents with an ACP mode that spawngate knows how to install from npm (for `spawngate image
 * build --agent`) and has tested recipes for (docs/agents.md). Pinned: these CLIs change flags, config
 * and wire dialects between releases. scripts/ensure-agents.sh installs the same pins for the test suite.
 */
import { existsSync, realpathSync } from 'node:fs';
import { join, relative } from 'node:path';

export interface AgentPackage {
  id: string;
  /** npm package and exact version. */
  package: string;
  version: string;
  /** Its executable under node_modules/.bin. */
  bin: string;
  /** Arguments that start its ACP mode. */
  args: readonly string[];
  /** A native binary (relative to the install folder) to run instead of the node launcher, when present: one process less. */
  native?: string;
}

export const AGENT_PACKAGES: readonly AgentPackage[] = [
  { id: 'codex-acp', package: '@zed-industries/codex-acp', version: '0.16.0', bin: 'codex-acp', args: [], native: 'node_modules/@zed-industries/codex-acp-linux-x64/bin/codex-acp' },
  { id: 'claude-code-acp', package: '@zed-industries/claude-code-acp', version: '0.16.2', bin: 'claude-code-acp', args: [] },
  // "default" approval: qwen asks the ACP client before edits and commands instead of asking the model.
  { id: 'qwen-code', package: '@qwen-code/qwen-code', version: '0.24.4', bin: 'qwen', args: ['--acp', '--approval-mode', 'default'] },
  { id: 'gemini-cli', package: '@google/gemini-cli', version: '0.61.0', bin: 'gemini', args: ['--acp'] },
  { id: 'opencode', package: 'opencode-ai', version: '1.18.33', bin: 'opencode', args: ['acp'] },
];

export function agentPackage(id: string): AgentPackage | null {
  return AGENT_PACKAGES.find((a) => a.id === id) ?? null;
}

/** The agent's native binary in its install folder `dir`, when it has one and the platform package brought it. */
export function agentNative(agent: AgentPackage, dir: string): string | null {
  const native = agent.native ? join(dir, agent.native) : null;
  return native && existsSync(native) ? native : null;
}

/**
 * The agent's ACP argv where its install folder `dir` is seen as `seenAs` (the same folder on the
 * host, /opt/agents/<id> in an image). The .bin entry is a symlink on the host; it is resolved here
 * because a node launcher finds its modules relative to its real path.
 */
export function agentArgv(agent: AgentPackage, dir: string, seenAs: string = dir): string[] {
  const entry = agentNative(agent, dir) ?? realpathSync(join(dir, 'node_modules', '.bin', agent.bin));
  return [join(seenAs, relative(realpathSync(dir), realpathSync(entry))), ...agent.args];
}
