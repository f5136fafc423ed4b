"""Tests of apply_plan.py (the applier of python/cnnc/_apply.py, loaded from this checkout)
against real torchvision models and plans the cnnc binary makes.

    ~/.cache/cnnc/torch-venv/bin/python -m pytest codegen/consumers/test_apply_plan.py

The plans are made here, by `target/debug/cnnc plan ...` (or the binary $CNNC names), from
tests/data/onnx/real and specs/f34.cnn, so they are never stale; the tests that need a plan
are skipped when the binary is absent. torch and torchvision are required (skipped without).
"""

import copy
import functools
import json
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
REAL = os.path.join(ROOT, "tests", "data", "onnx", "real")
CNNC = os.environ.get("CNNC", os.path.join(ROOT, "target", "debug", "cnnc"))

sys.path.insert(0, HERE)
import apply_plan  # noqa: E402  (importable without torch)
from apply_plan import PlanMismatch  # noqa: E402

# CI (scripts/torch/ci-pytest.sh) sets CNNC_PYTEST_STRICT=1: there a missing torch, binary
# or jsonschema is a failure, not a skip, so that a broken install cannot pass quietly.
STRICT = os.environ.get("CNNC_PYTEST_STRICT") == "1"


def _need(module):
    if STRICT:
        return __import__(module)
    return pytest.importorskip(module)


torch = _need("torch")
torchvision = _need("torchvision")
nn = torch.nn


