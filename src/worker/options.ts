/**
 * The reference worker's environment, read into startWorker options (the worker's entry, main.ts, and
 * its early agent launch, launch.ts, read it alike). Light on purpose: the entry loads this before
 * the rest of the worker, to start the agent sooner.
 *
 *   SPAWNGATE_WORKER_TOKEN    required; the bearer token every request must carry (never passed to the agent)
 *   SPAWNGATE_AGENT_ID        agent id reported in /healthz and events; default "echo"
 *   SPAWNGATE_AGENT_COMMAND   JSON array argv of the ACP agent; default: the built-in agent of that id
 *   SPAWNGATE_LISTEN          "8080" (127.0.0.1:8080), "host:port", "[::1]:port" or "unix:/path.sock";
 *                             default "127.0.0.1:0" (an ephemeral port, reported in the listening line)
 *   SPAWNGATE_WORKER_CWD      the agent's working directory; default the worker's
 *   SPAWNGATE_SESSION_MODEL   a model for the ACP session, applied when the agent offers it
 *   SPAWNGATE_RESUME_SESSION_ID  reopen this ACP session (session/resume, else session/load)
 *   SPAWNGATE_CANCEL_GRACE_MS how long the agent may take to honour a cancel; default 5000
 *   SPAWNGATE_PERMISSIONS     who answers the agent's permission requests: "ask" (the gateway, over POST /permission;
 *                             what a gateway sets), "allow_once" (default) or "reject"
 *   SPAWNGATE_PERMISSION_TIMEOUT_MS  how long an "ask" request waits for its answer before it is rejected; default 60000
 *   SPAWNGATE_EGRESS_PROXY_SOCKET  egress "proxy": the gateway's proxy socket, offered to the agent as HTTP(S)_PROXY on loopback
 *   SPAWNGATE_DEADLINE        Unix time (s) at which the worker stops itself and exits 124 (the profile timeout)
 *   SPAWNGATE_CLAIMABLE       "1": a warm worker of a pool, which accepts one POST /claim (a new token, an earlier deadline)
 *   SPAWNGATE_MCP_SERVERS     JSON array of MCP servers (ACP's shape) for session/new, load and resume
 *   SPAWNGATE_GIT_REPO        clone this repository into the workspace (the worker's cwd) before the agent starts
 *   SPAWNGATE_GIT_REF         branch, tag or commit to check out; default the remote's default branch
 *   SPAWNGATE_GIT_DEPTH       shallow clone of this many commits
 *   TRACEPARENT               W3C trace context of the gateway span that created the worker
 *   OTEL_*                    standard OpenTelemetry variables; spans are exported when they ask for it
 */
import { ConfigError } from '../errors.js';
import type { Issue } from '../errors.js';
import { resolveBuiltinAgent } from '../agents/index.js';
import type { McpServer } from '@agentclientprotocol/sdk';
import type { GitCheckout } from './workspace.js';
import type { PermissionMode, StartWorkerOptions, WorkerListen } from './worker.js';

const PERMISSION_MODES: readonly PermissionMode[] = ['ask', 'allow_once', 'reject'];

export type Env = Record<string, string | undefined>;

