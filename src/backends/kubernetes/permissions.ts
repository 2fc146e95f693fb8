/**
 * Every API permission the kubernetes backend uses, in its namespace, with the reason. One list
 * for the backend's docs, `spawngate doctor` (a SelfSubjectAccessReview per verb) and the tests;
 * deploy/rbac.yaml grants these.
 */
export interface KubernetesPermission {
  /** API group; "" is the core group. */
  readonly group: string;
  readonly resource: string;
  readonly subresource?: string;
  readonly verb: string;
  readonly why: string;
}

export const KUBERNETES_PERMISSIONS: readonly KubernetesPermission[] = [
  { group: '', resource: 'pods', verb: 'create', why: 'create() makes the worker pod; validate() sends it with dryRun=All, which needs create too' },
  { group: '', resource: 'pods', verb: 'get', why: 'status() and running() read the pod' },
  { group: '', resource: 'pods', verb: 'list', why: 'list(selector): the sweeper finds expired and orphaned workers by label' },
  { group: '', resource: 'pods', verb: 'watch', why: 'running() follows the pod with a watch instead of polling' },
  { group: '', resource: 'pods', verb: 'delete', why: 'delete() and the sweeper remove workers' },
  { group: '', resource: 'pods', verb: 'patch', why: 'claimed(): a warm worker of a pool takes the labels and the shorter activeDeadlineSeconds of the spawn that claims it' },
  { group: '', resource: 'pods', subresource: 'log', verb: 'get', why: 'logs() reads the worker container log' },
  { group: '', resource: 'secrets', verb: 'create', why: 'the per-worker bearer token Secret, made with the pod' },
  { group: '', resource: 'secrets', verb: 'get', why: 'validate() checks that Secrets referenced by a profile exist and hold the key' },
  { group: '', resource: 'secrets', verb: 'list', why: 'the sweeper finds token Secrets whose pod is gone' },
  { group: '', resource: 'secrets', verb: 'delete', why: 'delete() removes the token Secret explicitly (garbage collection may not run)' },
  { group: 'networking.k8s.io', resource: 'networkpolicies', verb: 'create', why: 'egress "none"/"proxy": a NetworkPolicy next to each worker' },
  { group: 'networking.k8s.io', resource: 'networkpolicies', verb: 'get', why: 'running() confirms a none/proxy worker\'s NetworkPolicy exists before handing the worker out' },
  { group: 'networking.k8s.io', resource: 'networkpolicies', verb: 'list', why: 'the sweeper finds NetworkPolicies whose pod is gone' },
  { group: 'networking.k8s.io', resource: 'networkpolicies', verb: 'delete', why: 'delete() removes the NetworkPolicy with its worker' },
];

/** `pods`, `pods/log`, `networkpolicies.networking.k8s.io`: how kubectl and error messages name a resource. */
export function permissionResource(p: Pick<KubernetesPermission, 'group' | 'resource' | 'subresource'>): string {
  const resource = p.subresource ? `${p.resource}/${p.subresource}` : p.resource;
  return p.group ? `${resource}.${p.group}` : resource;
}

/** The Role rule that grants one permission, as YAML (flow style, one line), for fix hints. */
export function roleRuleFor(p: Pick<KubernetesPermission, 'group' | 'resource' | 'subresource' | 'verb'>): string {
  const resource = p.subresource ? `${p.resource}/${p.subresource}` : p.resource;
  return `{ apiGroups: ["${p.group}"], resources: ["${resource}"], verbs: ["${p.verb}"] }`;
}
