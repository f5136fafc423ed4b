//! The training loop: exact resume (2 epochs straight = 1 + resume 1, bit for bit on the
//! CPU), metrics and checkpoint files, a non-finite loss stopping the run, and the CLI.

use cnnc::train::{self, data, Config};
use std::path::{Path, PathBuf};
use std::process::Command;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/train/tiny.cnn");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cnnc-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(data: &Path, epochs: usize, lr: f64) -> Config {
    Config {
        model: TINY.into(),
        data: data.display().to_string(),
        init: "forward".into(),
        analysis: "paper".into(),
        image_size: 16,
        epochs,
        batch_size: 8,
        lr,
        momentum: 0.9,
        weight_decay: 1e-4,
        seed: 3,
        device: "cpu".into(),
        val_split: 0.25,
        limit_train: 0,
        limit_val: 0,
        branch_scale: 1.0,
        drop_last: false,
    }
}

#[test]
fn two_epochs_straight_equal_one_plus_resume_one() {
    let root = tmp("resume");
    let data_dir = root.join("data");
    data::synthesize(&data_dir, 4, 10, 16, 1).unwrap();
    let net = cnnc::load_network(Path::new(TINY), cnnc::InputSize::Declared).unwrap();
    let plan = cnnc::plan(&net, cnnc::analyze::Options { mode: cnnc::analyze::Mode::Forward, std_cap: None }).unwrap();
    let split = data::load(&data_dir, data::Target { channels: 3, size: 16 }, 0.25, 3).unwrap();

    let straight = root.join("straight");
    let s = train::train(&net, &plan, &split, &config(&data_dir, 2, 0.05), &straight, false, false).unwrap();
    assert_eq!(s.epochs.len(), 2);

    let split_run = root.join("split");
    train::train(&net, &plan, &split, &config(&data_dir, 1, 0.05), &split_run, false, false).unwrap();
    let after_one = train::checkpoint_weights(&split_run).unwrap();
    let r = train::train(&net, &plan, &split, &config(&data_dir, 2, 0.05), &split_run, true, false).unwrap();
    assert_eq!(r.epochs.len(), 2, "metrics of epoch 1 are kept");

    let a = train::checkpoint_weights(&straight).unwrap();
    let b = train::checkpoint_weights(&split_run).unwrap();
    assert_eq!(a.iter().map(|t| &t.0).collect::<Vec<_>>(), b.iter().map(|t| &t.0).collect::<Vec<_>>());
    assert!(a.iter().any(|(n, _)| n.starts_with("momentum.")), "momentum buffers are saved");
    assert_eq!(a, b, "resumed weights and momentum equal the straight run's");
    assert_ne!(after_one, b, "the second epoch changed the weights");

    let metrics = std::fs::read_to_string(straight.join(train::METRICS)).unwrap();
    let lines: Vec<train::EpochMetrics> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
    // The file says what the run returned (timings aside, which are not exact in JSON).
    // serde_json's float parsing may differ from the written value in the last bit.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
    for (f, m) in lines.iter().zip(&s.epochs) {
        assert_eq!(f.epoch, m.epoch);
        assert!(close(f.train_loss, m.train_loss) && close(f.train_accuracy, m.train_accuracy));
        assert!(close(f.val_loss.unwrap(), m.val_loss.unwrap()) && close(f.val_accuracy.unwrap(), m.val_accuracy.unwrap()));
    }
    let resumed = std::fs::read_to_string(split_run.join(train::METRICS)).unwrap();
    assert_eq!(resumed.lines().count(), 2);
    // Train losses are identical too (same batches, same weights).
    assert_eq!(s.epochs[1].train_loss, r.epochs[1].train_loss);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let root = tmp("nan");
    let data_dir = root.join("data");
    data::synthesize(&data_dir, 4, 8, 16, 2).unwrap();
    let net = cnnc::load_network(Path::new(TINY), cnnc::InputSize::Declared).unwrap();
    let plan = cnnc::plan(&net, cnnc::analyze::Options { mode: cnnc::analyze::Mode::Forward, std_cap: None }).unwrap();
    let split = data::load(&data_dir, data::Target { channels: 3, size: 16 }, 0.25, 3).unwrap();
    let run = root.join("run");
    train::train(&net, &plan, &split, &config(&data_dir, 1, 0.01), &run, false, false).unwrap();
    let good = std::fs::read(run.join(train::CHECKPOINT)).unwrap();
    let err = train::train(&net, &plan, &split, &config(&data_dir, 3, 1e30), &run, true, false).unwrap_err().to_string();
    assert!(err.contains("at epoch 2, step"), "{err}");
    assert_eq!(std::fs::read(run.join(train::CHECKPOINT)).unwrap(), good);
    std::fs::remove_dir_all(&root).unwrap();
}

