"""`cnnc.torch` against real torch and torchvision models (CI: scripts/torch/ci-pytest.sh,
the installed wheel in the cached torch venv).

    CNNC=target/debug/cnnc python -m pytest python/tests/test_torch.py
"""

import collections
import json
import math
import os
import subprocess
import sys

import pytest

import cnnc

torch = pytest.importorskip("torch") if os.environ.get("CNNC_PYTEST_STRICT") != "1" else __import__("torch")
torchvision = pytest.importorskip("torchvision") if os.environ.get("CNNC_PYTEST_STRICT") != "1" else __import__("torchvision")
nn = torch.nn

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CNNC = os.environ.get("CNNC", os.path.join(ROOT, "target", "debug", "cnnc"))
sys.path.insert(0, os.path.join(ROOT, "codegen", "consumers"))
from test_apply_plan import sequential_from_plan  # noqa: E402  (F34's nn.Sequential from its plan)

torch.set_num_threads(min(4, torch.get_num_threads()))


def cli_plan(path, *flags):
    out = subprocess.run([CNNC, "plan", path, *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model, before):
    after = model.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


def assert_as_planned(model, plan):
    """Every planned weight has the plan's std and mean 0 within sampling error (5 standard
    errors: sd(s)/σ ≈ 1/√(2n), sd(mean) = σ/√n), every bias of a planned layer is zero, every
    normalization scale and shift holds the plan's value exactly."""
    params = dict(model.named_parameters())
    for l in plan["layers"]:
        w = params[l["weight"]["name"]]
        assert list(w.shape) == l["weight"]["shape"]
        n, std = w.numel(), l["weight"]["std"]
        assert abs(w.std().item() / std - 1) < 5 / math.sqrt(2 * n), (l["weight"]["name"], w.std().item(), std)
        assert abs(w.mean().item()) < 5 * std / math.sqrt(n), l["weight"]["name"]
        bias = l["weight"]["name"][: -len("weight")] + "bias"
        if bias in params:
            assert torch.count_nonzero(params[bias]) == 0, bias
    for e in plan.get("batch_norms") or []:
        for role in ("scale", "shift"):
            if not e[role]["name"]:
                continue  # the normalization has no such parameter (a layer scale's shift)
            p = params[e[role]["name"]]
            assert torch.all(p == e[role]["value"]), e[role]["name"]


def test_f34_sequential_gets_exactly_the_clis_sigma():
    expected = cli_plan("specs/f34.cnn")
    model = sequential_from_plan(expected)
    report = cnnc.torch.init_(model, input_shape=(3, 224, 224), seed=0)
    plan = report.plan
    assert plan["format"] == "cnnc-plan/1"
    assert [(l["weight"]["name"], l["weight"]["std"]) for l in plan["layers"]] == [(l["weight"]["name"], l["weight"]["std"]) for l in expected["layers"]]
    assert [l["predicted"] for l in plan["layers"]] == [l["predicted"] for l in expected["layers"]]
    assert [l["std"] for l in report.layers] == [l["weight"]["std"] for l in expected["layers"]]
    assert_as_planned(model, plan)
    assert "0" in repr(report).splitlines()[2]  # the table names the modules


def fill(model, value=0.5):
    """Puts values no plan writes into every bias and normalization parameter."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                if m.bias is not None:
                    m.bias.fill_(value)
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.fill_(value)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {"analysis": "map", "branch_scale": 0.0}),
    ("resnet50", {"mode": "forward", "analysis": "map", "branch_scale": 0.0}),
    ("mobilenet_v2", {"mode": "backward"}),
])
def test_torchvision_models_with_batchnorm_are_initialized_by_name(name, kwargs):
    model = getattr(torchvision.models, name)(num_classes=10)
    model.eval()
    fill(model)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    report = cnnc.torch.init_(model, input_shape=(3, 224, 224), seed=1, **kwargs)
    plan = report.plan
    assert plan["format"] == "cnnc-plan/2"
    convs = {n + ".weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    norms = {n + ".weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert {l["weight"]["name"] for l in plan["layers"]} == convs
    assert {e["scale"]["name"] for e in plan["batch_norms"]} == norms
    assert all(e["mode"] == "training" for e in plan["batch_norms"])
    assert_as_planned(model, plan)
    if kwargs.get("branch_scale") == 0.0:  # every residual branch's last BatchNorm starts at 0
        zero = {e["scale"]["name"] for e in plan["batch_norms"] if e["scale"]["value"] == 0.0}
        last = "bn2" if name == "resnet18" else "bn3"
        assert zero == {n for n in norms if n.endswith(last + ".weight")}
    assert model.training is False and not any(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items()), "running statistics changed"
    assert report.seconds["plan"] + report.seconds["apply"] < 5
    assert [l["module"] + ".weight" for l in report.layers] == [l["weight"]["name"] for l in plan["layers"]]


def test_convnext_and_a_unet_are_initialized_by_name():
    # ConvNeXt-T: LayerNorm over the channels (channels-last), Linear layers at each
    # position, layer scales, stochastic depth (exported as the identity).
    model = torchvision.models.convnext_tiny(num_classes=10)
    fill(model)
    report = cnnc.torch.init_(model, input_shape=(3, 64, 64), seed=2, branch_scale=0.5)
    plan = report.plan
    weights = {n + ".weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {l["weight"]["name"] for l in plan["layers"]} == weights
    modes = collections.Counter(e["mode"] for e in plan["batch_norms"])
    assert modes == {"layer:channels": 23, "scale": 18}, modes
    assert_as_planned(model, plan)
    params = dict(model.named_parameters())
    assert torch.all(params["features.5.4.layer_scale"] == 0.5)  # each block its own, at α
    assert params["features.5.4.block.3.weight"].shape == (1536, 384)
    # A U-Net: transposed convs (their [C_in, C_out, k, k] weights), skip concatenations.
    sys.path.insert(0, os.path.join(ROOT, "scripts", "torch"))
    import measure_dag  # noqa: E402
    unet = measure_dag.UNet()
    report = cnnc.torch.init_(unet, input_shape=(3, 64, 64), seed=3)
    assert {l["weight"]["name"] for l in report.plan["layers"]} == {n + ".weight" for n, m in unet.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    assert_as_planned(unet, report.plan)


def test_the_plan_is_the_clis_plan_of_the_same_export(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    data = cnnc.torch.export_onnx(model, (torch.randn(2, 3, 64, 64),))
    path = tmp_path / "resnet18.onnx"
    path.write_bytes(data)
    assert cnnc.plan(data, analysis="map") == cli_plan(str(path), "--analysis", "map")
    assert model.training  # a new module is in training mode, and stays so


def test_train_mode_and_seed():
    a, b = torchvision.models.resnet18(num_classes=10), torchvision.models.resnet18(num_classes=10)
    a.train()
    cnnc.torch.init_(a, input_shape=(3, 64, 64), seed=3)
    cnnc.torch.init_(b, example_inputs=torch.randn(2, 3, 64, 64), seed=3)
    assert a.training and all(m.training for m in a.modules())
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


class WithLRN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.lrn(torch.relu(self.conv(x))).mean((2, 3)))


class NotExportable(nn.Module):
    """aten::linalg_svd has no ONNX form."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return torch.linalg.svd(self.conv(x)).S


class ConstantOutput(nn.Module):
    """Leaves autograd through NumPy: the trace holds a constant, the graph no data input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return torch.from_numpy(self.conv(x).detach().numpy() * 2)


@pytest.mark.parametrize("model,shape,message", [
    (WithLRN(), (3, 16, 16), "LRN"),
    (NotExportable(), (3, 16, 16), "torch.onnx.export cannot export NotExportable: .*linalg_svd"),
    (ConstantOutput(), (3, 16, 16), "ConstantOutput: the graph has no data input"),
    (torchvision.models.resnet18(num_classes=10), (1, 64, 64), "torch.onnx.export cannot export ResNet"),
])
def test_refused_modules_raise_and_stay_unchanged(model, shape, message):
    model.eval()
    before = snapshot(model)
    with pytest.raises(cnnc.PlanError, match=message):
        cnnc.torch.init_(model, input_shape=shape, seed=0)
    assert changed(model, before) == []
    assert not model.training


def test_a_plan_that_does_not_fit_changes_nothing():
    plan = cnnc.torch.init_(torchvision.models.resnet18(num_classes=10), input_shape=(3, 64, 64)).plan
    other = torchvision.models.resnet18(num_classes=7)  # fc is 7x512, the plan's 10x512
    before = snapshot(other)
    with pytest.raises(cnnc.PlanError, match="fc.weight"):
        cnnc.torch.apply(other, plan)
    assert changed(other, before) == []
    with pytest.raises(cnnc.PlanError, match="not parameters"):
        cnnc.torch.apply(torchvision.models.mobilenet_v2(num_classes=10), plan)


def small_chain():
    """A plain chain (cnnc-plan/1) where the paper's analysis is accurate: 3x3 convs with
    padding, max pooling, a global average pool and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 10))


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_check_agrees_with_the_prediction_and_restores_the_module(mode):
    """Every layer's measured second moments, forward and backward, within the draws'
    spread of the plan's (the mean over 8 draws within 4 of its standard errors, plus 5 %),
    and the module exactly as before (weights, gradients, modes, in-place flags)."""
    model = small_chain()
    cnnc.torch.init_(model, input_shape=(3, 32, 32), mode=mode, seed=0)
    model.eval()
    before = snapshot(model)
    report = cnnc.torch.check(model, draws=8, batch=16)
    assert changed(model, before) == [] and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert [l["module"] for l in report.layers] == ["0", "2", "5", "7", "11"]
    for l in report.layers:
        for key in ("fwd", "bwd"):
            se = l["sd_" + key] / math.sqrt(report.draws)
            assert abs(l["meas_" + key] - l["pred_" + key]) <= 4 * se + 0.05 * l["pred_" + key], (l["module"], key, l)
    target = "pred_fwd" if mode == "forward" else "pred_bwd"
    assert all(abs(l[target] - 1) < 1e-9 for l in report.layers if not (mode == "backward" and l["reads_input"]))
    text = repr(report)
    assert "0 (input)" in text and "11" in text


