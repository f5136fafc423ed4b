#!/usr/bin/env bash
# The PyTorch consumer's tests (codegen/consumers/test_apply_plan.py) as CI runs them:
# torch and torchvision in a throwaway virtual environment under the user's cache folder
# (never a dependency of cnnc), created once per machine and reused after, then pytest in
# strict mode (a missing torch, jsonschema or cnnc binary fails instead of skipping).
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

if [ ! -x "$CNNC_BIN" ]; then
    echo "ci-pytest: no cnnc binary at $CNNC_BIN (run cargo build first)" >&2
    exit 1
fi
if ! "$PY" -c 'import torch, torchvision, pytest, jsonschema' 2>/dev/null; then
    start=$(date +%s)
    echo "ci-pytest: installing ${PKGS[*]} into $VENV (once per machine, ~3 GB)"
    if ! python3 -m venv --help >/dev/null 2>&1; then
        apt-get update && apt-get install -y python3-venv
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${PKGS[@]}"
    echo "ci-pytest: installed in $(( $(date +%s) - start )) s"
fi
"$PY" -c 'import torch, torchvision; print("ci-pytest: torch", torch.__version__, "torchvision", torchvision.__version__)'
CNNC="$(realpath "$CNNC_BIN")" CNNC_PYTEST_STRICT=1 "$PY" -m pytest -q -p no:cacheprovider codegen/consumers/test_apply_plan.py
