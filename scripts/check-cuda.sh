#!/usr/bin/env bash
# Type-checks (default) or builds (--build) cnnc with `--features cuda` on a machine
# without a GPU or a system CUDA toolkit.
#
#   scripts/check-cuda.sh            cargo check --release --features cuda
#   scripts/check-cuda.sh --build    cargo build --release --features cuda (the binary,
#                                    its NEEDED libraries and size, a clean `--device cuda`
#                                    failure without a GPU), and the CUDA test binaries
#
# The CUDA compiler, headers and runtime libraries come from NVIDIA's wheels on the Python
# package index, installed into a throwaway virtual environment (never a project
# dependency): $CNNC_CUDA_VENV, by default ~/.cache/cnnc/cuda-venv, made again when the
# pinned wheels below change. candle-kernels compiles its PTX with that nvcc; cudarc asks
# it for the CUDA version. The wheels are CUDA 13.0, the version of the GPU machines'
# driver (580): PTX from a newer nvcc is refused by an older driver
# (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). CUDA_COMPUTE_CAP (default 90, Hopper) picks the
# PTX target.
#
# Linking needs the driver library, which no wheel ships: a stub libcuda.so (soname
# libcuda.so.1) generated from cudarc's own declarations (scripts/cuda/libcuda-stub.py)
# stands in for it at link time; on a GPU machine the real driver is loaded instead.
#
# Cargo's output goes to $CARGO_TARGET_DIR, by default target/cuda, away from the default
# build's target/ (other flags there would rebuild everything). The same RUSTFLAGS are set
# for --build and the check, so that one reuses the other's compiled dependencies and
# candle-kernels' PTX (most of the time: nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=check
case "${1:-}" in
    "") ;;
    --build) MODE=build ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "check-cuda.sh: unknown argument \`$1\` (expected nothing or --build)" >&2; exit 2 ;;
esac

START=$(date +%s)
VENV=${CNNC_CUDA_VENV:-$HOME/.cache/cnnc/cuda-venv}
# CUDA 13.0 (see above), every part pinned: nvcc's wheel pulls nvidia-cuda-crt and nvidia-nvvm
# unpinned (13.5's cicc then writes PTX 9.5, which 13.0's ptxas refuses); cccl holds the
# headers candle-kernels includes (nv/target). The check needs only these; --build adds
# the libraries cudarc links (NVRTC, cuBLAS, cuRAND; cuBLAS alone is ~600 MB installed).
COMPILER="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
LIBS="nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35"
STAMP=$(cat "$VENV/.cnnc-wheels" 2>/dev/null || true)
if [ "${STAMP%% + *}" != "$COMPILER" ]; then
    echo "== installing NVIDIA's CUDA compiler wheels into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $COMPILER
    STAMP=$COMPILER
    echo "$STAMP" >"$VENV/.cnnc-wheels"
fi
if [ "$MODE" = build ] && [ "$STAMP" != "$COMPILER + $LIBS" ]; then
    echo "== installing NVIDIA's CUDA library wheels into $VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $LIBS
    echo "$COMPILER + $LIBS" >"$VENV/.cnnc-wheels"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU=$SITE/nvidia/cu13
[ -x "$CU/bin/nvcc" ] || { echo "check-cuda.sh: no nvcc at $CU/bin/nvcc (remove $VENV and run again)" >&2; exit 1; }

export PATH=$CU/bin:$PATH CUDA_ROOT=$CU CUDA_PATH=$CU CUDA_HOME=$CU
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
# The link folder: the stub driver and unversioned names for the wheels' libraries.
LINK=$CARGO_TARGET_DIR/cuda-link
mkdir -p "$LINK"
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-L native=$LINK"
nvcc --version | tail -n 2

if [ "$MODE" = check ]; then
    echo "== cargo check --release --features cuda"
    cargo check --locked --release --features cuda --all-targets
    echo "check-cuda.sh: cargo check --features cuda passed in $(($(date +%s) - START)) s"
    exit 0
fi

