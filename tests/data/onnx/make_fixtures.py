#!/usr/bin/env python3
"""Builds the ONNX fixtures of tests/onnx.rs with the official `onnx` package.

Run from the repository root: `python3 tests/data/onnx/make_fixtures.py` (needs
`pip install onnx numpy`). The .onnx files are committed, so tests never need Python.
The expected outputs beside them (.lower, .err) are written by the Rust tests with
UPDATE_EXPECT=1 and reviewed like any diff.
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OK = os.path.join(HERE, "ok")
ERR = os.path.join(HERE, "err")
rng = np.random.default_rng(0)


def weight(name, *shape):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def save(model, directory, name, check=True):
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, os.path.join(directory, name))


def model(graph, opset):
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="make_fixtures.py")


def torchscript_style():
    """What PyTorch's TorchScript exporter writes: Conv, Relu, MaxPool, GlobalAveragePool,
    Flatten, Gemm (transB), Identity and Dropout, static input shape, inline weights."""
    nodes = [
        helper.make_node("Conv", ["input", "features.0.weight", "features.0.bias"], ["c1"], name="/features/features.0/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/features/features.1/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="/features/features.2/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Identity", ["p1"], ["i1"], name="/Identity"),
        helper.make_node("Conv", ["i1", "features.3.weight", "features.3.bias"], ["c2"], name="/features/features.3/Conv",
                         kernel_shape=[3, 3], pads=[0, 0, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/features/features.4/Relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/Flatten", axis=1),
        helper.make_node("Dropout", ["f"], ["d"], name="/Dropout"),
        helper.make_node("Gemm", ["d", "fc.weight", "fc.bias"], ["output"], name="/fc/Gemm", alpha=1.0, beta=1.0, transB=1),
    ]
    inits = [weight("features.0.weight", 8, 3, 3, 3), weight("features.0.bias", 8), weight("features.3.weight", 16, 8, 3, 3),
             weight("features.3.bias", 16), weight("fc.weight", 10, 16), weight("fc.bias", 10)]
    g = helper.make_graph(nodes, "torchscript_style", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)
    save(model(g, 13), OK, "torchscript_style.onnx")


def dynamo_style():
    """What the dynamo exporter writes: ReduceMean over the spatial axes (axes as an input,
    opset 18), Reshape, MatMul + Add; symbolic sizes; weights in an external data file that
    is then deleted (planning needs shapes only)."""
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight"], ["c1"], name="node_conv1", auto_pad="SAME_UPPER", kernel_shape=[4, 4], strides=[2, 2]),
        helper.make_node("LeakyRelu", ["c1"], ["r1"], name="node_leaky", alpha=0.2),
        helper.make_node("AveragePool", ["r1"], ["p1"], name="node_avgpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         ceil_mode=1, count_include_pad=1),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="node_conv2", kernel_shape=[3, 3], dilations=[2, 2],
                         group=2, pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="node_relu2"),
        helper.make_node("Constant", [], ["axes"], name="node_axes", value=numpy_helper.from_array(np.array([-1, -2], dtype=np.int64))),
        helper.make_node("ReduceMean", ["r2", "axes"], ["m"], name="node_mean", keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["flat"], name="node_view"),
        helper.make_node("MatMul", ["flat", "fc.weight"], ["mm"], name="node_mm"),
        helper.make_node("Add", ["mm", "fc.bias"], ["logits"], name="node_add"),
    ]
    inits = [weight("conv1.weight", 8, 3, 4, 4), weight("conv2.weight", 16, 4, 3, 3), weight("conv2.bias", 16),
             numpy_helper.from_array(np.array([-1, 16], dtype=np.int64), "shape"), weight("fc.weight", 16, 10), weight("fc.bias", 10)]
    g = helper.make_graph(nodes, "dynamo_style", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = model(g, 18)
    onnx.checker.check_model(m)
    path = os.path.join(OK, "dynamo_style.onnx")
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="dynamo_style.onnx.data", size_threshold=512)
    os.remove(os.path.join(OK, "dynamo_style.onnx.data"))
    with open(os.path.join(OK, "dynamo_style.input"), "w") as f:
        f.write("3x64x64\n")


def no_params():
    """An exported graph without parameters: weights are graph inputs with declared shapes."""
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[5, 5], strides=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("Conv", ["p1", "w3"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("GlobalMaxPool", ["c2"], ["g"], name="gmax"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=0),
    ]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 1, 28, 28]),
              helper.make_tensor_value_info("w1", TensorProto.FLOAT, [6, 1, 5, 5]),
              helper.make_tensor_value_info("b1", TensorProto.FLOAT, [6]),
              helper.make_tensor_value_info("w2", TensorProto.FLOAT, [6, 10]),
              helper.make_tensor_value_info("w3", TensorProto.FLOAT, [6, 6, 1, 1])]
    g = helper.make_graph(nodes, "no_params", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])])
    save(model(g, 11), OK, "no_params.onnx")


def simple_graph(nodes, inits, input_shape=(1, 3, 8, 8), name="g", opset=13):
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape) if input_shape is not None else None)
    return model(helper.make_graph(nodes, name, [inp], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits), opset)


def errors():
    w = lambda: [weight("w", 4, 3, 3, 3)]
    # A residual block with batch normalization and a concatenation: three unsupported ops.
    bn = [numpy_helper.from_array(np.ones(4, np.float32), n) for n in ["bn.scale", "bn.bias", "bn.mean", "bn.var"]]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "c"], ["s"], name="residual"),
        helper.make_node("Concat", ["s", "r"], ["y"], name="cat", axis=1),
    ]
    save(simple_graph(nodes, w() + bn), ERR, "unsupported.onnx", check=False)
    save(simple_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3])], w(), input_shape=None),
         ERR, "no_input_shape.onnx", check=False)
    save(simple_graph([helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv", kernel_shape=[3, 3])], []),
         ERR, "conv_missing_weight.onnx", check=False)
    save(simple_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], strides=[0, 1])], w()),
         ERR, "stride_zero.onnx", check=False)
    save(simple_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=3)], w()), ERR, "group_out_of_range.onnx", check=False)
    cyc = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3]),
           helper.make_node("Relu", ["c2"], ["r"], name="relu_a"),
           helper.make_node("Relu", ["r"], ["c2"], name="relu_b")]
    save(simple_graph(cyc, w()), ERR, "cycle.onnx", check=False)
    save(simple_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], [], opset=6), ERR, "opset6.onnx", check=False)
    with open(os.path.join(OK, "torchscript_style.onnx"), "rb") as f:
        data = f.read()
    with open(os.path.join(ERR, "truncated.onnx"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(ERR, "not_onnx.onnx"), "w") as f:
        f.write("# this is a .cnn network, not an ONNX model\nnetwork N\ninput 3x8x8\nConv(3) -> 4, relu\n")


if __name__ == "__main__":
    torchscript_style()
    dynamo_style()
    no_params()
    errors()
    print("fixtures written under", HERE)
