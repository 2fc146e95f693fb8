import { z } from 'zod';
import { RequestError } from '../errors.js';
import { errorMap, reservedKeyIssues, toIssues } from '../config/issues.js';
import { agentIdSchema, egressSchema, mcpServerSchema, nameSchema } from '../config/schema.js';
import type { AdmissionInput } from './types.js';

/**
 * The spawn request a gateway sends (OpenClaw `sessions_spawn` and friends). Strict: an unknown
 * field is an error, not something silently dropped. The prompt may be sent as `task`
 * (OpenClaw's name, canonical) or `message` (the seed example's name), or left out for a session
 * whose first turn comes later (an ACP `ensureSession`); the policy then sees an empty task.
 * `cwd`, `env`, `model` and `resumeSessionId` are wishes for the session: they reach the worker
 * only where the chosen profile's `accept` allows them (src/sessions/spec.ts).
 */

export const MAX_TASK_BYTES = 64 * 1024;
/** The longest a request may ask to wait for a concurrency slot (the policy may allow less). */
export const MAX_WAIT_SECONDS = 3600;
const MAX_ID = 256;

/** Channel kinds with nobody at the other end to answer a question; everything else is a chat. */
export const NON_INTERACTIVE_KINDS: ReadonlySet<string> = new Set(['cron', 'webhook', 'api', 'heartbeat', 'unknown']);

const idSchema = z
  .string()
  .min(1)
  .max(MAX_ID)
  // `*`: an empty value is min(1)'s to report, once.
  .regex(/^[^\u0000-\u001f\u007f]*$/, { message: 'must not contain control characters' });

const taskSchema = z
  .string()
  .max(MAX_TASK_BYTES)
  .refine((v) => v.trim().length > 0, { message: 'must not be empty' })
  .refine((v) => Buffer.byteLength(v, 'utf8') <= MAX_TASK_BYTES, { message: `must be at most ${MAX_TASK_BYTES} bytes (64 KiB) of UTF-8` });

/** Names a request may not set: the worker's own contract, and what changes how every program loads. */
const RESERVED_ENV = /^(SPAWNGATE_|TRACEPARENT$|PATH$|HOME$|NODE_OPTIONS$|LD_|DYLD_|HTTPS?_PROXY$|NO_PROXY$)/i;
export const MAX_REQUEST_ENV = 64;
const MAX_ENV_VALUE_BYTES = 32 * 1024;

const requestEnvSchema = z
  .record(
    z
      .string()
      .max(128)
      .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { message: 'must be an environment variable name: letters, digits and "_", not starting with a digit' })
      .refine((name) => !RESERVED_ENV.test(name), { message: 'is reserved (SPAWNGATE_*, PATH, HOME, NODE_OPTIONS, LD_*, proxies): the worker sets it itself' }),
    z
      .string()
      .max(MAX_ENV_VALUE_BYTES)
      .refine((v) => !v.includes('\u0000'), { message: 'must not contain NUL' }),
  )
  .check((ctx) => {
    if (Object.keys(ctx.value).length > MAX_REQUEST_ENV) ctx.issues.push({ code: 'custom', message: `at most ${MAX_REQUEST_ENV} variables`, input: ctx.value });
  });

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

const traceparentSchema = z
  .string()
  .max(512)
  .check((ctx) => {
    const m = TRACEPARENT.exec(ctx.value);
    const [, version, traceId, parentId] = m ?? [];
    const ok =
      m !== null &&
      version !== 'ff' &&
      // Version 00 has exactly four fields; later versions may append more.
      !(version === '00' && m[5] !== undefined) &&
      !/^0+$/.test(traceId ?? '') &&
      !/^0+$/.test(parentId ?? '');
    if (!ok) ctx.issues.push({ code: 'custom', message: 'must be a W3C traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>', input: ctx.value });
  });

