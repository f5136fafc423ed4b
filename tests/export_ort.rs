//! `cnnc export-onnx` of graphs runs in onnxruntime and gives cnnc's own candle model's
//! outputs for the same weights: ResNet-18 (residual Adds, a strided downsample),
//! MobileNetV2 (depthwise convs, ReLU6 as Clip, inverted residuals) and the small DenseNet
//! (Concat), each with training-mode BatchNorm (batch statistics in both), at 64×64 (batch 8: at 32×32 the last BatchNorms normalize 4 values, and float order alone moves the output by 1e-3); the
//! weights are the export's own initializers, set by name into `nn::GraphModel`; the same
//! for every kind of resize, group/instance/layer norms and channel shuffles (hand-built
//! graphs), and torch's exports of resizes to any size, convs of standardized weights,
//! efficient channel, global-context and split attention, ResNet-18 with GroupNorm and
//! ShuffleNetV2. And each export plans as its source does, the ops written in more than
//! one way reading back as themselves (onnxruntime or not).
//!
//! onnxruntime runs in Python (the venv `scripts/torch/ci-pytest.sh` makes, or
//! `CNNC_ORT_PYTHON`). Where it is missing the test says why and passes; under CI (which
//! installs it) it fails instead.

use candle_core::{DType, Device, Tensor};
use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::ir::Op;
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
    let model = cnnc::load(&root().join("specs").join(spec), InputSize::Chw([3, 64, 64])).unwrap_or_else(|e| panic!("{e}"));
    check_graph(spec, &model.graph, 8, py, dir);
}

/// Exports `graph`, and checks that the export plans as `graph` does.
fn export_and_replan(what: &str, graph: &cnnc::ir::Graph, dir: &Path) -> (onnx::proto::ModelProto, cnnc::plan::Plan, PathBuf) {
    let req =
        GraphRequest { opts: Options { mode: Mode::Forward, std_cap: None }, analysis: Analysis::Map, branch_scale: 1.0, batch: None };
    let plan = cnnc::plan_graph(graph, req).unwrap_or_else(|e| panic!("{what}: {e}"));
    let proto = onnx::export(graph, &plan, 11).unwrap_or_else(|e| panic!("{what}: {e}"));
    let file = dir.join(format!("{}.onnx", what.replace(['/', '.'], "_")));
    std::fs::write(&file, onnx::encode(&proto).unwrap()).unwrap();
    let exported = cnnc::load(&file, InputSize::Declared).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut replanned = exported.plan(req).unwrap_or_else(|e| panic!("{what}: {e}"));
    // A standardized weight's gain parameter is written at the plan's value: the export
    // applies the plan's gain (`network_gain`), the rest of its plan is the source's.
    for (a, b) in replanned.layers.iter_mut().zip(&plan.layers) {
        if let (Some(a), Some(b)) = (a.standardized.as_mut(), b.standardized.as_ref()) {
            if b.gain_param.is_some() {
                assert!(
                    (a.network_gain - b.gain).abs() <= 1e-6 * b.gain,
                    "{what}: the export applies gain {} for {}",
                    a.network_gain,
                    b.gain
                );
                a.network_gain = b.network_gain;
            }
        }
    }
    assert_eq!(exported.graph.nodes.len(), graph.nodes.len(), "{what}: the export's graph has another number of nodes");
    // The ops export-onnx writes in more than one way read back as themselves.
    for (a, b) in exported.graph.nodes.iter().zip(&graph.nodes) {
        if matches!(
            b.op,
            Op::Resize { .. }
                | Op::Resample(_)
                | Op::Shuffle { .. }
                | Op::BatchNorm(_)
                | Op::RadixSoftmax { .. }
                | Op::AddBroadcast
                | Op::SoftmaxPositions
                | Op::AttentionPool
                | Op::SwapChannelsWidth
                | Op::Activation(_)
                | Op::Elementwise(_)
                | Op::Conv(_)
                | Op::Dilate { .. }
        ) {
            let stored = |n: &cnnc::ir::Node| n.params.as_ref().map_or((false, None), |p| (p.transposed, p.shape.clone()));
            assert_eq!(stored(a), stored(b), "{what}: node `{}` reads back with its weight stored otherwise", b.name);
            assert_eq!((&a.op, a.output), (&b.op, b.output), "{what}: node `{}` reads back as another op", b.name);
        }
    }
    assert!(replanned.to_json() == plan.to_json(), "{what}: the export's plan differs from the source's");
    (proto, plan, file)
}

