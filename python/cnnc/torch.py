"""cnnc for torch.nn.Module: initialize a module from its plan, and check that it worked.

    import torch, torchvision, cnnc
    model = torchvision.models.resnet50(num_classes=10)
    report = cnnc.torch.init_(model, input_shape=(3, 224, 224), mode="forward",
                              analysis="map", branch_scale=0.0, seed=0)
    print(report)                          # per layer: module, σ, predicted second moments
    check = cnnc.torch.check(model, input_shape=(3, 224, 224), draws=8)
    print(check)                           # measured vs predicted, per layer

`init_` exports the module to ONNX in memory (`export_onnx`), plans it with cnnc's compiler
(`cnnc.plan`), and applies the plan by parameter name (`apply`): every planned weight drawn
from N(mean, σ²), every bias zeroed, every normalization's scale and shift set. `check`
measures what the plan predicts.
"""

import io
import math
import time
import warnings
import weakref

import torch
from torch import nn

from . import PlanError
from . import plan as _plan
from . import _apply, _measure

__all__ = ["init_", "apply", "check", "export_onnx", "InitReport", "CheckReport"]

OPSET = 17
# The last plan applied to each module, for `check` (weakly: a module's lifetime is its own).
_LAST_PLAN = weakref.WeakKeyDictionary()


