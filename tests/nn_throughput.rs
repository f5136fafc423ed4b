//! Throughput of the candle model: F34 at 64×64 and 224×224, batch 16, forward only and
//! forward + backward (+ SGD step), images/s. Slow, so ignored by default; run with
//! `cargo test --release --test nn_throughput -- --ignored --nocapture`.

use candle_core::{DType, Device, Tensor};
use cnnc::nn::Model;
use cnnc::train::sgd::Sgd;
use std::time::Instant;

#[test]
#[ignore]
fn f34_images_per_second() {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/f34.cnn");
    let batch = 16;
    for size in [64u64, 224] {
        let net = cnnc::load_network(std::path::Path::new(spec), cnnc::InputSize::Square(size)).unwrap();
        let plan = cnnc::plan(&net, cnnc::analyze::Options { mode: cnnc::analyze::Mode::Forward, std_cap: None }).unwrap();
        let model = Model::new(&net, &plan, 0, &Device::Cpu, DType::F32).unwrap();
        let mut opt = Sgd::new(model.named_vars(), 1e-3, 0.9, 1e-4);
        let x = Tensor::randn(0f32, 1.0, (batch, 3, size as usize, size as usize), &Device::Cpu).unwrap();
        let y = Tensor::from_vec((0..batch as u32).map(|k| k % 10).collect::<Vec<u32>>(), batch, &Device::Cpu).unwrap();
        let reps = if size > 100 { 2 } else { 4 };
        // Warm-up.
        model.forward(&x).unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            model.forward(&x).unwrap().detach();
        }
        let fwd = (batch * reps) as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..reps {
            let logits = model.forward(&x).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let train = (batch * reps) as f64 / t.elapsed().as_secs_f64();
        println!("F34 {size}x{size}, batch {batch}: forward {fwd:.1} images/s, forward+backward+step {train:.1} images/s");
        assert!(fwd > 0.0 && train > 0.0);
    }
}
