#!/usr/bin/env python3
"""Check a cnnc plan against the real PyTorch network.

    measure_dag.py --model resnet18_nobn --plan plan.json [--draws 8] [--batch 8]
                   [--size 224] [--kaiming] [--bn-train] [--out table.md]
    measure_dag.py --model resnet18_nobn --emit-kaiming-plan fake_plan.json
    measure_dag.py --model resnet50 --export resnet50.train.onnx [--size 224]

Models: resnet18_nobn, mobilenet_v2_nobn, efficientnet_b0_nobn (torchvision,
norm_layer returning nn.Identity()), resnet18, resnet50, mobilenet_v2, densenet121,
efficientnet_b0 (with BatchNorm2d).  All run in eval() mode with every Dropout's and
StochasticDepth's p set to 0 and every in-place activation made out-of-place
(DenseNet's functional F.relu(inplace=True) after norm5 included); with --bn-train
the BatchNorm2d modules alone are put in train() mode (batch statistics) instead of
using their running statistics (reset to 0 and 1 each draw).  After the first draw
the script notes on stderr any tensor a hook saw (a layer's input or output) that was
modified in place later (its autograd version counter changed).  That does not change
the numbers: the forward moment is taken inside the hook, and a tensor hook registered
before an in-place op receives the gradient w.r.t. the value the module read.  With
BatchNorm none is modified; in the _nobn ResNets `out += identity` modifies conv2's
output (bn2 is an Identity there).

--export PATH writes the ONNX file cnnc reads for BatchNorm in training mode and exits:
the same model (built under torch.manual_seed(0), p=0 and out-of-place as above) in
.train() mode, exported by the TorchScript exporter with
TrainingMode.TRAINING, do_constant_folding=False, opset 17, export_params=True, input
names "input"/"output", example input torch.randn(1, 3, size, size) under
torch.manual_seed(0); then, like tests/data/onnx/real/make_real.py, every initializer
with more than 16 elements loses its payload (name, dims and type are kept), unless
--export-keep-weights.  The state_dict names of all Conv2d/Linear weights and
BatchNorm2d scales/shifts must survive as initializer names (checked).

The plan is cnnc's JSON: plan["layers"] is a list of
    {"weight": {"name": <state_dict key>, "std": s, "mean": m},
     "bias": {"name": <state_dict key>} or null,
     "predicted": {"forward_variance": f, "backward_variance": b}}
and optional plan["batch_norms"] a list of
    {"scale": {"name": k, "value": v}, "shift": {"name": k, "value": v}}.
For draw d: torch.manual_seed(d); every plan weight <- N(mean, std^2) in plan order,
every conv/linear bias <- 0, batch-norm scale/shift <- the given constants.  With
--kaiming the weights get kaiming_normal_(fan_in, relu) instead (std sqrt(2/fan_in),
mean 0); the predicted columns still come from the plan (compute it with
`--mode kaiming-in` to compare like with like).  --plan may be omitted with
--kaiming: the table then has no predictions.

Then x ~ N(0,1) of shape (batch, 3, size, size) with requires_grad, one forward with
hooks on every nn.Conv2d and nn.Linear, and a backward from (out * G).sum() with
G ~ N(0,1) of out's shape (so the output gradient has unit second moment).
Measured per weight layer:
  forward  = mean(u**2) over the module's whole output u (batch, channels, positions)
  backward = mean(g**2) of the total gradient g w.r.t. the module's INPUT tensor
             (two modules reading one tensor see the same total gradient)
Ratios are measured / predicted: "ratio" is mean-over-draws / predicted, min and max
are over the per-draw ratios.
"""

import argparse
import collections
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import types
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops import StochasticDepth

# The measurement itself is the Python package's (python/cnnc/_measure.py, torch only),
# loaded by path: `cnnc.torch.check` and this script measure alike.
_spec = importlib.util.spec_from_file_location(
    "cnnc_measure", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "..", "..", "python", "cnnc", "_measure.py"))
