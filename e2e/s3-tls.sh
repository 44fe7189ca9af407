#!/usr/bin/env bash
# Makes a throwaway CA and a server certificate it signs, for the S3 server (SeaweedFS)
# the backup tests run: DIR/ca.pem (world-readable: the storage node's user reads it),
# DIR/cert.pem and DIR/key.pem naming every DNS NAME given (pgBackRest refuses an IP
# address as the name). Valid two days.
#
#   e2e/s3-tls.sh DIR NAME...
set -euo pipefail
dir=${1:?usage: e2e/s3-tls.sh DIR NAME...}
shift
[ $# -gt 0 ] || { echo "usage: e2e/s3-tls.sh DIR NAME..." >&2; exit 2; }
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=ramify-e2e-ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$1" \
  -keyout key.pem -out req.csr 2>/dev/null
san=$(printf 'DNS:%s,' "$@")
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "${san%,}" >ext
openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext \
  -out cert.pem 2>/dev/null
chmod 755 . && chmod 644 ca.pem
