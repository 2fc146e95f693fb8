# syntax=docker/dockerfile:1
#
# The spawngate worker image, for engines and clusters that can pull from a registry:
#   docker build -t spawngate-worker:$(node -p "require('./package.json').version") .
# It runs the reference worker (dist/worker/bundle/worker.js, dist/worker/bin.js bundled) as uid 10001 and matches the image that
# scripts/build-image.sh makes without a registry (docs/docker.md): same paths, user, entrypoint and env,
# so the container and kubernetes backends treat both alike.
#
# Coding agents: name their npm packages, pinned, and each lands in /opt/agents/<id> as
# `spawngate image build --agent <id>` puts it (docs/agents.md has the in-image commands):
#   docker build --build-arg AGENTS="codex-acp=@zed-industries/codex-acp@0.16.0 claude-code-acp=@zed-industries/claude-code-acp@0.16.2" .

ARG NODE_IMAGE=node:24-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# tsc needs the dev dependencies; no lifecycle script is needed (and `prepare` would build before src/ is here).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY scripts/bundle-worker.mjs ./scripts/
# Called through the image's node: with --ignore-scripts the `node` dev dependency installed no binary.
# The bundle (dev dependency rolldown) is the entry point: one file to load, a faster start.
RUN node node_modules/typescript/bin/tsc -p tsconfig.build.json \
 && node scripts/bundle-worker.mjs \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${NODE_IMAGE}
# A userland for coding agents (a shell comes with the base image): git for `git` workspaces, CA
# certificates for https, and the tools agents' shell commands use.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates patch diffutils findutils \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 worker \
 && useradd --uid 10001 --gid 10001 --home-dir /home/spawngate --no-create-home --shell /bin/sh worker \
 && mkdir -p /workspace /run/spawngate /home/spawngate \
 && chown 10001:10001 /workspace /home/spawngate \
 && chmod 0700 /home/spawngate
COPY --from=build /src/package.json /app/package.json
COPY --from=build /src/node_modules /app/node_modules
COPY --from=build /src/dist /app/dist
COPY bin /app/bin
ARG AGENTS=""
# Installed as root into folders the worker can read but not change; install scripts pick native binaries.
RUN set -e; for pair in $AGENTS; do \
      id="${pair%%=*}"; pkg="${pair#*=}"; \
      mkdir -p "/opt/agents/$id"; printf '{"name":"spawngate-agent-%s","private":true}\n' "$id" > "/opt/agents/$id/package.json"; \
      npm install --prefix "/opt/agents/$id" --no-audit --no-fund --save-exact --loglevel=error "$pkg"; \
    done; rm -rf /root/.npm /tmp/*
ENV NODE_ENV=production \
    HOME=/home/spawngate \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001
WORKDIR /workspace
ENTRYPOINT ["node", "/app/dist/worker/bundle/worker.js"]
