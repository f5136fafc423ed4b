//! cnnc's convolution ops (src/nn/conv.rs) against a naive loop over the receptive
//! fields, forward and backward, on random shapes; against candle's `conv2d` where that
//! applies; and against finite differences.

use candle_core::{DType, Device, Tensor, Var};
use cnnc::nn::conv::ConvSpec;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Case {
    n: usize,
    c: usize,
    co: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    spec: ConvSpec,
    bias: bool,
}

impl Case {
    fn out(&self) -> (usize, usize) {
        let s = &self.spec;
        let oh = (self.h + s.pad[0] + s.pad[2] - s.dilation[0] * (self.kh - 1) - 1) / s.stride[0] + 1;
        let ow = (self.w + s.pad[1] + s.pad[3] - s.dilation[1] * (self.kw - 1) - 1) / s.stride[1] + 1;
        (oh, ow)
    }
    fn cg(&self) -> usize {
        self.c / self.spec.groups
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..4, 1usize..4, 1usize..4, 1usize..4, (1usize..4, 1usize..4), (1usize..3, 1usize..3), (1usize..3, 1usize..3))
        .prop_flat_map(|(n, cg, cog, groups, (kh, kw), (sh, sw), (dh, dw))| {
            (
                Just((n, cg, cog, groups, kh, kw, sh, sw, dh, dw)),
                0usize..3,
                0usize..3,
                0usize..3,
                0usize..3,
                0usize..6,
                0usize..6,
                any::<bool>(),
            )
        })
        .prop_map(|((n, cg, cog, groups, kh, kw, sh, sw, dh, dw), pt, pb, pl, pr, eh, ew, bias)| {
            // The input is at least as large as the dilated kernel, so every output exists.
            let h = dh * (kh - 1) + 1 + eh;
            let w = dw * (kw - 1) + 1 + ew;
            Case {
                n,
                c: cg * groups,
                co: cog * groups,
                h,
                w,
                kh,
                kw,
                spec: ConvSpec { stride: [sh, sw], dilation: [dh, dw], pad: [pt, pl, pb, pr], groups },
                bias,
            }
        })
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// The naive convolution and, for an output gradient `g`, the naive gradients
/// (dx, dw, db), by one loop over every (sample, output, input, kernel tap).
fn naive(k: &Case, x: &[f64], w: &[f64], b: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = k.out();
    let (cg, cog) = (k.cg(), k.co / k.spec.groups);
    let s = &k.spec;
    let mut out = vec![0.0; k.n * k.co * oh * ow];
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; k.co]);
    for n in 0..k.n {
        for co in 0..k.co {
            let grp = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = ((n * k.co + co) * oh + oy) * ow + ox;
                    let mut acc = if k.bias { b[co] } else { 0.0 };
                    db[co] += g[o];
                    for ci in 0..cg {
                        let c = grp * cg + ci;
                        for ky in 0..k.kh {
                            for kx in 0..k.kw {
                                let iy = (oy * s.stride[0] + ky * s.dilation[0]) as isize - s.pad[0] as isize;
                                let ix = (ox * s.stride[1] + kx * s.dilation[1]) as isize - s.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy as usize >= k.h || ix as usize >= k.w {
                                    continue;
                                }
                                let xi = ((n * k.c + c) * k.h + iy as usize) * k.w + ix as usize;
                                let wi = ((co * cg + ci) * k.kh + ky) * k.kw + kx;
                                acc += w[wi] * x[xi];
                                dx[xi] += w[wi] * g[o];
                                dw[wi] += x[xi] * g[o];
                            }
                        }
                    }
                    out[o] = acc;
                }
            }
        }
    }
    (out, dx, dw, db)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    // NaN stays (f64::max would drop it).
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Runs cnnc's op in `dtype` with loss ⟨out, g⟩; returns out, dx, dw, db.
fn run(k: &Case, x: &[f64], w: &[f64], b: &[f64], g: &[f64], dtype: DType) -> (Vec<f64>, Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let dev = Device::Cpu;
    let (oh, ow) = k.out();
    let t = |v: &[f64], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &dev).unwrap().to_dtype(dtype).unwrap();
    let xv = Var::from_tensor(&t(x, &[k.n, k.c, k.h, k.w])).unwrap();
    let wv = Var::from_tensor(&t(w, &[k.co, k.cg(), k.kh, k.kw])).unwrap();
    let bv = Var::from_tensor(&t(b, &[k.co])).unwrap();
    let gt = t(g, &[k.n, k.co, oh, ow]);
    let out = k.spec.apply(xv.as_tensor(), wv.as_tensor(), k.bias.then(|| bv.as_tensor())).unwrap();
    assert_eq!(out.dims(), &[k.n, k.co, oh, ow]);
    let grads = (&out * &gt).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = flat(grads.get(xv.as_tensor()).unwrap());
    // A second backward through the same graph: the forward's kept Winograd kernels are
    // gone (the first took them), so the input gradient transforms them again.
    let again = (&out * &gt).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(flat(again.get(xv.as_tensor()).unwrap()), dx, "{k:?}: the second backward's input gradient differs");
    let dw = flat(grads.get(wv.as_tensor()).unwrap());
    let db = grads.get(bv.as_tensor()).map(flat);
    (flat(&out), dx, dw, db)
}

