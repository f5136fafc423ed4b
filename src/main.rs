//! The `cnnc` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use cnnc::analyze::{self, Mode, Options};
use cnnc::report;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "cnnc", version, about = "Compiles a CNN description into a weight-initialization plan (Henmi, Hirohashi & Kato)")]
#[cfg_attr(not(feature = "train"), command(after_help = without_train::NOTE))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Forward,
    Backward,
    Xavier,
    KaimingIn,
    KaimingOut,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Forward => Mode::Forward,
            ModeArg::Backward => Mode::Backward,
            ModeArg::Xavier => Mode::Xavier,
            ModeArg::KaimingIn => Mode::KaimingIn,
            ModeArg::KaimingOut => Mode::KaimingOut,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AnalysisArg {
    Paper,
    Map,
}

impl From<AnalysisArg> for cnnc::analyze::Analysis {
    fn from(a: AnalysisArg) -> Self {
        match a {
            AnalysisArg::Paper => cnnc::analyze::Analysis::Paper,
            AnalysisArg::Map => cnnc::analyze::Analysis::Map,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Emit the initialization plan (JSON by default)
    Plan {
        /// A network description (.cnn) or an ONNX model (.onnx)
        file: PathBuf,
        #[command(flatten)]
        init: InitArgs,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        /// One sample's input shape CxHxW instead of the declared one (an ONNX graph with symbolic sizes needs it)
        #[arg(long, value_parser = parse_input)]
        input: Option<[u64; 3]>,
        /// paper: the paper's layer means; map: a variance per spatial position
        #[arg(long, value_enum, default_value = "paper")]
        analysis: AnalysisArg,
        /// Graphs: the last weight layer of each residual branch (or the BatchNorm after
        /// it) targets α² instead of 1; 0 starts every branch at zero (zero-init residual)
        #[arg(long, default_value_t = 1.0)]
        branch_scale: f64,
        /// Graphs: the training batch size N; the gradient predictions then count what a
        /// BatchNorm's batch mean removes (1/N of the part each sample shares across its
        /// positions). Without it: the large-batch limit
        #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
        batch: Option<u64>,
        /// Write the plan here (atomically) instead of to stdout
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the unified layers: shapes, M, M', ε, T, τ, γ, σ² and predicted variances
    Lower {
        file: PathBuf,
        #[command(flatten)]
        init: InitArgs,
        /// One sample's input shape CxHxW instead of the declared one
        #[arg(long, value_parser = parse_input)]
        input: Option<[u64; 3]>,
        /// paper: the paper's layer means; map: a variance per spatial position
        #[arg(long, value_enum, default_value = "paper")]
        analysis: AnalysisArg,
        /// Graphs: the residual branch scale α (see `cnnc plan --help`)
        #[arg(long, default_value_t = 1.0)]
        branch_scale: f64,
        /// Graphs: the training batch size (see `cnnc plan --help`)
        #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
        batch: Option<u64>,
        /// Every node's predicted E[x²] and E[δ²] (the graph analysis), by ONNX node name:
        /// what `scripts/torch/measure_nodes.py` measures
        #[arg(long)]
        nodes: bool,
    },
    /// Print the graph IR (one line per node, with inferred shapes)
    Graph {
        file: PathBuf,
        /// One sample's input shape CxHxW instead of the declared one
        #[arg(long, value_parser = parse_input)]
        input: Option<[u64; 3]>,
    },
    /// Print the explicit index sets of one unit: s, a, c, t (or j, h, d with --backward)
    Inspect {
        file: PathBuf,
        /// One sample's input shape CxHxW instead of the declared one
        #[arg(long, value_parser = parse_input)]
        input: Option<[u64; 3]>,
        /// Layer ℓ, from 1
        #[arg(long)]
        layer: usize,
        /// Unit i, from 0 (conv output / pooled output; with --backward, layer input / v)
        #[arg(long)]
        unit: u64,
        /// Show the backward sets j, h, d
        #[arg(long)]
        backward: bool,
        /// List at most this many elements of each set
        #[arg(long, default_value_t = 64)]
        limit: usize,
    },
    /// Write a runnable ONNX model (opset 13; 15 with training-mode BatchNorm) of a network, weights drawn from its plan
    ExportOnnx {
        /// A network description (.cnn) or an ONNX model (.onnx)
        file: PathBuf,
        #[command(flatten)]
        init: InitArgs,
        /// Seed of the weight generator
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// One sample's input shape CxHxW instead of the declared one
        #[arg(long, value_parser = parse_input)]
        input: Option<[u64; 3]>,
        /// paper: the paper's layer means; map: a variance per spatial position
        #[arg(long, value_enum, default_value = "paper")]
        analysis: AnalysisArg,
        /// Graphs: the residual branch scale α (see `cnnc plan --help`)
        #[arg(long, default_value_t = 1.0)]
        branch_scale: f64,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Rewrite the weight and bias initializers (and a graph's normalization parameters) of an ONNX model from its plan
    Init {
        /// An ONNX model (.onnx)
        model: PathBuf,
        #[command(flatten)]
        init: InitArgs,
        /// Seed of the weight generator
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// One sample's input shape CxHxW (when the graph's sizes are symbolic)
        #[arg(long, value_parser = parse_input)]
        input: Option<[u64; 3]>,
        /// paper: the paper's layer means; map: a variance per spatial position
        #[arg(long, value_enum, default_value = "paper")]
        analysis: AnalysisArg,
        /// Graphs: the residual branch scale α (see `cnnc plan --help`)
        #[arg(long, default_value_t = 1.0)]
        branch_scale: f64,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Train the network with the candle back end (weights drawn from a plan)
    #[cfg_attr(feature = "train", command(after_help = TRAIN_AFTER_HELP))]
    Train(TrainArgs),
    /// Measure the variances a plan predicts in the real (candle) network, layer by layer
    Probe(ProbeArgs),
    /// Train every (init, seed) of a YAML grid (resumable) and tabulate it like the paper's Table 4
    Experiment(ExperimentArgs),
    /// Write a synthetic image-folder data set (textured shapes with noise, one class per folder)
    SynthData(SynthDataArgs),
    /// Print the JSON Schema of the plan format
    Schema {
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Emit code: a candle crate, or a Python module that applies the plan in PyTorch
    #[command(subcommand)]
    Emit(EmitCommand),
}

#[derive(Subcommand, Debug)]
enum EmitCommand {
    /// A Rust crate: the network as candle layers initialized from its plan, and a training binary
    Candle {
        /// A network description (.cnn): a chain of layers, or any graph cnnc's candle model
        /// runs; or an ONNX graph (the crate reads the file again, at its path made absolute)
        file: PathBuf,
        #[command(flatten)]
        init: InitArgs,
        #[arg(long, value_enum, default_value = "paper")]
        analysis: AnalysisArg,
        /// Graphs: the residual branch scale α (see `cnnc plan --help`)
        #[arg(long, default_value_t = 1.0)]
        branch_scale: f64,
        /// ONNX: one sample's input shape CxHxW instead of the declared one
        #[arg(long, value_parser = parse_input)]
        input: Option<[u64; 3]>,
        /// The crate's directory (created; generated files in it are replaced)
        #[arg(short, long)]
        output: PathBuf,
        /// The package name [default: the network's name, lower case]
        #[arg(long)]
        name: Option<String>,
        /// The cnnc dependency's path in the generated Cargo.toml [default: this cnnc's source]
        #[arg(long)]
        cnnc_path: Option<String>,
        /// Omit `[workspace]`: the crate is to be a member of an enclosing workspace
        #[arg(long)]
        workspace_member: bool,
    },
    /// A Python module that applies the plan to a PyTorch model (stdout, or -o FILE.py)
    PytorchInit {
        /// A network description (.cnn) or an ONNX model (.onnx)
        file: PathBuf,
        #[command(flatten)]
        init: InitArgs,
        #[arg(long, value_enum, default_value = "paper")]
        analysis: AnalysisArg,
        /// One sample's input shape CxHxW instead of the declared one
        #[arg(long, value_parser = parse_input)]
        input: Option<[u64; 3]>,
        /// Graphs: the residual branch scale α (see `cnnc plan --help`)
        #[arg(long, default_value_t = 1.0)]
        branch_scale: f64,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Parses `--input CxHxW`.
fn parse_input(s: &str) -> std::result::Result<[u64; 3], String> {
    let parts: Vec<&str> = s.split(['x', 'X', ',']).collect();
    let sizes: Option<Vec<u64>> = parts.iter().map(|p| p.trim().parse::<u64>().ok().filter(|&v| v > 0)).collect();
    match sizes.as_deref() {
        Some(&[c, h, w]) => Ok([c, h, w]),
        _ => Err(format!("expected CxHxW with three positive sizes (e.g. 3x224x224), got `{s}`")),
    }
}

/// Reads a `.cnn` file or an `.onnx` model (`cnnc::load`), with `--input` when given;
/// the importer's notes go to stderr.
fn load(path: &Path, input: Option<[u64; 3]>) -> Result<cnnc::Model> {
    let model = cnnc::load(path, input.map_or(cnnc::InputSize::Declared, cnnc::InputSize::Chw))?;
    for note in &model.graph.notes {
        eprintln!("note: {}: {note}", path.display());
    }
    Ok(model)
}

/// The initialization a plan is derived for: `--mode` and `--std-cap`.
#[derive(clap::Args, Debug)]
struct InitArgs {
    #[arg(long, value_enum, default_value = "forward")]
    mode: ModeArg,
    /// Cap σ at this multiple of the padding-aware He value (the reference code uses 3)
    #[arg(long)]
    std_cap: Option<f64>,
}

impl InitArgs {
    /// The analysis options, the cap checked against the mode.
    fn options(&self) -> Result<Options> {
        let mode = self.mode.into();
        cnnc::check_std_cap(self.std_cap, mode)?;
        Ok(Options { mode, std_cap: self.std_cap })
    }
}

fn emit(output: &Option<PathBuf>, text: &str) -> Result<()> {
    match output {
        Some(path) => cnnc::write_atomic(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display())),
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            // A closed pipe (`cnnc plan … | head`) is not an error worth a message.
            match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.context("cannot write to stdout"),
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Plan { file, init, format, analysis, input, output, branch_scale, batch } => {
            let opts = init.options()?;
            let model = load(&file, input)?;
            let plan = model.plan(cnnc::GraphRequest { opts, analysis: analysis.into(), branch_scale, batch })?;
            let text = match format {
                Format::Json => plan.to_json(),
                Format::Yaml => plan.to_yaml(),
            };
            emit(&output, &text)
        }
        Command::Lower { file, init, input, analysis, branch_scale, batch, nodes } => {
            let opts = init.options()?;
            let model = load(&file, input)?;
            if nodes {
                let req = cnnc::GraphRequest { opts, analysis: analysis.into(), branch_scale, batch };
                let text = cnnc::node_report(&model.graph, req).map_err(|e| model.located(e))?;
                return emit(&None, &text);
            }
            if !model.is_source_chain() {
                let req = cnnc::GraphRequest { opts, analysis: analysis.into(), branch_scale, batch };
                let text = cnnc::lower_report(&model.graph, req).map_err(|e| model.located(e))?;
                return emit(&None, &text);
            }
            let net = model.network()?;
            let analysis = analyze::analyze_with(&net, opts, analysis.into())?;
            emit(&None, &report::lower_table(&net, &analysis, opts.mode))
        }
        Command::Graph { file, input } => emit(&None, &report::graph_table(&load(&file, input)?.graph)),
        Command::Inspect { file, input, layer, unit, backward, limit } => {
            let model = load(&file, input)?;
            if !model.is_source_chain() && cnnc::unify::unify(&model.graph).is_err() {
                // A graph: its weight layers in the plan's order.
                let text = report::inspect_graph(&model.graph, layer, unit, backward, limit).map_err(anyhow::Error::msg)?;
                return emit(&None, &text);
            }
            let net = model.network()?;
            let Some(l) = layer.checked_sub(1).and_then(|k| net.layers.get(k)) else {
                bail!("--layer {layer} is out of range: {} has layers 1 to {}", net.name, net.layers.len());
            };
            let text = report::inspect(&net, l, unit, backward, limit).map_err(anyhow::Error::msg)?;
            emit(&None, &text)
        }
        Command::ExportOnnx { file, init, seed, input, analysis, branch_scale, output } => {
            let opts = init.options()?;
            let model = load(&file, input)?;
            let plan = model.plan(cnnc::GraphRequest { opts, analysis: analysis.into(), branch_scale, batch: None })?;
            let model = cnnc::onnx::export(&model.graph, &plan, seed).map_err(cnnc::Error::from)?;
            cnnc::onnx::write_model(model, &output, None).map_err(|e| cnnc::Error::from(e).into())
        }
        Command::Init { model, init, seed, input, analysis, branch_scale, output } => {
            let opts = init.options()?;
            let in_model = |e: cnnc::Error| anyhow::anyhow!("{}: {e}", model.display());
            let mut proto = cnnc::onnx::read_model(&model).map_err(|e| in_model(e.into()))?;
            let graph = cnnc::onnx::import(
                &proto,
                &cnnc::onnx::ImportOptions { input: input.map_or(cnnc::InputSize::Declared, cnnc::InputSize::Chw) },
            )
            .map_err(|e| in_model(e.into()))?;
            // A chain's plan as before graphs; any other graph's from the graph analysis.
            let req = cnnc::GraphRequest { opts, analysis: analysis.into(), branch_scale, batch: None };
            let plan = cnnc::plan_graph(&graph, req).map_err(in_model)?;
            cnnc::onnx::reinit(&mut proto, &plan, seed).map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
            cnnc::onnx::write_model(proto, &output, None).map_err(|e| cnnc::Error::from(e).into())
        }
        #[cfg(feature = "train")]
        Command::Train(args) => {
            cnnc::nn::tune_cpu();
            train_command(args)
        }
        #[cfg(feature = "train")]
        Command::Experiment(args) => experiment_command(args),
        #[cfg(feature = "train")]
        Command::Probe(ProbeArgs { file, init, analysis, draws, batch, seed, image_size, branch_scale, json, plot }) => {
            cnnc::nn::tune_cpu();
            let model = cnnc::load(&file, image_size.map_or(cnnc::InputSize::Declared, cnnc::InputSize::Square))?;
            // A chain probes on the chain model (as before graphs), any other graph on the graph model.
            let chain = if model.is_source_chain() { Some(model.network()?) } else { cnnc::unify::unify(&model.graph).ok() };
            let device = cnnc::train::device("cpu")?;
            let mut reports = Vec::new();
            for mode in init {
                let opts = Options { mode: mode.into(), std_cap: None };
                // A graph's BatchNorm uses the statistics of the probe's batch: its plan
                // counts what that batch's mean removes from the gradient.
                let plan_batch = (batch >= 2).then_some(batch as u64);
                let plan = model.plan(cnnc::GraphRequest { opts, analysis: analysis.into(), branch_scale, batch: plan_batch })?;
                let popts = cnnc::probe::ProbeOptions { draws, batch, seed };
                let report = match &chain {
                    Some(net) => cnnc::probe::probe(net, &plan, popts, &device)?,
                    None => cnnc::probe::probe_graph(&model.graph, &plan, popts, &device)?,
                };
                if !json {
                    emit(&None, &(report.table() + "\n"))?;
                }
                reports.push(report);
            }
            if json {
                emit(&None, &(serde_json::to_string_pretty(&reports)? + "\n"))?;
            }
            if let Some(path) = plot {
                let bytes = cnnc::probe::plot(&reports, cnnc::plot::Format::of(&path)).map_err(anyhow::Error::msg)?;
                cnnc::write_atomic(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        }
        #[cfg(feature = "train")]
        Command::SynthData(SynthDataArgs { dir, classes, per_class, size, seed }) => {
            cnnc::train::data::synthesize(&dir, classes, per_class, size, seed)?;
            eprintln!("wrote {} images in {classes} class folders under {}", classes * per_class, dir.display());
            Ok(())
        }
        #[cfg(not(feature = "train"))]
        Command::Train(_) => without_train::fail("train"),
        #[cfg(not(feature = "train"))]
        Command::Probe(_) => without_train::fail("probe"),
        #[cfg(not(feature = "train"))]
        Command::Experiment(_) => without_train::fail("experiment"),
        #[cfg(not(feature = "train"))]
        Command::SynthData(_) => without_train::fail("synth-data"),
        Command::Schema { output } => emit(&output, &cnnc::plan::schema_json()),
        Command::Emit(cmd) => emit_command(cmd),
    }
}

#[cfg(feature = "train")]
#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// A network description (.cnn) or an ONNX model (.onnx)
    file: PathBuf,
    /// Initializations to compare, comma-separated (forward, backward, xavier, kaiming-in, kaiming-out)
    #[arg(long, value_delimiter = ',', default_value = "forward")]
    init: Vec<ModeArg>,
    /// paper: the paper's layer means; map: a variance per spatial position
    #[arg(long, value_enum, default_value = "paper")]
    analysis: AnalysisArg,
    /// K: independent weight draws per init
    #[arg(long, default_value_t = 8)]
    draws: usize,
    /// N(0,1) inputs per draw
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Re-plan the network for square inputs of this size (an ONNX model with symbolic sizes needs it)
    #[arg(long)]
    image_size: Option<u64>,
    /// Graphs: the residual branch scale α of the plans (see `cnnc plan --help`)
    #[arg(long, default_value_t = 1.0)]
    branch_scale: f64,
    /// Print JSON instead of tables
    #[arg(long)]
    json: bool,
    /// Also draw measured variance against depth, every init on one chart (PNG for a .png path, else SVG)
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[cfg(feature = "train")]
#[derive(clap::Args, Debug)]
struct ExperimentArgs {
    /// The experiment's YAML file (see experiments/f34-demo.yaml)
    config: PathBuf,
    /// Plain progress lines instead of a progress bar
    #[arg(long)]
    quiet: bool,
    /// Runs at a time on this machine (the CPU threads are divided between them)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: u64,
    /// GPU ids given to the jobs round-robin as CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3
    #[arg(long, value_delimiter = ',')]
    gpus: Vec<String>,
    /// Write <out>/slurm/array.sbatch (one array task per run) and submit it with sbatch
    #[arg(long, conflicts_with_all = ["status", "collect", "gpus", "jobs"])]
    slurm: bool,
    /// With --slurm: write the script, do not submit it
    #[arg(long, requires = "slurm")]
    dry_run: bool,
    #[command(flatten)]
    slurm_options: SlurmArgs,
    /// Print each run's state (pending, running, done, failed, diverged), epochs and best accuracy
    #[arg(long, conflicts_with = "collect")]
    status: bool,
    /// Only write results.md and curves from the runs as they are (train nothing)
    #[arg(long)]
    collect: bool,
}

/// Slurm options of `cnnc experiment --slurm`; each overrides the config's `slurm:` entry.
#[cfg(feature = "train")]
#[derive(clap::Args, Debug)]
struct SlurmArgs {
    #[arg(long, requires = "slurm")]
    partition: Option<String>,
    #[arg(long, requires = "slurm")]
    account: Option<String>,
    /// Generic resources per task, e.g. gpu:1
    #[arg(long, requires = "slurm")]
    gres: Option<String>,
    /// Time limit per task (sbatch's forms: 24:00:00, 2-00:00:00)
    #[arg(long, requires = "slurm")]
    time: Option<String>,
    /// CPUs per task (the run's thread count)
    #[arg(long, requires = "slurm")]
    cpus: Option<usize>,
    /// Memory per task's node, e.g. 16G
    #[arg(long, requires = "slurm")]
    mem: Option<String>,
}

#[cfg(feature = "train")]
#[derive(clap::Args, Debug)]
struct SynthDataArgs {
    /// Output directory (one folder per class)
    dir: PathBuf,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 60)]
    per_class: usize,
    /// Image side in pixels
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[cfg(feature = "train")]
#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// A network description (.cnn) or an ONNX model (.onnx); with --resume, the run's own
    model: Option<PathBuf>,
    /// Data: a folder with IDX files (MNIST, Fashion-MNIST), train/ and val/ class folders, or class folders
    #[arg(long)]
    data: Option<PathBuf>,
    /// Initialization mode, used to plan the network at --image-size
    #[arg(long, value_enum, default_value = "forward")]
    init: ModeArg,
    /// The analysis the plan of --init is made with (paper: the paper's layer means; map:
    /// a variance per spatial position); xavier and kaiming do not depend on it
    #[arg(long, value_enum, default_value = "paper")]
    analysis: AnalysisArg,
    /// A plan file (JSON or YAML) to use instead of --init; it must be for this input size
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Images are resized and center-cropped to this size (default: the network's declared
    /// size); the network is planned at it (an ONNX model with symbolic sizes needs it)
    #[arg(long)]
    image_size: Option<u64>,
    /// Graphs: the residual branch scale α of the plan (see `cnnc plan --help`)
    #[arg(long, default_value_t = 1.0)]
    branch_scale: f64,
    /// Total epochs [default: 300]; with --resume, training continues up to this many
    #[arg(long)]
    epochs: Option<usize>,
    #[command(flatten)]
    flags: cnnc::train::Flags,
    /// The run directory: config, plan, metrics.jsonl, checkpoint
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start the run, or continue it when --out holds one with the same settings (any
    /// --epochs); a run that has all its epochs exits at once. What a batch job runs
    #[arg(long = "continue", conflicts_with = "resume")]
    continue_run: bool,
    /// No progress bar or per-epoch lines
    #[arg(long)]
    quiet: bool,
    /// Progress as `cnnc-progress epoch E/N step S/M` lines on stderr (for `cnnc experiment`)
    #[arg(long, hide = true, conflicts_with = "quiet")]
    progress_lines: bool,
}

/// What `cnnc train --help` adds: how a stopped run ends.
#[cfg(feature = "train")]
const TRAIN_AFTER_HELP: &str = "On SIGTERM, SIGUSR1 or Ctrl-C the run finishes its current step, writes a checkpoint \
     (weights, momentum, and how far into the epoch it was) and exits with status 75; `--resume RUN` (or the same \
     command with `--continue`) goes on from there, and ends exactly where an uninterrupted run does.";

#[cfg(feature = "train")]
fn experiment_command(a: ExperimentArgs) -> Result<()> {
    use cnnc::experiment::{self, local, slurm, Experiment};
    let exp = Experiment::load(&a.config)?;
    let results = exp.out.join("results.md");
    if a.status {
        exp.check_out_is_ours()?;
        let rows = slurm::status(&exp);
        return emit(&None, &slurm::status_table(&exp, &rows));
    }
    exp.claim_out()?;
    if a.collect {
        experiment::collect(&exp)?;
        eprintln!("results: {}", results.display());
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the cnnc executable")?;
    if a.slurm {
        let o = &a.slurm_options;
        let flags = slurm::SlurmConfig {
            partition: o.partition.clone(),
            account: o.account.clone(),
            gres: o.gres.clone(),
            time: o.time.clone(),
            cpus_per_task: o.cpus,
            mem: o.mem.clone(),
            signal_seconds: None,
            extra: Vec::new(),
        };
        flags.check().map_err(|e| anyhow::anyhow!("--slurm: {e}"))?;
        let script = slurm::write_script(&exp, &exe, &exp.config.slurm.overridden(&flags))?;
        eprintln!("wrote {}", script.display());
        if a.dry_run {
            return Ok(());
        }
        let tasks = slurm::pending_tasks(&exp);
        if tasks.is_empty() {
            eprintln!("every run is finished; nothing submitted (collect with: cnnc experiment {} --collect)", a.config.display());
            return Ok(());
        }
        let id = slurm::submit(&exp, &script, &tasks)?;
        println!("{id}");
        eprintln!(
            "submitted job {id}, array tasks {tasks}; follow it with: cnnc experiment {} --status; when it is done: cnnc experiment {} --collect",
            a.config.display(),
            a.config.display()
        );
        return Ok(());
    }
    let opts = local::Options { jobs: a.jobs as usize, gpus: a.gpus, quiet: a.quiet };
    experiment::run(&a.config, &exe, &opts)?;
    eprintln!("results: {}", results.display());
    Ok(())
}

/// The name a run's config records for `--analysis`.
#[cfg(feature = "train")]
fn analysis_name(a: AnalysisArg) -> &'static str {
    match a {
        AnalysisArg::Paper => "paper",
        AnalysisArg::Map => "map",
    }
}

/// `--continue` on a run directory that holds a checkpoint: the run's plan when it is to
/// go on, `None` when it already has `config.epochs` epochs; an error when the run was
/// started with other settings (naming them).
#[cfg(feature = "train")]
fn continued(config: &cnnc::train::Config, out: &Path) -> Result<Option<cnnc::plan::Plan>> {
    let (old, plan, done) = cnnc::train::run_config(out)?;
    let (_, steps) = cnnc::train::checkpoint_progress(out)?;
    let mut wanted = config.clone();
    if wanted.image_size == 0 {
        wanted.image_size = old.image_size;
    }
    let differences = cnnc::train::config_differences(&old, &wanted);
    if !differences.is_empty() {
        bail!(
            "{} holds a run with other settings ({}); use another --out, or --resume to continue it as it was",
            out.display(),
            differences.join("; ")
        );
    }
    if done >= config.epochs && steps == 0 {
        eprintln!("{}: already trained {done} epochs of {}", out.display(), config.epochs);
        return Ok(None);
    }
    Ok(Some(plan))
}

#[cfg(feature = "train")]
fn train_command(a: TrainArgs) -> Result<()> {
    cnnc::train::stop::on_signals().context("cannot install the signal handlers")?;
    use cnnc::train::{self, data};
    let (config, plan, run, resume) = match &a.resume {
        Some(run) => {
            let (mut config, plan, done) = train::run_config(run)?;
            if let Some(e) = a.epochs {
                config.epochs = e;
            }
            if config.epochs <= done {
                bail!("{} has already trained {done} epochs; pass --epochs N with N > {done} to continue", run.display());
            }
            (config, Some(plan), run.clone(), true)
        }
        None => {
            let Some(model) = &a.model else { bail!("train needs a network file (or --resume RUN)") };
            let Some(data) = &a.data else { bail!("train needs --data DIR") };
            let Some(out) = &a.out else { bail!("train needs --out RUN (the run directory)") };
            if a.continue_run && out.join(train::DIVERGED).exists() {
                eprintln!("{}: diverged earlier (see {}); not retried", out.display(), out.join(train::DIVERGED).display());
                return Ok(());
            }
            let existing = out.join(train::CHECKPOINT).exists();
            if existing && !a.continue_run {
                bail!("{} already holds a run; use --resume {} to continue it, or another --out", out.display(), out.display());
            }
            let init = match &a.plan {
                Some(p) => format!("plan:{}", p.display()),
                None => Mode::from(a.init).name().to_string(),
            };
            let model = model.display().to_string();
            let mut config = train::Config::new(
                &model,
                data,
                &init,
                analysis_name(a.analysis),
                a.image_size.unwrap_or(0),
                a.epochs.unwrap_or(300),
                &a.flags,
            );
            config.branch_scale = a.branch_scale;
            if existing {
                match continued(&config, out)? {
                    Some(plan) => (config, Some(plan), out.clone(), true),
                    None => return Ok(()),
                }
            } else {
                (config, None, out.clone(), false)
            }
        }
    };
    let _lock = train::lock_run(&run)?;
    let mut config = config;
    train::device(&config.device)?;
    let model = cnnc::load(
        Path::new(&config.model),
        a.image_size.or((config.image_size > 0).then_some(config.image_size)).map_or(cnnc::InputSize::Declared, cnnc::InputSize::Square),
    )?;
    // A chain of unified layers trains on the chain model (as before graphs), any other
    // graph on the graph model.
    let chain = if model.is_source_chain() { Some(model.network()?) } else { cnnc::unify::unify(&model.graph).ok() };
    let (c, h, w) = model.graph.input.chw();
    if h != w {
        bail!("{}: the input is {h}x{w}; training needs square images (pass --image-size)", config.model);
    }
    config.image_size = h;
    let plan = match (plan, &a.plan) {
        (Some(p), _) => p,
        (None, Some(path)) => cnnc::plan::Plan::read(path)?,
        (None, None) => model.plan(cnnc::GraphRequest {
            opts: Options { mode: a.init.into(), std_cap: None },
            analysis: a.analysis.into(),
            branch_scale: config.branch_scale,
            batch: None,
        })?,
    };
    let target = data::Target { channels: c as usize, size: h as usize };
    let split = train::load_split(&config, target)?;
    if let Some(note) = split.skipped_note() {
        eprintln!("{note}");
    }
    if !a.quiet {
        eprintln!(
            "{}: {} at {h}x{w}, init {}, {} classes, {} train / {} val images, device {}",
            run.display(),
            model.graph.name,
            config.init,
            split.classes.len(),
            split.train.len(),
            split.val.len(),
            config.device
        );
    }
    let progress = match (a.quiet, a.progress_lines) {
        (_, true) => train::Progress::Lines,
        (true, false) => train::Progress::Quiet,
        (false, false) => train::Progress::Bar,
    };
    let summary = match &chain {
        Some(net) => train::train(net, &plan, &split, &config, &run, resume, progress)?,
        None => train::train_graph(&model.graph, &plan, &split, &config, &run, resume, progress)?,
    };
    if let Some(m) = summary.epochs.last() {
        let val = m.val_accuracy.map_or("n/a".to_string(), |v| format!("{:.2}%", 100.0 * v));
        println!("epoch {}: train loss {:.4}, val accuracy {val}; run in {}", m.epoch, m.train_loss, run.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        #[cfg(feature = "train")]
        Err(e)
            if matches!(e.downcast_ref(), Some(cnnc::train::TrainError::Interrupted { .. }))
                || matches!(e.downcast_ref(), Some(cnnc::experiment::ExperimentError::Interrupted)) =>
        {
            eprintln!("{e}");
            ExitCode::from(cnnc::train::stop::EXIT_INTERRUPTED)
        }
        Err(e) => {
            match e.downcast_ref::<cnnc::Error>() {
                Some(cnnc::Error::Source(_)) => eprintln!("{}", for_terminal(&e.to_string())),
                _ => eprintln!("error: {}", for_terminal(&format!("{e:#}"))),
            }
            ExitCode::FAILURE
        }
    }
}

/// A message with the control characters a file could smuggle into it (terminal escape
/// sequences in a node name or a source line) escaped; its line breaks and tabs kept.
fn for_terminal(message: &str) -> String {
    message.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn emit_command(cmd: EmitCommand) -> Result<()> {
    match cmd {
        EmitCommand::Candle { file, init, analysis, branch_scale, input, output, name, cnnc_path, workspace_member } => {
            let opts = init.options()?;
            if input.is_some() && !cnnc::is_onnx(&file) {
                bail!("--input is for ONNX models; a .cnn description declares its input (edit its `input` line)");
            }
            let model = load(&file, input)?;
            let source_text = model.source.as_ref().map(|s| s.text.clone()).unwrap_or_default();
            let opts_for = |network: &str| -> Result<cnnc::emit::candle::CandleOptions> {
                Ok(cnnc::emit::candle::CandleOptions {
                    name: name.clone().unwrap_or_else(|| cnnc::emit::candle::package_name(network)),
                    spec_path: file.display().to_string(),
                    spec_text: source_text.clone(),
                    cnnc_path: match &cnnc_path {
                        Some(p) => p.clone(),
                        None => default_cnnc_path()?,
                    },
                    standalone: !workspace_member,
                })
            };
            if !model.is_source_chain() {
                // Any other graph: the generated model writes out cnnc's graph model.
                let req = cnnc::GraphRequest { opts, analysis: analysis.into(), branch_scale, batch: None };
                let plan = model.plan(req)?;
                let source = if cnnc::is_onnx(&file) {
                    let path = std::fs::canonicalize(&file).with_context(|| format!("cannot resolve {}", file.display()))?;
                    cnnc::emit::candle::GraphSource::Onnx { path: path.display().to_string() }
                } else {
                    cnnc::emit::candle::GraphSource::Cnn
                };
                let files = cnnc::emit::candle::generate_graph_from(&model.graph, &plan, &opts_for(&model.graph.name)?, &source)?;
                cnnc::emit::write_files(&output, &files).with_context(|| format!("cannot write {}", output.display()))?;
                eprintln!(
                    "wrote {} ({} files); cd {} && cargo run --release -- --data DIR",
                    output.display(),
                    files.len(),
                    output.display()
                );
                return Ok(());
            }
            let net = model.network()?;
            let plan = cnnc::plan_with(&net, opts, analysis.into())?;
            let opts = cnnc::emit::candle::CandleOptions {
                name: name.unwrap_or_else(|| cnnc::emit::candle::package_name(&net.name)),
                spec_path: file.display().to_string(),
                spec_text: source_text,
                cnnc_path: match cnnc_path {
                    Some(p) => p,
                    None => default_cnnc_path()?,
                },
                standalone: !workspace_member,
            };
            let files = cnnc::emit::candle::generate(&net, &plan, &opts)?;
            cnnc::emit::write_files(&output, &files).with_context(|| format!("cannot write {}", output.display()))?;
            eprintln!("wrote {} ({} files); cd {} && cargo run --release -- --data DIR", output.display(), files.len(), output.display());
            Ok(())
        }
        EmitCommand::PytorchInit { file, init, analysis, input, branch_scale, output } => {
            let opts = init.options()?;
            // A chain's plan (cnnc-plan/1) or a graph's (cnnc-plan/2: BatchNorm constants too).
            let plan = load(&file, input)?.plan(cnnc::GraphRequest { opts, analysis: analysis.into(), branch_scale, batch: None })?;
            emit(&output, &cnnc::emit::pytorch::init_module(&plan, &file.display().to_string())?)
        }
    }
}

/// The generated crate's `cnnc` dependency when `--cnnc-path` is not given: the source
/// this binary was built from, if it is still there and is this version of cnnc (an
/// installed binary's build folder is often gone or has moved on), else an error with advice.
fn default_cnnc_path() -> Result<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(Path::new(dir).join("Cargo.toml")).unwrap_or_default();
    let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
    if manifest.contains("name = \"cnnc\"") && manifest.contains(&version) {
        return Ok(dir.to_string());
    }
    bail!(
        "this cnnc was built from {dir}, which no longer holds cnnc {}: pass --cnnc-path DIR, a checkout of cnnc {} (the generated crate builds against it)",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_VERSION")
    )
}

/// The plan-only build (the default, without `--features train`): the commands of the `train` feature still
/// parse, whatever their arguments, and fail with how to get them, rather than being
/// unknown subcommands to someone following the README.
#[cfg(not(feature = "train"))]
mod without_train {
    /// The arguments of a command this build does not have: anything, `--help` included.
    #[derive(clap::Args, Debug)]
    #[command(disable_help_flag = true, after_help = NOTE)]
    pub struct Unavailable {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<std::ffi::OsString>,
    }

    pub type TrainArgs = Unavailable;
    pub type ProbeArgs = Unavailable;
    pub type ExperimentArgs = Unavailable;
    pub type SynthDataArgs = Unavailable;

    /// What `cnnc --help` and `cnnc help <command>` add in this build.
    pub const NOTE: &str = "This cnnc was built without the `train` feature: train, probe, experiment and synth-data are \
                            not available (install with the `train` feature to get them: `cargo install --path . --features train`)";

    /// The error of `cnnc <command>`.
    pub fn fail(command: &str) -> anyhow::Result<()> {
        anyhow::bail!(
            "this cnnc was built without the `train` feature: `cnnc {command}` is part of the training back end; \
             install with the `train` feature to get it (`cargo install --path . --features train`)"
        )
    }
}

#[cfg(not(feature = "train"))]
use without_train::{ExperimentArgs, ProbeArgs, SynthDataArgs, TrainArgs};
