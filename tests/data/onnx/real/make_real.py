#!/usr/bin/env python3
"""Regenerate the real-exporter ONNX fixtures in this folder.

Run with the throwaway venv described in scripts/torch/README.md:

    ~/.cache/cnnc/torch-venv/bin/python tests/data/onnx/real/make_real.py [MODEL ...]

With model names, only those models' files are written (e.g. `unet`).

Every model is built with weights=None under torch.manual_seed(0), input 1x3x224x224.
Files written (see README.md next to this script):

  <model>.ts.onnx          TorchScript exporter, eval, export_params=False, opset 17
  <model>.ts.weights.onnx  TorchScript exporter, eval, export_params=True, opset 17,
                           initializer payloads stripped (> 16 elements)
  <model>.dynamo.onnx      dynamo exporter, eval, default opset, payloads stripped,
                           single file (no external data), per-node
                           pkg.torch.onnx.stack_trace metadata dropped
  <model>.train.onnx       TorchScript exporter, TrainingMode.TRAINING,
                           do_constant_folding=False, opset 17, payloads stripped
  resnet18_nobn.ts.onnx, mobilenet_v2_nobn.ts.onnx
                           norm_layer=Identity variants, like <model>.ts.onnx

"Stripped": every initializer with more than 16 elements keeps name, dims and
data_type but loses its data (raw_data and the typed *_data fields); smaller ones
(shape constants) and integer ones (indices) keep their data; in the GroupNorm
models, so do float tensors whose elements are all equal (the InstanceNormalization's
ones, which the importer checks).  The files are not runnable, only readable.

Prints one op-type histogram per file and, at the end, a Markdown summary.
"""

import collections
import hashlib
import math
import os
import sys
import tempfile
import traceback
import warnings

import onnx
import onnx.external_data_helper
import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET_TS = 17
STRIP_OVER = 16  # tensors with more elements than this lose their payload
INT_TYPES = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)  # never stripped

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "densenet121",
          "squeezenet1_0", "vgg11", "vgg16_bn"]
TRAIN_MODELS = ["resnet18", "mobilenet_v2", "densenet121", "vgg16_bn"]
NOBN_MODELS = ["resnet18", "mobilenet_v2", "efficientnet_b0"]
# More architectures, eval mode only (TorchScript with weights, and dynamo): SiLU and
# squeeze-excitation (EfficientNet), channel split and shuffle (ShuffleNet), Inception's
# concatenations of pooled branches (GoogLeNet), grouped convs (RegNet), depthwise
# separable blocks (MNASNet); ConvNeXt has LayerNorm, which cnnc refuses by name.
EXTRA_MODELS = ["efficientnet_b0", "shufflenet_v2_x1_0", "googlenet", "regnet_x_400mf", "mnasnet0_5", "convnext_tiny"]
# A small U-Net with BatchNorm and transposed convs (scripts/torch/measure_dag.py's UNet):
# TorchScript with weights, training mode, and dynamo.
UNET_MODELS = ["unet"]
# torchvision's ResNet-18 with GroupNorm(32) (`norm_layer`), eval: TorchScript with weights
# (InstanceNormalization over a Reshape to groups, γ and β by Mul and Add) and dynamo (the
# same, γ and β folded into [C, 1, 1] views under made-up names).
GN_MODELS = ["resnet18_gn"]

RESULTS = []   # (file, size, histogram) in write order
FAILURES = []  # (file, error text)


