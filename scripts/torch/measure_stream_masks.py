#!/usr/bin/env python3
"""How often a ResNet stage's stream ReLUs are open together, against two models.

    measure_stream_masks.py --model resnet50_gn --plan plan.json [--draws 2] [--batch 8]
                            [--size 224] [--bn-train] [--stage layer3]

Block i of a stage computes x_i = a_i + t_i (a_i its branch's last value, t_i its input
s_{i-1}, or the downsample of it) and s_i = relu(x_i). A gradient that reaches the stage
through the identity path from block j back to block i passes the masks 1(x_i > 0) ...
1(x_j > 0): its second moment carries P(open i..j), not the product of the open
fractions. This measures both per pair (i, j) of a stage, in torch, and the value of a
reflected Gaussian random walk (a Lindley process): x_0 ~ N(mean, var) of the measured x_0,
x_i = relu(x_{i-1}) + a_i with a_i ~ N(mean, var) of the measured branch, independent
(sampled, 400,000 paths). Printed per stage: the pairs, then the worst |walk/torch - 1|.

The model, the plan's application and the draws are `measure_dag.py`'s; the branches'
outputs are copied in their hooks (torchvision adds the identity to them in place).
"""
import argparse
import collections
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure_dag as md  # noqa: E402


def branch_end(block):
    """The last module of a block's branch (its norm, or its last conv without one)."""
    for name in ("bn3", "conv3", "bn2", "conv2"):
        m = getattr(block, name, None)
        if m is not None and not (isinstance(m, nn.Identity) and name.startswith("bn")):
            return m
    md.die(f"{type(block).__name__}: no branch end found")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=[m for m in md.MODELS if m.startswith("resnet")])
    ap.add_argument("--plan", required=True, help="cnnc plan JSON")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bn-train", action="store_true", help="BatchNorm2d with batch statistics")
    ap.add_argument("--stage", help="only this stage (layer1 ... layer4)")
    ap.add_argument("--paths", type=int, default=400_000, help="walks sampled")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import json
    with open(args.plan) as f:
        plan = json.load(f)
    model = md.build(args.model)
    model.eval()
    if args.bn_train:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    rows = md.check_plan(model, plan)

    stages = collections.OrderedDict()
    for name, m in model.named_modules():
        if type(m).__name__ in ("Bottleneck", "BasicBlock"):
            stage = name.split(".")[0]
            if args.stage in (None, stage):
                stages.setdefault(stage, []).append(m)
    if not stages:
        md.die(f"no residual blocks in stage {args.stage!r}")
    seen = {}

    def keep(key):
        return lambda mod, inp, out: seen.__setitem__(key, out.detach().clone())

    for stage, blocks in stages.items():
        for i, b in enumerate(blocks):
            branch_end(b).register_forward_hook(keep((stage, i, "a")))
            b.register_forward_pre_hook(lambda mod, inp, key=(stage, i, "t"): seen.__setitem__(key, inp[0].detach().clone()))
            if b.downsample is not None:
                b.downsample.register_forward_hook(keep((stage, i, "t")))

    joint = collections.defaultdict(list)
    moments = collections.defaultdict(list)
    for d in range(args.draws):
        md.init_draw(model, rows, plan, d, False)
        seen.clear()
        with torch.no_grad():
            model(torch.randn(args.batch, 3, args.size, args.size))
        for stage, blocks in stages.items():
            xs = []
            for i in range(len(blocks)):
                a, t = seen[(stage, i, "a")].double(), seen[(stage, i, "t")].double()
                x = a + t
                xs.append(x > 0)
                moments[(stage, i, "a")].append((a.mean().item(), a.var(unbiased=False).item()))
                if i == 0:
                    moments[(stage, 0, "x")].append((x.mean().item(), x.var(unbiased=False).item()))
            for i in range(len(blocks)):
                alive = torch.ones_like(xs[i])
                for j in range(i, len(blocks)):
                    alive = alive & xs[j]
                    joint[(stage, i, j)].append(alive.double().mean().item())

    rng = np.random.default_rng(0)
    print(f"model `{args.model}`, plan `{args.plan}`, {args.draws} draws, batch {args.batch}, "
          f"{args.size}x{args.size}{', BN batch statistics' if args.bn_train else ''}\n")
    for stage, blocks in stages.items():
        n = len(blocks)
        mean = lambda key: np.mean(moments[key], axis=0)  # noqa: E731
        m0, v0 = mean((stage, 0, "x"))
        x = m0 + np.sqrt(v0) * rng.standard_normal(args.paths)
        walk = [x > 0]
        for i in range(1, n):
            ma, va = mean((stage, i, "a"))
            x = np.maximum(x, 0.0) + ma + np.sqrt(va) * rng.standard_normal(args.paths)
            walk.append(x > 0)
        print(f"## {stage}: {n} blocks\n")
        print("| masks | torch P(open) | product of open fractions | torch / product | walk | walk / torch |")
        print("|---|---:|---:|---:|---:|---:|")
        worst = 0.0
        for i in range(n):
            alive = np.ones(args.paths, dtype=bool)
            for j in range(i, n):
                alive &= walk[j]
                p = float(np.mean(joint[(stage, i, j)]))
                prod = float(np.prod([np.mean(joint[(stage, k, k)]) for k in range(i, j + 1)]))
                w = float(alive.mean())
                worst = max(worst, abs(w / p - 1.0))
                print(f"| {i}..{j} | {p:.4f} | {prod:.4f} | {p / prod:.3f} | {w:.4f} | {w / p:.3f} |")
        print(f"\nworst |walk/torch - 1| in {stage}: {worst:.3f}\n")


if __name__ == "__main__":
    main()