def resnet18_nobn():
    """measure_dag.py's resnet18_nobn (1000 classes)."""
    return torchvision.models.resnet18(norm_layer=lambda c: nn.Identity())


def test_check_matches_measure_dag(tmp_path):
    """The same plan measured by scripts/torch/measure_dag.py (its own model, weight draws
    and inputs): each layer's mean over draws within 4 combined standard errors + 5 %."""
    plan_path = tmp_path / "plan.json"
    model = resnet18_nobn()
    report = cnnc.torch.init_(model, input_shape=(3, 64, 64), analysis="map", seed=0)
    plan_path.write_text(json.dumps(report.plan))
    ours = cnnc.torch.check(model, draws=4, batch=8, seed=100)  # measure_dag.py seeds draw d with d
    out = tmp_path / "dag.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "torch", "measure_dag.py"), "--model", "resnet18_nobn", "--plan", str(plan_path),
                    "--draws", "4", "--batch", "8", "--size", "64", "--threads", str(torch.get_num_threads()), "--json", str(out)],
                   check=True, capture_output=True, timeout=600)
    theirs = {l["name"]: l for l in json.loads(out.read_text())["layers"]}
    assert len(theirs) == len(ours.layers)
    for l in ours.layers:
        t = theirs[l["module"]]
        for key in ("fwd", "bwd"):
            tv = t["draws_" + key]
            tm = sum(tv) / len(tv)
            tsd = math.sqrt(sum((v - tm) ** 2 for v in tv) / (len(tv) - 1))
            se = math.sqrt((l["sd_" + key] ** 2 + tsd ** 2) / len(tv))
            assert abs(l["meas_" + key] - tm) <= 4 * se + 0.05 * tm, (l["module"], key, l["meas_" + key], tm)


