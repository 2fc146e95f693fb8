/**
 * `spawngate/openclaw`: the OpenClaw plugin (integrations/openclaw/ is its installable folder).
 * The plugin's entry passes OpenClaw's `registerAcpRuntimeBackend` in, so that this module never
 * imports OpenClaw itself (OpenClaw resolves `openclaw/plugin-sdk/*` only for its plugins).
 */
export { createOpenClawPlugin, PLUGIN_ID, type PluginDeps, type OpenClawPluginApi } from './plugin.js';
export { parsePluginConfig, pluginConfigJsonSchema, pluginConfigSchema, type PluginConfig } from './config.js';
export { requestFromSpawn, channelOf, userOf, parseSessionKey, traceparentOf, type ToolContext } from './request.js';
export { toAcpEvent, type AcpRuntimeEvent } from './events.js';
export { pluginManifest } from './manifest.js';
