//! cnnc: compiles a convolutional-network description into a weight-initialization plan.
//!
//! The pipeline, one module per stage (ARCHITECTURE.md has the picture):
//! `syntax` (text → AST) → `lower` (AST → graph IR) → `unify` (graph → unified layers)
//! → `index` (explicit index sets) and `analyze` (τ, γ, ε, σ², predictions) → `plan`
//! (JSON/YAML). This file chains the stages; each stage is a pure function.
//!
//! The back ends that run networks — `nn` (the candle model), `train`, `probe`,
//! `experiment`, `plot` and `emit::runtime` — exist with the `train` feature (off by
//! default: `--features train`) only: without it nothing here links candle, and the
//! compiler checks that the analysis does not need it.

pub mod analyze;
pub mod diag;
pub mod emit;
#[cfg(feature = "train")]
pub mod experiment;
pub mod index;
pub mod ir;
pub mod lower;
#[cfg(feature = "train")]
pub mod nn;
pub mod onnx;
pub mod output;
pub mod plan;
#[cfg(feature = "train")]
pub mod plot;
#[cfg(feature = "train")]
pub mod probe;
pub mod quad;
pub mod report;
pub mod syntax;
#[cfg(feature = "train")]
pub mod train;
pub mod unify;

pub use output::write_atomic;

use diag::{Diagnostic, Diagnostics};
use ir::Origin;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Errors located in a `.cnn` source, rendered like a compiler's.
    #[error("{0}")]
    Source(#[from] Diagnostics),
    /// Errors located at graph nodes that have no source span (e.g. ONNX nodes).
    #[error("{}", .0.join("\n"))]
    Graph(Vec<String>),
    #[error(transparent)]
    Analysis(#[from] analyze::AnalysisError),
    /// Errors of the ONNX importer and exporter.
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
    /// A network file that cannot be read, or is not text.
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    /// An error of the model in a file that carries no source spans (an ONNX model).
    #[error("{path}: {inner}")]
    InFile { path: String, inner: Box<Error> },
}

/// The size one sample of a network's input is taken at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputSize {
    /// The size the file declares.
    #[default]
    Declared,
    /// `--input CxHxW`: this size, whatever the file declares.
    Chw([u64; 3]),
    /// `--image-size S`: S×S images with the declared channel count.
    Square(u64),
}

/// A network file read and lowered to the graph IR: a `.cnn` description (kept, so that
/// later errors can point into it) or an ONNX model.
#[derive(Clone, Debug)]
pub struct Model {
    pub graph: ir::Graph,
    pub source: Option<Source>,
    /// The path errors are reported under.
    pub path: String,
}

impl Model {
    /// The graph as the paper's chain of unified layers (an error for graphs that are not chains).
    pub fn network(&self) -> Result<unify::Network, Error> {
        network(&self.graph, self.source.as_ref()).map_err(|e| self.located(e))
    }

    /// Whether this is a `.cnn` description written as a chain of layers (conv, linear,
    /// activation, pooling, flatten, each reading the one before): the paper's unified
    /// layers, whose mistakes (two poolings in a row, …) are errors at their span. Any
    /// other model (an ONNX one, a `.cnn` graph) is planned as a graph.
    pub fn is_source_chain(&self) -> bool {
        self.source.is_some()
            && self.graph.nodes.iter().enumerate().all(|(k, n)| {
                n.inputs == [ir::ValueId(k)]
                    && matches!(
                        n.op,
                        ir::Op::Conv(_)
                            | ir::Op::Linear(_)
                            | ir::Op::Activation(_)
                            | ir::Op::Pool(_)
                            | ir::Op::GlobalPool(_)
                            | ir::Op::Flatten
                    )
            })
    }

    /// The plan `cnnc plan` writes: a `.cnn` chain through the chain analysis (its
    /// errors point into the source; `branch_scale` does not apply), any other graph
    /// through [`plan_graph`] (a chain-shaped ONNX model gives the same `cnnc-plan/1`).
    pub fn plan(&self, req: GraphRequest) -> Result<plan::Plan, Error> {
        if !self.is_source_chain() {
            plan_graph(&self.graph, req).map_err(|e| self.located(e))
        } else {
            plan_with(&self.network()?, req.opts, req.analysis)
        }
    }

    /// Puts the file's path before errors that do not carry it already.
    pub fn located(&self, e: Error) -> Error {
        match e {
            e @ (Error::Source(_) | Error::Read { .. } | Error::InFile { .. }) => e,
            e => Error::InFile { path: self.path.clone(), inner: Box::new(e) },
        }
    }
}

