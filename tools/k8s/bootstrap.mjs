// Applies deploy/rbac.yaml to the test control plane (server-side apply, so a
// re-run converges instead of failing on "already exists"), then mints a token
// for the restricted ServiceAccount with the TokenRequest API and writes a
// kubeconfig that authenticates with it. Run by scripts/k8s-up.sh.
//
// node tools/k8s/bootstrap.mjs --admin-kubeconfig P --manifest P --namespace NS
//                              --service-account NAME --out P [--token-seconds N]
// Prints the token's expiration (RFC 3339) on stdout.
import { readFile, rename, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { CoreV1Api, KubeConfig, KubernetesObjectApi, PatchStrategy } from '@kubernetes/client-node';
import { parseAllDocuments, stringify } from 'yaml';

const FIELD_MANAGER = 'spawngate-k8s-up';

const { values: args } = parseArgs({
  options: {
    'admin-kubeconfig': { type: 'string' },
    manifest: { type: 'string' },
    namespace: { type: 'string' },
    'service-account': { type: 'string' },
    out: { type: 'string' },
    'token-seconds': { type: 'string', default: '86400' },
  },
  strict: true,
});
for (const name of ['admin-kubeconfig', 'manifest', 'namespace', 'service-account', 'out']) {
  if (!args[name]) throw new Error(`missing --${name}`);
}
const namespace = args.namespace;
const tokenSeconds = Number(args['token-seconds']);
if (!Number.isInteger(tokenSeconds) || tokenSeconds < 600) {
  throw new Error('--token-seconds must be an integer >= 600 (the apiserver minimum)');
}

/** deploy/rbac.yaml names one namespace; the test plane installs it into another. */
function retarget(obj) {
  if (obj.kind === 'Namespace') {
    obj.metadata.name = namespace;
    return obj;
  }
  if (obj.metadata.namespace !== undefined) obj.metadata.namespace = namespace;
  for (const subject of obj.subjects ?? []) {
    if (subject.kind === 'ServiceAccount') subject.namespace = namespace;
  }
  return obj;
}

const admin = new KubeConfig();
admin.loadFromFile(args['admin-kubeconfig']);

const docs = parseAllDocuments(await readFile(args.manifest, 'utf8'));
const objects = [];
for (const doc of docs) {
  if (doc.errors.length > 0) throw new Error(`${args.manifest}: ${doc.errors[0].message}`);
  const obj = doc.toJS();
  if (obj !== null && obj !== undefined) objects.push(retarget(obj));
}

const objectApi = KubernetesObjectApi.makeApiClient(admin);
// Namespace first so the namespaced objects have somewhere to go.
objects.sort((a, b) => Number(b.kind === 'Namespace') - Number(a.kind === 'Namespace'));
for (const obj of objects) {
  await objectApi.patch(obj, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply);
}

const core = admin.makeApiClient(CoreV1Api);
const tokenRequest = await core.createNamespacedServiceAccountToken({
  name: args['service-account'],
  namespace,
  body: { spec: { expirationSeconds: tokenSeconds, audiences: [] } },
});
const token = tokenRequest.status?.token;
if (!token) throw new Error('TokenRequest returned no token');

const cluster = admin.getCurrentCluster();
if (!cluster) throw new Error(`${args['admin-kubeconfig']}: no current cluster`);
const user = `${args['service-account']}@${namespace}`;
const kubeconfig = {
  apiVersion: 'v1',
  kind: 'Config',
  clusters: [
    {
      name: cluster.name,
      cluster: { server: cluster.server, 'certificate-authority-data': cluster.caData },
    },
  ],
  users: [{ name: user, user: { token } }],
  contexts: [{ name: user, context: { cluster: cluster.name, user, namespace } }],
  'current-context': user,
};
// Written beside and renamed over so a reader never sees half a file.
const tmp = `${args.out}.${process.pid}.tmp`;
await writeFile(tmp, stringify(kubeconfig), { mode: 0o600 });
await rename(tmp, args.out);

process.stdout.write(`${new Date(tokenRequest.status.expirationTimestamp).toISOString()}\n`);
