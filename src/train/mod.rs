//! Training on the candle back end: data, SGD, the epoch loop, checkpoints.
//!
//! In: a [`Network`], a [`Plan`] for it, a data [`data::Split`] and a [`Config`]. Out: a
//! run directory holding `config.json`, `plan.json`, `metrics.jsonl` (one JSON line per
//! epoch: train loss/accuracy, val loss/accuracy, images/s) and `checkpoint.safetensors`
//! (weights `param.<name>`, momentum buffers `momentum.<name>`, and in its metadata the
//! epoch, the config and the plan).
//!
//! Invariants: files are replaced atomically (temporary file + rename), so a crash leaves
//! the last good checkpoint; the checkpoint is written before the epoch's metrics line,
//! and a resumed run drops metrics lines past its checkpoint. All randomness derives from
//! the seed: weights from (seed), the batch order of epoch e from (seed, e); so resuming
//! after epoch e replays exactly what a straight run does (on the CPU, bit for bit).
//! Batches are normalized on a worker thread while the model trains ([`loader`]), in the
//! same order and with the same contents as without it.
//!
//! Interruption ([`stop`]): once a stop is requested (SIGTERM, SIGUSR1, the first SIGINT,
//! after [`stop::on_signals`]), the loop finishes the step it is in, writes a checkpoint
//! that also holds the epoch's progress (steps done, loss and accuracy sums) and returns
//! [`TrainError::Interrupted`]; a resumed run skips the batches already trained and ends
//! bit for bit where a straight run does. Nothing is lost but the step in flight.

pub mod data;
pub mod loader;
pub mod sgd;
pub mod stop;

use crate::nn::{GraphModel, Model, NnError};
use crate::plan::Plan;
use crate::unify::Network;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] NnError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("the loss is {loss} at epoch {epoch}, step {step}: training stopped (lower --lr?); the last good checkpoint is kept")]
    NonFinite { loss: f32, epoch: usize, step: usize },
    #[error("{0}")]
    Config(String),
    /// A stop was requested ([`stop`]); the checkpoint holds everything up to `step` of `epoch`.
    #[error("stopped by a signal at epoch {epoch}, step {step}; checkpoint written, continue with --resume")]
    Interrupted { epoch: usize, step: usize },
    #[error("at epoch {epoch}, step {step}: {source}")]
    Step { epoch: usize, step: usize, source: candle_core::Error },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The network file (see [`crate::load`]).
    #[error(transparent)]
    Load(#[from] crate::Error),
}

/// The training flags that `cnnc train` and the training programs `cnnc emit candle`
/// generates share, with the same defaults (clap; each flattens it into its arguments).
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct Flags {
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Seed of the weights and the batch order
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu or cuda (cuda needs a build with `--features cuda`)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Fraction of each class held out for validation, for a data folder without train/ and val/
    #[arg(long, default_value_t = 0.25)]
    pub val_split: f64,
    /// Use only the first N training images (0: all)
    #[arg(long, default_value_t = 0)]
    pub limit_train: usize,
    /// Use only the first N validation images (0: all)
    #[arg(long, default_value_t = 0)]
    pub limit_val: usize,
    /// Leave out an epoch's last batch when it is smaller than --batch-size (PyTorch's
    /// `drop_last`): a training-mode BatchNorm cannot normalize a batch of one at 1×1 maps
    #[arg(long)]
    pub drop_last: bool,
}

/// Everything that defines a run (saved in the run and its checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The network file (.cnn or .onnx).
    pub model: String,
    /// The data directory.
    pub data: String,
    /// The init mode, or `plan:<file>` when a plan was given.
    pub init: String,
    /// The analysis the plan was made with: `paper` or `map` (runs from before the field: paper).
    #[serde(default = "paper")]
    pub analysis: String,
    pub image_size: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub device: String,
    pub val_split: f64,
    /// Keep only the first N training / validation images (0: all).
    pub limit_train: usize,
    pub limit_val: usize,
    /// `--branch-scale` α of a graph's plan (1, the default, is not written).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub branch_scale: f64,
    /// `--drop-last`: an epoch trains on whole batches only (false is not written).
    #[serde(default, skip_serializing_if = "is_false")]
    pub drop_last: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