def build(name, nobn=False):
    torch.manual_seed(0)
    if name == "unet":
        import importlib.util
        spec = importlib.util.spec_from_file_location(
            "measure_dag", os.path.join(HERE, "..", "..", "..", "..", "scripts", "torch", "measure_dag.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.UNet()
    kwargs = {"weights": None}
    if name.endswith("_gn"):
        name = name[: -len("_gn")]
        kwargs["norm_layer"] = lambda c: torch.nn.GroupNorm(32, c)
    if nobn:
        kwargs["norm_layer"] = lambda c: torch.nn.Identity()
    return getattr(torchvision.models, name)(**kwargs)


def example_input():
    torch.manual_seed(0)
    return torch.randn(1, 3, 224, 224)


def numel(t):
    return math.prod(t.dims)


_DATA_FIELDS = ["raw_data", "float_data", "int32_data", "string_data",
                "int64_data", "double_data", "uint64_data"]


def strip_tensor(t):
    for f in _DATA_FIELDS:
        t.ClearField(f)


def is_fill(t, base_dir):
    """A float tensor whose elements are all equal (an InstanceNormalization's ones)."""
    if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) or numel(t) > 4096:
        return False
    try:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            onnx.external_data_helper.load_external_data_for_tensor(t, base_dir)
        a = onnx.numpy_helper.to_array(t)
    except Exception:
        return False
    return a.size > 0 and bool((a == a.flat[0]).all())


def strip_model(m, base_dir=None, keep_fills=False):
    """Clear the payload of every initializer with > STRIP_OVER elements.

    External-data tensors: small ones are read in from base_dir and made internal;
    big ones lose the reference.  Either way the file stands alone afterwards.
    """
    def tensors():
        for t in m.graph.initializer:
            yield t
        for n in m.graph.node:  # Constant nodes holding big tensors (rare)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t

    for t in tensors():
        external = t.data_location == onnx.TensorProto.EXTERNAL
        # Integer tensors are indices and shapes, not weights (ConvNeXt's dynamo export
        # gathers its pooled vector by a [1, 768, 1, 1] index tensor): always kept.
        if numel(t) > STRIP_OVER and t.data_type not in INT_TYPES and not (keep_fills and is_fill(t, base_dir)):
            strip_tensor(t)
        elif t.data_location == onnx.TensorProto.EXTERNAL:  # not read in by is_fill already
            onnx.external_data_helper.load_external_data_for_tensor(t, base_dir)
        if external:
            t.ClearField("external_data")
            t.data_location = onnx.TensorProto.DEFAULT
    return m


def histogram(m):
    return collections.Counter(n.op_type for n in m.graph.node)


def record(path):
    m = onnx.load(path, load_external_data=False)
    h = histogram(m)
    size = os.path.getsize(path)
    RESULTS.append((os.path.basename(path), size, h))
    print(f"  {os.path.basename(path)}: {size} bytes, {len(m.graph.node)} nodes, "
          f"{len(m.graph.initializer)} initializers, opset "
          f"{[ (o.domain or 'ai.onnx', o.version) for o in m.opset_import ]}")
    print("    " + ", ".join(f"{k} {v}" for k, v in sorted(h.items(), key=lambda kv: (-kv[1], kv[0]))))
    sys.stdout.flush()


def attempt(path, fn):
    name = os.path.basename(path)
    print(f"== {name}")
    sys.stdout.flush()
    try:
        fn(path)
        record(path)
    except Exception as e:  # record and move on
        text = "".join(traceback.format_exception_only(type(e), e)).strip()
        print(f"  FAILED: {text}")
        traceback.print_exc()
        FAILURES.append((name, text))
        if os.path.exists(path):
            os.remove(path)


def ts_export(model, path, **kw):
    args = dict(dynamo=False, opset_version=OPSET_TS,
                input_names=["input"], output_names=["output"])
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_input(),), path, **args)


