/**
 * One ACP agent's settings for one placement: `agents.acp.<id>`, then its override for the backend,
 * then its override for the profile. The command and model are replaced, env keys are added or replaced.
 */
import type { SpawngateConfig } from './schema.js';

export type AgentEnvValue = string | { secretRef: { name: string; key: string } };

export interface ResolvedAgent {
  /** null: the config names no command (the worker's built-in agent of that id, if there is one). */
  command: readonly string[] | null;
  env: Readonly<Record<string, AgentEnvValue>>;
  model: string | null;
}

export function resolveAgent(config: SpawngateConfig, agentId: string, backend: string, profile: string): ResolvedAgent {
  // Own keys only: an agent id such as "constructor" must not find Object.prototype's members.
  const agent = config.agents.acp && Object.hasOwn(config.agents.acp, agentId) ? config.agents.acp[agentId] : undefined;
  if (!agent) return { command: null, env: {}, model: null };
  const layers = [agent, agent.backends?.[backend], agent.profiles?.[profile]];
  let command: readonly string[] = agent.command;
  let model: string | null = null;
  const env: Record<string, AgentEnvValue> = {};
  for (const layer of layers) {
    if (!layer) continue;
    if (layer.command) command = layer.command;
    if (layer.model) model = layer.model;
    Object.assign(env, layer.env ?? {});
  }
  return { command, env, model };
}
