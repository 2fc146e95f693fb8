import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeBackendContract } from '../contract/backend-contract.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));

describeBackendContract({
  name: 'local',
  backend: { type: 'process', stateDir: mkdtempSync(join(tmpdir(), 'sg-proc-')) },
  fixtureCommand: [process.execPath, fixture],
  // none is the default and the case that used to hang (its socket path is known before the worker listens).
  egressModes: ['none', 'open'],
});
