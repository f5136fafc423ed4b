"""Weight standardization measured: a ScaledStdConv2d chain (NF-ResNet form, 8 convs of
32 channels, ReLU, 32×32, global pool, linear) exported (TorchScript, in the working
directory as nf.onnx), planned by cnnc, the plan's gain-parameter values applied by name
(the stored weights drawn at σ = 1: it cancels), and per conv the measured/predicted
E[u²] at its output and E[δ²] at its input (8 draws of 8; loss ⟨y, g⟩, g ~ N(0, 1)).

    python scripts/torch/measure_std.py [CNNC] [paper|map] [forward|backward]
"""
import json, subprocess, sys, torch, torch.nn as nn, torch.nn.functional as F
CNNC, ANALYSIS, MODE = (sys.argv[1:4] + ["target/release/cnnc", "map", "forward"][len(sys.argv) - 1:])[:3]
class SSC(nn.Conv2d):
    def __init__(s, *a, gamma=1.0, **k):
        super().__init__(*a, **k)
        s.gain = nn.Parameter(torch.ones(s.out_channels, 1, 1, 1)); s.scale = gamma * s.weight[0].numel() ** -0.5
    def forward(s, x):
        w = s.weight; v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) * torch.rsqrt(v + 1e-6) * (s.gain * s.scale)
        return F.conv2d(x, w, None, s.stride, s.padding)
class Net(nn.Module):
    def __init__(s, n=8, c=32):
        super().__init__()
        s.convs = nn.ModuleList([SSC(3 if i == 0 else c, c, 3, padding=1, bias=False, gamma=1.7139) for i in range(n)])
        s.fc = nn.Linear(c, 10)
    def forward(s, x, keep=None):
        for i, cv in enumerate(s.convs):
            u = cv(x)
            if keep is not None: keep.append(u); u.retain_grad()
            x = F.relu(u)
            if keep is not None: keep.append(x); x.retain_grad()
        return s.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
torch.manual_seed(0)
net = Net()
torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), "nf.onnx", dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING)
plan = json.loads(subprocess.check_output([CNNC, "plan", "nf.onnx", "--mode", MODE, "--analysis", ANALYSIS]))
convs = [l for l in plan["layers"] if l["kind"] == "conv"]
fu, bu = [[] for _ in convs], [[] for _ in convs]
for draw in range(8):
    torch.manual_seed(100 + draw)
    with torch.no_grad():
        for cv, l in zip(net.convs, convs):
            cv.weight.normal_(0, 1.0)  # the stored σ cancels
            cv.gain.fill_(l["standardized"]["gain_param"]["value"])
        fcl = plan["layers"][-1]; net.fc.weight.normal_(0, fcl["weight"]["std"]); net.fc.bias.zero_()
    keep = []
    x = torch.randn(8, 3, 32, 32, requires_grad=True)
    y = net(x, keep)
    (y * torch.randn_like(y)).sum().backward()
    inputs = [x] + keep[1::2][:-1]
    for i in range(len(convs)):
        fu[i].append(keep[2 * i].pow(2).mean().item())
        bu[i].append(inputs[i].grad.pow(2).mean().item())
print(f"{ANALYSIS} {MODE}: layer, gain param, measured/predicted E[u²], measured/predicted E[δ²] at its input")
for i, l in enumerate(convs):
    mf, mb = sum(fu[i]) / len(fu[i]), sum(bu[i]) / len(bu[i])
    print(f"{l['weight']['name']:16s} {l['standardized']['gain_param']['value']:.4f}  {mf / l['predicted']['forward_variance']:.3f}  {mb / l['predicted']['backward_variance']:.3f}")
