//! The candle model against a naive loop over the explicit index sets: conv outputs
//! from `s(ℓ,i)`/`a(ℓ,i)`/`c(ℓ,i)` (`ConvGeometry::for_each_s`), pooled outputs from
//! `t(ℓ,i)`, on small nets with groups, dilation, asymmetric padding, pooling and linear
//! layers; and the init against the plan.

use candle_core::{DType, Device, Tensor};
use cnnc::analyze::{Mode, Options};
use cnnc::ir::{Activation, PoolKind};
use cnnc::nn::{Kernels, Model};
use cnnc::unify::Network;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu { slope } => {
            if x >= 0.0 {
                x
            } else {
                slope * x
            }
        }
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

/// One sample through the network, by the index sets alone.
fn naive(net: &Network, model: &Model, x: &[f64]) -> Vec<f64> {
    let mut z = x.to_vec();
    for (l, ml) in net.layers.iter().zip(&model.layers) {
        let g = &l.weight.geometry;
        let w = ml.weight.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = ml.bias.as_ref().map(|b| b.as_tensor().to_vec1::<f64>().unwrap());
        let per_kernel = g.taps_per_kernel();
        let v: Vec<f64> = (0..g.m_out())
            .map(|i| {
                let c = g.c(i);
                let mut u = b.as_ref().map_or(0.0, |b| b[c as usize]);
                g.for_each_s(i, |input, tap| u += z[input as usize] * w[(c * per_kernel + tap) as usize]);
                act(l.activation, u)
            })
            .collect();
        z = match &l.pooling {
            None => v,
            Some(p) => {
                let pg = &p.geometry;
                (0..pg.m_out())
                    .map(|o| {
                        let t: Vec<f64> = pg.t_set(o).map(|i| v[i as usize]).collect();
                        match p.kind {
                            PoolKind::Max => t.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                            PoolKind::Avg => {
                                let include = p.pool.as_ref().is_some_and(|q| q.count_include_pad);
                                let div = if include {
                                    // The window clipped to the padded input, per axis.
                                    let q = p.pool.as_ref().unwrap();
                                    let hw = pg.h.output * pg.w.output;
                                    let (oy, ox) = (o % hw / pg.w.output, o % pg.w.output);
                                    let len = |a: &cnnc::index::PoolAxis, end: u64, o: u64| {
                                        let s = (o * a.stride) as i64 - a.pad_begin as i64;
                                        ((s + a.kernel as i64).min((a.input + end) as i64 - a.pad_begin as i64) - s) as f64
                                    };
                                    len(&pg.h, q.pad[0].end, oy) * len(&pg.w, q.pad[1].end, ox)
                                } else {
                                    t.len() as f64
                                };
                                t.iter().sum::<f64>() / div
                            }
                        }
                    })
                    .collect()
            }
        };
    }
    z
}

const NETS: &[&str] = &[
    // groups, asymmetric padding, dilation, overlapping max pool with padding, linear.
    "network A\ninput 4x11x9\n\
     conv(3/pad_top=1/pad_bottom=0/pad_left=2/pad_right=1, groups=2) -> 6, relu, maxpool(3/s2/p1)\n\
     conv(kernel=3, pad=2, dilation=2) -> 5, leaky_relu(0.1), avgpool(2/s1/p1)\n\
     conv(3/s2/p1x0, groups=5, nobias) -> 5, tanh, avgpool(3/s2/p1/exclude_pad)\n\
     flatten\n\
     linear -> 7, gelu\n\
     linear -> 3\n",
    // per-axis padding, ceil-mode pooling, rectangular kernel, smooth activations, global pools.
    "network B\ninput 3x10x12\n\
     conv(5x3/p2x1) -> 4, sigmoid, maxpool(2/s2/ceil)\n\
     conv(1) -> 6, silu, avgpool(3/s2/p1/ceil)\n\
     conv(3/p1, groups=3) -> 6, relu, global_avgpool\n\
     linear -> 4\n",
    "network C\ninput 2x8x8\n\
     conv(3/s2) -> 4, relu, global_maxpool\n\
     linear -> 2\n",
    // Per-axis stride and dilation (cnnc's conv op; candle's conv2d takes one of each).
    "network E\ninput 2x11x9\n\
     conv(3/s2x1/p1) -> 4, relu\n\
     conv(3x2/d1x2/p1x0) -> 3, tanh\n\
     flatten\n\
     linear -> 2\n",
    // A vector input: an MLP.
    "network D\ninput 12\nlinear -> 8, relu\nlinear -> 3\n",
];

fn model(src: &str, seed: u64) -> (Network, cnnc::plan::Plan, Model) {
    let net = cnnc::Source::new("test.cnn", src).network().unwrap_or_else(|e| panic!("{e}"));
    let plan = cnnc::plan(&net, Options { mode: Mode::Xavier, std_cap: None }).unwrap();
    let m = Model::new(&net, &plan, seed, &Device::Cpu, DType::F64).unwrap();
    (net, plan, m)
}

