// The closing lines of scripts/test.sh: the tally of both vitest runs, then whatever else made a run
// exit non-zero (errors outside any test, files that failed before their tests ran), so a log cut
// to its tail still says why: each failed test by file and name, with the head of its failure (the
// reporter's own account of it scrolls away above the OpenClaw run). Arguments: the exit status of
// the main run and of the OpenClaw run.
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

// Enough of a failure to see the assertion and where it was, not a whole stack.
const MESSAGE_LINES = 15;
const head = (text) => text.split('\n').slice(0, MESSAGE_LINES).join('\n');

const runs = [
  { name: 'vitest-results', status: Number(process.argv[2] ?? 0) },
  { name: 'vitest-openclaw', status: Number(process.argv[3] ?? 0) },
];
const read = (file) => {
  try {
    return JSON.parse(readFileSync(`.cache/${file}.json`, 'utf8'));
  } catch {
    return null;
  }
};
let passed = 0;
let failed = 0;
let skipped = 0;
const lines = [];
for (const run of runs) {
  const results = read(run.name);
  if (!results) {
    failed += 1;
    lines.push(`no results from ${run.name}`);
  } else {
    passed += results.numPassedTests;
    failed += results.numFailedTests;
    skipped += results.numPendingTests + results.numTodoTests;
    for (const file of results.testResults ?? []) {
      const where = relative(process.cwd(), file.name);
      const failedTests = (file.assertionResults ?? []).filter((t) => t.status === 'failed');
      for (const t of failedTests) {
        lines.push(`${run.name}: FAILED ${where} > ${t.fullName} (${Math.round(t.duration ?? 0)} ms)\n${head((t.failureMessages ?? []).join('\n'))}`);
      }
      // A file whose suite-level hook threw has no failed test to name; its message says why.
      if (file.status === 'failed' && failedTests.length === 0 && file.message) lines.push(`${run.name}: FAILED ${where}: ${head(file.message)}`);
    }
  }
  const errors = read(`${run.name}-errors`);
  for (const e of errors?.moduleErrors ?? []) lines.push(`${run.name}: ${e.module} did not run: ${e.name}: ${e.message}\n${e.stack}`);
  for (const e of errors?.unhandledErrors ?? []) lines.push(`${run.name}: error outside any test (${e.type ?? 'unhandled'}${e.testId ? `, in ${e.testId}` : ''}): ${e.name}: ${e.message}\n${e.stack}`);
  if (run.status !== 0) lines.push(`${run.name}: vitest exited ${run.status}`);
}
if (lines.length > 0) console.log(lines.join('\n'));
console.log(`vitest: ${passed} passed, ${failed} failed, ${skipped} skipped`);
