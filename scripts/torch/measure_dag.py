#!/usr/bin/env python3
"""Check a cnnc plan against the real PyTorch network.

    measure_dag.py --model resnet18_nobn --plan plan.json [--draws 8] [--batch 8]
                   [--size 224] [--kaiming] [--bn-train] [--out table.md]
    measure_dag.py --model resnet18_nobn --emit-kaiming-plan fake_plan.json

Models: resnet18_nobn, mobilenet_v2_nobn (torchvision, norm_layer returning
nn.Identity()), resnet18, mobilenet_v2 (with BatchNorm2d).  All run in eval() mode
with every Dropout's p set to 0 and every in-place activation made out-of-place;
with --bn-train the BatchNorm2d modules alone are put in train() mode (batch
statistics) instead of using their running statistics (reset to 0 and 1 each draw).

The plan is cnnc's JSON: plan["layers"] is a list of
    {"weight": {"name": <state_dict key>, "std": s, "mean": m},
     "bias": {"name": <state_dict key>} or null,
     "predicted": {"forward_variance": f, "backward_variance": b}}
and optional plan["batch_norms"] a list of
    {"scale": {"name": k, "value": v}, "shift": {"name": k, "value": v}}.
For draw d: torch.manual_seed(d); every plan weight <- N(mean, std^2) in plan order,
every conv/linear bias <- 0, batch-norm scale/shift <- the given constants.  With
--kaiming the weights get kaiming_normal_(fan_in, relu) instead (std sqrt(2/fan_in),
mean 0); the predicted columns still come from the plan (compute it with
`--mode kaiming-in` to compare like with like).  --plan may be omitted with
--kaiming: the table then has no predictions.

Then x ~ N(0,1) of shape (batch, 3, size, size) with requires_grad, one forward with
hooks on every nn.Conv2d and nn.Linear, and a backward from (out * G).sum() with
G ~ N(0,1) of out's shape (so the output gradient has unit second moment).
Measured per weight layer:
  forward  = mean(u**2) over the module's whole output u (batch, channels, positions)
  backward = mean(g**2) of the total gradient g w.r.t. the module's INPUT tensor
             (two modules reading one tensor see the same total gradient)
Ratios are measured / predicted: "ratio" is mean-over-draws / predicted, min and max
are over the per-draw ratios.
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torchvision

MODELS = ("resnet18_nobn", "mobilenet_v2_nobn", "efficientnet_b0_nobn", "resnet18", "mobilenet_v2", "efficientnet_b0")
IN_BAND = (0.8, 1.25)


def die(msg):
    print(f"measure_dag.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def build(name):
    if name not in MODELS:
        die(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    base = name[:-len("_nobn")] if name.endswith("_nobn") else name
    kwargs = {"weights": None}
    if name.endswith("_nobn"):
        kwargs["norm_layer"] = lambda c: nn.Identity()
    model = getattr(torchvision.models, base)(**kwargs)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "inplace"):
            m.inplace = False  # keep every hooked tensor unmodified
    return model


def weight_modules(model):
    """state_dict weight key -> module, for every Conv2d and Linear, in module order."""
    out = {}
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out[f"{mname}.weight"] = m
    return out


def fan_in(w):
    return w.shape[1] * math.prod(w.shape[2:])


def emit_kaiming_plan(model, path):
    layers = []
    for key, m in weight_modules(model).items():
        layers.append({
            "weight": {"name": key, "std": math.sqrt(2.0 / fan_in(m.weight)), "mean": 0.0},
            "bias": {"name": key[:-len("weight")] + "bias"} if m.bias is not None else None,
            "predicted": {"forward_variance": 1.0, "backward_variance": 1.0},
        })
    bns = []
    for mname, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            bns.append({"scale": {"name": f"{mname}.weight", "value": 1.0},
                        "shift": {"name": f"{mname}.bias", "value": 0.0}})
    plan = {"note": "fake plan: Kaiming fan-in std, every prediction 1.0",
            "layers": layers}
    if bns:
        plan["batch_norms"] = bns
    with open(path, "w") as f:
        json.dump(plan, f, indent=1)
    print(f"wrote {path}: {len(layers)} layers, {len(bns)} batch norms")


def check_plan(model, plan):
    """Validate names; return [(key, module, layer_dict_or_None)] in report order."""
    sd = model.state_dict()
    mods = weight_modules(model)
    layers = plan.get("layers") if plan is not None else None
    if plan is not None and not isinstance(layers, list):
        die("plan has no list 'layers'")
    if layers is None:
        return [(k, m, None) for k, m in mods.items()]
    rows, seen = [], set()
    for i, layer in enumerate(layers):
        w = layer.get("weight") or {}
        key = w.get("name")
        if key not in sd:
            die(f"plan layer {i}: weight {key!r} is not in the model's state_dict")
        if key not in mods:
            die(f"plan layer {i}: {key!r} is in the state_dict but is not the weight "
                "of an nn.Conv2d or nn.Linear, so it cannot be measured")
        if key in seen:
            die(f"plan layer {i}: weight {key!r} appears twice")
        seen.add(key)
        b = layer.get("bias")
        if b is not None:
            bkey = b.get("name")
            if bkey not in sd:
                die(f"plan layer {i}: bias {bkey!r} is not in the model's state_dict")
            if mods[key].bias is None or bkey != key[:-len("weight")] + "bias":
                die(f"plan layer {i}: bias {bkey!r} is not the bias of {key!r}")
        rows.append((key, mods[key], layer))
    missing = [k for k in mods if k not in seen]
    if missing:
        die(f"{len(missing)} conv/linear weight(s) of the model are not in the plan: "
            + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    for j, bn in enumerate(plan.get("batch_norms") or []):
        for part in ("scale", "shift"):
            k = (bn.get(part) or {}).get("name")
            if k not in sd:
                die(f"plan batch_norms[{j}].{part}: {k!r} is not in the model's state_dict")
    return rows


def init_draw(model, rows, plan, d, kaiming):
    torch.manual_seed(d)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, m, layer in rows:
            if kaiming:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                w = layer["weight"]
                m.weight.normal_(float(w.get("mean", 0.0) or 0.0), float(w["std"]))
            if m.bias is not None:
                m.bias.zero_()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.weight.fill_(1.0)
                m.bias.zero_()
        for bn in (plan or {}).get("batch_norms") or []:
            params[bn["scale"]["name"]].fill_(float(bn["scale"]["value"]))
            params[bn["shift"]["name"]].fill_(float(bn["shift"]["value"]))


def second_moment(t):
    return t.detach().double().pow(2).mean().item()


def one_draw(model, rows, args, d):
    fwd, bwd, first = {}, {}, set()
    handles = []
    x = torch.randn(args.batch, 3, args.size, args.size)
    x.requires_grad_(True)

    def make_hook(key):
        def hook(mod, inputs, output):
            fwd[key] = second_moment(output)
            inp = inputs[0]
            if inp is x:
                first.add(key)
            if inp.requires_grad:
                def ghook(g):
                    bwd[key] = second_moment(g)
                inp.register_hook(ghook)
        return hook

    for key, m, _ in rows:
        handles.append(m.register_forward_hook(make_hook(key)))
    try:
        out = model(x)
        G = torch.randn_like(out)
        (out * G).sum().backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    for key, _, _ in rows:
        if key not in fwd:
            die(f"draw {d}: module of {key!r} was never called in forward")
        if key not in bwd:
            die(f"draw {d}: no gradient reached the input of {key!r}")
    return fwd, bwd, first


def predicted(layer, which):
    if layer is None:
        return None
    v = (layer.get("predicted") or {}).get(which)
    return None if v is None else float(v)


def fmt(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.4g}"


def ratio(m, p):
    return None if p is None or p == 0 else m / p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=MODELS)
    ap.add_argument("--plan", help="cnnc plan JSON (optional with --kaiming)")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--kaiming", action="store_true",
                    help="init with kaiming_normal_(fan_in, relu) instead of the plan's std")
    ap.add_argument("--bn-train", action="store_true",
                    help="BatchNorm2d in train() mode (batch statistics)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the Markdown table here")
    ap.add_argument("--emit-kaiming-plan", metavar="PATH",
                    help="write a fake plan (Kaiming fan-in std, predictions 1.0) and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    model = build(args.model)

    if args.emit_kaiming_plan:
        emit_kaiming_plan(model, args.emit_kaiming_plan)
        return
    if args.plan is None and not args.kaiming:
        die("--plan is required (it may be omitted only with --kaiming)")
    plan = None
    if args.plan is not None:
        with open(args.plan) as f:
            plan = json.load(f)

    model.eval()
    if args.bn_train:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if has_bn and not (plan or {}).get("batch_norms"):
        print("note: the model has BatchNorm2d but the plan sets none; "
              "using scale 1, shift 0", file=sys.stderr)

    rows = check_plan(model, plan)
    fwd = {k: [] for k, _, _ in rows}
    bwd = {k: [] for k, _, _ in rows}
    first = set()
    t0 = time.time()
    for d in range(args.draws):
        t = time.time()
        init_draw(model, rows, plan, d, args.kaiming)
        f, b, fi = one_draw(model, rows, args, d)
        first |= fi
        for k in fwd:
            fwd[k].append(f[k])
            bwd[k].append(b[k])
        print(f"draw {d}: {time.time() - t:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.time() - t0

    init = "kaiming_normal_(fan_in, relu)" if args.kaiming else "plan std"
    lines = [
        f"model `{args.model}`, plan `{args.plan}`, init {init}, "
        f"{'BN batch statistics, ' if args.bn_train else ''}"
        f"{args.draws} draws, batch {args.batch}, {args.size}x{args.size}, "
        f"torch {torch.__version__}, {elapsed:.0f} s",
        "",
        "| # | layer | pred fwd | meas fwd | ratio | min | max "
        "| pred bwd | meas bwd | ratio | min | max |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    f_in = f_n = b_in = b_n = 0
    for i, (key, _, layer) in enumerate(rows):
        pf, pb = predicted(layer, "forward_variance"), predicted(layer, "backward_variance")
        mf = sum(fwd[key]) / len(fwd[key])
        mb = sum(bwd[key]) / len(bwd[key])
        rf, rb = ratio(mf, pf), ratio(mb, pb)
        rfs = [r for r in (ratio(v, pf) for v in fwd[key]) if r is not None]
        rbs = [r for r in (ratio(v, pb) for v in bwd[key]) if r is not None]
        if rf is not None:
            f_n += 1
            f_in += IN_BAND[0] <= rf <= IN_BAND[1]
        if rb is not None and key not in first:
            b_n += 1
            b_in += IN_BAND[0] <= rb <= IN_BAND[1]
        label = key[:-len(".weight")]
        if key in first:
            label += " (input)"
        lines.append(
            f"| {i} | `{label}` | {fmt(pf)} | {fmt(mf)} | {fmt(rf)} "
            f"| {fmt(min(rfs) if rfs else None)} | {fmt(max(rfs) if rfs else None)} "
            f"| {fmt(pb)} | {fmt(mb)} | {fmt(rb)} "
            f"| {fmt(min(rbs) if rbs else None)} | {fmt(max(rbs) if rbs else None)} |")
    lines += [
        "",
        f"forward ratio in [{IN_BAND[0]}, {IN_BAND[1]}]: {f_in}/{f_n} layers; "
        f"backward (excluding the layer(s) reading the network input): {b_in}/{b_n} layers",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
