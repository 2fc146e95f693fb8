import { z } from 'zod';
import { configMetadata, configSchema } from './schema.js';

export const CONFIG_SCHEMA_ID = 'https://spawngate.io/schemas/config.json';

/**
 * JSON Schema (draft 2020-12) of the config file, for editors and CI linting. Shapes, enums,
 * patterns and bounds carry over; cross-field rules (references between backends, profiles and
 * selection, limits ≥ requests, inline secrets) do not — `spawngate config validate` checks those.
 */
export function configJsonSchema(): Record<string, unknown> {
  const generated = z.toJSONSchema(configSchema, { target: 'draft-2020-12', io: 'input', unrepresentable: 'any', metadata: configMetadata }) as Record<string, unknown>;
  const { $schema, ...rest } = generated;
  return {
    $schema,
    $id: CONFIG_SCHEMA_ID,
    title: 'spawngate configuration',
    description: 'agents.executionBackends (where and with what resources workers run) and agents.execution (selection defaults)',
    ...rest,
  };
}