_measure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_measure)

MODELS = ("resnet18_nobn", "mobilenet_v2_nobn", "efficientnet_b0_nobn",
          "resnet18", "resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0",
          "resnet18_gn", "resnet50_gn", "convnext_tiny", "unet")
OPSET = 17
STRIP_OVER = 16  # --export: initializers with more elements than this lose their payload
IN_BAND = (0.8, 1.25)


def die(msg):
    print(f"measure_dag.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


class UNet(nn.Module):
    """A small U-Net (Ronneberger et al. 2015, with BatchNorm): two levels down by max
    pooling, back up by transposed convs (kernel 2 stride 2, and kernel 4 stride 2 padding
    1 as in DCGAN), each joined with its skip by concatenation, a 1×1 head of 10 maps."""

    @staticmethod
    def double(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.mid = self.double(3, 32), self.double(32, 64), self.double(64, 128)
        self.up2 = nn.ConvTranspose2d(128, 64, 2, stride=2)
        self.dec2 = self.double(128, 64)
        self.up1 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.dec1 = self.double(64, 32)
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def build(name):
    if name not in MODELS:
        die(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if name == "unet":
        return UNet()
    base = name.rsplit("_", 1)[0] if name.endswith(("_nobn", "_gn")) else name
    kwargs = {"weights": None}
    if name.endswith("_nobn"):
        kwargs["norm_layer"] = lambda c: nn.Identity()
    if name.endswith("_gn"):
        kwargs["norm_layer"] = lambda c: nn.GroupNorm(32, c)  # each sample's statistics
    model = getattr(torchvision.models, base)(**kwargs)
    for m in model.modules():
        if isinstance(m, (nn.Dropout, StochasticDepth)):
            m.p = 0.0  # identity in train() mode too (matters for --export)
        if hasattr(m, "inplace"):
            m.inplace = False  # keep every hooked tensor unmodified
    if isinstance(model, torchvision.models.DenseNet):
        # torchvision's DenseNet.forward ends with F.relu(features, inplace=True)
        model.forward = types.MethodType(_densenet_forward, model)
    return model


def _bn_detached_forward(self, x):
    """BatchNorm2d with batch statistics whose gradient is cut (diagnostic).

    The forward equals train-mode BatchNorm2d; the backward is the plain per-channel
    scaling weight/sqrt(var + eps), without the terms from d(mean)/dx and d(var)/dx.
    Running statistics are not updated.
    """
    mean = x.mean(dim=(0, 2, 3)).detach()
    var = x.var(dim=(0, 2, 3), unbiased=False).detach()
    inv = torch.rsqrt(var + self.eps)
    return ((x - mean[None, :, None, None]) * (inv * self.weight)[None, :, None, None]
            + self.bias[None, :, None, None])


def _densenet_forward(self, x):
    """torchvision DenseNet.forward with the final ReLU out-of-place."""
    features = self.features(x)
    out = F.relu(features, inplace=False)
    out = F.adaptive_avg_pool2d(out, (1, 1))
    out = torch.flatten(out, 1)
    return self.classifier(out)


def weight_modules(model):
    """state_dict weight key -> module, for every Conv2d, ConvTranspose2d and Linear, in
    module order."""
    out = {}
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            out[f"{mname}.weight"] = m
    return out


def fan_in(w):
    return w.shape[1] * math.prod(w.shape[2:])


def emit_kaiming_plan(model, path):
    layers = []
    for key, m in weight_modules(model).items():
        layers.append({
            "weight": {"name": key, "std": math.sqrt(2.0 / fan_in(m.weight)), "mean": 0.0},
            "bias": {"name": key[:-len("weight")] + "bias"} if m.bias is not None else None,
            "predicted": {"forward_variance": 1.0, "backward_variance": 1.0},
        })
    bns = []
    for mname, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            bns.append({"scale": {"name": f"{mname}.weight", "value": 1.0},
                        "shift": {"name": f"{mname}.bias", "value": 0.0}})
    plan = {"note": "fake plan: Kaiming fan-in std, every prediction 1.0",
            "layers": layers}
    if bns:
        plan["batch_norms"] = bns
    with open(path, "w") as f:
        json.dump(plan, f, indent=1)
    print(f"wrote {path}: {len(layers)} layers, {len(bns)} batch norms")


def export_onnx(model, path, size, keep_weights):
    """TorchScript export in training mode (see the module docstring)."""
    import onnx
    import onnx.external_data_helper

    model.train()
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "full.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), tmp, dynamo=False,
                              training=torch.onnx.TrainingMode.TRAINING,
                              do_constant_folding=False, opset_version=OPSET,
                              export_params=True,
                              input_names=["input"], output_names=["output"])
        m = onnx.load(tmp, load_external_data=False)
        for t in m.graph.initializer:
            external = t.data_location == onnx.TensorProto.EXTERNAL
            if not keep_weights and math.prod(t.dims) > STRIP_OVER:
                for f in ("raw_data", "float_data", "int32_data", "string_data",
                          "int64_data", "double_data", "uint64_data"):
                    t.ClearField(f)
            elif external:
                onnx.external_data_helper.load_external_data_for_tensor(t, d)
            if external:
                t.ClearField("external_data")
                t.data_location = onnx.TensorProto.DEFAULT
    inits = {t.name for t in m.graph.initializer}
    want = list(weight_modules(model))
    for mname, mod in model.named_modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
            want += [f"{mname}.weight", f"{mname}.bias"]
    missing = [k for k in want if k not in inits]
    if missing:
        die(f"export: {len(missing)} state_dict name(s) are not initializers of the "
            "ONNX graph: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    onnx.save(m, path)
    hist = collections.Counter(n.op_type for n in m.graph.node)
    n_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
    if hist.get("BatchNormalization", 0) != n_bn:
        die(f"export: {hist.get('BatchNormalization', 0)} BatchNormalization nodes "
            f"for {n_bn} BatchNorm2d modules")
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(m.graph.node)} nodes, "
          f"{len(m.graph.initializer)} initializers ({len(want)} state_dict names "
          f"checked); " + ", ".join(f"{k} {v}" for k, v in
                                    sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))))


