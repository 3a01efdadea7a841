#!/usr/bin/env bash
# Makes the TLS files of one lowband run with openssl: a private CA, the coordinator's (or
# split-server's) certificate, and a client certificate for workers (mutual TLS).
#
#   deploy/make-certs.sh OUT --server-name NAME [--server-name NAME ...] [--days N] [--no-mutual]
#
#   OUT/ca.crt, OUT/ca.key         the run's CA (keep ca.key offline: it signs new certificates)
#   OUT/coordinator/               for the server: tls.crt, tls.key (+ ca.crt: require client certs)
#   OUT/worker/                    for every worker: ca.crt (+ tls.crt, tls.key: its client cert)
#
# Each role directory has the kubernetes.io/tls layout (tls.crt, tls.key, ca.crt, as cert-manager
# writes too): give it to lowband with --tls-dir DIR (config key tls.dir). --server-name is every
# name or IP address workers use to reach the server (a Kubernetes Service name, a public DNS name,
# 127.0.0.1), at least one. --no-mutual leaves client certificates out (server-only TLS).
# Keys are ECDSA P-256 (mode 0600), certificates valid for --days (default 365). Refuses to
# overwrite an existing OUT/ca.key.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "make-certs: $*" >&2
  exit 2
}

out=""
names=()
days=365
mutual=1
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --server-name)
      if [ $# -lt 2 ] || [ -z "$2" ]; then die "--server-name needs a host name or IP address"; fi
      names+=("$2")
      shift 2
      ;;
    --days)
      if [ $# -lt 2 ] || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
        die "--days needs a positive number of days, got '${2:-}'"
      fi
      days=$2
      shift 2
      ;;
    --no-mutual)
      mutual=0
      shift
      ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      [ -z "$out" ] || die "one output directory only (got '$out' and '$1')"
      out=$1
      shift
      ;;
  esac
done
[ -n "$out" ] || die "missing the output directory (see --help)"
[ ${#names[@]} -gt 0 ] || die "missing --server-name: the name or IP workers use to reach the server"
command -v openssl >/dev/null 2>&1 || die "openssl is not installed (apt-get install openssl)"
[ ! -e "$out/ca.key" ] || die "'$out/ca.key' exists: this directory already holds a run's CA (use another)"

san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

umask 077
mkdir -p "$out/coordinator" "$out/worker"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
sign() { # sign KEY CN EXTENSIONS OUT: a certificate for KEY, signed by the run's CA
  openssl req -new -key "$1" -subj "/CN=$2" -out "$tmp/req.csr"
  printf '%s\n' "$3" >"$tmp/ext.cnf"
  openssl x509 -req -in "$tmp/req.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -days "$days" -sha256 -extfile "$tmp/ext.cnf" -out "$4" 2>/dev/null
}

key "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -subj "/CN=lowband run CA" -days "$days" -sha256 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$out/ca.crt"

key "$out/coordinator/tls.key"
sign "$out/coordinator/tls.key" "${names[0]}" \
  "$(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature' "$san")" \
  "$out/coordinator/tls.crt"
cp "$out/ca.crt" "$out/worker/ca.crt"

if [ "$mutual" = 1 ]; then
  cp "$out/ca.crt" "$out/coordinator/ca.crt"
  key "$out/worker/tls.key"
  sign "$out/worker/tls.key" "lowband worker" \
    "$(printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature')" "$out/worker/tls.crt"
fi
chmod 0644 "$out/ca.crt" "$out/coordinator/tls.crt" "$out/worker/ca.crt"
[ "$mutual" = 1 ] && chmod 0644 "$out/coordinator/ca.crt" "$out/worker/tls.crt"

mode="mutual TLS"
[ "$mutual" = 1 ] || mode="TLS (no client certificates)"
echo "make-certs: $mode for ${names[*]}, valid $days days, in $out"
echo "  coordinator / split-server: --tls-dir $out/coordinator"
echo "  workers / split clients:    --tls-dir $out/worker"
echo "  keep $out/ca.key offline"
