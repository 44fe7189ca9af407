#!/usr/bin/env bash
# Builds the test cluster's binaries from pinned Go modules and installs the Debian
# packages it runs on.
#
#   e2e/cluster/build.sh [--force] [TARGET...]
#
# TARGET: all (default), k8s, etcd, coredns, tools, or one binary name (kubelet, ...).
# Binaries go to ${RAMIFY_K8S_BIN:-/var/tmp/ramify-k8s/bin} (tools to
# /var/tmp/ramify-k8s/tools). A binary is rebuilt only when its module's go.mod/go.sum,
# the Go version or the build flags changed since it was built (stamp files), so a
# second run costs nothing; Go's build cache (GOCACHE) makes a rebuild after a
# change fast. --force rebuilds anyway.
set -euo pipefail
SCRIPT_NAME=cluster-build
. "$(dirname "$0")/lib.sh"

FORCE=0
TARGETS=()
for a in "$@"; do
  case $a in
    --force) FORCE=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) TARGETS+=("$a") ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(all)

# --- Debian packages ---------------------------------------------------------------------
# containerd/runc/CNI plugins run the Pods; iptables and conntrack serve kube-proxy;
# xfsprogs makes the reflink volume; openssl the certificates; curl the health checks;
# debian-archive-keyring verifies the packages images.sh puts in the Postgres image.
APT_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack xfsprogs
  openssl curl iproute2 util-linux debian-archive-keyring)

ensure_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]} (run as root to install them, or apt-get install them)"
  log "installing Debian packages: ${missing[*]}"
  local t
  t=$(now_us)
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "installed ${missing[*]} in $(elapsed "$t")s"
}

# --- Go ----------------------------------------------------------------------------------

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || die "Go not found (need Go >= 1.26 on PATH or at /usr/local/go/bin/go)"
GO_VERSION=$("$GO" env GOVERSION)

K8S_LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
-X k8s.io/component-base/version.gitTreeState=clean"

# name | module directory | package | ldflags | output directory
binary_spec() {
  case $1 in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl)
      echo "$CLUSTER_SRC|k8s.io/kubernetes/cmd/$1|$K8S_LDFLAGS|$RAMIFY_K8S_BIN" ;;
    etcd) echo "$CLUSTER_SRC/etcd|go.etcd.io/etcd/server/v3|-s -w|$RAMIFY_K8S_BIN" ;;
    coredns) echo "$CLUSTER_SRC/coredns|github.com/coredns/coredns|-s -w|$RAMIFY_K8S_BIN" ;;
    mkoci | pause | dnsprobe) echo "$CLUSTER_SRC/tools|./$1|-s -w|$TOOLS_DIR" ;;
    *) return 1 ;;
  esac
}

expand_targets() {
  local t
  for t in "$@"; do
    case $t in
      all) expand_targets k8s etcd coredns tools ;;
      k8s) echo kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl ;;
      tools) echo mkoci pause dnsprobe ;;
      *) binary_spec "$t" >/dev/null || die "unknown target '$t' (all, k8s, etcd, coredns, tools, or a binary name)"
        echo "$t" ;;
    esac
  done
}

build_one() {
  local name=$1 spec moddir pkg ldflags outdir key stamp t
  spec=$(binary_spec "$name")
  IFS='|' read -r moddir pkg ldflags outdir <<<"$spec"
  mkdir -p "$outdir/.stamps"
  # The stamp names everything the binary is a function of. Tools are rebuilt when
  # their sources change too (they are ours and tiny).
  key=$( {
    echo "$GO_VERSION|$pkg|$ldflags"
    cat "$moddir/go.mod" "$moddir/go.sum" 2>/dev/null
    [ "$moddir" != "$CLUSTER_SRC/tools" ] || cat "$moddir/$name"/*.go
  } | sha256sum | cut -d' ' -f1)
  stamp=$outdir/.stamps/$name
  if [ "$FORCE" = 0 ] && [ -x "$outdir/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
    log "$name: up to date ($outdir/$name)"
    return 0
  fi
  t=$(now_us)
  # -mod=readonly: build exactly what go.sum pins, never resolve anything new.
  # CGO off: static binaries that run anywhere, also inside the images.
  (cd "$moddir" && CGO_ENABLED=0 "$GO" build -mod=readonly -trimpath -buildvcs=false \
    -ldflags "$ldflags" -o "$outdir/$name.tmp" "$pkg") ||
    die "building $name failed (module $moddir, package $pkg)"
  mv -f "$outdir/$name.tmp" "$outdir/$name"
  echo "$key" >"$stamp"
  log "$name: built in $(elapsed "$t")s"
}

main() {
  local t list names n
  t=$(now_us)
  list=$(expand_targets "${TARGETS[@]}") || exit 1
  read -r -a names <<<"${list//$'\n'/ }"
  ensure_packages
  log "building ${names[*]} with $GO_VERSION (GOCACHE=$("$GO" env GOCACHE))"
  for n in "${names[@]}"; do build_one "$n"; done
  log "done in $(elapsed "$t")s; binaries in $RAMIFY_K8S_BIN"
}
main
