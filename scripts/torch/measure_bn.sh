#!/usr/bin/env bash
# cnnc's predictions against real torchvision networks with BatchNorm in training mode
# (batch statistics), forward and backward.
#
#   scripts/torch/measure_bn.sh [MODEL ...]
#
# Models default to: resnet18 resnet50 mobilenet_v2 densenet121 efficientnet_b0.
# For each model M, into $OUT (default /tmp/bn_measure):
#   M.train.onnx                      measure_dag.py --export (training-mode TorchScript export)
#   M/MODE.ANALYSIS.plan.json         cnnc plan M.train.onnx --mode MODE --analysis ANALYSIS
#   M/MODE.ANALYSIS.md, .json         measure_dag.py --bn-train table / per-layer numbers
#   M/MODE.ANALYSIS.err               stderr of the failing step, if cnnc or torch failed
#   M/times.tsv                       seconds per step
# for MODE in forward backward and ANALYSIS in paper map, then summary.md (made by
# bn_summary.py) over all the models of this run.  A failing plan or measurement is
# recorded in the summary and the script goes on.
#
# Environment (defaults): CNNC=target/release/cnnc, OUT=/tmp/bn_measure,
# PY=~/.cache/cnnc/torch-venv/bin/python, DRAWS=4, BATCH=8, SIZE=224, THREADS=2,
# MODES="forward backward", ANALYSES="paper map", PLAN_ARGS="" (more `cnnc plan` flags,
# e.g. "--batch 8").
set -uo pipefail
cd "$(dirname "$0")/../.."
HERE=scripts/torch
CNNC="${CNNC:-target/release/cnnc}"
OUT="${OUT:-/tmp/bn_measure}"
PY="${PY:-${XDG_CACHE_HOME:-$HOME/.cache}/cnnc/torch-venv/bin/python}"
DRAWS="${DRAWS:-4}"
BATCH="${BATCH:-8}"
SIZE="${SIZE:-224}"
THREADS="${THREADS:-2}"
MODES="${MODES:-forward backward}"
ANALYSES="${ANALYSES:-paper map}"
PLAN_ARGS="${PLAN_ARGS:-}"
if [ $# -gt 0 ]; then
    MODELS=("$@")
else
    MODELS=(resnet18 resnet50 mobilenet_v2 densenet121 efficientnet_b0)
fi

if [ ! -x "$CNNC" ]; then
    echo "measure_bn: no cnnc binary at $CNNC (cargo build --release --bin cnnc)" >&2
    exit 1
fi
if ! "$PY" -c 'import torch, torchvision, onnx' 2>/dev/null; then
    echo "measure_bn: $PY cannot import torch, torchvision and onnx (see $HERE/README.md)" >&2
    exit 1
fi
mkdir -p "$OUT"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

for M in "${MODELS[@]}"; do
    dir="$OUT/$M"
    rm -rf "$dir"
    mkdir -p "$dir"
    t_model=$(now)
    echo "== $M"
    t=$(now)
    if ! "$PY" "$HERE/measure_dag.py" --model "$M" --size "$SIZE" --threads "$THREADS" \
            --export "$OUT/$M.train.onnx" 2>"$dir/export.err"; then
        echo "   export failed: $(tail -n 1 "$dir/export.err")"
        printf 'export\t%s\tfailed\n' "$(since "$t")" >>"$dir/times.tsv"
        continue
    fi
    printf 'export\t%s\tok\n' "$(since "$t")" >>"$dir/times.tsv"
    for mode in $MODES; do
        for analysis in $ANALYSES; do
            tag="$mode.$analysis"
            rm -f "$dir/$tag.err"
            t=$(now)
            # shellcheck disable=SC2086  # PLAN_ARGS: extra flags, word-split on purpose
            if ! "$CNNC" plan "$OUT/$M.train.onnx" --mode "$mode" --analysis "$analysis" $PLAN_ARGS \
                    -o "$dir/$tag.plan.json" 2>"$dir/$tag.err"; then
                echo "   $tag: cnnc plan failed: $(tail -n 1 "$dir/$tag.err")"
                printf '%s.plan\t%s\tfailed\n' "$tag" "$(since "$t")" >>"$dir/times.tsv"
                continue
            fi
            rm -f "$dir/$tag.err"
            printf '%s.plan\t%s\tok\n' "$tag" "$(since "$t")" >>"$dir/times.tsv"
            t=$(now)
            if ! "$PY" "$HERE/measure_dag.py" --model "$M" --plan "$dir/$tag.plan.json" \
                    --bn-train --draws "$DRAWS" --batch "$BATCH" --size "$SIZE" \
                    --threads "$THREADS" --out "$dir/$tag.md" --json "$dir/$tag.json" \
                    >/dev/null 2>"$dir/$tag.log"; then
                cp "$dir/$tag.log" "$dir/$tag.err"
                echo "   $tag: measurement failed: $(tail -n 1 "$dir/$tag.err")"
                printf '%s.measure\t%s\tfailed\n' "$tag" "$(since "$t")" >>"$dir/times.tsv"
                continue
            fi
            printf '%s.measure\t%s\tok\n' "$tag" "$(since "$t")" >>"$dir/times.tsv"
            echo "   $tag: $(tail -n 1 "$dir/$tag.md")"
        done
    done
    printf 'total\t%s\tok\n' "$(since "$t_model")" >>"$dir/times.tsv"
    echo "   $M: $(since "$t_model") s"
done

"$PY" "$HERE/bn_summary.py" --out-dir "$OUT" --cnnc "$CNNC" --modes $MODES \
    --analyses $ANALYSES -- "${MODELS[@]}" >"$OUT/summary.md"
echo "wrote $OUT/summary.md"
