#!/usr/bin/env bash
# Checks cnnc on a GPU machine that may be offline and have no Rust toolchain, from the
# binaries that `scripts/check-cuda.sh --build` bundles on a CPU machine
# (target/cuda/device-bundle.tar.xz: a stripped cnnc and the CUDA test binary):
#
#   1. the GPU, and the CUDA libraries the binaries need, found on this machine;
#   2. tests/nn_cuda.rs with CNNC_REQUIRE_CUDA=1 (no skipping): the pooling kernels bit for
#      bit against the CPU, every layer kind's forward and gradients, F34's at 64×64;
#   3. F34's training throughput at 224×224, batch 64, f32, in images/s;
#   4. `cnnc train` of F34 for one epoch on synthetic data (`cnnc synth-data`) on CUDA.
#
# Usage, from the repository root: scripts/device-check.sh [BUNDLE.tar.xz]
# The log goes to $OUT/device-check.log when OUT is set, else to target/device-check.log.
# CNNC_CUDA_LIBS (a folder list, colon-separated) adds places to look for the libraries.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-target/cuda/device-bundle.tar.xz}
LOG=${OUT:-target}/device-check.log
mkdir -p "$(dirname "$LOG")"
START=$(date +%s)

main() {
    fail() { echo "device-check.sh: FAILED: $*"; exit 1; }
    step() { echo; echo "== $* ($(($(date +%s) - START)) s)"; }

    [ -f "$BUNDLE" ] || fail "no bundle at $BUNDLE: build it with scripts/check-cuda.sh --build on a CPU machine and bring it"
    [ -f specs/f34.cnn ] || fail "run from a checkout's root (specs/f34.cnn)"
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    tar -C "$WORK" -xJf "$BUNDLE" || fail "cannot unpack $BUNDLE"
    B=$WORK/device-bundle
    cat "$B/MANIFEST"
    echo "checkout $(git rev-parse HEAD 2>/dev/null || echo '(not a git checkout)') (the tests read specs/f34.cnn from it)"

    step "the GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || echo "(nvidia-smi failed)"

    step "the libraries"
    # Where CUDA 13's runtime libraries may be: a toolkit, NVIDIA's wheels in any Python's
    # site-packages (PyTorch's among them), the driver's folders.
    CANDIDATES=${CNNC_CUDA_LIBS:-}
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib \
        /usr/lib/x86_64-linux-gnu; do
        CANDIDATES=$CANDIDATES:$d
    done
    for py in python3 /opt/torch/.venv/bin/python3; do
        command -v "$py" >/dev/null 2>&1 || continue
        for d in $("$py" -c 'import site, glob; print(" ".join(sorted({p for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/lib", recursive=True)})))' 2>/dev/null); do
            CANDIDATES=$CANDIDATES:$d
        done
    done
    # Each library the binary needs (NEEDED) from the first folder that has it, and what those
    # load in turn: libcublasLt (cuBLAS's), libnvrtc-builtins (NVRTC's, opened at run time).
    find_lib() {
        local lib=$1 d
        IFS=: read -ra dirs <<<"$CANDIDATES"
        for d in "${dirs[@]}"; do
            [ -n "$d" ] && compgen -G "$d/$lib" >/dev/null && { echo "$d"; return 0; }
        done
        ldconfig -p | grep -q " ${lib//\*/}" && { echo "(ld.so.cache)"; return 0; }
        return 1
    }
    LIBPATH=
    NEEDED=$(readelf -d "$B/cnnc" | sed -n 's/.*Shared library: \[\(lib\(cuda\|cudart\|cublas\|cublasLt\|curand\|nvrtc\)\.so[.0-9]*\)\]/\1/p')
    echo "NEEDED (CUDA): $(echo $NEEDED)"
    for lib in $NEEDED 'libcublasLt.so.13' 'libnvrtc-builtins.so.13*'; do
        found=$(find_lib "$lib") || fail "$lib not found (set CNNC_CUDA_LIBS to its folder)"
        echo "  $lib: $found"
        case "$found" in "("*) ;; *) case ":$LIBPATH:" in *":$found:"*) ;; *) LIBPATH=$LIBPATH${LIBPATH:+:}$found ;; esac ;; esac
    done
    export LD_LIBRARY_PATH=$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    # Every symbol resolved (the binaries bind at load time: a driver older than the CUDA
    # version cudarc was built for would miss functions).
    for bin in cnnc nn_cuda; do
        if ldd -r "$B/$bin" 2>&1 | grep -E 'not found|undefined symbol'; then
            fail "$bin: libraries or symbols missing (above)"
        fi
    done
    echo "all libraries and symbols resolve"

    RC=0
    step "tests/nn_cuda.rs on CUDA (CNNC_REQUIRE_CUDA=1)"
    CNNC_REQUIRE_CUDA=1 "$B/nn_cuda" --test-threads 1 --nocapture || { echo "device-check.sh: the CUDA tests FAILED"; RC=1; }

    step "F34 training throughput, 224x224, batch 64, f32"
    CNNC_REQUIRE_CUDA=1 "$B/nn_cuda" --ignored --exact f34_training_throughput --nocapture || { echo "device-check.sh: the throughput run FAILED"; RC=1; }

    step "cnnc train F34, one epoch on synthetic data, CUDA"
    "$B/cnnc" synth-data "$WORK/synth" --classes 10 --per-class 64 --size 224 --seed 1 || fail "synth-data"
    "$B/cnnc" train specs/f34.cnn --data "$WORK/synth" --image-size 224 --epochs 1 --batch-size 64 --lr 0.01 \
        --device cuda --out "$WORK/run" || { echo "device-check.sh: cnnc train on CUDA FAILED"; RC=1; }
    [ -f "$WORK/run/metrics.jsonl" ] && { echo "metrics.jsonl:"; cat "$WORK/run/metrics.jsonl"; }

    step "done"
    [ "$RC" -eq 0 ] && echo "device-check.sh: all passed in $(($(date +%s) - START)) s" || echo "device-check.sh: FAILED (above) after $(($(date +%s) - START)) s"
    return "$RC"
}

# Everything to the terminal and to the log; the exit status is main's.
main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
