#!/usr/bin/env bash
# Build the token-sidecar image WITHOUT a Docker engine (podman/buildah + runc) and smoke-run it as a non-root uid
# on a read-only root file system.
#
# Why it looks like this: see shared/notes/container-build.md. In short, these machines have no container engine and
# no reachable registry, so
#   - podman/buildah/runc/debootstrap come from Debian (installed here if missing; needs root),
#   - a containers.conf selects runc (crun fails on this kernel's cgroup mode) and lowers the default ulimits,
#   - the Dockerfile's FROM image is replaced by a LOCAL STAND-IN with the exact same name: a debootstrap'd Debian
#     bookworm (minbase) plus this machine's own `node` binary and npm. The build then runs with --pull=never.
#     The host's CA bundle (this network re-signs TLS) goes into the stand-in only, never into the real Dockerfile.
#   - the run uses --network host, so podman adds no iptables rules and does not touch net.ipv4.ip_forward.
#
# It is slow (minutes on first run) and needs root podman, so it is not part of CI.
#
# Usage: scripts/image-smoke.sh [--rebuild-base] [--no-build] [-- SMOKE_ARGS...]
#   SMOKE_ARGS default to `demo`; e.g. `scripts/image-smoke.sh -- --help`.
# Environment: IMAGE (default localhost/token-sidecar:smoke), SMOKE_WORKDIR (default /var/tmp/token-sidecar-smoke),
#              SMOKE_TIMEOUT seconds for the smoke command (default 120).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

IMAGE=${IMAGE:-localhost/token-sidecar:smoke}
WORKDIR=${SMOKE_WORKDIR:-/var/tmp/token-sidecar-smoke}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-120}
rebuild_base=false
build=true
smoke_args=(demo)

while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild-base) rebuild_base=true ;;
    --no-build) build=false ;;
    --) shift; smoke_args=("$@"); break ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 1 ;;
  esac
  shift
done

log() { printf '\n==> %s\n' "$*"; }

# The FROM name is read from the Dockerfile so the stand-in can never drift from it.
base_image=$(sed -n 's/^ARG NODE_IMAGE=//p' Dockerfile | head -n 1)
if [ -z "$base_image" ]; then
  echo "could not read 'ARG NODE_IMAGE=...' from Dockerfile" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "this script needs root (rootful podman, debootstrap)" >&2
  exit 1
fi

# 1. Tools.
missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
fi

# 2. containers.conf: runc instead of crun, ulimits root may set here.
mkdir -p "$WORKDIR"
cat >"$WORKDIR/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORKDIR/containers.conf"

# 3. The local stand-in for the base image (only when no image of that name exists, or on --rebuild-base).
standin_label=io.token-sidecar.smoke-standin
if $rebuild_base || ! podman image exists "$base_image"; then
  if $rebuild_base || ! podman image exists localhost/debian-min:bookworm; then
    log "debootstrap bookworm (minbase) into $WORKDIR/rootfs"
    rm -rf "$WORKDIR/rootfs"
    debootstrap --variant=minbase bookworm "$WORKDIR/rootfs" http://deb.debian.org/debian >"$WORKDIR/debootstrap.log" 2>&1 \
      || { tail -n 20 "$WORKDIR/debootstrap.log" >&2; exit 1; }
    tar -C "$WORKDIR/rootfs" -c . | podman import - localhost/debian-min:bookworm >/dev/null
    rm -rf "$WORKDIR/rootfs"
  fi

  log "making the stand-in $base_image from localhost/debian-min:bookworm + this machine's node $(node --version)"
  ctx="$WORKDIR/base-ctx"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  node_bin=$(node -p process.execPath)
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  cp "$node_bin" "$ctx/node"
  cp -a "$npm_dir" "$ctx/npm"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  cat >"$ctx/Dockerfile" <<EOF
FROM localhost/debian-min:bookworm
LABEL $standin_label=true
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
# The host's CA bundle: this network re-signs TLS, and npm ci must reach the registry. Stand-in only.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
RUN ln -s /usr/local/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s /usr/local/lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && groupadd --gid 1000 node && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
CMD ["node"]
EOF
  podman build --pull=never -q -t "$base_image" "$ctx" >/dev/null
  rm -rf "$ctx"