def test_check_needs_a_plan():
    with pytest.raises(ValueError, match="init_"):
        cnnc.torch.check(resnet18_nobn(), input_shape=(3, 32, 32))


def test_reports_as_tables_frames_and_plots(tmp_path):
    """repr is a table with a row per layer; to_pandas and plot (CI installs pandas and
    matplotlib in the torch venv; elsewhere these parts skip)."""
    model = small_chain()
    report = cnnc.torch.init_(model, input_shape=(3, 16, 16), seed=0)
    lines = repr(report).splitlines()
    assert lines[0].startswith("cnnc forward plan of Sequential") and len(lines) == 2 + len(report.layers)
    check = cnnc.torch.check(model, draws=2, batch=4)
    assert len(repr(check).splitlines()) == 2 + len(check.layers)
    if os.environ.get("CNNC_PYTEST_STRICT") != "1":
        pytest.importorskip("pandas")
        pytest.importorskip("matplotlib")
    frame = report.to_pandas()
    assert list(frame["module"]) == ["0", "2", "5", "7", "11"] and list(frame["std"]) == [l["std"] for l in report.layers]
    assert list(check.to_pandas()["meas_fwd"]) == [l["meas_fwd"] for l in check.layers]
    png = tmp_path / "check.png"
    assert check.plot(str(png)) == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


