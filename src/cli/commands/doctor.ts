/**
 * `spawngate doctor`: checks that this config can actually run here, each failure with one concrete
 * fix. For every kubernetes backend: credentials, API server, namespace, a SelfSubjectAccessReview
 * per permission in KUBERNETES_PERMISSIONS, and a server-side dry run of every profile. For a
 * container backend: the Docker Engine answers. For a process backend: under which identity its
 * workers run and whether the gateway can give them one, which cgroup controllers enforce their
 * limits (and what nothing enforces), and the network namespace of egress "none". Always: the
 * policy bundle loads.
 */
import { SHIPPED_BUNDLE } from '../../admission/gate.js';
import { createPolicyEngine } from '../../admission/engine.js';
import { readBundle } from '../../admission/bundle.js';
import type { AllowDecision } from '../../admission/types.js';
import type { BackendConfig, KubernetesBackendConfig, SpawngateConfig } from '../../config/index.js';
import { defaultConfig, loadConfigFile } from '../../config/index.js';
import { isSpawngateError } from '../../errors.js';
import { buildWorkerSpec } from '../../sessions/spec.js';
import type { Command } from '../framework.js';
import { EXIT, str } from '../framework.js';
import { formatTable, jsonLinesOption, outputFormat, outputOption, writeRecord } from '../output.js';

/** "warn": works, but with less isolation than the default (an opt-out, a limit nothing enforces); does not fail the report. */
export type CheckResult = 'ok' | 'warn' | 'fail' | 'skipped';

export interface DoctorCheck {
  check: string;
  /** The configured backend the check is about; null for global checks. */
  backend: string | null;
  result: CheckResult;
  detail: string;
  /** One concrete fix when result is "fail"; null otherwise. */
  fix: string | null;
}

export interface DoctorReport {
  ok: boolean;
  checks: DoctorCheck[];
}

