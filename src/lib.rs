//! cnnc: compiles a convolutional-network description into a weight-initialization plan.
//!
//! The pipeline, one module per stage (ARCHITECTURE.md has the picture):
//! `syntax` (text → AST) → `lower` (AST → graph IR) → `unify` (graph → unified layers)
//! → `index` (explicit index sets) and `analyze` (τ, γ, ε, σ², predictions) → `plan`
//! (JSON/YAML). This file chains the stages; each stage is a pure function.
//!
//! The back ends that run networks — `nn` (the candle model), `train`, `probe`,
//! `experiment`, `plot` and `emit::runtime` — exist with the `train` feature (on by
//! default) only: without it nothing here links candle, and the compiler checks that
//! the analysis does not need it.

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
    #[error("{0}")]
    Analysis(#[from] analyze::AnalysisError),
    /// Errors of the ONNX importer and exporter.
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
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

/// What planning a graph needs beyond the mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphRequest {
    pub opts: analyze::Options,
    pub analysis: analyze::Analysis,
    /// α of `--branch-scale` (1 by default).
    pub branch_scale: f64,
}

/// Plans any graph: a chain of unified layers through the paper's analysis (its plans
/// are `cnnc-plan/1`, exactly as before graphs), anything else — residual additions,
/// concatenations, BatchNorm, gates, element-wise functions between layers — through
/// the graph analysis (`cnnc-plan/2`).
pub fn plan_graph(graph: &ir::Graph, req: GraphRequest) -> Result<plan::Plan, Error> {
    if let Ok(net) = unify::unify(graph) {
        return plan_with(&net, req.opts, req.analysis);
    }
    let gopts = analyze::graph::GraphOptions { mode: req.opts.mode, std_cap: req.opts.std_cap, branch_scale: req.branch_scale };
    let a = analyze::graph::analyze_graph_with(graph, gopts, req.analysis)?;
    Ok(plan::build_graph(graph, &a, gopts, req.analysis))
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

/// Writes `contents` to `path` atomically: a temporary file beside it, then a rename,
/// so that an existing file is never left half-written.
pub fn write_atomic(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
