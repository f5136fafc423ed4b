//! Numerical integration: composite Gauss–Legendre quadrature.
//!
//! The nodes and weights of the n-point rule are computed once, by Newton's method on
//! the Legendre polynomial (accurate to a few ulps for n ≤ 64). Composite rules over
//! panels of width ≤ 0.5 integrate the smooth integrands of `crate::analyze` (Gaussian
//! densities times powers of the normal cdf) to about 1e-15 relative.

use std::sync::OnceLock;

const ORDER: usize = 20;

/// Nodes and weights of the `ORDER`-point Gauss–Legendre rule on [-1, 1].
fn rule() -> &'static ([f64; ORDER], [f64; ORDER]) {
    static RULE: OnceLock<([f64; ORDER], [f64; ORDER])> = OnceLock::new();
    RULE.get_or_init(|| {
        let n = ORDER;
        let mut x = [0.0; ORDER];
        let mut w = [0.0; ORDER];
        for i in 0..n {
            // Tricomi's initial guess, then Newton on P_n.
            let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
            let mut dp = 0.0;
            for _ in 0..100 {
                let (mut p0, mut p1) = (1.0, z);
                for k in 2..=n {
                    let p2 = ((2 * k - 1) as f64 * z * p1 - (k - 1) as f64 * p0) / k as f64;
                    p0 = p1;
                    p1 = p2;
                }
                dp = n as f64 * (z * p1 - p0) / (z * z - 1.0);
                let dz = p1 / dp;
                z -= dz;
                if dz.abs() < 1e-16 {
                    break;
                }
            }
            x[i] = z;
            w[i] = 2.0 / ((1.0 - z * z) * dp * dp);
        }
        (x, w)
    })
}

/// ∫_a^b f, by the composite rule over `panels` equal panels.
pub fn integrate(f: impl Fn(f64) -> f64, a: f64, b: f64, panels: usize) -> f64 {
    let (x, w) = rule();
    let h = (b - a) / panels as f64;
    let mut total = 0.0;
    for p in 0..panels {
        let lo = a + h * p as f64;
        let mid = lo + 0.5 * h;
        let mut s = 0.0;
        for k in 0..ORDER {
            s += w[k] * f(mid + 0.5 * h * x[k]);
        }
        total += 0.5 * h * s;
    }
    total
}

/// ∫_a^b of every component of a vector-valued `f` (which writes its `n` values into the
/// slice it is given), by the same rule and in the same order of operations as
/// [`integrate`]: component k equals `integrate` of component k, bit for bit.
pub fn integrate_vec(f: impl Fn(f64, &mut [f64]), n: usize, a: f64, b: f64, panels: usize) -> Vec<f64> {
    let (x, w) = rule();
    let h = (b - a) / panels as f64;
    let mut total = vec![0.0; n];
    let mut s = vec![0.0; n];
    let mut v = vec![0.0; n];
    for p in 0..panels {
        let lo = a + h * p as f64;
        let mid = lo + 0.5 * h;
        s.iter_mut().for_each(|x| *x = 0.0);
        for k in 0..ORDER {
            f(mid + 0.5 * h * x[k], &mut v);
            for (acc, &y) in s.iter_mut().zip(&v) {
                *acc += w[k] * y;
            }
        }
        for (t, &y) in total.iter_mut().zip(&s) {
            *t += 0.5 * h * y;
        }
    }
    total
}

/// ∫_a^b f with panels no wider than `width`.
pub fn integrate_width(f: impl Fn(f64) -> f64, a: f64, b: f64, width: f64) -> f64 {
    let panels = (((b - a) / width).ceil() as usize).max(1);
    integrate(f, a, b, panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_two_and_polynomials_are_exact() {
        let (x, w) = rule();
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-14);
        // The 20-point rule is exact for degree 39.
        let exact = 2.0 / 39.0; // ∫_{-1}^{1} x^38
        let got: f64 = x.iter().zip(w).map(|(x, w)| w * x.powi(38)).sum();
        assert!((got - exact).abs() < 1e-14, "{got} vs {exact}");
    }

    #[test]
    fn gaussian_integrates_to_one() {
        let phi = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let got = integrate_width(phi, -12.0, 12.0, 0.5);
        assert!((got - 1.0).abs() < 1e-14, "{got}");
    }
}
