//! The prefetching batch loader: the same batches, in the same order, with or without
//! worker threads; a failing step stops the workers; and a training run is the same
//! with and without prefetch, bit for bit.

use cnnc::train::data::{self, Dataset};
use cnnc::train::loader::{for_each_batch, Batch, Prefetch};
use std::path::Path;

/// 23 gray 3×3 images whose bytes encode (image, position), labels `i mod 5`.
fn dataset() -> Dataset {
    let n = 23;
    Dataset {
        pixels: (0..n * 9).map(|k| (k * 7 % 256) as u8).collect(),
        labels: (0..n as u32).map(|i| i % 5).collect(),
        channels: 1,
        size: 3,
    }
}

fn collect(ds: &Dataset, order: &[usize], batch: usize, p: Prefetch) -> Vec<(usize, Batch)> {
    let mut out = Vec::new();
    for_each_batch(ds, order, batch, p, |k, b| -> Result<(), ()> {
        out.push((k, b));
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn batches_are_identical_with_and_without_prefetch() {
    let ds = dataset();
    for epoch in 1..=2 {
        let order = data::epoch_order(ds.len(), 7, epoch);
        for batch in [1, 4, 5, 23, 40] {
            let plain = collect(&ds, &order, batch, Prefetch::OFF);
            assert_eq!(plain.len(), ds.len().div_ceil(batch));
            // What the loop trained on before the loader existed: `Dataset::batch` per chunk.
            for ((k, b), idx) in plain.iter().zip(order.chunks(batch)) {
                let (x, y) = ds.batch(idx);
                assert_eq!((b.x.as_slice(), b.y.as_slice()), (x.as_slice(), y.as_slice()), "batch {k}");
            }
            assert_eq!(plain.iter().map(|p| p.0).collect::<Vec<_>>(), (0..plain.len()).collect::<Vec<_>>());
            for (workers, depth) in [(1, 0), (1, 2), (2, 1), (3, 4), (8, 1)] {
                let pre = collect(&ds, &order, batch, Prefetch { workers, depth });
                assert_eq!(pre, plain, "batch {batch}, {workers} workers, depth {depth}");
            }
        }
    }
    // An empty order gives no batches, with or without workers.
    assert!(collect(&ds, &[], 4, Prefetch::default()).is_empty());
}

#[test]
fn an_error_stops_the_loop_and_the_workers() {
    let ds = dataset();
    let order: Vec<usize> = (0..ds.len()).cycle().take(2000).collect();
    for p in [Prefetch::OFF, Prefetch::default(), Prefetch { workers: 3, depth: 1 }] {
        let mut seen = Vec::new();
        let r = for_each_batch(&ds, &order, 2, p, |k, _| {
            seen.push(k);
            if k == 3 {
                Err(format!("NaN at step {k}"))
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err("NaN at step 3".to_string()));
        assert_eq!(seen, [0, 1, 2, 3], "{p:?}");
    }
    // (The workers are scoped threads: `for_each_batch` cannot return before they end.)
}

#[test]
fn training_is_the_same_with_and_without_prefetch() {
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/train/tiny.cnn");
    let root = std::env::temp_dir().join(format!("cnnc-loader-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    data::synthesize(&root.join("data"), 4, 8, 16, 5).unwrap();
    let net = cnnc::load_network(Path::new(tiny), cnnc::InputSize::Declared).unwrap();
    let plan = cnnc::plan(&net, cnnc::analyze::Options { mode: cnnc::analyze::Mode::Forward, std_cap: None }).unwrap();
    let split = data::load(&root.join("data"), data::Target { channels: 3, size: 16 }, 0.25, 1).unwrap();
    let config = cnnc::train::Config {
        model: tiny.into(),
        data: root.join("data").display().to_string(),
        init: "forward".into(),
        analysis: "paper".into(),
        image_size: 16,
        epochs: 2,
        batch_size: 5,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        seed: 4,
        device: "cpu".into(),
        val_split: 0.25,
        limit_train: 0,
        limit_val: 0,
        branch_scale: 1.0,
        drop_last: false,
    };
    let mut weights = Vec::new();
    let mut losses = Vec::new();
    for (k, p) in [Prefetch::OFF, Prefetch::default(), Prefetch { workers: 2, depth: 0 }].into_iter().enumerate() {
        let run = root.join(format!("run{k}"));
        let s = cnnc::train::train_with(&net, &plan, &split, &config, &run, false, false, p).unwrap();
        losses.push(s.epochs.iter().map(|m| (m.train_loss, m.val_loss, m.val_accuracy)).collect::<Vec<_>>());
        weights.push(cnnc::train::checkpoint_weights(&run).unwrap());
    }
    assert_eq!(losses[0], losses[1]);
    assert_eq!(losses[0], losses[2]);
    assert_eq!(weights[0], weights[1]);
    assert_eq!(weights[0], weights[2]);
    std::fs::remove_dir_all(&root).unwrap();
}
