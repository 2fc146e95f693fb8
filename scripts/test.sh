#!/usr/bin/env bash
# The whole test suite, as CI runs it: tools and services first, then lint, types, policy checks, tests.
# Runs under `npm test`, so `node` is the Node 24 from node_modules/.bin.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "node $(node -v)"
case "$(node -v)" in v2[2-9].*|v[3-9][0-9].*) ;; *) echo "Node >= 22 required (run through npm so node_modules/.bin/node is used)"; exit 1;; esac

step "tools: OPA CLI"
OPA_BIN="$(bash scripts/ensure-opa.sh | tail -n 1)"
export OPA_BIN
# Captured whole, then cut: piping into head under pipefail can kill the producer with SIGPIPE (exit 141).
opa_version="$("$OPA_BIN" version)"
printf '%s\n' "${opa_version%%$'\n'*}"

if [ -x scripts/ensure-docker.sh ] || [ -f scripts/ensure-docker.sh ]; then
  step "services: Docker Engine"
  bash scripts/ensure-docker.sh
fi

step "services: Redis"
bash scripts/ensure-redis.sh

step "tools: OpenClaw gateway (pinned, for the plugin's end-to-end suite; cached)"
bash scripts/ensure-openclaw.sh > /dev/null

step "tools: kube-apiserver, etcd, scheduler, controller-manager, kubelet, pause (built from the Go module proxy; cached)"
bash scripts/ensure-k8s-bins.sh > /dev/null

step "tools: containerd, runc (Debian packages) and the CNI plugins (Debian package, unpacked into .tools/cni) for the test node"
bash scripts/ensure-node-deps.sh > /dev/null

step "tools: kube-router (the test node's NetworkPolicy enforcer, firewall mode; built from the Go module proxy; cached) and ipset"
bash scripts/ensure-netpol.sh > /dev/null

step "tools: OpenTelemetry Collector (otlp receiver, batch, otlphttp; built from the Go module proxy; cached)"
OTELCOL_BIN="$(bash scripts/ensure-otelcol.sh | tail -n 1)"
export OTELCOL_BIN
"$OTELCOL_BIN" --version

step "tools: Prometheus and promtool (Debian package)"
PROMETHEUS_BIN="$(bash scripts/ensure-prometheus.sh | tail -n 1)"
export PROMETHEUS_BIN

step "tools: real ACP agents (codex-acp, claude-code-acp, qwen-code, gemini-cli, opencode; pinned npm packages; cached)"
bash scripts/ensure-agents.sh > /dev/null

step "lint"
npx eslint .

step "type-check"
npx tsc -p tsconfig.json --noEmit

step "build"
npm run --silent build

step "openclaw plugin: committed openclaw.plugin.json matches the config schema"
node scripts/openclaw-manifest.mjs --check

step "policies: opa fmt --diff, opa check --strict"
fmt_out="$("$OPA_BIN" fmt --diff policies)"
if [ -n "$fmt_out" ]; then echo "$fmt_out"; echo "policies/ is not opa-fmt formatted (run: $OPA_BIN fmt -w policies)"; exit 1; fi
"$OPA_BIN" check --strict policies

step "policies: opa test --coverage (>= 90%)"
"$OPA_BIN" test policies -v | tail -n 5
coverage="$("$OPA_BIN" test policies --coverage --format=json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).coverage))')"
echo "policy coverage: ${coverage}%"
node -e "process.exit(Number(process.argv[1]) >= 90 ? 0 : 1)" "$coverage" || { echo "policy coverage below 90%"; exit 1; }

step "prometheus rules: promtool check rules, promtool test rules"
(cd deploy/prometheus && promtool check rules spawngate-rules.yml && promtool test rules spawngate-rules.test.yml && promtool check config prometheus.yml)

step "bundle: committed bundles/spawngate.tar.gz matches policies/"
node bin/spawngate.js policy build --check

step "tests"
mkdir -p .cache
status=0
rm -f .cache/vitest-results.json .cache/vitest-openclaw.json .cache/vitest-results-errors.json .cache/vitest-openclaw-errors.json
# run-errors records what fails a run besides a failed test (unhandled errors, files that never ran).
SPAWNGATE_RUN_ERRORS_FILE=.cache/vitest-results-errors.json \
  npx vitest run --project core --project redis --project docker --project kubernetes --project agents --reporter=default --reporter=json --outputFile.json=.cache/vitest-results.json --reporter=./test/reporters/run-errors.ts || status=$?
main_status=$status
# The OpenClaw gateway suite runs last, alone: the gateway blocks its event loop for seconds on
# SQLite work under load, and beside the container and cluster suites it would be judged on that.
step "tests: the OpenClaw plugin against a real gateway"
openclaw_status=0
SPAWNGATE_RUN_ERRORS_FILE=.cache/vitest-openclaw-errors.json \
  npx vitest run --project openclaw --reporter=default --reporter=json --outputFile.json=.cache/vitest-openclaw.json --reporter=./test/reporters/run-errors.ts || openclaw_status=$?
[ "$openclaw_status" -eq 0 ] || status=$openclaw_status
# Plain closing lines, whatever reads this log: the tally, then anything else that failed a run.
node scripts/test-summary.mjs "$main_status" "$openclaw_status" || true
exit "$status"