#[test]
fn forward_matches_the_index_sets() {
    let mut rng = Lcg(5);
    for src in NETS {
        let (net, _, m) = model(src, 1);
        // Non-zero biases, so that the bias path is checked too.
        for l in &m.layers {
            if let Some(b) = &l.bias {
                let n = b.as_tensor().dim(0).unwrap();
                b.set(&Tensor::from_vec((0..n).map(|_| rng.next() * 0.1).collect::<Vec<f64>>(), n, &Device::Cpu).unwrap()).unwrap();
            }
        }
        let batch = 3;
        let m_in = net.input.numel() as usize;
        let x: Vec<f64> = (0..batch * m_in).map(|_| rng.next()).collect();
        let mut dims = vec![batch];
        dims.extend(net.input.dims().into_iter().map(|d| d as usize));
        let out = m.forward(&Tensor::from_vec(x.clone(), dims, &Device::Cpu).unwrap()).unwrap();
        let m_out = net.layers.last().unwrap().output.numel() as usize;
        assert_eq!(out.dims()[0], batch);
        let out = out.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(out.len(), batch * m_out);
        for b in 0..batch {
            let expect = naive(&net, &m, &x[b * m_in..(b + 1) * m_in]);
            for (k, e) in expect.iter().enumerate() {
                let got = out[b * m_out + k];
                assert!((got - e).abs() < 1e-10 * (1.0 + e.abs()), "{} sample {b} output {k}: {got} vs {e}", net.name);
            }
        }
    }
}

#[test]
fn init_follows_the_plan_and_the_seed() {
    let src = "network W\ninput 8x12x12\nconv(3/p1) -> 64, relu\nconv(3/p1) -> 64, relu, global_avgpool\nlinear -> 10\n";
    let (_, plan, m) = model(src, 3);
    for (l, p) in m.layers.iter().zip(&plan.layers) {
        let w = l.weight.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = w.len() as f64;
        let mean = w.iter().sum::<f64>() / n;
        let var = w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        // Sample variance within 5 standard errors (var of s² ≈ 2σ⁴/n).
        let se = p.weight.variance * (2.0 / n).sqrt();
        assert!((var - p.weight.variance).abs() < 5.0 * se, "{}: {var} vs {}", l.weight_name, p.weight.variance);
        assert!(mean.abs() < 5.0 * p.weight.std / n.sqrt());
        let b = l.bias.as_ref().unwrap().as_tensor().to_vec1::<f64>().unwrap();
        assert!(b.iter().all(|&v| v == 0.0));
    }
    let same = model(src, 3).2;
    let other = model(src, 4).2;
    let w = |m: &Model| m.layers[0].weight.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(w(&m), w(&same));
    assert_ne!(w(&m), w(&other));
}

#[test]
fn a_plan_for_another_network_is_refused() {
    let (net, _, _) = model(NETS[2], 0);
    let (_, other_plan, _) = model("network C\ninput 2x8x8\nconv(3/s2) -> 5, relu, global_maxpool\nlinear -> 2\n", 0);
    let err = Model::new(&net, &other_plan, 0, &Device::Cpu, DType::F32).unwrap_err().to_string();
    assert!(err.contains("layer 1") && err.contains("0.weight"), "{err}");
}

/// cnnc's kernels and candle's give the same network function where both apply.
#[test]
fn cnnc_and_candle_kernels_agree() {
    for src in [NETS[0], NETS[1], NETS[2]] {
        let (net, _, m) = model(src, 3);
        let mut dims = vec![2];
        dims.extend(net.input.dims().into_iter().map(|d| d as usize));
        let x = Tensor::randn(0f64, 1.0, dims, &Device::Cpu).unwrap();
        let ours = m.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let theirs = m.clone().with_kernels(Kernels::Candle).forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let d = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(d < 1e-10, "{}: {d}", net.name);
    }
}

/// `Model::backward` (the conv layers hand their parameter gradients over directly) gives
/// the store `loss.backward()` gives, and leaves a later plain `loss.backward()` as it was.
#[test]
fn model_backward_equals_loss_backward() {
    for src in NETS {
        let (net, _, m) = model(src, 5);
        let mut dims = vec![3];
        dims.extend(net.input.dims().into_iter().map(|d| d as usize));
        let x = Tensor::randn(0f64, 1.0, dims, &Device::Cpu).unwrap();
        let loss = || m.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
        let plain = loss().backward().unwrap();
        let ours = m.backward(&loss()).unwrap();
        let again = loss().backward().unwrap();
        for (name, v) in m.named_vars() {
            let flat = |g: &candle_core::backprop::GradStore| {
                let g = g.get(v.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {name}", net.name));
                g.flatten_all().unwrap().to_vec1::<f64>().unwrap()
            };
            let want = flat(&plain);
            assert!(want.iter().any(|&g| g != 0.0), "{}: {name}'s gradient is all zeros", net.name);
            assert_eq!(flat(&ours), want, "{}: {name}", net.name);
            assert_eq!(flat(&again), want, "{}: {name} after Model::backward", net.name);
        }
    }
}
