#!/usr/bin/env bash
# Installs what Ramify's build, tests and demo need on Debian/Ubuntu, when run as root;
# otherwise says exactly what is missing. Idempotent: does nothing when all is present.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
missing_pkgs=()

need_cmd() { # command package
  command -v "$1" >/dev/null 2>&1 || missing_pkgs+=("$2")
}

[ -x "/usr/lib/postgresql/${PG_MAJOR}/bin/postgres" ] || missing_pkgs+=("postgresql-${PG_MAJOR}")
[ -x "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_waldump" ] || missing_pkgs+=("postgresql-${PG_MAJOR}")
need_cmd mkfs.xfs xfsprogs
need_cmd losetup mount
need_cmd curl curl
need_cmd openssl openssl
need_cmd bc bc
need_cmd psql postgresql-client-${PG_MAJOR}
# Off-node durability: the storage node archives WAL and backs up snapshots through it.
need_cmd pgbackrest pgbackrest

# `make bench` puts the proxy next to PgBouncer (RAMIFY_BENCH_DEPS=1).
if [ "${RAMIFY_BENCH_DEPS:-}" = 1 ]; then
  need_cmd pgbouncer pgbouncer
fi

# Deduplicate.
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
fi

if [ ${#missing_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing: ${missing_pkgs[*]}"
    # A Debian postgresql install would create and start a 'main' cluster on 5432;
    # Ramify runs its own servers, so ask postgresql-common not to.
    mkdir -p /etc/postgresql-common
    if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Options::=--force-confold "${missing_pkgs[@]}" >/dev/null
    # Debian's pgbouncer package starts a service on port 6432; the benchmark runs its
    # own PgBouncer and nothing else should listen.
    if printf '%s\n' "${missing_pkgs[@]}" | grep -qx pgbouncer && command -v systemctl >/dev/null; then
      systemctl disable --now pgbouncer >/dev/null 2>&1 || true
    fi
  else
    echo "error: missing packages: ${missing_pkgs[*]}" >&2
    echo "       install them with: sudo apt-get install ${missing_pkgs[*]}" >&2
    echo "       (or run 'make' as root, which installs them)" >&2
    exit 1
  fi
fi

if ! id postgres >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "error: the 'postgres' OS user is missing; Postgres refuses to run as root and the tests run it as 'postgres'" >&2
  echo "       reinstall postgresql-${PG_MAJOR} (it creates the user), or: useradd --system postgres" >&2
  exit 1
fi

for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then
      echo "==> installing rust component $comp"
      rustup component add "$comp"
    else
      echo "error: cargo $comp is missing; install the Rust component '$comp'" >&2
      exit 1
    fi
  fi
done
