/**
 * /healthz follows the policy engine's state, and the server's own request metrics, on a real
 * server in front of a real gate whose bundle file is replaced under it.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFile, cp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SHIPPED_BUNDLE } from '../../src/admission/gate.js';
import { buildBundle } from '../../src/cli/policy-tool.js';
import { createServer, type RunningServer } from '../../src/server/index.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import { memoryLogger } from '../helpers/logger.js';
import { call, processBackend, spawnRequest, type Target } from './helpers.js';

const flakyDir = fileURLToPath(new URL('../fixtures/policies/flaky', import.meta.url));
const policiesDir = fileURLToPath(new URL('../../policies', import.meta.url));
const token = randomBytes(24).toString('base64url');

/** The value of one exposition line, by its exact labels; 0 when the series is absent. */
async function series(target: Target, name: string, labels: string): Promise<number> {
  const text = (await call(target, 'GET', '/metrics')).text;
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

describe('/healthz and request metrics', () => {
  const backend = processBackend();
  const live = join(backend.stateDir, 'bundle.tar.gz');
  const flaky = join(backend.stateDir, 'flaky.tar.gz');
  const brokenConfig = join(backend.stateDir, 'broken-config.tar.gz');
  let gate: Spawngate;
  let server: RunningServer;
  let target: Target;

  beforeAll(async () => {
    await copyFile(SHIPPED_BUNDLE, live);
    await buildBundle({ policiesDir: flakyDir, outFile: flaky });
    // The shipped policies with a config key missing.
    const src = join(backend.stateDir, 'broken-config');
    await cp(policiesDir, src, { recursive: true, filter: (from) => !from.endsWith('_test.rego') });
    const data = JSON.parse(await readFile(join(src, 'data.json'), 'utf8')) as { spawngate: { admission: { config: Record<string, unknown> } } };
    delete data.spawngate.admission.config['maxDepth'];
    await writeFile(join(src, 'data.json'), JSON.stringify(data));
    await buildBundle({ policiesDir: src, outFile: brokenConfig });
    gate = await createSpawngate({ config: backend.config, bundle: live, owner: `hz-${randomUUID().slice(0, 8)}`, sweepIntervalMs: 0, decisionLog: false, watchBundle: false, logger: memoryLogger() });
    server = await createServer({ gate, token, listen: { port: 0, host: '127.0.0.1' } });
    target = server.address;
  });

  afterAll(async () => {
    await server?.close();
    await gate?.shutdown();
    backend.remove();
  });

  it('is ok; degraded but in rotation after a rejected reload or an evaluation that decided nothing; out of rotation while the bundle in force denies everything', async () => {
    const shipped = gate.policy.revision;
    expect(await call(target, 'GET', '/healthz')).toMatchObject({ status: 200, json: { status: 'ok', bundleRevision: shipped } });
    expect(await series(target, 'spawngate_bundle_reloads_total', 'result="success"')).toBe(1);
    expect(await series(target, 'spawngate_policy_state', 'state="ok"')).toBe(1);

    // A broken bundle: rejected, the shipped one keeps deciding.
    await writeFile(live, 'garbage');
    expect(await gate.policy.reload()).toMatchObject({ ok: false });
    const stale = await call(target, 'GET', '/healthz');
    expect(stale).toMatchObject({ status: 200, json: { status: 'degraded', policy: 'stale', bundleRevision: shipped } });
    expect(String((stale.json as { problems: string[] }).problems[0])).toContain('rejected');
    expect(await series(target, 'spawngate_bundle_reloads_total', 'result="failure"')).toBe(1);
    expect(await series(target, 'spawngate_policy_state', 'state="stale"')).toBe(1);
    expect(await series(target, 'spawngate_policy_bundle_info', `revision="${shipped}"`)).toBe(1);

    // A bundle that loads but answers one agent with no valid decision.
    await copyFile(flaky, live);
    expect(await gate.policy.reload()).toMatchObject({ ok: true });
    const flakyRevision = gate.policy.revision;
    expect(flakyRevision).not.toBe(shipped);
    expect(await call(target, 'GET', '/healthz')).toMatchObject({ status: 200, json: { status: 'ok', bundleRevision: flakyRevision } });
    // Only the bundle in force has an info series.
    expect(await series(target, 'spawngate_policy_bundle_info', `revision="${shipped}"`)).toBe(0);
    expect(await series(target, 'spawngate_policy_bundle_info', `revision="${flakyRevision}"`)).toBe(1);

    // A subagent: the gate's own agent_unknown check (ACP only) stays out of the way of the policy's answer.
    const weird = await call(target, 'POST', '/v1/admit', { token, body: spawnRequest('x', { agentId: 'weird', runtime: 'subagent' }) });
    expect(weird.json).toMatchObject({ decision: { allow: false, reasons: [{ code: 'policy_output_invalid' }] } });
    // One caller's input tripped it: degraded, but still in rotation (a 503 here would be a switch any caller could flip).
    const erroring = await call(target, 'GET', '/healthz');
    expect(erroring).toMatchObject({ status: 200, json: { status: 'degraded', policy: 'erroring', bundleRevision: flakyRevision } });
    expect(String((erroring.json as { problems: string[] }).problems[0])).toMatch(/^policy_output_invalid: /);
    expect(await series(target, 'spawngate_policy_state', 'state="erroring"')).toBe(1);

    // The next evaluation that decides clears it.
    const echo = await call(target, 'POST', '/v1/admit', { token, body: spawnRequest('x', { agentId: 'echo' }) });
    expect(echo.json).toMatchObject({ decision: { allow: true } });
    expect(await call(target, 'GET', '/healthz')).toMatchObject({ status: 200, json: { status: 'ok' } });
    expect(await series(target, 'spawngate_bundle_reloads_total', 'result="success"')).toBe(2);

    // A bundle whose config is invalid loads, and denies every spawn: out of rotation.
    await copyFile(brokenConfig, live);
    expect(await gate.policy.reload()).toMatchObject({ ok: true });
    const failing = await call(target, 'GET', '/healthz');
    expect(failing).toMatchObject({ status: 503, json: { status: 'degraded', policy: 'failing', problems: ['policy_config_invalid: policy configuration is invalid: maxDepth is missing'] } });
    expect(await series(target, 'spawngate_policy_state', 'state="failing"')).toBe(1);
  });

  it('counts requests by method, route template and status; paths nobody routes share one label', async () => {
    const read = (labels: string) => series(target, 'spawngate_http_requests_total', labels);
    const before = {
      admit: await read('method="POST",route="/v1/admit",code="200"'),
      unauthorized: await read('method="POST",route="/v1/admit",code="401"'),
      status404: await read('method="GET",route="/v1/spawns/{id}",code="404"'),
      unmatched: await read('method="GET",route="unmatched",code="404"'),
    };
    await call(target, 'POST', '/v1/admit', { token, body: spawnRequest('x', { agentId: 'echo' }) });
    await call(target, 'POST', '/v1/admit', { body: spawnRequest('x', { agentId: 'echo' }) });
    for (let i = 0; i < 3; i++) expect((await call(target, 'GET', `/v1/spawns/${randomUUID()}`, { token })).status).toBe(404);
    for (let i = 0; i < 2; i++) expect((await call(target, 'GET', `/v1/made-up-${randomUUID()}`, { token })).status).toBe(404);
    expect(await read('method="POST",route="/v1/admit",code="200"')).toBe(before.admit + 1);
    expect(await read('method="POST",route="/v1/admit",code="401"')).toBe(before.unauthorized + 1);
    expect(await read('method="GET",route="/v1/spawns/{id}",code="404"')).toBe(before.status404 + 3);
    expect(await read('method="GET",route="unmatched",code="404"')).toBe(before.unmatched + 2);
    const text = (await call(target, 'GET', '/metrics')).text;
    expect(text).not.toContain('made-up-');
    expect(await series(target, 'spawngate_http_request_duration_seconds_count', 'method="GET",route="/v1/spawns/{id}"')).toBeGreaterThanOrEqual(3);
  });
});