/// cnnc's op in `dtype` against the naive loop on case `k`, inputs drawn from `seed`: an
/// error naming the first result that differs by `tol` or more, times the result's scale
/// (its root mean square, at least 1: float errors grow with the values summed, and a
/// weight gradient sums over every sample and position).
fn check(k: &Case, seed: u64, dtype: DType, tol: f64) -> Result<(), String> {
    let (oh, ow) = k.out();
    let x = values(k.n * k.c * k.h * k.w, seed);
    let w = values(k.co * k.cg() * k.kh * k.kw, seed ^ 1);
    let b = values(k.co, seed ^ 2);
    let g = values(k.n * k.co * oh * ow, seed ^ 3);
    let (out, dx, dw, db) = naive(k, &x, &w, &b, &g);
    let (o, gx, gw, gb) = run(k, &x, &w, &b, &g, dtype);
    let gb = match (gb, k.bias) {
        (Some(gb), true) => gb,
        (None, false) => db.clone(),
        (gb, _) => return Err(format!("bias gradient {gb:?} with bias {}", k.bias)),
    };
    for (what, ours, theirs) in
        [("forward", &o, &out), ("input gradient", &gx, &dx), ("weight gradient", &gw, &dw), ("bias gradient", &gb, &db)]
    {
        let d = max_diff(ours, theirs);
        let scale = (theirs.iter().map(|v| v * v).sum::<f64>() / theirs.len().max(1) as f64).sqrt().max(1.0);
        if d.is_nan() || d >= tol * scale {
            return Err(format!("{dtype:?} {what} differs by {d}"));
        }
    }
    Ok(())
}

/// Random 3×3 stride-1 shapes with 16–18 channels each way: Winograd wherever a sample has
/// 4 tiles or more, im2col below.
fn winograd_case() -> impl Strategy<Value = Case> {
    (1usize..4, 16usize..19, 16usize..19, 1usize..10, 1usize..10, [0usize..4, 0usize..4, 0usize..4, 0usize..4], any::<bool>())
        .prop_filter_map("the padded input holds the kernel", |(n, c, co, h, w, pad, bias)| {
            let spec = ConvSpec { stride: [1, 1], dilation: [1, 1], pad, groups: 1 };
            (h + pad[0] + pad[2] >= 3 && w + pad[1] + pad[3] >= 3).then_some(Case { n, c, co, h, w, kh: 3, kw: 3, spec, bias })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Forward, input, weight and bias gradients equal the naive loop's (f64: 1e-12;
    /// f32: 1e-4), for any padding, per-axis stride and dilation, and groups.
    #[test]
    fn matches_naive_loop(k in case(), seed in any::<u64>()) {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
            check(&k, seed, dtype, tol).map_err(TestCaseError::fail)?;
        }
    }

    /// The same on shapes that take the Winograd path (f64).
    #[test]
    fn winograd_shapes_match_naive_loop(k in winograd_case(), seed in any::<u64>()) {
        check(&k, seed, DType::F64, 1e-12).map_err(TestCaseError::fail)?;
    }
}

/// How the batch is cut into blocks and the GEMMs into row bands depends on the thread
/// count: every cut gives the naive loop's values. Run in pools of 1, 2 and 3 threads
/// (whatever this machine has) on shapes that take each path: many blocks rounded to the
/// thread count, a batch split evenly over threads, one block whose GEMMs are cut into
/// bands of rows (Co = 40 > 16-row bands), and a strided 7×7 kernel with a big batch.
#[test]
fn every_split_over_threads_matches_naive_loop() {
    let spec = |stride, pad, groups| ConvSpec { stride: [stride; 2], dilation: [1, 1], pad: [pad; 4], groups };
    let cases = [
        Case { n: 7, c: 3, co: 5, h: 8, w: 8, kh: 3, kw: 3, spec: spec(1, 1, 1), bias: true },
        Case { n: 5, c: 4, co: 6, h: 4, w: 4, kh: 3, kw: 3, spec: spec(1, 1, 2), bias: true },
        Case { n: 1, c: 6, co: 40, h: 3, w: 3, kh: 3, kw: 3, spec: spec(1, 1, 1), bias: true },
        Case { n: 2, c: 2, co: 40, h: 2, w: 2, kh: 3, kw: 3, spec: spec(1, 1, 1), bias: false },
        Case { n: 9, c: 3, co: 4, h: 12, w: 12, kh: 7, kw: 7, spec: spec(2, 3, 1), bias: true },
    ];
    for (i, k) in cases.iter().enumerate() {
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| check(k, i as u64, DType::F64, 1e-12)).unwrap_or_else(|e| panic!("case {i} at {threads} threads: {e}"));
        }
    }
}