/// [`load`], then the chain of unified layers ([`Model::network`]).
pub fn load_network(path: &std::path::Path, input: InputSize) -> Result<unify::Network, Error> {
    load(path, input)?.network()
}

/// Whether a path names an ONNX model (by its extension) rather than a `.cnn` description.
pub fn is_onnx(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Reads a `.cnn` description or an `.onnx` model (by extension) at the given input size:
/// the one loader of the command line, training, probing and experiments.
pub fn load(path: &std::path::Path, input: InputSize) -> Result<Model, Error> {
    let shown = path.display().to_string();
    if is_onnx(path) {
        let graph = onnx::load(path, &onnx::ImportOptions { input }).map_err(|e| match e {
            e @ onnx::OnnxError::Io { .. } => Error::Onnx(e),
            e => in_file(&shown, e.into()),
        })?;
        return Ok(Model { graph, source: None, path: shown });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::Read { path: shown.clone(), message: e.to_string() })?;
    load_cnn(shown, bytes, input)
}

/// The two kinds of network file [`load_bytes`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A `.cnn` description (UTF-8 text).
    Cnn,
    /// An ONNX model (protobuf).
    Onnx,
}

/// [`load`] of a file already in memory (what the Python package plans): `path` is the
/// name errors are reported under. An ONNX model is read as [`load`] reads a file, its
/// weight payloads skipped, so both give the same graph.
pub fn load_bytes(path: &str, bytes: &[u8], kind: FileKind, input: InputSize) -> Result<Model, Error> {
    match kind {
        FileKind::Cnn => load_cnn(path.to_string(), bytes.to_vec(), input),
        FileKind::Onnx => {
            let opts = onnx::ImportOptions { input };
            let graph = onnx::decode_shapes(std::io::Cursor::new(bytes), bytes.len() as u64)
                .and_then(|m| onnx::import(&m, &opts))
                .map_err(|e| in_file(path, e.into()))?;
            Ok(Model { graph, source: None, path: path.to_string() })
        }
    }
}

fn in_file(path: &str, inner: Error) -> Error {
    Error::InFile { path: path.to_string(), inner: Box::new(inner) }
}

/// Parses and lowers a `.cnn` description reported under `shown`, resized to `input`.
fn load_cnn(shown: String, bytes: Vec<u8>, input: InputSize) -> Result<Model, Error> {
    let text = String::from_utf8(bytes).map_err(|e| Error::Read {
        path: shown.clone(),
        message: format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
    })?;
    let src = Source::new(shown.clone(), text);
    let mut file = src.parse()?;
    let declared = &mut file.input;
    let resized = match (input, declared.value.as_slice()) {
        (InputSize::Declared, _) => None,
        (InputSize::Chw(chw), [_, _, _]) => Some(chw.to_vec()),
        (InputSize::Square(s), &[c, _, _]) => Some(vec![c, s, s]),
        (InputSize::Chw(_), d) | (InputSize::Square(_), d) => {
            let flag = if matches!(input, InputSize::Chw(_)) { "--input" } else { "--image-size" };
            let message = format!("{flag} needs an image input (CxHxW); the network declares input {d:?}");
            return Err(src.diagnostics(vec![Diagnostic::new(declared.span, message)]));
        }
    };
    if let Some(v) = resized {
        if v.contains(&0) {
            let message = format!("the input size must be positive in every axis, got {v:?}");
            return Err(src.diagnostics(vec![Diagnostic::new(declared.span, message)]));
        }
        declared.value = v;
    }
    let graph = lower::lower(&file).map_err(|d| src.diagnostics(d))?;
    Ok(Model { graph, source: Some(src), path: shown })
}

/// A `.cnn` source text and the path it is reported under.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: String,
    pub text: String,
}

impl Source {
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Source {
        Source { path: path.into(), text: text.into() }
    }

    fn diagnostics(&self, items: Vec<Diagnostic>) -> Error {
        Error::Source(Diagnostics { path: self.path.clone(), source: self.text.clone(), items })
    }

    /// Parses the source.
    pub fn parse(&self) -> Result<syntax::File, Error> {
        syntax::parse(&self.text).map_err(|d| self.diagnostics(d))
    }

    /// Parses and lowers the source to the graph IR.
    pub fn graph(&self) -> Result<ir::Graph, Error> {
        lower::lower(&self.parse()?).map_err(|d| self.diagnostics(d))
    }

    /// Parses, lowers and unifies the source.
    pub fn network(&self) -> Result<unify::Network, Error> {
        network(&self.graph()?, Some(self))
    }
}