/** The value of a JSON variable, or undefined when it is not JSON (the caller names the variable). */
function jsonOrUndefined(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

export function parseListen(value: string | undefined): WorkerListen | Issue {
  const spec = value?.trim() || '127.0.0.1:0';
  const path = 'SPAWNGATE_LISTEN';
  if (spec.startsWith('unix:')) {
    const socketPath = spec.slice('unix:'.length);
    return socketPath ? { socketPath } : { path, message: 'unix: needs a socket path, e.g. unix:/run/worker.sock' };
  }
  const match = /^(?:(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):)?(\d{1,5})$/.exec(spec);
  const port = Number(match?.[3]);
  if (!match || port > 65535) return { path, message: `expected a port, "host:port" or "unix:/path", got ${JSON.stringify(spec)}` };
  return { port, host: match[1] ?? match[2] ?? '127.0.0.1' };
}

/** Turns the environment into startWorker options; every fault is reported at once, by variable name. */
export function workerOptionsFromEnv(env: Env): StartWorkerOptions & { git?: GitCheckout } {
  const issues: Issue[] = [];
  const token = env['SPAWNGATE_WORKER_TOKEN'];
  if (!token) issues.push({ path: 'SPAWNGATE_WORKER_TOKEN', message: 'required: the per-worker bearer token' });
  const agentId = env['SPAWNGATE_AGENT_ID'] || 'echo';

  let argv: string[] | null = null;
  const rawCommand = env['SPAWNGATE_AGENT_COMMAND'];
  if (rawCommand) {
    const parsed = jsonOrUndefined(rawCommand);
    if (Array.isArray(parsed) && parsed.length > 0 && parsed.every((a) => typeof a === 'string') && parsed[0] !== '') argv = parsed;
    else issues.push({ path: 'SPAWNGATE_AGENT_COMMAND', message: 'must be a JSON array of strings, e.g. ["node","/app/dist/agents/echo.js"]' });
  } else {
    argv = resolveBuiltinAgent(agentId)?.command ?? null;
    if (!argv) issues.push({ path: 'SPAWNGATE_AGENT_COMMAND', message: `required: "${agentId}" is not a built-in agent` });
  }

  const listen = parseListen(env['SPAWNGATE_LISTEN']);
  if ('message' in listen) issues.push(listen);

  let cancelGraceMs: number | undefined;
  const rawGrace = env['SPAWNGATE_CANCEL_GRACE_MS'];
  if (rawGrace) {
    cancelGraceMs = Number(rawGrace);
    if (!Number.isInteger(cancelGraceMs) || cancelGraceMs < 0) issues.push({ path: 'SPAWNGATE_CANCEL_GRACE_MS', message: 'must be a non-negative integer' });
  }

  const permissions = env['SPAWNGATE_PERMISSIONS'] || undefined;
  if (permissions !== undefined && !PERMISSION_MODES.includes(permissions as PermissionMode)) {
    issues.push({ path: 'SPAWNGATE_PERMISSIONS', message: `must be one of ${PERMISSION_MODES.join(', ')}` });
  }
  let permissionTimeoutMs: number | undefined;
  const rawPermissionTimeout = env['SPAWNGATE_PERMISSION_TIMEOUT_MS'];
  if (rawPermissionTimeout) {
    permissionTimeoutMs = Number(rawPermissionTimeout);
    if (!Number.isInteger(permissionTimeoutMs) || permissionTimeoutMs < 1) issues.push({ path: 'SPAWNGATE_PERMISSION_TIMEOUT_MS', message: 'must be a positive integer' });
  }

  let deadlineAt: Date | undefined;
  const rawDeadline = env['SPAWNGATE_DEADLINE'];
  if (rawDeadline) {
    const seconds = Number(rawDeadline);
    if (!Number.isInteger(seconds) || seconds <= 0) issues.push({ path: 'SPAWNGATE_DEADLINE', message: 'must be a Unix time in seconds' });
    else deadlineAt = new Date(seconds * 1000);
  }

  let mcpServers: McpServer[] | undefined;
  const rawMcp = env['SPAWNGATE_MCP_SERVERS'];
  if (rawMcp) {
    const parsed = jsonOrUndefined(rawMcp);
    const named = (v: unknown): boolean => typeof v === 'object' && v !== null && typeof (v as { name?: unknown }).name === 'string';
    if (Array.isArray(parsed) && parsed.every(named)) mcpServers = parsed as McpServer[];
    else issues.push({ path: 'SPAWNGATE_MCP_SERVERS', message: 'must be a JSON array of ACP MCP servers ({name, command, args, env} or {type: "http", name, url, headers})' });
  }

  let git: GitCheckout | undefined;
  const repo = env['SPAWNGATE_GIT_REPO'];
  if (repo) {
    const depth = env['SPAWNGATE_GIT_DEPTH'] ? Number(env['SPAWNGATE_GIT_DEPTH']) : null;
    if (depth !== null && (!Number.isInteger(depth) || depth < 1)) issues.push({ path: 'SPAWNGATE_GIT_DEPTH', message: 'must be a positive integer' });
    if (repo.startsWith('-') || repo.includes('::')) issues.push({ path: 'SPAWNGATE_GIT_REPO', message: 'must be a repository URL or an absolute path' });
    const ref = env['SPAWNGATE_GIT_REF'] || null;
    if (ref?.startsWith('-')) issues.push({ path: 'SPAWNGATE_GIT_REF', message: 'must be a branch, tag or commit name' });
    git = { repo, ref, depth };
  }

  if (issues.length > 0 || !token || !argv || 'message' in listen) throw new ConfigError('invalid worker environment', issues);
  const [agentCommand = '', ...agentArgs] = argv;
  return {
    agentCommand,
    agentArgs,
    agentId,
    token,
    listen,
    ...(env['SPAWNGATE_WORKER_CWD'] ? { cwd: env['SPAWNGATE_WORKER_CWD'] } : {}),
    ...(env['SPAWNGATE_SESSION_MODEL'] ? { model: env['SPAWNGATE_SESSION_MODEL'] } : {}),
    ...(env['SPAWNGATE_RESUME_SESSION_ID'] ? { resumeSessionId: env['SPAWNGATE_RESUME_SESSION_ID'] } : {}),
    ...(cancelGraceMs === undefined ? {} : { cancelGraceMs }),
    ...(permissions === undefined ? {} : { permissions: permissions as PermissionMode }),
    ...(permissionTimeoutMs === undefined ? {} : { permissionTimeoutMs }),
    ...(env['SPAWNGATE_EGRESS_PROXY_SOCKET'] ? { egressProxySocket: env['SPAWNGATE_EGRESS_PROXY_SOCKET'] } : {}),
    ...(deadlineAt ? { deadlineAt } : {}),
    ...(env['SPAWNGATE_CLAIMABLE'] === '1' ? { claimable: true } : {}),
    ...(git ? { git } : {}),
    ...(mcpServers ? { mcpServers } : {}),
  };
}
