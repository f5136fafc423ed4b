"""Attention blocks of CNNs, tiny models (a few KB each), by both torch exporters:
`eca.{ts,dynamo}.onnx`, efficient channel attention (Wang et al. 2020): global pool, the
pooled vector squeezed and transposed, a 1-D conv of kernel 3 across the channels, back,
sigmoid, gate.

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


def main():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    ts = dict(dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING)
    torch.onnx.export(EcaNet(), (x,), os.path.join(HERE, "eca.ts.onnx"), **ts)
    torch.onnx.export(EcaNet(), (x,), os.path.join(HERE, "eca.dynamo.onnx"), dynamo=True, external_data=False)


if __name__ == "__main__":
    main()
