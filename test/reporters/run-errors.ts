/**
 * Records what makes `vitest run` exit non-zero besides a failed test: errors caught outside any
 * test (an unhandled rejection, a worker that timed out talking to the main process) and files
 * that failed before their tests ran. The JSON reporter counts neither, so a CI log cut to its last
 * lines showed "0 failed" above an exit code of 1; scripts/test.sh prints this file at the end.
 */
import { writeFileSync } from 'node:fs';
import type { Reporter, SerializedError, TestModule, TestRunEndReason } from 'vitest/node';

export default class RunErrorsReporter implements Reporter {
  // Passed by environment: a reporter named on the command line gets no options.
  private readonly outputFile = process.env.SPAWNGATE_RUN_ERRORS_FILE ?? '.cache/vitest-run-errors.json';

  onTestRunEnd(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<SerializedError>, reason: TestRunEndReason): void {
    const describe = (e: SerializedError) => {
      // vitest adds the kind of error and, when it can tell, the test it surfaced in.
      const extra = e as unknown as { testId?: unknown; type?: unknown };
      return {
        name: e.name ?? 'Error',
        message: String(e.message ?? ''),
        stack: String(e.stack ?? '').split('\n').slice(0, 8).join('\n'),
        ...(typeof extra.testId === 'string' ? { testId: extra.testId } : {}),
        ...(typeof extra.type === 'string' ? { type: extra.type } : {}),
      };
    };
    const moduleErrors = modules.flatMap((m) => m.errors().map((e) => ({ module: m.moduleId, ...describe(e) })));
    writeFileSync(this.outputFile, JSON.stringify({ reason, unhandledErrors: unhandledErrors.map(describe), moduleErrors }, null, 2));
  }
}
