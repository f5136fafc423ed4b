#!/usr/bin/env bash
# The Python side as CI runs it: the Python package's wheel (python/, maturin) and its tests,
# and the PyTorch consumer's tests (codegen/consumers/test_apply_plan.py). torch and
# torchvision live in a throwaway virtual environment under the user's cache folder (never a
# dependency of cnnc), created once per machine and reused after; maturin, pandas and
# matplotlib are installed there too. Then:
#   1. `maturin build --release` of python/ (the wheel: cnnc without candle, abi3);
#   2. the wheel and pytest alone in a fresh virtual environment: python/tests/test_plan.py
#      (cnnc.plan needs no torch);
#   3. the wheel in the torch venv: python/tests/ and codegen/consumers/test_apply_plan.py,
#      in strict mode (a missing torch, jsonschema or cnnc binary fails instead of skipping).
#
#   scripts/torch/ci-pytest.sh [CNNC_BINARY]      # default: target/debug/cnnc
#
# torch comes from the Python package index, the only one reachable here: the default
# wheel with its CUDA libraries, about 3 GB once per machine (it runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
CNNC_BIN="${1:-target/debug/cnnc}"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/cnnc/torch-venv"
PY="$VENV/bin/python"
# The versions the tests were written and measured against.
PKGS=(torch==2.15.0 torchvision==0.29.2 pytest jsonschema)
# Optional for the package (InitReport.to_pandas, CheckReport.plot), tested here; onnxruntime
# runs cnnc's ONNX exports, onnx checks them, in tests/export_ort.rs (the README's test command,
# after this).
EXTRAS=(maturin==1.16.0 pandas==3.1.1 matplotlib==3.11.2 onnxruntime==1.32.0 onnx==1.23.2)
WHEELS=target/wheels

if [ ! -x "$CNNC_BIN" ]; then
    echo "ci-pytest: no cnnc binary at $CNNC_BIN (run cargo build first)" >&2
    exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3-venv
fi
if ! "$PY" -c 'import torch, torchvision, pytest, jsonschema' 2>/dev/null; then
    start=$(date +%s)
    echo "ci-pytest: installing ${PKGS[*]} into $VENV (once per machine, ~3 GB)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${PKGS[@]}"
    echo "ci-pytest: installed in $(( $(date +%s) - start )) s"
fi
if ! "$VENV/bin/pip" freeze --disable-pip-version-check 2>/dev/null | grep -qx "${EXTRAS[0]}" \
   || ! "$PY" -c 'import pandas, matplotlib, onnxruntime, onnx' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${EXTRAS[@]}"
fi
"$PY" -c 'import torch, torchvision; print("ci-pytest: torch", torch.__version__, "torchvision", torchvision.__version__)'
CNNC="$(realpath "$CNNC_BIN")"
export CNNC CNNC_PYTEST_STRICT=1

# 1. The wheel.
start=$(date +%s)
rm -f "$WHEELS"/cnnc-*.whl
"$VENV/bin/maturin" build --release --locked --quiet -m python/Cargo.toml -o "$WHEELS"
WHEEL=$(ls "$WHEELS"/cnnc-*.whl)
echo "ci-pytest: built $WHEEL ($(du -k "$WHEEL" | cut -f1) KB) in $(( $(date +%s) - start )) s"

# 2. A fresh virtual environment: the wheel and pytest, no torch.
BARE=$(mktemp -d)
trap 'rm -rf "$BARE"' EXIT
python3 -m venv "$BARE/venv"
"$BARE/venv/bin/pip" install --quiet --disable-pip-version-check "$WHEEL" pytest
"$BARE/venv/bin/python" -c 'import importlib.util, sys; assert importlib.util.find_spec("torch") is None, "torch in the fresh venv"'
"$BARE/venv/bin/python" -m pytest -q -p no:cacheprovider python/tests/test_plan.py

# 3. The torch venv: the same wheel, every Python test.
"$VENV/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$WHEEL"
"$PY" -m pytest -q -p no:cacheprovider python/tests codegen/consumers/test_apply_plan.py
