//! `cnnc._cnnc`: the compiler's planning entry points for Python.
//!
//! In: a model file's path, or its bytes (a `.cnn` text or an ONNX model), and the options
//! of `cnnc plan`. Out: the plan as the JSON text `cnnc plan` writes, and the importer's
//! notes. The Python side (`cnnc/__init__.py`) parses the JSON into a dict and raises
//! `cnnc.PlanError` (defined here) with the compiler's message on any error.
//!
//! Everything goes through the library's own `load` / `load_bytes` and `Model::plan`, the
//! functions the CLI calls, so a plan from Python is the CLI's plan byte for byte.

use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::{FileKind, GraphRequest, InputSize, Model};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pyo3::create_exception!(
    _cnnc,
    PlanError,
    PyValueError,
    "The compiler refused the model or the options; the message is cnnc's (a node, a layer, or file:line:col)."
);

/// The request, checked as `cnnc plan` checks its flags.
fn request(mode: &str, analysis: &str, std_cap: Option<f64>, branch_scale: f64, batch: Option<u64>) -> Result<GraphRequest, String> {
    let wanted = mode.replace('_', "-");
    let mode = Mode::ALL.into_iter().find(|m| m.name() == wanted).ok_or_else(|| {
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        format!("mode must be one of {}, got {mode:?}", names.join(", "))
    })?;
    let analysis = [Analysis::Paper, Analysis::Map]
        .into_iter()
        .find(|a| a.name() == analysis)
        .ok_or_else(|| format!("analysis must be paper or map, got {analysis:?}"))?;
    cnnc::check_std_cap(std_cap, mode).map_err(|e| e.to_string())?;
    if let Some(n @ 0..=1) = batch {
        return Err(format!("batch must be at least 2 (a batch-statistics BatchNorm of one sample is zero), got {n}"));
    }
    Ok(GraphRequest { opts: Options { mode, std_cap }, analysis, branch_scale, batch })
}

fn input_size(shape: Option<Vec<u64>>) -> Result<InputSize, String> {
    match shape.as_deref() {
        None => Ok(InputSize::Declared),
        Some(&[c, h, w]) if c > 0 && h > 0 && w > 0 => Ok(InputSize::Chw([c, h, w])),
        Some(s) => Err(format!("input_shape must be three positive sizes (C, H, W), got {s:?}")),
    }
}

/// The request and the input size, checked as `cnnc plan` checks its flags.
fn options(
    mode: &str,
    analysis: &str,
    input_shape: Option<Vec<u64>>,
    std_cap: Option<f64>,
    branch_scale: f64,
    batch: Option<u64>,
) -> PyResult<(GraphRequest, InputSize)> {
    let req = request(mode, analysis, std_cap, branch_scale, batch).map_err(PlanError::new_err)?;
    Ok((req, input_size(input_shape).map_err(PlanError::new_err)?))
}

/// Plans a loaded model: the JSON of `cnnc plan` and the importer's notes.
fn plan_model(model: Result<Model, cnnc::Error>, req: GraphRequest) -> Result<(String, Vec<String>), String> {
    let model = model.map_err(|e| e.to_string())?;
    let plan = model.plan(req).map_err(|e| e.to_string())?;
    Ok((plan.to_json(), model.graph.notes.clone()))
}

/// `cnnc plan PATH`: the plan's JSON text and the importer's notes.
#[pyfunction]
#[pyo3(signature = (path, mode, analysis, input_shape, std_cap, branch_scale, batch))]
fn plan_path(
    py: Python<'_>,
    path: std::path::PathBuf,
    mode: &str,
    analysis: &str,
    input_shape: Option<Vec<u64>>,
    std_cap: Option<f64>,
    branch_scale: f64,
    batch: Option<u64>,
) -> PyResult<(String, Vec<String>)> {
    let (req, input) = options(mode, analysis, input_shape, std_cap, branch_scale, batch)?;
    py.detach(|| plan_model(cnnc::load(&path, input), req)).map_err(PlanError::new_err)
}

/// The same for a file in memory: `kind` is "onnx" or "cnn", `name` what errors call it.
#[pyfunction]
#[pyo3(signature = (data, kind, name, mode, analysis, input_shape, std_cap, branch_scale, batch))]
#[allow(clippy::too_many_arguments)]
fn plan_bytes(
    py: Python<'_>,
    data: &[u8],
    kind: &str,
    name: &str,
    mode: &str,
    analysis: &str,
    input_shape: Option<Vec<u64>>,
    std_cap: Option<f64>,
    branch_scale: f64,
    batch: Option<u64>,
) -> PyResult<(String, Vec<String>)> {
    let kind = match kind {
        "onnx" => FileKind::Onnx,
        "cnn" => FileKind::Cnn,
        k => return Err(PlanError::new_err(format!("kind must be onnx or cnn, got {k:?}"))),
    };
    let (req, input) = options(mode, analysis, input_shape, std_cap, branch_scale, batch)?;
    py.detach(|| plan_model(cnnc::load_bytes(name, data, kind, input), req)).map_err(PlanError::new_err)
}

#[pymodule]
fn _cnnc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PlanError", m.py().get_type::<PlanError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(plan_path, m)?)?;
    m.add_function(wrap_pyfunction!(plan_bytes, m)?)?;
    Ok(())
}
