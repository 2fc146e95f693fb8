// The spawngate plugin for OpenClaw. OpenClaw resolves `openclaw/plugin-sdk/*` for its plugins;
// spawngate itself comes from this folder's node_modules (npm install), so the policy bundle and
// everything else it needs resolve from the installed package, wherever OpenClaw loads this file from.
import { registerAcpRuntimeBackend } from 'openclaw/plugin-sdk/acp-runtime-backend';
import { createOpenClawPlugin } from 'spawngate/openclaw';

export default createOpenClawPlugin({ registerAcpRuntimeBackend });
