//! The pooling custom ops against a naive loop over the index sets `t(ℓ,i)` (forward)
//! and `d(ℓ,i)` (backward), and against finite differences.

use candle_core::{Device, Tensor, Var};
use cnnc::index::{PoolAxis, PoolGeometry};
use cnnc::ir::{pool_out_size, Pad};
use cnnc::nn::pool::{PoolDim, PoolMode, PoolSpec};

/// A small deterministic generator of uniform values in (-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// (input, kernel, stride, pad begin, pad end, ceil) per axis, [h, w].
type Case = [(u64, u64, u64, u64, u64, bool); 2];

const CASES: &[Case] = &[
    // F34's stem pool on an odd size: 3/s2/p1.
    [(7, 3, 2, 1, 1, false), (7, 3, 2, 1, 1, false)],
    // kernel 2 stride 3, kernel = stride, rectangular.
    [(8, 2, 3, 0, 0, false), (6, 2, 2, 0, 0, false)],
    // asymmetric padding, stride 1 (overlapping windows).
    [(5, 3, 1, 1, 0, false), (6, 2, 1, 0, 1, false)],
    // ceil mode: the last window runs past the padded input.
    [(6, 3, 2, 1, 1, true), (5, 2, 2, 0, 0, true)],
    // global: the whole plane.
    [(4, 4, 1, 0, 0, false), (3, 3, 1, 0, 0, false)],
];

fn geometry(case: &Case, channels: u64) -> (PoolGeometry, [PoolDim; 2]) {
    let mut axes = Vec::new();
    let mut dims = Vec::new();
    for &(input, kernel, stride, pb, pe, ceil) in case {
        let output = pool_out_size(input, kernel, stride, Pad { begin: pb, end: pe }, ceil).unwrap();
        axes.push(PoolAxis { input, output, kernel, stride, pad_begin: pb });
        let u = |v: u64| v as usize;
        dims.push(PoolDim { input: u(input), output: u(output), kernel: u(kernel), stride: u(stride), pad_begin: u(pb), pad_end: u(pe) });
    }
    (PoolGeometry { channels, h: axes[0], w: axes[1] }, [dims[0], dims[1]])
}

/// PyTorch's `count_include_pad` divisor: the window clipped to the padded input.
fn padded_area(case: &Case, g: &PoolGeometry, unit: u64) -> f64 {
    let hw = g.h.output * g.w.output;
    let (oy, ox) = (unit % hw / g.w.output, unit % g.w.output);
    let len = |(input, kernel, stride, pb, pe, _): (u64, u64, u64, u64, u64, bool), o: u64| {
        let start = (o * stride) as i64 - pb as i64;
        let end = (start + kernel as i64).min((input + pe) as i64 - pb as i64);
        (end - start) as f64
    };
    len(case[0], oy) * len(case[1], ox)
}

/// Naive forward over t(ℓ,i), and the local derivative ∂z_o/∂v_i for i ∈ t(ℓ,o).
fn naive(case: &Case, g: &PoolGeometry, mode: PoolMode, v: &[f64]) -> (Vec<f64>, Vec<Vec<(u64, f64)>>) {
    let mut z = Vec::new();
    let mut local = Vec::new();
    for o in 0..g.m_out() {
        let t: Vec<u64> = g.t_set(o).collect();
        assert!(!t.is_empty());
        match mode {
            PoolMode::Max => {
                // First maximum in increasing index order (PyTorch's choice).
                let mut best = t[0];
                for &i in &t {
                    if v[i as usize] > v[best as usize] {
                        best = i;
                    }
                }
                z.push(v[best as usize]);
                local.push(vec![(best, 1.0)]);
            }
            PoolMode::Avg { count_include_pad } => {
                let div = if count_include_pad { padded_area(case, g, o) } else { t.len() as f64 };
                z.push(t.iter().map(|&i| v[i as usize]).sum::<f64>() / div);
                local.push(t.iter().map(|&i| (i, 1.0 / div)).collect());
            }
        }
    }
    (z, local)
}

const MODES: [PoolMode; 3] = [PoolMode::Max, PoolMode::Avg { count_include_pad: true }, PoolMode::Avg { count_include_pad: false }];

