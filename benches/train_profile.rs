//! Where F34's training time goes on the CPU, op by op (std only, no harness).
//!
//! Run with `cargo bench --features train --bench train_profile` (release). For F34 at 64×64 and 224×224,
//! batch 16, f32, every op of a training step is timed alone, at the shapes the network
//! gives it, exactly as candle's autograd runs it:
//! - conv forward: `conv2d`;
//! - conv backward, input gradient: `conv_transpose2d` (candle computes it for every
//!   conv, the first one included, whose input is the data);
//! - conv backward, weight gradient: `conv2d` of the transposed input by the transposed
//!   output gradient;
//! - bias: the broadcast add, and its backward (a sum over N, H, W);
//! - ReLU forward, and its backward (`ge` + `to_dtype` + `mul`);
//! - cnnc's pooling ops ([`PoolSpec`]) forward and backward: the 3×3/s2/p1 max pool and
//!   the global average pool;
//! - the linear layer: `matmul` forward, and its two backward matmuls;
//! - autograd's accumulation: each gradient lands in `zeros_like` + `add`.
//!
//! Everything is run in `CNNC_PROFILE_ROUNDS` rounds (default 3; the first warms up),
//! each op once per round (up to 5 times while under 20 ms); the figure is an op's
//! fastest call over all rounds (machines are shared: the fastest is the least disturbed,
//! and interleaving the rounds exposes the parts and the whole to the same load). Identical layers are timed once and counted as often as they
//! occur. Every conv and matmul is compared with the plain GEMM of the same FLOPs that an
//! im2col formulation would run (candle's `matmul` on contiguous matrices): the ratio says
//! how far each kernel is from candle's own GEMM speed. Finally the whole model is timed:
//! `Model::forward` + cross-entropy + `backward`, and one SGD step; what the parts do not
//! cover of the former is reported as "other". `CNNC_PROFILE_SIZES` (default `64,224`) picks the input
//! sizes.

use candle_core::{DType, Device, Tensor};
use cnnc::nn::pool::{PoolMode, PoolSpec};
use cnnc::nn::Model;
use cnnc::train::sgd::Sgd;
use cnnc::unify::{Layer, WeightKind};
use std::collections::BTreeMap;
use std::time::Instant;

const BATCH: usize = 16;

fn env(var: &str, default: f64) -> f64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The fastest call of each op, by key, over all rounds so far.
#[derive(Default)]
struct Timer {
    best: BTreeMap<String, f64>,
}

impl Timer {
    /// Calls `f` (more than once, up to 5 times, while under 20 ms in all) and returns the
    /// fastest call of `key` so far.
    fn time(&mut self, key: impl Into<String>, mut f: impl FnMut() -> candle_core::Result<Tensor>) -> f64 {
        let (mut best, mut total, mut calls) = (f64::INFINITY, 0.0, 0);
        while calls == 0 || (total < 0.02 && calls < 5) {
            let t = Instant::now();
            let out = f().expect("the op runs");
            drop(std::hint::black_box(out));
            let s = t.elapsed().as_secs_f64();
            best = best.min(s);
            total += s;
            calls += 1;
        }
        let b = self.best.entry(key.into()).or_insert(f64::INFINITY);
        *b = b.min(best);
        *b
    }
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).expect("randn")
}

/// The GEMM of an im2col formulation: (m × k)·(k × n).
fn gemm(timer: &mut Timer, m: usize, k: usize, n: usize) -> f64 {
    let (a, b) = (randn(&[m, k]), randn(&[k, n]));
    timer.time(format!("gemm {m}x{k}x{n}"), || a.matmul(&b))
}

/// Seconds per call of each op of one layer, with the FLOPs and GEMM time where it has them.
#[derive(Default)]
struct Cost {
    secs: f64,
    flops: f64,
    gemm_secs: f64,
}

/// The rows of the report, in order.
const ROWS: &[&str] = &[
    "conv forward",
    "conv backward: input grad",
    "conv backward: weight grad",
    "bias add forward",
    "bias add backward",
    "relu forward",
    "relu backward",
    "max pool forward (cnnc)",
    "max pool backward (cnnc)",
    "global avg pool fwd+bwd (cnnc)",
    "linear forward",
    "linear backward (2 matmuls)",
    "autograd grad accumulation",
];

