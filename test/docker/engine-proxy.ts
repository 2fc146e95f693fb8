/**
 * A pass-through for the Docker Engine API on a unix socket of the test's own, so a fault trial
 * knows which engine calls a killed gateway still had in flight. Each HTTP request is forwarded to
 * the real engine socket as it is and the answer piped back; the engine does all the work.
 *
 * What it adds is the one thing the engine does not tell: when a client dies after sending a whole
 * request (kill -9 of `serve` while a container create copies the image on vfs), the engine still
 * carries it out. The proxy keeps such a request going to the end, so `idle()` resolves when the
 * engine has answered every call the dead client had sent — an event, not a guess. A request whose
 * client died before its body was complete is cut upstream too, as the engine would see it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer, request } from 'node:http';

export interface EngineProxy {
  readonly socketPath: string;
  /** Requests forwarded whose answer has not fully come back from the engine. */
  inflight(): number;
  /** Requests whose client went away before the engine answered (the engine carried them on). */
  orphaned(): number;
  /** Resolves once no forwarded request is waiting for the engine (at once when none is). */
  idle(): Promise<void>;
  close(): Promise<void>;
}

export const ENGINE_SOCKET = '/var/run/docker.sock';

export async function startEngineProxy(socketPath: string, upstream = ENGINE_SOCKET): Promise<EngineProxy> {
  let inflight = 0;
  let orphaned = 0;
  let waiters: (() => void)[] = [];
  const settle = () => {
    if (inflight > 0) return;
    const ready = waiters;
    waiters = [];
    for (const w of ready) w();
  };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    inflight++;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      inflight--;
      settle();
    };
    const up = request({ socketPath: upstream, method: req.method, path: req.url, headers: req.headers, agent: false }, (answer) => {
      if (!res.destroyed) res.writeHead(answer.statusCode ?? 502, answer.rawHeaders);
      answer.on('data', (chunk: Buffer) => {
        if (!res.destroyed) res.write(chunk);
      });
      answer.once('end', () => {
        if (!res.destroyed) res.end();
        finish();
      });
      answer.once('error', () => {
        res.destroy();
        finish();
      });
    });
    up.once('error', (err) => {
      if (!res.headersSent && !res.destroyed) res.writeHead(502, { 'content-type': 'application/json' }).end(JSON.stringify({ message: `engine proxy: ${err.message}` }));
      else res.destroy();
      finish();
    });
    req.on('data', (chunk: Buffer) => up.write(chunk));
    req.once('end', () => up.end());
    res.once('close', () => {
      if (finished) return;
      if (!req.complete) {
        // The client died mid-request: the engine would get half a request and drop it.
        up.destroy();
        finish();
      } else {
        // A whole request whose client is gone: the engine carries it out; its answer is drained above.
        orphaned++;
      }
    });
  });
  // Keep-alive sockets of a killed client must not hold close() up.
  server.keepAliveTimeout = 1_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });

  return {
    socketPath,
    inflight: () => inflight,
    orphaned: () => orphaned,
    idle: () => (inflight === 0 ? Promise.resolve() : new Promise<void>((resolve) => waiters.push(resolve))),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
