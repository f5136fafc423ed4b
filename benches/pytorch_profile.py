"""Where PyTorch's F34 training step goes on the CPU, op by op: the counterpart of a
`perf record` of `benches/kernels.rs` (BENCHMARKS.md, "Profile").

Run with `~/.cache/cnnc/torch-venv/bin/python benches/pytorch_profile.py --threads 2
[--size 64] [--steps 10]` (torch in a throwaway virtual environment, never a dependency
of cnnc). The model and step are `pytorch_bench.py`'s; after two warm-up steps,
`torch.profiler` records `--steps` steps and the table gives each op's self CPU time
per step, the largest first.
"""
import argparse

import torch
import torch.nn.functional as F

from pytorch_bench import BATCH, CLASSES, build_f34


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_f34()
    x = torch.randn(BATCH, 3, a.size, a.size)
    y = torch.randint(0, CLASSES, (BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"threads {a.threads}, {a.size}x{a.size}, batch {BATCH}: {total / a.steps / 1e3:.1f} ms a step (self CPU, profiled)")
    for e in events[: a.rows]:
        print(f"{e.key:45s} {e.self_cpu_time_total / a.steps / 1e3:8.2f} ms {100 * e.self_cpu_time_total / total:5.1f} %  calls/step {e.count / a.steps:.0f}")


if __name__ == "__main__":
    main()
