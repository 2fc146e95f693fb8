#!/usr/bin/env bash
# Builds the local worker image spawngate-worker:<package version> (docs/docker.md): makes sure an
# engine answers, compiles the package, then imports a root filesystem made from this host's Node 24
# binary, its libraries, dist/ and the production node_modules. A no-op when nothing changed.
# Usage: scripts/build-image.sh [--force] [--tag name:tag]
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root_dir"

bash scripts/ensure-docker.sh
npm run --silent build
# shellcheck disable=SC2016 # the program is JavaScript: its ${…} are not for the shell
# The image ships the Node binary that runs this step, so it must be the project's Node 24, not the system one.
exec node_modules/.bin/node --input-type=module -e '
const args = process.argv.slice(1);
const tagAt = args.indexOf("--tag");
const { buildWorkerImage } = await import("./dist/backends/docker/image.js");
const result = await buildWorkerImage({
  force: args.includes("--force"),
  ...(tagAt >= 0 && args[tagAt + 1] ? { tag: args[tagAt + 1] } : {}),
  log: (line) => console.log(`build-image: ${line}`),
});
console.log(JSON.stringify(result));
' -- "$@"