/// Exports `graph` (checking that the export plans as its source) and runs it in
/// onnxruntime and in cnnc's candle model with the same weights, on a batch of `batch`.
fn check_graph(spec: &str, graph: &cnnc::ir::Graph, batch: usize, py: &Path, dir: &Path) {
    let (proto, plan, file) = export_and_replan(spec, graph, dir);

    // cnnc's candle model with the export's weights (every parameter named in both).
    let m = GraphModel::new(graph, &plan, 0, &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("{e}"));
    let inits: std::collections::HashMap<&str, &onnx::proto::TensorProto> =
        proto.graph.as_ref().unwrap().initializer.iter().map(|t| (t.name(), t)).collect();
    for (name, var) in m.named_vars() {
        let t = inits.get(name.as_str()).unwrap_or_else(|| panic!("{spec}: the export has no initializer `{name}`"));
        let v = Tensor::from_vec(floats(t), var.as_tensor().dims(), &Device::Cpu).unwrap();
        var.set(&v).unwrap();
    }
    let mut dims = vec![batch];
    dims.extend(graph.input.dims().iter().map(|&d| d as usize));
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
    let ours: Vec<f32> =
        m.forward(&Tensor::from_vec(x, dims.as_slice(), &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
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
    for path in ["tests/data/onnx/resize/resize.ts.onnx", "tests/data/onnx/resize/resize.dynamo.onnx"] {
        let graph = cnnc::load(&root().join(path), InputSize::Declared).unwrap_or_else(|e| panic!("{e}")).graph;
        check_graph(path, &graph, 4, &py, &dir);
    }
    check_graph("resamplings", &resamplings(), 4, &py, &dir);
    check_graph("normalizations_and_shuffles", &normalizations_and_shuffles(), 4, &py, &dir);
    check_graph("element_wise_functions", &element_wise_functions(), 4, &py, &dir);
    for path in TORCH_EXPORTS {
        let graph = load_real(path);
        check_graph(path, &graph, 2, &py, &dir);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A graph of every kind of resize: nearest and linear upsampling by whole factors
/// (`Op::Resize`), and resamplings to any size with each coordinate transform and
/// nearest rounding, by `sizes` and by a float32 `scales` that is not output/input.
fn resamplings() -> cnnc::ir::Graph {
    use cnnc::ir::{self, CoordTransform as T, NearestMode as R, Node, Origin, Shape, ValueId};
    let mut nodes: Vec<Node> = Vec::new();
    let mut push = |op: Op, out: [u64; 2]| {
        let name = format!("r{}", nodes.len());
        let output = Shape::Image { c: 2, h: out[0], w: out[1] };
        let inputs = vec![ValueId(nodes.len())];
        nodes.push(Node { op, inputs, output, name: name.clone(), params: None, origin: Origin::OnnxNode(name) });
    };
    let pad = [ir::Pad { begin: 1, end: 1 }; 2];
    let conv = ir::Conv { in_channels: 2, out_channels: 2, kernel: [3, 3], stride: [1, 1], pad, dilation: [1, 1], groups: 1, bias: true };
    push(Op::Conv(conv), [3, 4]);
    push(Op::Resize { scale: [2, 3], linear: false }, [6, 12]);
    let resample =
        |linear: bool, transform: T, nearest: R, scale: [f64; 2]| Op::Resample(ir::Resample { linear, transform, nearest, scale });
    push(resample(true, T::HalfPixel, R::Floor, [5.0 / 6.0, 7.0 / 12.0]), [5, 7]);
    push(resample(true, T::AlignCorners, R::Floor, [9.0 / 5.0, 4.0 / 7.0]), [9, 4]);
    push(resample(false, T::Asymmetric, R::Floor, [0.5, 1.75]), [4, 7]);
    push(resample(false, T::HalfPixel, R::RoundPreferCeil, [7.0 / 4.0, 5.0 / 7.0]), [7, 5]);
    push(resample(false, T::TfHalfPixelForNn, R::Ceil, [3.0 / 7.0, 8.0 / 5.0]), [3, 8]);
    push(resample(true, T::PytorchHalfPixel, R::Floor, [2.5, 1.0 / 8.0]), [7, 1]);
    push(resample(false, T::AlignCorners, R::RoundPreferFloor, [6.0 / 7.0, 3.0]), [6, 3]);
    push(resample(false, T::PytorchHalfPixel, R::RoundPreferFloor, [1.0 / 3.0, 3.0]), [2, 9]);
    cnnc::ir::Graph { name: "resamplings".into(), input: Shape::Image { c: 2, h: 3, w: 4 }, nodes, notes: Vec::new() }
}

/// Resizes and resamplings export as ONNX `Resize` and read back as the same ops with the
/// same plan (onnxruntime or not).
#[test]
fn resizes_export_and_read_back_as_themselves() {
    let dir = std::env::temp_dir().join(format!("cnnc-export-resize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    export_and_replan("resamplings", &resamplings(), &dir);
    for path in ["tests/data/onnx/resize/resize.ts.onnx", "tests/data/onnx/resize/resize.dynamo.onnx"] {
        let graph = cnnc::load(&root().join(path), InputSize::Declared).unwrap_or_else(|e| panic!("{e}")).graph;
        export_and_replan(path, &graph, &dir);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// torch's exports with efficient channel, global-context and split attention, convs of
/// standardized weights (BiT's `StdConv2d`, NF-ResNets'
/// `ScaledStdConv2d`), group norms (ResNet-18 with GroupNorm: TorchScript's
/// InstanceNormalization of a grouped view, dynamo's GroupNormalization) and channel
/// shuffles (ShuffleNetV2), and a U-Net's transposed convs (stride 2, BatchNorm in
/// training mode).
const TORCH_EXPORTS: [&str; 14] = [
    "tests/data/onnx/attn/eca.ts.onnx",
    "tests/data/onnx/attn/eca.dynamo.onnx",
    "tests/data/onnx/attn/gc.ts.onnx",
    "tests/data/onnx/attn/gc.dynamo.onnx",
    "tests/data/onnx/attn/split.ts.onnx",
    "tests/data/onnx/attn/split.dynamo.onnx",
    "tests/data/onnx/std/std_conv.ts.onnx",
    "tests/data/onnx/std/scaled_std_conv.ts.onnx",
    "tests/data/onnx/real/resnet18_gn.ts.weights.onnx",
    "tests/data/onnx/real/resnet18_gn.dynamo.onnx",
    "tests/data/onnx/real/shufflenet_v2_x1_0.ts.weights.onnx",
    "tests/data/onnx/real/shufflenet_v2_x1_0.dynamo.onnx",
    "tests/data/onnx/real/unet.train.onnx",
    "tests/data/onnx/real/unet.dynamo.onnx",
];

/// A model of [`TORCH_EXPORTS`] at its declared size, or at 64×64 where its sizes are
/// symbolic.
fn load_real(path: &str) -> cnnc::ir::Graph {
    let model =
        cnnc::load(&root().join(path), InputSize::Declared).or_else(|_| cnnc::load(&root().join(path), InputSize::Chw([3, 64, 64])));
    model.unwrap_or_else(|e| panic!("{e}")).graph
}

/// Group, instance and layer norms (over (C, H, W), and over the channels at each
/// position, with and without β) and channel shuffles between convs, the first of a
/// standardized weight.
fn normalizations_and_shuffles() -> cnnc::ir::Graph {
    use cnnc::ir::{self, BatchNorm, Node, Origin, Shape, ValueId};
    let mut nodes: Vec<Node> = Vec::new();
    let mut push = |op: Op, c: u64| {
        let name = format!("n{}", nodes.len());
        let output = Shape::Image { c, h: 5, w: 4 };
        let inputs = vec![ValueId(nodes.len())];
        nodes.push(Node { op, inputs, output, name: name.clone(), params: None, origin: Origin::OnnxNode(name) });
    };
    let pad = [ir::Pad { begin: 1, end: 1 }; 2];
    let conv = |i: u64, o: u64| {
        Op::Conv(ir::Conv { in_channels: i, out_channels: o, kernel: [3, 3], stride: [1, 1], pad, dilation: [1, 1], groups: 1, bias: true })
    };
    let norm = |k: usize, groups: u64, per_position: bool, affine: Vec<u64>, eps: f64, shift: bool| {
        Op::BatchNorm(BatchNorm {
            channels: 8,
            epsilon: eps,
            training: true,
            groups: Some(groups),
            per_position,
            scale: format!("norm{k}.weight"),
            shift: if shift { format!("norm{k}.bias") } else { String::new() },
            affine,
        })
    };
    push(conv(3, 8), 8);
    push(norm(1, 2, false, vec![8], 1e-5, true), 8);
    push(Op::Shuffle { groups: 2 }, 8);
    push(norm(2, 8, false, vec![8], 1e-3, true), 8);
    push(norm(3, 1, false, vec![8, 5, 4], 1e-5, true), 8);
    push(norm(4, 1, false, vec![8, 5, 4], 1e-5, false), 8);
    push(Op::Shuffle { groups: 4 }, 8);
    push(norm(5, 1, true, vec![8], 1e-6, true), 8);
    push(norm(6, 1, true, vec![8], 1e-6, false), 8);
    push(norm(7, 1, false, vec![8], 1e-5, true), 8);
    push(conv(8, 4), 4);
    let mut graph = cnnc::ir::Graph { name: "norms".into(), input: Shape::Image { c: 3, h: 5, w: 4 }, nodes, notes: Vec::new() };
    // A standardized weight with a gain parameter: its ReduceMeans take their axes as an
    // input at GroupNormalization's opset 21.
    let standardized = ir::Standardized { gain: 0.5, gain_param: Some(("n0.gain".into(), 1.0)), epsilon: 1e-5f32 as f64 };
    graph.nodes[0].params = Some(ir::ParamNames {
        weight: "n0.weight".into(),
        bias: Some("n0.bias".into()),
        shape: None,
        standardized: Some(standardized),
        transposed: false,
    });
    graph
}

/// Convs, each followed by one of the element-wise functions the importer knows: the
/// activations (GELU, SiLU, leaky ReLU, tanh), ReLU6 and hard-swish as MobileNets have
/// them, ELU, softplus, mish, a hard sigmoid, and an expression of building blocks
/// (torch's GELU at opset 13: x · 0.5 · (1 + erf(x / √2)), √2 a float32 as in torch's
/// export), and a sigmoid of x − 0.5.
fn element_wise_functions() -> cnnc::ir::Graph {
    use cnnc::ir::{self, Activation as A, Expr, Fn1, Node, Origin, Shape, ValueId};
    let apply = |f: Fn1| Op::Elementwise(Expr::Apply(f, Box::new(Expr::X)));
    let b = Box::new;
    let torch_gelu = Expr::Mul(
        b(Expr::Mul(b(Expr::X), b(Expr::Const(0.5)))),
        b(Expr::Add(
            b(Expr::Const(1.0)),
            b(Expr::Apply(Fn1::Erf, b(Expr::Div(b(Expr::X), b(Expr::Const(std::f64::consts::SQRT_2 as f32 as f64)))))),
        )),
    );
    let sigmoid_of_half = Expr::Apply(Fn1::Act(A::Sigmoid), b(Expr::Sub(b(Expr::X), b(Expr::Const(0.5)))));
    let fs = [
        Op::Activation(A::Gelu),
        Op::Activation(A::Silu),
        Op::Activation(A::LeakyRelu { slope: 0.1 }),
        Op::Activation(A::Tanh),
        apply(Fn1::Clip { min: 0.0, max: 6.0 }),
        apply(Fn1::HardSwish),
        apply(Fn1::Elu { alpha: 1.0 }),
        apply(Fn1::Softplus),
        apply(Fn1::Mish),
        // ONNX's attributes are float32: a hard sigmoid read from a model has alpha 0.2f32.
        apply(Fn1::HardSigmoid { alpha: 0.2f32 as f64, beta: 0.5 }),
        Op::Elementwise(torch_gelu),
        Op::Elementwise(sigmoid_of_half),
    ];
    let mut nodes: Vec<Node> = Vec::new();
    let pad = [ir::Pad { begin: 1, end: 1 }; 2];
    let mut c_in = 3;
    for f in fs {
        for op in [
            Op::Conv(ir::Conv {
                in_channels: c_in,
                out_channels: 6,
                kernel: [3, 3],
                stride: [1, 1],
                pad,
                dilation: [1, 1],
                groups: 1,
                bias: true,
            }),
            f,
        ] {
            let name = format!("n{}", nodes.len());
            let inputs = vec![ValueId(nodes.len())];
            nodes.push(Node {
                op,
                inputs,
                output: Shape::Image { c: 6, h: 5, w: 4 },
                name: name.clone(),
                params: None,
                origin: Origin::OnnxNode(name),
            });
        }
        c_in = 6;
    }
    cnnc::ir::Graph { name: "functions".into(), input: Shape::Image { c: 3, h: 5, w: 4 }, nodes, notes: Vec::new() }
}

/// Group, instance and layer norms, channel shuffles, convs of standardized weights and
/// the attention ops export in the forms the importer reads back as themselves, with
/// the same plan (onnxruntime or not).
#[test]
fn ops_export_and_read_back_as_themselves() {
    let dir = std::env::temp_dir().join(format!("cnnc-export-norms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    export_and_replan("normalizations_and_shuffles", &normalizations_and_shuffles(), &dir);
    export_and_replan("element_wise_functions", &element_wise_functions(), &dir);
    for path in TORCH_EXPORTS {
        let graph = load_real(path);
        export_and_replan(path, &graph, &dir);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What ONNX cannot say as cnnc has it is an error naming the node: a resampling whose
/// scale is neither output/input nor a float32, a group norm without γ, a softmax over
/// the positions read by something other than an attention pool.
#[test]
fn unwritable_nodes_are_errors_naming_them() {
    let req =
        GraphRequest { opts: Options { mode: Mode::Forward, std_cap: None }, analysis: Analysis::Map, branch_scale: 1.0, batch: None };
    let export = |g: &cnnc::ir::Graph| {
        let plan = cnnc::plan_graph(g, req).unwrap_or_else(|e| panic!("{e}"));
        onnx::export(g, &plan, 0).map(|_| ()).unwrap_err().to_string()
    };
    let mut g = resamplings();
    let Op::Resample(r) = &mut g.nodes[2].op else { panic!("node 2 resamples") };
    r.scale = [0.8, 0.6];
    let err = export(&g);
    assert!(err.contains("node `r2` (resample): scale [0.8, 0.6] from (2,6,12) to (2,5,7)"), "{err}");

    let mut g = normalizations_and_shuffles();
    let Op::BatchNorm(bn) = &mut g.nodes[1].op else { panic!("node 1 normalizes") };
    (bn.scale, bn.shift) = (String::new(), String::new());
    let err = export(&g);
    assert!(err.contains("node `n1` (group:2): export-onnx writes normalizations with γ"), "{err}");

    let mut g = load_real("tests/data/onnx/attn/gc.ts.onnx");
    let k = g.nodes.iter().position(|n| n.op == Op::SoftmaxPositions).unwrap();
    let (c, h, w) = g.nodes[k].output.chw();
    g.nodes.insert(
        k + 1,
        cnnc::ir::Node {
            op: Op::Activation(cnnc::ir::Activation::Relu),
            inputs: vec![cnnc::ir::ValueId(k + 1)],
            output: cnnc::ir::Shape::Image { c, h, w },
            name: "extra".into(),
            params: None,
            origin: cnnc::ir::Origin::OnnxNode("extra".into()),
        },
    );
    // The nodes after it read values one later.
    for n in &mut g.nodes[k + 2..] {
        for v in &mut n.inputs {
            if v.0 > k + 1 {
                v.0 += 1;
            }
        }
    }
    let err = export(&g);
    assert!(err.contains("node `extra` (activation) reads") && err.contains("only in the form an attention pool reads"), "{err}");
}
