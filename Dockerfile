# syntax=docker/dockerfile:1
#
# token-sidecar: the sidecar proxy and its admission webhook share this one image
# (`token-sidecar start` is the default command; the webhook Deployment runs `token-sidecar webhook`).
#
#   docker build -t token-sidecar:0.1.0 .
#   docker run --rm --read-only --user 10001 token-sidecar:0.1.0 demo
#
# scripts/image-smoke.sh builds and runs it with podman where no Docker engine exists.

# A current Node LTS, pinned by tag. (Pin by digest too in your own registry mirror: `node:24-bookworm-slim@sha256:…`.)
ARG NODE_IMAGE=docker.io/library/node:24-bookworm-slim

# ---- build: all dependencies, TypeScript -> dist/ ---------------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/bundle.mjs scripts/bundle-trims.mjs ./scripts/
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies only, the compiled code, a numeric non-root user --------------------------
FROM ${NODE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="token-sidecar" \
      org.opencontainers.image.description="Per-pod sidecar forward proxy that injects short-lived OAuth2 access tokens, shared fleet-wide through Redis" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.documentation="docs/kubernetes.md" \
      org.opencontainers.image.base.name="${NODE_IMAGE}"

WORKDIR /app
# Installed as root and owned by root: uid 10001 can read the code but never change it. The npm cache and logs are
# removed in the same layer so they never reach the image.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && rm -rf /root/.npm /tmp/*
COPY --from=build /src/dist ./dist
# jemalloc instead of glibc malloc (Debian's libjemalloc2, linked at a fixed path for every architecture): glibc kept
# ~10 MB that V8 freed after compiling llhttp's WebAssembly in about half the starts (idle 67 or 77 MB); jemalloc with
# MALLOC_CONF below returns freed pages 1-2 s later from a background thread (idle 66-72 MB in every start, after a
# start-up transient of up to ~113 MB).
# bench/README.md, "The allocator".
RUN apt-get update \
 && apt-get install -y --no-install-recommends libjemalloc2 \
 && ln -s "$(dpkg -L libjemalloc2 | grep '/libjemalloc.so.2$')" /usr/local/lib/libjemalloc.so.2 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*

ENV NODE_ENV=production
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 MALLOC_CONF=background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1,tcache_max:1024
# --max-semi-space-size=2 (MiB per young-generation semi-space): measured on our load test, peak RSS under load fell
# from 114–135 MB to 85–105 MB with no loss of throughput (shared/notes/performance.md). The sidecar runs in every
# pod, so RSS is the number that scales. Refused in NODE_OPTIONS, so it lives here; add your own flags in the pod's
# env. --no-liftoff and --optimize-for-size were measured and not taken (bench/README.md, "Idle memory").

# Numeric, so `runAsNonRoot: true` can be verified by the kubelet without an /etc/passwd lookup.
USER 10001:10001
# 15080: app traffic (bound to 127.0.0.1 by routes.yaml); 15081: admin (/healthz, /readyz, /metrics).
EXPOSE 15080 15081
# No init process: node is PID 1 and the sidecar handles SIGTERM itself (readyz false, drain, exit 0); it spawns no
# children, so there are no zombies to reap. Under plain Docker use `docker run --init` if you want one anyway.
STOPSIGNAL SIGTERM
# The image writes nothing to its root file system, so it runs with --read-only / readOnlyRootFilesystem: true.
ENTRYPOINT ["node", "--max-semi-space-size=2", "/app/dist/token-sidecar.mjs"]
CMD ["start", "--config", "/etc/token-sidecar/routes.yaml"]