export interface DoctorOptions {
  /** Bundle path; default `spawngate.bundle` from the config, else the shipped bundle. */
  bundle?: string;
  /** Bound on each network call; default 10 s. */
  timeoutMs?: number;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function bounded<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function checkBundle(config: SpawngateConfig, options: DoctorOptions): Promise<DoctorCheck> {
  const path = options.bundle ?? config.spawngate?.bundle ?? SHIPPED_BUNDLE;
  const check = { check: 'policy bundle', backend: null };
  const policyData = config.spawngate?.policyData;
  const engine = await createPolicyEngine({ source: { path }, readBundle, watch: false, ...(policyData ? { policyData } : {}) });
  try {
    if (engine.revision !== null && engine.configProblems.length > 0) {
      return {
        ...check,
        result: 'fail',
        detail: `${path} (revision ${engine.revision}) loads, but its config${policyData ? ' with spawngate.policyData merged in' : ''} is invalid, so every spawn is denied: ${engine.configProblems.join('; ')}`,
        fix: policyData ? 'fix spawngate.policyData (or the bundle\'s data.json) so that the merged config passes policies/config.rego' : 'fix the bundle\'s data.json and rebuild it with `spawngate policy build`',
      };
    }
    if (engine.revision !== null) return { ...check, result: 'ok', detail: `${path} (revision ${engine.revision}${policyData ? ', with spawngate.policyData' : ''})`, fix: null };
    return {
      ...check,
      result: 'fail',
      detail: engine.lastError?.message ?? `${path} did not load`,
      fix: 'rebuild the bundle from policies/ with `spawngate policy build`, or point spawngate.bundle (or --bundle) at a valid bundle',
    };
  } finally {
    engine.close();
  }
}

async function checkDocker(name: string, config: Extract<BackendConfig, { type: 'container' }>, options: Required<DoctorOptions>): Promise<DoctorCheck> {
  const check = { check: `${name}: Docker Engine reachable`, backend: name };
  try {
    const { connectDocker } = await import('../../backends/docker/client.js');
    const docker = await connectDocker({ ...(config.socketPath ? { socketPath: config.socketPath } : {}), timeoutMs: options.timeoutMs });
    const version = (await bounded(docker.version(), options.timeoutMs, 'the Docker Engine')) as { Version?: string; ApiVersion?: string };
    return { ...check, result: 'ok', detail: `Docker Engine ${version.Version ?? 'unknown'} (API ${version.ApiVersion ?? 'unknown'})`, fix: null };
  } catch (err) {
    const missing = isSpawngateError(err) && err.code === 'DEPENDENCY_MISSING';
    return {
      ...check,
      result: 'fail',
      detail: messageOf(err),
      fix: missing
        ? 'npm install dockerode'
        : `start the Docker Engine (scripts/ensure-docker.sh) or set socketPath on backend ${name} (now ${config.socketPath ?? process.env['DOCKER_HOST'] ?? '/var/run/docker.sock'})`,
    };
  }
}

type ProcessBackendConfig = Extract<BackendConfig, { type: 'process' }>;

/**
 * A process backend: the identity its workers get (a uid of their own, or the gateway's), the
 * cgroup controllers that enforce their limits, and the empty network namespace of egress "none",
 * each found out the way the backend does it (the same probes, the same cgroup folders).
 */
async function checkProcessBackend(name: string, config: ProcessBackendConfig): Promise<DoctorCheck[]> {
  const { inspectProcessHost, describeCgroups, probeWorkerNetwork } = await import('../../backends/process/host.js');
  const { processBackendOptions } = await import('../../backends/process/index.js');
  const { UID_MODE_CAPABILITIES } = await import('../../backends/process/identity.js');
  const report = await inspectProcessHost(processBackendOptions(name, config).isolation ?? {});
  const checks: DoctorCheck[] = [];
  const add = (check: string, result: CheckResult, detail: string, fix: string | null = null) => checks.push({ check: `${name}: ${check}`, backend: name, result, detail, fix });
  const notHidden = 'not isolated either way: world-readable host files, other processes\' command lines, the kernel (docs/process-backend.md)';

  const { identity } = report;
  const end = identity.range.start + identity.range.count - 1;
  if (identity.mode === 'none') {
    add('worker identity', 'warn', `isolation.user is "none": workers share the gateway's identity (uid ${identity.uid}); an agent can read the gateway's environment and files and other workers' state and sockets; ${notHidden}`, `remove isolation.user: none from backend ${name} and run the gateway as root (or with ${UID_MODE_CAPABILITIES.join(', ')})`);
  } else if (identity.ok) {
    const how = identity.uid === 0 ? 'root' : `uid ${identity.uid} with ${UID_MODE_CAPABILITIES.join(', ')}`;
    add('worker identity', 'ok', `each worker runs under a uid and gid of its own from ${identity.range.start}–${end}, no supplementary groups, no capabilities, no_new_privs (the gateway runs as ${how}); ${notHidden}`);
  } else {
    add('worker identity', 'fail', `workers must run under uids of their own (isolation.user "uid", the default), but ${identity.reason}: every spawn is refused`, `run the gateway as root, or with ${UID_MODE_CAPABILITIES.join(', ')} (systemd: AmbientCapabilities=); or set isolation.user: none on backend ${name}, and workers share the gateway's identity (an agent can read its environment and files)`);
  }

  const { enforced, unenforced } = describeCgroups(report.cgroups);
  const profiles = Object.entries(config.profiles ?? {});
  const needs: { profile: string; controller: string; field: string }[] = [];
  for (const [profile, p] of profiles) {
    if (p.resources?.limits?.memory) needs.push({ profile, controller: 'memory', field: 'resources.limits.memory' });
    if (p.resources?.limits?.cpu) needs.push({ profile, controller: 'cpu', field: 'resources.limits.cpu' });
    if (p.pidsLimit !== undefined) needs.push({ profile, controller: 'pids', field: 'pidsLimit' });
  }
  const refused = needs.filter((need) => unenforced.some((u) => u.controller === need.controller));
  const version = report.cgroups.host?.version;
  const enforcedText = enforced.length > 0 ? `cgroup v${version}: ${enforced.join(', ')} enforced per worker (pids.max ${report.cgroups.pidsMax} unless a profile sets pidsLimit)` : 'no cgroup controller is usable';
  const unenforcedText = unenforced.map((u) => `${u.controller} not enforced (${u.why})`).join('; ');
  const off = report.cgroups.mode === 'off';
  const detail = off ? 'isolation.cgroups is "off": nothing limits a worker\'s memory, cpu or processes' : [enforcedText, unenforcedText].filter(Boolean).join('; ');
  const cgroupFix = off
    ? `remove isolation.cgroups: off from backend ${name} (the default "auto" uses the host's cgroups)`
    : 'run the gateway as root where /sys/fs/cgroup is writable (a container needs its cgroup delegated, e.g. --cgroupns=private with a writable cgroup2 mount), or set isolation.cgroupParent to a cgroup the gateway may manage';
  if (refused.length > 0) {
    add('resource limits (cgroups)', 'fail', `${detail}; refused: ${refused.map((r) => `profile ${r.profile} (${r.field})`).join(', ')}`, `${cgroupFix}; or remove those limits from the profiles`);
  } else if (report.cgroups.mode === 'required' && unenforced.length > 0) {
    add('resource limits (cgroups)', 'fail', `${detail}; isolation.cgroups is "required": every spawn is refused`, cgroupFix);
  } else if (unenforced.length > 0) {
    add('resource limits (cgroups)', 'warn', `${detail}; a profile that sets such a limit is refused, never run unlimited`, cgroupFix);
  } else {
    add('resource limits (cgroups)', 'ok', detail);
  }

  // A backend without profiles has the implicit default profile, whose egress is "none".
  const needsIsolation = profiles.length === 0 || profiles.some(([, p]) => (p.egress ?? 'none') === 'none');
  if (needsIsolation) {
    const probe = identity.ok ? await probeWorkerNetwork(identity, false) : await (await import('../../backends/process/isolation.js')).probeNetworkIsolation();
    if (probe.ok) add('egress "none" isolation (unshare)', 'ok', 'an empty network namespace can be created');
    else add('egress "none" isolation (unshare)', 'fail', probe.reason, 'install util-linux (unshare) and allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0), or run these profiles on a container backend');
  }
  return checks;
}

/** A WorkerSpec for a profile as a spawn would build it, to dry-run it. */
function probeSpec(name: string, config: KubernetesBackendConfig, profileName: string): ReturnType<typeof buildWorkerSpec> {
  const profile = config.profiles?.[profileName] ?? {};
  const decision: AllowDecision = {
    allow: true,
    backend: name,
    profile: profileName,
    egress: profile.egress ?? 'none',
    ttlSeconds: profile.ttlSeconds ?? 3600,
    limits: { concurrency: [], rate: [] },
    reasons: [],
  };
  return buildWorkerSpec({
    spawnId: `doctor-${Date.now().toString(36)}`,
    owner: 'spawngate-doctor',
    instanceId: 'spawngate-doctor',
    decision,
    backend: config,
    profile,
    agentId: profile.allowedAgents?.[0] ?? 'echo',
    agent: { command: null, env: {}, model: null },
    token: 'doctor-dry-run',
    now: new Date(),
    traceparent: null,
  });
}

function dryRunFix(err: unknown, name: string, namespace: string, profile: string): string {
  if (!isSpawngateError(err)) return `fix profile ${profile} of backend ${name}`;
  const details = err.details as { reason?: string; field?: string | null; statusCode?: number | null; action?: string };
  if (details.reason === 'PodSecurityViolation') return `the namespace ${namespace} enforces a PodSecurity level the worker pod does not meet; label it pod-security.kubernetes.io/enforce=restricted (workers are built for it) and remove the profile fields the message names`;
  if (details.reason === 'NamespaceNotFound') return `create namespace ${namespace} (kubectl apply -f deploy/rbac.yaml does it)`;
  if (details.reason === 'SecretNotFound' || details.reason === 'SecretKeyNotFound') return `create the secret the profile references in namespace ${namespace}: ${err.message.replace(/^profile \S+: /, '')}`;
  if (details.reason === 'AdmissionRefused') return `change profile ${profile} of backend ${name}, or give the cluster what the admission message asks for (e.g. the RuntimeClass it names)`;
  if (details.statusCode === 403) return `grant the permission (see the "can …" checks above): ${details.action ?? 'create'} in namespace ${namespace}`;
  if (details.field) return `fix agents.executionBackends.${name}.profiles.${profile}: the API server rejects ${details.field}`;
  return `fix agents.executionBackends.${name}.profiles.${profile}`;
}

async function checkKubernetes(name: string, config: KubernetesBackendConfig, options: Required<DoctorOptions>): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const { namespace } = config;
  const add = (check: string, result: CheckResult, detail: string, fix: string | null = null) => {
    checks.push({ check: `${name}: ${check}`, backend: name, result, detail, fix });
  };
  const { connectKubernetes, apiStatus } = await import('../../backends/kubernetes/client.js');
  const { KUBERNETES_PERMISSIONS, permissionResource, roleRuleFor } = await import('../../backends/kubernetes/permissions.js');

