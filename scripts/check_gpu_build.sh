#!/usr/bin/env bash
# Preconditions of `make install-gpu`, and the settings it builds with.
# On success prints shell assignments for `eval` on stdout (MXNET_WHEEL, HOROVOD_CUDA_HOME,
# HOROVOD_NCCL_INCLUDE, HOROVOD_NCCL_LIB, HOROVOD_BUILD_CUDA_CC_LIST) and a summary on stderr;
# otherwise says everything that is missing on stderr and exits 1, instead of a CMake trace.
#
# - The MXNet wheel follows the CUDA 11 toolkit: mxnet-cu110 for 11.0, mxnet-cu112 for 11.2-11.8
#   (MXNET_WHEEL overrides). Both link cuDNN 8, NCCL 2 and the CUDA runtime libraries dynamically
#   (readelf -d: cu110 needs libnvrtc.so.11.0 and libcusolver.so.10, which only CUDA 11.0 ships;
#   cu112 needs libnvrtc.so.11.2 and libcusolver.so.11), so CUDA 11.1 fits neither.
# - nvcc only accepts host compilers up to a version: g++ 9 for CUDA 11.0, 10 for 11.1-11.3,
#   11 for 11.4-11.8 (CUDA installation guides); Horovod compiles its CUDA kernels with it.
# - Horovod's build reads HOROVOD_CUDA_HOME and HOROVOD_NCCL_HOME/_INCLUDE/_LIB, not CUDA_HOME/NCCL_HOME:
#   what is found here is passed on under Horovod's names.
# - MXNet 1.9.1 wheels carry kernels (SASS) for sm_50/60/70/80 (cu110), plus sm_86 (cu112), and no
#   PTX (read from the fatbin headers of libmxnet.so), so a GPU of compute capability 9.0 (H100,
#   H200) cannot run them at all: refused here, before a long build.
set -uo pipefail

problems=()
cuda_home=${HOROVOD_CUDA_HOME:-${CUDA_HOME:-}}
nvcc_bin=""
if [ -n "$cuda_home" ] && [ -x "$cuda_home/bin/nvcc" ]; then
    nvcc_bin="$cuda_home/bin/nvcc"
elif command -v nvcc > /dev/null; then
    nvcc_bin=$(command -v nvcc)
elif [ -x /usr/local/cuda/bin/nvcc ]; then
    nvcc_bin=/usr/local/cuda/bin/nvcc
fi

version=""
wheel=""
max_gcc=""
if [ -z "$nvcc_bin" ]; then
    problems+=("nvcc not found: install a CUDA 11.x toolkit (11.0 or 11.2 match the MXNet wheels) and put its bin/ on PATH (or set CUDA_HOME)")
else
    cuda_home=${cuda_home:-$(dirname "$(dirname "$nvcc_bin")")}
    version=$("$nvcc_bin" --version | sed -n 's/.*release \([0-9][0-9]*\)\.\([0-9]*\).*/\1.\2/p')
    case "$version" in
        11.0) wheel=mxnet-cu110; max_gcc=9 ;;
        11.1) problems+=("nvcc is CUDA 11.1: mxnet-cu110 links CUDA 11.0's libnvrtc.so.11.0 and libcusolver.so.10, mxnet-cu112 needs libnvrtc.so.11.2; install CUDA 11.0 or 11.2-11.8") ;;
        11.2 | 11.3) wheel=mxnet-cu112; max_gcc=10 ;;
        11.[4-8]) wheel=mxnet-cu112; max_gcc=11 ;;
        *) problems+=("nvcc is CUDA ${version:-unknown}; MXNet 1.9.1 wheels exist for CUDA 11.0 (mxnet-cu110) and 11.2 (mxnet-cu112) only: set CUDA_HOME to a CUDA 11.x toolkit") ;;
    esac
fi
wheel=${MXNET_WHEEL:-$wheel}