else
  if [ "$(podman image inspect --format "{{ index .Labels \"$standin_label\" }}" "$base_image" 2>/dev/null)" = "true" ]; then
    echo "using the existing local stand-in $base_image (--rebuild-base to remake it)"
  else
    echo "using the existing image $base_image"
  fi
fi

# 4. Build the real Dockerfile, never pulling.
if $build; then
  log "podman build --pull=never -t $IMAGE ."
  start=$(date +%s)
  podman build --pull=never \
    --build-arg VERSION="$(node -p "require('./package.json').version")" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -t "$IMAGE" . >"$WORKDIR/build.log" 2>&1 || { tail -n 40 "$WORKDIR/build.log" >&2; exit 1; }
  echo "built in $(( $(date +%s) - start )) s (log: $WORKDIR/build.log)"
fi

# 5. What was built.
log "image"
podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$IMAGE"
size_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "size: $size_bytes bytes ($(( size_bytes / 1024 / 1024 )) MiB)"
echo "user: $(podman image inspect --format '{{.Config.User}}' "$IMAGE")"
echo "entrypoint: $(podman image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE") cmd: $(podman image inspect --format '{{json .Config.Cmd}}' "$IMAGE")"
echo "stop signal: $(podman image inspect --format '{{.Config.StopSignal}}' "$IMAGE")"
echo "entrypoint: $(podman image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE")"
echo "production node_modules: $(podman run --rm --read-only --user 10001 --network host --entrypoint du "$IMAGE" -sh /app/node_modules | cut -f1)"

run=(podman run --rm --read-only --user 10001 --network host)

# 6. The smoke run: uid inside the image, then the product itself.
log "id -u inside the image (--read-only --user 10001)"
"${run[@]}" --entrypoint id "$IMAGE" -u

log "token-sidecar webhook --help (the admission webhook ships in the same image)"
"${run[@]}" "$IMAGE" webhook --help | head -n 3

log "token-sidecar ${smoke_args[*]} inside the image (--read-only --user 10001 --network host)"
set +e
timeout --signal=TERM "$SMOKE_TIMEOUT" "${run[@]}" "$IMAGE" "${smoke_args[@]}"
rc=$?
set -e
echo "exit code: $rc"
[ "$rc" -eq 0 ] || exit "$rc"

# 7. The default command (`start --config /etc/token-sidecar/routes.yaml`) with a mounted routes.yaml, then
#    `podman stop`: the sidecar must handle SIGTERM itself (node is PID 1, no init) and exit 0 well before the
#    stop timeout would SIGKILL it. Port 0 everywhere, so nothing on the host can collide.
log "default command with a mounted routes.yaml, then SIGTERM (podman stop -t 30)"
cfg="$WORKDIR/config"
mkdir -p "$cfg"
cat >"$cfg/routes.yaml" <<'YAML'
version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
drainTimeout: 5s
routes:
  - name: local
    match: { pathPrefix: /local }
    upstream: http://127.0.0.1:9
    auth: { type: static, value: smoke-test-key }
YAML
chmod 755 "$cfg"
chmod 644 "$cfg/routes.yaml"
name="token-sidecar-smoke-$$"
trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
podman run -d --name "$name" --read-only --user 10001 --network host \
  -v "$cfg:/etc/token-sidecar:ro" "$IMAGE" >/dev/null
sleep 3
echo "state after 3 s: $(podman inspect --format '{{.State.Status}}' "$name")"
stop_start=$(date +%s%N)
podman stop -t 30 "$name" >/dev/null
stop_ms=$(( ($(date +%s%N) - stop_start) / 1000000 ))
stop_rc=$(podman inspect --format '{{.State.ExitCode}}' "$name")
podman logs "$name" 2>&1 | tail -n 6
echo "stopped in ${stop_ms} ms with exit code ${stop_rc}"
[ "$stop_rc" -eq 0 ]
