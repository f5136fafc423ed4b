//! cnnc's CPU kernels against candle's, on the workloads of `benches/pytorch_bench.py`
//! (std only, no harness), so that the three can be compared back to back.
//!
//! Run with `RAYON_NUM_THREADS=1 cargo bench --features train --bench kernels -- [--json FILE] [--sizes 64,224]
//! [--rounds N] [--kernels cnnc,candle] [--no-conv] [--model resnet18]` (`--no-conv`: the network only, e.g. to
//! profile it; `--model`: a spec of `specs/` instead of F34, a graph such as ResNet-18 with its BatchNorms in
//! training mode, as `cnnc train` runs it). Every workload runs in f32, batch 16, once per
//! kernel set ("candle": candle's `conv2d` and its backward, i.e. before; "cnnc": the
//! im2col + GEMM ops of src/nn/conv.rs, what `cnnc train` runs):
//! - conv 3×3, 64→64, 56×56, padding 1, with bias: forward; forward + backward with the
//!   input gradient (input a `Var`); forward + backward without it (input a plain tensor);
//!   the backward's upstream gradient is a fixed random tensor, as `out.backward(g)`;
//! - F34 (specs/f34.cnn), or the `--model` spec, at 64×64 and 224×224: forward; a training
//!   step (forward, cross-entropy, backward, SGD with momentum 0.9 and weight decay 1e-4).
//!
//! Each figure is the fastest and the median of `--rounds` calls (default 5; 3 at 224)
//! after one warm-up call. Threads: candle's count, `RAYON_NUM_THREADS` (else the cores);
//! the workloads run on a rayon worker ([`cnnc::nn::on_pool`]), as `cnnc train` does.

use candle_core::{DType, Device, Tensor, Var};
use cnnc::nn::conv::ConvSpec;
use cnnc::nn::{GraphModel, Kernels, Model};
use cnnc::train::sgd::Sgd;
use cnnc::train::Trainable;
use std::time::Instant;

const BATCH: usize = 16;

struct Args {
    json: Option<String>,
    sizes: Vec<u64>,
    rounds: usize,
    kernels: Vec<Kernels>,
    conv: bool,
    model: String,
}

fn args() -> Args {
    let mut a = Args {
        json: None,
        sizes: vec![64, 224],
        rounds: 5,
        kernels: vec![Kernels::Candle, Kernels::Cnnc],
        conv: true,
        model: "f34".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--json" => a.json = Some(value()),
            "--sizes" => a.sizes = value().split(',').map(|s| s.parse().expect("--sizes: numbers")).collect(),
            "--no-conv" => a.conv = false,
            "--model" => a.model = value(),
            "--rounds" => a.rounds = value().parse().expect("--rounds: a number"),
            "--kernels" => {
                a.kernels = value()
                    .split(',')
                    .map(|s| match s {
                        "cnnc" => Kernels::Cnnc,
                        "candle" => Kernels::Candle,
                        _ => panic!("--kernels: cnnc or candle"),
                    })
                    .collect()
            }
            // cargo bench passes --bench.
            _ => {}
        }
    }
    a
}

/// Fastest and median seconds of `rounds` calls after one warm-up call.
fn time(rounds: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

fn name(k: Kernels) -> &'static str {
    match k {
        Kernels::Cnnc => "cnnc",
        Kernels::Candle => "candle",
    }
}

struct Row {
    workload: String,
    kernels: Kernels,
    best: f64,
    median: f64,
    images: Option<usize>,
}

fn conv_rows(k: Kernels, rounds: usize, rows: &mut Vec<Row>) {
    let dev = Device::Cpu;
    let spec = ConvSpec { stride: [1, 1], dilation: [1, 1], pad: [1; 4], groups: 1 };
    let x = Tensor::randn(0f32, 1.0, (BATCH, 64, 56, 56), &dev).unwrap();
    let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (64, 64, 3, 3), &dev).unwrap() * 0.05).unwrap()).unwrap();
    let b = Var::zeros(64, DType::F32, &dev).unwrap();
    let g = Tensor::randn(0f32, 1.0, (BATCH, 64, 56, 56), &dev).unwrap();
    let conv = |x: &Tensor| match k {
        Kernels::Cnnc => spec.apply(x, w.as_tensor(), Some(b.as_tensor())).unwrap(),
        Kernels::Candle => spec.apply_candle(x, w.as_tensor(), Some(b.as_tensor())).unwrap(),
    };
    let base = "conv3x3 64->64 56x56 b16";
    let mut push = |what: &str, (best, median): (f64, f64)| {
        rows.push(Row { workload: format!("{base} {what}"), kernels: k, best, median, images: None })
    };
    push("forward", time(rounds, || drop(conv(&x.detach()))));
    let xv = Var::from_tensor(&x).unwrap();
    push(
        "forward+backward (input grad)",
        time(rounds, || {
            let out = conv(xv.as_tensor());
            drop((&out * &g).unwrap().sum_all().unwrap().backward().unwrap());
        }),
    );
    push(
        "forward+backward (no input grad)",
        time(rounds, || {
            let out = conv(&x);
            drop((&out * &g).unwrap().sum_all().unwrap().backward().unwrap());
        }),
    );
}

