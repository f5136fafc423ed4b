//! The candle model on CUDA against the CPU: the pooling kernels (src/nn/pool/cuda.rs)
//! bit for bit, every layer kind's forward and parameter gradients within rounding, F34's
//! training step; and F34's training throughput at 224×224, batch 64 (ignored by
//! default: `-- --ignored f34_training_throughput`).
//!
//! Built with `--features cuda` only (scripts/check-cuda.sh --build builds it,
//! scripts/device-check.sh runs it on a GPU machine). Without a CUDA device the GPU tests
//! print why and pass, unless `CNNC_REQUIRE_CUDA` is set (scripts/device-check.sh sets
//! it), when they fail; the NVRTC test needs only the NVRTC library, no GPU.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, Var};
use cnnc::analyze::{Mode, Options};
use cnnc::ir::{pool_out_size, Pad};
use cnnc::nn::pool::{PoolDim, PoolMode, PoolSpec};
use cnnc::nn::Model;

/// CUDA device 0, or None (after saying why) where there is none and none is required.
fn cuda() -> Option<Device> {
    // The error's first line (candle appends a backtrace when RUST_BACKTRACE is set).
    let first = |e: candle_core::Error| e.to_string().lines().next().unwrap_or_default().to_string();
    match Device::new_cuda(0).map_err(first) {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("CNNC_REQUIRE_CUDA").is_none() => {
            eprintln!("skipped: no CUDA device ({e}); set CNNC_REQUIRE_CUDA=1 to make this a failure");
            None
        }
        Err(e) => panic!("CNNC_REQUIRE_CUDA is set but CUDA device 0 cannot be opened: {e}"),
    }
}

/// specs/f34.cnn, found at run time (cargo runs tests in the package root; a copied test
/// binary, as on a GPU machine, runs in a checkout's root: scripts/device-check.sh).
fn f34() -> &'static str {
    let p = "specs/f34.cnn";
    assert!(std::path::Path::new(p).exists(), "{p} not found: run from the repository root");
    p
}

/// A small deterministic generator of uniform values in (-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    /// Values on a coarse grid (multiples of 1/4), so that windows hold tied maxima.
    fn coarse(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| (self.next() * 8.0).round() / 4.0).collect()
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// The compiled kernels need NVRTC (libnvrtc.so and its builtins library), not a GPU.
#[test]
fn nvrtc_compiles_the_pooling_kernels() {
    let ptx = cnnc::nn::pool::cuda::ptx().unwrap_or_else(|e| panic!("{e}"));
    for k in ["pool_fwd_f32", "pool_fwd_f64", "pool_argmax_f32", "pool_argmax_f64", "pool_bwd_f32", "pool_bwd_f64"] {
        assert!(ptx.contains(&format!(".entry {k}(")), "no kernel {k} in the PTX");
    }
}

/// (input, kernel, stride, pad begin, pad end, ceil) per axis, [h, w].
type Case = [(usize, usize, usize, usize, usize, bool); 2];

const CASES: &[Case] = &[
    // F34's stem pool on an odd size: 3/s2/p1.
    [(7, 3, 2, 1, 1, false), (7, 3, 2, 1, 1, false)],
    // F34's at 224×224 (112 → 56).
    [(112, 3, 2, 1, 1, false), (112, 3, 2, 1, 1, false)],
    // kernel 2 stride 3, kernel = stride, rectangular.
    [(8, 2, 3, 0, 0, false), (6, 2, 2, 0, 0, false)],
    // asymmetric padding, stride 1 (overlapping windows).
    [(5, 3, 1, 1, 0, false), (6, 2, 1, 0, 1, false)],
    // ceil mode: the last window runs past the padded input.
    [(6, 3, 2, 1, 1, true), (5, 2, 2, 0, 0, true)],
    // global: the whole plane (F34's at 224×224: 7×7; a larger one).
    [(7, 7, 1, 0, 0, false), (7, 7, 1, 0, 0, false)],
    [(33, 33, 1, 0, 0, false), (20, 20, 1, 0, 0, false)],
];

const MODES: [PoolMode; 3] = [PoolMode::Max, PoolMode::Avg { count_include_pad: true }, PoolMode::Avg { count_include_pad: false }];

fn spec(case: &Case, mode: PoolMode) -> PoolSpec {
    let dim = |&(input, kernel, stride, pb, pe, ceil): &(usize, usize, usize, usize, usize, bool)| {
        let output = pool_out_size(input as u64, kernel as u64, stride as u64, Pad { begin: pb as u64, end: pe as u64 }, ceil).unwrap();
        PoolDim { input, output: output as usize, kernel, stride, pad_begin: pb, pad_end: pe }
    };
    let s = PoolSpec { mode, h: dim(&case[0]), w: dim(&case[1]) };
    s.check().unwrap();
    s
}

