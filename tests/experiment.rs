//! Experiments: quartiles as NumPy computes them, and a resumable grid on tiny data.

use cnnc::experiment::{quantile, run};
use std::path::Path;

#[test]
fn quartiles_match_numpy_linear_interpolation() {
    // numpy.quantile(x, [0.25, 0.5, 0.75]) with the default method="linear".
    let q = |x: &[f64]| [0.25, 0.5, 0.75].map(|p| quantile(x, p).unwrap());
    assert_eq!(q(&[1.0, 2.0, 3.0, 4.0]), [1.75, 2.5, 3.25]);
    assert_eq!(q(&[4.0, 1.0, 3.0]), [2.0, 3.0, 3.5]);
    assert_eq!(q(&[7.0]), [7.0, 7.0, 7.0]);
    let ten: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(q(&ten), [3.25, 5.5, 7.75]);
    // The paper's Table 4 shape: 10 runs, quartiles between order statistics.
    let acc = [69.92, 68.36, 69.04, 69.48, 67.0, 68.0, 69.5, 70.0, 68.5, 69.0];
    let [q1, med, q3] = q(&acc);
    assert!((q1 - 68.395).abs() < 1e-9 && (med - 69.02).abs() < 1e-9 && (q3 - 69.495).abs() < 1e-9, "{q1} {med} {q3}");
    assert_eq!(quantile(&[], 0.5), None);
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_grid_runs_resumes_and_skips_finished_runs() {
    let exe = Path::new(env!("CARGO_BIN_EXE_cnnc"));
    let dir = std::env::temp_dir().join(format!("cnnc-experiment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let status = std::process::Command::new(exe)
        .args(["synth-data", data.to_str().unwrap(), "--classes", "2", "--per-class", "12", "--size", "8", "--seed", "4"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    write(
        &dir.join("tiny.cnn"),
        "network Tiny\ninput 3x8x8\nconv(3/p1) -> 4, relu, maxpool(2)\nconv(3/p1) -> 4, relu, global_avgpool\nlinear -> 2\n",
    );
    let config = |epochs: usize| {
        format!(
            "model: tiny.cnn\ndata: data\nepochs: {epochs}\nbatch_size: 4\nlr: 0.05\ninits: [forward, kaiming-in]\nseeds: [0, 1]\nval_split: 0.25\nout: runs\n"
        )
    };
    let cfg = dir.join("exp.yaml");
    write(&cfg, &config(1));
    let first = run(&cfg, exe, true).unwrap();
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|r| r.val_accuracy.len() == 1 && !r.diverged), "{first:?}");
    let results = std::fs::read_to_string(dir.join("runs/results.md")).unwrap();
    assert!(results.contains("| forward | 2 | 0 |") && results.contains("| kaiming-in | 2 | 0 |"), "{results}");
    assert!(std::fs::read_to_string(dir.join("runs/curves.svg")).unwrap().starts_with("<svg"));

    // Two epochs now: every run resumes from its checkpoint; epoch 1 is kept as it was.
    write(&cfg, &config(2));
    let second = run(&cfg, exe, true).unwrap();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(b.val_accuracy.len(), 2);
        assert_eq!(a.val_accuracy[0], b.val_accuracy[0], "{} seed {} restarted instead of resuming", a.init, a.seed);
    }
    // Finished runs are skipped: nothing is rewritten.
    let metrics = dir.join("runs/forward-s0/metrics.jsonl");
    let before = std::fs::metadata(&metrics).unwrap().modified().unwrap();
    run(&cfg, exe, true).unwrap();
    assert_eq!(std::fs::metadata(&metrics).unwrap().modified().unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configs_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("cnnc-experiment-bad-{}", std::process::id()));
    let cfg = dir.join("bad.yaml");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [he]\nseeds: [0]\nout: runs\n");
    let e = run(&cfg, Path::new("cnnc"), true).unwrap_err().to_string();
    assert!(e.contains("unknown init `he`"), "{e}");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [forward]\nseeds: [0]\nout: runs\ncolour: blue\n");
    let e = run(&cfg, Path::new("cnnc"), true).unwrap_err().to_string();
    assert!(e.contains("unknown field `colour`"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
