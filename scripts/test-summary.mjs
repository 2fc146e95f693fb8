// The closing lines of scripts/test.sh: the tally of both vitest runs, then whatever else made a run
// exit non-zero (errors outside any test, files that failed before their tests ran), so a log cut
// to its tail still says why. Arguments: the exit status of the main run and of the OpenClaw run.
import { readFileSync } from 'node:fs';

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
  }
  const errors = read(`${run.name}-errors`);
  for (const e of errors?.moduleErrors ?? []) lines.push(`${run.name}: ${e.module} did not run: ${e.name}: ${e.message}\n${e.stack}`);
  for (const e of errors?.unhandledErrors ?? []) lines.push(`${run.name}: error outside any test (${e.type ?? 'unhandled'}${e.testId ? `, in ${e.testId}` : ''}): ${e.name}: ${e.message}\n${e.stack}`);
  if (run.status !== 0) lines.push(`${run.name}: vitest exited ${run.status}`);
}
if (lines.length > 0) console.log(lines.join('\n'));
console.log(`vitest: ${passed} passed, ${failed} failed, ${skipped} skipped`);