impl Config {
    /// A new run's config: the network file, the data folder, the init mode (`forward`,
    /// …, or `plan:<file>`) and analysis, the image size (0: the network's), the epochs,
    /// and the training flags.
    pub fn new(model: &str, data: &Path, init: &str, analysis: &str, image_size: u64, epochs: usize, flags: &Flags) -> Config {
        Config {
            model: model.to_string(),
            data: data.display().to_string(),
            init: init.to_string(),
            analysis: analysis.to_string(),
            image_size,
            epochs,
            batch_size: flags.batch_size,
            lr: flags.lr,
            momentum: flags.momentum,
            weight_decay: flags.weight_decay,
            seed: flags.seed,
            device: flags.device.clone(),
            val_split: flags.val_split,
            limit_train: flags.limit_train,
            limit_val: flags.limit_val,
            branch_scale: 1.0,
            drop_last: flags.drop_last,
        }
    }
}

/// The data of a run: `config.data` read for `target` and split by `config.val_split`
/// and `config.seed`, then cut to `limit_train` / `limit_val`; images that could not be
/// decoded are listed in the split's `skipped` (see [`data::Split::skipped_note`]).
pub fn load_split(config: &Config, target: data::Target) -> Result<data::Split, TrainError> {
    let mut split = data::load(Path::new(&config.data), target, config.val_split, config.seed)?;
    if config.limit_train > 0 {
        split.train.truncate(config.limit_train);
    }
    if config.limit_val > 0 {
        split.val.truncate(config.limit_val);
    }
    Ok(split)
}

/// A model [`fit`] can train: cnnc's own ([`Model`]) or a crate's that `cnnc emit candle`
/// generated. Its parameters are `named_vars`, by PyTorch name, in plan order.
pub trait Trainable {
    /// The logits of a batch.
    fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError>;
    /// The gradients of `loss` (candle's autograd unless the model has a faster way).
    fn backward(&self, loss: &Tensor) -> candle_core::Result<candle_core::backprop::GradStore> {
        loss.backward()
    }
    fn named_vars(&self) -> Vec<(String, candle_core::Var)>;
    fn device(&self) -> &Device;
    /// Training mode (batch statistics) or evaluation mode (running statistics): what a
    /// model with batch normalizations switches; others ignore it.
    fn set_training(&self, _on: bool) {}
    /// State that is not trained by the optimizer but saved in checkpoints (BatchNorm's
    /// running statistics), by name.
    fn buffers(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
}

impl Trainable for GraphModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        Ok(GraphModel::forward(self, x)?)
    }
    fn backward(&self, loss: &Tensor) -> candle_core::Result<candle_core::backprop::GradStore> {
        GraphModel::backward(self, loss)
    }
    fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
        GraphModel::named_vars(self)
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn set_training(&self, on: bool) {
        GraphModel::set_training(self, on)
    }
    fn buffers(&self) -> Vec<(String, candle_core::Var)> {
        GraphModel::buffers(self)
    }
}

impl Trainable for Model {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        Ok(Model::forward(self, x)?)
    }
    fn backward(&self, loss: &Tensor) -> candle_core::Result<candle_core::backprop::GradStore> {
        Model::backward(self, loss)
    }
    fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
        Model::named_vars(self)
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Absent when there is no validation set.
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub images_per_s: f64,
    pub seconds: f64,
}

fn paper() -> String {
    "paper".into()
}

/// What a checkpoint holds besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointMeta {
    format: String,
    /// Epochs completed.
    epoch: usize,
    config: Config,
    plan: Plan,
    /// Progress into epoch `epoch + 1` when the run was interrupted mid-epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<PartialEpoch>,
}

/// The part of an epoch trained before an interruption: its first `steps` batches, and
/// the sums its metrics line needs. Floats are kept as bits: JSON would not give back
/// every last bit, and a resumed run must report what a straight run does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct PartialEpoch {
    steps: usize,
    loss_sum_bits: u64,
    correct: usize,
    seen: usize,
    seconds_bits: u64,
}

/// How [`train`] reports progress on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing.
    Quiet,
    /// A progress bar per epoch (drawn on a terminal only) and a line per epoch.
    Bar,
    /// Machine-readable lines for a parent process (`cnnc experiment`):
    /// `cnnc-progress epoch E/N step S/M`, at most a few a second, and the last step of every epoch.
    Lines,
}

impl From<bool> for Progress {
    fn from(bar: bool) -> Progress {
        if bar {
            Progress::Bar
        } else {
            Progress::Quiet
        }
    }
}

