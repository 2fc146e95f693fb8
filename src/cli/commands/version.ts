import { readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { readBundle } from '../../admission/bundle.js';
import { SHIPPED_BUNDLE } from '../../admission/gate.js';
import { PACKAGE_ROOT } from '../../paths.js';
import type { Command } from '../framework.js';
import { EXIT } from '../framework.js';
import { outputFormat, outputOption, writeRecord } from '../output.js';

export interface VersionInfo {
  spawngate: string;
  node: string;
  /** The policy bundle this package ships: what every gate decides with unless a config names another. */
  bundle: { path: string; revision: string | null; error?: string };
  platform: string;
}

export async function versionInfo(): Promise<VersionInfo> {
  const pkg = JSON.parse(await readFile(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string };
  const path = relative(PACKAGE_ROOT, SHIPPED_BUNDLE);
  // A broken bundle is worth knowing about, but it must not hide the versions a bug report needs.
  const bundle = await readBundle(SHIPPED_BUNDLE).then(
    (b) => ({ path, revision: b.revision }),
    (err: unknown) => ({ path, revision: null, error: err instanceof Error ? err.message : String(err) }),
  );
  return { spawngate: pkg.version ?? 'unknown', node: process.versions.node, bundle, platform: `${process.platform}/${process.arch}` };
}

export const versionCommand: Command = {
  name: 'version',
  summary: 'Print the versions of spawngate, Node.js and the shipped policy bundle, and the platform (what a bug report needs).',
  usage: 'spawngate version [-o json|yaml]',
  options: { output: outputOption(['json', 'yaml'], 'a table') },
  examples: [
    { description: 'For a bug report', command: 'spawngate version' },
    { description: 'The bundle revision only', command: 'spawngate version -o json | jq -r .bundle.revision' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const info = await versionInfo();
    const bundle = info.bundle.revision ? `${info.bundle.revision} (${info.bundle.path})` : `unreadable: ${info.bundle.error ?? 'unknown'} (${info.bundle.path})`;
    const rows: [string, string][] = [
      ['spawngate', info.spawngate],
      ['node', info.node],
      ['bundle', bundle],
      ['platform', info.platform],
    ];
    writeRecord(io, format, info, () => rows.map(([k, v]) => `${k.padEnd(10)}${v}\n`).join(''));
    return EXIT.ok;
  },
};
