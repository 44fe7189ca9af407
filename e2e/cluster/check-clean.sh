#!/usr/bin/env bash
# Fails, listing each one, when anything of the test cluster is left on this machine:
# processes of its binaries, containers or shims, mounts under the cluster directory or
# /var/lib/kubelet, the loop device of its XFS image, KUBE-*/CNI-*/RAMIFY-* iptables
# chains, network namespaces or links it created, cgroups, host paths it created, and
# sysctls that differ from what up.sh found.
#
#   e2e/cluster/check-clean.sh
set -euo pipefail
SCRIPT_NAME=check-clean
. "$(dirname "$0")/lib.sh"

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then usage; exit 0; fi

LEFT=()
left() { LEFT+=("$*"); }

# Processes: our binaries (by executable path), containerd and its shims serving this
# cluster (by the socket in their command line), anything in a Pod cgroup.
check_processes() {
  local pid exe b p
  while read -r pid exe; do
    exe=${exe% (deleted)}
    for b in "${K8S_BINARIES[@]}"; do
      if [ "$exe" = "$RAMIFY_K8S_BIN/$b" ]; then left "process ${pid#/proc/} ($exe)"; fi
    done
  done < <(find /proc/[0-9]*/exe -maxdepth 0 -printf '%h %l\n' 2>/dev/null)
  while read -r p; do
    p=${p%/cmdline}
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    case $(basename "${exe% (deleted)}") in
      containerd | containerd-shim* | runc) left "process ${p#/proc/} ($(tr '\0' ' ' <"$p/cmdline" | cut -c1-120))" ;;
    esac
  done < <(grep -laF -- "$D/" /proc/[0-9]*/cmdline 2>/dev/null)
  for p in /sys/fs/cgroup/*/kubepods; do
    [ -d "$p" ] || continue
    [ -z "$(find "$p" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] || left "processes in Pod cgroups under $p"
  done
}

check_mounts() {
  local m
  while read -r m; do
    left "mount $m"
  done < <(awk -v a="$D" -v b=/var/lib/kubelet '{ m = $5; gsub(/\\040/, " ", m)
      if (m == a || index(m, a "/") == 1 || m == b || index(m, b "/") == 1) print m }' /proc/self/mountinfo)
}

check_loop() {
  local l
  while read -r l; do
    [ -n "$l" ] && left "loop device $l"
  done < <(losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v f="$D/xfs.img" 'index($0, f)')
}

check_iptables() {
  local ipt c
  for ipt in iptables ip6tables iptables-legacy ip6tables-legacy; do
    command -v "$ipt-save" >/dev/null || continue
    while read -r c; do
      [ -n "$c" ] && left "$ipt chain $c"
    done < <("$ipt-save" 2>/dev/null | awk '/^\*/ {t = substr($1, 2)} /^:(KUBE-|CNI-|RAMIFY-)/ {print t "/" substr($1, 2)}')
  done
}

check_network() {
  local n l
  if ip link show "$BRIDGE" >/dev/null 2>&1; then left "bridge $BRIDGE"; fi
  for l in $(ip -o link show type veth 2>/dev/null | awk -F': ' '/master '"$BRIDGE"' / {print $2}'); do
    left "veth $l on $BRIDGE"
  done
  if [ -d /run/netns ]; then
    for n in /run/netns/cni-*; do
      [ -e "$n" ] || continue
      grep -qx "netns $(basename "$n")" "$BASELINE" 2>/dev/null || left "network namespace $(basename "$n")"
    done
  fi
  if ip -4 route show table all | grep -qE "^($SERVICE_CIDR|$POD_CIDR) "; then
    left "routes to $SERVICE_CIDR or $POD_CIDR"
  fi
}

check_cgroups() {
  local c
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    if [ -d "$c" ]; then left "cgroup $c"; fi
  done
}

check_host() {
  if [ -e "$D" ]; then left "cluster directory $D"; fi
  [ -f "$BASELINE" ] || return 0
  local kind name value p
  while read -r kind name value; do
    [ "$kind" = sysctl ] || continue
    p=/proc/sys/${name//.//}
    if [ -f "$p" ] && [ "$(cat "$p")" != "$value" ]; then
      left "sysctl $name = $(cat "$p") (was $value before up)"
    fi
  done <"$BASELINE"
  for p in "${HOST_PATHS[@]}"; do
    if [ -e "$p" ] && ! grep -qx "path $p" "$BASELINE"; then left "$p (created by the cluster)"; fi
  done
}

check_processes
check_mounts
check_loop
check_iptables
check_network
check_cgroups
check_host

if [ ${#LEFT[@]} -gt 0 ]; then
  printf '[%s] left behind by the test cluster:\n' "$SCRIPT_NAME" >&2
  printf '  %s\n' "${LEFT[@]}" >&2
  exit 1
fi
log "clean: no process, mount, loop device, iptables chain, network namespace, link, cgroup, host path or sysctl of the test cluster left"
