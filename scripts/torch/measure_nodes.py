#!/usr/bin/env python3
"""Every node of a cnnc prediction against the real PyTorch network, row by row.

    cnnc lower --nodes model.onnx --analysis map --batch 8 > nodes.txt
    cnnc plan model.onnx --analysis map --batch 8 > plan.json
    measure_nodes.py --model resnet50_gn --plan plan.json --nodes nodes.txt [--draws 8]
                     [--batch 8] [--size 224] [--bn-train]

`measure_dag.py` compares the weight layers; this compares every value: a hook on every
leaf module call records E[x²] of its output and E[δ²] of the gradient there (and, for a
ReLU, of its input: the value of the Add before it), keyed like the ONNX node names of
torch's TorchScript export (`measure_dag.py --export`): module `layer1.0.conv1` is node
`/layer1/layer1.0/conv1/Conv`, the second call of `layer1.0.relu` is
`/layer1/layer1.0/relu_1/Relu`. Read down the backward column from the output: where the
ratio measured/predicted steps, the node there (or its rule) is what is off. Nodes with no
module (Flatten, an Add read by something other than a ReLU) are listed without a
measurement. The model, the plan's application and the draws are `measure_dag.py`'s.
"""
import argparse
import collections
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure_dag as md  # noqa: E402


def onnx_prefix(module, call):
    """`layer1.0.relu`, call 1 -> `/layer1/layer1.0/relu_1` (torch's TorchScript scopes)."""
    out, scope = [], []
    for p in module.split("."):
        if p.isdigit() and scope:
            scope[-1] = scope[-1] + "." + p
            out.append(scope[-1])
        else:
            scope.append(p)
            out.append(p)
    name = "/" + "/".join(out)
    return name + (f"_{call}" if call else "")


def read_nodes(path):
    """The rows of `cnnc lower --nodes`: (name, op, reads, E[x²], E[δ²] or None)."""
    rows = []
    with open(path) as f:
        for line in f:
            cells = line.split()
            if len(cells) < 7 or not cells[0].isdigit():
                continue
            grad = None if cells[6] == "fused" else float(cells[6])
            rows.append((cells[1], cells[2], cells[3].split(","), float(cells[5]), grad))
    if not rows:
        md.die(f"{path}: no rows of `cnnc lower --nodes`")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=md.MODELS)
    ap.add_argument("--plan", required=True, help="cnnc plan JSON")
    ap.add_argument("--nodes", required=True, help="the output of `cnnc lower --nodes`")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bn-train", action="store_true", help="BatchNorm2d with batch statistics")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import json
    with open(args.plan) as f:
        plan = json.load(f)
    nodes = read_nodes(args.nodes)
    model = md.build(args.model)
    model.eval()
    if args.bn_train:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    rows = md.check_plan(model, plan)

    fwd, bwd = collections.defaultdict(list), collections.defaultdict(list)
    calls = collections.Counter()

    def hook(name):
        def f(module, inp, out):
            key = onnx_prefix(name, calls[name])
            calls[name] += 1
            fwd[key].append(out.detach().pow(2).mean().item())
            out.register_hook(lambda g, key=key: bwd[key].append(g.pow(2).mean().item()))
            if isinstance(module, nn.ReLU):
                x = inp[0]
                fwd[key + ":in"].append(x.detach().pow(2).mean().item())
                if x.requires_grad:
                    x.register_hook(lambda g, key=key: bwd[key + ":in"].append(g.pow(2).mean().item()))
        return f

    for name, m in model.named_modules():
        if name and not list(m.children()):
            m.register_forward_hook(hook(name))
    for d in range(args.draws):
        md.init_draw(model, rows, plan, d, False)
        calls.clear()
        x = torch.randn(args.batch, 3, args.size, args.size, requires_grad=True)
        out = model(x)
        (out * torch.randn_like(out)).sum().backward()
        fwd["input"].append(1.0)
        bwd["input"].append(x.grad.pow(2).mean().item())
        model.zero_grad(set_to_none=True)

    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    # An Add (no module) is the input of the ReLU that reads it.
    readers = collections.defaultdict(list)
    for name, op, reads, _, _ in nodes:
        for r in reads:
            readers[r].append((name, op))
    print(f"model `{args.model}`, plan `{args.plan}`, {args.draws} draws, batch {args.batch}, "
          f"{args.size}x{args.size}{', BN batch statistics' if args.bn_train else ''}\n")
    print("| node | op | pred E[x²] | ratio | pred E[δ²] | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for name, op, _, pf, pb in nodes:
        key = "input" if name == "input" else name.rsplit("/", 1)[0]
        if key not in fwd and op == "add":
            relus = [r for r, o in readers[name] if o == "activation"]
            key = relus[0].rsplit("/", 1)[0] + ":in" if len(relus) == 1 else key
        mf, mb = mean(fwd.get(key, [])), mean(bwd.get(key, []))
        rf = f"{mf / pf:.3f}" if mf is not None and pf else "-"
        rb = f"{mb / pb:.3f}" if mb is not None and pb else "-"
        print(f"| `{name}` | {op} | {pf:.4g} | {rf} | {'fused' if pb is None else f'{pb:.4g}'} | {rb} |")


if __name__ == "__main__":
    main()