/// A network of `specs/` (`f34`, `resnet18`, …) at `size`: forward, and a training step.
fn model_rows(k: Kernels, spec: &str, size: u64, rounds: usize, rows: &mut Vec<Row>) {
    let path = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/specs")).join(format!("{spec}.cnn"));
    let source = cnnc::load(&path, cnnc::InputSize::Square(size)).unwrap_or_else(|e| panic!("{e}"));
    let opts = cnnc::analyze::Options { mode: cnnc::analyze::Mode::Forward, std_cap: None };
    let req = cnnc::GraphRequest { opts, analysis: Default::default(), branch_scale: 1.0, batch: None };
    let plan = source.plan(req).unwrap();
    let dev = Device::Cpu;
    let model: Box<dyn Trainable> = if source.is_source_chain() {
        Box::new(Model::new(&source.network().unwrap(), &plan, 0, &dev, DType::F32).unwrap().with_kernels(k))
    } else {
        Box::new(GraphModel::new(&source.graph, &plan, 0, &dev, DType::F32).unwrap().with_kernels(k))
    };
    let label = if spec == "f34" { "F34".to_string() } else { source.graph.name.clone() };
    let mut opt = Sgd::new(model.named_vars(), 1e-3, 0.9, 1e-4);
    let s = size as usize;
    let x = Tensor::randn(0f32, 1.0, (BATCH, 3, s, s), &dev).unwrap();
    let y = Tensor::from_vec((0..BATCH as u32).map(|c| c % 10).collect::<Vec<u32>>(), BATCH, &dev).unwrap();
    // The forward as in evaluation (BatchNorm's running statistics), the step in training.
    model.set_training(false);
    let (best, median) = time(rounds, || drop(model.forward(&x).unwrap()));
    rows.push(Row { workload: format!("{label} {s}x{s} b16 forward"), kernels: k, best, median, images: Some(BATCH) });
    model.set_training(true);
    let (best, median) = time(rounds, || {
        let logits = model.forward(&x).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        opt.step(&model.backward(&loss).unwrap()).unwrap();
    });
    rows.push(Row { workload: format!("{label} {s}x{s} b16 train step"), kernels: k, best, median, images: Some(BATCH) });
}

fn main() {
    cnnc::nn::tune_cpu();
    let a = args();
    let threads = candle_core::utils::get_num_threads();
    println!("threads: {threads}");
    println!("{:<58} {:>7} {:>10} {:>10} {:>8}", "workload", "kernels", "best s", "median s", "img/s");
    let mut rows = Vec::new();
    let report = |rows: &mut Vec<Row>, from: usize| {
        for r in &rows[from..] {
            let ips = r.images.map(|n| format!("{:8.2}", n as f64 / r.best)).unwrap_or_default();
            println!("{:<58} {:>7} {:>10.4} {:>10.4} {ips}", r.workload, name(r.kernels), r.best, r.median);
        }
    };
    for &k in a.kernels.iter().filter(|_| a.conv) {
        let from = rows.len();
        cnnc::nn::on_pool(|| conv_rows(k, a.rounds, &mut rows));
        report(&mut rows, from);
    }
    for &size in &a.sizes {
        for &k in &a.kernels {
            let from = rows.len();
            // On a pool's worker, as `cnnc train` runs.
            cnnc::nn::on_pool(|| model_rows(k, &a.model, size, if size > 100 { a.rounds.min(3) } else { a.rounds }, &mut rows));
            report(&mut rows, from);
        }
    }
    if let Some(path) = a.json {
        let workloads: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "workload": r.workload, "kernels": name(r.kernels), "best_s": r.best, "median_s": r.median,
                    "images_per_s": r.images.map(|n| n as f64 / r.best),
                })
            })
            .collect();
        let out = serde_json::json!({ "threads": threads, "batch": BATCH, "workloads": workloads });
        std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).expect("write the JSON");
    }
}
