//! F34's conv layers one at a time: where a training step's conv time goes, per shape
//! (std only, no harness). `benches/pytorch_layers.py` times the same shapes in PyTorch.
//!
//! Run with `RAYON_NUM_THREADS=2 cargo bench --features train --bench layers -- [--size 64] [--reps 40]
//! [--only I]`. For each distinct conv shape of F34 at `--size`×`--size` input (batch 16,
//! f32; `--only` picks shape I of the eleven): the fastest of `--reps` calls of
//! - forward: `ConvSpec::apply_relu` (conv + bias + ReLU, one op, as `cnnc train` runs it);
//! - backward: `(out · g).sum().backward()` for a fixed random `g`, i.e. the ReLU mask, the
//!   input gradient (not for the stem, whose input is the data), the weight and bias
//!   gradients, plus a multiply, a sum and their backward that PyTorch's `out.backward(g)`
//!   does not have (≈ 1–3 % here).
//!
//! Counts in F34: the stem once, 64→64 16×16 six times (at 64×64), 128→128 seven,
//! 256→256 eleven, 512→512 five, each stride-2 layer once. At `--size 224` these are
//! ResNet-18's 3×3 shapes and stem; the last three (8–10) are ResNet-18's 1×1 stride-2
//! downsampling convolutions (once each in ResNet-18, not in F34).

use candle_core::{DType, Device, Tensor, Var};
use cnnc::nn::conv::ConvSpec;
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect("a number"))
}

fn main() {
    cnnc::nn::tune_cpu();
    let (s, reps, n) = (arg("--size", 64), arg("--reps", 40), 16);
    let only = std::env::args().any(|a| a == "--only").then(|| arg("--only", 0));
    let dev = Device::Cpu;
    // (in, out, map, kernel, stride, padding)
    let shapes = [
        (3, 64, s, 7, 2, 3),
        (64, 64, s / 4, 3, 1, 1),
        (64, 128, s / 4, 3, 2, 1),
        (128, 128, s / 8, 3, 1, 1),
        (128, 256, s / 8, 3, 2, 1),
        (256, 256, s / 16, 3, 1, 1),
        (256, 512, s / 16, 3, 2, 1),
        (512, 512, s / 32, 3, 1, 1),
        // ResNet-18's 1×1 stride-2 downsampling convolutions (not in F34).
        (64, 128, s / 4, 1, 2, 0),
        (128, 256, s / 8, 1, 2, 0),
        (256, 512, s / 16, 1, 2, 0),
    ];
    println!("threads: {}", rayon::current_num_threads());
    for (i, &(ci, co, h, k, st, p)) in shapes.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let spec = ConvSpec { stride: [st, st], dilation: [1, 1], pad: [p; 4], groups: 1 };
        let x = Tensor::randn(0f32, 1.0, (n, ci, h, h), &dev).unwrap();
        let x = if ci == 3 { x } else { Var::from_tensor(&x).unwrap().as_tensor().clone() };
        let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (co, ci, k, k), &dev).unwrap() * 0.05).unwrap()).unwrap();
        let b = Var::zeros(co, DType::F32, &dev).unwrap();
        let oh = (h + 2 * p - k) / st + 1;
        let g = Tensor::randn(0f32, 1.0, (n, co, oh, oh), &dev).unwrap();
        let mut best = [f64::INFINITY; 2];
        cnnc::nn::on_pool(|| {
            for _ in 0..reps {
                let t = Instant::now();
                let out = spec.apply_relu(&x, w.as_tensor(), Some(b.as_tensor())).unwrap();
                best[0] = best[0].min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                drop((&out * &g).unwrap().sum_all().unwrap().backward().unwrap());
                best[1] = best[1].min(t.elapsed().as_secs_f64());
            }
        });
        println!("{ci}->{co} {h}x{h} k{k} s{st}: fwd {:.2} ms  bwd {:.2} ms", best[0] * 1e3, best[1] * 1e3);
    }
}
