// vitest globalSetup: installs the pinned agents once, before any test file runs (a minute cold, cached after).
import { ensureAgents } from './agents.js';

export function setup(): void {
  const argv = ensureAgents();
  process.stdout.write(`real agents: ${Object.keys(argv).join(', ')}\n`);
}
