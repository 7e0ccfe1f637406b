#!/usr/bin/env bash
# Preconditions of `make install-gpu`: a CUDA 11 toolkit (mxnet-cu110 is built for CUDA 11.0) and
# NCCL headers and library (Horovod's GPU allreduce). Says what is missing instead of a CMake trace.
set -uo pipefail

problems=()
nvcc_bin=$(command -v nvcc || true)
if [ -z "$nvcc_bin" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    nvcc_bin="$CUDA_HOME/bin/nvcc"
fi
if [ -z "$nvcc_bin" ]; then
    problems+=("nvcc not found: install the CUDA 11.0 toolkit and put its bin/ on PATH (or set CUDA_HOME)")
else
    version=$("$nvcc_bin" --version | sed -n 's/.*release \([0-9][0-9]*\)\.\([0-9]*\).*/\1.\2/p')
    case "$version" in
        11.*) ;;
        *) problems+=("nvcc is CUDA ${version:-unknown}; mxnet-cu110 needs the CUDA 11.x toolkit (set CUDA_HOME to it)") ;;
    esac
fi
cuda_home=${CUDA_HOME:-$(dirname "$(dirname "${nvcc_bin:-/usr/local/cuda/bin/nvcc}")")}
nccl_header=""
for dir in "${NCCL_HOME:-}/include" "$cuda_home/include" /usr/include /usr/local/include; do
    if [ -f "$dir/nccl.h" ]; then
        nccl_header="$dir/nccl.h"
        break
    fi
done
if [ -z "$nccl_header" ]; then
    problems+=("nccl.h not found: install NCCL >= 2.7 (libnccl-dev) or set NCCL_HOME to its prefix")
fi
if [ "${#problems[@]}" -gt 0 ]; then
    echo "make install-gpu cannot build Horovod with NCCL:" >&2
    for p in "${problems[@]}"; do
        echo "  - $p" >&2
    done
    exit 1
fi
echo "CUDA $version at $cuda_home, NCCL header $nccl_header"