fn cnnc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn cli_synth_data_train_and_resume() {
    let root = tmp("cli");
    let d = root.join("demo");
    let run = root.join("run");
    let (code, _, err) = cnnc(&["synth-data", d.to_str().unwrap(), "--classes", "4", "--per-class", "6", "--size", "20", "--seed", "1"]);
    assert_eq!(code, 0, "{err}");
    let base = ["train", TINY, "--data", d.to_str().unwrap(), "--image-size", "12", "--batch-size", "4", "--quiet"];
    let (code, out, err) = cnnc(&[&base[..], &["--epochs", "1", "--init", "kaiming-in", "--out", run.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("epoch 1:"), "{out}");
    let plan: cnnc::plan::Plan = serde_json::from_str(&std::fs::read_to_string(run.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan.input_shape, [3, 12, 12], "the plan is made at --image-size");
    assert_eq!(plan.mode, "kaiming-in");
    // The same --out again is refused; --resume continues.
    let (code, _, err) = cnnc(&[&base[..], &["--epochs", "1", "--out", run.to_str().unwrap()]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("already holds a run"), "{err}");
    let (code, out, err) = cnnc(&["train", "--resume", run.to_str().unwrap(), "--epochs", "2", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("epoch 2:"), "{out}");
    let (code, _, err) = cnnc(&[&base[..], &["--device", "cuda", "--out", root.join("cuda").to_str().unwrap()]].concat());
    assert_eq!(code, 1);
    if !cfg!(feature = "cuda") {
        assert!(err.contains("built without CUDA support"), "{err}");
    }
    let (code, _, err) =
        cnnc(&["train", TINY, "--data", root.join("nothing").to_str().unwrap(), "--out", root.join("x").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("nothing") && err.contains("no such directory"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A small net whose epoch takes long enough (18 steps, about 0.1 s each, where progress
/// lines come at most every 0.2 s) to be stopped in the middle.
const SMALL: &str = "network Small\ninput 3x32x32\nconv(3/p1) -> 64, relu\nconv(3/p1) -> 64, relu, maxpool(2)\n\
                     conv(3/p1) -> 128, relu, global_avgpool\nlinear -> 4\n";

#[test]
fn sigterm_checkpoints_mid_epoch_and_the_resumed_run_equals_a_straight_one() {
    use std::io::BufRead;
    let root = tmp("sigterm");
    let d = root.join("data");
    data::synthesize(&d, 4, 48, 32, 2).unwrap();
    let spec = root.join("small.cnn");
    std::fs::write(&spec, SMALL).unwrap();
    let args_lr = |out: &Path, lr: &str| {
        let mut a: Vec<String> = ["train", spec.to_str().unwrap(), "--data", d.to_str().unwrap(), "--epochs", "2", "--batch-size", "8"]
            .map(String::from)
            .to_vec();
        a.extend(["--lr", lr, "--seed", "5", "--out", out.to_str().unwrap()].map(String::from));
        a
    };
    let args = |out: &Path| args_lr(out, "0.01");
    let straight = root.join("straight");
    let (code, _, err) = cnnc(&[&args(&straight).iter().map(String::as_str).collect::<Vec<_>>()[..], &["--quiet"]].concat());
    assert_eq!(code, 0, "{err}");

    // Stopped by SIGTERM once it reports a step inside epoch 1.
    let stopped = root.join("stopped");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args(&stopped))
        .arg("--progress-lines")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("cnnc-progress epoch 1/2 step ") {
            let (step, steps) = rest.split_once('/').unwrap();
            let (step, steps): (usize, usize) = (step.parse().unwrap(), steps.parse().unwrap());
            assert_eq!(steps, 18);
            if step >= 2 && step < steps - 4 {
                let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
                assert!(kill.success());
                break;
            }
        }
    }
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(75), "{seen:?} {rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped by a signal at epoch 1, step")), "{rest:?}");
    let (epochs, steps) = train::checkpoint_progress(&stopped).unwrap();
    assert_eq!(epochs, 0);
    assert!((2..18).contains(&steps), "the checkpoint is mid-epoch: {steps} steps");
    assert!(!stopped.join(train::METRICS).exists() || std::fs::read_to_string(stopped.join(train::METRICS)).unwrap().is_empty());

    // The same command with --continue goes on from the checkpoint.
    let (code, _, err) = cnnc(&[&args(&stopped).iter().map(String::as_str).collect::<Vec<_>>()[..], &["--continue", "--quiet"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(train::checkpoint_progress(&stopped).unwrap(), (2, 0));
    assert_eq!(train::checkpoint_weights(&straight).unwrap(), train::checkpoint_weights(&stopped).unwrap(), "weights and momentum");
    let metrics = |run: &Path| -> Vec<train::EpochMetrics> {
        std::fs::read_to_string(run.join(train::METRICS)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (a, b) = (metrics(&straight), metrics(&stopped));
    assert_eq!(
        a.iter().map(|m| (m.epoch, m.train_loss, m.train_accuracy, m.val_accuracy)).collect::<Vec<_>>(),
        b.iter().map(|m| (m.epoch, m.train_loss, m.train_accuracy, m.val_accuracy)).collect::<Vec<_>>(),
        "the interrupted epoch's sums were kept"
    );

    // --continue on a finished run exits at once and changes nothing; other settings are refused.
    let before = std::fs::read(stopped.join(train::CHECKPOINT)).unwrap();
    let (code, _, err) = cnnc(&[&args(&stopped).iter().map(String::as_str).collect::<Vec<_>>()[..], &["--continue", "--quiet"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already trained 2 epochs of 2"), "{err}");
    assert_eq!(std::fs::read(stopped.join(train::CHECKPOINT)).unwrap(), before);
    let (code, _, err) =
        cnnc(&[&args_lr(&stopped, "0.02").iter().map(String::as_str).collect::<Vec<_>>()[..], &["--continue", "--quiet"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("other settings") && err.contains("lr: 0.01 in the run, 0.02 here"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_run_is_trained_by_one_process_at_a_time() {
    let root = tmp("lock");
    let run = root.join("run");
    let held = train::lock_run(&run).unwrap();
    assert!(train::run_is_locked(&run));
    let err = train::lock_run(&run).unwrap_err().to_string();
    assert!(err.contains("is being trained by another process") && err.contains(&std::process::id().to_string()), "{err}");
    drop(held);
    assert!(!train::run_is_locked(&run));
    train::lock_run(&run).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}
