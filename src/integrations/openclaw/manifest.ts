import { pluginConfigJsonSchema } from './config.js';
import { PLUGIN_ID } from './state.js';

/** integrations/openclaw/openclaw.plugin.json, generated from the zod schemas (scripts/openclaw-manifest.mjs writes and checks it). */
export function pluginManifest(): Record<string, unknown> {
  return {
    id: PLUGIN_ID,
    name: 'spawngate',
    description: 'Admission (Rego/WASM policy, caps, rate limits) on sessions_spawn, and ACP sessions in spawngate workers (process, Docker, Kubernetes)',
    // Hooks must be in place before the first spawn, not when a command first names the plugin.
    activation: { onStartup: true },
    configSchema: pluginConfigJsonSchema(),
  };
}