export const spawnRequestSchema = z
  .strictObject({
    runtime: z.enum(['acp', 'subagent']).optional(),
    agentId: agentIdSchema.min(1),
    execution: z
      .strictObject({
        backend: nameSchema.nullable().optional(),
        profile: nameSchema.nullable().optional(),
        egress: egressSchema.nullable().optional(),
      })
      .nullable()
      .optional(),
    task: taskSchema.optional(),
    message: taskSchema.optional(),
    label: z.string().max(MAX_ID).nullable().optional(),
    cwd: z
      .string()
      .max(4096)
      .regex(/^\/[^\u0000]*$/, { message: 'must be an absolute path' })
      .refine((v) => !v.split('/').includes('..'), { message: 'must not contain ".." segments' })
      .nullable()
      .optional(),
    env: requestEnvSchema.nullable().optional(),
    model: idSchema.nullable().optional(),
    resumeSessionId: idSchema.nullable().optional(),
    // ACP's session/new names them too; the profile decides (accept.mcpServers). Literal credentials are refused as in the config.
    mcpServers: z.array(mcpServerSchema).max(32).nullable().optional(),
    caller: z.strictObject({
      sessionKey: idSchema,
      parentSessionKey: idSchema.nullable().optional(),
      // The top of the caller's spawn tree, for tree budgets; a gateway that knows it sends it.
      rootSessionKey: idSchema.nullable().optional(),
      depth: z.int().min(0).max(1000).optional(),
      channel: z.strictObject({
        id: idSchema,
        kind: z
          .string()
          .min(1)
          .max(64)
          .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, { message: 'must be letters, digits, ".", "_", ":" or "-"' }),
        interactive: z.boolean().optional(),
      }),
      user: z.strictObject({
        id: idSchema,
        roles: z.array(idSchema.max(128)).max(64).optional(),
      }),
    }),
    traceparent: traceparentSchema.optional(),
    // A retry with the same key gets the spawn the first request made (src/sessions/idempotency.ts).
    idempotencyKey: idSchema.optional(),
    // How long the caller will wait for a concurrency slot instead of being denied; the policy bounds it.
    waitSeconds: z.int().min(0).max(MAX_WAIT_SECONDS).optional(),
  })
  .superRefine(
    (value, ctx) => {
      // `when` runs this even where the object itself failed: the value may be null or not an object at all.
      if (typeof value !== 'object' || value === null) return;
      const task = typeof value.task === 'string' ? value.task : undefined;
      const message = typeof value.message === 'string' ? value.message : undefined;
      if (task !== undefined && message !== undefined && task !== message) {
        ctx.addIssue({ code: 'custom', path: ['message'], message: 'differs from "task"; send the prompt once, as "task"' });
      }
    },
    { when: () => true },
  );

/** What callers pass. */
export type SpawnRequestInput = z.input<typeof spawnRequestSchema>;

/** The normalized request: `task` canonical, defaults filled, no optional fields. */
export interface SpawnRequest {
  runtime: AdmissionInput['request']['runtime'];
  agentId: string;
  /** null when the caller asked for nothing explicitly. */
  execution: AdmissionInput['request']['execution'];
  /** '' when the session's first turn comes later. */
  task: string;
  label: string | null;
  /** What the caller wishes for the session; the profile decides what of it the worker gets. */
  session: SessionWishes;
  caller: AdmissionInput['caller'];
  /** The caller's W3C trace context, continued by the spawn span. */
  traceparent: string | null;
  /** Makes retries of this request return the spawn the first one made; null: every request spawns. */
  idempotencyKey: string | null;
  /** Seconds the caller will wait in the queue when a concurrency cap is full (0: denied at once); the decision's `wait` bounds it. */
  waitSeconds: number;
}

export interface SessionWishes {
  cwd: string | null;
  env: Record<string, string>;
  model: string | null;
  resumeSessionId: string | null;
  mcpServers: z.infer<typeof mcpServerSchema>[];
}

export function parseSpawnRequest(value: unknown): SpawnRequest {
  const reserved = reservedKeyIssues(value);
  const result = spawnRequestSchema.safeParse(value, { error: errorMap });
  if (!result.success || reserved.length > 0) {
    const issues = [...(result.success ? [] : toIssues(result.error)), ...reserved];
    const lines = issues.map((i) => `  ${i.path}: ${i.message}`).join('\n');
    throw new RequestError(`invalid spawn request (${issues.length} ${issues.length === 1 ? 'problem' : 'problems'}):\n${lines}`, issues);
  }
  const r = result.data;
  const exec = r.execution;
  const execution =
    exec && (exec.backend != null || exec.profile != null || exec.egress != null)
      ? { backend: exec.backend ?? null, profile: exec.profile ?? null, egress: exec.egress ?? null }
      : null;
  const channel = r.caller.channel;
  return {
    runtime: r.runtime ?? 'acp',
    agentId: r.agentId,
    execution,
    task: r.task ?? r.message ?? '',
    label: r.label ?? null,
    session: { cwd: r.cwd ?? null, env: { ...(r.env ?? {}) }, model: r.model ?? null, resumeSessionId: r.resumeSessionId ?? null, mcpServers: [...(r.mcpServers ?? [])] },
    caller: {
      sessionKey: r.caller.sessionKey,
      parentSessionKey: r.caller.parentSessionKey ?? null,
      rootSessionKey: r.caller.rootSessionKey ?? r.caller.parentSessionKey ?? r.caller.sessionKey,
      depth: r.caller.depth ?? 0,
      channel: { id: channel.id, kind: channel.kind, interactive: channel.interactive ?? !NON_INTERACTIVE_KINDS.has(channel.kind.toLowerCase()) },
      user: { id: r.caller.user.id, roles: [...(r.caller.user.roles ?? [])] },
    },
    traceparent: r.traceparent ?? null,
    idempotencyKey: r.idempotencyKey ?? null,
    waitSeconds: r.waitSeconds ?? 0,
  };
}