/// Unifies a graph; errors at source spans are rendered against `source`.
pub fn network(graph: &ir::Graph, source: Option<&Source>) -> Result<unify::Network, Error> {
    unify::unify(graph).map_err(|errors| {
        let spanned: Vec<Diagnostic> = errors
            .iter()
            .filter_map(|e| match (&e.origin, source) {
                (Origin::Source(span), Some(_)) => Some(Diagnostic::new(*span, e.message.clone())),
                (Origin::Implicit(inner), Some(_)) => match inner.as_ref() {
                    Origin::Source(span) => Some(Diagnostic::new(*span, e.message.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        match source {
            Some(src) if spanned.len() == errors.len() => src.diagnostics(spanned),
            _ => Error::Graph(
                errors
                    .iter()
                    .map(|e| match &e.origin {
                        Origin::OnnxNode(n) => format!("node `{n}`: {}", e.message),
                        _ => e.message.clone(),
                    })
                    .collect(),
            ),
        }
    })
}

/// Analyses a network with the paper's analysis and builds its plan.
pub fn plan(net: &unify::Network, opts: analyze::Options) -> Result<plan::Plan, Error> {
    plan_with(net, opts, analyze::Analysis::Paper)
}

/// Analyses a network with the given analysis and builds its plan.
pub fn plan_with(net: &unify::Network, opts: analyze::Options, analysis: analyze::Analysis) -> Result<plan::Plan, Error> {
    let layers = analyze::analyze_with(net, opts, analysis)?;
    Ok(plan::build(net, &layers, opts))
}

/// Checks `--std-cap` against the mode: a positive number, for the forward and backward
/// modes only (the baselines have no padding-aware He value to cap at).
pub fn check_std_cap(cap: Option<f64>, mode: analyze::Mode) -> Result<(), Error> {
    let fail = |m: String| Err(Error::Analysis(analyze::AnalysisError::Options(m)));
    match cap {
        Some(c) if !(c.is_finite() && c > 0.0) => fail(format!("--std-cap must be a positive number, got {c}")),
        Some(_) if !matches!(mode, analyze::Mode::Forward | analyze::Mode::Backward) => {
            fail(format!("--std-cap applies to the forward and backward modes only, not {}", mode.name()))
        }
        _ => Ok(()),
    }
}

/// What planning a graph needs beyond the mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphRequest {
    pub opts: analyze::Options,
    pub analysis: analyze::Analysis,
    /// α of `--branch-scale` (1 by default).
    pub branch_scale: f64,
    /// `--batch N`: the training batch size, for BatchNorm's batch-mean projection
    /// (`None`: the large-batch limit).
    pub batch: Option<u64>,
}

/// Plans any graph: a chain of unified layers through the paper's analysis (its plans
/// are `cnnc-plan/1`, exactly as before graphs), anything else — residual additions,
/// concatenations, BatchNorm, gates, element-wise functions between layers — through
/// the graph analysis (`cnnc-plan/2`).
pub fn plan_graph(graph: &ir::Graph, req: GraphRequest) -> Result<plan::Plan, Error> {
    if let Ok(net) = unify::unify(graph) {
        return plan_with(&net, req.opts, req.analysis);
    }
    let gopts =
        analyze::graph::GraphOptions { mode: req.opts.mode, std_cap: req.opts.std_cap, branch_scale: req.branch_scale, batch: req.batch };
    let a = analyze::graph::analyze_graph_with(graph, gopts, req.analysis)?;
    analyze::check_graph_finite(graph, &a)?;
    Ok(plan::build_graph(graph, &a, gopts, req.analysis))
}

/// `cnnc lower --nodes`: every node of the graph (a chain's too) with the second moments
/// the graph analysis predicts at its output, forward and backward
/// ([`report::node_table`]).
pub fn node_report(graph: &ir::Graph, req: GraphRequest) -> Result<String, Error> {
    let gopts =
        analyze::graph::GraphOptions { mode: req.opts.mode, std_cap: req.opts.std_cap, branch_scale: req.branch_scale, batch: req.batch };
    let a = analyze::graph::analyze_graph_with(graph, gopts, req.analysis)?;
    analyze::check_graph_finite(graph, &a)?;
    Ok(report::node_table(graph, &a))
}

/// The `lower` dump of any graph: the unified-layer table of a chain, or the graph
/// table (weight layers, joins, BatchNorm nodes) of anything else.
pub fn lower_report(graph: &ir::Graph, req: GraphRequest) -> Result<String, Error> {
    if let Ok(net) = unify::unify(graph) {
        let analysis = analyze::analyze_with(&net, req.opts, req.analysis)?;
        return Ok(report::lower_table(&net, &analysis, req.opts.mode));
    }
    Ok(report::graph_plan_table(&plan_graph(graph, req)?))
}