def check_plan(model, plan):
    """Validate names; return [(key, module, layer_dict_or_None)] in report order."""
    sd = model.state_dict()
    mods = weight_modules(model)
    layers = plan.get("layers") if plan is not None else None
    if plan is not None and not isinstance(layers, list):
        die("plan has no list 'layers'")
    if layers is None:
        return [(k, m, None) for k, m in mods.items()]
    rows, seen = [], set()
    for i, layer in enumerate(layers):
        w = layer.get("weight") or {}
        key = w.get("name")
        if key not in sd:
            die(f"plan layer {i}: weight {key!r} is not in the model's state_dict")
        if key not in mods:
            die(f"plan layer {i}: {key!r} is in the state_dict but is not the weight "
                "of an nn.Conv2d or nn.Linear, so it cannot be measured")
        if "shape" in w and list(sd[key].shape) != list(w["shape"]):
            die(f"plan layer {i}: weight {key!r} has shape {list(w['shape'])} in the plan, "
                f"{list(sd[key].shape)} in the model")
        if key in seen:
            die(f"plan layer {i}: weight {key!r} appears twice")
        seen.add(key)
        b = layer.get("bias")
        if b is not None:
            bkey = b.get("name")
            if bkey not in sd:
                die(f"plan layer {i}: bias {bkey!r} is not in the model's state_dict")
            if mods[key].bias is None or bkey != key[:-len("weight")] + "bias":
                die(f"plan layer {i}: bias {bkey!r} is not the bias of {key!r}")
        rows.append((key, mods[key], layer))
    missing = [k for k in mods if k not in seen]
    if missing:
        die(f"{len(missing)} conv/linear weight(s) of the model are not in the plan: "
            + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    for j, bn in enumerate(plan.get("batch_norms") or []):
        for part in ("scale", "shift"):
            k = (bn.get(part) or {}).get("name")
            if k == "":
                continue  # the normalization has no such parameter (a layer scale's shift)
            if k not in sd:
                die(f"plan batch_norms[{j}].{part}: {k!r} is not in the model's state_dict")
    return rows


def init_draw(model, rows, plan, d, kaiming):
    torch.manual_seed(d)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, m, layer in rows:
            if kaiming:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                w = layer["weight"]
                m.weight.normal_(float(w.get("mean", 0.0) or 0.0), float(w["std"]))
            if m.bias is not None:
                m.bias.zero_()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.weight.fill_(1.0)
                m.bias.zero_()
        for bn in (plan or {}).get("batch_norms") or []:
            for part in ("scale", "shift"):
                if bn[part]["name"]:
                    params[bn[part]["name"]].fill_(float(bn[part]["value"]))


def one_draw(model, rows, args, d):
    x = torch.randn(args.batch, 3, args.size, args.size)
    try:
        fwd, bwd, first, changed = _measure.measure(model, [(key, m) for key, m, _ in rows], x)
    except RuntimeError as e:
        die(f"draw {d}: {e}")
    finally:
        model.zero_grad(set_to_none=True)
    changed = [f"{key[:-len('.weight')]} {what}" for key, what in changed]
    if changed and d == 0:
        # Harmless for the numbers (the forward moment is taken inside the hook, and a
        # tensor hook registered before an in-place op gets the gradient w.r.t. the
        # value the module read), but worth knowing: e.g. `out += identity` on a conv
        # output in the _nobn ResNets, where bn2 is an Identity.
        print(f"note: {len(changed)} tensor(s) seen by hooks were modified in place "
              "afterwards: " + ", ".join(changed[:10])
              + (" ..." if len(changed) > 10 else ""), file=sys.stderr)
    return fwd, bwd, first


def predicted(layer, which):
    if layer is None:
        return None
    v = (layer.get("predicted") or {}).get(which)
    return None if v is None else float(v)


def fmt(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.4g}"


def ratio(m, p):
    return None if p is None or p == 0 else m / p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=MODELS)
    ap.add_argument("--plan", help="cnnc plan JSON (optional with --kaiming)")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--kaiming", action="store_true",
                    help="init with kaiming_normal_(fan_in, relu) instead of the plan's std")
    ap.add_argument("--bn-train", action="store_true",
                    help="BatchNorm2d in train() mode (batch statistics)")
    ap.add_argument("--bn-detach-stats", action="store_true",
                    help="with --bn-train: no gradient through the batch mean and "
                         "variance (diagnostic; the forward is unchanged)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the Markdown table here")
    ap.add_argument("--json", metavar="PATH",
                    help="also write the per-layer numbers as JSON here")
    ap.add_argument("--export", metavar="PATH",
                    help="write the training-mode ONNX export (for cnnc) and exit")
    ap.add_argument("--export-keep-weights", action="store_true",
                    help="--export: keep the initializer payloads (runnable file)")
    ap.add_argument("--emit-kaiming-plan", metavar="PATH",
                    help="write a fake plan (Kaiming fan-in std, predictions 1.0) and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = build(args.model)

    if args.export:
        export_onnx(model, args.export, args.size, args.export_keep_weights)
        return
    if args.emit_kaiming_plan:
        emit_kaiming_plan(model, args.emit_kaiming_plan)
        return
    if args.plan is None and not args.kaiming:
        die("--plan is required (it may be omitted only with --kaiming)")
    plan = None
    if args.plan is not None:
        with open(args.plan) as f:
            plan = json.load(f)

    model.eval()
    if args.bn_train:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    if args.bn_detach_stats:
        if not args.bn_train:
            die("--bn-detach-stats needs --bn-train")
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.forward = types.MethodType(_bn_detached_forward, m)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if has_bn and not (plan or {}).get("batch_norms"):
        print("note: the model has BatchNorm2d but the plan sets none; "
              "using scale 1, shift 0", file=sys.stderr)

    rows = check_plan(model, plan)
    fwd = {k: [] for k, _, _ in rows}
    bwd = {k: [] for k, _, _ in rows}
    first = set()
    t0 = time.time()
    for d in range(args.draws):
        t = time.time()
        init_draw(model, rows, plan, d, args.kaiming)
        f, b, fi = one_draw(model, rows, args, d)
        first |= fi
        for k in fwd:
            fwd[k].append(f[k])
            bwd[k].append(b[k])
        print(f"draw {d}: {time.time() - t:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.time() - t0

    init = "kaiming_normal_(fan_in, relu)" if args.kaiming else "plan std"
    lines = [
        f"model `{args.model}`, plan `{args.plan}`, init {init}, "
        f"{'BN batch statistics, ' if args.bn_train else ''}"
        f"{'no gradient through them, ' if args.bn_detach_stats else ''}"
        f"{args.draws} draws, batch {args.batch}, {args.size}x{args.size}, "
        f"torch {torch.__version__}, {elapsed:.0f} s",
        "",
        "| # | layer | pred fwd | meas fwd | ratio | min | max "
        "| pred bwd | meas bwd | ratio | min | max |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    f_in = f_n = b_in = b_n = 0
    records = []
    for i, (key, _, layer) in enumerate(rows):
        pf, pb = predicted(layer, "forward_variance"), predicted(layer, "backward_variance")
        mf = sum(fwd[key]) / len(fwd[key])
        mb = sum(bwd[key]) / len(bwd[key])
        rf, rb = ratio(mf, pf), ratio(mb, pb)
        rfs = [r for r in (ratio(v, pf) for v in fwd[key]) if r is not None]
        rbs = [r for r in (ratio(v, pb) for v in bwd[key]) if r is not None]
        if rf is not None:
            f_n += 1
            f_in += IN_BAND[0] <= rf <= IN_BAND[1]
        if rb is not None and key not in first:
            b_n += 1
            b_in += IN_BAND[0] <= rb <= IN_BAND[1]
        records.append({
            "name": key[:-len(".weight")], "input": key in first,
            "std": None if layer is None else layer["weight"].get("std"),
            "pred_fwd": pf, "meas_fwd": mf, "ratio_fwd": rf,
            "draws_fwd": fwd[key], "pred_bwd": pb, "meas_bwd": mb, "ratio_bwd": rb,
            "draws_bwd": bwd[key]})
        label = key[:-len(".weight")]
        if key in first:
            label += " (input)"
        lines.append(
            f"| {i} | `{label}` | {fmt(pf)} | {fmt(mf)} | {fmt(rf)} "
            f"| {fmt(min(rfs) if rfs else None)} | {fmt(max(rfs) if rfs else None)} "
            f"| {fmt(pb)} | {fmt(mb)} | {fmt(rb)} "
            f"| {fmt(min(rbs) if rbs else None)} | {fmt(max(rbs) if rbs else None)} |")
    lines += [
        "",
        f"forward ratio in [{IN_BAND[0]}, {IN_BAND[1]}]: {f_in}/{f_n} layers; "
        f"backward (excluding the layer(s) reading the network input): {b_in}/{b_n} layers",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "plan": args.plan, "bn_train": args.bn_train,
                       "bn_detach_stats": args.bn_detach_stats,
                       "kaiming": args.kaiming, "draws": args.draws, "batch": args.batch,
                       "size": args.size, "torch": torch.__version__,
                       "torchvision": torchvision.__version__, "seconds": elapsed,
                       "in_band": list(IN_BAND), "layers": records}, f, indent=1)


if __name__ == "__main__":
    main()
