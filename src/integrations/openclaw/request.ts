/**
 * OpenClaw's view of a spawn (the `sessions_spawn` params and the hook context) as a spawngate
 * request. OpenClaw has no "interactive" flag and no single caller shape: a chat turn carries a
 * requester, a cron run only a session key, `/tools/invoke` neither — so the channel, its kind and
 * the user are derived here, once, and every path gets the same rules.
 */
import type { SpawnRequestInput } from '../../admission/request.js';

/** The subset of OpenClaw's tool hook context this reads (plugin SDK `PluginHookToolContext`). */
export interface ToolContext {
  agentId?: string;
  sessionKey?: string;
  toolCallId?: string;
  channelId?: string;
  trace?: { traceId?: string; spanId?: string; traceFlags?: string | number };
  requester?: { channel?: string; accountId?: string; senderId?: string; senderIsOwner?: boolean; roleIds?: string[] };
}

/** The part of the OpenClaw config the mapping needs: which ACP harness an agent entry runs. */
export interface OpenClawConfigView {
  agents?: { entries?: Record<string, { runtime?: { type?: string; acp?: { agent?: string } } } | undefined> };
  acp?: { defaultAgent?: string };
}

export interface MappingOptions {
  /** The user a spawn is charged to when OpenClaw names no sender (cron, /tools/invoke, the owner's webchat). */
  ownerUser: string;
}

export interface SessionKeyInfo {
  agentId: string | null;
  /** cron job id when the key is a cron run. */
  cronJob: string | null;
  heartbeat: boolean;
  /** Nesting of subagent/acp children in the key. */
  depth: number;
}

const ID_SAFE = /[\u0000-\u001f\u007f]/g;

function clean(value: string, max = 200): string {
  return value.replace(ID_SAFE, '').slice(0, max) || 'unknown';
}

/** `agent:<id>:main`, `agent:<id>:subagent:<uuid>`, `agent:<id>:acp:<uuid>`, `agent:<id>:cron:<job>:run:<sid>`, … */
export function parseSessionKey(key: string | undefined): SessionKeyInfo {
  const parts = (key ?? '').split(':');
  const agentId = parts[0] === 'agent' && parts[1] ? parts[1] : null;
  const cronAt = parts.indexOf('cron');
  return {
    agentId,
    cronJob: cronAt >= 0 ? (parts[cronAt + 1] ?? '') || null : null,
    heartbeat: parts.includes('heartbeat'),
    depth: parts.filter((p) => p === 'subagent' || p === 'acp').length,
  };
}

export type ChannelKind = string;

/** Channel kind and id: the requester's channel for chat, "cron" / "heartbeat" from the key, "api" for /tools/invoke, else "unknown" (non-interactive). */
export function channelOf(ctx: ToolContext): { id: string; kind: ChannelKind } {
  const key = parseSessionKey(ctx.sessionKey);
  const requesterChannel = ctx.requester?.channel;
  if (requesterChannel) {
    const kind = requesterChannel.toLowerCase().replace(/[^a-z0-9._:-]/g, '_').replace(/^[^a-z0-9]+/, '') || 'unknown';
    return { kind, id: clean(ctx.channelId ?? `${kind}:${ctx.requester?.accountId ?? 'default'}`) };
  }
  if (key.cronJob) return { kind: 'cron', id: clean(`cron:${key.cronJob}`) };
  if (key.heartbeat) return { kind: 'heartbeat', id: clean(`heartbeat:${key.agentId ?? 'main'}`) };
  // /tools/invoke names itself only through its tool-call ids.
  if (ctx.toolCallId?.startsWith('http-')) return { kind: 'api', id: clean(`api:${key.agentId ?? ctx.agentId ?? 'main'}`) };
  return { kind: 'unknown', id: clean(`unknown:${ctx.sessionKey ?? 'none'}`) };
}

