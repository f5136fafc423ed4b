"""F34's (and ResNet-18's) conv layers one at a time in PyTorch: the counterpart of benches/layers.rs.

Run with `/work/torchenv/bin/python benches/pytorch_layers.py --threads 2 [--size 64]
[--reps 40]` (torch in a throwaway virtual environment, never a dependency of cnnc).
For each shape: the fastest of `--reps` calls of the forward (`relu(conv(x))`) and of
`out.backward(g)` for a random g of the output's shape.
"""
import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--only", type=int, default=None, help="time shape I only (as layers.rs)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    s = a.size
    shapes = [(3, 64, s, 7, 2, 3), (64, 64, s // 4, 3, 1, 1), (64, 128, s // 4, 3, 2, 1), (128, 128, s // 8, 3, 1, 1),
              (128, 256, s // 8, 3, 2, 1), (256, 256, s // 16, 3, 1, 1), (256, 512, s // 16, 3, 2, 1), (512, 512, s // 32, 3, 1, 1),
              # ResNet-18's 1x1 stride-2 downsampling convolutions (not in F34)
              (64, 128, s // 4, 1, 2, 0), (128, 256, s // 8, 1, 2, 0), (256, 512, s // 16, 1, 2, 0)]
    print(f"threads: {a.threads}")
    for i, (ci, co, h, k, st, p) in enumerate(shapes):
        if a.only is not None and a.only != i:
            continue
        conv = torch.nn.Conv2d(ci, co, k, st, p)
        x = torch.randn(16, ci, h, h, requires_grad=(ci != 3))
        bf = bb = float("inf")
        for _ in range(a.reps):
            t = time.perf_counter()
            out = torch.relu(conv(x))
            t1 = time.perf_counter()
            g = torch.randn_like(out)
            t2 = time.perf_counter()
            out.backward(g)
            t3 = time.perf_counter()
            bf, bb = min(bf, t1 - t), min(bb, t3 - t2)
        print(f"{ci}->{co} {h}x{h} k{k} s{st}: fwd {bf * 1e3:.2f} ms  bwd {bb * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