  let clients: Awaited<ReturnType<typeof connectKubernetes>>;
  try {
    clients = await connectKubernetes({ ...(config.kubeconfig ? { kubeconfig: config.kubeconfig } : {}), ...(config.context ? { context: config.context } : {}) });
    add('credentials', 'ok', clients.source);
  } catch (err) {
    const missing = isSpawngateError(err) && err.code === 'DEPENDENCY_MISSING';
    add('credentials', 'fail', messageOf(err), missing ? 'npm install @kubernetes/client-node' : `set kubeconfig (and context) on backend ${name}, or KUBECONFIG, or run spawngate in-cluster with a service account`);
    add('API server reachable', 'skipped', 'no credentials');
    return checks;
  }

  try {
    const version = await bounded(clients.version.getCode(), options.timeoutMs, `the API server at ${clients.server}`);
    add('API server reachable', 'ok', `Kubernetes ${version.gitVersion} at ${clients.server}`);
  } catch (err) {
    const status = apiStatus(err);
    const fix =
      status?.statusCode === 401
        ? `the credentials in ${clients.source} are rejected (expired token?); mint a new ServiceAccount token`
        : `make ${clients.server} reachable from here (is the API server up? is this the right context?)`;
    add('API server reachable', 'fail', status ? `HTTP ${status.statusCode}: ${status.message ?? status.reason ?? ''}` : messageOf(err), fix);
    return checks;
  }

