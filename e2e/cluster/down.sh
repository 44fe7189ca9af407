#!/usr/bin/env bash
# Stops the test cluster and removes every trace of it: processes (by the PIDs up.sh
# recorded, then whatever still runs in the Pods' cgroups or containerd shims of this
# cluster), mounts, the loop device, iptables chains, the bridge, cgroups, host paths
# the components created, the cluster directory; and writes back the sysctls up.sh
# found. Safe to run twice, or with nothing running. Ends with check-clean.sh and fails
# when something is left.
#
#   e2e/cluster/down.sh
set -euo pipefail
SCRIPT_NAME=cluster-down
. "$(dirname "$0")/lib.sh"

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then usage; exit 0; fi
need_root

PROBLEMS=0
# try DESCRIPTION CMD...: a clean-up step that may fail without stopping the others.
try() {
  local what=$1
  shift
  if ! "$@"; then
    warn "could not $what"
    PROBLEMS=$((PROBLEMS + 1))
  fi
}

# stop NAME [SECONDS]: SIGTERM, then SIGKILL after SECONDS, the process up.sh recorded.
stop() {
  local name=$1 secs=${2:-10} pid
  if ! pid_alive "$name"; then
    rm -f "$D/pids/$name.pid"
    return 0
  fi
  pid=$(pid_of "$name")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((secs * 10))); do
    pid_alive "$name" || break
    sleep 0.1
  done
  if pid_alive "$name"; then
    warn "$name (PID $pid) ignored SIGTERM for ${secs}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do pid_alive "$name" || break; sleep 0.1; done
  fi
  rm -f "$D/pids/$name.pid"
  log "stopped $name (PID $pid)"
}

CTR=(ctr --address "$D/containerd/containerd.sock" -n k8s.io)

# Pods first, through the cluster itself, while everything still runs: the kubelet then
# stops containers, tears down Pod networking (CNI DEL) and unmounts volumes the normal
# way. Bounded: whatever remains is swept below.
drain_pods() {
  pid_alive kube-apiserver && pid_alive kubelet && [ -f "$D/kubeconfig" ] || return 0
  # Controllers and the scheduler first, so nothing replaces the deleted Pods.
  stop kube-controller-manager
  stop kube-scheduler
  local t
  t=$(now_us)
  kc delete pods --all --all-namespaces --grace-period=2 --wait=false >/dev/null 2>&1 || return 0
  for _ in $(seq 1 150); do
    [ -z "$(kc get pods --all-namespaces -o name 2>/dev/null)" ] && break
    sleep 0.2
  done
  log "Pods deleted in $(elapsed "$t")s"
}

# Every process still in a Pod cgroup (or a shim of this cluster's containerd) gets
# SIGKILL: containers outlive a killed kubelet and shims outlive containerd.
kill_leftover_processes() {
  local pids=() p f
  for f in /sys/fs/cgroup/*/kubepods; do
    [ -d "$f" ] || continue
    while read -r p; do pids+=("$p"); done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
  while read -r p; do
    p=${p%/cmdline}
    case $(basename "$(readlink "$p/exe" 2>/dev/null)") in
      containerd-shim*) pids+=("${p#/proc/}") ;;
    esac
  done < <(grep -laF -- "$D/containerd/containerd.sock" /proc/[0-9]*/cmdline 2>/dev/null)
  [ ${#pids[@]} -gt 0 ] || return 0
  mapfile -t pids < <(printf '%s\n' "${pids[@]}" | sort -un)
  log "killing ${#pids[@]} leftover container/shim processes"
  kill -KILL "${pids[@]}" 2>/dev/null || true
  sleep 0.5
}

stop_containers() {
  pid_alive containerd || return 0
  local t
  for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  sleep 0.5
  for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
  for t in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers delete "$t" >/dev/null 2>&1 || true; done
}

# Mount points below a directory, deepest first (mountinfo escapes spaces as \040).
mounts_under() {
  awk -v d="$1" '{ m = $5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print m }' /proc/self/mountinfo |
    sort -r
}

unmount_all() {
  local dir m n=0
  for dir in "$D" /var/lib/kubelet; do
    while read -r m; do
      [ -n "$m" ] || continue
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || { warn "could not unmount $m"; PROBLEMS=$((PROBLEMS + 1)); }
      n=$((n + 1))
    done < <(mounts_under "$dir")
  done
  [ "$n" = 0 ] || log "unmounted $n mounts"
}

detach_loop() {
  local dev
  for dev in $(losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v f="$D/xfs.img" 'index($0, f) {print $1}'); do
    try "detach $dev" losetup -d "$dev"
    log "detached $dev"
  done
}

remove_network() {
  local l
  # Pod veths normally die with their network namespaces; catch any that did not.
  for l in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$l" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    try "delete the bridge $BRIDGE" ip link del "$BRIDGE"
    log "deleted bridge $BRIDGE (its routes go with it)"
  fi
}

# KUBE-* (kube-proxy, kubelet), CNI-* (portmap, bridge) and RAMIFY-* (up.sh) chains, and
# the rules in built-in chains that jump to them, in every table, IPv4 and IPv6.
remove_chains() {
  local ipt table rule chain n=0
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in raw mangle nat filter; do
      "$ipt" -t "$table" -S >/dev/null 2>&1 || continue
      while read -r rule; do
        # shellcheck disable=SC2086 # the rule is iptables-save syntax, split on purpose
        eval "$ipt -t $table -D ${rule#-A }" 2>/dev/null && n=$((n + 1))
      done < <("$ipt" -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE-|CNI-|RAMIFY-)' | grep -vE '^-A (KUBE-|CNI-|RAMIFY-)')
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-|RAMIFY-)/ {print $2}'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-|RAMIFY-)/ {print $2}'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null && n=$((n + 1))
      done
    done
  done
  [ "$n" = 0 ] || log "removed $n iptables rules and chains"
}

