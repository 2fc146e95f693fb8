import type { BackendConfig } from '../config/index.js';
import type { Backend } from './types.js';

/** Gives the lifecycle a Backend for a configured name; the lifecycle never knows concrete backends. */
export type BackendResolver = (name: string, config: BackendConfig) => Promise<Backend>;

/**
 * The default resolver, at the edge: each concrete backend is imported only when a config first
 * names its type, so the process backend never loads dockerode or @kubernetes/client-node.
 */
export function defaultBackendResolver(defaults: { owner?: string } = {}): BackendResolver {
  const cache = new Map<string, Promise<Backend>>();
  return (name, config) => {
    let backend = cache.get(name);
    if (!backend) {
      backend = instantiate(name, config, defaults);
      cache.set(name, backend);
      backend.catch(() => cache.delete(name));
    }
    return backend;
  };
}

async function instantiate(name: string, config: BackendConfig, _defaults: { owner?: string }): Promise<Backend> {
  switch (config.type) {
    case 'process': {
      const { createProcessBackend, processBackendOptions } = await import('./process/index.js');
      return createProcessBackend(processBackendOptions(name, config));
    }
    case 'container': {
      const { createDockerBackend } = await import('./docker/index.js');
      return createDockerBackend({
        name,
        ...(config.socketPath ? { socketPath: config.socketPath } : {}),
        ...(config.image ? { image: config.image } : {}),
        ...(config.allowedHostPaths ? { allowedHostPaths: config.allowedHostPaths } : {}),
        ...(config.stateDir ? { stateDir: config.stateDir } : {}),
        ...(config.proxy ? { proxy: config.proxy } : {}),
        ...(config.secretsDir ? { secretsDir: config.secretsDir } : {}),
      });
    }
    case 'kubernetes': {
      const { createKubernetesBackend } = await import('./kubernetes/index.js');
      return createKubernetesBackend({
        name,
        namespace: config.namespace,
        ...(config.kubeconfig ? { kubeconfig: config.kubeconfig } : {}),
        ...(config.context ? { context: config.context } : {}),
        ...(config.image ? { image: config.image } : {}),
        ...(config.workerPort ? { workerPort: config.workerPort } : {}),
        ...(config.proxy ? { proxy: config.proxy } : {}),
      });
    }
  }
}