/// The bits of every element (NaN compares equal to itself).
fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.to_device(&Device::Cpu).unwrap().flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t.to_vec1::<f32>().unwrap().into_iter().map(|v| v.to_bits() as u64).collect(),
        _ => t.to_vec1::<f64>().unwrap().into_iter().map(f64::to_bits).collect(),
    }
}

/// Forward, backward through candle's autograd and `grad_input`, on CUDA and on the CPU:
/// the same bits, for every case, mode and float type, on tied values and with NaN.
#[test]
fn pooling_kernels_match_the_cpu_bit_for_bit() {
    let Some(gpu) = cuda() else { return };
    let mut rng = Lcg(11);
    let (batch, channels) = (2, 3);
    for case in CASES {
        for mode in MODES {
            let s = spec(case, mode);
            for dtype in [DType::F32, DType::F64] {
                let m_in = channels * s.h.input * s.w.input;
                let mut x = rng.coarse(batch * m_in);
                if mode == PoolMode::Max {
                    x[m_in / 2] = f64::NAN;
                }
                let g = rng.vec(batch * channels * s.h.output * s.w.output);
                let shape = (batch, channels, s.h.input, s.w.input);
                let out_shape = (batch, channels, s.h.output, s.w.output);
                let mut got = Vec::new();
                for dev in [&Device::Cpu, &gpu] {
                    let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), shape, dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
                    let gt = Tensor::from_vec(g.clone(), out_shape, dev).unwrap().to_dtype(dtype).unwrap();
                    let z = s.apply(xv.as_tensor()).unwrap();
                    assert_eq!(z.dims(), &[batch, channels, s.h.output, s.w.output]);
                    let grads = (&z * &gt).unwrap().sum_all().unwrap().backward().unwrap();
                    let dx = grads.get(xv.as_tensor()).unwrap().clone();
                    let direct = s.grad_input(xv.as_tensor(), &gt).unwrap();
                    assert!(z.device().same_device(dev));
                    got.push((bits(&z), bits(&dx), bits(&direct)));
                }
                let (cpu, cuda) = (&got[0], &got[1]);
                assert_eq!(cpu.0, cuda.0, "{case:?} {mode:?} {dtype:?}: forward");
                assert_eq!(cpu.1, cuda.1, "{case:?} {mode:?} {dtype:?}: backward (autograd)");
                assert_eq!(cpu.2, cuda.2, "{case:?} {mode:?} {dtype:?}: grad_input");
            }
        }
    }
}

/// Every layer kind the model builds: convs with groups, dilation, asymmetric and per-axis
/// padding, stride, per-axis stride and dilation, rectangular kernels, no bias; every activation; max, average (with and
/// without the padding counted, ceil mode) and global pools; linear layers, an MLP.
const NETS: &[&str] = &[
    "network A\ninput 4x11x9\n\
     conv(3/pad_top=1/pad_bottom=0/pad_left=2/pad_right=1, groups=2) -> 6, relu, maxpool(3/s2/p1)\n\
     conv(kernel=3, pad=2, dilation=2) -> 5, leaky_relu(0.1), avgpool(2/s1/p1)\n\
     conv(3/s2/p1x0, groups=5, nobias) -> 5, tanh, avgpool(3/s2/p1/exclude_pad)\n\
     flatten\n\
     linear -> 7, gelu\n\
     linear -> 3\n",
    "network B\ninput 3x10x12\n\
     conv(5x3/p2x1) -> 4, sigmoid, maxpool(2/s2/ceil)\n\
     conv(1) -> 6, silu, avgpool(3/s2/p1/ceil)\n\
     conv(3/p1, groups=3) -> 6, relu, global_avgpool\n\
     linear -> 4\n",
    "network C\ninput 2x8x8\n\
     conv(3/s2) -> 4, relu, global_maxpool\n\
     linear -> 2\n",
    "network D\ninput 12\nlinear -> 8, relu\nlinear -> 3\n",
    // Per-axis stride and dilation (candle's conv2d takes one of each: ConvSpec::apply_candle).
    "network E\ninput 2x11x9\n\
     conv(3/s2x1/p1) -> 4, relu\n\
     conv(3x2/d1x2/p1x0) -> 3, tanh\n\
     flatten\n\
     linear -> 2\n",
];

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let f = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (a, b) = (f(a), f(b));
    assert_eq!(a.len(), b.len());
    let scale = a.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-30);
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f64::max)
}