@functools.lru_cache(maxsize=None)
def _plan_text(source, *flags):
    if not (os.path.isfile(CNNC) and os.access(CNNC, os.X_OK)):
        (pytest.fail if STRICT else pytest.skip)("no cnnc binary at %s (build it with `cargo build`, or point $CNNC at one)" % CNNC)
    path = source if os.path.isabs(source) else os.path.join(ROOT, source)
    for attempt in range(6):  # the binary may be being rewritten by a build: retry a while
        try:
            out = subprocess.run([CNNC, "plan", path, *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
            break
        except OSError:
            if attempt == 5:
                raise
            time.sleep(5)
    assert out.returncode == 0, "cnnc plan %s %s failed:\n%s" % (source, " ".join(flags), out.stderr)
    return out.stdout


def make_plan(source, *flags):
    """A fresh copy of the plan `cnnc plan SOURCE FLAGS...` writes, validated."""
    return apply_plan.validate_plan(json.loads(_plan_text(source, *flags)))


def onnx(model):
    return os.path.join(REAL, model + ".onnx")


def gen():
    return torch.Generator().manual_seed(0)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, "parameters changed: %s" % changed[:5]


def fill_norms(model, scale=0.5, shift=0.25):
    """Sets every BatchNorm's weight and bias to values no plan writes, to see which the plan sets."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.fill_(scale)
                m.bias.fill_(shift)


def fill_biases(model, value=0.5):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.fill_(value)


def check_layers(model, plan, applied, min_numel=10_000, rel=0.05):
    """Every plan weight landed on the parameter of its name with the plan's std (within
    `rel` for weights of at least `min_numel` elements), mean ~0; every bias the model has is
    zero."""
    params = dict(model.named_parameters())
    assert [w for _, w, _ in applied] == [l["weight"]["name"] for l in plan["layers"]]
    modules = dict(model.named_modules())
    checked = 0
    for l in plan["layers"]:
        p = params[l["weight"]["name"]]
        std = l["weight"]["std"]
        if p.numel() >= min_numel:
            assert abs(p.std().item() / std - 1) < rel, "%s: std %g, plan %g" % (l["weight"]["name"], p.std().item(), std)
            assert abs(p.mean().item()) < 5 * std / p.numel() ** 0.5
            checked += 1
        module = modules[l["weight"]["name"].rpartition(".")[0]]
        if getattr(module, "bias", None) is not None:
            assert torch.count_nonzero(module.bias) == 0, "%s bias not zero" % l["weight"]["name"]
    assert checked > 0


def batch_norm_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


# --- ResNet-18 with BatchNorm, zero-init residual branches ------------------------------

def test_resnet18_branch_scale_0_zeroes_every_bn2():
    plan = make_plan(onnx("resnet18.train"), "--branch-scale", "0")
    assert plan["format"] == "cnnc-plan/2" and plan["branch_scale"] == 0
    model = torchvision.models.resnet18(weights=None)
    fill_norms(model)
    fill_biases(model)
    applied = apply_plan.apply_plan(model, plan, generator=gen())
    assert applied.skipped == []
    check_layers(model, plan, applied)
    norms = batch_norm_modules(model)
    assert len(applied.batch_norms) == len(norms) == 20
    for name, m in norms.items():
        if name.startswith("layer") and name.endswith(".bn2"):
            assert torch.count_nonzero(m.weight) == 0, name  # the residual branch ends at zero
        else:
            assert torch.all(m.weight == 1), name
        assert torch.count_nonzero(m.bias) == 0, name
    last = {e["scale"]["name"] for e in plan["batch_norms"] if e["residual_last"]}
    assert last == {n + ".weight" for n in norms if n.startswith("layer") and n.endswith(".bn2")}


def test_resnet18_branch_scale_1_sets_every_bn_to_identity():
    plan = make_plan(onnx("resnet18.train"))
    model = torchvision.models.resnet18(weights=None)
    fill_norms(model)
    applied = apply_plan.apply_plan(model, plan, generator=gen())
    check_layers(model, plan, applied)
    for name, m in batch_norm_modules(model).items():
        assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0, name


def test_resnet18_without_norm_layers():
    plan = make_plan(onnx("resnet18_nobn.ts"))  # what /tmp/r18nobn.fwd.json holds
    assert plan["format"] == "cnnc-plan/2" and plan["batch_norms"] == []
    model = torchvision.models.resnet18(weights=None, norm_layer=nn.Identity)
    fill_biases(model)
    applied = apply_plan.apply_plan(model, plan, generator=gen())
    assert applied.batch_norms == [] and applied.skipped == []
    check_layers(model, plan, applied)


# --- a plan with BatchNorm folded into the convs (TorchScript export, constant folding) -

def test_folded_batch_norm_plan_skips_the_biases_of_bias_free_convs(capsys):
    plan = make_plan(onnx("resnet18.ts.weights"))
    assert plan["batch_norms"] == []
    planned = [l["bias"]["name"] for l in plan["layers"] if l.get("bias")]
    model = torchvision.models.resnet18(weights=None)
    params = dict(model.named_parameters())
    absent = [b for b in planned if b not in params]
    assert len(absent) == 20 and "fc.bias" in planned and "fc.bias" not in absent
    fill_norms(model)
    fill_biases(model)
    norms_before = {k: v.clone() for k, v in model.state_dict().items() if "bn" in k or "downsample.1" in k}
    applied = apply_plan.apply_plan(model, plan, generator=gen(), verbose=True)
    assert [n for n, _ in applied.skipped] == absent
    assert all("has no bias" in why for _, why in applied.skipped)
    assert applied.batch_norms == []
    check_layers(model, plan, applied)  # fc.bias is zero
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in norms_before.items())  # the plan has no BN entries
    out = capsys.readouterr().out
    assert "20 plan parameters skipped" in out and "skipped layer1.0.conv1.bias" in out


# --- mismatches change nothing ----------------------------------------------------------

def test_resnet18_plan_on_mobilenet_v2_is_a_mismatch_and_changes_nothing():
    plan = make_plan(onnx("resnet18.train"), "--branch-scale", "0")
    model = torchvision.models.mobilenet_v2(weights=None)
    before = snapshot(model)
    with pytest.raises(PlanMismatch, match=r"conv1\.weight.*applied by name only"):
        apply_plan.apply_plan(model, plan, generator=gen())
    assert_unchanged(model, before)


def test_a_bad_batch_norm_entry_fails_before_any_layer_is_applied():
    plan = make_plan(onnx("resnet18.train"))
    plan["batch_norms"][-1]["channels"] = 7
    model = torchvision.models.resnet18(weights=None)
    before = snapshot(model)
    with pytest.raises(PlanMismatch, match=r"/layer4/layer4\.1/bn2/BatchNormalization.*7 channels"):
        apply_plan.apply_plan(model, plan, generator=gen())
    assert_unchanged(model, before)


def test_a_missing_batch_norm_parameter_is_a_mismatch():
    plan = make_plan(onnx("resnet18.train"))
    plan["batch_norms"][3]["shift"]["name"] = "layer1.1.bn1.offset"
    model = torchvision.models.resnet18(weights=None)
    before = snapshot(model)
    with pytest.raises(PlanMismatch, match=r"layer1\.1\.bn1\.offset"):
        apply_plan.apply_plan(model, plan)
    assert_unchanged(model, before)


def test_a_plan_bias_outside_its_weights_module_is_a_mismatch():
    plan = make_plan(onnx("resnet18.ts.weights"))
    plan["layers"][1]["bias"]["name"] = "layer1.0.bias"  # not layer1.0.conv1's
    model = torchvision.models.resnet18(weights=None)
    before = snapshot(model)
    with pytest.raises(PlanMismatch, match=r"layer1\.0\.bias"):
        apply_plan.apply_plan(model, plan)
    assert_unchanged(model, before)


def test_a_v2_plan_is_not_applied_by_order():
    plan = make_plan(onnx("resnet18.train"))
    model = nn.Sequential()
    model.add_module("net", torchvision.models.resnet18(weights=None))  # names "net.conv1.weight", ...
    before = snapshot(model)
    with pytest.raises(PlanMismatch, match="by name only"):
        apply_plan.apply_plan(model, plan)
    assert_unchanged(model, before)


def test_an_unknown_format_is_refused():
    plan = make_plan(onnx("resnet18.train"))
    plan["format"] = "cnnc-plan/3"
    with pytest.raises(PlanMismatch, match="cnnc-plan/3"):
        apply_plan.apply_plan(torchvision.models.resnet18(weights=None), plan)


# --- BatchNorm without affine parameters ------------------------------------------------

def affine_free_resnet18():
    """resnet18 whose BatchNorms have no weight and bias (torchvision's constructor cannot
    make it: it initializes the norm weights)."""
    model = torchvision.models.resnet18(weights=None)
    for name, m in list(batch_norm_modules(model).items()):
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, nn.BatchNorm2d(m.num_features, affine=False))
    return model


def test_affine_free_batch_norms_are_skipped_when_the_plan_sets_them_neutral():
    model = affine_free_resnet18()
    applied = apply_plan.apply_plan(model, make_plan(onnx("resnet18.train")), generator=gen())
    assert len(applied.skipped) == 40 and all("affine=False" in why for _, why in applied.skipped)
    assert all(s is None and t is None for _, s, _, t, _ in applied.batch_norms)
    # a zero scale cannot be had without the parameter
    model = affine_free_resnet18()
    before = snapshot(model)
    with pytest.raises(PlanMismatch, match=r"layer1\.0\.bn2\.weight.*sets 0"):
        apply_plan.apply_plan(model, make_plan(onnx("resnet18.train"), "--branch-scale", "0"))
    assert_unchanged(model, before)


# --- other graphs -----------------------------------------------------------------------

@pytest.mark.parametrize("export, build", [
    ("mobilenet_v2.train", lambda: torchvision.models.mobilenet_v2(weights=None)),
    ("densenet121.train", lambda: torchvision.models.densenet121(weights=None)),
    ("vgg16_bn.train", lambda: torchvision.models.vgg16_bn(weights=None)),
    ("mobilenet_v2_nobn.ts", lambda: torchvision.models.mobilenet_v2(weights=None, norm_layer=lambda c: nn.Identity())),
], ids=["mobilenet_v2", "densenet121", "vgg16_bn", "mobilenet_v2_nobn"])
def test_graph_plans_apply_by_name(export, build):
    plan = make_plan(onnx(export))
    model = build()
    fill_norms(model)
    fill_biases(model)
    applied = apply_plan.apply_plan(model, plan, generator=gen())
    assert applied.skipped == []
    check_layers(model, plan, applied)
    norms = batch_norm_modules(model)
    assert len(applied.batch_norms) == len(norms) == len(plan["batch_norms"])
    for e in plan["batch_norms"]:
        m = norms[e["scale"]["name"].rpartition(".")[0]]
        assert torch.all(m.weight == e["scale"]["value"]) and torch.all(m.bias == e["shift"]["value"]), e["name"]


# --- F34, a chain (cnnc-plan/1), as an nn.Sequential ------------------------------------

def sequential_from_plan(plan):
    """An nn.Sequential whose module indices are the plan's layer names: conv (or linear),
    activation, pooling, and a flatten after a global pooling."""
    acts = {"relu": nn.ReLU, "identity": None, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "silu": nn.SiLU}
    mods = []
    for l in plan["layers"]:
        assert str(len(mods)) == l["name"], "plan layer %s would sit at index %d" % (l["name"], len(mods))
        shape = l["weight"]["shape"]
        bias = l.get("bias") is not None
        if l["kind"] == "conv":
            c = l["conv"]
            top, left, bottom, right = c["padding"]
            assert (top, left) == (bottom, right), "asymmetric padding"
            mods.append(nn.Conv2d(shape[1] * c["groups"], shape[0], tuple(c["kernel"]), stride=tuple(c["stride"]),
                                  padding=(top, left), dilation=tuple(c["dilation"]), groups=c["groups"], bias=bias))
        else:
            mods.append(nn.Linear(shape[1], shape[0], bias=bias))
        a = l["activation"]["kind"]
        if a == "leaky_relu":
            mods.append(nn.LeakyReLU(l["activation"]["slope"]))
        elif acts[a] is not None:
            mods.append(acts[a]())
        p = l.get("pooling")
        if p:
            if p["global"]:
                mods.append(nn.AdaptiveMaxPool2d(1) if p["kind"] == "max" else nn.AdaptiveAvgPool2d(1))
                mods.append(nn.Flatten())
            else:
                t, lf, b, r = p["padding"]
                assert (t, lf) == (b, r)
                pool = nn.MaxPool2d if p["kind"] == "max" else nn.AvgPool2d
                mods.append(pool(tuple(p["kernel"]), stride=tuple(p["stride"]), padding=(t, lf), ceil_mode=p["ceil_mode"]))
    return nn.Sequential(*mods)


def f34_plan():
    plan = make_plan("specs/f34.cnn")
    assert plan["format"] == "cnnc-plan/1"
    return plan


def test_f34_sequential_by_name():
    plan = f34_plan()
    model = sequential_from_plan(plan)
    x = torch.zeros(1, *plan["input_shape"])
    assert list(model(x).shape[1:]) == plan["layers"][-1]["output_shape"]
    fill_biases(model)
    applied = apply_plan.apply_plan(model, plan, generator=gen())
    assert [(p, w) for p, w, _ in applied] == [(l["weight"]["name"],) * 2 for l in plan["layers"]]
    assert applied.skipped == [] and applied.batch_norms == []
    check_layers(model, plan, applied)


def test_f34_by_order_when_names_differ():
    plan = f34_plan()
    model = nn.Sequential()
    model.add_module("body", sequential_from_plan(plan))  # "body.0.weight", ...: not the plan's names
    applied = apply_plan.apply_plan(model, plan, generator=gen())
    assert [w for _, w, _ in applied] == ["body." + l["weight"]["name"] for l in plan["layers"]]
    params = dict(model.named_parameters())
    for l in plan["layers"]:
        p = params["body." + l["weight"]["name"]]
        if p.numel() >= 10_000:
            assert abs(p.std().item() / l["weight"]["std"] - 1) < 0.05
    assert all(torch.count_nonzero(params["body." + l["bias"]["name"]]) == 0 for l in plan["layers"])


def test_f34_plan_on_a_shorter_sequential_is_a_mismatch():
    plan = f34_plan()
    model = sequential_from_plan(plan)
    model = nn.Sequential(*list(model.children())[:-1])  # no classifier
    before = snapshot(model)
    with pytest.raises(PlanMismatch, match="34 weight layers, the model 33"):
        apply_plan.apply_plan(model, plan)
    assert_unchanged(model, before)


# --- the module without torch, the schema, the emitted rules ----------------------------

def test_validation_runs_without_torch(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(_plan_text(onnx("resnet18.train"), "--branch-scale", "0"))
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['apply_plan.py', %r, '']; "
            "runpy.run_path(%r, run_name='__main__')" % (str(path), os.path.join(HERE, "apply_plan.py")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "cnnc-plan/2" in out.stdout and "20 batch norms, branch scale 0" in out.stdout
    assert "layer1.0.bn2.weight = 0" in out.stdout


@pytest.mark.parametrize("source", ["specs/f34.cnn", onnx("resnet18.train"), onnx("resnet18.ts.weights")],
                         ids=["f34", "resnet18.train", "resnet18.ts.weights"])
def test_plans_validate_against_the_schema(tmp_path, source):
    """A /2 plan passes a schema written for /1 (the keys /2 adds are left out of its view)."""
    _need("jsonschema")
    path = tmp_path / "plan.json"
    path.write_text(_plan_text(source))
    apply_plan.load_plan(str(path))
    plan = json.loads(path.read_text())
    plan["surplus"] = 1  # keys /2 does not add still fail
    path.write_text(json.dumps(plan))
    with pytest.raises(Exception, match="surplus"):
        apply_plan.load_plan(str(path))


def test_emitted_rules_are_self_contained():
    """`cnnc emit pytorch-init` wraps the rules section in a header holding only `import
    json`, FORMAT = "cnnc-plan/1" and PlanMismatch: the rules must run with just that."""
    with open(os.path.join(ROOT, "python", "cnnc", "_apply.py")) as f:
        text = f.read()
    begin = "# --- begin rules (emitted verbatim by `cnnc emit pytorch-init`) ---\n"
    rules = text[text.index(begin) + len(begin): text.index("# --- end rules ---\n")]
    header = 'import json\n\nFORMAT = "cnnc-plan/1"\n\n\nclass PlanMismatch(ValueError):\n    pass\n\n\n'
    ns = {}
    exec(compile(header + rules, "plan_init.py", "exec"), ns)
    plan = make_plan(onnx("resnet18.train"), "--branch-scale", "0")
    a, b = torchvision.models.resnet18(weights=None), torchvision.models.resnet18(weights=None)
    ns["apply_plan"](a, ns["validate_plan"](copy.deepcopy(plan)), gen())
    apply_plan.apply_plan(b, plan, gen())
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ns["PlanMismatch"]):
        ns["apply_plan"](torchvision.models.mobilenet_v2(weights=None), plan)
