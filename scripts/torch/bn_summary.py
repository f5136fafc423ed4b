#!/usr/bin/env python3
"""Summary Markdown of a measure_bn.sh run (written to stdout).

    bn_summary.py --out-dir /tmp/bn_measure [--cnnc target/release/cnnc]
                  [--modes forward backward] [--analyses paper map]
                  [--worst forward.paper] [--n-worst 3] -- MODEL ...

Reads OUT/MODEL/MODE.ANALYSIS.{json,plan.json,err} and OUT/MODEL/times.tsv as
measure_bn.sh leaves them.  One row per model x mode x analysis: min and max over the
layers of measured/predicted (forward: every weight layer; backward: every weight layer
but the one(s) reading the network input), how many ratios lie in [0.8, 1.25], the
plan's min and max weight std, and the seconds of the measurement.  A failed step
shows its last error line instead.  Then, per model, the n worst layers (largest
|log ratio|) forward and backward for the --worst combination, and the seconds per
model.  Only the standard library is needed.
"""

import argparse
import json
import math
import os
import platform
import subprocess


def load(path):
    with open(path) as f:
        return json.load(f)


def fmt(v, spec=".3g"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec)


def last_error(path):
    try:
        with open(path) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return None
    if not lines:
        return "failed (no message)"
    return lines[-1].replace("|", "\\|")


def times(path):
    out = {}
    try:
        with open(path) as f:
            for ln in f:
                parts = ln.rstrip("\n").split("\t")
                if len(parts) >= 2:
                    out[parts[0]] = float(parts[1])
    except OSError:
        pass
    return out


def band_stats(rs, band):
    rs = [r for r in rs if r is not None and math.isfinite(r)]
    if not rs:
        return None, None, "0/0"
    n_in = sum(band[0] <= r <= band[1] for r in rs)
    return min(rs), max(rs), f"{n_in}/{len(rs)}"


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for ln in out.splitlines():
            if ln.startswith("Model name:"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--cnnc")
    ap.add_argument("--modes", nargs="+", default=["forward", "backward"])
    ap.add_argument("--analyses", nargs="+", default=["paper", "map"])
    ap.add_argument("--worst", default="forward.paper")
    ap.add_argument("--n-worst", type=int, default=3)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()

    rows, worst, meta, per_model = [], [], None, []
    for model in a.models:
        d = os.path.join(a.out_dir, model)
        tt = times(os.path.join(d, "times.tsv"))
        per_model.append((model, tt.get("export"), tt.get("total"),
                          last_error(os.path.join(d, "export.err"))
                          if "total" not in tt else None))
        for mode in a.modes:
            for analysis in a.analyses:
                tag = f"{mode}.{analysis}"
                err = last_error(os.path.join(d, f"{tag}.err"))
                jpath = os.path.join(d, f"{tag}.json")
                if err is not None or not os.path.exists(jpath):
                    if err is None and "total" not in tt:
                        err = "not run (export failed)" if tt.get("export") is not None else "not run"
                    rows.append(f"| {model} | {mode} | {analysis} | | | | | | | | | | "
                                f"{err or 'no result'} |")
                    continue
                res = load(jpath)
                meta = meta or res
                band = res.get("in_band", [0.8, 1.25])
                L = res["layers"]
                fmin, fmax, fin = band_stats([l["ratio_fwd"] for l in L], band)
                bmin, bmax, bin_ = band_stats([l["ratio_bwd"] for l in L if not l["input"]], band)
                plan = load(os.path.join(d, f"{tag}.plan.json"))
                stds = [float(l["weight"]["std"]) for l in plan["layers"]]
                inp = [l for l in L if l["input"]]
                note = ""
                if inp:
                    note = "input layer bwd ratio " + ", ".join(fmt(l["ratio_bwd"]) for l in inp)
                rows.append(
                    f"| {model} | {mode} | {analysis} | {fmt(fmin)} | {fmt(fmax)} | {fin} "
                    f"| {fmt(bmin)} | {fmt(bmax)} | {bin_} | {fmt(min(stds), '.4g')} "
                    f"| {fmt(max(stds), '.4g')} | {fmt(res['seconds'], '.0f')} | {note} |")
                if tag == a.worst:
                    worst.append((model, L))

    out = ["# cnnc vs torchvision, BatchNorm in training mode", ""]
    if meta:
        out.append(f"torch {meta['torch']}, torchvision {meta['torchvision']}, "
                   f"{meta['draws']} draws, batch {meta['batch']}, "
                   f"{meta['size']}x{meta['size']}, BN batch statistics: {meta['bn_train']}")
    ver = None
    if a.cnnc:
        try:
            ver = subprocess.run([a.cnnc, "--version"], capture_output=True,
                                 text=True).stdout.strip()
        except OSError:
            pass
    out.append(f"cnnc: {ver or a.cnnc or '?'}; CPU: {cpu_name()}")
    out += ["",
            "Ratios are measured/predicted (mean over draws). Backward excludes the "
            "layer reading the network input (its ratio is in the note).",
            "",
            "| model | mode | analysis | fwd min | fwd max | fwd in [0.8,1.25] | bwd min "
            "| bwd max | bwd in [0.8,1.25] | std min | std max | s | note |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    out += rows
    out += ["", "## Seconds per model (export, plans and measurements)", "",
            "| model | export s | total s | note |", "|---|---:|---:|---|"]
    for model, te, tt, err in per_model:
        out.append(f"| {model} | {fmt(te, '.0f')} | {fmt(tt, '.0f')} | {err or ''} |")
    out += ["", f"## Worst {a.n_worst} layers per model ({a.worst} plan, by |log ratio|)", ""]
    for model, L in worst:
        def key(r):
            return abs(math.log(r)) if r and r > 0 and math.isfinite(r) else math.inf
        out += [f"### {model}", "",
                "| dir | layer | predicted | measured | ratio |", "|---|---|---:|---:|---:|"]
        for l in sorted(L, key=lambda l: -key(l["ratio_fwd"]))[:a.n_worst]:
            out.append(f"| fwd | `{l['name']}` | {fmt(l['pred_fwd'], '.4g')} "
                       f"| {fmt(l['meas_fwd'], '.4g')} | {fmt(l['ratio_fwd'], '.4g')} |")
        for l in sorted([l for l in L if not l["input"]],
                        key=lambda l: -key(l["ratio_bwd"]))[:a.n_worst]:
            out.append(f"| bwd | `{l['name']}` | {fmt(l['pred_bwd'], '.4g')} "
                       f"| {fmt(l['meas_bwd'], '.4g')} | {fmt(l['ratio_bwd'], '.4g')} |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
