/**
 * Built-in ACP agents shipped with spawngate, by agent id. Each command starts the agent with the
 * node binary running this process, so it works wherever spawngate itself runs (host, image, CI).
 * Importing this module starts nothing: the agent files are entry points run as child processes.
 */
import { fileURLToPath } from 'node:url';
import type { SpawngateConfig } from '../config/schema.js';

export interface BuiltinAgent {
  /** argv of the agent process: [node, script]. */
  command: string[];
}

// Under vitest/tsx this module is src/agents/index.ts and the sibling is echo.ts (Node strips its
// types natively); once built it is dist/agents/index.js next to echo.js.
const extension = import.meta.url.endsWith('.ts') ? '.ts' : '.js';

function script(name: string): string {
  return fileURLToPath(new URL(`./${name}${extension}`, import.meta.url));
}

export const builtinAgents: Record<string, BuiltinAgent> = {
  echo: { command: [process.execPath, script('echo')] },
};

export function resolveBuiltinAgent(agentId: string): BuiltinAgent | null {
  return Object.hasOwn(builtinAgents, agentId) ? (builtinAgents[agentId] ?? null) : null;
}

/** Whether anything can start this agent: the config names its command (agents.acp.<id>), or it is built in. */
export function isKnownAgent(config: Pick<SpawngateConfig, 'agents'>, agentId: string): boolean {
  return Object.hasOwn(config.agents.acp ?? {}, agentId) || resolveBuiltinAgent(agentId) !== null;
}
