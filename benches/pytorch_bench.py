#!/usr/bin/env python3
"""PyTorch CPU reference benchmark for the cnnc training kernels.

This is a standalone comparison script: it needs only PyTorch and the Python
standard library. PyTorch is NOT a dependency of this project. It lives in a
throwaway virtual environment outside the repository, created with

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch

Run it from the repository root:

    /work/torchenv/bin/python benches/pytorch_bench.py --threads 1 --json pt.json

Options:
    --threads T    torch.set_num_threads(T) (default 1)
    --sizes LIST   F34 input sizes, comma separated (default 64,224)
    --rounds N     timed calls for the conv and 64x64 workloads (default 5);
                   larger F34 inputs get proportionally fewer (at least 3)
    --warmup N     untimed calls before timing (default 1)
    --json FILE    also write the results as JSON:
                   {"torch_version", "threads",
                    "workloads": {name: {"best_s", "median_s", "images_per_s"?}}}

Everything runs in float32 on the CPU. Each workload is timed as several
separate calls after warm-up; "best" is the fastest call and "median" the
median, both in seconds per call (one call = one batch of 16).

Workloads:
  * conv3x3 64->64 on 16x64x56x56, padding 1, stride 1, with bias:
      - forward (under torch.no_grad)
      - forward+backward with x.requires_grad=True (input, weight, bias grads)
      - forward+backward with x not requiring grad (weight and bias grads only)
    backward is out.backward(g) with a fixed random upstream gradient g.
  * F34 (specs/f34.cnn), 3 input channels, 10 classes, batch 16, at each size:
      - forward (under torch.no_grad, eval mode)
      - train step: zero_grad + forward + cross-entropy + backward +
        SGD step (lr 1e-3, momentum 0.9, weight_decay 1e-4)
"""

import argparse
import json
import statistics
import sys
import time
import warnings

# torch warns at import when NumPy is absent; this script does not use NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 16
CLASSES = 10


def build_f34(num_classes=CLASSES):
    """F34 as in specs/f34.cnn: every conv has a bias and is followed by ReLU."""
    layers = []
    cin = 3

    def conv(cout, k, stride, pad):
        nonlocal cin
        layers.append(nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=True))
        layers.append(nn.ReLU(inplace=True))
        cin = cout

    conv(64, 7, 2, 3)
    layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    for _ in range(6):
        conv(64, 3, 1, 1)
    conv(128, 3, 2, 1)
    for _ in range(7):
        conv(128, 3, 1, 1)
    conv(256, 3, 2, 1)
    for _ in range(11):
        conv(256, 3, 1, 1)
    conv(512, 3, 2, 1)
    for _ in range(5):
        conv(512, 3, 1, 1)
    layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    layers.append(nn.Linear(512, num_classes))
    return nn.Sequential(*layers)


def time_calls(fn, rounds, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def bench_conv(results, rounds, warmup):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=True)
    x = torch.randn(BATCH, 64, 56, 56, generator=g)
    up = torch.randn(BATCH, 64, 56, 56, generator=g)
    prefix = "conv3x3 64->64 56x56 b16"

    def fwd():
        with torch.no_grad():
            conv(x)

    def fwd_bwd(inp):
        def step():
            conv.zero_grad(set_to_none=True)
            if inp.grad is not None:
                inp.grad = None
            out = conv(inp)
            out.backward(up)
        return step

    xg = x.clone().requires_grad_(True)
    record(results, f"{prefix} forward", *time_calls(fwd, rounds, warmup))
    record(results, f"{prefix} forward+backward (input grad)",
           *time_calls(fwd_bwd(xg), rounds, warmup))
    record(results, f"{prefix} forward+backward (no input grad)",
           *time_calls(fwd_bwd(x), rounds, warmup))


def build_model(name):
    """F34, or a torchvision network of the same name as a spec of specs/ (resnet18:
    torchvision's ResNet-18 with its BatchNorms, 1000 classes, as specs/resnet18.cnn)."""
    if name == "f34":
        return build_f34(), "F34"
    import torchvision
    builders = {"resnet18": ("ResNet18", torchvision.models.resnet18),
                "resnet50": ("ResNet50", torchvision.models.resnet50),
                "mobilenet_v2": ("MobileNetV2", torchvision.models.mobilenet_v2)}
    if name not in builders:
        sys.exit(f"--model: one of f34, {', '.join(builders)}")
    label, build = builders[name]
    return build(num_classes=1000), label


def bench_model(results, name, size, rounds, warmup):
    g = torch.Generator().manual_seed(size)
    torch.manual_seed(size)
    model, label = build_model(name)
    x = torch.randn(BATCH, 3, size, size, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                          weight_decay=1e-4)
    prefix = f"{label} {size}x{size} b{BATCH}"

    def fwd():
        with torch.no_grad():
            model(x)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    model.eval()
    record(results, f"{prefix} forward", *time_calls(fwd, rounds, warmup),
           images=BATCH)
    model.train()
    record(results, f"{prefix} train step",
           *time_calls(train_step, rounds, warmup), images=BATCH)


def record(results, name, best, median, images=None):
    entry = {"best_s": best, "median_s": median}
    if images is not None:
        entry["images_per_s"] = images / best
    results[name] = entry
    ips = f"{entry['images_per_s']:10.2f}" if images is not None else f"{'':>10}"
    print(f"{name:<58} {best:10.4f} {median:10.4f} {ips}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="64,224",
                    help="comma-separated F34 input sizes (default 64,224)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="timed calls for small workloads (default 5); "
                         "scaled down for larger F34 inputs, minimum 3")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--model", default="f34",
                    help="f34 (default), or resnet18/resnet50/mobilenet_v2 (torchvision's, "
                         "BatchNorm in training mode for the step): as kernels.rs --model")
    ap.add_argument("--no-conv", action="store_true", help="the network only")
    args = ap.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"float32 CPU, batch {BATCH}", flush=True)
    print(f"{'workload':<58} {'best s':>10} {'median s':>10} {'img/s':>10}")
    print("-" * 91)

    results = {}
    if not args.no_conv:
        bench_conv(results, args.rounds, args.warmup)
    for size in sizes:
        # Cost grows ~ size^2; keep the 224 run to a few calls.
        scale = (size / 64.0) ** 2
        rounds = max(3, min(args.rounds, round(args.rounds / scale * 2)))
        bench_model(results, args.model, size, rounds, args.warmup)

    if args.json:
        doc = {"torch_version": torch.__version__,
               "threads": torch.get_num_threads(),
               "workloads": results}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