#[test]
fn forward_and_backward_match_the_index_sets() {
    let mut rng = Lcg(7);
    let (batch, channels) = (2usize, 3u64);
    for case in CASES {
        let (g, [h, w]) = geometry(case, channels);
        for mode in MODES {
            let spec = PoolSpec { mode, h, w };
            spec.check().unwrap();
            let m_in = g.m_in() as usize;
            let m_out = g.m_out() as usize;
            let x = rng.vec(batch * m_in);
            let r = rng.vec(batch * m_out);
            let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (batch, channels as usize, h.input, w.input), &Device::Cpu).unwrap())
                .unwrap();
            let z = spec.apply(xv.as_tensor()).unwrap();
            assert_eq!(z.dims(), &[batch, channels as usize, h.output, w.output]);
            let rt = Tensor::from_vec(r.clone(), z.shape(), &Device::Cpu).unwrap();
            let grads = (&z * &rt).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let z = z.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for b in 0..batch {
                let (zn, local) = naive(case, &g, mode, &x[b * m_in..(b + 1) * m_in]);
                for o in 0..m_out {
                    assert!((z[b * m_out + o] - zn[o]).abs() < 1e-12, "{case:?} {mode:?} forward unit {o}");
                }
                // Backward over d(ℓ,i): dx_i = Σ_{o ∈ d(i)} r_o ∂z_o/∂v_i.
                for i in 0..m_in as u64 {
                    let expect: f64 = g
                        .d_set(i)
                        .map(|o| local[o as usize].iter().filter(|(j, _)| *j == i).map(|(_, d)| d * r[b * m_out + o as usize]).sum::<f64>())
                        .sum();
                    let got = dx[b * m_in + i as usize];
                    assert!((got - expect).abs() < 1e-12, "{case:?} {mode:?} backward input {i}: {got} vs {expect}");
                }
            }
        }
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let mut rng = Lcg(11);
    for case in CASES {
        let (g, [h, w]) = geometry(case, 2);
        for mode in MODES {
            let spec = PoolSpec { mode, h, w };
            let x = rng.vec(g.m_in() as usize);
            let r = Tensor::from_vec(rng.vec(g.m_out() as usize), (1, 2, h.output, w.output), &Device::Cpu).unwrap();
            let loss = |x: &[f64]| -> f64 {
                let t = Tensor::from_vec(x.to_vec(), (1, 2, h.input, w.input), &Device::Cpu).unwrap();
                (spec.apply(&t).unwrap() * &r).unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap()
            };
            let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (1, 2, h.input, w.input), &Device::Cpu).unwrap()).unwrap();
            let grads = (spec.apply(xv.as_tensor()).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let eps = 1e-6;
            for i in 0..x.len() {
                let (mut a, mut b) = (x.clone(), x.clone());
                a[i] += eps;
                b[i] -= eps;
                let fd = (loss(&a) - loss(&b)) / (2.0 * eps);
                assert!((fd - dx[i]).abs() < 1e-6, "{case:?} {mode:?} input {i}: fd {fd} vs {}", dx[i]);
            }
        }
    }
}

#[test]
fn f32_matches_f64_and_windows_of_padding_only_are_refused() {
    let (g, [h, w]) = geometry(&CASES[0], 1);
    let x: Vec<f64> = Lcg(3).vec(g.m_in() as usize);
    let spec = PoolSpec { mode: PoolMode::Max, h, w };
    let t64 = Tensor::from_vec(x.clone(), (1, 1, h.input, w.input), &Device::Cpu).unwrap();
    let a = spec.apply(&t64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = spec.apply(&t64.to_dtype(candle_core::DType::F32).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (a, b) in a.iter().zip(&b) {
        assert!((a - *b as f64).abs() < 1e-6);
    }
    // kernel 2, padding 2: the first window lies entirely in the padding.
    let bad = PoolDim { input: 4, output: 4, kernel: 2, stride: 1, pad_begin: 2, pad_end: 0 };
    let err = PoolSpec { mode: PoolMode::Max, h: bad, w }.check().unwrap_err();
    assert!(err.contains("only padding"), "{err}");
}

/// A max pool passes NaN on (PyTorch's), and its gradient goes to one input per window:
/// the first of tied maxima, the NaN in a window that has one.
#[test]
fn max_pool_ties_and_nan() {
    let dim = PoolDim { input: 4, output: 2, kernel: 2, stride: 2, pad_begin: 0, pad_end: 0 };
    let spec = PoolSpec { mode: PoolMode::Max, h: dim, w: dim };
    let nan = f32::NAN;
    #[rustfmt::skip]
    let x = vec![
        1.0, 3.0,   -1.0, -2.0,
        3.0, 2.0,   nan, -3.0,
        0.0, 0.0,   5.0, 5.0,
        0.0, -1.0,  5.0, 4.0,
    ];
    let xv = Var::from_tensor(&Tensor::from_vec(x, (1, 1, 4, 4), &Device::Cpu).unwrap()).unwrap();
    let z = spec.apply(xv.as_tensor()).unwrap();
    let zs = z.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!((zs[0], zs[2], zs[3]), (3.0, 0.0, 5.0));
    assert!(zs[1].is_nan(), "{zs:?}");
    let g = Tensor::from_vec(vec![1f32, 2.0, 3.0, 4.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let grads = (&z * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    #[rustfmt::skip]
    let want = vec![
        0.0, 1.0,   0.0, 0.0,
        0.0, 0.0,   2.0, 0.0,
        3.0, 0.0,   4.0, 0.0,
        0.0, 0.0,   0.0, 0.0,
    ];
    assert_eq!(dx, want);
}