class _ScaledStdConv2d(nn.Conv2d):
    """NF-ResNets' weight-standardized conv (tests/data/onnx/std/make_std.py's): the weight
    standardized per filter, times a per-filter gain parameter and γ/√fan."""

    def __init__(self, *args, gamma=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.scale = gamma * self.weight[0].numel() ** -0.5

    def effective_weight(self):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return (w - m) * torch.rsqrt(v + 1e-6) * (self.gain * self.scale)

    def forward(self, x):
        return nn.functional.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding)


class _NF(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _ScaledStdConv2d(3, 8, 3, padding=1, bias=False, gamma=1.7139)
        self.conv2 = _ScaledStdConv2d(8, 8, 3, padding=1, gamma=1.7139)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = nn.functional.relu(self.conv1(x))
        x = nn.functional.relu(self.conv2(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_apply_sets_the_gain_parameter_of_standardized_weights():
    """A plan of an NF-style network (tests/data/onnx/std/scaled_std_conv.ts.onnx, the same
    module) sets each conv's gain parameter, so that the weight the network computes has
    the per-element standard deviation the plan chose (`standardized.gain`); without it
    the gain stays 1 and the effective weight is γ/√fan, what the plan calls network_gain."""
    plan = cli_plan(os.path.join("tests", "data", "onnx", "std", "scaled_std_conv.ts.onnx"))
    model = _NF()
    report = cnnc.torch.apply(model, plan, seed=0)
    by_name = {l["weight"]["name"]: l for l in plan["layers"]}
    for conv, name in [(model.conv1, "conv1.weight"), (model.conv2, "conv2.weight")]:
        st = by_name[name]["standardized"]
        assert torch.all(conv.gain == st["gain_param"]["value"]), name
        w = conv.effective_weight().detach()
        per_filter = w.flatten(1).pow(2).mean(1).sqrt()
        assert torch.allclose(per_filter, torch.full_like(per_filter, st["gain"]), rtol=1e-4), (name, per_filter, st["gain"])
    assert [g["parameter"] for g in report.gains] == ["conv1.gain", "conv2.gain"]
    assert "gain conv1.gain" in repr(report)


def test_measure_nodes_names_every_node_of_a_torchscript_export(tmp_path):
    """scripts/torch/measure_nodes.py beside `cnnc lower --nodes`: every node of the
    TorchScript export of resnet18_nobn but the Flatten gets its measurement (the module
    calls keyed like the ONNX node names, an Add by the ReLU that reads it), and the convs'
    outputs, which the forward plan sets to E[u²] = 1, measure so."""
    script = os.path.join(ROOT, "scripts", "torch")
    onnx_path, plan_path, nodes_path = tmp_path / "r18.onnx", tmp_path / "plan.json", tmp_path / "nodes.txt"
    subprocess.run([sys.executable, os.path.join(script, "measure_dag.py"), "--model", "resnet18_nobn", "--export", str(onnx_path), "--size", "64"],
                   check=True, capture_output=True, timeout=600)
    plan_path.write_text(json.dumps(cli_plan(str(onnx_path), "--analysis", "map")))
    out = subprocess.run([CNNC, "lower", "--nodes", str(onnx_path), "--analysis", "map"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    nodes_path.write_text(out.stdout)
    out = subprocess.run([sys.executable, os.path.join(script, "measure_nodes.py"), "--model", "resnet18_nobn", "--plan", str(plan_path),
                          "--nodes", str(nodes_path), "--draws", "4", "--size", "64", "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [[c.strip() for c in l.split("|")[1:-1]] for l in out.stdout.splitlines() if l.startswith("| `")]
    assert len(rows) == len(nodes_path.read_text().splitlines()) - 2  # the title and the header
    unmeasured = [r[0] for r in rows if r[3] == "-"]
    assert unmeasured == ["`/Flatten`"], unmeasured
    convs = [float(r[3]) for r in rows if r[1] == "conv"]
    # At 64×64 the deepest stages' maps are 4×4 and 2×2, where one draw of 8 samples
    # measures a conv's E[u²] anywhere in 0.35–2.2 of the plan; the mean of 4 draws has
    # fallen to 0.797 (32 draws: 0.87–1.03 over the 20 convs, the deepest 0.99–1.03).
    # The band is the script's sanity check, not the analysis's.
    assert len(convs) == 20 and all(0.75 <= c <= 1.25 for c in convs), convs


def test_measure_stream_masks_finds_every_stage_and_its_walk(tmp_path):
    """scripts/torch/measure_stream_masks.py on resnet18_nobn: a table per stage with every
    pair of its two blocks' masks, the open fractions in (0, 1), a pair's joint below its
    first mask's fraction, and the reflected random walk within 10 % of torch (it is within
    4 % at 224×224 and 1–2 % on ResNet-50; this size and draw count are noisier)."""
    script = os.path.join(ROOT, "scripts", "torch")
    onnx_path, plan_path = tmp_path / "r18.onnx", tmp_path / "plan.json"
    subprocess.run([sys.executable, os.path.join(script, "measure_dag.py"), "--model", "resnet18_nobn", "--export", str(onnx_path), "--size", "64"],
                   check=True, capture_output=True, timeout=600)
    plan_path.write_text(json.dumps(cli_plan(str(onnx_path), "--analysis", "map")))
    out = subprocess.run([sys.executable, os.path.join(script, "measure_stream_masks.py"), "--model", "resnet18_nobn", "--plan", str(plan_path),
                          "--draws", "2", "--size", "64", "--paths", "100000", "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    stages = [l for l in out.stdout.splitlines() if l.startswith("## ")]
    assert stages == [f"## layer{i}: 2 blocks" for i in range(1, 5)], stages
    rows = [[c.strip() for c in l.split("|")[1:-1]] for l in out.stdout.splitlines() if l.startswith("| 0..") or l.startswith("| 1..")]
    assert [r[0] for r in rows] == ["0..0", "0..1", "1..1"] * 4, rows
    for i in range(0, len(rows), 3):
        first, pair = float(rows[i][1]), float(rows[i + 1][1])
        assert 0.0 < pair < first < 1.0, rows[i:i + 3]
    assert all(abs(float(r[5]) - 1.0) < 0.10 for r in rows), rows
