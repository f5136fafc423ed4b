"""One measurement of signal propagation in a torch network: the forward and backward second
moments at each weight layer, as cnnc's plans predict them.

Shared by `cnnc.torch.check` and `scripts/torch/measure_dag.py` (which loads this file by
path, so it imports nothing from the package). Imports torch only.

For a batch x (requires_grad), one forward with a hook on each given module, then a
backward from (out * G).sum(), G ~ N(0, 1) of out's shape (the output gradient has unit
second moment). Per module:
  forward  = mean(u**2) over the module's whole output u (batch, channels, positions),
             taken inside the hook (before any later in-place op changes u);
  backward = mean(g**2) of the total gradient g with respect to the module's INPUT (two
             modules reading one tensor see the same total gradient).
"""

import torch


def second_moment(t):
    """mean(t**2) in float64, as a Python float."""
    return t.detach().double().pow(2).mean().item()


def measure(model, modules, x, output_gradient=torch.randn_like):
    """Runs one forward and backward of `model` on `x` (its requires_grad is set here) with
    hooks on `modules`, a list of (key, module). `output_gradient(out)` draws G.

    Returns (forward, backward, reads_input, changed): dicts key -> second moment; the set
    of keys whose module read x itself; and (key, "output" or "input") for every hooked
    tensor modified in place after its hook ran (harmless for the numbers, see above).
    Raises RuntimeError when a module was not called or no gradient reached its input.
    The parameters' .grad are left as the backward leaves them (the caller resets them).
    """
    fwd, bwd, first = {}, {}, set()
    seen = []  # (key, what, tensor, version when the hook ran)
    handles = []
    x.requires_grad_(True)

    def make_hook(key):
        def hook(mod, inputs, output):
            fwd[key] = second_moment(output)
            inp = inputs[0]
            seen.append((key, "output", output, output._version))
            seen.append((key, "input", inp, inp._version))
            if inp is x:
                first.add(key)
            if inp.requires_grad:
                def ghook(g):
                    bwd[key] = second_moment(g)
                inp.register_hook(ghook)
        return hook

    for key, m in modules:
        handles.append(m.register_forward_hook(make_hook(key)))
    try:
        out = model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError("the model's output is a %s, not a tensor: cannot draw its gradient" % type(out).__name__)
        G = output_gradient(out)
        (out * G).sum().backward()
    finally:
        for h in handles:
            h.remove()
    changed = [(key, what) for key, what, t, v in seen if t._version != v]
    del seen
    for key, _ in modules:
        if key not in fwd:
            raise RuntimeError("the module of %r was never called in forward" % key)
        if key not in bwd:
            raise RuntimeError("no gradient reached the input of %r" % key)
    return fwd, bwd, first, changed