  // Namespaces are cluster-scoped and the Role of deploy/rbac.yaml grants nothing on them; when a
  // read is refused, a dry-run create of a Secret (which the Role does grant) answers 404 for a missing namespace.
  try {
    let exists: boolean;
    try {
      await clients.core.readNamespace({ name: namespace });
      exists = true;
    } catch (err) {
      const status = apiStatus(err);
      if (status?.statusCode === 404) exists = false;
      else if (status?.statusCode === 403) {
        exists = await clients.core
          .createNamespacedSecret({ namespace, dryRun: 'All', body: { metadata: { generateName: 'spawngate-doctor-' }, stringData: { probe: 'x' } } })
          .then(
            () => true,
            (probeErr: unknown) => {
              const probe = apiStatus(probeErr);
              if (probe?.statusCode === 404 && probe.kind === 'namespaces') return false;
              // Refused for another reason: the namespace exists, the permission checks below say what is missing.
              if (probe?.statusCode === 403) return true;
              throw probeErr;
            },
          );
      } else throw err;
    }
    if (exists) add(`namespace ${namespace}`, 'ok', 'exists');
    else add(`namespace ${namespace}`, 'fail', `namespace ${namespace} does not exist`, `create it: kubectl apply -f deploy/rbac.yaml (with the namespace set to ${namespace})`);
  } catch (err) {
    add(`namespace ${namespace}`, 'fail', messageOf(err), `check that the credentials can reach namespace ${namespace}`);
  }

  for (const permission of KUBERNETES_PERMISSIONS) {
    const what = `${permission.verb} ${permissionResource(permission)}`;
    try {
      const review = await bounded(
        clients.authorization.createSelfSubjectAccessReview({
          body: {
            spec: {
              resourceAttributes: {
                namespace,
                verb: permission.verb,
                group: permission.group,
                resource: permission.resource,
                ...(permission.subresource ? { subresource: permission.subresource } : {}),
              },
            },
          },
        }),
        options.timeoutMs,
        'SelfSubjectAccessReview',
      );
      if (review.status?.allowed) add(`can ${what}`, 'ok', permission.why);
      else {
        add(`can ${what}`, 'fail', `not allowed in namespace ${namespace}${review.status?.reason ? ` (${review.status.reason})` : ''}; needed because ${permission.why}`, `add this rule to the Role bound to spawngate's account in namespace ${namespace}: ${roleRuleFor(permission)}`);
      }
    } catch (err) {
      add(`can ${what}`, 'fail', messageOf(err), 'SelfSubjectAccessReview must be allowed (it is, for every authenticated user, by the default system:basic-user ClusterRole)');
    }
  }

  const { createKubernetesBackend } = await import('../../backends/kubernetes/index.js');
  const backend = createKubernetesBackend({
    name,
    namespace,
    ...(config.kubeconfig ? { kubeconfig: config.kubeconfig } : {}),
    ...(config.context ? { context: config.context } : {}),
  });
  try {
    const profiles = Object.keys(config.profiles ?? {});
    for (const profile of profiles.length > 0 ? profiles : ['default']) {
      try {
        await bounded(backend.validate(probeSpec(name, config, profile)), options.timeoutMs, 'the dry run');
        add(`profile ${profile} (dry run)`, 'ok', `the API server admits its pod in namespace ${namespace}`);
      } catch (err) {
        add(`profile ${profile} (dry run)`, 'fail', messageOf(err), dryRunFix(err, name, namespace, profile));
      }
    }
  } finally {
    await backend.close?.();
  }
  return checks;
}

