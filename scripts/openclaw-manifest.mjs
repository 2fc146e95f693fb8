// Writes integrations/openclaw/openclaw.plugin.json from the zod schemas (needs `npm run build`);
// with --check, fails when the committed file differs (the config schema is never hand-copied).
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { pluginManifest } from '../dist/integrations/openclaw/index.js';

const file = fileURLToPath(new URL('../integrations/openclaw/openclaw.plugin.json', import.meta.url));
const text = `${JSON.stringify(pluginManifest(), null, 2)}\n`;
if (process.argv.includes('--check')) {
  let committed = '';
  try {
    committed = readFileSync(file, 'utf8');
  } catch {
    // missing: reported below
  }
  if (committed !== text) {
    console.error(`${file} does not match the config schema; run: npm run build && node scripts/openclaw-manifest.mjs`);
    process.exit(1);
  }
  console.log('openclaw.plugin.json matches the config schema');
} else {
  writeFileSync(file, text);
  console.log(`wrote ${file}`);
}
