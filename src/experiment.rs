//! Experiments: every (init, seed) of a grid trained with `cnnc train`, then the paper's
//! Table 4 for this data.
//!
//! In: an [`ExperimentConfig`] (YAML). Out: one run directory per (init, seed) under
//! `out`, `results.md` (per init: runs, diverged runs, max / Q1 / median / Q3 of the best
//! validation accuracy, quartiles as NumPy's default linear interpolation) and
//! `curves.svg` (mean validation accuracy per epoch, per init).
//!
//! Each run is a `cnnc train` process, so that a crash stays in its run: a finished run
//! (its `metrics.jsonl` has every epoch) is skipped, a run with a checkpoint is resumed
//! with `--resume`, a run that stopped on a NaN/infinite loss is marked `DIVERGED` and
//! counted, not retried.

use crate::plot::{line_chart, Series};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// A .cnn or .onnx network.
    pub model: String,
    /// Data: IDX folder, train/ + val/ class folders, or class folders.
    pub data: String,
    pub image_size: Option<u64>,
    pub epochs: usize,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    #[serde(default = "defaults::momentum")]
    pub momentum: f64,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Init modes: xavier, kaiming-in, kaiming-out, forward, backward.
    pub inits: Vec<String>,
    pub seeds: Vec<u64>,
    #[serde(default = "defaults::device")]
    pub device: String,
    #[serde(default = "defaults::val_split")]
    pub val_split: f64,
    #[serde(default)]
    pub limit_train: usize,
    #[serde(default)]
    pub limit_val: usize,
    /// Where the runs and results go (relative to the config file's folder).
    pub out: String,
}

mod defaults {
    pub fn batch_size() -> usize {
        64
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn momentum() -> f64 {
        0.9
    }
    pub fn weight_decay() -> f64 {
        1e-4
    }
    pub fn device() -> String {
        "cpu".into()
    }
    pub fn val_split() -> f64 {
        0.25
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("run {run}: {message}")]
    Run { run: String, message: String },
    #[error("{0}")]
    Io(String),
}

/// The quantile `q` ∈ [0, 1] of `values` by linear interpolation between order statistics,
/// as NumPy's default (`numpy.quantile(..., method="linear")`).
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// What one run ended as.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub init: String,
    pub seed: u64,
    /// Validation accuracy per epoch (fraction).
    pub val_accuracy: Vec<f64>,
    pub diverged: bool,
}

impl RunResult {
    pub fn best(&self) -> Option<f64> {
        self.val_accuracy.iter().cloned().fold(None, |m, v| Some(m.map_or(v, |m: f64| m.max(v))))
    }
}

pub fn load_config(path: &Path) -> Result<ExperimentConfig, ExperimentError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ExperimentError::Config { path: path.display().to_string(), message: e.to_string() })?;
    let cfg: ExperimentConfig =
        serde_norway::from_str(&text).map_err(|e| ExperimentError::Config { path: path.display().to_string(), message: e.to_string() })?;
    let bad = |message: String| ExperimentError::Config { path: path.display().to_string(), message };
    if cfg.inits.is_empty() || cfg.seeds.is_empty() {
        return Err(bad("`inits` and `seeds` must each list at least one value".into()));
    }
    for init in &cfg.inits {
        if init.parse::<crate::analyze::Mode>().is_err() {
            return Err(bad(format!("unknown init `{init}` (expected xavier, kaiming-in, kaiming-out, forward or backward)")));
        }
    }
    if cfg.epochs == 0 {
        return Err(bad("`epochs` must be at least 1".into()));
    }
    Ok(cfg)
}

fn read_val_accuracy(metrics: &Path) -> Vec<f64> {
    let Ok(text) = std::fs::read_to_string(metrics) else { return Vec::new() };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v.get("val_accuracy").and_then(|a| a.as_f64()).unwrap_or(f64::NAN))
        .collect()
}

