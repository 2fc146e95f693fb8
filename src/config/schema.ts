import { z } from 'zod';
import { parseEgressRule } from '../egress-rules.js';

/**
 * The configuration schema: `agents.executionBackends` (where workers may run, with which
 * resources) and `agents.execution` (which backend/profile a spawn gets when it names none).
 *
 * Every object is strict — an unknown key is far more often a typo of a security setting than
 * an intentional extension. Every string, list and map is bounded so that a hostile or broken
 * file fails with a path instead of exhausting memory further down the line.
 *
 * Defaults (egress "none", class "standard", the implicit "default" profile, …) are not written
 * into the parsed config; they are applied by the catalog (src/config/catalog.ts), so a config
 * round-trips as written.
 */

export const LIMITS = {
  name: 63,
  image: 512,
  text: 4096,
  id: 256,
  quantity: 64,
  records: 256,
  list: 256,
} as const;

// ─── syntax ──────────────────────────────────────────────────────────────────────────────────

/** Backend and profile names: usable as Kubernetes label values and never containing "/", which separates them in reservation keys. */
export const NAME_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$/;
export const AGENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const DNS1123_LABEL = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/**
 * Kubernetes resource.Quantity: a non-negative decimal with an optional binary (Ki..Ei), decimal
 * (n, u, m, k, M..E) or exponent suffix. Exponents are capped at two digits so that comparing
 * two quantities exactly stays cheap.
 */
export const QUANTITY_PATTERN = /^(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,2}|[KMGTPE]i|[numkMGTPE])?$/;

const SECRET_WORD_ENDINGS = ['TOKEN', 'SECRET', 'PASSWORD', 'PASSWD', 'PASSPHRASE', 'CREDENTIAL', 'CREDENTIALS', 'APIKEY', 'PRIVATEKEY', 'ACCESSKEY'];
const SECRET_WORDS = new Set(['AUTH', 'COOKIE']);
const KEY_QUALIFIERS = new Set(['API', 'PRIVATE', 'ACCESS', 'SIGNING', 'ENCRYPTION', 'SSH', 'MASTER', 'SECRET', 'CLIENT']);
/** A last word that says the value is about a credential, not the credential (GEMINI_DEFAULT_AUTH_TYPE, API_KEY_FILE, TOKEN_URL). */
const DESCRIPTOR_WORDS = new Set(['TYPE', 'MODE', 'METHOD', 'KIND', 'URL', 'URI', 'ENDPOINT', 'HOST', 'PORT', 'FILE', 'PATH', 'DIR', 'NAME', 'HEADER', 'ENABLED', 'DISABLED']);

/**
 * Whether an environment variable name almost certainly holds a credential (GITHUB_TOKEN,
 * db_password, OPENAI_API_KEY, githubToken). Matched on words rather than substrings so that
 * TOKENIZERS_PARALLELISM, MAX_TOKENS or PWD are not mistaken for secrets.
 */
export function looksLikeSecretName(name: string): boolean {
  const words = name
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .toUpperCase()
    .split(/[^A-Z0-9]+/)
    .filter(Boolean);
  if (words.length > 1 && DESCRIPTOR_WORDS.has(words.at(-1) ?? '')) return false;
  return words.some(
    (word, i) =>
      SECRET_WORDS.has(word) ||
      SECRET_WORD_ENDINGS.some((ending) => word.endsWith(ending)) ||
      (word === 'KEY' && i > 0 && KEY_QUALIFIERS.has(words[i - 1] ?? '')),
  );
}

/** Values that are recognisably credentials whatever the variable is called. */
const SECRET_VALUE_PATTERN =
  /^(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|glpat-[A-Za-z0-9_-]{20,})|-----BEGIN [A-Z ]*PRIVATE KEY-----/;

export const INLINE_SECRET_MESSAGE = 'inline secret values are not allowed; use { secretRef: { name, key } }';

/**
 * JSON Schema metadata: an `id` makes the schema a named $def, a description shows in editors.
 * A registry of our own rather than zod's global one, so importing this module has no effect
 * on anyone else's schemas.
 */
export const configMetadata = z.registry<{ id?: string; description?: string }>();

function text(max: number = LIMITS.text) {
  return z.string().max(max);
}

function nonEmpty(max: number = LIMITS.text) {
  return z.string().min(1).max(max);
}

function boundedRecord<K extends z.ZodType<string, string>, V extends z.ZodType>(key: K, value: V, what: string, max: number = LIMITS.records) {
  return z.record(key, value).check((ctx) => {
    const count = Object.keys(ctx.value).length;
    if (count > max) ctx.issues.push({ code: 'custom', message: `at most ${max} ${what} are allowed (got ${count})`, input: ctx.value });
  });
}

export const nameSchema = z
  .string()
  .max(LIMITS.name)
  .regex(NAME_PATTERN, { message: 'must be 1-63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit' })
  .register(configMetadata, { id: 'Name', description: 'backend or profile name' });

export const agentIdSchema = z
  .string()
  .max(LIMITS.id)
  .regex(AGENT_ID_PATTERN, { message: 'must be letters, digits, ".", "_" or "-", starting with a letter or digit' });

export const absolutePathSchema = z
  .string()
  .max(LIMITS.text)
  .check((ctx) => {
    const v = ctx.value;
    if (!v.startsWith('/')) ctx.issues.push({ code: 'custom', message: 'must be an absolute path', input: v });
    else if (v.includes('\0')) ctx.issues.push({ code: 'custom', message: 'must not contain NUL', input: v });
    else if (v.split('/').includes('..')) ctx.issues.push({ code: 'custom', message: 'must not contain ".." segments', input: v });
  })
  .register(configMetadata, { id: 'AbsolutePath' });

/** A file path as written; relative paths are taken relative to the working directory of the process that loads the config. */
const filePathSchema = nonEmpty().refine((v) => !v.includes('\0'), { message: 'must not contain NUL' });

export const quantitySchema = z
  .string()
  .max(LIMITS.quantity)
  .regex(QUANTITY_PATTERN, { message: 'must be a Kubernetes quantity such as "500m", "2", "0.5", "1Gi", "512Mi" or "1e9"' })
  .register(configMetadata, { id: 'Quantity', description: 'Kubernetes quantity: "500m", "2", "0.5", "1Gi", "512Mi", "1e9"' });

/** Byte quantities: "500m" is legal for Kubernetes but means half a byte, which is never what was meant. */
const byteQuantitySchema = quantitySchema.refine((v) => !/[num]$/.test(v), {
  message: 'a byte quantity ending in "m", "u" or "n" is a fraction of a byte; did you mean "Mi" or "M"?',
}).register(configMetadata, { id: 'ByteQuantity', description: 'Kubernetes quantity of bytes: "1Gi", "512Mi", "1G", "1e9"' });

function isLabelKey(v: string): boolean {
  const slash = v.lastIndexOf('/');
  const prefix = slash >= 0 ? v.slice(0, slash) : null;
  const name = slash >= 0 ? v.slice(slash + 1) : v;
  return (prefix === null || (prefix.length <= 253 && DNS1123_SUBDOMAIN.test(prefix))) && name.length <= 63 && LABEL_NAME.test(name);
}

const LABEL_KEY_MESSAGE = 'must be a Kubernetes label key: an optional DNS subdomain prefix and "/", then 1-63 letters, digits, "-", "_" or "."';

const labelKeySchema = z
  .string()
  .max(LIMITS.name + 1 + 253)
  .refine(isLabelKey, { message: LABEL_KEY_MESSAGE });

const labelValueSchema = z
  .string()
  .max(LIMITS.name)
  .refine((v) => v === '' || LABEL_NAME.test(v), { message: 'must be a Kubernetes label value: up to 63 letters, digits, "-", "_" or "."' });

// ─── profile ─────────────────────────────────────────────────────────────────────────────────

