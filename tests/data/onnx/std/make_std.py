"""Weight-standardized convs, tiny (a few KB each): `std_conv.{ts,dynamo}.onnx`, BiT's
`StdConv2d` (var_mean, (w − m)/√(v + ε)), and `scaled_std_conv.ts.onnx`, the NF-ResNet
form written with rsqrt and a per-filter gain parameter (w − m)·rsqrt(v + ε)·gain·γ/√fan.

    ~/.cache/cnnc/torch-venv/bin/python tests/data/onnx/std/make_std.py

The TorchScript exporter (`dynamo=False`, training mode, no constant folding) keeps the
standardization as ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div on the initializer; the
dynamo exporter folds it into a new initializer (the standardized weight itself).
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


class StdConv2d(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    def __init__(self, *args, gamma=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.scale = gamma * self.weight[0].numel() ** -0.5

    def forward(self, x):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) * torch.rsqrt(v + 1e-6) * (self.gain * self.scale)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Net(nn.Module):
    def __init__(self, conv, **kw):
        super().__init__()
        self.conv1 = conv(3, 8, 3, padding=1, bias=False, **kw)
        self.conv2 = conv(8, 8, 3, padding=1, **kw)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    ts = dict(dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING)
    torch.onnx.export(Net(StdConv2d), (x,), os.path.join(HERE, "std_conv.ts.onnx"), **ts)
    torch.onnx.export(Net(StdConv2d), (x,), os.path.join(HERE, "std_conv.dynamo.onnx"), dynamo=True)
    gamma = 1.7139  # NF-ResNets' γ for ReLU
    torch.onnx.export(Net(ScaledStdConv2d, gamma=gamma), (x,), os.path.join(HERE, "scaled_std_conv.ts.onnx"), **ts)


if __name__ == "__main__":
    main()