fn profile_layer(timer: &mut Timer, group: usize, l: &Layer) -> BTreeMap<&'static str, Cost> {
    let mut out: BTreeMap<&'static str, Cost> = BTreeMap::new();
    let mut put = |row: &'static str, secs: f64, flops: f64, gemm_secs: f64| {
        let c = out.entry(row).or_default();
        c.secs += secs;
        c.flops += flops;
        c.gemm_secs += gemm_secs;
    };
    let dims = |s: cnnc::ir::Shape| -> Vec<usize> { std::iter::once(BATCH).chain(s.dims().into_iter().map(|d| d as usize)).collect() };
    let x = randn(&dims(l.input));
    let out_shape = dims(l.conv_output);
    let g_u = randn(&out_shape);
    // Autograd: one zeros_like + add per gradient; a layer's are those of its input, weight,
    // bias, conv output, bias-add output and activation output.
    let key = |op: &str| format!("layer group {group}: {op}");
    let accumulate = |timer: &mut Timer, what: &str, t: &Tensor| timer.time(key(&format!("accumulate {what}")), || t.zeros_like()?.add(t));
    let mut acc = accumulate(timer, "x", &x) + 3.0 * accumulate(timer, "u", &g_u);
    let w = randn(&l.weight.weight_shape.iter().map(|&d| d as usize).collect::<Vec<_>>());
    acc += accumulate(timer, "w", &w);
    match l.weight.kind {
        WeightKind::Conv => {
            let c = l.weight.conv.as_ref().expect("a conv layer has its options");
            let (pad, stride, dil, groups) = (c.pad[0].begin as usize, c.stride[0] as usize, c.dilation[0] as usize, c.groups as usize);
            assert!(
                c.pad.iter().all(|p| p.begin as usize == pad && p.end as usize == pad) && c.stride[1] as usize == stride,
                "F34's convs are symmetric"
            );
            let (n, cin, h, _) = x.dims4().unwrap();
            let (_, cout, ho, wo) = g_u.dims4().unwrap();
            let (kh, kw) = (c.kernel[0] as usize, c.kernel[1] as usize);
            let k = cin / groups * kh * kw;
            let flops = 2.0 * (n * ho * wo * cout * k) as f64;
            let rows = n * ho * wo;
            put(
                "conv forward",
                timer.time(key("conv forward"), || x.conv2d(&w, pad, stride, dil, groups)),
                flops,
                gemm(timer, rows, k, cout),
            );
            // As candle's backprop does it (candle-core 0.11, backprop.rs, Op::Conv2D).
            let out_padding = h - ((ho - 1) * stride + dil * (kh - 1) + 1 - 2 * pad);
            put(
                "conv backward: input grad",
                timer.time(key("conv backward: input grad"), || g_u.conv_transpose2d(&w, pad, out_padding, stride, dil)),
                flops,
                gemm(timer, rows, cout, k),
            );
            let weight_grad = || {
                let gk = x.transpose(0, 1)?.conv2d(&g_u.transpose(0, 1)?, pad, dil, stride, 1)?.transpose(0, 1)?;
                let (_, _, g0, g1) = gk.dims4()?;
                if g0 != kh || g1 != kw {
                    gk.narrow(2, 0, kh)?.narrow(3, 0, kw)
                } else {
                    Ok(gk)
                }
            };
            put(
                "conv backward: weight grad",
                timer.time(key("conv backward: weight grad"), weight_grad),
                flops,
                gemm(timer, cout, rows, k),
            );
            if l.weight.bias_param.is_some() {
                let b = randn(&[cout]);
                put("bias add forward", timer.time(key("bias add forward"), || g_u.broadcast_add(&b.reshape((1, (), 1, 1))?)), 0.0, 0.0);
                put(
                    "bias add backward",
                    timer.time(key("bias add backward"), || g_u.sum_keepdim([0usize, 2, 3].as_slice())?.squeeze(0)),
                    0.0,
                    0.0,
                );
            }
        }
        WeightKind::Linear => {
            let x = x.reshape((BATCH, ())).unwrap();
            let (m, nout) = (x.dim(1).unwrap(), w.dim(0).unwrap());
            let flops = 2.0 * (BATCH * m * nout) as f64;
            let g = randn(&[BATCH, nout]);
            put("linear forward", timer.time(key("linear forward"), || x.matmul(&w.t()?)), flops, gemm(timer, BATCH, m, nout));
            let back = || {
                let gx = g.matmul(&w.t()?.t()?)?;
                let gw = x.t()?.matmul(&g)?;
                drop(std::hint::black_box(gx));
                Ok(gw)
            };
            put(
                "linear backward (2 matmuls)",
                timer.time(key("linear backward (2 matmuls)"), back),
                2.0 * flops,
                gemm(timer, BATCH, nout, m) + gemm(timer, m, BATCH, nout),
            );
            if l.weight.bias_param.is_some() {
                let b = randn(&[nout]);
                put("bias add forward", timer.time(key("bias add forward"), || g.broadcast_add(&b)), 0.0, 0.0);
                put("bias add backward", timer.time(key("bias add backward"), || g.sum_keepdim(0)?.squeeze(0)), 0.0, 0.0);
            }
        }
    }
    if matches!(l.activation, cnnc::ir::Activation::Relu) {
        put("relu forward", timer.time(key("relu forward"), || g_u.relu()), 0.0, 0.0);
        let relu_back = || {
            let mask = g_u.ge(&g_u.zeros_like()?)?.to_dtype(DType::F32)?;
            g_u.mul(&mask)
        };
        put("relu backward", timer.time(key("relu backward"), relu_back), 0.0, 0.0);
    }
    if let Some(p) = &l.pooling {
        let spec = PoolSpec::of(p).expect("F34's poolings are valid");
        let v = g_u.reshape((BATCH, spec_channels(l), spec.h.input, spec.w.input)).unwrap();
        let z = spec.apply(&v).unwrap();
        let g_z = randn(z.dims());
        acc += accumulate(timer, "z", &g_z);
        let (fwd, bwd) =
            (timer.time(key("pool forward"), || spec.apply(&v)), timer.time(key("pool backward"), || spec.grad_input(&v, &g_z)));
        match spec.mode {
            PoolMode::Max => {
                put("max pool forward (cnnc)", fwd, 0.0, 0.0);
                put("max pool backward (cnnc)", bwd, 0.0, 0.0);
            }
            PoolMode::Avg { .. } => put("global avg pool fwd+bwd (cnnc)", fwd + bwd, 0.0, 0.0),
        }
    }
    put("autograd grad accumulation", acc, 0.0, 0.0);
    out
}

