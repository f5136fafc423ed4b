//! ONNX front end and back end: protobuf ⇄ the graph IR.
//!
//! In: the bytes of an ONNX model (`ModelProto`). Out: an [`ir::Graph`] (the same form the
//! `.cnn` front end builds), so unification, analysis and planning are shared. Back:
//! [`export`] writes a graph and its plan as a runnable ONNX model, [`reinit`] rewrites the
//! initializers of an existing model from its plan.
//!
//! Invariants:
//! - Only this module touches protobuf types; nothing outside sees [`proto`] except through
//!   [`ModelProto`] values handed back to the CLI for encoding.
//! - Planning never reads weight bytes: [`load`] walks the file's protobuf framing and
//!   seeks past the large tensor payloads (`slim.rs`), then decodes the rest. A full
//!   [`decode`] (for `init`) does not copy them: the generated code stores `bytes` fields
//!   as [`Bytes`], which prost slices out of the input buffer.
//! - Import never panics on bad input: every problem is an [`OnnxError`].
//!
//! `proto` (`onnx.rs`) is generated once from the vendored `onnx.proto` and committed, so
//! the build needs no `protoc`. A test checks the hash recorded at the top of `onnx.rs`
//! against `onnx.proto`. To regenerate, in a scratch crate outside this repository that
//! depends on `prost-build = "0.14"` (and has `protoc` on the path):
//!
//! ```text
//! prost_build::Config::new().bytes(["."]).out_dir(OUT)
//!     .compile_protos(&["onnx.proto"], &["."])
//! ```
//!
//! then copy `OUT/onnx.rs` here below the four header lines, with the new FNV-1a 64 hash.

#[allow(clippy::all, missing_docs, rustdoc::all)]
#[path = "onnx.rs"]
pub mod proto;

mod budget;
mod consts;
mod export;
mod import;
pub mod names;
mod slim;

pub use export::{encode, export, reinit, write_model, Normal};
pub use import::{import, ImportOptions, SUPPORTED_OPS};
pub use prost::bytes::Bytes;
pub use proto::ModelProto;

use prost::Message;
use std::path::Path;

/// Unsupported nodes named in an error at most (the count says how many more).
pub const UNSUPPORTED_SHOWN: usize = 50;

/// An error of the ONNX importer or exporter.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read {path}")]
    Io { path: String, source: std::io::Error },
    /// An output file that cannot be written (the message says why).
    #[error("cannot write {path}")]
    Write { path: String, source: std::io::Error },
    /// The bytes are not a protobuf `ModelProto`, or not an ONNX model.
    #[error("not a valid ONNX model: {0}")]
    Decode(String),
    /// Every node whose operator the importer does not handle, as (node, op_type).
    #[error("{} unsupported ONNX node{}: {}{} (cnnc imports graphs of {})", .0.len(), if .0.len() == 1 { "" } else { "s" },
        .0.iter().take(UNSUPPORTED_SHOWN).map(|(n, op)| format!("`{n}` ({op})")).collect::<Vec<_>>().join(", "),
        if .0.len() > UNSUPPORTED_SHOWN { format!(" and {} more", .0.len() - UNSUPPORTED_SHOWN) } else { String::new() },
        SUPPORTED_OPS.join(", "))]
    Unsupported(Vec<(String, String)>),
    /// A problem located at one node.
    #[error("node `{node}` ({op}): {message}")]
    Node { node: String, op: String, message: String },
    /// A problem of the model as a whole (inputs, cycles, opsets, sizes).
    #[error("{0}")]
    Model(String),
}

/// Decodes a model. `bytes` is kept alive by the returned model's tensor data (no copy).
/// A buffer that decodes but has no graph is reported as not ONNX.
pub fn decode(bytes: Bytes) -> Result<ModelProto, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    if model.graph.is_none() {
        return Err(OnnxError::Decode("the file decodes as protobuf but has no graph".into()));
    }
    Ok(model)
}

/// Reads a model file with a single read and decodes it (weights are not copied again).
pub fn read_model(path: &Path) -> Result<ModelProto, OnnxError> {
    let data = std::fs::read(path).map_err(|source| OnnxError::Io { path: path.display().to_string(), source })?;
    decode(Bytes::from(data))
}

/// Reads a model file for planning: every field but the large weight payloads, which are
/// skipped with a seek (see `slim.rs`). The model's tensors keep their dims and types.
pub fn read_model_shapes(path: &Path) -> Result<ModelProto, OnnxError> {
    decode(Bytes::from(slim::read_slim(path)?))
}

/// [`read_model_shapes`] from any seekable reader of `len` bytes, positioned at the start.
pub fn decode_shapes<R: std::io::BufRead + std::io::Seek>(r: R, len: u64) -> Result<ModelProto, OnnxError> {
    decode(Bytes::from(slim::slim(r, len)?))
}

/// Reads (shapes only), decodes and imports a model file into the graph IR.
pub fn load(path: &Path, opts: &ImportOptions) -> Result<crate::ir::Graph, OnnxError> {
    import(&read_model_shapes(path)?, opts)
}