cxx=${CXX:-g++}
if [ -n "$max_gcc" ] && command -v "$cxx" > /dev/null && ! "$cxx" --version 2>/dev/null | grep -qi clang; then
    gcc_major=$("$cxx" -dumpversion 2>/dev/null | cut -d. -f1)
    if [ -n "$gcc_major" ] && [ "$gcc_major" -gt "$max_gcc" ]; then
        problems+=("nvcc $version accepts g++ up to $max_gcc, but $cxx is version $gcc_major: install g++-$max_gcc and set CC=gcc-$max_gcc CXX=g++-$max_gcc")
    fi
fi

nccl_include=""
for dir in "${HOROVOD_NCCL_INCLUDE:-}" "${HOROVOD_NCCL_HOME:+$HOROVOD_NCCL_HOME/include}" \
        "${NCCL_HOME:+$NCCL_HOME/include}" "${cuda_home:+$cuda_home/include}" /usr/include /usr/local/include; do
    if [ -n "$dir" ] && [ -f "$dir/nccl.h" ]; then
        nccl_include=$dir
        break
    fi
done
nccl_lib=""
for dir in "${HOROVOD_NCCL_LIB:-}" "${HOROVOD_NCCL_HOME:+$HOROVOD_NCCL_HOME/lib}" "${NCCL_HOME:+$NCCL_HOME/lib}" \
        "${cuda_home:+$cuda_home/lib64}" /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/lib; do
    if [ -n "$dir" ] && compgen -G "$dir/libnccl.so*" > /dev/null; then
        nccl_lib=$dir
        break
    fi
done
nccl_version=""
if [ -z "$nccl_include" ]; then
    problems+=("nccl.h not found: install NCCL >= 2.7 for CUDA 11 (libnccl-dev) or set HOROVOD_NCCL_HOME (or NCCL_HOME) to its prefix")
else
    nccl_version=$(sed -n 's/^#define NCCL_\(MAJOR\|MINOR\|PATCH\) *\([0-9]*\).*/\2/p' "$nccl_include/nccl.h" | paste -sd.)
fi
if [ -z "$nccl_lib" ]; then
    problems+=("libnccl.so not found: install NCCL's library (libnccl2) or set HOROVOD_NCCL_LIB to its directory")
fi

cc_list=${HOROVOD_BUILD_CUDA_CC_LIST:-}
gpus=""
if command -v nvidia-smi > /dev/null; then
    gpus=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2> /dev/null || true)
fi
if [ -n "$gpus" ]; then
    detected=()
    while IFS=, read -r name cap; do
        cap=${cap// /}
        [ -z "$cap" ] && continue
        major=${cap%%.*}
        if [ "$major" -ge 9 ]; then
            problems+=("$name is compute capability $cap: MXNet 1.9.1 wheels have kernels up to sm_86 and no PTX, and no MXNet 1.x build supports sm_90 or newer; train on V100/A100-class GPUs")
        fi
        detected+=("${cap/./}")
    done <<< "$gpus"
    if [ -z "$cc_list" ] && [ "${#detected[@]}" -gt 0 ]; then
        cc_list=$(printf '%s\n' "${detected[@]}" | sort -un | paste -sd,)
    fi
fi
cc_list=${cc_list:-70}  # V100 when no GPU is visible on the build machine

if [ "${#problems[@]}" -gt 0 ]; then
    echo "make install-gpu cannot install the GPU stack:" >&2
    for p in "${problems[@]}"; do
        echo "  - $p" >&2
    done
    exit 1
fi
echo "CUDA $version at $cuda_home -> $wheel==1.9.1; NCCL ${nccl_version:-?} ($nccl_include, $nccl_lib); $cxx OK for nvcc; Horovod kernels for sm_$cc_list" >&2
printf 'MXNET_WHEEL=%q\nHOROVOD_CUDA_HOME=%q\nHOROVOD_NCCL_INCLUDE=%q\nHOROVOD_NCCL_LIB=%q\nHOROVOD_BUILD_CUDA_CC_LIST=%q\n' \
    "$wheel" "$cuda_home" "$nccl_include" "$nccl_lib" "$cc_list"
