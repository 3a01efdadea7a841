#!/usr/bin/env bash
# Makes a CMake prefix for building lowband against a LibTorch that ships its own copies of fmt and
# protobuf headers (the pip wheels' torch/ directory, pytorch.org's libtorch zips), such as a CUDA
# build of LibTorch on a GPU machine.
#
#   deploy/torch-prefix.sh TORCH_DIR [OUT]      (OUT defaults to build/torch-prefix)
#   cmake -S . -B build -G Ninja -DCMAKE_PREFIX_PATH="$(deploy/torch-prefix.sh TORCH_DIR)"
#
# TORCH_DIR is the directory holding include/, lib/ and share/cmake/Torch, e.g.
#   $(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
# Why: LibTorch 2.x's include/ bundles fmt 12 and protobuf 3.13 headers. Put on the include path
# ahead of /usr/include, they hide the system fmt (which spdlog is built against) and protobuf (which
# gRPC and lowband's generated code are built against), and the build fails or links mismatched
# code. The prefix made here links every entry of TORCH_DIR/include except fmt/ and google/, copies
# TORCH_DIR/share/cmake (LibTorch's CMake files find include/ and lib/ relative to themselves) and
# links lib/. LibTorch's own headers compile against the system fmt. Prints the path to give
# CMAKE_PREFIX_PATH. At run time, put TORCH_DIR/lib on LD_LIBRARY_PATH.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -lt 1 ]] && exit 2 || exit 0
fi
torch=$(cd "$1" 2>/dev/null && pwd) || { echo "torch-prefix: no directory $1" >&2; exit 2; }
out=${2:-build/torch-prefix}
for need in include lib share/cmake/Torch/TorchConfig.cmake; do
  [[ -e "$torch/$need" ]] || {
    echo "torch-prefix: $torch/$need is missing: give the LibTorch directory (the one with include/, lib/, share/)" >&2
    exit 2
  }
done
rm -rf "$out"
mkdir -p "$out/include" "$out/share"
for entry in "$torch"/include/*; do
  name=$(basename "$entry")
  case "$name" in
    fmt | google) ;;  # use the system's
    *) ln -s "$entry" "$out/include/$name" ;;
  esac
done
cp -r "$torch/share/cmake" "$out/share/"
ln -s "$torch/lib" "$out/lib"
echo "$(cd "$out" && pwd)/share/cmake"
