#!/usr/bin/env bash
# Installs every Debian package lowband's build, tests, benchmarks, data preparation and plots need.
# Idempotent: packages already present are skipped, so a second run costs a few seconds.
# Usage: deploy/install-deps.sh            (as root, or with sudo available)
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config ccache git
  clang clang-format clang-tidy libclang-rt-14-dev
  # LibTorch (CPU) + a threaded BLAS (without it LibTorch falls back to reference BLAS, ~8x slower)
  # + the Gloo headers c10d's ProcessGroupGloo needs
  libtorch-dev libopenblas0-pthread libopenblas-pthread-dev libgloo-dev
  # RPC
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev zlib1g-dev
  # Boost (Asio for the link shaper, Beast for HTTP)
  libboost-dev libboost-system-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # TLS test certificates (the openssl command)
  openssl
  # small well-kept libraries: CLI, logging, JSON, config
  libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libyaml-cpp-dev
  # plots, data, lint
  gnuplot-nox dataset-fashion-mnist shellcheck yamllint
  # network lab (namespaces, tc)
  iproute2
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# npm ships with Node.js from some sources; only ask Debian for both when neither is present.
if ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