export const egressSchema = z.enum(['none', 'proxy', 'open']);

const resourceListSchema = z.strictObject({
  cpu: quantitySchema.optional(),
  memory: byteQuantitySchema.optional(),
  'ephemeral-storage': byteQuantitySchema.optional(),
});

export const RESOURCE_NAMES = ['cpu', 'memory', 'ephemeral-storage'] as const;

const resourcesSchema = z
  .strictObject({
    requests: resourceListSchema.optional(),
    limits: resourceListSchema.optional(),
    gpu: z.int().min(0).max(1024).optional(),
  })
  // Runs even when a sibling quantity is malformed, so every fault in one file is reported at once.
  .superRefine(
    (value, ctx) => {
      const requests = asRecord(asRecord(value)?.requests);
      const limits = asRecord(asRecord(value)?.limits);
      if (!requests || !limits) return;
      for (const resource of RESOURCE_NAMES) {
        const req = requests[resource];
        const lim = limits[resource];
        if (typeof req !== 'string' || typeof lim !== 'string') continue;
        const cmp = compareQuantities(lim, req);
        if (cmp !== null && cmp < 0) {
          ctx.addIssue({ code: 'custom', path: ['limits', resource], message: `limit ${lim} is less than request ${req}` });
        }
      }
    },
    { when: () => true },
  );

const tolerationSchema = z
  .strictObject({
    // Empty is allowed here: with operator Exists it tolerates every taint.
    key: z
      .string()
      .max(LIMITS.name + 1 + 253)
      .refine((v) => v === '' || isLabelKey(v), { message: LABEL_KEY_MESSAGE })
      .optional(),
    operator: z.enum(['Exists', 'Equal']).optional(),
    value: labelValueSchema.optional(),
    effect: z.enum(['NoSchedule', 'PreferNoSchedule', 'NoExecute']).optional(),
    tolerationSeconds: z.int().min(0).max(31_536_000).optional(),
  })
  .register(configMetadata, { id: 'Toleration', description: 'a Kubernetes toleration' })
  .superRefine((t, ctx) => {
    const operator = t.operator ?? 'Equal';
    if (operator === 'Exists' && t.value !== undefined && t.value !== '') {
      ctx.addIssue({ code: 'custom', path: ['value'], message: 'must be empty when operator is "Exists"' });
    }
    if ((t.key === undefined || t.key === '') && operator !== 'Exists') {
      ctx.addIssue({ code: 'custom', path: ['operator'], message: 'must be "Exists" when key is empty' });
    }
    if (t.tolerationSeconds !== undefined && t.effect !== 'NoExecute') {
      ctx.addIssue({ code: 'custom', path: ['tolerationSeconds'], message: 'is only allowed when effect is "NoExecute"' });
    }
  });

const secretRefSchema = z.strictObject({
  secretRef: z.strictObject({
    name: nonEmpty(253).regex(DNS1123_SUBDOMAIN, { message: 'must be a Kubernetes secret name (DNS-1123 subdomain)' }),
    key: nonEmpty(253)
      .regex(/^[-._A-Za-z0-9]+$/, { message: 'must be letters, digits, "-", "_" or "."' })
      .refine((k) => k !== '.' && k !== '..', { message: 'must not be "." or ".."' }),
  }),
});

const envNameSchema = z
  .string()
  .max(LIMITS.id)
  .regex(ENV_NAME, { message: 'must be an environment variable name: letters, digits and "_", not starting with a digit' })
  .refine((v) => v !== '__proto__', { message: 'is a reserved name' });

const envSchema = boundedRecord(
  envNameSchema,
  z.union([text(), secretRefSchema], { error: 'must be a string or { secretRef: { name, key } }' }),
  'environment variables',
).superRefine(
  (env, ctx) => {
    for (const [name, value] of Object.entries(asRecord(env) ?? {})) {
      if (typeof value !== 'string') continue;
      if (looksLikeSecretName(name)) {
        ctx.addIssue({ code: 'custom', path: [name], message: INLINE_SECRET_MESSAGE });
      } else if (SECRET_VALUE_PATTERN.test(value)) {
        ctx.addIssue({ code: 'custom', path: [name], message: `value looks like a credential; ${INLINE_SECRET_MESSAGE}` });
      }
    }
  },
  { when: () => true },
);

/**
 * What git may clone from. Transports are named explicitly: a `-` could smuggle an option into
 * git's argv, and `ext::` / `fd::` run commands.
 */
export const gitRepoSchema = nonEmpty(2048).check((ctx) => {
  const v = ctx.value;
  const ok =
    /^(https?|ssh|git|file):\/\/[^\s]+$/.test(v) ||
    /^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s:][^\s]*$/.test(v) ||
    (v.startsWith('/') && !/[\0\n\r]/.test(v));
  if (!ok || v.startsWith('-') || /::/.test(v)) ctx.issues.push({ code: 'custom', message: 'must be an https://, http://, ssh://, git:// or file:// URL, user@host:path, or an absolute path', input: v });
});

export const gitRefSchema = nonEmpty(255).check((ctx) => {
  const v = ctx.value;
  if (!/^[A-Za-z0-9][A-Za-z0-9._/@+-]*$/.test(v) || v.includes('..') || v.endsWith('/') || v.endsWith('.lock') || v.includes('@{')) {
    ctx.issues.push({ code: 'custom', message: 'must be a branch, tag or commit name (letters, digits, . _ / - + @; not starting with "-", no "..")', input: v });
  }
});

/** Literal name/value pairs for an MCP server: credentials go in the profile env as { secretRef } (the agent's MCP servers inherit its environment). */
const mcpPairsSchema = boundedRecord(envNameSchema, text(), 'variables').superRefine(
  (pairs, ctx) => {
    for (const [name, value] of Object.entries(asRecord(pairs) ?? {})) {
      if (typeof value !== 'string') continue;
      if (looksLikeSecretName(name) || SECRET_VALUE_PATTERN.test(value)) {
        ctx.addIssue({ code: 'custom', path: [name], message: 'looks like a credential: put it in the profile env as { secretRef } (an MCP server started by the agent inherits the agent\'s environment)' });
      }
    }
  },
  { when: () => true },
);

export const mcpServerSchema = z.union([
  z.strictObject({
    type: z.literal('stdio').optional(),
    name: nonEmpty(LIMITS.id),
    command: nonEmpty(LIMITS.text),
    args: z.array(text()).max(LIMITS.list).optional(),
    env: mcpPairsSchema.optional(),
  }),
  z.strictObject({
    type: z.literal('http'),
    name: nonEmpty(LIMITS.id),
    url: nonEmpty(2048).regex(/^https?:\/\/[^\s]+$/, { message: 'must be an http:// or https:// URL' }),
    headers: boundedRecord(z.string().max(LIMITS.id).regex(/^[A-Za-z0-9-]+$/, { message: 'must be an HTTP header name' }), text(), 'headers')
      .superRefine(
        (headers, ctx) => {
          for (const name of Object.keys(asRecord(headers) ?? {})) {
            if (/^(authorization|cookie|x-api-key)$/i.test(name) || looksLikeSecretName(name)) ctx.addIssue({ code: 'custom', path: [name], message: 'carries a credential: literal credentials are refused in the config' });
          }
        },
        { when: () => true },
      )
      .optional(),
  }),
], { error: 'must be a stdio MCP server { name, command, args?, env? } or { type: "http", name, url, headers? }' });