def _example_inputs(module, input_shape, example_inputs):
    if example_inputs is not None:
        if input_shape is not None:
            raise ValueError("pass input_shape or example_inputs, not both")
        return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if input_shape is None:
        raise ValueError("pass input_shape (one sample's shape, e.g. (3, 224, 224)) or example_inputs")
    p = next(iter(module.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    # Two samples: BatchNorm in training mode needs more than one value per channel.
    x = torch.randn(2, *[int(d) for d in input_shape], generator=torch.Generator().manual_seed(0))
    return (x.to(device=device, dtype=dtype),)


class _Kept:
    """Restores a module's training flags, buffers (running statistics) and the RNG state
    after a forward it should not remember (an export's trace)."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.buffers = [(b, b.detach().clone()) for b in self.module.buffers()]
        cuda = sorted({t.device.index or 0 for t in self.module.parameters() if t.device.type == "cuda"})
        self.rng = torch.random.fork_rng(devices=cuda)
        self.rng.__enter__()
        return self

    def __exit__(self, *exc):
        self.rng.__exit__(*exc)
        with torch.no_grad():
            for b, v in self.buffers:
                b.copy_(v)
        for m, flag in self.flags:
            m.training = flag
        return False


def export_onnx(module, example_inputs):
    """The module as ONNX bytes, exported the way cnnc plans normalization layers.

    torch's TorchScript exporter (`dynamo=False`) in training mode
    (`training=TrainingMode.TRAINING`) with `do_constant_folding=False`: checked with torch
    2.15, it keeps every BatchNormalization node (with `training_mode=1`, so cnnc plans the
    batch statistics the module trains with) and names every initializer by its
    `state_dict` name, so the plan applies by name. The default (dynamo) exporter and the
    TorchScript exporter in eval mode both fold BatchNorm into the conv before it: the
    scales and shifts vanish from the graph (the plan could not set them, and the convs
    would be planned as if not normalized). Weights are exported with their values
    (`export_params=True`): planning reads none but small constants (a PReLU's slope, a
    scalar parameter the graph multiplies by), and those must be the module's.

    The trace runs the module once in training mode; its training flags, buffers (BatchNorm
    running statistics) and the RNG state are restored afterwards. Raises PlanError with
    torch's message when torch cannot export the module.
    """
    f = io.BytesIO()
    with _Kept(module):
        module.train()
        # Random regularizers trace as random ops (torchvision's StochasticDepth in
        # ConvNeXt and EfficientNet: RandomUniformLike), and the exporter puts every module
        # in training mode: their probability is 0 during the trace, so they export as the
        # identity they are at evaluation (cnnc reads a Dropout node as the identity too).
        random = [(m, m.p) for m in module.modules()
                  if (isinstance(m, torch.nn.modules.dropout._DropoutNd) or type(m).__name__ == "StochasticDepth")
                  and isinstance(getattr(m, "p", None), float)]
        for m, _ in random:
            m.p = 0.0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
                torch.onnx.export(module, tuple(example_inputs), f, dynamo=False,
                                  training=torch.onnx.TrainingMode.TRAINING,
                                  do_constant_folding=False, opset_version=OPSET, export_params=True)
        except Exception as e:
            raise PlanError("torch.onnx.export cannot export %s: %s: %s" % (type(module).__name__, type(e).__name__, e)) from e
        finally:
            for m, p in random:
                m.p = p
    return f.getvalue()


def init_(module, input_shape=None, *, example_inputs=None, mode="forward", analysis="paper", branch_scale=1.0, std_cap=None, batch=None, seed=None):
    """Initializes `module` in place from its cnnc plan; returns an InitReport.

    input_shape: one sample's shape, e.g. (3, 224, 224) (a batch of two N(0, 1) samples is
        traced); or example_inputs: the tensor (or tuple of tensors) the module is called with.
    mode, analysis, branch_scale, std_cap, batch: as for `cnnc.plan` (the CLI's `--mode`,
        `--analysis`, `--branch-scale`, `--std-cap`, `--batch`).
    seed: seeds the weight draws (a torch.Generator); None draws from torch's global RNG.

    Exports the module (`export_onnx`: BatchNorm kept, in training mode), plans it, checks
    that every planned weight, bias and normalization scale/shift is a parameter of the
    module with its planned shape, then draws the weights from N(mean, σ²), zeros the
    biases and sets the scales and shifts. On any error (torch cannot export the module,
    cnnc refuses an op or the input shape, a name or shape does not match) it raises
    PlanError and the module is unchanged; its training/eval mode is kept either way.
    """
    t0 = time.perf_counter()
    inputs = _example_inputs(module, input_shape, example_inputs)
    data = export_onnx(module, inputs)
    t1 = time.perf_counter()
    shape = tuple(inputs[0].shape[1:])
    plan = _plan(data, mode=mode, analysis=analysis, input_shape=shape if len(shape) == 3 else None,
                 std_cap=std_cap, branch_scale=branch_scale, batch=batch, kind="onnx", name=type(module).__name__)
    t2 = time.perf_counter()
    report = apply(module, plan, seed=seed)
    report.seconds = {"export": t1 - t0, "plan": t2 - t1, "apply": time.perf_counter() - t2}
    return report


def apply(module, plan, seed=None, generator=None):
    """Applies a plan (a dict, e.g. from `cnnc.plan`) to `module` by parameter name;
    returns an InitReport. Every planned weight must be a parameter of the module (by its
    `state_dict` name) with the planned shape, and so must every bias and normalization
    scale and shift (except a bias or affine parameter the module does not have, where the
    plan's value is what the module computes anyway); otherwise PlanError, and nothing is
    changed. `seed` (or a torch.Generator) makes the draws reproducible."""
    try:
        _apply.validate_plan(plan)
        params = dict(module.named_parameters())
        missing = [l["weight"]["name"] for l in plan["layers"] if l["weight"]["name"] not in params]
        if missing:
            raise PlanError("%d planned weight(s) are not parameters of the %s: %s" % (len(missing), type(module).__name__, ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")))
        if generator is None and seed is not None:
            device = next(iter(params.values())).device if params else torch.device("cpu")
            generator = torch.Generator(device=device).manual_seed(int(seed))
        applied = _apply.apply_plan(module, plan, generator=generator)
    except _apply.PlanMismatch as e:
        raise PlanError(str(e)) from e
    _LAST_PLAN[module] = plan
    return InitReport(plan, applied, type(module).__name__)


def _module_name(weight_name):
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name


def _table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header)] + [line(r) for r in rows])


def _g(v):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else "%.4g" % v


class _Report:
    layers = ()

    def to_pandas(self):
        """The layers as a pandas.DataFrame (pandas must be installed)."""
        import pandas

        return pandas.DataFrame(self.layers)


class InitReport(_Report):
    """What `init_` / `apply` did. `.plan` is the plan (a dict), `.layers` a list of dicts
    (one per weight layer: module, kind, weight shape, std, mean, bias, the predicted second
    moments forward (E[u²] of the layer's output) and backward (E[g²] of the gradient at
    its input), and the normalization that makes it scale-invariant, if any),
    `.batch_norms` a list of dicts (module, mode, scale, shift), `.skipped` the plan
    parameters the module lacks (name, why), `.gains` the gain parameters of standardized
    weights set (parameter, value, weight), `.seconds` the export/plan/apply times,
    `.name` the module's class name."""

    def __init__(self, plan, applied, name=None):
        self.plan = plan
        self.name = name or plan["network"]
        self.seconds = {}
        self.layers = []
        for l in plan["layers"]:
            p = l.get("predicted") or {}
            self.layers.append({
                "module": _module_name(l["weight"]["name"]), "kind": l.get("kind"),
                "shape": tuple(l["weight"]["shape"]), "std": l["weight"]["std"], "mean": l["weight"]["mean"],
                "bias": (l.get("bias") or {}).get("name"),
                "forward_variance": p.get("forward_variance"), "backward_variance": p.get("backward_variance"),
                "normalized_by": l.get("normalized_by"),
            })
        self.batch_norms = [
            {"module": _module_name(e["scale"]["name"]), "mode": e.get("mode"), "scale": e["scale"]["value"], "shift": e["shift"]["value"]}
            for e in plan.get("batch_norms") or []
        ]
        self.skipped = list(applied.skipped)
        # Standardized weights' gain parameters set (NF-ResNets' ScaledStdConv2d).
        self.gains = [{"parameter": n, "value": v, "weight": w} for w, n, v in getattr(applied, "gains", [])]

    def __repr__(self):
        p = self.plan
        head = "cnnc %s plan of %s (%s analysis, input %s%s): %d weight layers, %d normalizations" % (
            p["mode"], self.name, p["analysis"], "x".join(map(str, p["input_shape"])),
            "" if p.get("branch_scale") is None else ", branch scale %g" % p["branch_scale"],
            len(self.layers), len(self.batch_norms))
        rows = [(l["module"], l["kind"], "x".join(map(str, l["shape"])), "%.5g" % l["std"], _g(l["forward_variance"]), _g(l["backward_variance"]),
                 "" if l["normalized_by"] is None else "normalized") for l in self.layers]
        text = head + "\n" + _table(("module", "kind", "weight", "std", "pred fwd E[u²]", "pred bwd E[g²]", ""), rows)
        if self.batch_norms:
            groups = {}
            for b in self.batch_norms:
                groups.setdefault((b["scale"], b["shift"]), []).append(b["module"])
            text += "\nnormalizations: " + "; ".join("%d with scale %g, shift %g (%s)" % (len(m), s, t, ", ".join(m[:3]) + (", ..." if len(m) > 3 else ""))
                                                   for (s, t), m in groups.items())
        for g in self.gains:
            text += "\ngain %s = %.6g (standardized %s)" % (g["parameter"], g["value"], g["weight"])
        for name, why in self.skipped:
            text += "\nskipped %s: %s" % (name, why)
        return text


_DROPOUT = (nn.modules.dropout._DropoutNd,)


def _is_dropout(m):
    return isinstance(m, _DROPOUT) or type(m).__name__ == "StochasticDepth"


def check(module, input_shape=None, draws=8, batch=8, *, plan=None, seed=0):
    """Measures what the plan predicts: per planned weight layer, the second moment of its
    output (E[u²]) and of the gradient at its input (E[g²]), against the plan's predictions.

    plan: the plan to check (default: the last one `init_`/`apply` applied to this module).
    input_shape: one sample's shape (default: the plan's input shape).
    For each of `draws` draws (seeded by seed + draw): the weights are re-drawn from the
    plan, x ~ N(0, 1) of shape (batch, *input_shape), one forward, and a backward from the
    loss ⟨y, g⟩ with g ~ N(0, 1) of the output's shape (so the output gradient has unit
    second moment). The module runs in training mode, as it was planned (BatchNorm with
    batch statistics), with dropout and stochastic depth off and in-place activations made
    out of place. Afterwards the module's parameters, buffers, gradients, training flags
    and in-place flags are as they were.

    Returns a CheckReport: mean and spread over the draws, per layer.
    """
    plan = plan if plan is not None else _LAST_PLAN.get(module)
    if plan is None:
        raise ValueError("no plan: call cnnc.torch.init_(module, ...) first, or pass plan=")
    if draws < 1 or batch < 1:
        raise ValueError("draws and batch must be at least 1")
    shape = tuple(int(d) for d in (input_shape if input_shape is not None else plan["input_shape"]))
    modules = dict(module.named_modules())
    rows = []
    for l in plan["layers"]:
        name = _module_name(l["weight"]["name"])
        if name not in modules:
            raise PlanError("planned weight %r belongs to no module of the %s" % (l["weight"]["name"], type(module).__name__))
        rows.append((name, modules[name], l))
    params = list(module.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32

    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grads = [(p, p.grad) for p in params]
    flags = [(m, m.training) for m in module.modules()]
    inplace = [m for m in module.modules() if getattr(m, "inplace", None) is True]
    fwd = {name: [] for name, _, _ in rows}
    bwd = {name: [] for name, _, _ in rows}
    reads_input = set()
    t0 = time.perf_counter()
    try:
        module.train()
        for m in module.modules():
            if _is_dropout(m):
                m.eval()
        for m in inplace:
            m.inplace = False
        for d in range(draws):
            g = torch.Generator(device=device).manual_seed(int(seed) + d)
            _apply.apply_plan(module, plan, generator=g)
            x = torch.randn(batch, *shape, generator=g, device=device, dtype=dtype)
            try:
                f, b, first, _ = _measure.measure(module, [(name, m) for name, m, _ in rows], x,
                                                  lambda out: torch.randn(out.shape, generator=g, device=out.device, dtype=out.dtype))
            finally:
                module.zero_grad(set_to_none=True)
            reads_input |= first
            for name in fwd:
                fwd[name].append(f[name])
                bwd[name].append(b[name])
    finally:
        with torch.no_grad():
            module.load_state_dict(state)
        for p, gr in grads:
            p.grad = gr
        for m, flag in flags:
            m.training = flag
        for m in inplace:
            m.inplace = True
    return CheckReport(plan, rows, fwd, bwd, reads_input, draws, batch, shape, time.perf_counter() - t0, type(module).__name__)


def _stats(values, predicted):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    ratio = mean / predicted if predicted else None
    return mean, sd, min(values), max(values), ratio


class CheckReport(_Report):
    """What `check` measured. `.layers` is a list of dicts, one per planned weight layer:
    module, reads_input (the layer reads the network input: its input gradient is not the
    gradient of a hidden signal), pred_fwd, meas_fwd (mean over draws), sd_fwd (standard
    deviation over draws), min_fwd, max_fwd, ratio_fwd (meas/pred), draws_fwd (per draw),
    and the same for bwd. `.plot(path)` draws them against depth (needs matplotlib)."""

    def __init__(self, plan, rows, fwd, bwd, reads_input, draws, batch, shape, seconds, name=None):
        self.plan, self.draws, self.batch, self.input_shape, self.seconds = plan, draws, batch, shape, seconds
        self.name = name or plan["network"]
        self.layers = []
        for name, _, l in rows:
            p = l.get("predicted") or {}
            row = {"module": name, "reads_input": name in reads_input}
            for key, which, values in (("fwd", "forward_variance", fwd[name]), ("bwd", "backward_variance", bwd[name])):
                pred = p.get(which)
                mean, sd, lo, hi, ratio = _stats(values, pred)
                row.update({"pred_" + key: pred, "meas_" + key: mean, "sd_" + key: sd, "min_" + key: lo, "max_" + key: hi,
                            "ratio_" + key: ratio, "draws_" + key: list(values)})
            self.layers.append(row)

    def __repr__(self):
        p = self.plan
        head = "cnnc check of %s's %s plan (%s analysis): %d draws, batch %d, input %s, %.1f s; mean ± sd over draws" % (
            self.name, p["mode"], p["analysis"], self.draws, self.batch, "x".join(map(str, self.input_shape)), self.seconds)
        rows = []
        for l in self.layers:
            rows.append((l["module"] + (" (input)" if l["reads_input"] else ""),
                         _g(l["pred_fwd"]), "%s ± %s" % (_g(l["meas_fwd"]), _g(l["sd_fwd"])), _g(l["ratio_fwd"]),
                         _g(l["pred_bwd"]), "%s ± %s" % (_g(l["meas_bwd"]), _g(l["sd_bwd"])), _g(l["ratio_bwd"])))
        return head + "\n" + _table(("module", "pred E[u²]", "measured", "ratio", "pred E[g²]", "measured", "ratio"), rows)

    def plot(self, path):
        """Writes a figure of measured (mean ± sd over draws) and predicted second moments
        against depth, forward and backward, to `path` (needs matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
        depth = list(range(1, len(self.layers) + 1))
        for ax, key, title in ((axes[0], "fwd", "forward: E[u²] of each layer's output"), (axes[1], "bwd", "backward: E[g²] at each layer's input")):
            pred = [l["pred_" + key] if l["pred_" + key] else float("nan") for l in self.layers]
            ax.plot(depth, pred, "-", color="black", label="predicted")
            ax.errorbar(depth, [l["meas_" + key] for l in self.layers], yerr=[l["sd_" + key] for l in self.layers],
                        fmt="o", markersize=3, capsize=2, label="measured (mean ± sd)")
            ax.set_yscale("log")
            ax.set_xlabel("weight layer")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
        fig.suptitle("%s, %s plan, %d draws of batch %d" % (self.name, self.plan["mode"], self.draws, self.batch), fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
