//! Experiments: every (init, seed) of a grid trained with `cnnc train`, then the paper's
//! Table 4 for this data.
//!
//! In: an [`ExperimentConfig`] (YAML). Out: one run directory per (init, seed) under
//! `out`, `results.md` (per init: runs, diverged runs, max / Q1 / median / Q3 of the best
//! validation accuracy, quartiles as NumPy's default linear interpolation) and
//! `curves.svg` (mean validation accuracy per epoch, per init).
//!
//! Every run is one `cnnc train --continue` process with its own directory, so that a
//! crash stays in its run and any runner can take any run: a finished run exits at once,
//! a run with a checkpoint resumes, a run that stopped on a NaN/infinite loss is marked
//! `DIVERGED` (by `cnnc train`) and counted, not retried. Runners: [`local`] (one after
//! another, or `--jobs N` at a time) and [`slurm`] (a job array, one task per run).
//! `results.md` and `curves.svg` are written by [`collect`] only, atomically.
//!
//! `<out>/experiment.json` records the settings that make the runs what they are (all
//! but `epochs`, `inits`, `seeds` and `slurm`); a config with other settings is refused
//! that directory before anything in it is touched.

pub mod local;
pub mod slurm;

use crate::analyze::Mode;
use crate::plot::{line_chart, Series};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

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
    /// The analysis of the forward and backward plans: `paper` or `map`.
    #[serde(default = "defaults::analysis")]
    pub analysis: String,
    /// Init modes: xavier, kaiming-in, kaiming-out, forward, backward; `map-forward`,
    /// `paper-backward`… name the analysis of one entry (the others take `analysis`);
    /// `forward@0`… the residual branch scale α of its plan (graphs; 1 without it).
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
    /// Every run trains on whole batches only (`cnnc train --drop-last`).
    #[serde(default)]
    pub drop_last: bool,
    /// Where the runs and results go (relative to the config file's folder).
    pub out: String,
    /// Options of the Slurm job array (`--slurm`); flags override them.
    #[serde(default)]
    pub slurm: slurm::SlurmConfig,
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
    pub fn analysis() -> String {
        "paper".into()
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
    /// Runs that failed; the others ran, and the results hold what there is.
    #[error("{} of the runs failed: {}", .0.len(), .0.join("; "))]
    Failed(Vec<String>),
    /// A signal stopped the grid; every run it had started is checkpointed.
    #[error("stopped by a signal; the runs in progress are checkpointed, rerun the same command to continue")]
    Interrupted,
    #[error("{0}")]
    Slurm(String),
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
    /// The init as the config writes it (`forward`, `map-forward`).
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

/// One run of the grid: what `cnnc train` is told, and where it writes.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    /// The init as the config writes it; with the seed, the run's name.
    pub init: String,
    /// The init mode's name (`forward`, `kaiming-in`).
    pub mode: String,
    /// `paper` or `map`.
    pub analysis: String,
    /// `--branch-scale` (1: the default, not passed).
    pub branch_scale: f64,
    pub seed: u64,
    /// The run directory, `<out>/<init>-s<seed>`.
    pub dir: PathBuf,
}

impl RunSpec {
    pub fn name(&self) -> String {
        format!("{}-s{}", self.init, self.seed)
    }
}

/// A loaded experiment: its config, where it was read from, and its paths resolved.
#[derive(Clone, Debug)]
pub struct Experiment {
    pub config: ExperimentConfig,
    pub config_path: PathBuf,
    /// The network, the data and the out directory, absolute (run configs and batch
    /// scripts must not depend on the directory they were started from).
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Every run, init by init, seed by seed: the array task of a run is its index.
    pub runs: Vec<RunSpec>,
}

const ANALYSES: [&str; 2] = ["paper", "map"];

