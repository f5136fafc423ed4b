//! The graph specs (`specs/resnet18.cnn`, …) against torch's ONNX exports of the same
//! torchvision models (`tests/data/onnx/real/`, made by `make_real.py` and
//! `make_dsl_pairs.py`): the same plan — every number to 1e-9 relative, every weight
//! and BatchNorm parameter named alike (torchvision's state_dict names) — in both modes
//! with both analyses, and torchvision's parameter counts.

use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::{GraphRequest, InputSize};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn plan(path: &Path, mode: Mode, analysis: Analysis) -> Value {
    let model = cnnc::load(path, InputSize::Declared).unwrap_or_else(|e| panic!("{e}"));
    let req = GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
    let plan = model.plan(req).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&plan.to_json()).unwrap()
}

/// Every number of `a` and `b` equal to 1e-9 relative, every array of one length, every
/// object with the same keys; strings (module and node names) are not compared.
fn same_numbers(a: &Value, b: &Value, at: &str, diffs: &mut Vec<String>) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() > 1e-9 * x.abs().max(y.abs()) {
                diffs.push(format!("{at}: {x} vs {y}"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (k, (x, y)) in x.iter().zip(y).enumerate() {
                same_numbers(x, y, &format!("{at}[{k}]"), diffs);
            }
        }
        (Value::Object(x), Value::Object(y)) if x.keys().eq(y.keys()) => {
            for (k, v) in x {
                same_numbers(v, &y[k], &format!("{at}.{k}"), diffs);
            }
        }
        (Value::String(_), Value::String(_)) | (Value::Null, Value::Null) => {}
        (Value::Bool(x), Value::Bool(y)) if x == y => {}
        _ => diffs.push(format!("{at}: {a} vs {b}")),
    }
}

/// The parameter names of a plan, in order: weights and biases, BatchNorm scales and shifts.
fn parameter_names(p: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for l in p["layers"].as_array().unwrap() {
        names.push(l["weight"]["name"].as_str().unwrap().to_string());
        if let Some(b) = l["bias"].get("name") {
            names.push(b.as_str().unwrap().to_string());
        }
    }
    for bn in p.get("batch_norms").and_then(Value::as_array).into_iter().flatten() {
        for key in ["scale", "shift"] {
            if let Some(n) = bn.get(key).and_then(|s| s.get("name")) {
                names.push(n.as_str().unwrap().to_string());
            }
        }
    }
    names
}

fn check(spec: &str, export: &str, parameters: u64) {
    let spec = root().join("specs").join(spec);
    let export = root().join("tests/data/onnx/real").join(export);
    for mode in [Mode::Forward, Mode::Backward] {
        for analysis in [Analysis::Paper, Analysis::Map] {
            let (a, b) = (plan(&spec, mode, analysis), plan(&export, mode, analysis));
            let what = format!("{} vs {}, {} {analysis:?}", spec.display(), export.display(), mode.name());
            assert_eq!(a["summary"]["parameters"], parameters, "{what}");
            assert_eq!(a["format"], "cnnc-plan/2", "{what}");
            let mut diffs = Vec::new();
            for key in ["summary", "layers", "batch_norms", "joins"] {
                same_numbers(&a[key], &b[key], key, &mut diffs);
            }
            assert!(diffs.is_empty(), "{what}: {} differences, first {:?}", diffs.len(), &diffs[..diffs.len().min(5)]);
            assert_eq!(parameter_names(&a), parameter_names(&b), "{what}");
        }
    }
}

#[test]
fn resnet18_plans_as_torch_exports_it() {
    check("resnet18.cnn", "resnet18.train.onnx", 11_689_512);
    check("resnet18_nobn.cnn", "resnet18_nobn.ts.onnx", 11_679_912);
}

#[test]
fn resnet50_plans_as_torch_exports_it() {
    check("resnet50.cnn", "resnet50.train.onnx", 25_557_032);
    check("resnet50_nobn.cnn", "resnet50_nobn.ts.onnx", 25_503_912);
}

#[test]
fn mobilenet_v2_plans_as_torch_exports_it() {
    check("mobilenet_v2.cnn", "mobilenet_v2.train.onnx", 3_504_872);
    check("mobilenet_v2_nobn.cnn", "mobilenet_v2_nobn.ts.onnx", 3_470_760);
}

#[test]
fn densenet_small_plans_as_torch_exports_it() {
    check("densenet_small.cnn", "densenet_small.train.onnx", 74_614);
    check("densenet_small_nobn.cnn", "densenet_small_nobn.ts.onnx", 72_574);
}
