"""Resize to sizes that are not whole multiples, tiny models (a few KB each), by both torch
exporters: `resize.{ts,dynamo}.onnx` upsample 3×3 → 7×7 bilinear (align_corners True,
then False) and 7×7 → 5×5 nearest, between 1×1 and 3×3 convs. `resize.json` holds
torch's own interpolation weights per resize (F.interpolate of the unit vectors along
one axis), which tests/onnx.rs compares with cnnc's.

    ~/.cache/cnnc/torch-venv/bin/python tests/data/onnx/resize/make_resize.py
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = [
    dict(size=(7, 7), mode="bilinear", align_corners=True),
    dict(size=(7, 7), mode="bilinear", align_corners=False),
    dict(size=(5, 5), mode="nearest"),
]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1, bias=False)
        self.a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.a2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8, 4, 3, padding=1, bias=False)

    def forward(self, x):
        x = F.relu(self.stem(x))
        u = F.interpolate(x, **STEPS[0])
        v = F.interpolate(x, **STEPS[1])
        y = torch.cat([F.relu(self.a(u)), F.relu(self.a2(v))], 1)
        return self.b(F.interpolate(y, **STEPS[2]))


def axis_weights(n, step):
    """torch's interpolation matrix along one axis: [output][input]."""
    rows = []
    size = step["size"][0]
    kw = {k: v for k, v in step.items() if k != "size"}
    for i in range(n):
        e = torch.zeros(1, 1, n, 1)
        e[0, 0, i, 0] = 1.0
        rows.append(F.interpolate(e, size=(size, 1), **kw)[0, 0, :, 0].tolist())
    return [[rows[i][o] for i in range(n)] for o in range(size)]


def main():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 3, 3)
    ts = dict(dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING)
    torch.onnx.export(Net(), (x,), os.path.join(HERE, "resize.ts.onnx"), **ts)
    torch.onnx.export(Net(), (x,), os.path.join(HERE, "resize.dynamo.onnx"), dynamo=True, external_data=False)
    weights = [axis_weights(3, STEPS[0]), axis_weights(3, STEPS[1]), axis_weights(7, STEPS[2])]
    with open(os.path.join(HERE, "resize.json"), "w") as f:
        json.dump(weights, f)


if __name__ == "__main__":
    main()
