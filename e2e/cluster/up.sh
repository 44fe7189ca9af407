#!/usr/bin/env bash
# Starts a throwaway single-node Kubernetes cluster on this machine: etcd, the control
# plane, containerd, the kubelet, kube-proxy and CoreDNS as host processes, with fresh
# certificates, keys and kubeconfigs in ${RAMIFY_CLUSTER_DIR:-/var/tmp/ramify-cluster}.
# Waits until the node is Ready and DNS answers from a Pod, then prints the KUBECONFIG
# to use. If anything fails (or it is interrupted) it tears down what it started.
#
#   e2e/cluster/up.sh
#
# Needs root and the binaries of build.sh. Images: every archive images.sh has built is
# imported; the ones the cluster itself needs (pause, CoreDNS, the DNS probe) are built
# first if missing. RAMIFY_CLUSTER_FAIL_AT=<step> makes it fail on purpose at that step
# (to test the clean-up).
set -euo pipefail
SCRIPT_NAME=cluster-up
. "$(dirname "$0")/lib.sh"

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then usage; exit 0; fi

PKI=$D/pki
CFG=$D/config
LOGS=$D/logs
STEP=preflight
UP_OK=0

# --- failure handling --------------------------------------------------------------------

on_exit() {
  local rc=$?
  [ "$UP_OK" = 1 ] && return 0
  trap - EXIT INT TERM
  if [ -n "${IMPORT_PID:-}" ]; then kill "$IMPORT_PID" 2>/dev/null || true; fi
  echo >&2
  warn "up failed during step '$STEP' (exit $rc); logs: $LOGS (kept as $RAMIFY_K8S_HOME/last-failed-up-logs)"
  # The cluster directory goes away with the teardown; keep the logs for the post-mortem.
  if [ -d "$LOGS" ]; then
    rm -rf "$RAMIFY_K8S_HOME/last-failed-up-logs"
    cp -r "$LOGS" "$RAMIFY_K8S_HOME/last-failed-up-logs" 2>/dev/null || true
  fi
  if [ "${STARTED_TEARDOWN_SAFE:-0}" = 1 ]; then
    warn "tearing down what was started"
    "$CLUSTER_SRC/down.sh" >&2 || warn "down.sh reported leftovers (see above)"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'warn "interrupted"; exit 130' INT
trap 'warn "terminated"; exit 143' TERM

step() {
  STEP=$1
  if [ "${RAMIFY_CLUSTER_FAIL_AT:-}" = "$1" ]; then
    die "failing on purpose at step '$1' (RAMIFY_CLUSTER_FAIL_AT)"
  fi
}

# start NAME BINARY ARGS...: runs BINARY in its own session (so a Ctrl-C in the
# terminal that ran `make cluster-up` later does not reach it), logging to logs/NAME.log.
start() {
  local name=$1 bin=$2
  shift 2
  # setsid in a non-interactive script is no process group leader, so it execs BINARY
  # in place and $! is BINARY's PID.
  setsid "$bin" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$D/pids/$name.pid"
  basename "$bin" >"$D/pids/$name.exe"
}

# wait_for NAME SECONDS WHAT CMD...: polls CMD until it succeeds; fails early with the
# end of NAME's log when NAME's process is gone, or when CMD returns 99 (will never
# succeed). CMD's last error output is shown when it gives up.
wait_for() {
  local name=$1 secs=$2 what=$3 t rc
  shift 3
  t=$(now_us)
  while :; do
    rc=0
    "$@" >/dev/null 2>"$LOGS/wait.err" || rc=$?
    [ "$rc" = 0 ] && break
    if [ "$rc" = 99 ]; then
      cat "$LOGS/wait.err" >&2
      die "$what: gave up (see above)"
    fi
    if [ -n "$name" ] && ! pid_alive "$name"; then
      tail -n 25 "$LOGS/$name.log" >&2 || true
      die "$name exited while waiting for $what (log: $LOGS/$name.log)"
    fi
    if [ $((${EPOCHREALTIME/./} - t)) -gt $((secs * 1000000)) ]; then
      if [ -n "$name" ]; then tail -n 25 "$LOGS/$name.log" >&2 || true; fi
      cat "$LOGS/wait.err" >&2
      die "timed out after ${secs}s waiting for $what${name:+ (log: $LOGS/$name.log)}"
    fi
    sleep 0.2
  done
  log "$what after $(elapsed "$t")s"
}

render() { # render TEMPLATE KEY=VALUE...: fills @KEY@ placeholders
  local f=$1 kv expr=()
  shift
  for kv in "$@"; do expr+=(-e "s#@${kv%%=*}@#${kv#*=}#g"); done
  sed "${expr[@]}" "$f"
}

# --- preflight ---------------------------------------------------------------------------

preflight() {
  local b missing=() reason
  reason=$(cluster_unsupported_reason)
  [ -z "$reason" ] || die "this machine cannot run the test cluster: $reason"
  for b in "${K8S_BINARIES[@]}"; do [ -x "$RAMIFY_K8S_BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]} in $RAMIFY_K8S_BIN: run make cluster-build (e2e/cluster/build.sh)"
  for b in containerd containerd-shim-runc-v2 runc ctr openssl curl iptables ip mkfs.xfs losetup setsid; do
    command -v "$b" >/dev/null || missing+=("$b")
  done
  [ -x /usr/lib/cni/bridge ] || missing+=("/usr/lib/cni/bridge (containernetworking-plugins)")
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: run make cluster-build, which installs the Debian packages"

  # A cluster of ours still running, or the remains of one: the first is an error, the
  # second is cleaned first so this run starts from a clean machine.
  local n
  for n in etcd kube-apiserver containerd kubelet; do
    pid_alive "$n" && die "a test cluster is already running ($D, $n PID $(pid_of "$n")); run e2e/cluster/down.sh first"
  done
  # Processes of the cluster binaries that $D does not know: a cluster started with
  # another RAMIFY_CLUSTER_DIR. Cleaning "remains" now would pull its network away.
  local strays
  # (find fails on processes that exit while it looks: not an error here.)
  strays=$( { find /proc/[0-9]*/exe -maxdepth 0 -printf '%h %l\n' 2>/dev/null || true; } |
    awk -v b="$RAMIFY_K8S_BIN/" 'index($2, b) == 1 && $2 !~ /\/kubectl$/ {sub("/proc/", "", $1); printf "%s ", $1}')
  [ -z "$strays" ] || die "cluster processes run that $D does not record (PIDs $strays): a cluster with another RAMIFY_CLUSTER_DIR? Stop it with its down.sh"
  if [ -e "$D" ] || ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "remains of an earlier cluster found; cleaning them first"
    "$CLUSTER_SRC/down.sh" || die "could not clean the remains of the earlier cluster"
  fi

  # The cluster's ranges must be free: a clash would send cluster traffic out of (or take
  # traffic away from) the machine's own interfaces.
  local r dst
  while read -r dst _; do
    [ "$dst" = default ] && continue
    for r in "$POD_CIDR" "$SERVICE_CIDR" "$NODE_IP/32"; do
      cidrs_overlap "$r" "$dst" && die "$r overlaps the route $dst on this machine; pick free ranges with RAMIFY_POD_CIDR / RAMIFY_SERVICE_CIDR / RAMIFY_NODE_IP"
    done
  done < <(ip -4 route show table all | awk '$1 != "broadcast" {
      for (i = 1; i <= 2; i++) if ($i ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(\/[0-9]+)?$/) { print $i; break } }' | sort -u)

  local port
  for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" \
    "$KCM_PORT" "$SCHEDULER_PORT" "$PROXY_METRICS_PORT" "$PROXY_HEALTHZ_PORT"; do
    if ss -Htln "sport = :$port" | grep -q .; then
      die "TCP port $port is in use ($(ss -Htlnp "sport = :$port" | awk '{print $NF}' | head -1)); the test cluster needs it"
    fi
  done
}

# --- the machine's state before we touch it ------------------------------------------------

record_baseline() {
  local s p
  mkdir -p "$RAMIFY_K8S_HOME"
  {
    for s in "${SYSCTLS[@]}"; do
      p=/proc/sys/${s//.//}
      [ -f "$p" ] && echo "sysctl $s $(cat "$p")"
    done
    for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] && echo "path $p"; done
    [ -d /run/netns ] && for p in /run/netns/*; do [ -e "$p" ] && echo "netns $(basename "$p")"; done
    true
  } >"$BASELINE.tmp"
  mv "$BASELINE.tmp" "$BASELINE"
}

# --- network: one bridge for the node address and the Pods -----------------------------------

setup_network() {
  # The bridge CNI plugin will attach Pods here; creating it ourselves lets the node
  # address exist before the kubelet starts. The Pod gateway, the node address and the
  # Service range all live on this bridge, so nothing of the cluster is routed via the
  # machine's interface: a packet for an unused Service address dies on the bridge
  # instead of following the default route.
  ip link add "$BRIDGE" type bridge
  ip addr add "$POD_GATEWAY/${POD_CIDR#*/}" dev "$BRIDGE"
  ip addr add "$NODE_IP/32" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  # Routed because kube-proxy DNATs a Pod's Service traffic back onto the bridge; and
  # bridged traffic must see iptables, or the reply of a Pod to another Pod on the bridge
  # that reached it through a Service would skip the un-DNAT.
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  # Pods may talk to Pods, Services and the node, nothing else: without this their
  # packets would be forwarded out of the machine's interface with Pod source addresses.
  iptables -t raw -N RAMIFY-ISOLATE
  iptables -t raw -A RAMIFY-ISOLATE -d "$POD_CIDR" -j RETURN
  iptables -t raw -A RAMIFY-ISOLATE -d "$SERVICE_CIDR" -j RETURN
  iptables -t raw -A RAMIFY-ISOLATE -d "$NODE_IP/32" -j RETURN
  iptables -t raw -A RAMIFY-ISOLATE -j DROP
  iptables -t raw -I PREROUTING -i "$BRIDGE" -j RAMIFY-ISOLATE
}

# --- certificates and kubeconfigs -----------------------------------------------------------

# cert NAME SUBJECT EXTENDED-KEY-USAGE [SUBJECT-ALT-NAMES]: an EC key and a certificate
# signed by the cluster CA (or by $CA).
cert() {
  local name=$1 subj=$2 eku=$3 san=${4:-}
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/${CA:-ca}.crt" -CAkey "$PKI/${CA:-ca}.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig FILE CERT-NAME [SERVER]: credentials embedded, so the file works on its own.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ramify-test
  cluster:
    server: ${3:-https://$NODE_IP:$APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$2.crt")
    client-key-data: $(base64 -w0 "$PKI/$2.key")
contexts:
- name: ramify-test
  context: {cluster: ramify-test, user: $2}
current-context: ramify-test
EOF
  chmod 0600 "$1"
}

make_pki() {
  mkdir -p "$PKI" "$CFG"
  chmod 0700 "$PKI"
  # One CA signs everything (etcd included): the cluster lives minutes on one machine,
  # separate trust domains would only add files.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=ramify-test-cluster-ca" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$PKI/ca.crt"
  local svc=kubernetes.default.svc
  cert etcd-server "/CN=etcd-server" serverAuth "IP:127.0.0.1,DNS:localhost"
  cert apiserver-etcd-client "/CN=kube-apiserver-etcd-client" clientAuth
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:$KUBERNETES_SVC_IP,IP:$NODE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:$svc,DNS:$svc.$CLUSTER_DOMAIN,DNS:localhost"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert admin "/O=system:masters/CN=ramify-test-admin" clientAuth
  cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
  cert kube-proxy "/CN=system:kube-proxy" clientAuth
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  # The aggregation layer's CA and client (kubeadm's front-proxy): without it every
  # component delegating authentication logs a missing requestheader CA bundle, and
  # aggregated API servers (metrics-server, ...) could not be installed.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/front-proxy-ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/front-proxy-ca.key" -subj "/CN=ramify-test-front-proxy-ca" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$PKI/front-proxy-ca.crt"
  CA=front-proxy-ca cert front-proxy-client "/CN=front-proxy-client" clientAuth
  # The service-account token signing key.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  kubeconfig "$D/kubeconfig" admin
  local c
  for c in kube-controller-manager kube-scheduler kube-proxy kubelet; do kubeconfig "$CFG/$c.kubeconfig" "$c"; done
}

# --- control plane ---------------------------------------------------------------------------

start_etcd() {
  start etcd "$RAMIFY_K8S_BIN/etcd" --name "$NODE_NAME" --data-dir "$D/etcd" \
    --listen-client-urls "https://127.0.0.1:$ETCD_PORT" --advertise-client-urls "https://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" \
    --cert-file "$PKI/etcd-server.crt" --key-file "$PKI/etcd-server.key" \
    --trusted-ca-file "$PKI/ca.crt" --client-cert-auth \
    --unsafe-no-fsync # a throwaway cluster: durability would only cost fsyncs
}

etcd_healthy() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/apiserver-etcd-client.crt" \
    --key "$PKI/apiserver-etcd-client.key" "https://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'
}

start_apiserver() {
  start kube-apiserver "$RAMIFY_K8S_BIN/kube-apiserver" \
    --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$APISERVER_PORT" \
    --etcd-servers "https://127.0.0.1:$ETCD_PORT" --etcd-cafile "$PKI/ca.crt" \
    --etcd-certfile "$PKI/apiserver-etcd-client.crt" --etcd-keyfile "$PKI/apiserver-etcd-client.key" \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --profiling=false
}

apiserver_ready() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$NODE_IP:$APISERVER_PORT/readyz" | grep -qx ok
}

start_controllers() {
  local kc=$CFG/kube-controller-manager.kubeconfig
  start kube-controller-manager "$RAMIFY_K8S_BIN/kube-controller-manager" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" --use-service-account-credentials \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --allocate-node-cidrs --cluster-cidr "$POD_CIDR" --node-cidr-mask-size "${POD_CIDR#*/}" \
    --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false
  kc=$CFG/kube-scheduler.kubeconfig
  start kube-scheduler "$RAMIFY_K8S_BIN/kube-scheduler" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false
}

# --- node -----------------------------------------------------------------------------------

start_containerd() {
  mkdir -p "$D/containerd" "$D/cni/net.d" "$D/cni/ipam"
  # Root, state, sockets, runc's state and Pod network namespaces all under $D, so that
  # down.sh finds every mount in one place. Only what differs from the defaults.
  cat >"$CFG/containerd.toml" <<EOF
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$D/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$D/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Nothing can be pulled: the sandbox image is the one images.sh built and up imports.
  sandbox_image = "registry.k8s.io/pause:3.10"
  # containerd 1.6 on a cgroup v1 host inside a container cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$D/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
    max_conf_num = 1
EOF
  # hairpinMode: a Pod can reach itself through its own Service. No ipMasq: Pods have no
  # business outside the cluster (and RAMIFY-ISOLATE drops it anyway).
  cat >"$D/cni/net.d/10-ramify.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ramify",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$D/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  start containerd "$(command -v containerd)" --config "$CFG/containerd.toml"
}

containerd_ready() { ctr --address "$D/containerd/containerd.sock" version; }

start_kubelet() {
  cat >"$CFG/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The CI hosts are cgroup v1, which 1.35+ kubelets refuse unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$D/containerd/containerd.sock
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
# Pods get no upstream resolver or search domains from the host: the cluster has no
# business resolving outside names.
resolvConf: ""
podLogsDir: $D/pod-logs
failSwapOn: false
# Never evict or garbage-collect on a developer's full disk: imported images cannot be
# pulled back.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
EOF
  start kubelet "$RAMIFY_K8S_BIN/kubelet" --config "$CFG/kubelet.yaml" \
    --kubeconfig "$CFG/kubelet.kubeconfig" --root-dir "$D/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
}

start_kube_proxy() {
  cat >"$CFG/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CFG/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
# NodePorts on the node address only, never on the machine's own interface.
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  localhostNodePorts: false # else kube-proxy sets route_localnet
# 0 = leave the host's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy "$RAMIFY_K8S_BIN/kube-proxy" --config "$CFG/kube-proxy.yaml"
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# --- storage ---------------------------------------------------------------------------------

XFS_SIZE=${RAMIFY_XFS_SIZE:-8G}
PV_COUNT=${RAMIFY_PV_COUNT:-3}

setup_storage() {
  truncate -s "$XFS_SIZE" "$D/xfs.img"
  mkfs.xfs -q -m reflink=1 "$D/xfs.img"
  local loop
  loop=$(losetup --find --show "$D/xfs.img")
  echo "$loop" >"$D/xfs.loop"
  mkdir -p "$D/xfs"
  mount -t xfs "$loop" "$D/xfs"
  # Each PV is a directory of the one filesystem; the capacity is what a claim may ask
  # for, not a quota. Owned by 999 (the storage Pod's uid and fsGroup), so an
  # OnRootMismatch fsGroup policy has nothing to change.
  local i cap
  cap=$(($(stat -f -c '%b*%S' "$D/xfs") / 1024 / 1024 / 1024))Gi
  for i in $(seq 0 $((PV_COUNT - 1))); do
    install -d -m 2775 -o 999 -g 999 "$D/xfs/pv-$i"
  done
  kc apply -f "$CLUSTER_SRC/manifests/storage.yaml" >/dev/null
  for i in $(seq 0 $((PV_COUNT - 1))); do
    render "$CLUSTER_SRC/manifests/local-pv.yaml" "NAME=ramify-xfs-$i" "PATH=$D/xfs/pv-$i" \
      "CAPACITY=$cap" "NODE_NAME=$NODE_NAME"
    echo ---
  done | kc apply -f - >/dev/null
  log "XFS volume: $XFS_SIZE sparse file on $loop (reflink on), $PV_COUNT local PVs of $cap in StorageClass ramify-xfs"
}

# --- main ------------------------------------------------------------------------------------

main() {
  step preflight
  preflight
  # The cluster images are needed before the kubelet starts; build them now (seconds,
  # or nothing when current) so a missing binary fails before anything is started.
  "$CLUSTER_SRC/images.sh" --no-import cluster | sed 's/^/  /'
  log "starting a $K8S_VERSION cluster in $D (node $NODE_NAME at $NODE_IP, Pods $POD_CIDR, Services $SERVICE_CIDR)"

  step baseline
  record_baseline
  mkdir -p "$D"/{pids,logs,config} "$LOGS"
  # down.sh deletes only a directory carrying this mark.
  touch "$D/.ramify-test-cluster"
  STARTED_TEARDOWN_SAFE=1

  step network
  setup_network

  step certs
  make_pki
  log "certificates, keys and kubeconfigs generated"

  step etcd
  start_etcd
  # containerd does not depend on the control plane: let it start meanwhile.
  start_containerd
  wait_for etcd 30 "etcd healthy" etcd_healthy

  step apiserver
  start_apiserver
  step containerd
  wait_for containerd 30 "containerd ready" containerd_ready
  step images
  "$CLUSTER_SRC/images.sh" --import-only cluster | sed 's/^/  /'
  # The big images are not needed to bring the node up: import them meanwhile.
  "$CLUSTER_SRC/images.sh" --import-only postgres ramify seaweedfs >"$LOGS/import.log" 2>&1 &
  IMPORT_PID=$!
  wait_for kube-apiserver 90 "kube-apiserver ready" apiserver_ready

  step controllers
  start_controllers

  step storage
  setup_storage

  step kubelet
  start_kubelet
  step kube-proxy
  start_kube_proxy
  step node-ready
  wait_for kubelet 90 "node $NODE_NAME registered" kc get node "$NODE_NAME"
  wait_for kubelet 120 "node $NODE_NAME Ready" node_ready

  step coredns
  render "$CLUSTER_SRC/manifests/coredns.yaml" "DNS_IP=$DNS_IP" "CLUSTER_DOMAIN=$CLUSTER_DOMAIN" | kc apply -f - >/dev/null
  wait_for "" 120 "CoreDNS ready" kc -n kube-system wait --for=condition=Available deploy/coredns --timeout=2s

  step dns
  # From the host straight at the kube-dns Service address (the route via the bridge and
  # kube-proxy's rules), then from a Pod (its resolv.conf and search path too).
  "$TOOLS_DIR/dnsprobe" -server "$DNS_IP:53" -timeout 30s "kubernetes.default.svc.$CLUSTER_DOMAIN" >/dev/null ||
    die "DNS does not answer at $DNS_IP:53 from the host"
  render "$CLUSTER_SRC/manifests/dns-probe.yaml" "CLUSTER_DOMAIN=$CLUSTER_DOMAIN" | kc apply -f - >/dev/null
  wait_for "" 90 "DNS answers in a Pod (kubernetes.default resolves)" probe_done
  kc -n kube-system delete pod cluster-dns-probe --wait=false >/dev/null

  step import
  if ! wait "$IMPORT_PID"; then
    cat "$LOGS/import.log" >&2
    die "importing the Postgres and Ramify images failed"
  fi
  IMPORT_PID=
  sed 's/^/  /' "$LOGS/import.log"

  cat >"$D/env" <<EOF
export KUBECONFIG=$D/kubeconfig
RAMIFY_CLUSTER_NODE=$NODE_NAME
RAMIFY_CLUSTER_NODE_IP=$NODE_IP
RAMIFY_CLUSTER_POD_CIDR=$POD_CIDR
RAMIFY_CLUSTER_SERVICE_CIDR=$SERVICE_CIDR
RAMIFY_CLUSTER_DNS_IP=$DNS_IP
EOF
  UP_OK=1
  log "cluster up in $(elapsed)s: $("$KUBECTL" version --client -o yaml | awk '/gitVersion/{print $2; exit}') on node $NODE_NAME; to use it:"
  echo "export KUBECONFIG=$D/kubeconfig   # kubectl: $KUBECTL"
}

probe_done() {
  local phase
  phase=$(kc -n kube-system get pod cluster-dns-probe -o jsonpath='{.status.phase}')
  if [ "$phase" = Failed ]; then
    echo "the DNS probe Pod failed; its output:" >&2
    kc -n kube-system logs cluster-dns-probe >&2 || true
    return 99
  fi
  [ "$phase" = Succeeded ]
}

main
