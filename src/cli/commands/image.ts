import { join } from 'node:path';
import { AGENT_PACKAGES, agentArgv, agentNative, agentPackage } from '../../agents/catalog.js';
import type { AgentPackage } from '../../agents/catalog.js';
import { defaultAgentsDir, installAgent } from '../agent-install.js';
import type { Command } from '../framework.js';
import { EXIT, str } from '../framework.js';
import { jsonLinesOption, outputFormat, outputOption, writeRecord } from '../output.js';
import { UsageError } from '../../errors.js';

export const imageBuildCommand: Command = {
  name: 'image build',
  summary: 'Build the Docker worker image locally (docker import of a root filesystem: node, a userland with a shell and git, the built package, its production dependencies), optionally with coding agents from npm.',
  usage: `spawngate image build [--agent ID]... [--agents-dir DIR] [--tag NAME:TAG] [--force] [--minimal] [--socket PATH] [--json]   (agents: ${AGENT_PACKAGES.map((a) => a.id).join(', ')})`,
  options: {
    tag: { type: 'string', short: 't', value: 'NAME:TAG', description: 'Tag of the image to build.', default: 'spawngate-worker:<version>, with -<agent ids> appended when --agent is given' },
    agent: { type: 'string', value: 'ID', multiple: true, description: `Put this coding agent (pinned npm package) into the image: ${AGENT_PACKAGES.map((a) => a.id).join(', ')}.`, default: 'none' },
    'agents-dir': { type: 'string', value: 'DIR', description: 'Where agents are installed with npm before they go into the image (kept between builds).', default: '$SPAWNGATE_AGENTS_DIR, else $XDG_CACHE_HOME/spawngate/agents, else ~/.cache/spawngate/agents' },
    force: { type: 'boolean', description: 'Rebuild even when the image of this tag was built from the same inputs.', default: 'keep that image' },
    minimal: { type: 'boolean', description: 'Only node and the worker: no shell, no git, no CA certificates (not with --agent).', default: 'with the userland' },
    socket: { type: 'string', value: 'PATH', description: 'Docker Engine socket.', default: '$DOCKER_HOST, else /var/run/docker.sock' },
    output: outputOption(['json', 'yaml'], 'a line per result; build steps on stderr'),
    json: jsonLinesOption('Print the result (tag, image id, built, agent commands) as one compact JSON line, and no build steps on stderr.'),
  },
  examples: [
    { description: 'The worker image for the Docker backend', command: 'spawngate image build' },
    { description: 'An image with codex in it, and the command to put into the config', command: 'spawngate image build --agent codex-acp' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const ids = Array.isArray(values['agent']) ? values['agent'] : [];
    const agents: AgentPackage[] = [];
    for (const id of ids) {
      const known = agentPackage(id);
      if (!known) throw new UsageError(`--agent ${JSON.stringify(id)}: not an agent spawngate installs (known: ${AGENT_PACKAGES.map((a) => a.id).join(', ')})`);
      if (!agents.includes(known)) agents.push(known);
    }
    if (agents.length && values.minimal === true) throw new UsageError('--agent cannot be combined with --minimal: coding agents need the userland (a shell, git, CA certificates)');
    const log = format === 'jsonl' ? () => undefined : (line: string) => void io.stderr.write(`${line}\n`);
    const base = str(values, 'agents-dir') ?? defaultAgentsDir(io.env);
    const installed: { agent: AgentPackage; dir: string }[] = [];
    for (const agent of agents) installed.push({ agent, dir: await installAgent(agent, base, log) });
    // Loaded here so that every other command stays free of the Docker client.
    const { AGENTS_IN_IMAGE, buildWorkerImage, defaultWorkerImage } = await import('../../backends/docker/image.js');
    const tag = str(values, 'tag') ?? (agents.length ? `${defaultWorkerImage()}-${agents.map((a) => a.id).join('-')}` : undefined);
    const socketPath = str(values, 'socket');
    const built = await buildWorkerImage({
      ...(tag ? { tag } : {}),
      ...(socketPath ? { socketPath } : {}),
      force: values.force === true,
      // --minimal: node and the worker only (no shell, no git), for agents that need nothing else.
      userland: values.minimal !== true,
      agents: installed.map(({ agent, dir }) => ({ id: agent.id, dir, native: [agentNative(agent, dir)].filter((p): p is string => p !== null) })),
      log,
    });
    const commands = Object.fromEntries(installed.map(({ agent, dir }) => [agent.id, agentArgv(agent, dir, join(AGENTS_IN_IMAGE, agent.id))]));
    if (format !== 'text') {
      writeRecord(io, format, { ...built, agents: commands }, () => '');
      return EXIT.ok;
    }
    io.stdout.write(`${built.built ? 'built' : 'up to date'}: ${built.tag} (${built.imageId.slice(0, 19)})\n`);
    for (const [id, argv] of Object.entries(commands)) {
      io.stdout.write(`agent ${id} in the image: agents.acp.${id}.backends.<container backend>.command = ${JSON.stringify(argv)}\n`);
    }
    if (agents.length) io.stdout.write(`recipes (env, model API, keys): docs/agents.md\n`);
    return EXIT.ok;
  },
};
