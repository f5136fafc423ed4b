#!/usr/bin/env python3
"""The torch exports that specs/*.cnn are checked against (tests/dsl_graphs.rs), beyond
the ones make_real.py writes (resnet18.train, resnet18_nobn.ts, mobilenet_v2.train,
mobilenet_v2_nobn.ts):

  resnet50.train.onnx            torchvision ResNet-50, training mode (BatchNorm kept)
  resnet50_nobn.ts.onnx          norm_layer=Identity, eval, export_params=False
  densenet_small.train.onnx      torchvision's DenseNet class, growth 12, blocks (3, 3, 3),
                                 24 initial features, bn_size 4, 10 classes; training mode
  densenet_small_nobn.ts.onnx    the same with every BatchNorm2d replaced by Identity

Run with the venv of scripts/torch/README.md:

    ~/.cache/cnnc/torch-venv/bin/python tests/data/onnx/real/make_dsl_pairs.py

Same exporter settings and stripping as make_real.py (whose helpers it imports).
"""

import importlib.util
import os

import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("make_real", os.path.join(HERE, "make_real.py"))
real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)


def densenet_small(nobn=False):
    torch.manual_seed(0)
    m = torchvision.models.DenseNet(growth_rate=12, block_config=(3, 3, 3), num_init_features=24,
                                    bn_size=4, num_classes=10)
    if nobn:
        for parent in list(m.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.BatchNorm2d):
                    setattr(parent, name, torch.nn.Identity())
    return m


def build(name, nobn=False):
    if name == "densenet_small":
        return densenet_small(nobn)
    return torchvision_build(name, nobn)


torchvision_build = real.build
real.build = build


def main():
    torch.set_num_threads(2)
    for name in ["resnet50", "densenet_small"]:
        real.attempt(os.path.join(HERE, f"{name}.train.onnx"), real.make_train(name))
        real.attempt(os.path.join(HERE, f"{name}_nobn.ts.onnx"), real.make_ts(name, nobn=True))
    for name in ["densenet_small"]:
        m = build(name)
        print(name, "parameters", sum(p.numel() for p in m.parameters()))
        m = build(name, nobn=True)
        print(name, "nobn parameters", sum(p.numel() for p in m.parameters()))
    for name in ["resnet18", "resnet50", "mobilenet_v2"]:
        for nobn in [False, True]:
            print(name, "nobn" if nobn else "", "parameters", sum(p.numel() for p in build(name, nobn).parameters()))
    if real.FAILURES:
        raise SystemExit(f"failed: {real.FAILURES}")


if __name__ == "__main__":
    main()
