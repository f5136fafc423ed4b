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

const HERMITE: usize = 32;

/// Nodes and weights of the `HERMITE`-point Gauss–Hermite rule for E[f(z)], z ~ N(0, 1)
/// (probabilists' He_n: He_{k+1} = z He_k − k He_{k−1}; the weights sum to 1). For the
/// smooth integrands of nested Gaussian expectations, where the composite rule's
/// thousands of points per level multiply.
fn hermite_rule() -> &'static ([f64; HERMITE], [f64; HERMITE]) {
    static RULE: OnceLock<([f64; HERMITE], [f64; HERMITE])> = OnceLock::new();
    RULE.get_or_init(|| {
        let n = HERMITE;
        // He_n and He_{n−1}, scaled by 1/√(k!) as they are built (no overflow).
        let he = |z: f64| {
            let (mut p0, mut p1) = (0.0, 1.0);
            for k in 0..n {
                let p2 = (z * p1 - (k as f64).sqrt() * p0) / ((k + 1) as f64).sqrt();
                p0 = p1;
                p1 = p2;
            }
            (p1, p0)
        };
        let mut x = [0.0; HERMITE];
        let mut w = [0.0; HERMITE];
        // The roots lie within ±2√n; bracket each by a sign change on a fine grid.
        let top = 2.0 * (n as f64).sqrt() + 1.0;
        let steps = 20_000;
        let mut found = 0;
        let mut prev = (-top, he(-top).0);
        for i in 1..=steps {
            let z = -top + 2.0 * top * i as f64 / steps as f64;
            let v = he(z).0;
            if v == 0.0 || v.signum() != prev.1.signum() {
                let (mut lo, mut hi) = (prev.0, z);
                for _ in 0..100 {
                    let mid = 0.5 * (lo + hi);
                    if he(mid).0.signum() == he(lo).0.signum() {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let r = 0.5 * (lo + hi);
                // With the scaled polynomials, w = 1/(n ĥe_{n−1}(r)²).
                x[found] = r;
                w[found] = 1.0 / (n as f64 * he(r).1.powi(2));
                found += 1;
                if found == n {
                    break;
                }
            }
            prev = (z, v);
        }
        assert_eq!(found, n, "the Hermite roots");
        (x, w)
    })
}

/// The nodes and weights of [`normal_expectation`]'s rule (for nested expectations).
pub fn hermite() -> (&'static [f64], &'static [f64]) {
    let (x, w) = hermite_rule();
    (x, w)
}

/// E[f(z)] for z ~ N(0, 1) by Gauss–Hermite quadrature (exact for polynomials of degree
/// below 64; for smooth f, close).
pub fn normal_expectation(f: impl Fn(f64) -> f64) -> f64 {
    let (x, w) = hermite_rule();
    x.iter().zip(w).map(|(&z, &w)| w * f(z)).sum()
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
    fn hermite_rule_gives_the_normal_moments() {
        assert!((normal_expectation(|_| 1.0) - 1.0).abs() < 1e-13);
        assert!((normal_expectation(|z| z * z) - 1.0).abs() < 1e-12);
        assert!((normal_expectation(|z| z.powi(4)) - 3.0).abs() < 1e-11);
        assert!((normal_expectation(|z| z.powi(10)) - 945.0).abs() < 1e-7);
        // A smooth non-polynomial: E[e^z] = e^{1/2}.
        assert!((normal_expectation(f64::exp) - 0.5f64.exp()).abs() < 1e-12);
    }

    #[test]
    fn gaussian_integrates_to_one() {
        let phi = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let got = integrate_width(phi, -12.0, 12.0, 0.5);
        assert!((got - 1.0).abs() < 1e-14, "{got}");
    }
}