export function userOf(ctx: ToolContext, options: MappingOptions): { id: string; roles: string[] } {
  const r = ctx.requester;
  const roles = (r?.roleIds ?? []).filter((x) => typeof x === 'string').map((x) => clean(x, 128)).slice(0, 60);
  if (r?.senderIsOwner) roles.push('owner');
  if (r?.senderId) return { id: clean(`${r.channel ?? 'channel'}:${r.senderId}`), roles };
  // Without a sender, whoever holds the gateway's token or owns its cron jobs: the owner.
  return { id: options.ownerUser, roles: r ? roles : ['owner'] };
}

/** W3C traceparent from OpenClaw's ctx.trace (flags arrive as a string such as "01"). */
export function traceparentOf(trace: ToolContext['trace']): string | undefined {
  if (!trace?.traceId || !trace.spanId) return undefined;
  const traceId = trace.traceId.toLowerCase();
  const spanId = trace.spanId.toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(traceId) || !/^[0-9a-f]{16}$/.test(spanId) || /^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined;
  const raw = trace.traceFlags;
  const flags = typeof raw === 'number' ? raw.toString(16).padStart(2, '0') : /^[0-9a-f]{2}$/i.test(raw ?? '') ? (raw as string).toLowerCase() : '01';
  return `00-${traceId}-${spanId}-${flags}`;
}

/** The ACP harness an OpenClaw agent entry runs (its runtime.acp.agent), else the entry's own id. */
export function harnessOf(config: OpenClawConfigView | undefined, openclawAgentId: string): string {
  return config?.agents?.entries?.[openclawAgentId]?.runtime?.acp?.agent ?? openclawAgentId;
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' && value.length > 0 ? value : undefined;
}

export interface MappedSpawn {
  request: SpawnRequestInput;
  runtime: 'acp' | 'subagent';
  /** The OpenClaw agent id of the child (for acp: the entry whose harness runs in the worker). */
  openclawAgentId: string;
}

/** `sessions_spawn` params + hook ctx → a spawngate request. */
export function requestFromSpawn(params: Record<string, unknown>, ctx: ToolContext, config: OpenClawConfigView | undefined, options: MappingOptions): MappedSpawn {
  const runtime = params.runtime === 'acp' ? 'acp' : 'subagent';
  const key = parseSessionKey(ctx.sessionKey);
  const openclawAgentId = str(params.agentId) ?? (runtime === 'acp' ? str(config?.acp?.defaultAgent) : undefined) ?? ctx.agentId ?? key.agentId ?? 'main';
  const agentId = runtime === 'acp' ? harnessOf(config, openclawAgentId) : openclawAgentId;
  const task = str(params.task);
  const label = str(params.label) ?? str(params.taskName);
  const traceparent = traceparentOf(ctx.trace);
  const request: SpawnRequestInput = {
    runtime,
    agentId,
    ...(task ? { task } : {}),
    ...(label ? { label: label.slice(0, 256) } : {}),
    ...(str(params.cwd) ? { cwd: str(params.cwd) } : {}),
    ...(str(params.model) ? { model: str(params.model) } : {}),
    ...(str(params.resumeSessionId) ? { resumeSessionId: str(params.resumeSessionId) } : {}),
    caller: {
      sessionKey: clean(ctx.sessionKey ?? 'unknown'),
      depth: key.depth,
      channel: channelOf(ctx),
      user: userOf(ctx, options),
    },
    ...(traceparent ? { traceparent } : {}),
  };
  return { request, runtime, openclawAgentId };
}

/** A request for an ACP session that no sessions_spawn admitted (e.g. `/acp spawn`): decided here instead. */
export function requestForSession(sessionKey: string, harness: string, ownerUser: string): SpawnRequestInput {
  const key = parseSessionKey(sessionKey);
  return {
    runtime: 'acp',
    agentId: harness,
    caller: { sessionKey, depth: Math.max(0, key.depth - 1), channel: channelOf({ sessionKey }), user: { id: ownerUser, roles: ['owner'] } },
  };
}