/// 3×3 stride-1 convolutions with 16 or more channels each way run by Winograd's
/// F(2×2, 3×3), all three passes, from 4 tiles a sample on, and from four 4×4 tiles on by
/// F(4×4, 3×3), forward and input gradient: the naive loop's
/// values for odd and even sizes (partial tiles), any padding (asymmetric, none, more than
/// the kernel's reach), at 1–3 threads, in f64 (1e-12) and f32 (1e-4); maps of at most 4
/// pixels (a 1×1 map: one tile) take tiny.rs's per-pixel GEMMs and agree too.
#[test]
fn winograd_path_matches_naive_loop() {
    let spec = |pad| ConvSpec { stride: [1, 1], dilation: [1, 1], pad, groups: 1 };
    let cases = [
        Case { n: 3, c: 16, co: 17, h: 5, w: 7, kh: 3, kw: 3, spec: spec([1; 4]), bias: true },
        Case { n: 2, c: 16, co: 16, h: 6, w: 6, kh: 3, kw: 3, spec: spec([0; 4]), bias: false },
        Case { n: 1, c: 20, co: 16, h: 4, w: 3, kh: 3, kw: 3, spec: spec([2, 0, 1, 3]), bias: true },
        Case { n: 5, c: 16, co: 32, h: 3, w: 3, kh: 3, kw: 3, spec: spec([1; 4]), bias: true },
        Case { n: 2, c: 16, co: 16, h: 1, w: 1, kh: 3, kw: 3, spec: spec([1; 4]), bias: true },
        // Four 4×4 tiles or more in the output and the input, little padding to whole
        // tiles: F(4×4, 3×3) for all three passes (winograd4.rs): partial tiles, padding
        // past the kernel's reach (the input gradient's correlation then starts inside the
        // map), a 1-row map under 4×4 tiles.
        Case { n: 2, c: 16, co: 17, h: 7, w: 11, kh: 3, kw: 3, spec: spec([1; 4]), bias: true },
        Case { n: 1, c: 18, co: 16, h: 8, w: 8, kh: 3, kw: 3, spec: spec([1; 4]), bias: false },
        Case { n: 3, c: 16, co: 16, h: 3, w: 15, kh: 3, kw: 3, spec: spec([3, 1, 0, 2]), bias: true },
        Case { n: 5, c: 17, co: 20, h: 16, w: 15, kh: 3, kw: 3, spec: spec([1; 4]), bias: true },
        // Maps of at most 4 pixels: one GEMM per (output pixel, input pixel) pair (tiny.rs).
        Case { n: 4, c: 16, co: 18, h: 2, w: 2, kh: 3, kw: 3, spec: spec([1; 4]), bias: true },
        Case { n: 3, c: 17, co: 16, h: 2, w: 1, kh: 3, kw: 3, spec: spec([0, 2, 1, 1]), bias: false },
        Case { n: 2, c: 16, co: 16, h: 2, w: 2, kh: 5, kw: 5, spec: spec([2; 4]), bias: true },
        Case { n: 1, c: 16, co: 16, h: 1, w: 4, kh: 1, kw: 3, spec: spec([0, 0, 1, 1]), bias: true },
    ];
    for (i, k) in cases.iter().enumerate() {
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
                pool.install(|| check(k, 40 + i as u64, dtype, tol)).unwrap_or_else(|e| panic!("case {i} at {threads} threads: {e}"));
            }
        }
    }
}

