/**
 * KUBERNETES_PERMISSIONS is the one list of what the backend needs; the Role in deploy/rbac.yaml
 * and the table in docs/kubernetes.md must say the same. (That the ServiceAccount really holds them
 * on a live API server is doctor.test.ts's job.)
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { KUBERNETES_PERMISSIONS, permissionResource } from '../../src/backends/kubernetes/permissions.js';

const read = (path: string) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8');

interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}

describe('KUBERNETES_PERMISSIONS', () => {
  it('is granted by the Role in deploy/rbac.yaml', () => {
    const role = parseAllDocuments(read('deploy/rbac.yaml'))
      .map((d) => d.toJS() as { kind?: string; rules?: Rule[] })
      .find((d) => d.kind === 'Role');
    const rules = role?.rules ?? [];
    for (const p of KUBERNETES_PERMISSIONS) {
      const resource = p.subresource ? `${p.resource}/${p.subresource}` : p.resource;
      const granted = rules.some((r) => r.apiGroups.includes(p.group) && r.resources.includes(resource) && r.verbs.includes(p.verb));
      expect(granted, `deploy/rbac.yaml grants ${p.verb} ${permissionResource(p)}`).toBe(true);
    }
  });

  it('is the RBAC table of docs/kubernetes.md, row for row', () => {
    const doc = read('docs/kubernetes.md');
    const section = doc.slice(doc.indexOf('## RBAC'), doc.indexOf('## spawngate doctor'));
    const rows = [...section.matchAll(/^\| ([a-z0-9./-]+) \| ([a-z]+) \|/gm)].filter((m) => m[1] !== 'resource').map((m) => `${m[2]} ${m[1]}`);
    expect(rows).toEqual(KUBERNETES_PERMISSIONS.map((p) => `${p.verb} ${permissionResource(p)}`));
  });
});
