"""Independent high-precision values of the max-pooling constant tau (DESIGN.md, paper Table 1).

tau(T) = T * integral_0^inf s^2 phi(s) Phi(s)^(T-1) ds, and, for a leaky ReLU of slope a,
the negative half weighted by a^2. Computed with mpmath at 40 significant digits, by
tanh-sinh quadrature (Gauss-Legendre panels for the narrow negative half); nothing here shares code with src/analyze.rs.

Run: python3 tests/data/analysis/maxpool_tau.py > tests/data/analysis/maxpool_tau.txt
"""
import mpmath as mp

mp.mp.dps = 40

def pdf_max(T):
    return lambda s: T * mp.npdf(s) * mp.ncdf(s) ** (T - 1)

def tau_pos(T):
    f = pdf_max(T)
    return mp.quad(lambda s: s * s * f(s), [0, 1, 2, 3, 4, 6, 10, mp.inf])

def tau_neg(T):
    f = pdf_max(T)
    # For large T the negative half concentrates within ~1/T of 0, where tanh-sinh over a
    # few breakpoints loses digits: use 400 Gauss-Legendre panels over [-min(12, 100/T), 0].
    width = min(mp.mpf(12), mp.mpf(100) / T)
    g = lambda s: s * s * f(s)
    near = mp.quad(g, mp.linspace(-width, 0, 400), method="gauss-legendre")
    far = mp.quad(g, [-mp.inf, -12, -width]) if width < 12 else mp.quad(g, [-mp.inf, -12])
    return near + far

print("# T  positive_half  negative_half   (tau_relu = positive_half; tau_leaky(a) = positive + a^2 negative)")
for T in list(range(1, 17)) + [25, 49, 100, 196, 1024]:
    print(T, mp.nstr(tau_pos(T), 25), mp.nstr(tau_neg(T), 25))
