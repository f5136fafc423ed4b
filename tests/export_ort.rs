//! `cnnc export-onnx` of graphs runs in onnxruntime and gives cnnc's own candle model's
//! outputs for the same weights: ResNet-18 (residual Adds, a strided downsample),
//! MobileNetV2 (depthwise convs, ReLU6 as Clip, inverted residuals) and the small DenseNet
//! (Concat), each with training-mode BatchNorm (batch statistics in both), at 64×64 (batch 8: at 32×32 the last BatchNorms normalize 4 values, and float order alone moves the output by 1e-3); the
//! weights are the export's own initializers, set by name into `nn::GraphModel`. And the
//! export plans as its source does.
//!
//! onnxruntime runs in Python (the venv `scripts/torch/ci-pytest.sh` makes, or
//! `CNNC_ORT_PYTHON`). Where it is missing the test says why and passes; under CI (which
//! installs it) it fails instead.

use candle_core::{DType, Device, Tensor};
use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::nn::GraphModel;
use cnnc::onnx;
use cnnc::{GraphRequest, InputSize};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with onnxruntime, or why there is none.
fn ort_python() -> Result<PathBuf, String> {
    let py = match std::env::var_os("CNNC_ORT_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
            cache.join("cnnc/torch-venv/bin/python")
        }
    };
    let out = Command::new(&py).args(["-c", "import onnxruntime, onnx"]).output().map_err(|e| format!("{}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!("{} cannot import onnxruntime and onnx: {}", py.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(py)
}

/// Runs the model at `model` in onnxruntime on the float32 input in `input` (shape
/// `dims`), after onnx's checker; returns the output's values.
fn run_ort(py: &Path, model: &Path, input: &Path, dims: &[usize], out: &Path) -> Vec<f32> {
    let script = r#"
import sys, numpy as np, onnx, onnxruntime as ort
model, inp, out = sys.argv[1:4]
dims = [int(d) for d in sys.argv[4:]]
onnx.checker.check_model(onnx.load(model), full_check=True)
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
x = np.fromfile(inp, dtype="<f4").reshape(dims)
y = s.run(["output"], {s.get_inputs()[0].name: x})[0]
y.astype("<f4").tofile(out)
"#;
    let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    let res = Command::new(py).arg("-c").arg(script).arg(model).arg(input).arg(out).args(&dims).output().unwrap();
    assert!(res.status.success(), "onnxruntime on {}: {}", model.display(), String::from_utf8_lossy(&res.stderr));
    std::fs::read(out).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn floats(t: &onnx::proto::TensorProto) -> Vec<f32> {
    match &t.raw_data {
        Some(raw) => raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        None => t.float_data.clone(),
    }
}

fn check(spec: &str, py: &Path, dir: &Path) {
    let path = root().join("specs").join(spec);
    let model = cnnc::load(&path, InputSize::Chw([3, 64, 64])).unwrap_or_else(|e| panic!("{e}"));
    let graph = model.graph.clone();
    let req =
        GraphRequest { opts: Options { mode: Mode::Forward, std_cap: None }, analysis: Analysis::Map, branch_scale: 1.0, batch: None };
    let plan = model.plan(req).unwrap();
    let proto = onnx::export(&graph, &plan, 11).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let file = dir.join(spec.replace(".cnn", ".onnx"));
    std::fs::write(&file, onnx::encode(&proto).unwrap()).unwrap();

    // The export plans as its source.
    let exported = cnnc::load(&file, InputSize::Declared).unwrap_or_else(|e| panic!("{e}"));
    assert!(exported.plan(req).unwrap().to_json() == plan.to_json(), "{spec}: the export's plan differs from the source's");

    // cnnc's candle model with the export's weights (every parameter named in both).
    let m = GraphModel::new(&graph, &plan, 0, &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("{e}"));
    let inits: std::collections::HashMap<&str, &onnx::proto::TensorProto> =
        proto.graph.as_ref().unwrap().initializer.iter().map(|t| (t.name(), t)).collect();
    for (name, var) in m.named_vars() {
        let t = inits.get(name.as_str()).unwrap_or_else(|| panic!("{spec}: the export has no initializer `{name}`"));
        let v = Tensor::from_vec(floats(t), var.as_tensor().dims(), &Device::Cpu).unwrap();
        var.set(&v).unwrap();
    }
    let dims = [8usize, 3, 64, 64];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let x: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
        })
        .collect();
    let input = dir.join("input.f32");
    std::fs::write(&input, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    m.set_training(true);
    let ours: Vec<f32> = m.forward(&Tensor::from_vec(x, &dims, &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let theirs = run_ort(py, &file, &input, &dims, &dir.join("output.f32"));
    assert_eq!(ours.len(), theirs.len(), "{spec}: output sizes");
    let scale = ours.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("{spec}: largest |cnnc − onnxruntime| {worst:.3e} of outputs up to {scale:.3}");
    assert!(worst <= 1e-4 * scale.max(1.0), "{spec}: cnnc and onnxruntime differ by {worst} (outputs up to {scale})");
}

#[test]
fn exported_graphs_run_in_onnxruntime_as_in_cnnc() {
    let py = match ort_python() {
        Ok(py) => py,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {why} (scripts/torch/ci-pytest.sh installs it)");
            return;
        }
        Err(why) => panic!("CI installs onnxruntime (scripts/torch/ci-pytest.sh): {why}"),
    };
    let dir = std::env::temp_dir().join(format!("cnnc-export-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for spec in ["resnet18.cnn", "mobilenet_v2.cnn", "densenet_small.cnn"] {
        check(spec, &py, &dir);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
