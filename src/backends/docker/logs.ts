/**
 * Docker multiplexes a non-TTY container's stdout and stderr into frames:
 * [stream (1 = stdout, 2 = stderr), 0, 0, 0, length (uint32 big-endian)] followed by `length` bytes.
 */
export function demuxLogFrames(buffer: Buffer): { stream: 'stdout' | 'stderr'; text: string }[] {
  const frames: { stream: 'stdout' | 'stderr'; text: string }[] = [];
  let offset = 0;
  while (offset + 8 <= buffer.length) {
    const kind = buffer[offset];
    const length = buffer.readUInt32BE(offset + 4);
    const start = offset + 8;
    const end = Math.min(start + length, buffer.length);
    frames.push({ stream: kind === 2 ? 'stderr' : 'stdout', text: buffer.subarray(start, end).toString('utf8') });
    offset = end;
  }
  return frames;
}

/** Log lines in arrival order, stdout and stderr interleaved as the engine stored them. */
export function logLines(buffer: Buffer, tail: number): string[] {
  const byStream: Record<'stdout' | 'stderr', string> = { stdout: '', stderr: '' };
  const lines: string[] = [];
  // A line may span frames of its own stream; frames of the other stream may come in between.
  for (const frame of demuxLogFrames(buffer)) {
    const parts = (byStream[frame.stream] + frame.text).split('\n');
    byStream[frame.stream] = parts.pop() ?? '';
    lines.push(...parts);
  }
  for (const rest of [byStream.stdout, byStream.stderr]) if (rest !== '') lines.push(rest);
  return lines.slice(-tail);
}
