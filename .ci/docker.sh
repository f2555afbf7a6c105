#!/usr/bin/env bash
# A Docker engine for CI, on a machine that has none and reaches no image registry.
#
#   .ci/docker.sh            make sure an engine answers and a base image exists;
#                            prints the base image name on the last line of stdout
#
# Idempotent: every step is skipped when its result is already there, so a second run takes a
# second. Steps:
#   1. apt-get install docker.io docker-compose debootstrap (only what is missing)
#   2. start dockerd (vfs storage by default: works on any filesystem) unless `docker info`
#      already answers; its log goes to $ORCHESTRA_DOCKERD_LOG
#   3. build the base image orchestra-base:<release> (unless it exists): debootstrap a minimal
#      Debian of the release this machine's apt uses, from the same mirror, `docker import` it,
#      then install python3, venv, pip and CA certificates in it with apt. This machine's CA
#      bundle is added to the image, so that pip and apt inside trust the same TLS endpoints
#      the host trusts (a proxy's CA, say).
#
# When no engine can be had (no root, no apt, dockerd refuses to start), it prints the reason
# on stderr, "no-docker: <reason>" on stdout and exits 0, so that callers can skip.
# Environment:
#   ORCHESTRA_DOCKERD_LOG   dockerd's log (default /tmp/orchestra-dockerd.log)
#   ORCHESTRA_DOCKER_WAIT   seconds to wait for dockerd to answer (default 60)
#   ORCHESTRA_DOCKER_STORAGE  dockerd's storage driver (default vfs: slow, a full copy of the
#                           image per container and layer, but it works everywhere; overlay2
#                           is much faster where the kernel and filesystem allow it)
#   ORCHESTRA_BASE_RELEASE  Debian release to debootstrap (default: the one apt uses)
#   ORCHESTRA_BASE_MIRROR   Debian mirror (default: the one apt uses)
set -uo pipefail

log() { echo "docker.sh: $*" >&2; }
give_up() {
  log "no Docker engine: $*"
  echo "no-docker: $*"
  exit 0
}

dockerd_log="${ORCHESTRA_DOCKERD_LOG:-/tmp/orchestra-dockerd.log}"
wait_s="${ORCHESTRA_DOCKER_WAIT:-60}"
storage="${ORCHESTRA_DOCKER_STORAGE:-vfs}"
# one run at a time (several test sessions may call this at once)
exec 9>/tmp/orchestra-docker.lock
flock -w 3600 9 || give_up "could not take the lock /tmp/orchestra-docker.lock"

# --- the Debian release and mirror this machine's apt uses --------------------------------
apt_release() {
  local rel=""
  if [ -r /etc/os-release ]; then rel=$(. /etc/os-release && echo "${VERSION_CODENAME:-}"); fi
  echo "${rel:-bookworm}"
}
apt_mirror() {
  # the first URI of a "deb" source pointing at a .../debian archive (deb822 or one-line form)
  local m=""
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' | grep -E '/debian/?$' | head -1)
  if [ -z "$m" ]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
          | grep -E '/debian/?$' | head -1)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}
release="${ORCHESTRA_BASE_RELEASE:-$(apt_release)}"
mirror="${ORCHESTRA_BASE_MIRROR:-$(apt_mirror)}"
base="orchestra-base:${release}"

# --- 1. packages --------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || give_up "no apt-get to install ${need[*]}"
  [ "$(id -u)" = 0 ] || give_up "not root: cannot install ${need[*]}"
  log "installing ${need[*]} with apt"
  t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || give_up "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 \
    || give_up "apt-get install ${need[*]} failed"
  log "installed in $((SECONDS - t0)) s"
fi
command -v docker >/dev/null 2>&1 || give_up "no docker client"

# --- 2. the engine ------------------------------------------------------------------------
if ! timeout 20 docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || give_up "no dockerd"
  [ "$(id -u)" = 0 ] || give_up "not root: cannot start dockerd"
  if pgrep -x dockerd >/dev/null 2>&1; then
    log "a dockerd runs but does not answer yet; waiting for it"
  else
    log "starting dockerd --storage-driver=$storage (log: $dockerd_log)"
    # its own session, so it outlives this script and the caller's process group
    setsid nohup dockerd --storage-driver="$storage" >>"$dockerd_log" 2>&1 </dev/null 9>&- &
  fi
  t0=$SECONDS
  until timeout 10 docker info >/dev/null 2>&1; do
    if [ $((SECONDS - t0)) -ge "$wait_s" ]; then
      tail -n 20 "$dockerd_log" >&2 2>/dev/null
      give_up "dockerd did not answer within ${wait_s} s (log: $dockerd_log)"
    fi
    if ! pgrep -x dockerd >/dev/null 2>&1; then
      tail -n 20 "$dockerd_log" >&2 2>/dev/null
      give_up "dockerd exited at start (log: $dockerd_log)"
    fi
    sleep 1
  done
  log "dockerd answers after $((SECONDS - t0)) s"
fi

# --- 3. the base image --------------------------------------------------------------------
if ! docker image inspect "$base" >/dev/null 2>&1; then
  if ! docker image inspect "$base-minbase" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null 2>&1 || give_up "no debootstrap to build $base"
    root=$(mktemp -d /tmp/orchestra-debootstrap.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    log "debootstrap --variant=minbase $release from $mirror"
    t0=$SECONDS
    debootstrap --variant=minbase "$release" "$root" "$mirror" >"$root.log" 2>&1 || {
      tail -n 20 "$root.log" >&2
      give_up "debootstrap $release failed (log: $root.log)"
    }
    rm -f "$root.log"
    # the release's security and update suites too, as on the host
    if [ -n "$(grep -rhs -- "-security" /etc/apt/sources.list /etc/apt/sources.list.d/)" ]; then
      sec_mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -oE '[a-z]+://[^ ]*/debian-security/?' | head -1)
    fi
    {
      echo "deb $mirror $release main"
      echo "deb $mirror $release-updates main"
      [ -n "${sec_mirror:-}" ] && echo "deb $sec_mirror $release-security main"
    } >"$root/etc/apt/sources.list"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    log "debootstrap took $((SECONDS - t0)) s; importing"
    t0=$SECONDS
    tar -C "$root" -c . | docker import - "$base-minbase" >/dev/null \
      || give_up "docker import failed"
    rm -rf "$root"
    trap - EXIT
    log "import took $((SECONDS - t0)) s"
  fi
  log "installing python3 in $base"
  t0=$SECONDS
  ctx=$(mktemp -d /tmp/orchestra-base-ctx.XXXXXX)
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt" 2>/dev/null || : >"$ctx/host-ca.crt"
  cat >"$ctx/Dockerfile" <<EOF
FROM $base-minbase
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
# the CAs the CI machine trusts (an egress proxy's, say), for pip and apt inside
COPY host-ca.crt /usr/local/share/ca-certificates/orchestra-ci-host.crt
RUN update-ca-certificates >/dev/null 2>&1 || true; \\
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >/etc/pip.conf
CMD ["python3"]
EOF
  DOCKER_BUILDKIT=0 docker build -q -t "$base" "$ctx" >&2 2>"$ctx.err" || {
    cat "$ctx.err" >&2
    rm -rf "$ctx" "$ctx.err"
    give_up "building $base failed"
  }
  rm -rf "$ctx" "$ctx.err"
  log "$base built in $((SECONDS - t0)) s"
fi

echo "$base"
