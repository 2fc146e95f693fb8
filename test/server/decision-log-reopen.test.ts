/**
 * fileDecisionLog.reopen(), what `spawngate serve` does on SIGHUP: logrotate moves the file, then
 * signals; every line must land in exactly one of the two files, in order.
 * (Here rather than in test/admission/ only because serve is its caller.)
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { fileDecisionLog, memoryDecisionLog, streamDecisionLog } from '../../src/admission/decision-log.js';
import type { DecisionLogEntry } from '../../src/admission/decision-log.js';
import { eventually } from './helpers.js';

function entry(id: string): DecisionLogEntry {
  return {
    labels: { id: 'gw', version: '0' },
    decision_id: id,
    path: 'spawngate/admission/decision',
    input: {},
    result: { allow: false, reasons: [] },
    timestamp: '2026-01-01T00:00:00Z',
    metrics: { timer_rego_query_eval_ns: 1000 },
    stage: 'policy',
    catalog_revision: 'c',
  };
}

function ids(path: string): string[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => (JSON.parse(l) as DecisionLogEntry).decision_id);
}

describe('decision log reopen', () => {
  let dir = '';
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('after a rename, keeps writing to the moved file until reopen(), then starts a fresh file at the path', async () => {
    dir = mkdtempSync(join(tmpdir(), 'sg-dlog-'));
    const path = join(dir, 'decisions.log');
    const errors: Error[] = [];
    const log = fileDecisionLog(path, (err) => errors.push(err));
    log.write(entry('a'));
    // The file is opened asynchronously: it can only be moved once it exists.
    await eventually(() => Promise.resolve(ids(path).length === 1), 20_000, 'the first line');
    renameSync(path, `${path}.1`);
    log.write(entry('b'));
    log.reopen?.();
    log.write(entry('c'));
    await log.close();
    expect(ids(`${path}.1`)).toEqual(['a', 'b']);
    expect(ids(path)).toEqual(['c']);
    expect(errors).toEqual([]);
  });

  it('retries an unwritable path on reopen()', async () => {
    dir = mkdtempSync(join(tmpdir(), 'sg-dlog-'));
    const path = join(dir, 'missing-dir', 'decisions.log');
    const errors: Error[] = [];
    const log = fileDecisionLog(path, (err) => errors.push(err));
    log.write(entry('lost'));
    await eventually(() => Promise.resolve(errors.length > 0), 20_000, 'the open error');
    mkdirSync(join(dir, 'missing-dir'));
    log.reopen?.();
    log.write(entry('kept'));
    await log.close();
    expect(ids(path)).toEqual(['kept']);
  });

  it('is a no-op for stream and memory sinks', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (c: Buffer) => (text += c.toString()));
    const stream = streamDecisionLog(out);
    stream.write(entry('s1'));
    stream.reopen?.();
    stream.write(entry('s2'));
    await stream.close();
    expect(out.writableEnded).toBe(false);
    expect(text.trim().split('\n').map((l) => (JSON.parse(l) as DecisionLogEntry).decision_id)).toEqual(['s1', 's2']);

    const memory = memoryDecisionLog();
    memory.write(entry('m1'));
    memory.reopen?.();
    expect(memory.entries.map((e) => e.decision_id)).toEqual(['m1']);
  });
});