const workspaceSchema = z.discriminatedUnion('strategy', [
  z.strictObject({ strategy: z.literal('none') }),
  z.strictObject({ strategy: z.literal('ephemeral'), sizeLimit: byteQuantitySchema.optional() }),
  z.strictObject({
    strategy: z.literal('volume'),
    claimName: nonEmpty(253).regex(DNS1123_SUBDOMAIN, { message: 'must be a PersistentVolumeClaim name (DNS-1123 subdomain)' }).optional(),
    sizeLimit: byteQuantitySchema.optional(),
  }),
  z.strictObject({ strategy: z.literal('hostPath'), path: absolutePathSchema }),
  z.strictObject({
    strategy: z.literal('git'),
    repo: gitRepoSchema.register(configMetadata, { description: 'https://, http://, ssh:// or file:// URL, user@host:path, or an absolute path' }),
    ref: gitRefSchema.optional().register(configMetadata, { description: 'branch, tag or commit to check out; default the repository\'s default branch' }),
    depth: z.int().min(1).max(1_000_000).optional().register(configMetadata, { description: 'shallow clone of this many commits; default the whole history' }),
    sizeLimit: byteQuantitySchema.optional(),
  }),
]).register(configMetadata, { id: 'Workspace', description: 'where the worker\'s working directory lives' });

const concurrencyCap = z.int().min(1).max(1_000_000);

/** The most warm workers one pool may keep: each is a running worker that nobody uses yet. */
export const MAX_WARM_POOL = 256;

export const warmPoolSchema = z
  .strictObject({
    agents: z.array(agentIdSchema).min(1).max(16).register(configMetadata, { description: 'the agents kept warm on this profile, each in a pool of its own; a spawn of another agent starts cold' }),
    min: z.int().min(0).max(MAX_WARM_POOL).register(configMetadata, { description: 'ready workers kept waiting per agent; refilled in the background after each claim' }),
    max: z.int().min(1).max(MAX_WARM_POOL).optional().register(configMetadata, { description: 'the most a pool grows to when spawns find it empty; default min' }),
    maxIdleSeconds: z.int().min(10).max(86_400).optional().register(configMetadata, { description: 'a warm worker unclaimed this long is closed (and replaced while the pool is below min); default 600' }),
  })
  .superRefine((pool, ctx) => {
    if (pool.max !== undefined && pool.max < pool.min) ctx.addIssue({ code: 'custom', path: ['max'], message: `must be at least min (${pool.min})` });
    const seen = new Set<string>();
    pool.agents.forEach((agent, i) => {
      if (seen.has(agent)) ctx.addIssue({ code: 'custom', path: ['agents', i], message: `${agent} is listed twice` });
      seen.add(agent);
    });
  })
  .register(configMetadata, {
    id: 'WarmPool',
    description: 'workers started ahead, admitted by the policy as the pool\'s own spawns (channel kind "pool"), and handed to a spawn of the same profile and agent with its own token and deadline',
  });

export const profileSchema = z
  .strictObject({
    class: z.enum(['standard', 'build']).optional().register(configMetadata, { description: '"build" marks the larger profile build/test tasks are moved to; default "standard"' }),
    resources: resourcesSchema.optional(),
    runtimeClassName: nonEmpty(253).regex(DNS1123_SUBDOMAIN, { message: 'must be a DNS-1123 subdomain' }).optional(),
    nodeSelector: boundedRecord(labelKeySchema, labelValueSchema, 'node selector labels', 64).optional(),
    tolerations: z.array(tolerationSchema).max(64).optional(),
    image: nonEmpty(LIMITS.image).optional(),
    command: z.array(text()).max(LIMITS.list).optional(),
    args: z.array(text()).max(LIMITS.list).optional(),
    env: envSchema.optional().register(configMetadata, { description: 'literal values, or { secretRef: { name, key } }; literal values on secret-looking names are rejected' }),
    egress: egressSchema.optional().register(configMetadata, { description: 'default "none": no network at all' }),
    egressAllow: z
      .array(
        nonEmpty(260).refine((v) => parseEgressRule(v) !== null, { message: 'must be host, host:port, *.domain or *.domain:port (IPv6 as [addr]:port)' }),
      )
      .max(LIMITS.list)
      .optional()
      .register(configMetadata, { description: 'egress "proxy" through spawngate\'s own proxy (process and container backends without a proxy of the operator\'s): the only hosts the agent reaches, e.g. ["api.openai.com", "127.0.0.1:8080"]; a host without a port means ports 80 and 443' }),
    workspace: workspaceSchema.optional(),
    timeoutSeconds: z.int().min(1).max(86_400).optional().register(configMetadata, { description: 'hard limit on a worker\'s whole run, readiness included; enforced by the backend itself (process timer, Pod activeDeadlineSeconds)' }),
    ttlSeconds: z.int().min(1).max(604_800).optional().register(configMetadata, { description: 'lifetime after which the worker is closed and swept' }),
    allowedAgents: z.array(agentIdSchema).max(LIMITS.list).optional().register(configMetadata, { description: 'absent: every agent may use this profile' }),
    interactiveOnly: z.boolean().optional(),
    maxConcurrent: z
      .strictObject({
        profile: concurrencyCap.optional(),
        backend: concurrencyCap.optional(),
        channel: concurrencyCap.optional(),
        user: concurrencyCap.optional(),
      })
      .optional(),
    pidsLimit: z.int().min(1).max(4_194_304).optional(),
    warmPool: warmPoolSchema.optional(),
    mcpServers: z
      .array(mcpServerSchema)
      .max(32)
      .optional()
      .register(configMetadata, { description: 'MCP servers passed to the agent\'s ACP session (session/new, load, resume)' }),
    cancelGraceSeconds: z
      .number()
      .min(0)
      .max(600)
      .optional()
      .register(configMetadata, { description: 'how long the agent may take to honour a cancel before the worker ends the turn itself; default 5' }),
    accept: z
      .strictObject({
        cwd: z
          .union([z.boolean(), z.array(absolutePathSchema).min(1).max(LIMITS.list)])
          .optional()
          .register(configMetadata, { description: 'a request\'s cwd: false (default), true, or the directories it must lie under' }),
        env: z
          .array(z.string().max(LIMITS.id).regex(/^[A-Za-z_][A-Za-z0-9_]*\*?$/, { message: 'must be an environment variable name, optionally ending in "*" (a prefix)' }))
          .max(LIMITS.list)
          .optional()
          .register(configMetadata, { description: 'names of request env variables the worker gets (NAME, or PREFIX_*); default none' }),
        model: z.boolean().optional().register(configMetadata, { description: 'pass a request\'s model to the agent; default true' }),
        resumeSessionId: z.boolean().optional().register(configMetadata, { description: 'let a request resume an agent session; default true' }),
        mcpServers: z.boolean().optional().register(configMetadata, { description: 'add a request\'s MCP servers to the profile\'s (a profile server of the same name wins); default false: a stdio server is a command the worker runs' }),
      })
      .optional()
      .register(configMetadata, { description: 'which session wishes of a request (cwd, env, model, resumeSessionId) reach the worker; the rest are dropped and reported' }),
    telemetry: z
      .strictObject({
        traces: z.boolean().optional().register(configMetadata, { description: 'export the worker\'s spans; default true when the gateway exports traces and the worker can reach the collector' }),
        endpoint: nonEmpty(2048)
          .regex(/^https?:\/\/[^\s]+$/, { message: 'must be an http:// or https:// URL' })
          .optional()
          .register(configMetadata, { description: 'OTLP traces endpoint as the worker reaches it (e.g. http://otel-collector.observability:4318/v1/traces); default the gateway\'s own, for egress "open"' }),
        protocol: z.enum(['http/protobuf', 'http/json', 'grpc']).optional().register(configMetadata, { description: 'default the gateway\'s OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf' }),
      })
      .optional()
      .register(configMetadata, { description: 'where the worker sends its OpenTelemetry spans; OTLP headers (credentials) are never passed to workers' }),
  })
  .superRefine((profile, ctx) => {
    const allowed = profile.allowedAgents;
    profile.warmPool?.agents.forEach((agent, i) => {
      if (allowed && !allowed.includes(agent)) ctx.addIssue({ code: 'custom', path: ['warmPool', 'agents', i], message: `${agent} is not in this profile's allowedAgents (${allowed.join(', ')})` });
    });
  })
  .register(configMetadata, { id: 'Profile', description: 'A resource profile; every field is optional' });

