/**
 * How commands print what they found, the same way everywhere: a table or text for people;
 * `-o json` (one JSON document, indented), `-o yaml` and `-o wide` (more columns) as in kubectl;
 * `--json`, one compact JSON object per line, for programs that read records as a stream.
 */
import { stringify } from 'yaml';
import { UsageError } from '../errors.js';
import type { Io, OptionSpec } from './framework.js';
import { str } from './framework.js';

export type OutputChoice = 'json' | 'yaml' | 'wide' | 'name';
/** `text`: the command's own table or lines; `jsonl`: --json. */
export type OutputFormat = OutputChoice | 'text' | 'jsonl';

const CHOICE_TEXT: Record<OutputChoice, string> = {
  json: 'json one JSON document',
  yaml: 'yaml the same as YAML',
  wide: 'wide a table with more columns',
  name: 'name only the spawn ids, one per line',
};

/** `-o/--output FORMAT` limited to what the command can print; `what` is its default output in words. */
export function outputOption(choices: readonly OutputChoice[], what = 'a table'): OptionSpec {
  return {
    type: 'string',
    short: 'o',
    value: choices.join('|'),
    choices,
    default: what,
    description: `Output format: ${choices.map((c) => CHOICE_TEXT[c]).join(', ')}.`,
  };
}

/** `--json`, kept for scripts written against it: compact JSON, one object per line. */
export function jsonLinesOption(description = 'Print the result as one compact JSON object on one line (JSON lines), for scripts; -o json prints the same as an indented document.'): OptionSpec {
  return { type: 'boolean', description };
}

export function outputFormat(values: Record<string, unknown>): OutputFormat {
  const output = str(values, 'output');
  if (output !== undefined && values['json'] === true) {
    throw new UsageError(`--json and --output ${output} cannot be combined: --json prints JSON lines, -o json one JSON document`);
  }
  if (values['json'] === true) return 'jsonl';
  return (output as OutputChoice | undefined) ?? 'text';
}

export function documentText(format: 'json' | 'yaml', doc: unknown): string {
  return format === 'json' ? `${JSON.stringify(doc, null, 2)}\n` : stringify(doc, { lineWidth: 0 });
}

/**
 * Prints one record (a status, a decision, a report) as the format asks; `text` renders it for people.
 */
export function writeRecord(io: Io, format: OutputFormat, record: unknown, text: () => string): void {
  if (format === 'jsonl') io.stdout.write(`${JSON.stringify(record)}\n`);
  else if (format === 'json' || format === 'yaml') io.stdout.write(documentText(format, record));
  else io.stdout.write(text());
}

/** Columns padded to their widest cell, three spaces apart, the last one not padded (kubectl's layout). */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('   ')
      .trimEnd();
  return `${[header, ...rows].map(line).join('\n')}\n`;
}

/** 42s, 5m3s, 2h10m, 3d4h: a duration as kubectl prints ages. */
export function humanDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m}m${s % 60}s` : `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 ? `${h}h${m % 60}m` : `${h}h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d}d${h % 24}h` : `${d}d`;
}

/**
 * A worker log line as a JSON line: a line the worker already logged as a JSON object is passed
 * through as it is (wrapping it again would turn it into a string inside a string); anything else
 * (a runtime's own stderr) becomes {"line": "..."}.
 */
export function logLineAsJson(line: string): string {
  const trimmed = line.trim();
  if (trimmed.startsWith('{') && trimmed.endsWith('}')) {
    try {
      const value: unknown = JSON.parse(trimmed);
      if (value !== null && typeof value === 'object' && !Array.isArray(value)) return trimmed;
    } catch {
      // Looked like JSON and is not: wrapped below like any other text.
    }
  }
  return JSON.stringify({ line });
}