/// Splits an init entry into its mode, analysis and branch scale: `map-forward` →
/// (forward, map, 1); `forward@0` → (forward, `default`, 0).
fn parse_init(entry: &str, default: &str) -> Result<(Mode, String, f64), String> {
    let (entry_mode, branch_scale) = match entry.split_once('@') {
        Some((m, a)) => {
            let a: f64 = a.parse().map_err(|_| format!("init `{entry}`: `{a}` after @ is not a branch scale (a number ≥ 0)"))?;
            if !(a.is_finite() && a >= 0.0) {
                return Err(format!("init `{entry}`: the branch scale must be a finite number ≥ 0"));
            }
            (m, a)
        }
        None => (entry, 1.0),
    };
    let (analysis, mode) = match entry_mode.split_once('-') {
        Some((a, m)) if ANALYSES.contains(&a) => (a, m),
        _ => (default, entry_mode),
    };
    let mode = mode.parse::<Mode>().map_err(|_| {
        format!("unknown init `{entry}` (expected xavier, kaiming-in, kaiming-out, forward or backward, optionally as map-forward or paper-backward, and @α for a branch scale)")
    })?;
    Ok((mode, analysis.to_string(), branch_scale))
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
    if !ANALYSES.contains(&cfg.analysis.as_str()) {
        return Err(bad(format!("unknown analysis `{}` (expected paper or map)", cfg.analysis)));
    }
    let mut seen = Vec::new();
    for init in &cfg.inits {
        let (mode, analysis, branch_scale) = parse_init(init, &cfg.analysis).map_err(&bad)?;
        // Xavier and Kaiming do not depend on the analysis: one run each.
        let key =
            (mode.name(), if matches!(mode, Mode::Forward | Mode::Backward) { analysis } else { String::new() }, branch_scale.to_bits());
        if seen.contains(&key) {
            return Err(bad(format!("init `{init}` is listed twice (the analysis changes forward and backward plans only)")));
        }
        seen.push(key);
    }
    let mut seeds = cfg.seeds.clone();
    seeds.sort_unstable();
    seeds.dedup();
    if seeds.len() != cfg.seeds.len() {
        return Err(bad("`seeds` lists a seed twice".into()));
    }
    if cfg.epochs == 0 {
        return Err(bad("`epochs` must be at least 1".into()));
    }
    if cfg.batch_size == 0 {
        return Err(bad("`batch_size` must be at least 1".into()));
    }
    cfg.slurm.check().map_err(bad)?;
    Ok(cfg)
}

/// `p` relative to `base` when relative, made absolute (canonical when it exists).
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    let joined = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    std::fs::canonicalize(&joined).unwrap_or_else(|_| std::path::absolute(&joined).unwrap_or(joined))
}

impl Experiment {
    /// Reads and checks the config at `path`, and lists its runs.
    pub fn load(path: &Path) -> Result<Experiment, ExperimentError> {
        let config = load_config(path)?;
        let base = match path.parent() {
            Some(b) if !b.as_os_str().is_empty() => b.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let model = resolve(&base, &config.model);
        let data = resolve(&base, &config.data);
        let out = resolve(&base, &config.out);
        let mut runs = Vec::new();
        for init in &config.inits {
            let (mode, analysis, branch_scale) = parse_init(init, &config.analysis).expect("checked by load_config");
            for &seed in &config.seeds {
                let dir = out.join(format!("{init}-s{seed}"));
                runs.push(RunSpec {
                    init: init.clone(),
                    mode: mode.name().to_string(),
                    analysis: analysis.clone(),
                    branch_scale,
                    seed,
                    dir,
                });
            }
        }
        Ok(Experiment { config, config_path: path.to_path_buf(), model, data, out, runs })
    }

    /// The `cnnc train` arguments every run shares (after `train`), grouped as a person
    /// would write them: the network, then one flag and its value per group.
    pub fn common_args(&self) -> Vec<Vec<OsString>> {
        let c = &self.config;
        let mut a: Vec<Vec<OsString>> = vec![vec![self.model.clone().into()], vec!["--data".into(), self.data.clone().into()]];
        let mut flag = |name: &str, value: String| a.push(vec![format!("--{name}").into(), value.into()]);
        flag("epochs", c.epochs.to_string());
        flag("batch-size", c.batch_size.to_string());
        flag("lr", c.lr.to_string());
        flag("momentum", c.momentum.to_string());
        flag("weight-decay", c.weight_decay.to_string());
        flag("device", c.device.clone());
        flag("val-split", c.val_split.to_string());
        if let Some(s) = c.image_size {
            flag("image-size", s.to_string());
        }
        if c.limit_train > 0 {
            flag("limit-train", c.limit_train.to_string());
        }
        if c.limit_val > 0 {
            flag("limit-val", c.limit_val.to_string());
        }
        if c.drop_last {
            a.push(vec!["--drop-last".into()]);
        }
        a.push(vec!["--continue".into()]);
        a
    }

    /// The arguments that make one run of the grid.
    pub fn run_args(run: &RunSpec) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--init".into(), run.mode.clone().into(), "--analysis".into(), run.analysis.clone().into()];
        if run.branch_scale != 1.0 {
            a.extend(["--branch-scale".into(), run.branch_scale.to_string().into()]);
        }
        a.extend(["--seed".into(), run.seed.to_string().into(), "--out".into(), run.dir.clone().into()]);
        a
    }

