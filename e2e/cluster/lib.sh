# Shared by the e2e/cluster scripts: where things live, the cluster's addresses and
# ports, and small helpers. Sourced, never run. Every value can be overridden from the
# environment, so a machine whose network already uses one of the ranges can move the
# cluster elsewhere.
# shellcheck disable=SC2034 # the variables are for the scripts that source this file

CLUSTER_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_SRC/../.." && pwd)

# Build outputs outlive a cluster (binaries, the Debian package cache, image archives),
# so they sit outside the repository and outside the cluster directory.
RAMIFY_K8S_HOME=${RAMIFY_K8S_HOME:-/var/tmp/ramify-k8s}
RAMIFY_K8S_BIN=${RAMIFY_K8S_BIN:-$RAMIFY_K8S_HOME/bin}
IMAGES_DIR=$RAMIFY_K8S_HOME/images
TOOLS_DIR=$RAMIFY_K8S_HOME/tools
# What the machine looked like before `up` (sysctls, host paths that already existed):
# `down` restores it and check-clean compares against it, so it must survive `down`.
BASELINE=$RAMIFY_K8S_HOME/baseline

# Everything of one running cluster: certificates, kubeconfigs, logs, PIDs, etcd data,
# containerd's root and state, the kubelet's root, the XFS image. `down` deletes it.
RAMIFY_CLUSTER_DIR=${RAMIFY_CLUSTER_DIR:-/var/tmp/ramify-cluster}
D=$RAMIFY_CLUSTER_DIR
case $D in
  /*/*) ;;
  *) echo "RAMIFY_CLUSTER_DIR must be an absolute path below a top-level directory, not '$D'" >&2; exit 1 ;;
esac

K8S_VERSION=v1.37.2
NODE_NAME=${RAMIFY_NODE_NAME:-ramify-node}
# The node's address lives on the cluster's own bridge, not on the machine's interface:
# the API server, the kubelet and NodePorts are reachable from this machine and its
# Pods only. Pod and Service ranges must overlap nothing in `ip route` (up.sh checks).
NODE_IP=${RAMIFY_NODE_IP:-10.245.0.1}
POD_CIDR=${RAMIFY_POD_CIDR:-10.244.0.0/24}
SERVICE_CIDR=${RAMIFY_SERVICE_CIDR:-10.96.0.0/16}
BRIDGE=${RAMIFY_BRIDGE:-ramify0}
CLUSTER_DOMAIN=cluster.local

ETCD_PORT=2379
ETCD_PEER_PORT=2380
APISERVER_PORT=6443
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
KCM_PORT=10257
SCHEDULER_PORT=10259
PROXY_METRICS_PORT=10249
PROXY_HEALTHZ_PORT=10256

# Host paths some component uses whatever it is told (the kubelet's device-plugin
# directory and /var/log/containers links, libcni's result cache, containerd 1.6's shim
# sockets). `down` removes the ones `up` found absent.
HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /opt/containerd /etc/cni)

# sysctls the kubelet, kube-proxy or the CNI bridge plugin may change; up records them
# and down writes them back.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.all.route_localnet
  net.ipv6.conf.all.forwarding vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

# Binaries that make up the cluster; check-clean looks for processes running them.
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd coredns)

KUBECTL=$RAMIFY_K8S_BIN/kubectl

# --- helpers ---------------------------------------------------------------------------

_T0=${EPOCHREALTIME/./}
SCRIPT_NAME=${SCRIPT_NAME:-$(basename "$0" .sh)}

# shellcheck disable=SC2120 # the start time is optional
elapsed() {
  local d=$((${EPOCHREALTIME/./} - ${1:-$_T0}))
  printf '%d.%d' $((d / 1000000)) $(((d / 100000) % 10))
}
log() { printf '[%s %6ss] %s\n' "$SCRIPT_NAME" "$(elapsed)" "$*"; }
warn() { printf '[%s %6ss] WARNING: %s\n' "$SCRIPT_NAME" "$(elapsed)" "$*" >&2; }
die() {
  printf '[%s %6ss] ERROR: %s\n' "$SCRIPT_NAME" "$(elapsed)" "$*" >&2
  exit 1
}
now_us() { echo "${EPOCHREALTIME/./}"; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (it starts containerd and the kubelet, mounts XFS, changes iptables)"
}

# ip2int 10.1.2.3 -> integer; int2ip reverses it.
ip2int() {
  local IFS=.
  # shellcheck disable=SC2086
  set -- $1
  echo $((($1 << 24) | ($2 << 16) | ($3 << 8) | $4))
}
int2ip() { echo "$(($1 >> 24 & 255)).$(($1 >> 16 & 255)).$(($1 >> 8 & 255)).$(($1 & 255))"; }
# cidr_nth 10.96.0.0/16 10 -> 10.96.0.10
cidr_nth() { int2ip $(($(ip2int "${1%/*}") + $2)); }
# cidrs_overlap A/n B/m: true when the two ranges share an address.
cidrs_overlap() {
  local a=${1%/*} an=${1#*/} b=${2%/*} bn=${2#*/}
  [ "$an" = "$1" ] && an=32
  [ "$bn" = "$2" ] && bn=32
  local n=$((an < bn ? an : bn))
  local mask=$(((0xffffffff << (32 - n)) & 0xffffffff))
  [ $(($(ip2int "$a") & mask)) -eq $(($(ip2int "$b") & mask)) ]
}

POD_GATEWAY=$(cidr_nth "$POD_CIDR" 1)
KUBERNETES_SVC_IP=$(cidr_nth "$SERVICE_CIDR" 1)
DNS_IP=$(cidr_nth "$SERVICE_CIDR" 10)

# The admin kubeconfig of the running cluster.
kc() { "$KUBECTL" --kubeconfig "$D/kubeconfig" "$@"; }

# pid_alive NAME: the process recorded in $D/pids/NAME.pid is running the binary it was
# started as (guards against a recycled PID).
pid_of() { [ -f "$D/pids/$1.pid" ] && cat "$D/pids/$1.pid"; }
pid_alive() {
  local pid exe
  pid=$(pid_of "$1") || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "$(basename "${exe% (deleted)}")" = "$(cat "$D/pids/$1.exe" 2>/dev/null)" ]
}

# Why this machine cannot run the test cluster, or nothing when it can. (Missing
# binaries and packages are not reasons: build.sh provides them.)
cluster_unsupported_reason() {
  if [ "$(id -u)" != 0 ]; then echo "not root (the cluster runs containerd and the kubelet, mounts XFS, changes iptables)"; return; fi
  if [ ! -e /dev/loop-control ]; then echo "no loop devices (/dev/loop-control)"; return; fi
  if ! grep -qw overlay /proc/filesystems && ! modprobe overlay 2>/dev/null; then echo "no overlayfs in the kernel"; return; fi
  if ! grep -qw xfs /proc/filesystems && ! modprobe xfs 2>/dev/null; then echo "no XFS in the kernel"; return; fi
  if [ ! -d /proc/sys/net/bridge ] && ! modprobe br_netfilter 2>/dev/null; then echo "no br_netfilter in the kernel"; return; fi
  if ! grep -qE '(^|[[:space:]])memory([[:space:]]|$)' /proc/cgroups && ! grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    echo "no memory cgroup controller"; return
  fi
  if ! ip link add ramify-probe0 type bridge 2>/dev/null; then echo "cannot create network bridges (no CAP_NET_ADMIN?)"; return; fi
  ip link del ramify-probe0
}

# usage: prints the calling script's leading comment block (its documentation).
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
