import type { Command } from '../framework.js';
import { EXIT, str } from '../framework.js';

export const imageBuildCommand: Command = {
  name: 'image build',
  summary: 'Build the Docker worker image locally (docker import of a root filesystem: node, a userland with a shell and git, the built package, its production dependencies).',
  usage: 'spawngate image build [--tag NAME:TAG] [--force] [--minimal] [--socket PATH] [--json]',
  options: { tag: { type: 'string', short: 't' }, force: { type: 'boolean' }, minimal: { type: 'boolean' }, socket: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, io }) {
    // Loaded here so that every other command stays free of the Docker client.
    const { buildWorkerImage } = await import('../../backends/docker/image.js');
    const tag = str(values, 'tag');
    const socketPath = str(values, 'socket');
    const built = await buildWorkerImage({
      ...(tag ? { tag } : {}),
      ...(socketPath ? { socketPath } : {}),
      force: values.force === true,
      // --minimal: node and the worker only (no shell, no git), for agents that need nothing else.
      userland: values.minimal !== true,
      log: values.json ? () => undefined : (line) => io.stderr.write(`${line}\n`),
    });
    if (values.json) io.stdout.write(`${JSON.stringify(built)}\n`);
    else io.stdout.write(`${built.built ? 'built' : 'up to date'}: ${built.tag} (${built.imageId.slice(0, 19)})\n`);
    return EXIT.ok;
  },
};