/// Resolves a config path relative to the config file's folder.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Runs (or resumes) the whole grid with the `cnnc` binary at `exe`, then writes the results.
pub fn run(config_path: &Path, exe: &Path, quiet: bool) -> Result<Vec<RunResult>, ExperimentError> {
    let cfg = load_config(config_path)?;
    let base = config_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    let out = resolve(&base, &cfg.out);
    std::fs::create_dir_all(&out).map_err(|e| ExperimentError::Io(format!("{}: {e}", out.display())))?;
    let mut results = Vec::new();
    for init in &cfg.inits {
        for &seed in &cfg.seeds {
            let name = format!("{init}-s{seed}");
            let dir = out.join(&name);
            let metrics = dir.join(crate::train::METRICS);
            let diverged_mark = dir.join("DIVERGED");
            let done = read_val_accuracy(&metrics).len();
            let diverged = diverged_mark.exists();
            if !diverged && done < cfg.epochs {
                let mut cmd = Command::new(exe);
                cmd.arg("train");
                if dir.join(crate::train::CHECKPOINT).exists() {
                    cmd.arg("--resume").arg(&dir).arg("--epochs").arg(cfg.epochs.to_string());
                } else {
                    cmd.arg(resolve(&base, &cfg.model))
                        .arg("--data")
                        .arg(resolve(&base, &cfg.data))
                        .arg("--init")
                        .arg(init)
                        .arg("--epochs")
                        .arg(cfg.epochs.to_string())
                        .arg("--batch-size")
                        .arg(cfg.batch_size.to_string())
                        .arg("--lr")
                        .arg(cfg.lr.to_string())
                        .arg("--momentum")
                        .arg(cfg.momentum.to_string())
                        .arg("--weight-decay")
                        .arg(cfg.weight_decay.to_string())
                        .arg("--seed")
                        .arg(seed.to_string())
                        .arg("--device")
                        .arg(&cfg.device)
                        .arg("--val-split")
                        .arg(cfg.val_split.to_string())
                        .arg("--out")
                        .arg(&dir);
                    if let Some(s) = cfg.image_size {
                        cmd.arg("--image-size").arg(s.to_string());
                    }
                    if cfg.limit_train > 0 {
                        cmd.arg("--limit-train").arg(cfg.limit_train.to_string());
                    }
                    if cfg.limit_val > 0 {
                        cmd.arg("--limit-val").arg(cfg.limit_val.to_string());
                    }
                }
                cmd.arg("--quiet");
                if !quiet {
                    eprintln!("experiment: {name} ({done}/{} epochs done)", cfg.epochs);
                }
                let output = cmd
                    .output()
                    .map_err(|e| ExperimentError::Run { run: name.clone(), message: format!("cannot start {}: {e}", exe.display()) })?;
                if !output.status.success() {
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    if stderr.contains("NaN") || stderr.contains("infinite") {
                        std::fs::create_dir_all(&dir).ok();
                        crate::write_atomic(&diverged_mark, stderr.as_bytes()).map_err(|e| ExperimentError::Io(e.to_string()))?;
                    } else {
                        return Err(ExperimentError::Run { run: name, message: stderr.trim().to_string() });
                    }
                }
            }
            results.push(RunResult {
                init: init.clone(),
                seed,
                val_accuracy: read_val_accuracy(&metrics),
                diverged: diverged_mark.exists(),
            });
        }
    }
    let md = results_markdown(&cfg, &results, config_path);
    crate::write_atomic(&out.join("results.md"), md.as_bytes()).map_err(|e| ExperimentError::Io(e.to_string()))?;
    let svg = curves_svg(&cfg, &results).map_err(ExperimentError::Io)?;
    crate::write_atomic(&out.join("curves.svg"), svg.as_bytes()).map_err(|e| ExperimentError::Io(e.to_string()))?;
    Ok(results)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.2}", 100.0 * v))
}

/// `results.md`: the paper's Table 4 layout for this experiment.
pub fn results_markdown(cfg: &ExperimentConfig, results: &[RunResult], config_path: &Path) -> String {
    let mut s = format!(
        "# Results: {}\n\nMade by `cnnc experiment {}`. {} on `{}`, {} epochs, batch {}, lr {}, momentum {}, weight decay {}, seeds {:?}{}.\n\n",
        cfg.model,
        config_path.display(),
        cfg.model,
        cfg.data,
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.momentum,
        cfg.weight_decay,
        cfg.seeds,
        cfg.image_size.map_or(String::new(), |s| format!(", images {s}×{s}"))
    );
    s.push_str("Best validation accuracy (%) per run, over seeds (quartiles: NumPy's linear interpolation):\n\n");
    s.push_str("| init | runs | diverged | max | Q1 | median | Q3 |\n|---|---|---|---|---|---|---|\n");
    for init in &cfg.inits {
        let runs: Vec<&RunResult> = results.iter().filter(|r| &r.init == init).collect();
        let best: Vec<f64> = runs.iter().filter(|r| !r.diverged).filter_map(|r| r.best()).collect();
        s.push_str(&format!(
            "| {init} | {} | {} | {} | {} | {} | {} |\n",
            runs.len(),
            runs.iter().filter(|r| r.diverged).count(),
            pct(best.iter().cloned().reduce(f64::max)),
            pct(quantile(&best, 0.25)),
            pct(quantile(&best, 0.5)),
            pct(quantile(&best, 0.75))
        ));
    }
    s.push_str("\nLearning curves (mean validation accuracy per epoch): `curves.svg`.\n\nPer run:\n\n| run | validation accuracy per epoch (%) |\n|---|---|\n");
    for r in results {
        let accs: Vec<String> = r.val_accuracy.iter().map(|&a| format!("{:.2}", 100.0 * a)).collect();
        s.push_str(&format!("| {}-s{}{} | {} |\n", r.init, r.seed, if r.diverged { " (diverged)" } else { "" }, accs.join(", ")));
    }
    s
}

fn curves_svg(cfg: &ExperimentConfig, results: &[RunResult]) -> Result<String, String> {
    let series: Vec<Series> = cfg
        .inits
        .iter()
        .map(|init| {
            let runs: Vec<&RunResult> = results.iter().filter(|r| &r.init == init && !r.diverged).collect();
            let epochs = runs.iter().map(|r| r.val_accuracy.len()).max().unwrap_or(0);
            let points = (0..epochs)
                .filter_map(|e| {
                    let v: Vec<f64> = runs.iter().filter_map(|r| r.val_accuracy.get(e).copied()).filter(|a| a.is_finite()).collect();
                    (!v.is_empty()).then(|| ((e + 1) as f64, 100.0 * v.iter().sum::<f64>() / v.len() as f64))
                })
                .collect();
            Series { name: init.clone(), points }
        })
        .collect();
    line_chart(&format!("{}: validation accuracy", cfg.model), "epoch", "accuracy (%)", &series, false)
}
