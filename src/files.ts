import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';

/** Why a bounded read refused: a path that is not a regular file, or more bytes than allowed, or the OS's own error. */
export type BoundedReadFault =
  | { reason: 'not_regular'; kind: string }
  | { reason: 'too_large'; limit: number }
  | { reason: 'unreadable'; errno: string; message: string }
  | { reason: 'idle_timeout'; ms: number };

export class BoundedReadError extends Error {
  readonly fault: BoundedReadFault;
  constructor(fault: BoundedReadFault, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BoundedReadError';
    this.fault = fault;
  }
}

/** The OS's own error, as a fault that keeps its errno. */
function unreadable(cause: unknown): BoundedReadError {
  if (cause instanceof BoundedReadError) return cause;
  const err = cause as NodeJS.ErrnoException;
  return new BoundedReadError({ reason: 'unreadable', errno: err.code ?? 'EIO', message: err.message }, `${err.code ?? 'unreadable'}: ${err.message}`, { cause });
}

/** Throws unless `st` is a regular file: a FIFO could block for ever, a device never end. */
function requireRegular(st: Parameters<typeof fileKind>[0] & { isFile(): boolean }): void {
  if (st.isFile()) return;
  const kind = fileKind(st);
  throw new BoundedReadError({ reason: 'not_regular', kind }, `is ${kind}, not a regular file`);
}

function fileKind(st: { isFIFO(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSocket(): boolean; isDirectory(): boolean }): string {
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  if (st.isDirectory()) return 'a directory';
  return 'not a regular file';
}

/**
 * A whole regular file, at most `limit` bytes. Opened non-blocking, so a FIFO with no writer is
 * refused at once instead of blocking the process for ever, and a device such as /dev/zero is
 * refused before a byte is read; the read stops one byte past the limit even where the size that
 * stat reported was wrong (a file growing under us, /proc).
 */
export async function readBoundedFile(path: string, limit: number): Promise<Buffer> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (cause) {
    throw unreadable(cause);
  }
  try {
    const st = await handle.stat();
    requireRegular(st);
    if (st.size > limit) throw new BoundedReadError({ reason: 'too_large', limit }, `is ${st.size} bytes, more than the ${limit} allowed`);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      // One byte past the limit at most, whatever stat said: a file can grow under us, and /proc files report 0.
      const buf = Buffer.alloc(Math.min(64 * 1024, limit + 1 - total));
      const { bytesRead } = await handle.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      chunks.push(buf.subarray(0, bytesRead));
      total += bytesRead;
      if (total > limit) throw new BoundedReadError({ reason: 'too_large', limit }, `is more than the ${limit} bytes allowed`);
    }
    return Buffer.concat(chunks, total);
  } catch (cause) {
    throw unreadable(cause);
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/**
 * A whole stream (stdin), at most `limit` bytes, failing when no byte arrives for `idleMs` (null: no such bound): a pipe
 * whose writer never writes nor closes must not hang a command for ever.
 */
export async function readBoundedStream(stream: NodeJS.ReadableStream, limit: number, idleMs: number | null): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let timer: NodeJS.Timeout | undefined;
    const finish = (err: Error | null) => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      if (err) {
        stream.pause();
        // Stop holding the event loop open on a stream nobody reads any more.
        (stream as { unref?: () => void }).unref?.();
        reject(err);
      } else resolve(Buffer.concat(chunks));
    };
    const arm = () => {
      clearTimeout(timer);
      if (idleMs === null) return;
      timer = setTimeout(() => finish(new BoundedReadError({ reason: 'idle_timeout', ms: idleMs }, `no data for ${idleMs / 1000} s and no end of input`)), idleMs);
    };
    const onData = (chunk: Buffer | string) => {
      const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk);
      size += b.length;
      if (size > limit) return finish(new BoundedReadError({ reason: 'too_large', limit }, `is more than the ${limit} bytes allowed`));
      chunks.push(b);
      arm();
    };
    const onEnd = () => finish(null);
    const onError = (err: Error) => finish(unreadable(err));
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('error', onError);
    arm();
  });
}

/** Bytes as UTF-8 text, or null where they are not valid UTF-8 (never silently replaced with U+FFFD). */
export function strictUtf8(bytes: Uint8Array): string | null {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

/** readBoundedFile for the few places that must stay synchronous (a secret resolved while a spawn's environment is built). */
export function readBoundedFileSync(path: string, limit: number): Buffer {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (cause) {
    throw unreadable(cause);
  }
  try {
    const st = fstatSync(fd);
    requireRegular(st);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.alloc(Math.min(64 * 1024, limit + 1 - total));
      const bytesRead = readSync(fd, buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      chunks.push(buf.subarray(0, bytesRead));
      total += bytesRead;
      if (total > limit) throw new BoundedReadError({ reason: 'too_large', limit }, `is more than the ${limit} bytes allowed`);
    }
    return Buffer.concat(chunks, total);
  } catch (cause) {
    throw unreadable(cause);
  } finally {
    closeSync(fd);
  }
}
