"""An independent re-derivation of the reference code's initialization (hecwitane/ASV-pub,
src/initializer.py conventions, as described in shared/DESIGN.md), for F34 and F50.

Written from the equations, not from cnnc's sources: the networks are listed here as
PyTorch-style module sequences, shapes are propagated with PyTorch's formulas, the
connection count is a brute-force count over output positions, tau/gamma come from
Table 1 with mpmath quadrature, and sigma follows eqs. (6)/(7) with the reference's
conventions (tau_0 = 1, T = kernel area, global pool T = H*W, final linear = identity,
std capped at std_factor * the padding-aware He value, std_factor = 3).

Run: python3 tests/data/reference/asv_conventions.py > tests/data/reference/asv_conventions.json
"""
import json
import math
import mpmath as mp

mp.mp.dps = 30


def conv(cin, cout, k, s=1, p=0):
    return ("conv", cin, cout, k, s, p)


def f34_modules():
    m = [conv(3, 64, 7, 2, 3), ("relu",), ("maxpool", 3, 2, 1)]
    def block(cin, cout, s=1):
        return [conv(cin, cout, 3, s, 1), ("relu",), conv(cout, cout, 3, 1, 1), ("relu",)]
    for _ in range(3):
        m += block(64, 64)
    m += block(64, 128, 2)
    for _ in range(3):
        m += block(128, 128)
    m += block(128, 256, 2)
    for _ in range(5):
        m += block(256, 256)
    m += block(256, 512, 2)
    for _ in range(2):
        m += block(512, 512)
    m += [("gap",), ("flatten",), ("linear", 512, 10)]
    return m


def f50_modules():
    m = [conv(3, 64, 7, 2, 3), ("relu",), ("maxpool", 3, 2, 1)]
    def block(cin, mid, cout, s=1):
        return [conv(cin, mid, 1), ("relu",), conv(mid, mid, 3, s, 1), ("relu",), conv(mid, cout, 1), ("relu",)]
    m += block(64, 64, 256)
    m += block(256, 64, 256) + block(256, 64, 256)
    m += block(256, 128, 512, 2)
    for _ in range(3):
        m += block(512, 128, 512)
    m += block(512, 256, 1024, 2)
    for _ in range(5):
        m += block(1024, 256, 1024)
    m += block(1024, 512, 2048, 2)
    for _ in range(2):
        m += block(2048, 512, 2048)
    m += [("gap",), ("flatten",), ("linear", 2048, 10)]
    return m


def axis_count(n, k, s, p):
    """Sum over output positions of the taps that land inside the input."""
    out = (n + 2 * p - k) // s + 1
    total = 0
    for o in range(out):
        total += sum(1 for t in range(k) if 0 <= o * s - p + t < n)
    return total, out


def tau_max(T):
    density = lambda x: T * mp.npdf(x) * mp.ncdf(x) ** (T - 1)
    return float(mp.quad(lambda x: x * x * density(x), [0, 1, 2, 3, 4, 6, 10, mp.inf]))


def analyse(modules, shape):
    layers = []  # dicts: kind, M_in, M_conv, eps, tau, gamma, fan_in, fan_out, name
    cur = None
    for index, mod in enumerate(modules):
        c, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
        kind = mod[0]
        if kind == "conv":
            _, cin, cout, k, s, p = mod
            assert cin == c
            ah, oh = axis_count(h, k, s, p)
            aw, ow = axis_count(w, k, s, p)
            cur = dict(name=f"{index}.weight", M_in=c * h * w, M_conv=cout * oh * ow, eps=cin * cout * ah * aw,
                       tau=1.0, gamma=1.0, fan_in=cin * k * k, fan_out=cout * k * k)
            layers.append(cur)
            shape = (cout, oh, ow)
        elif kind == "linear":
            _, fin, fout = mod
            cur = dict(name=f"{index}.weight", M_in=fin, M_conv=fout, eps=fin * fout, tau=1.0, gamma=1.0, fan_in=fin, fan_out=fout)
            layers.append(cur)
            shape = (fout,)
        elif kind == "relu":
            cur["tau"] = cur["gamma"] = 0.5
        elif kind == "maxpool":
            _, k, s, p = mod
            T = k * k
            cur["tau"] = tau_max(T)
            cur["gamma"] = (2 ** T - 1) / (T * 2 ** T)
            shape = (c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        elif kind == "gap":
            T = h * w
            cur["tau"] = (1 + (T - 1) / math.pi) / (2 * T)
            cur["gamma"] = 1 / (2 * T * T)
            shape = (c, 1, 1)
        elif kind == "flatten":
            shape = (c * h * w,)
    return layers


def stds(layers, mode, cap=3.0):
    out = []
    for i, l in enumerate(layers):
        if mode == "forward":
            tau_prev = 1.0 if i == 0 else layers[i - 1]["tau"]
            std = math.sqrt(l["M_conv"] / (tau_prev * l["eps"]))
            he = math.sqrt(l["M_conv"] / (0.5 * l["eps"]))
        elif mode == "backward":
            std = math.sqrt(l["M_in"] / (l["gamma"] * l["eps"]))
            he = math.sqrt(l["M_in"] / (0.5 * l["eps"]))
        elif mode == "xavier":
            std, he = math.sqrt(2.0 / (l["fan_in"] + l["fan_out"])), math.inf
        elif mode == "kaiming-in":
            std, he = math.sqrt(2.0 / l["fan_in"]), math.inf
        else:
            std, he = math.sqrt(2.0 / l["fan_out"]), math.inf
        out.append(min(std, cap * he))
    return out


result = {}
for name, modules in [("f34", f34_modules()), ("f50", f50_modules())]:
    layers = analyse(modules, (3, 224, 224))
    result[name] = {
        "names": [l["name"] for l in layers],
        "connections": [l["eps"] for l in layers],
        **{mode: stds(layers, mode) for mode in ["forward", "backward", "xavier", "kaiming-in", "kaiming-out"]},
    }
print(json.dumps(result, indent=1))
