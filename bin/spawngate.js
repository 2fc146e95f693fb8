#!/usr/bin/env node
// Thin launcher: the CLI is compiled to dist/ by `npm run build` (run by `npm install` via prepare).
// Checked before anything of spawngate loads: on an older Node it would fail later, and less clearly.
const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 12)) {
  process.stderr.write(
    `spawngate needs Node.js 22.12 or newer; this is Node.js ${process.versions.node} (${process.execPath}).\n` +
      'Run it with the Node.js the project installs (npx spawngate …, or npm run …), or install Node.js 22.12+.\n',
  );
  process.exit(2);
}
const { main } = await import('../dist/cli/main.js');

const code = await main(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
});
process.exitCode = code;
