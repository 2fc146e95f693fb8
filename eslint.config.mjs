import tseslint from 'typescript-eslint';

/** Imports that must never exist: each zone names the folders it covers and what they may not reach. */
const concreteBackends = {
  group: ['**/backends/process/**', '**/backends/docker/**', '**/backends/kubernetes/**', 'dockerode', '@kubernetes/client-node'],
  message: 'The core never imports a concrete backend: backends are resolved at the edge (src/backends/registry.ts) and load their SDKs lazily.',
};
const upward = {
  group: ['**/admission/**', '**/sessions/**', '**/server/**', '**/cli/**', '**/spawngate.js'],
  message: 'A backend or the worker knows its contract (src/backends/types.ts, src/protocol/), never admission, sessions, the server or the CLI.',
};
const apartFromBackends = { group: ['**/backends/**'], message: 'The worker and the protocol stand apart from the backends: shared types live in src/protocol/.' };
const zones = [
  { files: ['src/admission/**', 'src/sessions/**', 'src/config/**', 'src/telemetry/**', 'src/server/**', 'src/protocol/**'], patterns: [concreteBackends] },
  // Type-only imports stay allowed: a backend's spec carries the decided egress mode.
  { files: ['src/backends/**'], patterns: [{ ...upward, allowTypeImports: true }] },
  { files: ['src/protocol/**'], patterns: [upward, apartFromBackends] },
  {
    files: ['src/worker/**'],
    patterns: [upward, apartFromBackends],
    // Measured twice (bench:spawn): the ESM facade of node:http loads Node's bundled undici, 20-50 ms of every worker's start.
    paths: [{ name: 'node:http', allowTypeImports: true, message: "Take it from process.getBuiltinModule('node:http'): its ESM facade loads undici, 20-50 ms of a worker's start." }],
  },
];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.tools/**', '.cache/**', 'coverage/**', 'bundles/**'] },
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true, allowBoolean: true }],
    },
  },
  ...zones.map(({ files, patterns, paths = [] }) => ({ files, rules: { '@typescript-eslint/no-restricted-imports': ['error', { patterns, paths }] } })),
  {
    files: ['**/*.mjs', '**/*.js'],
    ...tseslint.configs.disableTypeChecked,
  },
);