/// `apply_relu` is `relu(apply(..))`, and its gradients those of the naive loop with the
/// output gradient masked where the output is not positive.
#[test]
fn fused_relu_matches_conv_then_relu() {
    let dev = Device::Cpu;
    for (i, k) in [
        Case {
            n: 3,
            c: 4,
            co: 6,
            h: 7,
            w: 6,
            kh: 3,
            kw: 3,
            spec: ConvSpec { stride: [1, 2], dilation: [1, 1], pad: [1, 0, 1, 1], groups: 2 },
            bias: true,
        },
        Case {
            n: 20,
            c: 3,
            co: 5,
            h: 3,
            w: 3,
            kh: 3,
            kw: 3,
            spec: ConvSpec { stride: [1, 1], dilation: [1, 1], pad: [1; 4], groups: 1 },
            bias: false,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let (oh, ow) = k.out();
        let x = values(k.n * k.c * k.h * k.w, 40 + i as u64);
        let w = values(k.co * k.cg() * k.kh * k.kw, 50 + i as u64);
        let b = values(k.co, 60 + i as u64);
        let g = values(k.n * k.co * oh * ow, 70 + i as u64);
        let (out, ..) = naive(&k, &x, &w, &b, &g);
        let masked: Vec<f64> = g.iter().zip(&out).map(|(&g, &o)| if o > 0.0 { g } else { 0.0 }).collect();
        let (_, dx, dw, db) = naive(&k, &x, &w, &b, &masked);
        let t = |v: &[f64], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &dev).unwrap();
        let xv = Var::from_tensor(&t(&x, &[k.n, k.c, k.h, k.w])).unwrap();
        let wv = Var::from_tensor(&t(&w, &[k.co, k.cg(), k.kh, k.kw])).unwrap();
        let bv = Var::from_tensor(&t(&b, &[k.co])).unwrap();
        let y = k.spec.apply_relu(xv.as_tensor(), wv.as_tensor(), k.bias.then(|| bv.as_tensor())).unwrap();
        let relu_out: Vec<f64> = out.iter().map(|&o| o.max(0.0)).collect();
        assert!(max_diff(&flat(&y), &relu_out) < 1e-12, "case {i}: forward");
        assert!(out.iter().any(|&o| o < 0.0) && out.iter().any(|&o| o > 0.0), "case {i}: the mask must matter");
        let grads = (&y * &t(&g, &[k.n, k.co, oh, ow])).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(&flat(grads.get(xv.as_tensor()).unwrap()), &dx) < 1e-12, "case {i}: dx");
        assert!(max_diff(&flat(grads.get(wv.as_tensor()).unwrap()), &dw) < 1e-12, "case {i}: dw");
        if k.bias {
            assert!(max_diff(&flat(grads.get(bv.as_tensor()).unwrap()), &db) < 1e-12, "case {i}: db");
        }
    }
}

/// Where candle's conv2d applies (one stride and dilation for both axes), both agree.
#[test]
fn matches_candle_conv2d() {
    let dev = Device::Cpu;
    for (i, (c, co, h, w, k, stride, dil, pad, groups)) in
        [(3, 8, 9, 7, 3, 2, 1, [1, 1, 1, 1], 1), (4, 6, 8, 8, 3, 1, 2, [0, 1, 2, 0], 2), (8, 8, 5, 5, 1, 1, 1, [0; 4], 1)]
            .into_iter()
            .enumerate()
    {
        let spec = ConvSpec { stride: [stride; 2], dilation: [dil; 2], pad, groups };
        let x = Var::from_tensor(&Tensor::from_vec(values(2 * c * h * w, i as u64), (2, c, h, w), &dev).unwrap()).unwrap();
        let wt = Var::from_tensor(&Tensor::from_vec(values(co * c / groups * k * k, 7 + i as u64), (co, c / groups, k, k), &dev).unwrap())
            .unwrap();
        let b = Var::from_tensor(&Tensor::from_vec(values(co, 9 + i as u64), co, &dev).unwrap()).unwrap();
        let ours = spec.apply(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor())).unwrap();
        let theirs = spec.apply_candle(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor())).unwrap();
        assert!(max_diff(&flat(&ours), &flat(&theirs)) < 1e-12, "case {i}: forward");
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &wt, &b] {
            let d = max_diff(&flat(g1.get(v.as_tensor()).unwrap()), &flat(g2.get(v.as_tensor()).unwrap()));
            assert!(d < 1e-10, "case {i}: gradient differs by {d}");
        }
    }
}

