//! Code emission: a network and its plan → source code for other runtimes.
//!
//! In: a [`Network`](crate::unify::Network) (or, for candle, a graph) with its
//! [`Plan`](crate::plan::Plan) (and, for candle, the `.cnn` text it came from). Out: files as text, nothing written to disk here.
//! - [`candle::generate`]: a standalone Rust crate (model struct of candle layers whose
//!   `new(vb)` draws each weight with its plan's σ, `forward`, and a training binary with
//!   the data pipeline and SGD of `cnnc train`); [`candle::generate_graph`] the same for
//!   any graph `nn::GraphModel` runs (from the graph IR and a graph plan: the forward is
//!   written out node by node); `runtime` (with the `train` feature) is
//!   what such a crate links against to draw cnnc's exact weights for a seed. Generating
//!   needs no candle: the generated crate depends on cnnc with the feature.
//! - [`pytorch::init_module`]: a self-contained Python module that applies the plan to a
//!   `torch.nn.Module`, built around `python/cnnc/_apply.py` (the Python package's applier).
//!
//! Invariants: output is deterministic (same inputs, same bytes) and rustfmt-clean, so the
//! checked-in `codegen/f34/` can be compared byte for byte; what the generator cannot
//! express is an [`EmitError`] naming the layer or the graph node, never a panic.

pub mod candle;
pub mod pytorch;
#[cfg(feature = "train")]
pub mod runtime;

#[cfg(feature = "train")]
pub use runtime::SeededVarMap;

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("layer {layer} (`{module}`): {message}")]
    Layer { layer: usize, module: String, message: String },
    #[error("the plan does not fit the network: {0}")]
    PlanMismatch(String),
    #[error("{0}")]
    Unsupported(String),
    /// Graph nodes the generator cannot express, every one of them.
    #[error("{}", .0.join("\n"))]
    Nodes(Vec<String>),
}

/// One generated file: its path relative to the output directory, and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub text: String,
}

/// Writes `files` under `dir` (creating folders), each atomically; other files in `dir`
/// are left alone.
pub fn write_files(dir: &std::path::Path, files: &[File]) -> std::io::Result<()> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::write_atomic(&path, f.text.as_bytes()).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.path)))?;
    }
    Ok(())
}
