//! The real Fashion-MNIST files (Debian's `dataset-fashion-mnist`, which `.ci/run`
//! installs): counts, shapes, labels and known properties of the data, then a tiny net
//! trained for a few steps on a small subset. Without the files the tests fail when `CI`
//! is set (`.ci/run` sets it and installs them) and are skipped with a notice otherwise.

use cnnc::train::data::{self, Split, Target};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where Debian puts the files (`CNNC_FASHION_MNIST_DIR` overrides it).
fn dir() -> PathBuf {
    std::env::var_os("CNNC_FASHION_MNIST_DIR").map_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist"), PathBuf::from)
}
const FILES: [&str; 4] = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// Each file, gzipped (as Debian ships them) or not; `None` if one is missing.
fn files() -> Option<Vec<PathBuf>> {
    FILES.iter().map(|f| [format!("{f}.gz"), f.to_string()].into_iter().map(|n| dir().join(n)).find(|p| p.is_file())).collect()
}

/// The files, or `None` after a skip notice; a panic under CI.
fn present(test: &str) -> Option<Vec<PathBuf>> {
    let found = files();
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{}: Fashion-MNIST is missing, and CI is set (CI installs the Debian package dataset-fashion-mnist)", dir().display());
        }
        // Written to the process's stderr, not with eprintln!, which the test harness
        // captures and shows only for failing tests: a skip must be seen in a plain
        // `cargo test`.
        let notice = format!(
            "{test}: SKIPPED, no Fashion-MNIST in {} (apt-get install dataset-fashion-mnist, or set CNNC_FASHION_MNIST_DIR)\n",
            dir().display()
        );
        let _ = std::io::stderr().write_all(notice.as_bytes());
    }
    found
}

/// The whole data set, loaded once, 1 channel at 28×28.
fn split() -> &'static Split {
    static SPLIT: OnceLock<Split> = OnceLock::new();
    SPLIT.get_or_init(|| data::load(&dir(), Target { channels: 1, size: 28 }, 0.0, 0).unwrap())
}

#[test]
fn the_real_files_have_fashion_mnists_counts_shapes_and_labels() {
    let Some(files) = present("the_real_files_have_fashion_mnists_counts_shapes_and_labels") else { return };
    let (dims, _) = data::read_idx(&files[0]).unwrap();
    assert_eq!(dims, [60000, 28, 28]);
    let (dims, labels) = data::read_idx(&files[1]).unwrap();
    assert_eq!(dims, [60000]);
    // The first labels of each set, as published (9 = ankle boot, 0 = T-shirt/top, …).
    assert_eq!(labels[..10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    let (dims, _) = data::read_idx(&files[2]).unwrap();
    assert_eq!(dims, [10000, 28, 28]);
    let (dims, labels) = data::read_idx(&files[3]).unwrap();
    assert_eq!(dims, [10000]);
    assert_eq!(labels[..10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);

    let s = split();
    assert_eq!((s.train.len(), s.val.len()), (60000, 10000));
    assert_eq!((s.train.channels, s.train.size), (1, 28));
    assert_eq!(s.train.pixels.len(), 60000 * 28 * 28);
    assert_eq!(s.val.pixels.len(), 10000 * 28 * 28);
    assert_eq!(s.classes, (0..10).map(|c| c.to_string()).collect::<Vec<_>>());
    assert!(s.skipped.is_empty());
    // Balanced: 6000 training and 1000 test images per class, labels 0..9 only.
    for (ds, per_class) in [(&s.train, 6000), (&s.val, 1000)] {
        let mut counts = [0usize; 10];
        for &l in &ds.labels {
            counts[l as usize] += 1; // panics on a label ≥ 10
        }
        assert_eq!(counts, [per_class; 10]);
    }
    // The training pixels' mean is 0.2860 of full scale (the figure everyone normalizes
    // with), about half of them are exactly 0 (black background), and the first image's
    // bytes sum to 76247.
    let mean = s.train.pixels.iter().map(|&p| p as f64).sum::<f64>() / s.train.pixels.len() as f64 / 255.0;
    assert!((mean - 0.2860).abs() < 5e-4, "mean {mean}");
    let zeros = s.train.pixels.iter().filter(|&&p| p == 0).count() as f64 / s.train.pixels.len() as f64;
    assert!((0.49..0.51).contains(&zeros), "zero fraction {zeros}");
    assert_eq!(s.train.pixels[..784].iter().map(|&p| p as u64).sum::<u64>(), 76247);
    // Normalized batches span [−1, 1].
    let (x, y) = s.train.batch(&[0]);
    assert_eq!(y, [9]);
    assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)) && x.contains(&-1.0));
}

#[test]
fn a_tiny_net_learns_from_a_fashion_mnist_subset() {
    if present("a_tiny_net_learns_from_a_fashion_mnist_subset").is_none() {
        return;
    }
    let root = std::env::temp_dir().join(format!("cnnc-fmnist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let spec = root.join("tiny.cnn");
    std::fs::write(
        &spec,
        "network FashionTiny\ninput 1x28x28\nConv(3/p1) -> 8, relu\nMaxPool(3/s2/p1)\nConv(3/s2/p1) -> 16, relu\nLinear -> 10\n",
    )
    .unwrap();
    let net = cnnc::load_network(&spec, cnnc::InputSize::Declared).unwrap();
    let plan = cnnc::plan(&net, cnnc::analyze::Options { mode: cnnc::analyze::Mode::Forward, std_cap: None }).unwrap();
    let mut subset = split().clone();
    subset.train.truncate(512);
    subset.val.truncate(256);
    let config = cnnc::train::Config {
        model: spec.display().to_string(),
        data: dir().display().to_string(),
        init: "forward".into(),
        analysis: "paper".into(),
        image_size: 28,
        epochs: 3,
        batch_size: 32,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        seed: 0,
        device: "cpu".into(),
        val_split: 0.0,
        limit_train: 512,
        limit_val: 256,
        branch_scale: 1.0,
        drop_last: false,
    };
    let s = cnnc::train::train(&net, &plan, &subset, &config, &root.join("run"), false, false).unwrap();
    let m: Vec<_> = s.epochs.iter().map(|m| (m.train_loss, m.val_loss.unwrap(), m.val_accuracy.unwrap())).collect();
    eprintln!("Fashion-MNIST subset, (train loss, val loss, val accuracy) per epoch: {m:?}");
    assert!(m.iter().all(|e| e.0.is_finite() && e.1.is_finite()));
    assert!(m[2].0 < m[0].0, "the training loss falls: {m:?}");
    // 0.69 after 3 epochs when written (seeded: the same on every CPU run).
    assert!(m[2].2 > 0.5, "validation accuracy well above chance (0.1): {m:?}");
    std::fs::remove_dir_all(&root).unwrap();
}
