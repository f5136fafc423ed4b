//! The `cnnc` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use cnnc::analyze::{self, Mode, Options};
use cnnc::{report, Source};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "cnnc", version, about = "Compiles a CNN description into a weight-initialization plan (Henmi, Hirohashi & Kato)")]
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Emit the initialization plan (JSON by default)
    Plan {
        /// A network description (.cnn)
        file: PathBuf,
        #[arg(long, value_enum, default_value = "forward")]
        mode: ModeArg,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        /// Cap σ at this multiple of the padding-aware He value (the reference code uses 3)
        #[arg(long)]
        std_cap: Option<f64>,
        /// Write the plan here (atomically) instead of to stdout
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the unified layers: shapes, M, M', ε, T, τ, γ, σ² and predicted variances
    Lower {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "forward")]
        mode: ModeArg,
        #[arg(long)]
        std_cap: Option<f64>,
    },
    /// Print the graph IR (one line per node, with inferred shapes)
    Graph { file: PathBuf },
    /// Print the explicit index sets of one unit: s, a, c, t (or j, h, d with --backward)
    Inspect {
        file: PathBuf,
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
    /// Print the JSON Schema of the plan format
    Schema {
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn read_source(path: &Path) -> Result<Source> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{} is not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to()))?;
    Ok(Source::new(path.display().to_string(), text))
}

fn check_cap(cap: Option<f64>, mode: Mode) -> Result<()> {
    if let Some(c) = cap {
        if !(c.is_finite() && c > 0.0) {
            bail!("--std-cap must be a positive number, got {c}");
        }
        if !matches!(mode, Mode::Forward | Mode::Backward) {
            bail!("--std-cap applies to the forward and backward modes only, not {}", mode.name());
        }
    }
    Ok(())
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
        Command::Plan { file, mode, format, std_cap, output } => {
            let mode = mode.into();
            check_cap(std_cap, mode)?;
            let net = read_source(&file)?.network()?;
            let plan = cnnc::plan(&net, Options { mode, std_cap })?;
            let text = match format {
                Format::Json => plan.to_json(),
                Format::Yaml => plan.to_yaml(),
            };
            emit(&output, &text)
        }
        Command::Lower { file, mode, std_cap } => {
            let mode = mode.into();
            check_cap(std_cap, mode)?;
            let net = read_source(&file)?.network()?;
            let analysis = analyze::analyze(&net, Options { mode, std_cap })?;
            emit(&None, &report::lower_table(&net, &analysis, mode))
        }
        Command::Graph { file } => {
            let graph = read_source(&file)?.graph()?;
            emit(&None, &report::graph_table(&graph))
        }
        Command::Inspect { file, layer, unit, backward, limit } => {
            let net = read_source(&file)?.network()?;
            let Some(l) = layer.checked_sub(1).and_then(|k| net.layers.get(k)) else {
                bail!("--layer {layer} is out of range: {} has layers 1 to {}", net.name, net.layers.len());
            };
            let text = report::inspect(&net, l, unit, backward, limit).map_err(anyhow::Error::msg)?;
            emit(&None, &text)
        }
        Command::Schema { output } => emit(&output, &cnnc::plan::schema_json()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<cnnc::Error>() {
                Some(cnnc::Error::Source(_)) => eprintln!("{e}"),
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
