"""cnnc: weight-initialization plans for CNNs, from Python.

    import cnnc
    plan = cnnc.plan("model.onnx", mode="backward")      # the plan as a dict (no torch needed)

    import torch, torchvision
    model = torchvision.models.resnet50(num_classes=10)
    report = cnnc.torch.init_(model, input_shape=(3, 224, 224))   # export, plan, apply by name
    print(cnnc.torch.check(model, input_shape=(3, 224, 224)))     # measured vs predicted

The compiler is cnnc's Rust library (the extension module `cnnc._cnnc`); a plan from
here is the one `cnnc plan` writes, byte for byte. `cnnc.torch` is imported on first use,
so `import cnnc` does not import torch.
"""

import json as _json
import os as _os
import warnings as _warnings

from ._cnnc import PlanError, __version__
from ._cnnc import plan_bytes as _plan_bytes
from ._cnnc import plan_path as _plan_path

__all__ = ["PlanError", "PlanNote", "plan", "__version__"]

MODES = ("forward", "backward", "xavier", "kaiming-in", "kaiming-out")
ANALYSES = ("paper", "map")


class PlanNote(UserWarning):
    """A note of cnnc's importer (e.g. that an eval-mode export folded BatchNorm into the
    convs), issued as a warning; the CLI prints the same notes on stderr."""


def plan(source, mode="forward", analysis="paper", input_shape=None, std_cap=None, branch_scale=1.0, *, batch=None, kind=None, name=None):
    """The initialization plan of a network: exactly the content of `cnnc plan`'s JSON.

    source: a path (str or os.PathLike) to a `.cnn` description or an `.onnx` model (by
        extension, as the CLI decides), or the file's bytes (bytes, bytearray, memoryview).
    mode: "forward" | "backward" | "xavier" | "kaiming-in" | "kaiming-out" (`--mode`).
    analysis: "paper" (the paper's layer means) | "map" (a variance per position) (`--analysis`).
    input_shape: (C, H, W) of one sample instead of the declared one (`--input`).
    std_cap: cap σ at this multiple of the padding-aware He value (`--std-cap`).
    branch_scale: α of `--branch-scale` (graphs: the last weight layer of each residual
        branch targets α²; 0 starts every branch at zero).
    batch: the training batch size N (`--batch`): the gradient predictions then count what
        a BatchNorm's batch mean removes (1/N of the part a sample shares across its
        positions); None: the large-batch limit.
    kind: for bytes, "onnx" (default) or "cnn".
    name: for bytes, what error messages call the file (default "<bytes>").

    Returns a dict (format "cnnc-plan/1" for a chain, "cnnc-plan/2" for a graph). Raises
    PlanError with the compiler's message (the node, the layer, or file:line:col) when the
    model or an option is refused. The importer's notes are issued as PlanNote warnings.
    """
    shape = None if input_shape is None else [int(d) for d in input_shape]
    cap = None if std_cap is None else float(std_cap)
    batch = None if batch is None else int(batch)
    if batch is not None and batch < 2:
        raise PlanError("batch must be at least 2 (a batch-statistics BatchNorm of one sample is zero), got %d" % batch)
    if isinstance(source, (bytes, bytearray, memoryview)):
        text, notes = _plan_bytes(bytes(source), kind or "onnx", name or "<bytes>", mode, analysis, shape, cap, float(branch_scale), batch)
    elif isinstance(source, (str, _os.PathLike)):
        if kind is not None:
            raise TypeError("kind applies to bytes; a path's extension says what it is")
        text, notes = _plan_path(_os.fspath(source), mode, analysis, shape, cap, float(branch_scale), batch)
    else:
        raise TypeError("source must be a path or bytes, not %s" % type(source).__name__)
    for note in notes:
        _warnings.warn(note, PlanNote, stacklevel=2)
    return _json.loads(text)


def __getattr__(attr):
    # `cnnc.torch` without `import cnnc.torch`, and without importing torch at `import cnnc`.
    if attr == "torch":
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError("module 'cnnc' has no attribute %r" % attr)
