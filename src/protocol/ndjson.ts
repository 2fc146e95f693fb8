/**
 * Splits an NDJSON byte stream into lines, bounded: a line longer than `maxBytes` (or a final
 * unterminated tail that long) ends the stream with the caller's error, so a peer cannot make the
 * reader buffer without limit. Lines are decoded as UTF-8; a final line without "\n" is yielded too.
 */
export async function* ndjsonLines(stream: AsyncIterable<Buffer>, maxBytes: number, tooLong: () => Error): AsyncGenerator<string> {
  let pending: Buffer = Buffer.alloc(0);
  for await (const chunk of stream) {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    let index: number;
    while ((index = pending.indexOf(0x0a)) !== -1) {
      if (index > maxBytes) throw tooLong();
      yield pending.subarray(0, index).toString('utf8');
      pending = pending.subarray(index + 1);
    }
    if (pending.length > maxBytes) throw tooLong();
  }
  if (pending.length > 0) yield pending.toString('utf8');
}