def drop_stack_traces(m):
    """Remove the dynamo exporter's per-node Python stack traces.

    They hold absolute paths of this machine's venv (so the file would depend on
    where it was made) and are about a third of the file; every other metadata
    entry (namespace, name_scopes, class_hierarchy, fx_node, ...) is kept.
    """
    for n in m.graph.node:
        keep = [p for p in n.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(keep) != len(n.metadata_props):
            del n.metadata_props[:]
            n.metadata_props.extend(keep)


def resave_stripped(src, dst, base_dir=None, stack_traces=True, keep_fills=False):
    m = onnx.load(src, load_external_data=False)
    strip_model(m, base_dir, keep_fills)
    if not stack_traces:
        drop_stack_traces(m)
    onnx.save(m, dst)


def make_ts(name, nobn=False):
    def fn(path):
        ts_export(build(name, nobn).eval(), path, export_params=False)
    return fn


def make_ts_weights(name):
    def fn(path):
        with tempfile.TemporaryDirectory() as d:
            tmp = os.path.join(d, "full.onnx")
            ts_export(build(name).eval(), tmp, export_params=True)
            resave_stripped(tmp, path, d, keep_fills=name in GN_MODELS)
    return fn


def make_train(name):
    def fn(path):
        with tempfile.TemporaryDirectory() as d:
            tmp = os.path.join(d, "full.onnx")
            ts_export(build(name).train(), tmp, export_params=True,
                      training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False)
            resave_stripped(tmp, path, d)
    return fn


def make_dynamo(name):
    def fn(path):
        with tempfile.TemporaryDirectory() as d:
            tmp = os.path.join(d, "full.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(build(name).eval(), (example_input(),), tmp,
                                  dynamo=True, input_names=["input"],
                                  output_names=["output"])
            wrote_external = any(f != "full.onnx" for f in os.listdir(d))
            print(f"  dynamo wrote: {sorted(os.listdir(d))} (external data: {wrote_external})")
            resave_stripped(tmp, path, d, stack_traces=False, keep_fills=name in GN_MODELS)
        # the temporary directory (and any .data file) is gone now
    return fn


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def main():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"onnx {onnx.__version__}", end="")
    try:
        import onnxscript
        print(f", onnxscript {onnxscript.__version__}")
    except Exception:
        print(", onnxscript missing")

    only = set(sys.argv[1:])
    keep = (lambda names: [n for n in names if n in only]) if only else (lambda names: names)
    for name in keep(UNET_MODELS):
        attempt(os.path.join(HERE, f"{name}.ts.weights.onnx"), make_ts_weights(name))
        attempt(os.path.join(HERE, f"{name}.train.onnx"), make_train(name))
        attempt(os.path.join(HERE, f"{name}.dynamo.onnx"), make_dynamo(name))
    for name in keep(MODELS):
        attempt(os.path.join(HERE, f"{name}.ts.onnx"), make_ts(name))
        attempt(os.path.join(HERE, f"{name}.ts.weights.onnx"), make_ts_weights(name))
        attempt(os.path.join(HERE, f"{name}.dynamo.onnx"), make_dynamo(name))
        if name in TRAIN_MODELS:
            attempt(os.path.join(HERE, f"{name}.train.onnx"), make_train(name))
    for name in keep(NOBN_MODELS):
        attempt(os.path.join(HERE, f"{name}_nobn.ts.onnx"), make_ts(name, nobn=True))
    for name in keep(EXTRA_MODELS + GN_MODELS):
        attempt(os.path.join(HERE, f"{name}.ts.weights.onnx"), make_ts_weights(name))
        attempt(os.path.join(HERE, f"{name}.dynamo.onnx"), make_dynamo(name))

    print("\n## Summary (Markdown)\n")
    print("| file | bytes | nodes | op histogram |")
    print("|---|---:|---:|---|")
    total = 0
    for f, size, h in RESULTS:
        total += size
        ops = ", ".join(f"{k} {v}" for k, v in sorted(h.items(), key=lambda kv: (-kv[1], kv[0])))
        print(f"| `{f}` | {size} | {sum(h.values())} | {ops} |")
    print(f"\ntotal: {total} bytes in {len(RESULTS)} files")
    print("\nsha256 (first 16 hex):")
    for f, _, _ in RESULTS:
        print(f"  {sha(os.path.join(HERE, f))}  {f}")
    if FAILURES:
        print("\nFAILURES:")
        for f, e in FAILURES:
            print(f"  {f}: {e}")


if __name__ == "__main__":
    main()