    /// The full `cnnc train …` argument list of `run`.
    pub fn train_args(&self, run: &RunSpec) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["train".into()];
        a.extend(self.common_args().into_iter().flatten());
        a.extend(Self::run_args(run));
        a
    }

    /// What makes the runs what they are: every setting but `epochs`, `inits`, `seeds`
    /// and `slurm` (those may change and the runs already made stay valid).
    fn settings(&self) -> serde_json::Value {
        let c = &self.config;
        let mut settings = serde_json::json!({
            "model": self.model, "data": self.data, "image_size": c.image_size,
            "batch_size": c.batch_size, "lr": c.lr, "momentum": c.momentum, "weight_decay": c.weight_decay,
            "analysis": c.analysis, "device": c.device, "val_split": c.val_split,
            "limit_train": c.limit_train, "limit_val": c.limit_val,
        });
        // Written only when set, so that the directories of earlier experiments still match.
        if c.drop_last {
            settings["drop_last"] = true.into();
        }
        settings
    }

    /// Makes the out directory this experiment's: records its settings in
    /// `experiment.json` on first use, and refuses a directory whose recorded settings
    /// differ (naming them), before anything in it is written.
    pub fn claim_out(&self) -> Result<(), ExperimentError> {
        self.check_out(true)
    }

    /// Refuses an out directory that another experiment recorded as its own (what
    /// [`Experiment::claim_out`] does, without writing anything); for reading commands.
    pub fn check_out_is_ours(&self) -> Result<(), ExperimentError> {
        self.check_out(false)
    }

    fn check_out(&self, claim: bool) -> Result<(), ExperimentError> {
        let path = self.out.join(MANIFEST);
        let here = self.settings();
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !claim => Ok(()),
            Ok(text) => {
                let there: Manifest = serde_json::from_str(&text).map_err(|e| {
                    ExperimentError::Io(format!(
                        "{}: not an experiment manifest ({e}); move it away to reuse the directory",
                        path.display()
                    ))
                })?;
                let differ = differences(&there.settings, &here);
                if !differ.is_empty() {
                    return Err(ExperimentError::Config {
                        path: self.config_path.display().to_string(),
                        message: format!(
                            "out directory {} belongs to another experiment ({}, recorded by {}); nothing was changed: set another `out`",
                            self.out.display(),
                            differ.join("; "),
                            there.config
                        ),
                    });
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.out).map_err(|e| ExperimentError::Io(format!("{}: {e}", self.out.display())))?;
                let m = Manifest { format: MANIFEST_FORMAT.into(), config: self.config_path.display().to_string(), settings: here };
                crate::write_atomic(&path, (serde_json::to_string_pretty(&m).expect("manifest serializes") + "\n").as_bytes())
                    .map_err(|e| ExperimentError::Io(format!("{}: {e}", path.display())))
            }
            Err(e) => Err(ExperimentError::Io(format!("{}: {e}", path.display()))),
        }
    }
}

/// `<out>/experiment.json`.
pub const MANIFEST: &str = "experiment.json";
const MANIFEST_FORMAT: &str = "cnnc-experiment/1";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    /// The config that made the directory (for the error message).
    config: String,
    settings: serde_json::Value,
}

/// The keys of two JSON objects whose values differ, as `key: there, here`.
fn differences(there: &serde_json::Value, here: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (there.as_object().unwrap_or(&empty), here.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let null = serde_json::Value::Null;
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} there, {} here", a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null)))
        .collect()
}

/// A run directory's marks beside `metrics.jsonl`: diverged (left by `cnnc train`), and
/// failed otherwise (left by the runner, with the error; removed when the run starts again).
pub use crate::train::DIVERGED;
pub const FAILED: &str = "FAILED";

/// Validation accuracy per epoch from a run's `metrics.jsonl` (empty when absent).
pub fn read_val_accuracy(metrics: &Path) -> Vec<f64> {
    let Ok(text) = std::fs::read_to_string(metrics) else { return Vec::new() };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v.get("val_accuracy").and_then(|a| a.as_f64()).unwrap_or(f64::NAN))
        .collect()
}

/// Where a run stands, from its directory.
pub fn result_of(run: &RunSpec) -> RunResult {
    RunResult {
        init: run.init.clone(),
        seed: run.seed,
        val_accuracy: read_val_accuracy(&run.dir.join(crate::train::METRICS)),
        diverged: run.dir.join(DIVERGED).exists(),
    }
}

/// Whether `run` needs training: fewer epochs than the config's, and not diverged.
pub fn needs_training(exp: &Experiment, run: &RunSpec) -> bool {
    let r = result_of(run);
    !r.diverged && r.val_accuracy.len() < exp.config.epochs
}

/// Runs (or resumes) the whole grid on this machine ([`local::run`]), then [`collect`]s.
pub fn run(config_path: &Path, exe: &Path, opts: &local::Options) -> Result<Vec<RunResult>, ExperimentError> {
    let exp = Experiment::load(config_path)?;
    exp.claim_out()?;
    let trained = local::run(&exp, exe, opts);
    if matches!(trained, Err(ExperimentError::Interrupted)) {
        return Err(ExperimentError::Interrupted);
    }
    let results = collect(&exp)?;
    trained.map(|_| results)
}