/// The prefix of [`Progress::Lines`].
pub const PROGRESS_PREFIX: &str = "cnnc-progress ";

const CHECKPOINT_FORMAT: &str = "cnnc-checkpoint/1";
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const METRICS: &str = "metrics.jsonl";
/// The mark a run leaves when its loss went NaN or infinite (it holds the message); a run
/// with it is finished: `--continue` does not retry it.
pub const DIVERGED: &str = "DIVERGED";

fn file_err(path: &Path, message: impl std::fmt::Display) -> TrainError {
    TrainError::File { path: path.to_path_buf(), message: message.to_string() }
}

/// The device named by `--device`: `cpu`, or `cuda` (needs the `cuda` feature).
pub fn device(name: &str) -> Result<Device, TrainError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => Device::new_cuda(0).map_err(|e| TrainError::Config(format!("cannot open CUDA device 0: {e}"))),
        "cuda" => Err(TrainError::Config(
            "--device cuda: this cnnc was built without CUDA support; rebuild with `cargo build --release --features cuda`".into(),
        )),
        other => Err(TrainError::Config(format!("unknown device `{other}` (expected cpu or cuda)"))),
    }
}

/// Writes weights and momentum buffers with the epoch, config and plan, atomically.
fn save_checkpoint(path: &Path, model: &(impl Trainable + ?Sized), opt: &sgd::Sgd, meta: &CheckpointMeta) -> Result<(), TrainError> {
    let mut tensors: Vec<(String, Tensor)> =
        model.named_vars().into_iter().map(|(n, v)| (format!("param.{n}"), v.as_tensor().clone())).collect();
    tensors.extend(opt.state().into_iter().map(|(n, t)| (format!("momentum.{n}"), t)));
    tensors.extend(model.buffers().into_iter().map(|(n, v)| (format!("buffer.{n}"), v.as_tensor().clone())));
    let host: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?))).collect::<candle_core::Result<_>>()?;
    let views: Vec<(String, &Tensor)> = host.iter().map(|(n, t)| (n.clone(), t)).collect();
    let metadata = HashMap::from([("cnnc".to_string(), serde_json::to_string(meta).expect("checkpoint metadata serializes"))]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Checkpoint { path: path.into(), message: e.to_string() })?;
    crate::write_atomic(path, &bytes).map_err(|e| file_err(path, e))
}

/// Reads a checkpoint: its metadata and tensors (on `device`).
fn load_checkpoint(path: &Path, device: &Device) -> Result<(CheckpointMeta, HashMap<String, Tensor>), TrainError> {
    let meta = read_meta(path)?;
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| TrainError::Checkpoint { path: path.into(), message: e.to_string() })?;
    Ok((meta, tensors))
}

/// Reads the config of an existing run (from its checkpoint), its plan and its epochs
/// completed (an interrupted epoch does not count).
pub fn run_config(run: &Path) -> Result<(Config, Plan, usize), TrainError> {
    let meta = read_meta(&run.join(CHECKPOINT))?;
    Ok((meta.config, meta.plan, meta.epoch))
}

/// A checkpoint's metadata, from the safetensors header alone (8 bytes of length, then the
/// JSON header): `--status` over a grid of F34 runs reads kilobytes, not the weights.
fn read_meta(path: &Path) -> Result<CheckpointMeta, TrainError> {
    use std::io::Read;
    let bad = |m: String| TrainError::Checkpoint { path: path.into(), message: m };
    let mut file = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(format!("no safetensors header: {e}")))?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(|e| file_err(path, e))?.len();
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return Err(bad(format!("a header of {len} bytes in a file of {size}")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(format!("bad header: {e}")))?;
    let meta_json =
        header.get("__metadata__").and_then(|m| m.get("cnnc")).and_then(|m| m.as_str()).ok_or_else(|| bad("no cnnc metadata".into()))?;
    let meta: CheckpointMeta = serde_json::from_str(meta_json).map_err(|e| bad(format!("bad metadata: {e}")))?;
    if meta.format != CHECKPOINT_FORMAT {
        return Err(bad(format!("format `{}`, expected `{CHECKPOINT_FORMAT}`", meta.format)));
    }
    Ok(meta)
}