/// The analytic gradients agree with central finite differences of a nonlinear loss.
#[test]
fn gradients_match_finite_differences() {
    let k = Case {
        n: 2,
        c: 4,
        co: 4,
        h: 6,
        w: 5,
        kh: 3,
        kw: 2,
        spec: ConvSpec { stride: [2, 1], dilation: [1, 2], pad: [1, 0, 2, 1], groups: 2 },
        bias: true,
    };
    let dev = Device::Cpu;
    let x = values(k.n * k.c * k.h * k.w, 11);
    let w = values(k.co * k.cg() * k.kh * k.kw, 12);
    let b = values(k.co, 13);
    let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
        let xt = Tensor::from_vec(x.to_vec(), (k.n, k.c, k.h, k.w), &dev).unwrap();
        let wt = Tensor::from_vec(w.to_vec(), (k.co, k.cg(), k.kh, k.kw), &dev).unwrap();
        let bt = Tensor::from_vec(b.to_vec(), k.co, &dev).unwrap();
        k.spec.apply(&xt, &wt, Some(&bt)).unwrap().tanh().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (k.n, k.c, k.h, k.w), &dev).unwrap()).unwrap();
    let wv = Var::from_tensor(&Tensor::from_vec(w.clone(), (k.co, k.cg(), k.kh, k.kw), &dev).unwrap()).unwrap();
    let bv = Var::from_tensor(&Tensor::from_vec(b.clone(), k.co, &dev).unwrap()).unwrap();
    let out = k.spec.apply(xv.as_tensor(), wv.as_tensor(), Some(bv.as_tensor())).unwrap();
    let grads = out.tanh().unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-6;
    let check = |name: &str, base: &[f64], analytic: Vec<f64>, f: &dyn Fn(&[f64]) -> f64| {
        for i in 0..base.len() {
            let (mut up, mut down) = (base.to_vec(), base.to_vec());
            up[i] += eps;
            down[i] -= eps;
            let numeric = (f(&up) - f(&down)) / (2.0 * eps);
            assert!((numeric - analytic[i]).abs() < 1e-7, "{name}[{i}]: numeric {numeric}, analytic {}", analytic[i]);
        }
    };
    check("x", &x, flat(grads.get(xv.as_tensor()).unwrap()), &|v| loss(v, &w, &b));
    check("w", &w, flat(grads.get(wv.as_tensor()).unwrap()), &|v| loss(&x, v, &b));
    check("b", &b, flat(grads.get(bv.as_tensor()).unwrap()), &|v| loss(&x, &w, v));
}

/// An input that tracks no gradient (the data) gets none; the parameters still do.
#[test]
fn data_input_gets_no_gradient() {
    let dev = Device::Cpu;
    let spec = ConvSpec { stride: [1, 1], dilation: [1, 1], pad: [1; 4], groups: 1 };
    let x = Tensor::from_vec(values(2 * 3 * 5 * 5, 1), (2, 3, 5, 5), &dev).unwrap();
    let w = Var::from_tensor(&Tensor::from_vec(values(4 * 3 * 9, 2), (4, 3, 3, 3), &dev).unwrap()).unwrap();
    let grads = spec.apply(&x, w.as_tensor(), None).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    let dw = flat(grads.get(w.as_tensor()).unwrap());
    // d(Σ out)/dw[o, c, ky, kx] = Σ over samples and outputs of the input under that tap.
    let (_, _, naive_dw, _) = naive(
        &Case { n: 2, c: 3, co: 4, h: 5, w: 5, kh: 3, kw: 3, spec, bias: false },
        &values(2 * 3 * 5 * 5, 1),
        &values(4 * 3 * 9, 2),
        &[0.0; 4],
        &[1.0; 2 * 4 * 5 * 5],
    );
    assert!(max_diff(&dw, &naive_dw) < 1e-12);
}

/// Shapes that cannot be convolved are errors, not panics.
#[test]
fn bad_shapes_are_errors() {
    let dev = Device::Cpu;
    let spec = ConvSpec { stride: [1, 1], dilation: [1, 1], pad: [0; 4], groups: 2 };
    let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev).unwrap();
    let e = spec.apply(&x, &w, None).unwrap_err().to_string();
    assert!(e.contains("groups"), "{e}");
    let spec = ConvSpec { groups: 1, ..spec };
    let w = Tensor::zeros((4, 3, 7, 7), DType::F32, &dev).unwrap();
    let e = spec.apply(&x, &w, None).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let w = Tensor::zeros((4, 3, 0, 3), DType::F32, &dev).unwrap();
    let e = spec.apply(&x, &w, None).unwrap_err().to_string();
    assert!(e.contains("empty kernel"), "{e}");
    let w = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev).unwrap();
    let b = Tensor::zeros(5, DType::F32, &dev).unwrap();
    let e = spec.apply(&x, &w, Some(&b)).unwrap_err().to_string();
    assert!(e.contains("bias"), "{e}");
}
