#!/usr/bin/env python3
"""Statistics of a torchvision model's tensors at named module points, under a cnnc plan.

    probe_points.py --model densenet121 --plan plan.json \
        --points features.pool0:out,features.transition1.conv:out,features.transition1.pool:out \
        [--draws 2] [--batch 8] [--size 224]

Each point is MODULE:in or MODULE:out (the module's first input, a list of inputs
concatenated on the channels, or its output). The model is built and the plan applied as
in measure_dag.py (every BatchNorm in training mode: batch statistics); then per draw,
x ~ N(0, 1), a backward from (out * G).sum() with G ~ N(0, 1), and per point, averaged
over the draws:
  E[x2]   the second moment of the tensor
  VarB    the variance each channel's batch statistics see (mean over channels)
  rho1/2  the correlation of horizontal neighbours at lag 1 and 2 of the batch-centred
          tensor, per channel, averaged over channels (docs/dag.md, "Spatial correlation")
  E[g2]   the second moment of the gradient at the tensor
What docs/dag.md's DenseNet-121 figures (ρ = 0.285 after the stem pool, the first
transition's average keeping 1.49×) were measured with.
"""

import argparse
import importlib.util
import json
import os

import torch
import torch.nn as nn

_spec = importlib.util.spec_from_file_location(
    "measure_dag", os.path.join(os.path.dirname(os.path.abspath(__file__)), "measure_dag.py"))
md = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(md)


def lag_correlations(t):
    c = t - t.mean(dim=(0, 2, 3), keepdim=True)
    v = (c * c).mean(dim=(0, 2, 3))
    out = []
    for lag in (1, 2):
        if t.shape[3] <= lag:
            out.append(float("nan"))
            continue
        h = (c[..., :, lag:] * c[..., :, :-lag]).mean(dim=(0, 2, 3)) / v
        out.append(h.mean().item())
    return out, v.mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=md.MODELS)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--points", required=True)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = md.build(args.model)
    with open(args.plan) as f:
        plan = json.load(f)
    rows = md.check_plan(model, plan)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    mods = dict(model.named_modules())
    points = args.points.split(",")
    for p in points:
        name, side = p.rsplit(":", 1)
        if name not in mods or side not in ("in", "out"):
            md.die(f"point {p!r}: want MODULE:in or MODULE:out with a module of the model")
    res = {p: [] for p in points}
    for d in range(args.draws):
        md.init_draw(model, rows, plan, d, False)
        store, hooks = {}, []
        for p in points:
            name, side = p.rsplit(":", 1)

            def hook(mod, inp, out, p=p, side=side):
                t = inp[0] if side == "in" else out
                if isinstance(t, (list, tuple)):
                    t = torch.cat(t, 1)
                t.retain_grad()
                store[p] = t
            hooks.append(mods[name].register_forward_hook(hook))
        x = torch.randn(args.batch, 3, args.size, args.size)
        out = model(x)
        (out * torch.randn_like(out)).sum().backward()
        for p in points:
            t = store[p]
            (r1, r2), vb = lag_correlations(t.detach())
            g = t.grad
            res[p].append(((t.detach() ** 2).mean().item(), vb, r1, r2,
                           (g ** 2).mean().item() if g is not None else float("nan")))
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    width = max(len(p) for p in points)
    for p in points:
        a = torch.tensor(res[p]).mean(0).tolist()
        print(f"{p:{width}s}  E[x2] {a[0]:.4f}  VarB {a[1]:.4f}  rho1 {a[2]:.3f}  rho2 {a[3]:.3f}  E[g2] {a[4]:.4g}")


if __name__ == "__main__":
    main()