/// The fields in which two run configs differ, by name; `epochs` does not count (a run
/// continues to any number of epochs).
pub fn config_differences(a: &Config, b: &Config) -> Vec<String> {
    let (serde_json::Value::Object(mut a), serde_json::Value::Object(mut b)) =
        (serde_json::to_value(a).expect("config serializes"), serde_json::to_value(b).expect("config serializes"))
    else {
        unreachable!("a struct serializes to an object")
    };
    // Fields left out at their default (config.json stays as it was for chains).
    for m in [&mut a, &mut b] {
        m.entry("branch_scale").or_insert(serde_json::json!(1.0));
        m.entry("drop_last").or_insert(serde_json::json!(false));
    }
    a.iter()
        .filter(|(k, v)| k.as_str() != "epochs" && b.get(k.as_str()) != Some(v))
        .map(|(k, v)| format!("{k}: {v} in the run, {} here", b.get(k.as_str()).unwrap_or(&serde_json::Value::Null)))
        .collect()
}

/// `<run>/.lock`: locked (flock) by the process that trains the run, with its pid in it.
pub const LOCK: &str = ".lock";

/// The lock on a run directory; released when dropped (or when the process ends, however).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// Locks `run` (created if missing) for this process, or fails naming the process that
/// holds it: two processes never train one run, whoever started them.
pub fn lock_run(run: &Path) -> Result<RunLock, TrainError> {
    use std::io::Write;
    std::fs::create_dir_all(run).map_err(|e| file_err(run, e))?;
    let path = run.join(LOCK);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).read(true).write(true).truncate(false);
    // The lock file is rewritten with the pid: a link planted at its name is refused,
    // not followed (its target would be truncated).
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let mut file = options.open(&path).map_err(|e| match e.raw_os_error() {
        #[cfg(unix)]
        Some(libc::ELOOP) => file_err(&path, "it is a symbolic link; cnnc does not write through links"),
        _ => file_err(&path, e),
    })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(TrainError::Config(format!(
                "{} is being trained by another process (pid {}); wait for it, or stop it",
                run.display(),
                holder.trim()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(file_err(&path, e)),
    }
    file.set_len(0).and_then(|_| writeln!(file, "{}", std::process::id())).map_err(|e| file_err(&path, e))?;
    Ok(RunLock { _file: file })
}

/// Whether some process holds `run`'s lock now (is training it).
pub fn run_is_locked(run: &Path) -> bool {
    let Ok(file) = std::fs::File::open(run.join(LOCK)) else { return false };
    matches!(file.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// Where a run's checkpoint stands: epochs completed, and the steps of the next epoch
/// already trained (0 unless it was interrupted mid-epoch).
pub fn checkpoint_progress(run: &Path) -> Result<(usize, usize), TrainError> {
    let meta = read_meta(&run.join(CHECKPOINT))?;
    Ok((meta.epoch, meta.partial.map_or(0, |p| p.steps)))
}

/// Cross-entropy (mean over the batch) and the number of correct predictions.
fn loss_and_correct(logits: &Tensor, labels: &Tensor) -> candle_core::Result<(Tensor, usize)> {
    let loss = candle_nn::loss::cross_entropy(logits, labels)?;
    let pred = logits.argmax(1)?;
    let correct = pred.eq(labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
    Ok((loss, correct))
}

fn to_tensors(ds: &data::Dataset, b: loader::Batch, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let n = b.len();
    let x = Tensor::from_vec(b.x, (n, ds.channels, ds.size, ds.size), dev)?;
    let y = Tensor::from_vec(b.y, n, dev)?;
    Ok((x, y))
}

/// Mean loss and accuracy over a data set, in batches.
fn evaluate(
    model: &(impl Trainable + ?Sized),
    ds: &data::Dataset,
    batch: usize,
    prefetch: loader::Prefetch,
) -> Result<(Option<f64>, Option<f64>), TrainError> {
    if ds.is_empty() {
        return Ok((None, None));
    }
    let (mut loss, mut correct) = (0.0, 0);
    let idx: Vec<usize> = (0..ds.len()).collect();
    model.set_training(false);
    let evaluated = loader::for_each_batch(ds, &idx, batch, prefetch, |_, b| -> Result<(), TrainError> {
        let n = b.len();
        let (x, y) = to_tensors(ds, b, model.device())?;
        let logits = model.forward(&x)?.detach();
        let (l, c) = loss_and_correct(&logits.reshape((n, ()))?, &y)?;
        loss += l.to_scalar::<f32>()? as f64 * n as f64;
        correct += c;
        Ok(())
    });
    model.set_training(true);
    evaluated?;
    Ok((Some(loss / ds.len() as f64), Some(correct as f64 / ds.len() as f64)))
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub epochs: Vec<EpochMetrics>,
    pub run: PathBuf,
}

/// Trains `net` from `plan` on `split` and writes the run to `run`. With `resume`, the
/// run's checkpoint is loaded (its weights, momentum and epoch) and training continues
/// to `config.epochs`. `progress` says what to show on stderr ([`Progress`]; `true` is a
/// bar). A requested [`stop`] ends the run early with [`TrainError::Interrupted`], its
/// checkpoint written. Batches are prepared
/// on a worker thread ([`loader::Prefetch::default`]); the loop runs on a rayon worker of
/// a pool of its own ([`crate::nn::on_pool`]: fewer thread wake-ups per op).
pub fn train(
    net: &Network,
    plan: &Plan,
    split: &data::Split,
    config: &Config,
    run: &Path,
    resume: bool,
    progress: impl Into<Progress>,
) -> Result<Summary, TrainError> {
    let progress = progress.into();
    crate::nn::on_pool(|| train_with(net, plan, split, config, run, resume, progress, loader::Prefetch::default()))
}

/// [`train`] with the batches prepared as `prefetch` says, on the calling thread (wrap it
/// in [`crate::nn::on_pool`] as `train` does, for speed); the result depends on neither.
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    net: &Network,
    plan: &Plan,
    split: &data::Split,
    config: &Config,
    run: &Path,
    resume: bool,
    progress: impl Into<Progress>,
    prefetch: loader::Prefetch,
) -> Result<Summary, TrainError> {
    let classes = net.layers.last().map_or(0, |l| l.output.numel()) as usize;
    let dev = device(&config.device)?;
    let model = Model::new(net, plan, config.seed, &dev, DType::F32)?;
    fit(&model, plan, classes, split, config, run, resume, progress, prefetch)
}

/// [`train`] for any graph ([`GraphModel`]: residual additions, concatenations,
/// BatchNorm, …) planned by `plan` (a `cnnc-plan/2` of the graph analysis, or a chain's).
/// BatchNorm's running statistics are saved in every checkpoint (`buffer.<name>`) and
/// restored on resume; validation runs in evaluation mode.
pub fn train_graph(
    graph: &crate::ir::Graph,
    plan: &Plan,
    split: &data::Split,
    config: &Config,
    run: &Path,
    resume: bool,
    progress: impl Into<Progress>,
) -> Result<Summary, TrainError> {
    let progress = progress.into();
    crate::nn::on_pool(|| {
        let classes = graph.nodes.last().map_or(0, |n| n.output.numel()) as usize;
        let dev = device(&config.device)?;
        let model = GraphModel::new(graph, plan, config.seed, &dev, DType::F32)?;
        fit(&model, plan, classes, split, config, run, resume, progress, loader::Prefetch::default())
    })
}

/// The training loop of [`train_with`], for any [`Trainable`] model whose weights were
/// drawn from `plan` (the plan is recorded in the run and must match on resume) and that
/// has `classes` outputs. Everything `train` documents holds: checkpoints every epoch and
/// on a [`stop`], exact resume (mid-epoch included), `metrics.jsonl`, `DIVERGED`.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    model: &(impl Trainable + ?Sized),
    plan: &Plan,
    classes: usize,
    split: &data::Split,
    config: &Config,
    run: &Path,
    resume: bool,
    progress: impl Into<Progress>,
    prefetch: loader::Prefetch,
) -> Result<Summary, TrainError> {
    let progress = progress.into();
    if config.batch_size == 0 {
        return Err(TrainError::Config("--batch-size must be at least 1".into()));
    }
    if split.train.is_empty() {
        return Err(TrainError::Config("the training set is empty".into()));
    }
    let max_label = split.train.labels.iter().chain(&split.val.labels).copied().max().unwrap_or(0) as usize;
    if max_label >= classes {
        return Err(TrainError::Config(format!("the data has {} classes but the network has {classes} outputs", max_label + 1)));
    }
    let dev = model.device().clone();
    let mut opt = sgd::Sgd::new(model.named_vars(), config.lr, config.momentum, config.weight_decay);
    let ckpt = run.join(CHECKPOINT);
    let metrics_path = run.join(METRICS);
    let mut start = 0;
    let mut partial = None;
    let mut history: Vec<EpochMetrics> = Vec::new();
    if resume {
        let (meta, mut tensors) = load_checkpoint(&ckpt, &dev)?;
        let bad = |m: String| TrainError::Checkpoint { path: ckpt.clone(), message: m };
        if meta.plan != *plan {
            return Err(bad("its plan differs from this run's plan".into()));
        }
        for (name, var) in model.named_vars() {
            let t = tensors.remove(&format!("param.{name}")).ok_or_else(|| bad(format!("no weights for `{name}`")))?;
            if t.dims() != var.as_tensor().dims() {
                return Err(bad(format!("`{name}` has shape {:?}, the model {:?}", t.dims(), var.as_tensor().dims())));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        for (name, var) in model.buffers() {
            let t = tensors.remove(&format!("buffer.{name}")).ok_or_else(|| bad(format!("no running statistics `{name}`")))?;
            if t.dims() != var.as_tensor().dims() {
                return Err(bad(format!("`{name}` has shape {:?}, the model {:?}", t.dims(), var.as_tensor().dims())));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        let momentum: Vec<(String, Tensor)> =
            tensors.into_iter().filter_map(|(n, t)| n.strip_prefix("momentum.").map(|n| (n.to_string(), t))).collect();
        opt.load_state(momentum).map_err(bad)?;
        start = meta.epoch;
        partial = meta.partial;
        if let Ok(text) = std::fs::read_to_string(&metrics_path) {
            history = text.lines().filter_map(|l| serde_json::from_str::<EpochMetrics>(l).ok()).filter(|m| m.epoch <= start).collect();
        }
    } else {
        std::fs::create_dir_all(run).map_err(|e| file_err(run, e))?;
        let path = run.join("plan.json");
        crate::write_atomic(&path, plan.to_json().as_bytes()).map_err(|e| file_err(&path, e))?;
        let _ = std::fs::remove_file(&metrics_path);
        let _ = std::fs::remove_file(run.join(DIVERGED));
    }
    let path = run.join("config.json");
    crate::write_atomic(&path, serde_json::to_string_pretty(config).expect("config serializes").as_bytes())
        .map_err(|e| file_err(&path, e))?;
    write_metrics(&metrics_path, &history)?;

    // `--drop-last`: whole batches only (the order is drawn over every image, then cut).
    let usable = if config.drop_last { split.train.len() / config.batch_size * config.batch_size } else { split.train.len() };
    if usable == 0 {
        return Err(TrainError::Config(format!(
            "--drop-last leaves no batch: {} training images, --batch-size {}",
            split.train.len(),
            config.batch_size
        )));
    }
    let steps = usable.div_ceil(config.batch_size);
    for epoch in start + 1..=config.epochs {
        // An interrupted epoch goes on from its first untrained batch, with its sums.
        let resumed = partial.take().unwrap_or_default();
        let t0 = Instant::now();
        let earlier = f64::from_bits(resumed.seconds_bits);
        let bar = epoch_bar(progress, epoch, config.epochs, steps, resumed.steps);
        let mut lines = StepLines::new(progress, epoch, config.epochs, steps);
        let mut order = data::epoch_order(split.train.len(), config.seed, epoch);
        order.truncate(usable);
        let (mut loss_sum, mut correct, mut seen) = (f64::from_bits(resumed.loss_sum_bits), resumed.correct, resumed.seen);
        let mut done = resumed.steps;
        let skip = (resumed.steps * config.batch_size).min(order.len());
        let trained = loader::for_each_batch(&split.train, &order[skip..], config.batch_size, prefetch, |_, b| {
            if stop::requested() {
                return Err(TrainError::Interrupted { epoch, step: done });
            }
            let step = done + 1;
            let at = |source| TrainError::Step { epoch, step, source };
            let n = b.len();
            let (x, y) = to_tensors(&split.train, b, &dev).map_err(at)?;
            let logits = model.forward(&x)?;
            let (loss, c) = loss_and_correct(&logits.reshape((n, ())).map_err(at)?, &y).map_err(at)?;
            let l = loss.to_scalar::<f32>().map_err(at)?;
            if !l.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite { loss: l, epoch, step });
            }
            let grads = model.backward(&loss).map_err(at)?;
            opt.step(&grads).map_err(at)?;
            loss_sum += l as f64 * n as f64;
            correct += c;
            seen += n;
            done = step;
            bar.set_message(format!(
                "loss {:.4} {:.0} img/s",
                loss_sum / seen as f64,
                seen as f64 / (earlier + t0.elapsed().as_secs_f64())
            ));
            bar.inc(1);
            lines.step(step);
            Ok(())
        });
        if let Err(TrainError::Interrupted { epoch, step }) = trained {
            bar.abandon();
            let seconds_bits = (earlier + t0.elapsed().as_secs_f64()).to_bits();
            let partial = PartialEpoch { steps: step, loss_sum_bits: loss_sum.to_bits(), correct, seen, seconds_bits };
            let meta = CheckpointMeta {
                format: CHECKPOINT_FORMAT.into(),
                epoch: epoch - 1,
                config: config.clone(),
                plan: plan.clone(),
                partial: (step > 0).then_some(partial),
            };
            save_checkpoint(&ckpt, model, &opt, &meta)?;
            return Err(TrainError::Interrupted { epoch, step });
        }
        if let Err(e @ TrainError::NonFinite { .. }) = &trained {
            let path = run.join(DIVERGED);
            crate::write_atomic(&path, format!("{e}\n").as_bytes()).map_err(|e| file_err(&path, e))?;
        }
        trained?;
        let train_seconds = earlier + t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let (val_loss, val_accuracy) = evaluate(model, &split.val, config.batch_size, prefetch)?;
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_loss,
            val_accuracy,
            images_per_s: seen as f64 / train_seconds,
            seconds: earlier + t0.elapsed().as_secs_f64(),
        };
        let meta = CheckpointMeta { format: CHECKPOINT_FORMAT.into(), epoch, config: config.clone(), plan: plan.clone(), partial: None };
        save_checkpoint(&ckpt, model, &opt, &meta)?;
        history.push(m.clone());
        write_metrics(&metrics_path, &history)?;
        if progress == Progress::Bar {
            eprintln!(
                "epoch {epoch}/{}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}% | {:.0} img/s, {:.1} s",
                config.epochs,
                m.train_loss,
                100.0 * m.train_accuracy,
                m.val_loss.unwrap_or(f64::NAN),
                100.0 * m.val_accuracy.unwrap_or(f64::NAN),
                m.images_per_s,
                m.seconds
            );
        }
        // A stop that came during the evaluation: the epoch is saved whole, nothing to redo.
        if stop::requested() && epoch < config.epochs {
            return Err(TrainError::Interrupted { epoch: epoch + 1, step: 0 });
        }
    }
    Ok(Summary { epochs: history, run: run.to_path_buf() })
}

/// The bar of one epoch (hidden unless `progress` is [`Progress::Bar`]), at `done` of `steps`.
fn epoch_bar(progress: Progress, epoch: usize, epochs: usize, steps: usize, done: usize) -> indicatif::ProgressBar {
    if progress != Progress::Bar {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(steps as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    b.set_prefix(format!("{epoch}/{epochs}"));
    b.set_position(done as u64);
    b
}

/// [`Progress::Lines`]: a line at most every 0.2 s, and at the last step of the epoch.
struct StepLines {
    on: bool,
    epoch: usize,
    epochs: usize,
    steps: usize,
    last: Option<Instant>,
}

impl StepLines {
    fn new(progress: Progress, epoch: usize, epochs: usize, steps: usize) -> StepLines {
        StepLines { on: progress == Progress::Lines, epoch, epochs, steps, last: None }
    }

    fn step(&mut self, step: usize) {
        if !self.on || (step < self.steps && self.last.is_some_and(|t| t.elapsed().as_secs_f64() < 0.2)) {
            return;
        }
        self.last = Some(Instant::now());
        eprintln!("{PROGRESS_PREFIX}epoch {}/{} step {step}/{}", self.epoch, self.epochs, self.steps);
    }
}

fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<(), TrainError> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m).expect("metrics serialize"));
        text.push('\n');
    }
    crate::write_atomic(path, text.as_bytes()).map_err(|e| file_err(path, e))
}

/// The weights of a run's checkpoint, by parameter name (for tests and tools).
pub fn checkpoint_weights(run: &Path) -> Result<Vec<(String, Vec<f32>)>, TrainError> {
    let (_, tensors) = load_checkpoint(&run.join(CHECKPOINT), &Device::Cpu)?;
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)))
        .collect::<candle_core::Result<_>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
