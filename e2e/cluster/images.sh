#!/usr/bin/env bash
# Builds the images the test cluster and the Ramify chart need, with no Docker and no
# registry, as OCI archives in /var/tmp/ramify-k8s/images/, and imports them into the
# running test cluster's containerd (namespace k8s.io) when it is up. Pods use them with
# imagePullPolicy: Never; `up.sh` imports every archive there when it starts a cluster.
#
#   e2e/cluster/images.sh [--cargo] [--strict] [--no-import | --import-only] [--bin-dir DIR] [IMAGE...]
#
# IMAGE (default all):
#   cluster   registry.k8s.io/pause:3.10 (containerd's sandbox image), ramify.test/coredns:1.15.0,
#             ramify.test/cluster-probe:dev (up.sh's DNS check); from build.sh's binaries
#   postgres  ramify.test/postgres:15, laid out like the official postgres:15 image, from
#             Debian bookworm's postgresql-15 packages
#   ramify    ramify.test/ramify-storage:dev (the postgres image + a layer of Debian's
#             pgbackrest and ca-certificates with what they need beyond the postgres
#             image, as storage-node/Dockerfile, + ramify-storage),
#             ramify.test/ramify-operator:dev, ramify.test/ramify-proxy:dev, from the
#             release binaries in --bin-dir (default target/release); missing binaries are
#             reported and skipped (--strict: an error)
#   seaweedfs ramify.test/seaweedfs:dev: the static SeaweedFS `weed` that `make tools`
#             (scripts/build-tools.sh) builds into ${RAMIFY_TOOLS:-/var/tmp/ramify-tools}/bin,
#             at /usr/local/bin/weed and nothing else but /etc/passwd, /tmp and /data
#             (uid 1000, writable by any uid); entrypoint weed, command `mini -dir=/data`.
#             A missing weed is reported and skipped (--strict: an error)
# --cargo first runs `cargo build --release` for those of the three packages the
# workspace has. An image is rebuilt only when its inputs changed.
set -euo pipefail
SCRIPT_NAME=cluster-images
. "$(dirname "$0")/lib.sh"