// ─── backends ────────────────────────────────────────────────────────────────────────────────

const backendCommon = {
  profiles: boundedRecord(nameSchema, profileSchema, 'profiles').optional(),
  defaultProfile: nameSchema.optional(),
  maxConcurrent: concurrencyCap.optional(),
};

const SECRETS_DIR_DESCRIPTION = 'folder of <secret name>/<key> files where { secretRef } values are looked up first; then the gateway\'s SPAWNGATE_SECRET_<NAME>_<KEY> variables';

const UID_MAX = 4_294_967_294;

const processIsolationSchema = z
  .strictObject({
    user: z
      .enum(['uid', 'none'])
      .optional()
      .register(configMetadata, { description: '"uid" (default): each worker runs under a uid and gid of its own from uidRange, no supplementary groups, which needs the gateway to run as root (or with CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_KILL); "none": workers share the gateway\'s identity and can read its environment, its files and other workers\' state' }),
    uidRange: z
      .strictObject({
        start: z.int().min(1000).max(UID_MAX),
        count: z.int().min(1).max(16_777_216),
      })
      .refine((r) => r.start + r.count - 1 <= UID_MAX, { message: `must end at or below ${UID_MAX}` })
      .optional()
      .register(configMetadata, { description: 'the uids (and gids of the same numbers) leased to workers, one per live worker; default { start: 2000000000, count: 65536 }; uids named in /etc/passwd or /etc/group are skipped' }),
    cgroups: z
      .enum(['auto', 'required', 'off'])
      .optional()
      .register(configMetadata, { description: '"auto" (default): each worker gets cgroups (memory, cpu, pids) where the host lets the gateway make them, and a profile whose limits cannot be enforced is refused; "required": every spawn is refused without all three; "off": no cgroups, profiles with resource limits or pidsLimit are refused' }),
    cgroupParent: nonEmpty(LIMITS.text)
      .regex(/^\/[A-Za-z0-9._@:/-]*$/, { message: 'must be an absolute cgroup path such as /spawngate' })
      .refine((v) => !v.split('/').includes('..'), { message: 'must not contain ".."' })
      .optional()
      .register(configMetadata, { description: 'the cgroup (a path inside each hierarchy) under which workers\' cgroups are made; default the gateway\'s own cgroup + /spawngate' }),
    pidsMax: z.int().min(1).max(4_194_304).optional().register(configMetadata, { description: 'pids.max (processes and threads) of a worker whose profile sets no pidsLimit; default 1024' }),
  })
  .register(configMetadata, { description: 'who process workers run as and what limits them (docs/process-backend.md)' });

export const processBackendSchema = z.strictObject({
  type: z.literal('process'),
  ...backendCommon,
  stateDir: filePathSchema.optional(),
  allowedHostPaths: z.array(absolutePathSchema).max(64).optional().register(configMetadata, { description: 'host folders a profile may use as workspace: { strategy: hostPath }' }),
  secretsDir: absolutePathSchema.optional().register(configMetadata, { description: SECRETS_DIR_DESCRIPTION }),
  isolation: processIsolationSchema.optional(),
});

