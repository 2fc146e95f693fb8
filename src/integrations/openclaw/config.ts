/** The plugin's own config (`plugins.entries.spawngate.config` in openclaw.json), validated by zod like spawngate's. */
import { z } from 'zod';
import { ConfigError } from '../../errors.js';
import { errorMap, toIssues } from '../../config/issues.js';
import { configMetadata, configSchema } from '../../config/schema.js';

const CONFIG_DESCRIPTION = 'spawngate config: a JSON/YAML file path, or the config itself; default the embedded process-backend config';
const configPath = z.string().min(1).max(4096);

const pluginFields = {
    bundle: z.string().min(1).max(4096).optional().register(configMetadata, { description: 'policy bundle file; default spawngate.bundle of the config, else the bundle shipped in the package' }),
    owner: z.string().min(1).max(63).optional().register(configMetadata, { description: 'owner label of the workers (the gateways that may sweep each other\'s orphans); default spawngate.owner, else the host name' }),
    backendId: z
      .string()
      .regex(/^[a-z0-9][a-z0-9_-]{0,62}$/)
      .optional()
      .register(configMetadata, { description: 'id of the ACP runtime backend it registers (agents.entries.<id>.runtime.acp.backend); default "spawngate"' }),
    ownerUser: z.string().min(1).max(200).optional().register(configMetadata, { description: 'user a spawn is charged to when OpenClaw names no sender (cron, /tools/invoke, the owner\'s webchat); default "owner"' }),
    claimSeconds: z
      .int()
      .min(1)
      .max(3600)
      .optional()
      .register(configMetadata, { description: 'how long an admitted sessions_spawn may take to start its child before its slot is released (OpenClaw refused it later); default 120' }),
    waitSeconds: z
      .int()
      .min(0)
      .max(3600)
      .optional()
      .register(configMetadata, {
        description: 'how long a sessions_spawn that meets a full concurrency cap waits for a slot before it is blocked (the policy\'s queue settings bound it; the tool call waits that long); default 0: blocked at once',
      }),
};

/**
 * What is parsed: an inline spawngate config is only checked to be an object here, and then fully
 * by createSpawngate (cross-field rules included), whose messages name its JSON paths.
 */
export const pluginConfigSchema = z.strictObject({
  config: z.union([configPath, z.record(z.string(), z.unknown())]).optional(),
  ...pluginFields,
});

/** What is published: the same, with the spawngate config's own schema inline. */
const publishedSchema = z
  .strictObject({ config: z.union([configPath, configSchema]).optional().register(configMetadata, { description: CONFIG_DESCRIPTION }), ...pluginFields })
  .register(configMetadata, { id: 'SpawngateOpenClawPlugin', description: 'spawngate plugin for OpenClaw: admission on sessions_spawn, ACP sessions in spawngate workers' });

export type PluginConfig = z.output<typeof pluginConfigSchema>;

export function parsePluginConfig(value: unknown): PluginConfig {
  const result = pluginConfigSchema.safeParse(value ?? {}, { error: errorMap });
  if (result.success) return result.data;
  const issues = toIssues(result.error);
  throw new ConfigError(`invalid spawngate plugin config (plugins.entries.<id>.config):\n${issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`, issues);
}

/** JSON Schema of the plugin config, for openclaw.plugin.json (generated, never hand-copied). */
export function pluginConfigJsonSchema(): Record<string, unknown> {
  const generated = z.toJSONSchema(publishedSchema, { target: 'draft-07', io: 'input', unrepresentable: 'any', metadata: configMetadata }) as Record<string, unknown>;
  const { $schema: _drop, ...rest } = generated;
  return rest;
}
