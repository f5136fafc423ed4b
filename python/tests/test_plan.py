"""`cnnc.plan` against the `cnnc plan` CLI: the same dict, the same errors. Needs no torch
(CI runs this file in a fresh virtual environment holding only the wheel and pytest, and
again beside torch).

    CNNC=target/debug/cnnc python -m pytest python/tests/test_plan.py

$CNNC names the CLI binary to compare with (default target/debug/cnnc); the installed
`cnnc` package is the one tested (not python/cnnc, which has no compiled extension).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import cnnc

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CNNC = os.environ.get("CNNC", os.path.join(ROOT, "target", "debug", "cnnc"))
REAL = os.path.join(ROOT, "tests", "data", "onnx", "real")


def cli(*args):
    if not os.access(CNNC, os.X_OK):
        pytest.fail("no cnnc binary at %s (cargo build, or point $CNNC at one)" % CNNC)
    return subprocess.run([CNNC, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def cli_plan(path, *flags):
    out = cli("plan", path, *flags)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


CASES = [
    ("specs/f34.cnn", {}, []),
    ("specs/f34.cnn", {"mode": "backward", "std_cap": 3}, ["--mode", "backward", "--std-cap", "3"]),
    ("specs/f34.cnn", {"mode": "kaiming-in", "input_shape": (1, 28, 28)}, ["--mode", "kaiming-in", "--input", "1x28x28"]),
    ("specs/f50.cnn", {"analysis": "map"}, ["--analysis", "map"]),
    ("tests/data/onnx/real/resnet18.train.onnx", {"analysis": "map", "branch_scale": 0.0}, ["--analysis", "map", "--branch-scale", "0"]),
    ("tests/data/onnx/real/mobilenet_v2.train.onnx", {"mode": "backward"}, ["--mode", "backward"]),
    ("tests/data/onnx/real/resnet50.ts.onnx", {"input_shape": (3, 160, 160)}, ["--input", "3x160x160"]),
    ("tests/data/onnx/real/mobilenet_v2.train.onnx", {"analysis": "map", "batch": 8}, ["--analysis", "map", "--batch", "8"]),
]


@pytest.mark.filterwarnings("ignore::cnnc.PlanNote")
@pytest.mark.parametrize("source,kwargs,flags", CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_plan_is_the_clis_json(source, kwargs, flags):
    expected = cli_plan(source, *flags)
    path = os.path.join(ROOT, source)
    assert cnnc.plan(path, **kwargs) == expected
    with open(path, "rb") as f:
        data = f.read()
    kind = "onnx" if source.endswith(".onnx") else "cnn"
    assert cnnc.plan(data, kind=kind, name=source, **kwargs) == expected


def test_a_pathlike_source():
    import pathlib

    assert cnnc.plan(pathlib.Path(ROOT) / "specs" / "f34.cnn") == cli_plan("specs/f34.cnn")


def test_errors_carry_the_compilers_message(monkeypatch):
    monkeypatch.chdir(ROOT)  # the CLI's path and ours, relative alike
    bad = "tests/data/dsl/err/two_pools.cnn"
    out = cli("plan", bad)
    assert out.returncode != 0
    with pytest.raises(cnnc.PlanError) as e:
        cnnc.plan(bad)
    assert str(e.value).strip() == out.stderr.strip()
    assert "two_pools.cnn:3:33" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_onnx_errors_name_the_node(monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = "tests/data/onnx/err/group_out_of_range.onnx"
    out = cli("plan", bad)
    assert out.returncode != 0
    with pytest.raises(cnnc.PlanError) as e:
        cnnc.plan(bad)
    assert "error: " + str(e.value) == out.stderr.strip()
    assert "node `conv` (Conv)" in str(e.value)
    with open(os.path.join(ROOT, bad), "rb") as f:
        with pytest.raises(cnnc.PlanError, match="^grouped: .*node `conv`"):
            cnnc.plan(f.read(), name="grouped")
    with pytest.raises(cnnc.PlanError, match="not a valid ONNX model"):
        cnnc.plan(b"network x\ninput 3x8x8\n")  # bytes are ONNX unless kind="cnn"


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "sideways"}, "mode must be one of forward, backward, xavier, kaiming-in, kaiming-out"),
    ({"analysis": "exact"}, "analysis must be paper or map"),
    ({"mode": "xavier", "std_cap": 3}, "--std-cap applies to the forward and backward modes only, not xavier"),
    ({"std_cap": -1}, "--std-cap must be a positive number"),
    ({"input_shape": (3, 0, 8)}, "input_shape must be three positive sizes"),
    ({"input_shape": (8,)}, "input_shape must be three positive sizes"),
    ({"batch": 1}, "batch must be at least 2"),
])
def test_bad_options_raise(kwargs, message):
    with pytest.raises(cnnc.PlanError, match=message.replace("(", r"\(")):
        cnnc.plan(os.path.join(ROOT, "specs", "f34.cnn"), **kwargs)


def test_branch_scale_is_checked_by_the_graph_analysis():
    with pytest.raises(cnnc.PlanError, match="--branch-scale must be a number"):
        cnnc.plan(os.path.join(REAL, "resnet18.train.onnx"), branch_scale=-1)


def test_missing_file_and_wrong_types():
    with pytest.raises(cnnc.PlanError, match="cannot read"):
        cnnc.plan(os.path.join(ROOT, "no_such.onnx"))
    with pytest.raises(TypeError):
        cnnc.plan(42)
    with pytest.raises(cnnc.PlanError, match="kind must be onnx or cnn"):
        cnnc.plan(b"", kind="yaml")


def test_folding_notes_are_warnings():
    with pytest.warns(cnnc.PlanNote, match="BatchNorm"):
        cnnc.plan(os.path.join(REAL, "resnet18.ts.onnx"))


def test_import_does_not_import_torch():
    code = "import sys, cnnc; cnnc.plan(%r); assert 'torch' not in sys.modules" % os.path.join(ROOT, "specs", "f34.cnn")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ModuleNotFoundError, match="torch"):
            cnnc.torch


def test_batch_counts_the_batch_mean_projection():
    path = os.path.join(REAL, "resnet18.train.onnx")
    large, at8 = cnnc.plan(path), cnnc.plan(path, batch=8)
    assert "batch" not in large and at8["batch"] == 8
    # The classifier's input gradient is all per-sample, and no BatchNorm is after it.
    assert at8["layers"][-1]["predicted"] == large["layers"][-1]["predicted"]
    # The convs' gradients passed BatchNorms whose batch mean removed a share of them.
    for a, b in zip(at8["layers"][:-1], large["layers"][:-1]):
        assert a["predicted"]["backward_variance"] < b["predicted"]["backward_variance"]
        assert a["weight"]["std"] == b["weight"]["std"]  # forward plan: σ unchanged
