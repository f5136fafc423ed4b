"""Attention blocks of CNNs, tiny models (a few KB each), by both torch exporters:
`eca.{ts,dynamo}.onnx`, efficient channel attention (Wang et al. 2020): global pool, the
pooled vector squeezed and transposed, a 1-D conv of kernel 3 across the channels, back,
sigmoid, gate; `gc.{ts,dynamo}.onnx`, a global-context block (Cao et al. 2019): a 1×1
conv's mask, softmax over the positions, the attention pool (MatMul of the views), the
transform (1×1 conv, ReLU, 1×1 conv) added to the input; `split.{ts,dynamo}.onnx`, a
split-attention block of radix 2 (ResNeSt's SplAtConv2d, one group): the splits summed and
pooled, fc1, fc2, the softmax across the radix (rSoftMax: Reshape, Transpose, Softmax,
Reshape), each split gated, summed.

    ~/.cache/cnnc/torch-venv/bin/python tests/data/onnx/attn/make_attn.py
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


class ECA(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y)


class EcaNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.eca = ECA()
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.eca(x)
        x = F.relu(self.conv(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class GC(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.mask = nn.Conv2d(c, 1, 1)
        self.t1 = nn.Conv2d(c, c // 4, 1)
        self.t2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        values = x.view(n, c, h * w).unsqueeze(1)
        a = F.softmax(self.mask(x).view(n, 1, h * w), dim=2).unsqueeze(-1)
        ctx = torch.matmul(values, a).view(n, c, 1, 1)
        return x + self.t2(F.relu(self.t1(ctx)))


class GcNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.gc = GC(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.gc(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class RSoftmax(nn.Module):
    def __init__(self, radix, cardinality):
        super().__init__()
        self.radix, self.cardinality = radix, cardinality

    def forward(self, x):
        batch = x.size(0)
        x = x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
        return F.softmax(x, dim=1).reshape(batch, -1)


class SplAt(nn.Module):
    def __init__(self, c, radix=2):
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(c, c * radix, 3, padding=1, groups=radix, bias=False)
        self.fc1 = nn.Conv2d(c, c // 2, 1)
        self.fc2 = nn.Conv2d(c // 2, c * radix, 1)
        self.rsoftmax = RSoftmax(radix, 1)

    def forward(self, x):
        x = F.relu(self.conv(x))
        b, rc = x.shape[:2]
        splits = torch.split(x, rc // self.radix, dim=1)
        gap = F.adaptive_avg_pool2d(sum(splits), 1)
        atten = self.rsoftmax(self.fc2(F.relu(self.fc1(gap)))).view(b, -1, 1, 1)
        attens = torch.split(atten, rc // self.radix, dim=1)
        return sum(a * s for a, s in zip(attens, splits))


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.split = SplAt(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.split(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    ts = dict(dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING)
    torch.onnx.export(EcaNet(), (x,), os.path.join(HERE, "eca.ts.onnx"), **ts)
    torch.onnx.export(EcaNet(), (x,), os.path.join(HERE, "eca.dynamo.onnx"), dynamo=True, external_data=False)
    torch.onnx.export(GcNet(), (x,), os.path.join(HERE, "gc.ts.onnx"), **ts)
    torch.onnx.export(GcNet(), (x,), os.path.join(HERE, "gc.dynamo.onnx"), dynamo=True, external_data=False)
    torch.onnx.export(SplitNet(), (x,), os.path.join(HERE, "split.ts.onnx"), **ts)
    torch.onnx.export(SplitNet(), (x,), os.path.join(HERE, "split.dynamo.onnx"), dynamo=True, external_data=False)


if __name__ == "__main__":
    main()