CARGO_BUILD=0 STRICT=0 IMPORT=auto BIN_DIR=$REPO_ROOT/target/release
WANT=()
while [ $# -gt 0 ]; do
  case $1 in
    --cargo) CARGO_BUILD=1 ;;
    --strict) STRICT=1 ;;
    --no-import) IMPORT=no ;;
    --import-only) IMPORT=only ;;
    --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift ;;
    -h | --help) usage; exit 0 ;;
    all | cluster | postgres | ramify | seaweedfs) WANT+=("$1") ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ ${#WANT[@]} -gt 0 ] || WANT=(all)
wants() { local w; for w in "${WANT[@]}"; do [ "$w" = all ] || [ "$w" = "$1" ] && return 0; done; return 1; }

MKOCI=$TOOLS_DIR/mkoci
mkdir -p "$IMAGES_DIR"

PG_MAJOR=15
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${RAMIFY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${RAMIFY_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# What the compute image needs beyond postgresql-15's own dependencies: a shell and the
# tools Ramify's archive_command runs (test, cp, sync, mv from coreutils; cmp from
# diffutils), plus what initdb and psql expect to find.
DEBIAN_PACKAGES=("postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR" bash dash coreutils diffutils
  findutils grep sed gzip tar libc-bin tzdata)
DEBIAN_CACHE=$RAMIFY_K8S_HOME/debian
BASE_LAYER=$DEBIAN_CACHE/postgres-$PG_MAJOR-rootfs.tar.gz
# What the storage node image adds on top of that layer, as storage-node/Dockerfile does
# on postgres:15: pgBackRest (moves durable timelines to object storage) and the CA
# bundle the node verifies the object store with when given no --backup-ca-file.
STORAGE_PACKAGES=(pgbackrest ca-certificates)
STORAGE_LAYER=$DEBIAN_CACHE/storage-$PG_MAJOR-pgbackrest.tar.gz
PG_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/$PG_MAJOR/bin

# --- helpers ---------------------------------------------------------------------------

# input_key WORDS... FILES...: a digest of the words and the contents of the files, the
# name under which an archive is cached.
input_key() {
  local a
  for a in "$@"; do
    if [ -f "$a" ]; then sha256sum "$a" | cut -d' ' -f1; else echo "$a"; fi
  done | sha256sum | cut -d' ' -f1
}
fresh() { [ -f "$1" ] && [ "$(cat "$1.key" 2>/dev/null)" = "$2" ]; }

# image NAME REF KEY MKOCI-ARGS...: builds $IMAGES_DIR/NAME.tar unless it is current.
image() {
  local name=$1 ref=$2 key=$3 t
  shift 3
  if fresh "$IMAGES_DIR/$name.tar" "$key"; then
    log "$ref: up to date ($IMAGES_DIR/$name.tar)"
    return 0
  fi
  t=$(now_us)
  "$MKOCI" image -o "$IMAGES_DIR/$name.tar" -name "$ref" "$@" || die "writing $ref failed"
  echo "$key" >"$IMAGES_DIR/$name.tar.key"
  log "$ref: built in $(elapsed "$t")s ($(du -h "$IMAGES_DIR/$name.tar" | cut -f1))"
}

ensure_tools() {
  local missing=() b
  for b in "$@"; do [ -x "$b" ] || missing+=("$(basename "$b")"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "building ${missing[*]} first"
  "$CLUSTER_SRC/build.sh" "${missing[@]}" >/dev/null || die "build.sh ${missing[*]} failed"
}

# stage_binary SRC DEST: a staging directory holding SRC at the relative path DEST (root,
# 0755), to become an image's top layer.
stage_binary() {
  local src=$1 dest=$2 dir
  dir=$(mktemp -d "$WORK/stage-XXXXXX")
  install -D -m 0755 -o 0 -g 0 "$src" "$dir/$dest"
  # Parent directories of the file: owned by root, 0755, as in any base image.
  find "$dir" -mindepth 1 -type d -exec chmod 0755 {} + -exec chown 0:0 {} +
  echo "$dir"
}

WORK=$(mktemp -d "$RAMIFY_K8S_HOME/images-work-XXXXXX" 2>/dev/null || { mkdir -p "$RAMIFY_K8S_HOME" && mktemp -d "$RAMIFY_K8S_HOME/images-work-XXXXXX"; })
trap 'rm -rf "$WORK"' EXIT

# --- cluster images ----------------------------------------------------------------------

build_cluster_images() {
  ensure_tools "$MKOCI" "$TOOLS_DIR/pause" "$TOOLS_DIR/dnsprobe" "$RAMIFY_K8S_BIN/coredns"
  local d
  d=$(stage_binary "$TOOLS_DIR/pause" pause)
  # 65535 is the official pause image's user.
  image pause registry.k8s.io/pause:3.10 "$(input_key v1 "$TOOLS_DIR/pause")" \
    -layer "$d" -entrypoint '["/pause"]' -user 65535:65535
  d=$(stage_binary "$RAMIFY_K8S_BIN/coredns" coredns)
  image coredns ramify.test/coredns:1.15.0 "$(input_key v1 "$RAMIFY_K8S_BIN/coredns")" \
    -layer "$d" -entrypoint '["/coredns"]' -expose 53/udp -expose 53/tcp
  d=$(stage_binary "$TOOLS_DIR/dnsprobe" dnsprobe)
  image cluster-probe ramify.test/cluster-probe:dev "$(input_key v1 "$TOOLS_DIR/dnsprobe")" \
    -layer "$d" -entrypoint '["/dnsprobe"]' -user 65532:65532
}

# --- the Debian layer of the Postgres image ---------------------------------------------
# apt resolves postgresql-15's dependencies against an empty package database (so the
# closure is complete, as on a fresh system) using its own lists of Debian bookworm and
# bookworm-security (so the host's apt sources do not matter), downloads the .debs and
# we unpack them with dpkg-deb. No chroot, no maintainer scripts, no mounts (debootstrap
# plus apt in a chroot needs /proc and /dev mounted in it and runs every maintainer
# script): about 30 s plus the download. What the maintainer scripts would have done
# that Postgres needs is done by configure_rootfs.

APT_DIR=$DEBIAN_CACHE/apt
APT_OPTS=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=$APT_DIR/empty"
  -o "Dir::Etc::Preferences=$APT_DIR/empty/none" -o "Dir::Etc::PreferencesParts=$APT_DIR/empty"
  -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
  -o APT::Architecture=amd64 -o APT::Architectures::=amd64 -o Acquire::Languages=none
  -o APT::Install-Recommends=false -o APT::Install-Suggests=false -o Debug::NoLocking=true)

APT_UPDATED=0
# download_debs DIR STATUS PACKAGE...: downloads PACKAGEs and every dependency that the
# dpkg status file STATUS does not already satisfy into DIR (emptied first). An empty
# STATUS gives the full closure, as on a fresh system.
download_debs() {
  local dir=$1 status=$2
  shift 2
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    die "building the Postgres image needs apt-get and dpkg-deb (a Debian or Ubuntu host)"
  fi
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "$keyring missing (apt-get install debian-archive-keyring)"
  mkdir -p "$APT_DIR"/{lists/partial,cache,empty} "$dir/partial"
  cat >"$APT_DIR/sources.list" <<EOF
deb [signed-by=$keyring] $DEBIAN_MIRROR $DEBIAN_SUITE main
deb [signed-by=$keyring] $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb [signed-by=$keyring] $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main
EOF
  rm -f "$dir"/*.deb
  # Once per run: the base layer and the storage layer resolve against the same lists.
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get "${APT_OPTS[@]}" -o "Dir::State::status=$status" -qq update ||
      die "apt-get update of Debian $DEBIAN_SUITE lists failed"
    APT_UPDATED=1
  fi
  apt-get "${APT_OPTS[@]}" -o "Dir::State::status=$status" -o "Dir::Cache::archives=$dir" \
    -qq -y --download-only install "$@" >/dev/null ||
    die "downloading $* and their dependencies failed"
}

# unpack_debs ROOT DEB...: the packages' files in ROOT, a merged-/usr tree as on any
# bookworm system (/bin, /sbin, /lib, /lib64 point into /usr), without documentation,
# manuals and translations (a third of the size, never read in a test).
unpack_debs() {
  local r=$1 d f
  shift
  mkdir -p "$r/usr"/{bin,sbin,lib,lib64}
  for d in bin sbin lib lib64; do [ -L "$r/$d" ] || ln -s "usr/$d" "$r/$d"; done
  for f in "$@"; do
    dpkg-deb --fsys-tarfile "$f" | tar -x --keep-directory-symlink -C "$r" ||
      die "unpacking $(basename "$f") failed"
  done
  rm -rf "$r"/usr/share/{doc,man,info,locale,lintian,i18n}
}

# deb_status DEB...: dpkg status entries saying the packages are installed, so apt can
# resolve more packages against them.
deb_status() {
  local f
  for f in "$@"; do
    dpkg-deb -f "$f" | awk 'NR == 1 { print; print "Status: install ok installed"; next } { print }'
    echo
  done
}

configure_rootfs() {
  local r=$1
  # Accounts (base-passwd's and postgresql-common's maintainer scripts would add these):
  # postgres is uid/gid 999 as in the official image, so files the compute Pods write
  # are readable by the storage node, which runs as 999 too.
  cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash
nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
  cat >"$r/etc/group" <<'EOF'
root:x:0:
tty:x:5:
postgres:x:999:
nonroot:x:65532:
nogroup:x:65534:
EOF
  printf 'root:*::0:99999:7:::\npostgres:*::0:99999:7:::\nnonroot:*::0:99999:7:::\nnobody:*::0:99999:7:::\n' >"$r/etc/shadow"
  chmod 0640 "$r/etc/shadow"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$r/etc/nsswitch.conf"
  ln -sf /usr/share/zoneinfo/Etc/UTC "$r/etc/localtime"
  echo Etc/UTC >"$r/etc/timezone"
  # /var/run is a symlink to /run on Debian; unpacking with dpkg-deb leaves a directory.
  if [ -d "$r/var/run" ] && [ ! -L "$r/var/run" ]; then rmdir "$r/var/run" && ln -s /run "$r/var/run"; fi
  # As the official image: the socket directory and PGDATA writable by any uid.
  install -d -m 3777 -o 999 -g 999 "$r/run/postgresql"
  install -d -m 0755 -o 999 -g 999 "$r/var/lib/postgresql"
  install -d -m 1777 -o 999 -g 999 "$r/var/lib/postgresql/data"
  install -d -m 0755 -o 65532 -g 65532 "$r/home/nonroot"
  # The official image's entrypoint runs initdb on an empty PGDATA; Ramify's compute Pods
  # run initdb in an init container, so this one only keeps its calling convention.
  install -D -m 0755 /dev/stdin "$r/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stand-in for the official postgres image's entrypoint: runs its arguments, with
# "postgres" in front when they start with an option. Unlike the official one it never
# initialises PGDATA (Ramify's compute Pods do that in an init container).
set -e
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
exec "$@"
EOF
  ldconfig -r "$r" || die "ldconfig -r $r failed"
  # ldconfig's aux cache records inode numbers and ctimes: same files, different bytes.
  rm -f "$r/var/cache/ldconfig/aux-cache"
}

build_base_layer() {
  local key t r pgver f
  # Rebuilt when the package list, the mirrors or the code that makes it change.
  key=$(input_key v1 "$DEBIAN_SUITE" "${DEBIAN_PACKAGES[@]}" "$DEBIAN_MIRROR" "$DEBIAN_SECURITY_MIRROR" \
    "$(declare -f download_debs unpack_debs deb_status configure_rootfs build_base_layer | sha256sum)")
  if fresh "$BASE_LAYER" "$key" && [ -f "$BASE_LAYER.diffid" ] && [ -f "$DEBIAN_CACHE/PG_VERSION" ] &&
    [ -f "$DEBIAN_CACHE/status" ]; then
    log "Debian rootfs layer: up to date ($BASE_LAYER)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "building the Debian rootfs needs root (its files must be owned by root and postgres)"
  t=$(now_us)
  mkdir -p "$APT_DIR"
  : >"$APT_DIR/status"
  download_debs "$APT_DIR/archives" "$APT_DIR/status" "${DEBIAN_PACKAGES[@]}"
  local debs=("$APT_DIR"/archives/*.deb)
  log "Debian rootfs: downloaded ${#debs[@]} packages in $(elapsed "$t")s"
  r=$WORK/rootfs
  unpack_debs "$r" "${debs[@]}"
  configure_rootfs "$r"
  pgver=$(basename "$APT_DIR"/archives/postgresql-${PG_MAJOR}_*.deb | cut -d_ -f2)
  # Prove the binaries run in this rootfs (every shared library present) before layering.
  chroot --userspec=999:999 "$r" /usr/lib/postgresql/$PG_MAJOR/bin/postgres --version >/dev/null ||
    die "postgres does not run in the built rootfs"
  chroot --userspec=999:999 "$r" /bin/sh -c 'test -d / && cmp --version && cp --version && sync && mv --version' >/dev/null ||
    die "the archive_command tools (sh, test, cmp, cp, sync, mv) do not run in the built rootfs"
  "$MKOCI" layer -o "$BASE_LAYER" "$r" || die "writing the rootfs layer failed"
  echo "$pgver" >"$DEBIAN_CACHE/PG_VERSION"
  for f in "${debs[@]}"; do basename "$f" .deb; done >"$DEBIAN_CACHE/packages.txt"
  # The layer's packages as dpkg would have recorded them, for the layers resolved
  # against it (build_storage_layer).
  deb_status "${debs[@]}" >"$DEBIAN_CACHE/status"
  echo "$key" >"$BASE_LAYER.key"
  rm -rf "$r"
  log "Debian rootfs layer: built in $(elapsed "$t")s ($(du -h "$BASE_LAYER" | cut -f1) compressed, postgresql-$PG_MAJOR $pgver)"
}

# --- the storage node's Debian layer ------------------------------------------------------
# apt resolves STORAGE_PACKAGES against the base layer's packages (its dpkg status), as
# `apt-get install` in storage-node/Dockerfile does on postgres:15, so only what the base
# lacks is downloaded (or a newer version of a base package, should one of them need
# it) and unpacked into a layer of its own, which the compute image does not carry.
# What the maintainer scripts would have done (pgbackrest's directories, ca-certificates'
# bundle, the linker cache) is done here, and pgbackrest is proven to run on base + layer.
build_storage_layer() {
  local key t r c d f
  key=$(input_key v1 "$(cat "$BASE_LAYER.diffid")" "${STORAGE_PACKAGES[@]}" "$DEBIAN_MIRROR" \
    "$DEBIAN_SECURITY_MIRROR" "$(declare -f download_debs unpack_debs build_storage_layer | sha256sum)")
  if fresh "$STORAGE_LAYER" "$key" && [ -f "$STORAGE_LAYER.diffid" ]; then
    log "storage Debian layer (${STORAGE_PACKAGES[*]}): up to date ($STORAGE_LAYER)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "building the storage node's Debian layer needs root (its files must be owned by root and postgres)"
  t=$(now_us)
  cp "$DEBIAN_CACHE/status" "$APT_DIR/status.storage"
  download_debs "$APT_DIR/archives-storage" "$APT_DIR/status.storage" "${STORAGE_PACKAGES[@]}"
  local debs=("$APT_DIR"/archives-storage/*.deb)
  [ -e "${debs[0]}" ] || die "apt downloaded nothing for ${STORAGE_PACKAGES[*]}"
  log "storage Debian layer: downloaded ${#debs[@]} packages in $(elapsed "$t")s"
  r=$WORK/storage-layer
  unpack_debs "$r" "${debs[@]}"
  # /var/run is a symlink to /run in the base layer; a directory here would hide it.
  if [ -d "$r/var/run" ] && [ ! -L "$r/var/run" ]; then
    rmdir "$r/var/run" 2>/dev/null || die "a package of the storage layer ships files in /var/run"
  fi
  # pgbackrest's postinst: its default log, lib and spool directories and its (unused:
  # the node passes its own) configuration file belong to postgres.
  for d in var/log/pgbackrest var/lib/pgbackrest var/spool/pgbackrest; do
    install -d -m 0750 -o 999 -g 999 "$r/$d"
  done
  if [ -f "$r/etc/pgbackrest.conf" ]; then chown 999:999 "$r/etc/pgbackrest.conf" && chmod 0640 "$r/etc/pgbackrest.conf"; fi
  # ca-certificates' postinst (update-ca-certificates): the bundle of every certificate
  # it ships, which the node (given no --backup-ca-file) and OpenSSL read by default.
  if [ -d "$r/usr/share/ca-certificates" ]; then
    mkdir -p "$r/etc/ssl/certs"
    (cd "$r/usr/share/ca-certificates" && find . -name '*.crt' | sed 's|^\./||' | LC_ALL=C sort) >"$r/etc/ca-certificates.conf"
    # awk 1: each certificate ends with a newline, as update-ca-certificates makes sure.
    while read -r f; do awk 1 "$r/usr/share/ca-certificates/$f"; done <"$r/etc/ca-certificates.conf" \
      >"$r/etc/ssl/certs/ca-certificates.crt"
  fi
  # The base layer and this one together: to refresh the linker cache (libc-bin's
  # trigger) and to prove pgbackrest finds every library it needs and runs.
  c=$WORK/storage-check
  mkdir -p "$c"
  tar -xzf "$BASE_LAYER" -C "$c" || die "unpacking $BASE_LAYER failed"
  cp -a "$r/." "$c/" || die "copying the storage layer over the base failed"
  ldconfig -r "$c" || die "ldconfig -r $c failed"
  mkdir -p "$r/etc"
  cp -p "$c/etc/ld.so.cache" "$r/etc/ld.so.cache"
  if chroot "$c" /usr/bin/ldd /usr/bin/pgbackrest | grep 'not found'; then
    die "pgbackrest lacks the libraries above in the storage image"
  fi
  chroot --userspec=999:999 "$c" /usr/bin/pgbackrest version >/dev/null ||
    die "pgbackrest does not run in the storage image"
  rm -rf "$c"
  "$MKOCI" layer -o "$STORAGE_LAYER" "$r" || die "writing the storage layer failed"
  for f in "${debs[@]}"; do basename "$f" .deb; done >"$DEBIAN_CACHE/storage-packages.txt"
  echo "$key" >"$STORAGE_LAYER.key"
  rm -rf "$r"
  log "storage Debian layer: built in $(elapsed "$t")s ($(du -h "$STORAGE_LAYER" | cut -f1) compressed," \
    "${#debs[@]} packages: $(cut -d_ -f1 "$DEBIAN_CACHE/storage-packages.txt" | paste -sd' '))"
}

# The official image's environment (LANG: C.UTF-8 is built into glibc; the official
# image generates en_US.UTF-8 instead).
postgres_env() {
  PG_ENV=(-env "PATH=$PG_PATH" -env "PG_MAJOR=$PG_MAJOR" -env "PG_VERSION=$(cat "$DEBIAN_CACHE/PG_VERSION")"
    -env PGDATA=/var/lib/postgresql/data -env LANG=C.UTF-8)
}

build_postgres_image() {
  ensure_tools "$MKOCI"
  build_base_layer
  postgres_env
  image postgres-$PG_MAJOR ramify.test/postgres:$PG_MAJOR "$(input_key v1 "$BASE_LAYER.diffid")" \
    -layer "$BASE_LAYER" "${PG_ENV[@]}" -user 999:999 \
    -entrypoint '["docker-entrypoint.sh"]' -cmd '["postgres"]' -stopsignal SIGINT \
    -expose 5432/tcp -volume /var/lib/postgresql/data
}

# --- Ramify images -----------------------------------------------------------------------

MISSING=()

cargo_build() {
  local have=() p
  local cargo=${CARGO:-cargo}
  command -v "$cargo" >/dev/null || die "--cargo: $cargo not found"
  local meta
  meta=$(cd "$REPO_ROOT" && "$cargo" metadata --no-deps --format-version 1) || die "cargo metadata failed"
  for p in ramify-storage ramify-operator ramify-proxy; do
    grep -q "\"name\":\"$p\"" <<<"$meta" && have+=(-p "$p")
  done
  [ ${#have[@]} -gt 0 ] || return 0
  log "cargo build --release ${have[*]}"
  (cd "$REPO_ROOT" && "$cargo" build --release "${have[@]}") || die "cargo build --release ${have[*]} failed"
}

build_ramify_images() {
  ensure_tools "$MKOCI"
  [ "$CARGO_BUILD" = 0 ] || cargo_build
  build_base_layer
  postgres_env
  local b d
  for b in ramify-storage ramify-operator ramify-proxy; do
    if [ ! -x "$BIN_DIR/$b" ]; then
      MISSING+=("$b")
      continue
    fi
    d=$(stage_binary "$BIN_DIR/$b" "usr/local/bin/$b")
    # Config as in the production Dockerfiles (operator/, proxy/, storage-node/), which
    # the chart is written against.
    if [ "$b" = ramify-storage ]; then
      # The postgres image plus pgBackRest plus the storage node: it runs the Postgres
      # binaries (--pg-bin) and, as uid 999, shares files and sockets with the computes.
      build_storage_layer
      image "$b" "ramify.test/$b:dev" "$(input_key v3 "$BASE_LAYER.diffid" "$STORAGE_LAYER.diffid" "$BIN_DIR/$b")" \
        -layer "$BASE_LAYER" -layer "$STORAGE_LAYER" -layer "$d" "${PG_ENV[@]}" \
        -env "RAMIFY_PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin" \
        -user 999:999 -stopsignal SIGINT -expose 7070/tcp -entrypoint "[\"/usr/local/bin/$b\"]" \
        -cmd '["--data-dir", "/var/lib/ramify", "--listen", "0.0.0.0:7070"]'
    else
      # Production ships a static musl binary alone at /$b; the release binaries here
      # are linked against glibc, so they sit on the same Debian layer (stored once by
      # containerd), at the same path.
      ln -s "usr/local/bin/$b" "$d/$b"
      local port=8080
      [ "$b" = ramify-proxy ] && port=9090
      image "$b" "ramify.test/$b:dev" "$(input_key v2 "$BASE_LAYER.diffid" "$BIN_DIR/$b")" \
        -layer "$BASE_LAYER" -layer "$d" -env "PATH=/usr/local/bin:/usr/bin:/bin" \
        -user 65532:65532 -expose "$port/tcp" -entrypoint "[\"/$b\"]"
    fi
  done
}

# --- SeaweedFS ----------------------------------------------------------------------------
# The S3 server the backup scenarios archive to, as a Pod: `weed` alone (static, CGO off,
# from scripts/build-tools.sh), so no shell and no libraries. A passwd entry for the
# default user, a world-writable /tmp (weed puts its local gRPC sockets there) and /data,
# the working directory, so `weed mini` or `weed server -s3` works with no -dir and with
# no volume mounted, as any uid.

WEED=${RAMIFY_TOOLS:-/var/tmp/ramify-tools}/bin/weed
WEED_UID=1000
NOTES=()

build_seaweedfs_image() {
  if [ ! -x "$WEED" ]; then
    NOTES+=("no ramify.test/seaweedfs:dev: $WEED not found (make tools builds it)")
    return 0
  fi
  ensure_tools "$MKOCI"
  # A dynamically linked weed would find no libc in the image.
  if ldd "$WEED" >/dev/null 2>&1 && ! ldd "$WEED" 2>&1 | grep -q 'statically linked'; then
    die "$WEED is dynamically linked; the image has no libraries (build it with CGO_ENABLED=0: make tools)"
  fi
  local key d
  key=$(input_key v1 "$WEED" "$(declare -f build_seaweedfs_image | sha256sum)")
  if fresh "$IMAGES_DIR/seaweedfs.tar" "$key"; then
    log "ramify.test/seaweedfs:dev: up to date ($IMAGES_DIR/seaweedfs.tar)"
    return 0
  fi
  d=$(stage_binary "$WEED" usr/local/bin/weed)
  install -d -m 0755 -o 0 -g 0 "$d/etc"
  cat >"$d/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
seaweedfs:x:$WEED_UID:$WEED_UID:SeaweedFS:/data:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
  printf 'root:x:0:\nseaweedfs:x:%s:\nnogroup:x:65534:\n' "$WEED_UID" >"$d/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$d/etc/nsswitch.conf"
  chmod 0644 "$d"/etc/{passwd,group,nsswitch.conf}
  install -d -m 1777 -o 0 -g 0 "$d/tmp"
  install -d -m 1777 -o "$WEED_UID" -g "$WEED_UID" "$d/data"
  # It runs with nothing but this tree, as the default user (mktemp made the root 0700).
  chmod 0755 "$d"
  local out
  out=$(chroot --userspec="$WEED_UID:$WEED_UID" "$d" /usr/local/bin/weed version 2>&1) ||
    die "weed does not run in the seaweedfs image: $out"
  # Ports of `weed mini` / `weed server -s3`: S3, master, volume, filer.
  image seaweedfs ramify.test/seaweedfs:dev "$key" -layer "$d" \
    -env PATH=/usr/local/bin:/usr/bin:/bin -user "$WEED_UID:$WEED_UID" -workdir /data \
    -entrypoint '["/usr/local/bin/weed"]' -cmd '["mini", "-dir=/data"]' \
    -expose 8333/tcp -expose 9333/tcp -expose 8080/tcp -expose 8888/tcp
}

# --- import ------------------------------------------------------------------------------

import_images() {
  local sock=$D/containerd/containerd.sock f ref t
  if ! pid_alive containerd || [ ! -S "$sock" ]; then
    [ "$IMPORT" = only ] && die "the test cluster is not running (no containerd at $sock); run e2e/cluster/up.sh"
    log "test cluster not running: images are imported by the next up.sh"
    return 0
  fi
  local files=()
  wants cluster && files+=("$IMAGES_DIR"/{pause,coredns,cluster-probe}.tar)
  wants postgres && files+=("$IMAGES_DIR"/postgres-*.tar)
  wants ramify && files+=("$IMAGES_DIR"/ramify-*.tar)
  wants seaweedfs && files+=("$IMAGES_DIR/seaweedfs.tar")
  for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    t=$(now_us)
    ref=$(grep -ao '"io.containerd.image.name":"[^"]*"' <(tar -xOf "$f" index.json) | cut -d'"' -f4)
    [ -n "$ref" ] || die "$f names no image (not written by mkoci?)"
    ctr --address "$sock" -n k8s.io images import --base-name "${ref%:*}" "$f" >/dev/null ||
      die "importing $f into containerd failed"
    log "imported $ref in $(elapsed "$t")s"
  done
}

# --- main --------------------------------------------------------------------------------

if [ "$IMPORT" != only ]; then
  wants cluster && build_cluster_images
  wants postgres && build_postgres_image
  wants ramify && build_ramify_images
  wants seaweedfs && build_seaweedfs_image
fi
[ "$IMPORT" = no ] || import_images
if [ ${#MISSING[@]} -gt 0 ]; then
  NOTES+=("no image for ${MISSING[*]}: not found in $BIN_DIR (cargo build --release$(printf ' -p %s' "${MISSING[@]}"), or pass --cargo)")
fi
if [ ${#NOTES[@]} -gt 0 ]; then
  msg=$(printf '%s; ' "${NOTES[@]}")
  [ "$STRICT" = 1 ] && die "${msg%; }"
  for msg in "${NOTES[@]}"; do warn "$msg"; done
fi
log "done"