echo "== the link folder $LINK"
CUDARC=$(cargo metadata --locked --format-version 1 --features cuda 2>/dev/null |
    python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')
# cudarc's bindings are those of the CUDA version nvcc reports (or CUDARC_CUDA_VERSION).
VERSION=${CUDARC_CUDA_VERSION:-$(nvcc --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\),.*/\1 \2/p' | awk '{ printf "%d%02d0", $1, $2 }')}
python3 scripts/cuda/libcuda-stub.py "$CUDARC/src/driver/sys/mod.rs" "$VERSION" >"$LINK/libcuda-stub.c"
cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so.1" "$LINK/libcuda-stub.c"
ln -sf libcuda.so.1 "$LINK/libcuda.so"
for lib in cudart cublas cublasLt curand nvrtc; do
    real=$(ls "$CU/lib/lib$lib.so."* | sort | head -n 1)
    ln -sf "$real" "$LINK/lib$lib.so"
done
echo "stub libcuda.so.1: $(grep -c '^CUresult' "$LINK/libcuda-stub.c") driver functions from $CUDARC/src/driver/sys/mod.rs"

echo "== cargo build --release --features cuda"
cargo build --locked --release --features cuda --bin cnnc
# The CUDA test suite (tests/nn_cuda.rs), built here and run by scripts/device-check.sh.
TEST=$(cargo test --locked --release --features cuda --test nn_cuda --no-run --message-format json |
    python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "nn_cuda" and m.get("executable"):
        print(m["executable"])')
BIN=$CARGO_TARGET_DIR/release/cnnc
echo "binary: $BIN, $(stat -c %s "$BIN") bytes"
echo "NEEDED: $(readelf -d "$BIN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
echo "driver functions it imports: $(nm -D --undefined-only "$BIN" | grep -c ' cu[A-Z]') (of the stub's $(grep -c '^CUresult' "$LINK/libcuda-stub.c"))"
echo "test binary: $TEST, $(stat -c %s "$TEST") bytes"

echo "== the binary on this machine: CPU training works, --device cuda fails cleanly"
export LD_LIBRARY_PATH=$LINK:$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'network T\ninput 3x8x8\nconv(3/p1) -> 4, relu, maxpool(2/s2)\nconv(3/p1) -> 4, relu, global_avgpool\nlinear -> 2\n' >"$TMP/t.cnn"
"$BIN" synth-data "$TMP/data" --classes 2 --per-class 4 --size 8 --seed 1
"$BIN" train "$TMP/t.cnn" --data "$TMP/data" --image-size 8 --epochs 1 --batch-size 4 --device cpu --quiet --out "$TMP/cpu"
echo "CPU training: $(wc -l <"$TMP/cpu/metrics.jsonl") epoch in $TMP/cpu/metrics.jsonl"
set +e
# (As a user sees it: no backtrace, which candle's errors carry when RUST_BACKTRACE is set.)
RUST_BACKTRACE=0 "$BIN" train "$TMP/t.cnn" --data "$TMP/data" --image-size 8 --epochs 1 --batch-size 4 --device cuda --quiet --out "$TMP/cuda" >"$TMP/out" 2>&1
code=$?
set -e
sed 's/^/    /' "$TMP/out"
if [ "$code" -eq 0 ] || [ "$code" -ge 100 ] || grep -q panicked "$TMP/out"; then
    echo "check-cuda.sh: --device cuda without a GPU should fail with an error, got exit $code" >&2
    exit 1
fi
echo "--device cuda: exit $code, no panic"
# The CUDA tests here: the NVRTC compile runs (NVRTC needs no GPU), the GPU tests skip.
RUST_BACKTRACE=0 "$TEST" --test-threads 1 --nocapture

echo "== the bundle for a GPU machine (scripts/device-check.sh)"
B=$CARGO_TARGET_DIR/device-bundle
rm -rf "$B" && mkdir -p "$B"
strip -o "$B/cnnc" "$BIN"
strip -o "$B/nn_cuda" "$TEST"
{
    echo "commit $(git rev-parse HEAD)$([ -z "$(git status --porcelain -- src tests specs Cargo.toml Cargo.lock)" ] || echo ' (with uncommitted changes)')"
    echo "built $(date -u +%FT%TZ) with $(nvcc --version | tail -n 1), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
    echo "NEEDED $(readelf -d "$BIN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
} >"$B/MANIFEST"
tar -C "$CARGO_TARGET_DIR" -cJf "$CARGO_TARGET_DIR/device-bundle.tar.xz" device-bundle
echo "stripped: cnnc $(stat -c %s "$B/cnnc") bytes, nn_cuda $(stat -c %s "$B/nn_cuda") bytes; $CARGO_TARGET_DIR/device-bundle.tar.xz: $(stat -c %s "$CARGO_TARGET_DIR/device-bundle.tar.xz") bytes"
echo "check-cuda.sh: cargo build --features cuda passed in $(($(date +%s) - START)) s"