fn spec_channels(l: &Layer) -> usize {
    l.conv_output.chw().0 as usize
}

/// The whole model: a forward pass; forward + cross-entropy + backward; one SGD step
/// (momentum and weight decay over every parameter).
struct Whole {
    model: Model,
    opt: Sgd,
    x: Tensor,
    y: Tensor,
}

impl Whole {
    fn new(net: &cnnc::unify::Network, size: usize) -> Whole {
        let plan = cnnc::plan(net, cnnc::analyze::Options { mode: cnnc::analyze::Mode::Forward, std_cap: None }).unwrap();
        let model = Model::new(net, &plan, 0, &Device::Cpu, DType::F32).unwrap();
        let opt = Sgd::new(model.named_vars(), 1e-3, 0.9, 1e-4);
        let x = randn(&[BATCH, 3, size, size]);
        let y = Tensor::from_vec((0..BATCH as u32).map(|k| k % 10).collect::<Vec<u32>>(), BATCH, &Device::Cpu).unwrap();
        Whole { model, opt, x, y }
    }

    /// Seconds: forward, forward + backward, SGD step (fastest so far).
    fn time(&mut self, timer: &mut Timer) -> (f64, f64, f64) {
        let Whole { model, opt, x, y } = self;
        let fwd = timer.time("whole: forward", || Ok(model.forward(x).expect("forward").detach()));
        let mut grads = None;
        let fwd_bwd = timer.time("whole: forward + backward", || {
            let logits = model.forward(x).expect("forward");
            let loss = candle_nn::loss::cross_entropy(&logits, y)?;
            grads = Some(loss.backward()?);
            Ok(loss)
        });
        let grads = grads.expect("a backward pass ran");
        let sgd = timer.time("whole: sgd", || {
            opt.step(&grads)?;
            Ok(x.clone())
        });
        (fwd, fwd_bwd, sgd)
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("CNNC_PROFILE_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 224]);
    let rounds = env("CNNC_PROFILE_ROUNDS", 3.0).max(1.0) as usize;
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/f34.cnn");
    println!("candle CPU threads: {}, rounds: {rounds}", candle_core::utils::get_num_threads());
    for size in sizes {
        let net = cnnc::load_network(std::path::Path::new(spec), cnnc::InputSize::Square(size as u64)).unwrap();
        // Identical layers (same shapes and options) are timed once.
        let mut groups: Vec<(String, usize, &Layer)> = Vec::new();
        for l in &net.layers {
            let key = format!(
                "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
                l.input,
                l.weight.kind,
                l.weight.conv,
                l.weight.weight_shape,
                l.activation,
                l.pooling.as_ref().map(|p| (&p.geometry, &p.pool))
            );
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1 += 1,
                None => groups.push((key, 1, l)),
            }
        }
        let mut timer = Timer::default();
        let mut whole = Whole::new(&net, size);
        // Rounds interleave everything, so that each op's fastest call is taken over the
        // same span of time as the whole model's (the load of a shared machine drifts).
        let mut costs = Vec::new();
        let mut times = (0.0, 0.0, 0.0);
        for _ in 0..rounds {
            costs = groups.iter().enumerate().map(|(g, (_, _, l))| profile_layer(&mut timer, g, l)).collect();
            times = whole.time(&mut timer);
        }
        let (fwd, fwd_bwd, sgd) = times;
        let mut totals: BTreeMap<&'static str, Cost> = BTreeMap::new();
        println!("\nF34 at {size}×{size}, batch {BATCH}, f32, CPU — per distinct layer (ms per call: conv fwd / bwd input / bwd weight):");
        for ((_, count, l), costs) in groups.iter().zip(costs) {
            let ms = |r: &str| costs.get(r).map_or(0.0, |c| c.secs * 1e3);
            println!(
                "  {count:>2} × layer {:>2} {:>13} → {:<13} {:>8.1} / {:>8.1} / {:>8.1}",
                l.index,
                l.input.to_string(),
                l.conv_output.to_string(),
                ms("conv forward") + ms("linear forward"),
                ms("conv backward: input grad"),
                ms("conv backward: weight grad")
            );
            for (row, c) in costs {
                let t = totals.entry(row).or_default();
                t.secs += c.secs * *count as f64;
                t.flops += c.flops * *count as f64;
                t.gemm_secs += c.gemm_secs * *count as f64;
            }
        }
        let step = fwd_bwd + sgd;
        let parts: f64 = totals.values().map(|c| c.secs).sum();
        println!("\n  {:<34} {:>9} {:>7} {:>9} {:>11}", "op (whole network, one step)", "ms", "share", "GFLOP/s", "× its GEMM");
        for row in ROWS {
            let Some(c) = totals.get(row) else { continue };
            let (gflops, ratio) = if c.flops > 0.0 {
                (format!("{:.1}", c.flops / c.secs / 1e9), format!("{:.1}", c.secs / c.gemm_secs))
            } else {
                (String::new(), String::new())
            };
            println!("  {row:<34} {:>9.1} {:>6.1}% {gflops:>9} {ratio:>11}", c.secs * 1e3, 100.0 * c.secs / step);
        }
        let other = fwd_bwd - parts;
        println!("  {:<34} {:>9.1} {:>6.1}%", "other (loss, autograd, copies)", other * 1e3, 100.0 * other / step);
        println!("  {:<34} {:>9.1} {:>6.1}%", "SGD step (cnnc's Sgd)", sgd * 1e3, 100.0 * sgd / step);
        println!("  {:<34} {:>9.1} {:>6.1}%   ({:.2} images/s)", "training step (measured)", step * 1e3, 100.0, BATCH as f64 / step);
        println!("  {:<34} {:>9.1}           ({:.2} images/s)", "forward pass alone (measured)", fwd * 1e3, BATCH as f64 / fwd);
        let conv_gemm: f64 = ["conv forward", "conv backward: input grad", "conv backward: weight grad"]
            .iter()
            .filter_map(|r| totals.get(r))
            .map(|c| c.gemm_secs)
            .sum();
        println!("  the convs' FLOPs as plain GEMMs would take {:.1} ms", conv_gemm * 1e3);
    }
}
