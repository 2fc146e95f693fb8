/**
 * Uploads 50 MB bodies with node:http from a process of its own (run with `node`, types stripped),
 * so that, unlike a client in the server's own event loop, its writes race the server's close as a
 * real caller's do. Argument: JSON `{url, path, headers, count, sequential?, drain?}`. Prints a
 * JSON array: each upload's status, or `lost:<errno>` when it failed before any response arrived.
 */
import { request } from 'node:http';

interface Plan {
  url: string;
  path: string;
  headers: Record<string, string>;
  count: number;
  sequential?: boolean;
  /** Written 64 KiB at a time, each after 'drain' (as a piped file goes), instead of in one end(). */
  drain?: boolean;
}

const plan = JSON.parse(process.argv[2] ?? '{}') as Plan;
const body = Buffer.alloc(50 * 1024 * 1024, 0x20);
const { hostname, port } = new URL(plan.url);

function one(): Promise<number | string> {
  return new Promise((resolve) => {
    const headers = { ...plan.headers, 'content-length': body.length };
    const req = request({ hostname, port, method: 'POST', path: plan.path, headers, agent: false }, (res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      req.destroy();
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve(`lost:${err.code ?? err.message}`));
    if (!plan.drain) {
      req.end(body);
      return;
    }
    let at = 0;
    const write = (): void => {
      while (at < body.length) {
        const chunk = body.subarray(at, at + 64 * 1024);
        at += chunk.length;
        if (!req.write(chunk)) {
          req.once('drain', write);
          return;
        }
      }
      req.end();
    };
    write();
  });
}

const results: (number | string)[] = [];
if (plan.sequential) for (let i = 0; i < plan.count; i++) results.push(await one());
else results.push(...(await Promise.all(Array.from({ length: plan.count }, one))));
process.stdout.write(`${JSON.stringify(results)}\n`);
