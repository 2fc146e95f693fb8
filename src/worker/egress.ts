/**
 * The worker's end of egress "proxy": it has no network but loopback, and the gateway's proxy is a
 * unix socket (src/backends/egress-proxy.ts). Agents speak HTTP(S)_PROXY over TCP, so the worker
 * listens on its own loopback and carries each connection, bytes unchanged, to that socket.
 */
import { connect, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { listen } from '../net.js';

export interface EgressForwarder {
  /** http://127.0.0.1:<port>, for the agent's HTTP(S)_PROXY. */
  readonly url: string;
  close(): Promise<void>;
}

export async function startEgressForwarder(socketPath: string): Promise<EgressForwarder> {
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect({ path: socketPath });
    open.add(client);
    client.once('close', () => {
      open.delete(client);
      upstream.destroy();
    });
    upstream.once('close', () => client.destroy());
    client.once('error', () => upstream.destroy());
    upstream.once('error', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await listen(server, { port: 0, host: '127.0.0.1' });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of open) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * What the agent's environment needs to use the forwarder (Node ≥ 24 honours these only with
 * NODE_USE_ENV_PROXY). Loopback stays direct: it is the worker's own, where agents run services of
 * their own (opencode's ACP mode talks to its server on 127.0.0.1:4096). A model on the gateway
 * host's loopback is reached through the proxy at another 127.x address (Linux routes all of 127/8 to lo).
 */
export function proxyEnvironment(url: string): Record<string, string> {
  const local = 'localhost,127.0.0.1,::1';
  return { HTTP_PROXY: url, HTTPS_PROXY: url, http_proxy: url, https_proxy: url, NO_PROXY: local, no_proxy: local, NODE_USE_ENV_PROXY: '1' };
}