/// Builds `src`'s model on `dev` (same seed, so the same weights on every device), runs a
/// batch forward and `Model::backward` of a fixed loss; returns the output and the
/// gradients by parameter name.
fn run(
    net: &cnnc::unify::Network,
    plan: &cnnc::plan::Plan,
    dev: &Device,
    dtype: DType,
    x: &[f64],
    batch: usize,
) -> (Tensor, Vec<(String, Tensor)>) {
    let m = Model::new(net, plan, 3, dev, dtype).unwrap_or_else(|e| panic!("{}: {e}", net.name));
    let mut dims = vec![batch];
    dims.extend(net.input.dims().into_iter().map(|d| d as usize));
    let x = Tensor::from_vec(x.to_vec(), dims, dev).unwrap().to_dtype(dtype).unwrap();
    let out = m.forward(&x).unwrap_or_else(|e| panic!("{}: {e}", net.name));
    // A loss that weighs every output differently: (Σ out² · w) with fixed w.
    let w = Tensor::arange(1u32, out.elem_count() as u32 + 1, dev).unwrap().to_dtype(dtype).unwrap().reshape(out.shape()).unwrap();
    let loss = (out.sqr().unwrap() * (w / out.elem_count() as f64).unwrap()).unwrap().sum_all().unwrap();
    let grads = m.backward(&loss).unwrap();
    let named = m
        .named_vars()
        .into_iter()
        .map(|(n, v)| {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {n}", net.name)).clone();
            (n, g)
        })
        .collect();
    (out, named)
}

fn compare(src: &str, size: Option<u64>, batch: usize, dtype: DType, tol: f64, gpu: &Device) {
    let net = match size {
        None => cnnc::Source::new("test.cnn", src).network().unwrap_or_else(|e| panic!("{e}")),
        Some(s) => cnnc::load_network(std::path::Path::new(src), cnnc::InputSize::Square(s)).unwrap(),
    };
    let plan = cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let x = Lcg(5).vec(batch * net.input.numel() as usize);
    let (out_cpu, g_cpu) = run(&net, &plan, &Device::Cpu, dtype, &x, batch);
    let (out_gpu, g_gpu) = run(&net, &plan, gpu, dtype, &x, batch);
    assert!(out_gpu.device().is_cuda());
    let d = max_rel_diff(&out_cpu, &out_gpu);
    assert!(d < tol, "{} {dtype:?}: outputs differ by {d:e} (relative to the largest)", net.name);
    let mut worst = d;
    for ((n, a), (m, b)) in g_cpu.iter().zip(&g_gpu) {
        assert_eq!(n, m);
        let d = max_rel_diff(a, b);
        assert!(d < tol, "{} {dtype:?}: gradient of {n} differs by {d:e}", net.name);
        worst = worst.max(d);
    }
    println!("{} {dtype:?}: CUDA = CPU within {worst:.1e} (outputs and {} gradients)", net.name, g_cpu.len());
}

/// Every layer kind, forward and parameter gradients, f64 (tight) and f32.
#[test]
fn models_on_cuda_match_the_cpu() {
    let Some(gpu) = cuda() else { return };
    for src in NETS {
        compare(src, None, 3, DType::F64, 1e-10, &gpu);
        compare(src, None, 3, DType::F32, 1e-4, &gpu);
    }
}

/// F34 (the paper's network) at 64×64: forward and gradients, f32.
#[test]
fn f34_on_cuda_matches_the_cpu() {
    let Some(gpu) = cuda() else { return };
    let spec = f34();
    compare(spec, Some(64), 2, DType::F32, 1e-3, &gpu);
}

/// F34's training throughput on CUDA at 224×224, batch 64, f32: forward, cross-entropy,
/// `Model::backward`, SGD step (momentum, weight decay), synchronized after each step;
/// 3 warm-up steps, then the mean of 10.
#[test]
#[ignore]
fn f34_training_throughput() {
    let Some(gpu) = cuda() else { return };
    let (size, batch, steps) = (224, 64, 10);
    let spec = f34();
    let net = cnnc::load_network(std::path::Path::new(spec), cnnc::InputSize::Square(size)).unwrap();
    let plan = cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let model = Model::new(&net, &plan, 0, &gpu, DType::F32).unwrap();
    let mut opt = cnnc::train::sgd::Sgd::new(model.named_vars(), 1e-3, 0.9, 1e-4);
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size as usize, size as usize), &gpu).unwrap();
    let y = Tensor::from_vec((0..batch as u32).map(|k| k % 10).collect::<Vec<u32>>(), batch, &gpu).unwrap();
    let mut step = || {
        let logits = model.forward(&x).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        opt.step(&model.backward(&loss).unwrap()).unwrap();
        gpu.synchronize().unwrap();
        loss.to_scalar::<f32>().unwrap()
    };
    for _ in 0..3 {
        step();
    }
    let t = std::time::Instant::now();
    let mut last = 0.0;
    for _ in 0..steps {
        last = step();
    }
    let secs = t.elapsed().as_secs_f64();
    assert!(last.is_finite(), "loss {last}");
    let fwd_t = std::time::Instant::now();
    for _ in 0..steps {
        model.forward(&x).unwrap().detach();
    }
    gpu.synchronize().unwrap();
    let fwd = (batch * steps) as f64 / fwd_t.elapsed().as_secs_f64();
    println!(
        "F34 {size}x{size}, batch {batch}, f32, CUDA: training {:.1} images/s ({:.1} ms a step), forward alone {fwd:.1} images/s",
        (batch * steps) as f64 / secs,
        secs / steps as f64 * 1e3
    );
}