export async function runDoctor(config: SpawngateConfig, options: DoctorOptions = {}): Promise<DoctorReport> {
  const resolved: Required<DoctorOptions> = { bundle: options.bundle ?? config.spawngate?.bundle ?? SHIPPED_BUNDLE, timeoutMs: options.timeoutMs ?? 10_000 };
  const checks: DoctorCheck[] = [await checkBundle(config, resolved)];
  for (const [name, backend] of Object.entries(config.agents.executionBackends)) {
    if (backend.type === 'kubernetes') checks.push(...(await checkKubernetes(name, backend, resolved)));
    else if (backend.type === 'container') checks.push(await checkDocker(name, backend, resolved));
    else checks.push(...(await checkProcessBackend(name, backend)));
  }
  return { ok: checks.every((c) => c.result !== 'fail'), checks };
}

export function formatDoctorTable(report: DoctorReport): string {
  const rows = report.checks.map((c) => [c.check, c.result === 'fail' ? 'FAIL' : c.result === 'warn' ? 'WARN' : c.result, c.result === 'fail' ? (c.fix ?? '') : c.detail]);
  const header = ['CHECK', 'RESULT', 'FIX / DETAIL'];
  const width = (i: number) => Math.max(header[i]?.length ?? 0, ...rows.map((r) => r[i]?.length ?? 0));
  const [w0, w1] = [Math.min(width(0), 60), width(1)];
  const line = (r: string[]) => `${(r[0] ?? '').padEnd(w0)}  ${(r[1] ?? '').padEnd(w1)}  ${r[2] ?? ''}`.trimEnd();
  const out = [line(header), ...rows.map(line)];
  const failures = report.checks.filter((c) => c.result === 'fail');
  if (failures.length) {
    out.push('', `${failures.length} check(s) failed:`);
    for (const f of failures) out.push(`  ${f.check}: ${f.detail}`);
  } else {
    const warnings = report.checks.filter((c) => c.result === 'warn').length;
    out.push('', warnings > 0 ? `all checks passed, ${warnings} with a warning (WARN: works, with less isolation than the default)` : 'all checks passed');
  }
  return `${out.join('\n')}\n`;
}

export const doctorCommand: Command = {
  name: 'doctor',
  summary: 'Check that the config can run here: cluster access and RBAC, profile dry runs, Docker, process workers\' identity and limits, the policy bundle.',
  usage: 'spawngate doctor [--config FILE] [--bundle FILE] [-o json|yaml|wide | --json]',
  options: {
    config: { type: 'string', short: 'c', value: 'FILE', description: 'Config (JSON or YAML) whose backends and profiles are checked.', default: 'the embedded default: process backend "local"' },
    bundle: { type: 'string', value: 'FILE', description: 'Policy bundle (.tar.gz) to check.', default: 'spawngate.bundle of --config, else the shipped bundle' },
    output: outputOption(['json', 'yaml', 'wide'], 'a table: the fix of each failure, the detail of each pass'),
    json: jsonLinesOption('Print the report {"ok":…,"checks":[…]} as one compact JSON line.'),
  },
  notes: [
    'Each network call is bounded by 10 s. Exit status: 0 every check passed, 1 a check failed, 2 usage error (unreadable or invalid config).',
    'A WARN (e.g. a process backend whose workers share the gateway\'s identity, isolation.user: none) does not fail the report.',
  ],
  examples: [
    { description: 'Can this machine run the gateway\'s config? One fix per failure', command: 'spawngate doctor -c /etc/spawngate/gw.yaml' },
    { description: 'Both the detail and the fix of every check', command: 'spawngate doctor -c gw.yaml -o wide' },
    { description: 'The failed checks only, for a ticket', command: 'spawngate doctor -c gw.yaml -o json | jq \'.checks[] | select(.result == "fail")\'' },
  ],
  async run({ values, io }) {
    const format = outputFormat(values);
    const file = str(values, 'config');
    const bundle = str(values, 'bundle');
    const config = file ? await loadConfigFile(file) : defaultConfig();
    const report = await runDoctor(config, bundle ? { bundle } : {});
    writeRecord(io, format, report, () =>
      format === 'wide'
        ? formatTable(
            ['CHECK', 'RESULT', 'DETAIL', 'FIX'],
            report.checks.map((c) => [c.check, c.result === 'fail' ? 'FAIL' : c.result === 'warn' ? 'WARN' : c.result, c.detail, c.fix ?? '-']),
          )
        : formatDoctorTable(report),
    );
    return report.ok ? EXIT.ok : EXIT.failed;
  },
};