export const containerBackendSchema = z.strictObject({
  type: z.literal('container'),
  ...backendCommon,
  socketPath: absolutePathSchema.optional(),
  image: nonEmpty(LIMITS.image).optional(),
  allowedHostPaths: z.array(absolutePathSchema).max(64).optional(),
  secretsDir: absolutePathSchema.optional().register(configMetadata, { description: SECRETS_DIR_DESCRIPTION }),
  stateDir: filePathSchema.optional(),
  proxy: z
    .strictObject({
      network: nonEmpty(LIMITS.name).register(configMetadata, { description: 'an --internal Docker network on which the proxy is reachable' }),
      url: nonEmpty(LIMITS.text).regex(/^https?:\/\//, { message: 'must be an http:// or https:// URL' }),
      noProxy: nonEmpty(LIMITS.text).optional(),
    })
    .optional()
    .register(configMetadata, { description: 'egress "proxy": workers join this internal network and get HTTP(S)_PROXY' }),
});

export const kubernetesBackendSchema = z.strictObject({
  type: z.literal('kubernetes'),
  ...backendCommon,
  namespace: z.string().max(63).regex(DNS1123_LABEL, { message: 'must be a Kubernetes namespace name (DNS-1123 label)' }),
  kubeconfig: filePathSchema.optional(),
  context: nonEmpty(253).optional(),
  image: nonEmpty(LIMITS.image).optional().register(configMetadata, { description: 'worker image for profiles that name none' }),
  workerPort: z.int().min(1).max(65_535).optional().register(configMetadata, { description: 'port the worker listens on in the pod; default 8080' }),
  proxy: z
    .strictObject({
      url: nonEmpty(LIMITS.text).regex(/^https?:\/\//, { message: 'must be an http:// or https:// URL' }),
      port: z.int().min(1).max(65_535),
      to: z.union([
        z.strictObject({ podSelector: boundedRecord(labelKeySchema, labelValueSchema, 'labels', 64), namespace: z.string().max(63).regex(DNS1123_LABEL).optional() }),
        z.strictObject({ cidr: nonEmpty(64).regex(/^[0-9a-fA-F:.]+\/\d{1,3}$/, { message: 'must be a CIDR such as 10.0.0.0/8' }) }),
      ]),
      dns: z.boolean().optional(),
      noProxy: nonEmpty(LIMITS.text).optional(),
    })
    .optional()
    .register(configMetadata, { description: 'egress "proxy": the NetworkPolicy allows only this proxy (and DNS); workers get HTTP(S)_PROXY' }),
});

export const backendSchema = z.discriminatedUnion('type', [processBackendSchema, containerBackendSchema, kubernetesBackendSchema]);

/** For "unknown key" messages: keys that are valid, but on another backend type. */
export const TYPE_SPECIFIC_KEYS: Readonly<Record<string, string>> = {
  stateDir: 'process and container',
  socketPath: 'container',
  image: 'container or kubernetes',
  proxy: 'container or kubernetes',
  workerPort: 'kubernetes',
  allowedHostPaths: 'process or container',
  secretsDir: 'process or container',
  isolation: 'process',
  namespace: 'kubernetes',
  kubeconfig: 'kubernetes',
  context: 'kubernetes',
};

// ─── selection ───────────────────────────────────────────────────────────────────────────────

const selectionTarget = {
  backend: nameSchema.optional(),
  profile: nameSchema.optional(),
};

const bindingSchema = z
  .strictObject({
    match: z
      .strictObject({
        channelKind: nonEmpty(LIMITS.id).optional(),
        channelId: nonEmpty(LIMITS.id).optional(),
        userId: nonEmpty(LIMITS.id).optional(),
        role: nonEmpty(LIMITS.id).optional(),
      })
      .refine((m) => Object.values(m).some((v) => v !== undefined), { message: 'needs at least one of channelKind, channelId, userId, role' }),
    ...selectionTarget,
  })
  .refine((b) => b.backend !== undefined || b.profile !== undefined, { message: 'a binding must set backend or profile' });

const agentSelectionSchema = z
  .strictObject(selectionTarget)
  .refine((a) => a.backend !== undefined || a.profile !== undefined, { message: 'must set backend or profile' });

export const executionSchema = z.strictObject({
  default: z.strictObject({ backend: nameSchema, profile: nameSchema.optional() }).optional(),
  agents: boundedRecord(agentIdSchema, agentSelectionSchema, 'agent entries', 1024).optional(),
  bindings: z.array(bindingSchema).max(LIMITS.list).optional().register(configMetadata, { description: 'first match wins' }),
});

// ─── policy data ─────────────────────────────────────────────────────────────────────────────

/**
 * `spawngate.policyData`: a partial override of the bundle's `data.spawngate.admission.config`
 * (policies/data.json), deep-merged onto it by the policy engine at every bundle load: objects
 * merge key by key, arrays, numbers, strings and null replace. Each key has the type and range
 * policies/config.rego accepts, null wherever that means "no cap" / "no bucket" / "any agent";
 * the policy checks the merged document again at load, so a mistake still denies every spawn
 * (policy_config_invalid) rather than relaxing a rule.
 */

/** As spawn requests carry it: never containing "/", which separates kind and user id in a rate bucket's key. */
const channelKindSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, { message: 'must be a channel kind: letters, digits, ".", "_", ":" or "-", starting with a letter or digit' });

const roleNameSchema = nonEmpty(128).regex(/^[^\u0000-\u001f\u007f]+$/, { message: 'must not contain control characters' });

const channelKindListSchema = z.array(channelKindSchema).max(LIMITS.list);
const wordListSchema = z.array(text(LIMITS.id)).max(LIMITS.list);
const capOrNull = z.int().min(0).nullable();
const secondsOrNull = z.int().min(1).nullable();

const rateBucketSchema = z
  .strictObject({
    perMinute: z.number().positive().register(configMetadata, { description: 'tokens added per minute (> 0)' }),
    burst: z.int().min(1).register(configMetadata, { description: 'tokens the bucket holds at most (≥ 1)' }),
  })
  .register(configMetadata, { id: 'RateBucket', description: 'a token bucket: refills perMinute tokens a minute, holds at most burst; both fields are required (a bucket is given whole)' });

const rateBucketsSchema = z
  .strictObject({
    user: rateBucketSchema.nullable().optional().register(configMetadata, { description: 'per user and channel kind (key "<kind>/<userId>"); null: no bucket' }),
    channel: rateBucketSchema.nullable().optional().register(configMetadata, { description: 'per channel id; null: no bucket' }),
  })
  .register(configMetadata, { id: 'RateBuckets', description: 'the user and channel buckets of one group; an absent or null scope has no bucket' });

const permissionSettingsSchema = z
  .strictObject({
    allowKinds: wordListSchema.optional().register(configMetadata, { description: 'ACP tool kinds the agent may be granted (read, edit, delete, move, search, execute, think, fetch, switch_mode, other); replaces the whole list' }),
    pathKinds: wordListSchema.optional().register(configMetadata, { description: 'kinds whose requests must name the paths they touch; replaces the whole list' }),
    grant: z.enum(['once', 'always']).optional().register(configMetadata, { description: 'what an allowed request is granted: allow_once, or allow_always (the agent stops asking for that tool)' }),
  })
  .register(configMetadata, { id: 'PermissionSettings', description: 'how the permission policy answers an agent\'s requests; a request naming a path outside the workspace is always rejected' });

export const policyDataSchema = z
  .strictObject({
    permissions: z
      .strictObject({
        default: permissionSettingsSchema.optional().register(configMetadata, { description: 'the settings every profile starts from' }),
        profiles: boundedRecord(nameSchema, permissionSettingsSchema, 'profiles')
          .optional()
          .register(configMetadata, { description: 'per profile, settings replacing the default ones key by key' }),
      })
      .optional()
      .register(configMetadata, { description: 'the permission policy (policies/permissions.rego) that answers agents\' permission requests during turns' }),
    maxDepth: z.int().min(0).optional().register(configMetadata, { description: 'spawns from a caller at this depth or deeper are denied' }),
    agents: z
      .strictObject({
        allow: z.array(agentIdSchema).max(LIMITS.list).nullable().optional().register(configMetadata, { description: 'global allow-list of agent ids; null: any agent' }),
        deny: z.array(agentIdSchema).max(LIMITS.list).optional().register(configMetadata, { description: 'global deny-list of agent ids, checked after the allow-list' }),
      })
      .optional(),
    channels: z
      .strictObject({
        nonInteractiveKinds: channelKindListSchema.optional().register(configMetadata, { description: 'channel kinds treated as non-interactive even if the caller says interactive (replaces the whole list)' }),
        untrustedKinds: channelKindListSchema.optional().register(configMetadata, { description: 'channel kinds whose workers get egress "none" (replaces the whole list)' }),
      })
      .optional(),
    concurrency: z
      .strictObject({
        total: capOrNull.optional().register(configMetadata, { description: 'workers at once in all; null: no cap, 0 blocks every spawn' }),
        user: capOrNull.optional().register(configMetadata, { description: 'workers at once per user; null: no cap' }),
        channel: capOrNull.optional().register(configMetadata, { description: 'workers at once per channel; null: no cap' }),
        roles: boundedRecord(
          roleNameSchema,
          z.strictObject({ user: capOrNull.optional(), channel: capOrNull.optional() }),
          'roles',
        )
          .optional()
          .register(configMetadata, { description: 'per role, a user/channel cap replacing the global one (the most generous matching role wins; null: no cap)' }),
      })
      .optional(),
    rate: z
      .strictObject({
        interactive: rateBucketsSchema.optional().register(configMetadata, { description: 'default buckets for interactive callers' }),
        nonInteractive: rateBucketsSchema.optional().register(configMetadata, { description: 'default buckets for non-interactive callers' }),
        kinds: boundedRecord(channelKindSchema, rateBucketsSchema, 'channel kinds')
          .optional()
          .register(configMetadata, { description: 'per channel kind; a scope set here (null included) beats the defaults' }),
      })
      .optional(),
    queue: z
      .strictObject({
        maxWaitSeconds: z.int().min(0).max(3600).optional().register(configMetadata, { description: 'longest wait for a concurrency slot an interactive caller may ask for (request waitSeconds); 0: none' }),
        maxWaitNonInteractiveSeconds: z.int().min(0).max(3600).optional().register(configMetadata, { description: 'the same for non-interactive callers (cron, webhook, api, heartbeat)' }),
        priority: z
          .strictObject({ interactive: z.int().min(0).max(255).optional(), nonInteractive: z.int().min(0).max(255).optional() })
          .optional()
          .register(configMetadata, { description: 'a waiter\'s place in the queue by interactivity, 0..255, higher first' }),
        roles: boundedRecord(roleNameSchema, z.int().min(0).max(255), 'roles')
          .optional()
          .register(configMetadata, { description: 'per role, a priority that beats the interactivity one when higher' }),
      })
      .optional()
      .register(configMetadata, { description: 'who may wait for a full concurrency cap instead of being denied, for how long, and in what order (docs/policy.md, "Waiting for a slot")' }),
    pools: z
      .strictObject({
        sharedCaps: z.boolean().optional().register(configMetadata, {
          description: 'count warm workers (the pools\' own spawns) against the total, backend and profile caps the users\' spawns share; default false: only against the pool caller\'s own caps (role spawngate-pool)',
        }),
      })
      .optional()
      .register(configMetadata, { description: 'how the policy counts warm pools\' workers (docs/warm-pools.md)' }),
    trees: z
      .strictObject({
        maxChildren: capOrNull.optional().register(configMetadata, { description: 'live children one session may have at once (fan-out; concurrency scope "parent"); null: no cap' }),
        maxSpawns: capOrNull.optional().register(configMetadata, { description: 'spawns a whole spawn tree (a root session and everything under it) may make while its counts are kept; null: no cap' }),
        maxWorkerSeconds: capOrNull.optional().register(configMetadata, {
          description: 'worker-seconds a spawn tree may use; each spawn is charged its TTL when admitted and refunded what it did not run when it ends; null: no cap',
        }),
        windowSeconds: z.int().min(1).optional().register(configMetadata, { description: "how long a tree's counts outlive its last worker's TTL; a tree idle longer starts afresh" }),
      })
      .optional()
      .register(configMetadata, { description: 'spawn-tree budgets, enforced by the reservation store with the caps (docs/policy.md, "Spawn trees")' }),
    ttl: z
      .strictObject({
        defaultSeconds: z.int().min(1).optional().register(configMetadata, { description: 'worker lifetime when the profile sets none' }),
        maxSeconds: secondsOrNull.optional().register(configMetadata, { description: 'lifetime cap for everyone; null: none' }),
        maxNonInteractiveSeconds: secondsOrNull.optional().register(configMetadata, { description: 'lifetime cap for non-interactive callers; null: none' }),
        maxByKind: boundedRecord(channelKindSchema, secondsOrNull, 'channel kinds')
          .optional()
          .register(configMetadata, { description: 'lifetime cap per channel kind; null: none' }),
      })
      .optional(),
    buildPlacement: z
      .strictObject({
        keywords: wordListSchema.optional().register(configMetadata, { description: 'any of these words in the task makes it build/test work (replaces the whole list)' }),
        phrases: wordListSchema.optional().register(configMetadata, { description: 'words separated by single spaces; any of them in the task, word for word, makes it build/test work (replaces the whole list)' }),
        ignoredWords: wordListSchema.optional().register(configMetadata, { description: 'dropped from the task before anything is looked for (replaces the whole list)' }),
        commands: boundedRecord(text(LIMITS.id), wordListSchema, 'commands')
          .optional()
          .register(configMetadata, { description: 'a command name and its build/test targets' }),
      })
      .optional(),
    decisionLog: z
      .strictObject({
        taskMaxChars: z.int().min(0).max(LIMITS.text).nullable().optional().register(configMetadata, { description: 'a longer task is cut to this many characters in the decision log (masked, with a note of how much was cut); null: kept whole' }),
        eraseToolInput: z.boolean().optional().register(configMetadata, { description: 'leave the tool call\'s rawInput (file contents, scripts) out of permission lines; the paths and kind stay' }),
      })
      .optional()
      .register(configMetadata, { description: 'what the bundle\'s mask rule (policies/log.rego, OPA\'s system.log.mask) takes out of decision-log lines; credential shapes are redacted regardless' }),
  })
  .register(configMetadata, {
    id: 'PolicyData',
    description:
      'Overrides of the policy bundle\'s data (data.spawngate.admission.config), deep-merged onto it at every bundle load: objects merge key by key; lists, numbers and null replace. See docs/policy.md.',
  });

export type PolicyDataOverride = z.infer<typeof policyDataSchema>;

// ─── spawngate ───────────────────────────────────────────────────────────────────────────────

const redisUrlSchema = nonEmpty(2048).check((ctx) => {
  let url: URL;
  try {
    url = new URL(ctx.value);
  } catch {
    ctx.issues.push({ code: 'custom', message: 'must be a URL such as redis://127.0.0.1:6379/0', input: ctx.value });
    return;
  }
  if (!['redis:', 'rediss:', 'unix:'].includes(url.protocol)) {
    ctx.issues.push({ code: 'custom', message: 'must use redis://, rediss:// or unix://', input: ctx.value });
  } else if (url.password !== '') {
    ctx.issues.push({ code: 'custom', message: 'credentials in the URL are not allowed; put the password in an environment variable and name it in passwordEnv', input: ctx.value });
  }
});

const decisionLogHttpSchema = z
  .strictObject({
    // continue: true keeps these issues in the union's report instead of a bare "Invalid input".
    url: nonEmpty(2048).check((ctx) => {
      let url: URL;
      try {
        url = new URL(ctx.value);
      } catch {
        ctx.issues.push({ code: 'custom', message: 'must be an http:// or https:// URL', input: ctx.value, continue: true });
        return;
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') ctx.issues.push({ code: 'custom', message: 'must be an http:// or https:// URL', input: ctx.value, continue: true });
      else if (url.username !== '' || url.password !== '') ctx.issues.push({ code: 'custom', message: 'credentials in the URL are not allowed; send them in a header from a secretRef or an env variable', input: ctx.value, continue: true });
    }),
    headers: boundedRecord(
      z.string().max(LIMITS.id).regex(/^[A-Za-z0-9-]+$/, { message: 'must be an HTTP header name' }),
      z.union([secretRefSchema, z.strictObject({ env: envNameSchema })], { error: 'must be { secretRef: { name, key } } or { env: NAME }: header values are never written in the config' }),
      'headers',
    )
      .optional()
      .register(configMetadata, { description: 'header values from a secret (SPAWNGATE_SECRET_<NAME>_<KEY>) or a named environment variable of the gateway, read at start; e.g. authorization: { env: DECISION_LOG_AUTH }' }),
    maxBufferedEntries: z.int().min(1).max(1_000_000).optional().register(configMetadata, { description: 'lines held while the collector is slow or away (default 10000); when full the oldest is dropped and counted' }),
    maxBatchEntries: z.int().min(1).max(100_000).optional().register(configMetadata, { description: 'lines per POST (default 500); a full batch goes at once' }),
    flushIntervalMs: z.int().min(10).max(3_600_000).optional().register(configMetadata, { description: 'a partial batch is sent after at most this long (default 5000)' }),
    timeoutMs: z.int().min(10).max(600_000).optional().register(configMetadata, { description: 'per upload attempt (default 10000)' }),
    maxAttempts: z.int().min(1).max(100).optional().register(configMetadata, { description: 'attempts per batch, with doubling delays, before it is dropped and counted (default 5)' }),
    gzip: z.boolean().optional().register(configMetadata, { description: 'gzip each batch (Content-Encoding: gzip), as OPA does (default true)' }),
  })
  .register(configMetadata, { id: 'DecisionLogHttp', description: 'POSTs batches of decision-log events as a JSON array, like OPA\'s decision log service; never holds admission up' });

const agentArgvSchema = z.array(nonEmpty()).min(1).max(LIMITS.list);
const agentModelSchema = nonEmpty(LIMITS.name).register(configMetadata, { description: 'the ACP session model this agent starts with (when the agent offers it); a request\'s model wish the profile accepts wins' });
const agentEnvSchema = envSchema.register(configMetadata, {
  description: 'the agent\'s environment (base URL, model, feature switches): literal values, or { secretRef: { name, key } } for keys; literal values on secret-looking names are rejected',
});

const agentOverrideSchema = z
  .strictObject({
    command: agentArgvSchema.optional().register(configMetadata, { description: 'replaces the agent\'s command (e.g. its path inside an image)' }),
    env: agentEnvSchema.optional(),
    model: agentModelSchema.optional(),
  })
  .register(configMetadata, { id: 'AcpAgentOverride', description: 'replaces the agent\'s command and model and adds to (or replaces keys of) its env' });

export const acpAgentSchema = z
  .strictObject({
    command: agentArgvSchema.register(configMetadata, { description: 'argv of the agent\'s ACP mode, e.g. ["qwen", "--acp"]; never put keys here (use env with secretRef)' }),
    env: agentEnvSchema.optional(),
    model: agentModelSchema.optional(),
    backends: boundedRecord(nameSchema, agentOverrideSchema, 'backends')
      .optional()
      .register(configMetadata, { description: 'per backend name: where the agent lives differs (a host path vs. a path in the image)' }),
    profiles: boundedRecord(nameSchema, agentOverrideSchema, 'profiles')
      .optional()
      .register(configMetadata, { description: 'per profile name (on any backend), applied after the backend\'s override' }),
  })
  .register(configMetadata, { id: 'AcpAgent', description: 'how the worker starts one ACP agent over stdio; see docs/agents.md for tested recipes' });

export const spawngateSectionSchema = z.strictObject({
  owner: z
    .string()
    .max(LIMITS.name)
    .regex(NAME_PATTERN, { message: 'must be 1-63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit' })
    .optional()
    .register(configMetadata, { description: 'this gateway\'s id on worker labels; the sweeper treats untracked workers of this owner as orphans' }),
  bundle: filePathSchema.optional().register(configMetadata, { description: 'OPA bundle (directory or .tar.gz) with the admission policy' }),
  decisionLog: z
    .union([filePathSchema, decisionLogHttpSchema], {
      // An object that is not a valid sink: say what is wrong with it, not just that no option fit.
      error: (issue) => {
        const inner = issue.code === 'invalid_union' ? issue.errors[1] : undefined;
        if (typeof issue.input === 'object' && issue.input !== null && inner?.length) return inner.map((i) => `${i.path.join('.') || '(sink)'}: ${i.message}`).join('; ');
        return 'must be a file path, "stdout", "off", or an HTTP sink { url, headers?, ... }';
      },
    })
    .optional()
    .register(configMetadata, { description: 'where decision records (OPA decision-log events, one per decision) go: a file path (JSON lines, reopened on SIGHUP), "stdout", "off", or an HTTP sink; docs/decision-log.md' }),
  stateDir: filePathSchema.optional(),
  sweepIntervalSeconds: z.int().min(1).max(86_400).optional(),
  leaseSeconds: z
    .int()
    .min(2)
    .max(3600)
    .optional()
    .register(configMetadata, { description: 'how long a reservation outlives its last renewal (default 30); a gateway that dies frees its slots after this' }),
  renewSeconds: z
    .int()
    .min(1)
    .max(1800)
    .optional()
    .register(configMetadata, { description: 'lease heartbeat period (default 10); at most half of leaseSeconds' }),
  policyData: policyDataSchema.optional(),
  shadow: z
    .strictObject({
      bundle: filePathSchema.register(configMetadata, { description: 'the candidate OPA bundle (directory or .tar.gz); reloaded when it changes, like the live one' }),
    })
    .optional()
    .register(configMetadata, { description: 'a candidate policy bundle evaluated beside the live one on every admission decision, never deciding: differences counted (spawngate_shadow_decisions_total) and logged (decision-log lines with stage "shadow")' }),
  idempotency: z
    .strictObject({
      windowSeconds: z
        .int()
        .min(1)
        .max(7 * 86_400)
        .optional()
        .register(configMetadata, { description: 'how long a spawn request\'s idempotencyKey returns the spawn it made (default 86400)' }),
      waitSeconds: z
        .int()
        .min(0)
        .max(3600)
        .optional()
        .register(configMetadata, { description: 'how long a retry waits for the first request with its key that is still starting, before IDEMPOTENCY_KEY_IN_PROGRESS (default 120)' }),
    })
    .optional()
    .register(configMetadata, { description: 'spawn requests with an idempotencyKey (or HTTP Idempotency-Key): one worker per key and user, on every gateway sharing the store' }),
  queue: z
    .strictObject({
      maxWaiting: z
        .int()
        .min(1)
        .max(100_000)
        .optional()
        .register(configMetadata, { description: 'spawns that may wait for a concurrency slot at once, across every gateway sharing the store (default 1000); past it a spawn is denied at once' }),
      maxWaitingPerUser: z
        .int()
        .min(1)
        .max(100_000)
        .optional()
        .register(configMetadata, { description: 'how many of them may be one user\'s (default 20): one user\'s flood cannot fill the queue for everyone' }),
      pollMs: z
        .int()
        .min(10)
        .max(10_000)
        .optional()
        .register(configMetadata, { description: 'how often a waiting spawn looks for a slot freed on another gateway (default 200); a slot freed on this gateway wakes it at once' }),
    })
    .optional()
    .register(configMetadata, { description: 'spawns that wait for a full concurrency cap instead of being denied (request waitSeconds, bounded by the policy\'s decision.wait; docs/policy.md, "Waiting for a slot")' }),
  policyEvaluationTimeoutMs: z
    .int()
    .min(1)
    .max(60_000)
    .optional()
    .register(configMetadata, { description: 'deadline of one policy evaluation (admission, permission request, decision-log mask) in ms (default 250); past it the spawn is denied with policy_timeout' }),
  store: z
    .discriminatedUnion('type', [
      z.strictObject({ type: z.literal('memory') }),
      z.strictObject({
        type: z.literal('redis'),
        url: redisUrlSchema,
        passwordEnv: z.string().max(LIMITS.id).regex(ENV_NAME, { message: 'must be an environment variable name' }).optional(),
        keyPrefix: nonEmpty(LIMITS.name)
          .optional()
          .register(configMetadata, { description: 'prefix of every key (default "spawngate:"); gateways that share caps must share it; for Redis Cluster use a hash tag, e.g. "spawngate:{gw}:"' }),
      }),
    ])
    .optional(),
}).check((ctx) => {
  // A heartbeat that is not well inside the lease lets a healthy gateway's leases lapse on one slow renewal.
  const lease = ctx.value.leaseSeconds ?? 30;
  const renew = ctx.value.renewSeconds ?? 10;
  if (renew * 2 > lease) {
    ctx.issues.push({ code: 'custom', path: [ctx.value.renewSeconds === undefined ? 'leaseSeconds' : 'renewSeconds'], message: `renewSeconds (${renew}) must be at most half of leaseSeconds (${lease})`, input: ctx.value });
  }
});

// ─── root ────────────────────────────────────────────────────────────────────────────────────

export const configSchema = z
  .strictObject({
    agents: z.strictObject({
      executionBackends: boundedRecord(nameSchema, backendSchema, 'backends'),
      execution: executionSchema.optional(),
      acp: boundedRecord(agentIdSchema, acpAgentSchema, 'ACP agents', 1024)
        .optional()
        .register(configMetadata, { description: 'how the worker starts each ACP agent over stdio; built-in agents (echo) need no entry' }),
    }),
    spawngate: spawngateSectionSchema.optional(),
  })
  // Cross-references are checked even when other parts of the file are broken, so one run shows every fault.
  .superRefine((value, ctx) => {
    for (const issue of crossCheck(value)) ctx.addIssue({ code: 'custom', path: issue.path, message: issue.message });
  }, { when: () => true });

export type SpawngateConfig = z.infer<typeof configSchema>;
export type BackendConfig = z.infer<typeof backendSchema>;
export type ProcessBackendConfig = z.infer<typeof processBackendSchema>;
export type ContainerBackendConfig = z.infer<typeof containerBackendSchema>;
export type KubernetesBackendConfig = z.infer<typeof kubernetesBackendSchema>;
export type ProfileConfig = z.infer<typeof profileSchema>;
export type ExecutionConfig = z.infer<typeof executionSchema>;
export type SpawngateSection = z.infer<typeof spawngateSectionSchema>;
export type WorkspaceConfig = z.infer<typeof workspaceSchema>;

// ─── cross-field checks ──────────────────────────────────────────────────────────────────────

/** The profile a backend gets when it declares none. */
export const IMPLICIT_PROFILE = 'default';

interface PathIssue {
  path: PropertyKey[];
  message: string;
}

function asRecord(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

function list(names: Iterable<string>): string {
  const all = [...names];
  return all.length ? all.join(', ') : '(none)';
}

/**
 * References between parts of the file. Written against `unknown` because it also runs when
 * the file has other faults; anything malformed here was already reported by the schema.
 */
function crossCheck(root: unknown): PathIssue[] {
  const issues: PathIssue[] = [];
  const agents = asRecord(asRecord(root)?.agents);
  const backends = asRecord(agents?.executionBackends);
  if (!backends) return issues;
  const base = ['agents', 'executionBackends'];

  const profilesOf = new Map<string, Map<string, Record<string, unknown> | undefined>>();
  for (const [name, raw] of Object.entries(backends)) {
    const backend = asRecord(raw);
    const profiles = asRecord(backend?.profiles);
    const names = new Map<string, Record<string, unknown> | undefined>();
    if (profiles && Object.keys(profiles).length > 0) for (const [p, v] of Object.entries(profiles)) names.set(p, asRecord(v));
    else names.set(IMPLICIT_PROFILE, undefined);
    profilesOf.set(name, names);
    if (!backend) continue;

    const def = backend.defaultProfile;
    if (typeof def === 'string' && !names.has(def)) {
      issues.push({ path: [...base, name, 'defaultProfile'], message: `profile "${def}" is not declared in backend "${name}" (declared: ${list(names.keys())})` });
    }

    for (const [profileName, profile] of names) {
      if (!Array.isArray(profile?.egressAllow)) continue;
      const at = [...base, name, 'profiles', profileName, 'egressAllow'];
      if (backend.type === 'kubernetes') issues.push({ path: at, message: 'spawngate\'s own egress proxy serves process and container backends; on Kubernetes egress "proxy" goes through the backend\'s proxy (its NetworkPolicy allows only that)' });
      else if (backend.type === 'container' && backend.proxy !== undefined) issues.push({ path: at, message: 'this backend sends egress "proxy" to its own proxy network (proxy); the allow-list belongs in that proxy' });
    }

    const allowedHostPaths = Array.isArray(backend.allowedHostPaths) ? backend.allowedHostPaths.filter((p): p is string => typeof p === 'string') : [];
    for (const [profileName, profile] of names) {
      const workspace = asRecord(profile?.workspace);
      if (workspace?.strategy !== 'hostPath') continue;
      const at = [...base, name, 'profiles', profileName, 'workspace'];
      if (backend.type !== 'container' && backend.type !== 'process') {
        issues.push({ path: [...at, 'strategy'], message: 'hostPath workspaces are only allowed on process and container backends (Kubernetes: use "volume" with a PersistentVolumeClaim)' });
      } else if (typeof workspace.path === 'string' && !allowedHostPaths.some((prefix) => isPathWithin(workspace.path as string, prefix))) {
        issues.push({
          path: [...at, 'path'],
          message: `${workspace.path} is not under any of the backend's allowedHostPaths (${list(allowedHostPaths)})`,
        });
      }
    }
  }

  const allProfiles = new Set([...profilesOf.values()].flatMap((names) => [...names.keys()]));
  for (const [agentId, rawAgent] of Object.entries(asRecord(agents?.acp) ?? {})) {
    const agent = asRecord(rawAgent);
    for (const backendName of Object.keys(asRecord(agent?.backends) ?? {})) {
      if (!profilesOf.has(backendName)) issues.push({ path: ['agents', 'acp', agentId, 'backends', backendName], message: `unknown backend "${backendName}" (declared: ${list(profilesOf.keys())})` });
    }
    for (const profileName of Object.keys(asRecord(agent?.profiles) ?? {})) {
      if (!allProfiles.has(profileName)) issues.push({ path: ['agents', 'acp', agentId, 'profiles', profileName], message: `no backend declares a profile "${profileName}" (declared: ${list(allProfiles)})` });
    }
  }

  const execution = asRecord(agents?.execution);
  if (!execution) return issues;
  const at = ['agents', 'execution'];

  const checkTarget = (target: Record<string, unknown> | undefined, path: PropertyKey[], agentId?: string): void => {
    if (!target) return;
    const backend = typeof target.backend === 'string' ? target.backend : undefined;
    const profile = typeof target.profile === 'string' ? target.profile : undefined;
    if (backend !== undefined && !profilesOf.has(backend)) {
      issues.push({ path: [...path, 'backend'], message: `unknown backend "${backend}" (declared: ${list(profilesOf.keys())})` });
      return;
    }
    if (profile === undefined) return;
    let declaring: Record<string, unknown> | undefined;
    if (backend !== undefined) {
      const names = profilesOf.get(backend);
      if (!names?.has(profile)) {
        issues.push({ path: [...path, 'profile'], message: `profile "${profile}" is not declared in backend "${backend}" (declared: ${list(names?.keys() ?? [])})` });
        return;
      }
      declaring = names.get(profile);
    } else {
      const holders = [...profilesOf.values()].filter((names) => names.has(profile));
      if (holders.length === 0) {
        issues.push({ path: [...path, 'profile'], message: `profile "${profile}" is not declared by any backend` });
        return;
      }
      // With only a profile name the backend comes from elsewhere; only a unanimous refusal is certain.
      if (agentId !== undefined && holders.every((names) => !allowsAgent(names.get(profile), agentId))) {
        issues.push({ path: [...path, 'profile'], message: `profile "${profile}" does not allow agent "${agentId}" (allowedAgents)` });
      }
      return;
    }
    if (agentId !== undefined && !allowsAgent(declaring, agentId)) {
      issues.push({ path: [...path, 'profile'], message: `profile "${profile}" of backend "${backend}" does not allow agent "${agentId}" (allowedAgents)` });
    }
  };

  const def = asRecord(execution.default);
  checkTarget(def, [...at, 'default']);
  for (const [agentId, target] of Object.entries(asRecord(execution.agents) ?? {})) {
    checkTarget(asRecord(target), [...at, 'agents', agentId], agentId);
  }
  if (Array.isArray(execution.bindings)) {
    execution.bindings.forEach((binding, i) => checkTarget(asRecord(binding), [...at, 'bindings', i]));
  }
  return issues;
}

function allowsAgent(profile: Record<string, unknown> | undefined, agentId: string): boolean {
  const allowed = profile?.allowedAgents;
  return !Array.isArray(allowed) || allowed.includes(agentId);
}

/** Segment-aware: "/data" contains "/data/x" but not "/database". */
export function isPathWithin(path: string, prefix: string): boolean {
  const p = prefix.length > 1 ? prefix.replace(/\/+$/, '') : prefix;
  if (p === '/') return path.startsWith('/');
  return path === p || path.startsWith(`${p}/`);
}

// ─── quantities ──────────────────────────────────────────────────────────────────────────────

const BINARY: Record<string, number> = { Ki: 10, Mi: 20, Gi: 30, Ti: 40, Pi: 50, Ei: 60 };
const DECIMAL: Record<string, number> = { n: -9, u: -6, m: -3, '': 0, k: 3, M: 6, G: 9, T: 12, P: 15, E: 18 };

/** A quantity as an exact fraction `num / den`, or null when it is not a quantity. */
export function parseQuantity(q: string): { num: bigint; den: bigint } | null {
  if (q.length > LIMITS.quantity) return null;
  const m = /^(\d*)(?:\.(\d*))?(.*)$/.exec(q);
  if (!m || !QUANTITY_PATTERN.test(q)) return null;
  const intPart = m[1] ?? '';
  const frac = m[2] ?? '';
  const suffix = m[3] ?? '';
  let num = BigInt(`${intPart}${frac}` || '0');
  let exp10 = -frac.length;
  let pow2 = 0;
  if (suffix in BINARY) pow2 = BINARY[suffix] ?? 0;
  else if (suffix in DECIMAL) exp10 += DECIMAL[suffix] ?? 0;
  else exp10 += Number(suffix.slice(1));
  num *= 2n ** BigInt(pow2);
  if (exp10 >= 0) return { num: num * 10n ** BigInt(exp10), den: 1n };
  return { num, den: 10n ** BigInt(-exp10) };
}

/** Sign of a − b, or null when either is not a quantity. */
export function compareQuantities(a: string, b: string): number | null {
  const x = parseQuantity(a);
  const y = parseQuantity(b);
  if (!x || !y) return null;
  const l = x.num * y.den;
  const r = y.num * x.den;
  return l < r ? -1 : l > r ? 1 : 0;
}