remove_cgroups() {
  local f
  for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$f" ] || continue
    find "$f" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$f" ] || { warn "could not remove cgroup $f"; PROBLEMS=$((PROBLEMS + 1)); }
  done
}

restore_host() {
  if [ ! -f "$BASELINE" ]; then
    log "no baseline ($BASELINE): sysctls and host paths left as they are"
    return 0
  fi
  local kind name value p
  while read -r kind name value; do
    [ "$kind" = sysctl ] || continue
    p=/proc/sys/${name//.//}
    if [ -f "$p" ] && [ "$(cat "$p")" != "$value" ]; then try "restore $name" sysctl -qw "$name=$value"; fi
  done <"$BASELINE"
  for p in "${HOST_PATHS[@]}"; do
    if [ -e "$p" ] && ! grep -qx "path $p" "$BASELINE"; then
      [ -z "$(mounts_under "$p")" ] || { warn "$p still has mounts; not removing it"; PROBLEMS=$((PROBLEMS + 1)); continue; }
      rm -rf "$p"
    fi
  done
}

main() {
  local recorded=0 n
  for n in "$D"/pids/*.pid; do [ -f "$n" ] && recorded=1; done
  if [ "$recorded" = 1 ]; then log "stopping the test cluster in $D"; else log "no running cluster recorded in $D; sweeping for remains"; fi

  drain_pods
  # Node side first, so nothing restarts containers while they are being removed.
  stop kube-proxy
  stop kubelet
  stop kube-controller-manager
  stop kube-scheduler
  stop_containers
  kill_leftover_processes
  stop containerd
  kill_leftover_processes # shims containerd started in its last moments
  stop kube-apiserver
  stop etcd

  # kube-proxy's own clean-up of its rules (iptables, ipvs and nftables modes).
  if [ -x "$RAMIFY_K8S_BIN/kube-proxy" ]; then
    "$RAMIFY_K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  remove_chains
  unmount_all
  detach_loop
  remove_network
  remove_cgroups
  restore_host
  if [ -e "$D" ]; then
    if [ ! -e "$D/.ramify-test-cluster" ] && [ -n "$(ls -A "$D")" ]; then
      warn "$D is not a test cluster directory (no .ramify-test-cluster mark); not deleting it"
      PROBLEMS=$((PROBLEMS + 1))
    elif [ -n "$(mounts_under "$D")" ]; then
      warn "mounts remain under $D; leaving it"
      PROBLEMS=$((PROBLEMS + 1))
    else
      local t
      t=$(now_us)
      rm -rf "$D"
      log "removed $D in $(elapsed "$t")s"
    fi
  fi

  if ! "$CLUSTER_SRC/check-clean.sh"; then
    die "the machine is not clean after down (list above)"
  fi
  [ "$PROBLEMS" = 0 ] || die "$PROBLEMS clean-up steps failed (warnings above)"
  log "down in $(elapsed)s"
}

main