/// Tabulates the runs as they are: `results.md` and `curves.svg`, each written atomically.
pub fn collect(exp: &Experiment) -> Result<Vec<RunResult>, ExperimentError> {
    let results: Vec<RunResult> = exp.runs.iter().map(result_of).collect();
    std::fs::create_dir_all(&exp.out).map_err(|e| ExperimentError::Io(format!("{}: {e}", exp.out.display())))?;
    let md = results_markdown(&exp.config, &results, &exp.config_path);
    let write = |path: std::path::PathBuf, bytes: &[u8]| {
        crate::write_atomic(&path, bytes).map_err(|e| ExperimentError::Io(format!("cannot write {}: {e}", path.display())))
    };
    write(exp.out.join("results.md"), md.as_bytes())?;
    let svg = curves_svg(&exp.config, &results).map_err(ExperimentError::Io)?;
    write(exp.out.join("curves.svg"), svg.as_bytes())?;
    Ok(results)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.2}", 100.0 * v))
}

/// `results.md`: the paper's Table 4 layout for this experiment.
pub fn results_markdown(cfg: &ExperimentConfig, results: &[RunResult], config_path: &Path) -> String {
    let mut s = format!(
        "# Results: {}\n\nMade by `cnnc experiment {}`. {} on `{}`, {} epochs, batch {}, lr {}, momentum {}, weight decay {}, {} analysis, seeds {:?}{}.\n\n",
        cfg.model,
        config_path.display(),
        cfg.model,
        cfg.data,
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.momentum,
        cfg.weight_decay,
        cfg.analysis,
        cfg.seeds,
        cfg.image_size.map_or(String::new(), |s| format!(", images {s}×{s}"))
    );
    if cfg.limit_train > 0 || cfg.limit_val > 0 {
        let n = |k: usize| if k > 0 { format!("the first {k}") } else { "all".into() };
        s.insert_str(s.len() - 3, &format!(", {} training and {} validation images", n(cfg.limit_train), n(cfg.limit_val)));
    }
    s.push_str(
        "Best validation accuracy (%) per run, over seeds (quartiles: NumPy's linear interpolation), of the runs that finished:\n\n",
    );
    s.push_str("| init | runs | diverged | max | Q1 | median | Q3 |\n|---|---|---|---|---|---|---|\n");
    // A run counts once it has all its epochs or diverged; one not started, or stopped
    // part way, is named below the table, not counted in it.
    let finished = |r: &RunResult| r.diverged || r.val_accuracy.len() >= cfg.epochs;
    for init in &cfg.inits {
        let runs: Vec<&RunResult> = results.iter().filter(|r| &r.init == init && finished(r)).collect();
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
    let pending: Vec<String> = results
        .iter()
        .filter(|r| !finished(r))
        .map(|r| match r.val_accuracy.len() {
            0 => format!("{}-s{} (not started)", r.init, r.seed),
            n => format!("{}-s{} ({n} of {} epochs)", r.init, r.seed, cfg.epochs),
        })
        .collect();
    if !pending.is_empty() {
        s.push_str(&format!("\nNot in the table yet: {}.\n", pending.join(", ")));
    }
    s.push_str("\nLearning curves (mean validation accuracy per epoch): `curves.svg`.\n\nPer run:\n\n| run | validation accuracy per epoch (%) |\n|---|---|\n");
    for r in results {
        let accs: Vec<String> = r.val_accuracy.iter().map(|&a| format!("{:.2}", 100.0 * a)).collect();
        let accs = if accs.is_empty() && !r.diverged { "not started".to_string() } else { accs.join(", ") };
        s.push_str(&format!("| {}-s{}{} | {} |\n", r.init, r.seed, if r.diverged { " (diverged)" } else { "" }, accs));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_count_finished_runs_only_and_name_the_others() {
        let cfg: ExperimentConfig = serde_norway::from_str(
            "model: m.cnn\ndata: d\nepochs: 3\nbatch_size: 4\nlr: 0.1\ninits: [forward]\nseeds: [0, 1, 2, 3]\nout: o\n",
        )
        .unwrap();
        let run = |seed, acc: &[f64], diverged| RunResult { init: "forward".into(), seed, val_accuracy: acc.to_vec(), diverged };
        let results = [run(0, &[0.5, 0.6, 0.7], false), run(1, &[0.4], false), run(2, &[], false), run(3, &[0.1], true)];
        let md = results_markdown(&cfg, &results, Path::new("e.yaml"));
        assert!(md.contains("| forward | 2 | 1 | 70.00 | 70.00 | 70.00 | 70.00 |"), "{md}");
        assert!(md.contains("Not in the table yet: forward-s1 (1 of 3 epochs), forward-s2 (not started)."), "{md}");
        assert!(md.contains("| forward-s2 | not started |"), "{md}");
    }
}
