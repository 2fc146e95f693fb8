import { defineConfig } from 'vitest/config';

/**
 * Suites that need a service get a project of their own, so the service starts (once, in its
 * globalSetup) only when one of its files is selected, and suites that share one engine do not
 * fight over two cores.
 */
export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: 'forks',
    projects: [
      {
        extends: true,
        test: {
          name: 'core',
          include: ['test/**/*.test.ts'],
          exclude: ['test/redis/**', 'test/kubernetes/**', 'test/k8s-infra/**', 'test/docker/**', 'test/openclaw/**', 'test/agents/**'],
        },
      },
      // Real coding agents from npm (hundreds of MB of node each): one file at a time.
      { extends: true, test: { name: 'agents', include: ['test/agents/**/*.test.ts'], globalSetup: ['test/agents/global-setup.ts'], fileParallelism: false, testTimeout: 300_000, hookTimeout: 20 * 60_000 } },
      { extends: true, test: { name: 'redis', include: ['test/redis/**/*.test.ts'], globalSetup: ['test/redis/global-setup.ts'] } },
      // One Docker Engine on vfs: container suites run one file at a time.
      { extends: true, test: { name: 'docker', include: ['test/docker/**/*.test.ts'], fileParallelism: false, testTimeout: 120_000 } },
      // A real OpenClaw gateway per file (minutes to become ready on two cores): one file at a time.
      {
        extends: true,
        test: {
          name: 'openclaw',
          include: ['test/openclaw/**/*.test.ts'],
          // ACP sessions also run as Pods: the control plane (started, or reused) comes up with the suite.
          globalSetup: ['test/openclaw/global-setup.ts', 'test/k8s-infra/global-setup.ts'],
          fileParallelism: false,
          testTimeout: 300_000,
          // A cold control plane builds kube-apiserver & co. (already cached by scripts/test.sh in CI).
          hookTimeout: 45 * 60_000,
        },
      },
      {
        extends: true,
        test: {
          name: 'kubernetes',
          include: ['test/kubernetes/**/*.test.ts', 'test/k8s-infra/**/*.test.ts'],
          globalSetup: ['test/k8s-infra/global-setup.ts'],
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 45 * 60_000,
        },
      },
    ],
  },
});
