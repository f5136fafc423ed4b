//! `cnnc emit candle`: the checked-in generated crates are what the generator writes
//! today (`UPDATE_CODEGEN=1 cargo test --features train --test emit_candle` rewrites them), the generated
//! Tiny model gives `cnnc train`'s model's output bit for bit (its own tests, compiled in
//! here from `codegen/tiny/src/model.rs`), as the generated TinyRes model (a graph) gives
//! `nn::GraphModel`'s in training and evaluation mode, gradients included; the graph
//! specs generate crates whose forward computes each value once from earlier ones; and
//! what the generator cannot express is an error naming the layer or node.

use cnnc::analyze::{Mode, Options};
use cnnc::emit::candle::{self, CandleOptions};
use cnnc::Source;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The generated Tiny model with its tests (`layers_are_the_plan`, `same_output_as_cnnc`).
// The generated file keeps the generator's formatting (rustfmt defaults): not this crate's.
#[rustfmt::skip]
#[path = "../codegen/tiny/src/model.rs"]
#[allow(dead_code)] // INPUT and OUTPUTS are for the generated training binary
mod tiny_model;

/// The generated TinyRes model (a graph) with its tests (`layers_are_the_plan`,
/// `same_output_as_cnnc` against `GraphModel`).
#[rustfmt::skip]
#[path = "../codegen/tinyres/src/model.rs"]
#[allow(dead_code)]
mod tinyres_model;

/// The generated model of torch's `F.interpolate` to 7×7 and 5×5 (resamplings to any
/// size, `tests/data/onnx/resize/resize.ts.onnx`), with its tests against `GraphModel`.
#[rustfmt::skip]
#[path = "data/emit/resize_model.rs"]
#[allow(dead_code)] // what the generated crate's binary and lib use
mod resize_model;

/// The generated model of NF-ResNets' `ScaledStdConv2d` (convs of standardized weights
/// with a per-filter gain, `tests/data/onnx/std/scaled_std_conv.ts.onnx`), with its tests
/// against `GraphModel`.
#[rustfmt::skip]
#[path = "data/emit/scaled_std_conv_model.rs"]
#[allow(dead_code)] // what the generated crate's binary and lib use
mod scaled_std_conv_model;

/// The generated models of efficient channel, global-context and split attention
/// (`tests/data/onnx/attn`), with their tests against `GraphModel`.
#[rustfmt::skip]
#[path = "data/emit/eca_model.rs"]
#[allow(dead_code)] // what the generated crate's binary and lib use
mod eca_model;
#[rustfmt::skip]
#[path = "data/emit/gc_model.rs"]
#[allow(dead_code)]
mod gc_model;
#[rustfmt::skip]
#[path = "data/emit/split_model.rs"]
#[allow(dead_code)]
mod split_model;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Generates the crate for `spec` as `codegen/<name>` is generated (a workspace member
/// that finds cnnc at `../..`).
fn generate(spec: &str, name: &str) -> Vec<cnnc::emit::File> {
    let text = std::fs::read_to_string(root().join(spec)).unwrap();
    let net = Source::new(spec, text.clone()).network().unwrap();
    let plan = cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let opts = CandleOptions { name: name.into(), spec_path: spec.into(), spec_text: text, cnnc_path: "../..".into(), standalone: false };
    candle::generate(&net, &plan, &opts).unwrap()
}

/// Generates the crate for the graph spec `spec` as `codegen/<name>` is generated.
fn generate_graph(spec: &str, name: &str) -> Vec<cnnc::emit::File> {
    let text = std::fs::read_to_string(root().join(spec)).unwrap();
    let source = Source::new(spec, text.clone());
    let graph = source.graph().unwrap();
    let req = cnnc::GraphRequest {
        opts: Options { mode: Mode::Forward, std_cap: None },
        analysis: cnnc::analyze::Analysis::Paper,
        branch_scale: 1.0,
        batch: None,
    };
    let plan = cnnc::plan_graph(&graph, req).unwrap();
    let opts = CandleOptions { name: name.into(), spec_path: spec.into(), spec_text: text, cnnc_path: "../..".into(), standalone: false };
    candle::generate_graph(&graph, &plan, &opts).unwrap()
}

fn check_crate(dir: &Path, files: &[cnnc::emit::File]) -> Vec<String> {
    if std::env::var_os("UPDATE_CODEGEN").is_some() {
        cnnc::emit::write_files(dir, files).unwrap();
        return Vec::new();
    }
    let mut failures = Vec::new();
    for f in files {
        let path = dir.join(&f.path);
        match std::fs::read_to_string(&path) {
            Ok(want) if want == f.text => {}
            Ok(want) => {
                let line =
                    want.lines().zip(f.text.lines()).position(|(a, b)| a != b).unwrap_or(want.lines().count().min(f.text.lines().count()));
                failures.push(format!(
                    "{} differs from the generator's output at line {}:\n  checked in: {}\n  generated:  {}",
                    path.display(),
                    line + 1,
                    want.lines().nth(line).unwrap_or("<eof>"),
                    f.text.lines().nth(line).unwrap_or("<eof>")
                ));
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    failures
}

/// The generated `model.rs` of the ONNX model at `path` (relative to the crate root, where
/// the tests that include it run), at its declared input size.
/// The generated model of a U-Net (torch's training export: transposed convs, skip
/// concats, BatchNorm with batch statistics), with its tests against `GraphModel`.
#[rustfmt::skip]
#[path = "data/emit/unet_model.rs"]
#[allow(dead_code)]
mod unet_model;

fn generate_onnx_model(path: &str, name: &str) -> cnnc::emit::File {
    let source = cnnc::load(&root().join(path), cnnc::InputSize::Declared).unwrap();
    let req = cnnc::GraphRequest {
        opts: Options { mode: Mode::Forward, std_cap: None },
        analysis: cnnc::analyze::Analysis::Paper,
        branch_scale: 1.0,
        batch: None,
    };
    let plan = source.plan(req).unwrap();
    let opts =
        CandleOptions { name: name.into(), spec_path: path.into(), spec_text: String::new(), cnnc_path: "../..".into(), standalone: false };
    let onnx = candle::GraphSource::Onnx { path: path.into() };
    let files = candle::generate_graph_from(&source.graph, &plan, &opts, &onnx).unwrap();
    let model = files.into_iter().find(|f| f.path == "src/model.rs").unwrap();
    cnnc::emit::File { path: format!("{name}_model.rs"), text: model.text }
}

#[test]
fn checked_in_crates_are_the_generators_output() {
    let mut failures = check_crate(
        &root().join("tests/data/emit"),
        &[
            generate_onnx_model("tests/data/onnx/resize/resize.ts.onnx", "resize"),
            generate_onnx_model("tests/data/onnx/std/scaled_std_conv.ts.onnx", "scaled_std_conv"),
            generate_onnx_model("tests/data/onnx/attn/eca.ts.onnx", "eca"),
            generate_onnx_model("tests/data/onnx/attn/gc.ts.onnx", "gc"),
            generate_onnx_model("tests/data/onnx/attn/split.ts.onnx", "split"),
            generate_onnx_model("tests/data/onnx/real/unet.train.onnx", "unet"),
        ],
    );
    failures.extend(check_crate(&root().join("codegen/f34"), &generate("specs/f34.cnn", "f34")));
    failures.extend(check_crate(&root().join("codegen/tiny"), &generate("codegen/specs/tiny.cnn", "tiny")));
    failures.extend(check_crate(&root().join("codegen/tinyres"), &generate_graph("codegen/specs/tinyres.cnn", "tinyres")));
    assert!(
        failures.is_empty(),
        "{}\n(regenerate with UPDATE_CODEGEN=1 cargo test --features train --test emit_candle)",
        failures.join("\n")
    );
}

/// One `PlanLayer` literal of a generated `LAYERS`: weight name, bias name, shape, σ.
type EmbeddedLayer = (String, Option<String>, Vec<u64>, f64);

/// Reads `LAYERS` back from a generated `src/model.rs`.
fn embedded_layers(model: &str) -> Vec<EmbeddedLayer> {
    let start = model.find("pub const LAYERS").expect("a LAYERS constant");
    let block = &model[start..start + model[start..].find("\n];").expect("the end of LAYERS")];
    let field = |line: &str, name: &str| line.trim().strip_prefix(name).map(|v| v.trim_end_matches(',').to_string());
    let unquote = |v: &str| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).expect("a string literal").to_string();
    let mut layers = Vec::new();
    let (mut weight, mut bias, mut shape) = (String::new(), None, Vec::new());
    for line in block.lines() {
        if let Some(v) = field(line, "weight: ") {
            weight = unquote(&v);
        } else if let Some(v) = field(line, "bias: ") {
            bias = v.strip_prefix("Some(").map(|v| unquote(v.strip_suffix(')').unwrap()));
        } else if let Some(v) = field(line, "shape: &[") {
            shape = v.trim_end_matches(']').split(", ").map(|d| d.parse().unwrap()).collect();
        } else if let Some(v) = field(line, "std: ") {
            layers.push((std::mem::take(&mut weight), bias.take(), std::mem::take(&mut shape), v.parse().unwrap()));
        }
    }
    layers
}

/// The generator embeds the plan it is given, whatever its mode, cap and analysis: every
/// layer's parameter names, weight shape and σ (to the bit) in the plan's order, the
/// mode, cap and analysis the generated test re-plans with; it writes the four files of
/// a workspace member; and a plan that is not the network's is an error, not a crate.
#[test]
fn the_crate_embeds_the_plan_it_is_given() {
    let spec = "codegen/specs/tiny.cnn";
    let text = std::fs::read_to_string(root().join(spec)).unwrap();
    let net = Source::new(spec, text.clone()).network().unwrap();
    let opts = CandleOptions { name: "tiny".into(), spec_path: spec.into(), spec_text: text, cnnc_path: "../..".into(), standalone: false };
    let plan = cnnc::plan(&net, Options { mode: Mode::Backward, std_cap: Some(1.5) }).unwrap();
    let forward = cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    assert!(plan.layers.iter().zip(&forward.layers).all(|(a, b)| a.weight.std != b.weight.std), "the plans differ in every σ");

    let files = candle::generate(&net, &plan, &opts).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["Cargo.toml", "src/lib.rs", "src/main.rs", "src/model.rs"]);
    // A member of cnnc's workspace has no [workspace] of its own (a standalone crate has).
    assert!(
        !files[0].text.contains("[workspace]") && files[0].text.contains("cnnc = { path = \"../..\", features = [\"train\"] }"),
        "{}",
        files[0].text
    );
    assert!(files[2].text.contains("use tiny::model::INPUT;") && files[1].text.contains("train::fit("));
    let model = &files[3].text;
    let want: Vec<EmbeddedLayer> = plan
        .layers
        .iter()
        .map(|l| (l.weight.name.clone(), l.bias.as_ref().map(|b| b.name.clone()), l.weight.shape.clone(), l.weight.std))
        .collect();
    assert_eq!(embedded_layers(model), want);
    for line in [
        "pub const MODE: &str = \"backward\";",
        "pub const STD_CAP: Option<f64> = Some(1.5);",
        "pub const ANALYSIS: cnnc::analyze::Analysis = cnnc::analyze::Analysis::Paper;",
        "pub const INPUT: [usize; 3] = [3, 17, 17];",
        "pub const OUTPUTS: usize = 4;",
    ] {
        assert!(model.contains(line), "{line} is not in the generated src/model.rs");
    }
    // A map-analysis plan (of a network the map analysis takes) is embedded as one.
    let relu = Source::new("r.cnn", "network R\ninput 2x9x9\nconv(3/p1) -> 4, relu, maxpool(2)\nflatten\nlinear -> 3\n").network().unwrap();
    let map = cnnc::plan_with(&relu, Options { mode: Mode::Forward, std_cap: None }, cnnc::analyze::Analysis::Map).unwrap();
    let files = candle::generate(&relu, &map, &CandleOptions { name: "r".into(), ..opts.clone() }).unwrap();
    assert!(files[3].text.contains("pub const ANALYSIS: cnnc::analyze::Analysis = cnnc::analyze::Analysis::Map;"));
    let stds: Vec<f64> = embedded_layers(&files[3].text).iter().map(|l| l.3).collect();
    assert_eq!(stds, map.layers.iter().map(|l| l.weight.std).collect::<Vec<_>>());
    let paper = cnnc::plan(&relu, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    assert_ne!(stds[1], paper.layers[1].weight.std, "the padding makes the map analysis' σ differ after layer 1");

    let mismatch = |plan: &cnnc::plan::Plan| match candle::generate(&net, plan, &opts) {
        Ok(_) => panic!("a crate for a plan that is not the network's"),
        Err(e) => e.to_string(),
    };
    let mut short = plan.clone();
    short.layers.pop();
    assert_eq!(mismatch(&short), "the plan does not fit the network: the plan has 7 layers, the network 8");
    let mut renamed = plan.clone();
    renamed.layers[1].weight.name = "other.weight".into();
    assert_eq!(
        mismatch(&renamed),
        "the plan does not fit the network: layer 2: the plan has `other.weight` [6, 4, 3, 3], the network `2.weight` [6, 4, 3, 3]"
    );
    let mut reshaped = plan.clone();
    reshaped.layers[0].weight.shape[0] = 13;
    assert!(mismatch(&reshaped).contains("layer 1: the plan has `stem.weight` [13, 3, 3, 3]"));
    for std in [f64::NAN, f64::INFINITY, -0.1] {
        let mut bad = plan.clone();
        bad.layers[3].weight.std = std;
        assert_eq!(mismatch(&bad), format!("the plan does not fit the network: layer 4: std {std} is not a finite non-negative number"));
    }
}

fn generate_text(text: &str, name: &str) -> Result<Vec<cnnc::emit::File>, cnnc::emit::EmitError> {
    let net = Source::new("t.cnn", text).network().unwrap();
    let plan = cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let opts =
        CandleOptions { name: name.into(), spec_path: "t.cnn".into(), spec_text: text.into(), cnnc_path: "/cnnc".into(), standalone: true };
    candle::generate(&net, &plan, &opts)
}

#[test]
fn unsupported_layers_are_errors_naming_the_layer() {
    // Per-axis stride and dilation run in cnnc's conv op: generated, not refused.
    let per_axis = "network T\ninput 1x8x8\nconv(3/s2x1/p1) -> 2, relu\nconv(3x1/d1x2) -> 2\n";
    let model = &generate_text(per_axis, "t").unwrap()[3].text;
    assert!(model.contains("conv(&vb, &LAYERS[0], [2, 1], [1, 1], [1, 1, 1, 1], 1)?"), "{model}");
    assert!(model.contains("conv(&vb, &LAYERS[1], [1, 1], [1, 2], [0, 0, 0, 0], 1)?"), "{model}");
    let ok = "network T\ninput 1x8x8\nconv(3) -> 2, relu\nflatten\nlinear -> 3\n";
    let e = generate_text(ok, "9lives").unwrap_err().to_string();
    assert!(e.contains("`9lives` is not a valid crate name"), "{e}");
    let files = generate_text(ok, "t").unwrap();
    assert!(files[0].text.contains("cnnc = { path = \"/cnnc\", features = [\"train\"] }") && files[0].text.contains("\n[workspace]\n"));
}

#[test]
fn spec_text_is_embedded_verbatim() {
    let text = "# a \"## quoted\"# comment\nnetwork T\ninput 1x4x4\nconv(1) -> 2\nflatten\nlinear -> 2\n";
    let files = generate_text(text, "t").unwrap();
    assert!(files[3].text.contains(&format!("pub const SPEC: &str = r###\"{text}\"###;")), "{}", files[3].text);
}

#[test]
fn cli_writes_the_crate() {
    let dir = std::env::temp_dir().join(format!("cnnc-emit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args([
            "emit",
            "candle",
            "codegen/specs/tiny.cnn",
            "--mode",
            "forward",
            "--name",
            "tiny",
            "--cnnc-path",
            "../..",
            "--workspace-member",
            "-o",
        ])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in generate("codegen/specs/tiny.cnn", "tiny") {
        assert_eq!(std::fs::read_to_string(dir.join(&f.path)).unwrap(), f.text, "{}", f.path);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["emit", "candle", "tests/data/onnx/ok/missing.onnx", "-o"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read tests/data/onnx/ok/missing.onnx"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Checks that a generated graph `forward` defines x0, x1, …, x`nodes` in order, each once,
/// every line reading only values defined before it, and returns it ends with the last.
fn check_values_in_order(model: &str, nodes: usize) {
    let start = model.find("pub fn forward(").expect("a forward");
    let body = &model[start..start + model[start..].find("\n    }\n").unwrap()];
    let mut defined = 0usize;
    for line in body.lines().map(str::trim).filter(|l| l.starts_with("let x")) {
        let (lhs, rhs) = line.split_once(" = ").unwrap();
        let k: usize = lhs["let x".len()..].parse().unwrap();
        assert_eq!(k, defined, "values defined in order: {line}");
        for (i, _) in rhs.match_indices('x') {
            let digits: String = rhs[i + 1..].chars().take_while(char::is_ascii_digit).collect();
            let before = rhs[..i].chars().last();
            if digits.is_empty() || before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let j: usize = digits.parse().unwrap();
            assert!(j < k, "x{k} reads x{j}, not defined before it: {line}");
        }
        defined += 1;
    }
    assert_eq!(defined, nodes + 1, "one value per node and the input");
    assert!(body.trim_end().ends_with(&format!("Ok(x{nodes})")), "{body}");
}

/// `cnnc emit candle` on ResNet-18 writes a crate: the graph's crate files, a field per
/// conv, BatchNorm and the linear layer named after torchvision's modules, the parameters
/// in node order, 8 residual additions, BatchNorm reading the model's mode, and every
/// value computed once from earlier ones. (Built and run bit for bit by codegen/tinyres's
/// tests, which use every construct this model does.)
#[test]
fn cli_writes_a_graph_crate() {
    let dir = std::env::temp_dir().join(format!("cnnc-emit-graph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["emit", "candle", "specs/resnet18.cnn", "--mode", "forward", "-o"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    let (cargo, lib, model) = (read("Cargo.toml"), read("src/lib.rs"), read("src/model.rs"));
    assert!(cargo.contains("name = \"resnet18\"") && cargo.contains("\n[workspace]\n"), "{cargo}");
    assert!(lib.contains("cnnc::plan_graph(&graph()?, req)") && lib.contains("self.model.backward(loss)"), "{lib}");
    assert!(read("src/main.rs").contains("use resnet18::model::INPUT;"));
    let graph = Source::new("r18", std::fs::read_to_string(root().join("specs/resnet18.cnn")).unwrap()).graph().unwrap();
    check_values_in_order(&model, graph.nodes.len());
    let count = |needle: &str| model.matches(needle).count();
    assert_eq!(count(": Conv2d,"), 20);
    assert_eq!(count(": Normalization,"), 20);
    assert_eq!(count(": Linear,"), 1);
    for field in [
        "pub conv1: Conv2d,",
        "pub bn1: Normalization,",
        "pub layer2_0_downsample_0: Conv2d,",
        "pub layer4_1_bn2: Normalization,",
        "pub fc: Linear,",
    ] {
        assert!(model.contains(field), "{field}");
    }
    assert_eq!(count("self.conv(&self."), 20, "no conv of ResNet-18 is read by its ReLU alone");
    assert_eq!(model.lines().filter(|l| l.trim().starts_with("let x") && l.contains(" + &x")).count(), 8);
    assert_eq!(count(", training)?;"), 20);
    // The parameters in node order: each weight layer's weight (and bias), each BatchNorm's γ, β.
    let mut want = Vec::new();
    for n in &graph.nodes {
        match &n.op {
            cnnc::ir::Op::Conv(_) | cnnc::ir::Op::Linear(_) => {
                let w = cnnc::unify::weight(n, graph.shape(n.inputs[0]));
                want.push(w.weight_param);
                want.extend(w.bias_param);
            }
            cnnc::ir::Op::BatchNorm(bn) => want.extend([bn.scale.clone(), bn.shift.clone()]),
            _ => {}
        }
    }
    let start = model.find("pub const PARAMETERS").unwrap();
    let block = &model[start..start + model[start..].find("\n];").unwrap()];
    let names: Vec<String> = block.lines().skip(1).map(|l| l.trim().trim_end_matches(',').trim_matches('"').to_string()).collect();
    assert_eq!(names, want);
    assert_eq!(names.len(), 62);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The other graph specs (a bottleneck ResNet, inverted residuals with ReLU6 and depthwise
/// convs, dense blocks, each with and without BatchNorm) generate too, each value once
/// from earlier ones; a ReLU right after a conv (no BatchNorm between) runs in the conv.
#[test]
fn graph_specs_generate() {
    for (spec, concats) in [
        ("specs/resnet18_nobn.cnn", 0),
        ("specs/mobilenet_v2.cnn", 0),
        ("specs/mobilenet_v2_nobn.cnn", 0),
        ("specs/densenet_small.cnn", 9),
        ("specs/densenet_small_nobn.cnn", 9),
    ] {
        let files = generate_graph(spec, "net");
        let model = &files[3].text;
        let graph = Source::new(spec, std::fs::read_to_string(root().join(spec)).unwrap()).graph().unwrap();
        check_values_in_order(model, graph.nodes.len());
        assert_eq!(model.matches("Tensor::cat(&[").count(), concats, "{spec}");
        if spec.ends_with("_nobn.cnn") {
            assert!(!model.contains(": Normalization,"), "{spec}");
            // MobileNetV2's ReLU6 is a clip, not a ReLU.
            assert_eq!(model.contains("self.conv_relu("), !spec.contains("mobilenet"), "{spec}");
        }
    }
}

/// An ONNX DAG emits a graph crate that reads the model again from its absolute path, at
/// the crate's input size (`--input`); the attention ops are lines of its forward.
#[test]
fn cli_writes_an_onnx_graph_crate() {
    let dir = std::env::temp_dir().join(format!("cnnc-emit-onnx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let onnx = "tests/data/onnx/ok/joins_and_batchnorm.onnx";
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["emit", "candle", onnx, "--mode", "forward", "--name", "joins", "-o"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model = std::fs::read_to_string(dir.join("src/model.rs")).unwrap();
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    let abs = std::fs::canonicalize(root().join(onnx)).unwrap();
    assert!(model.contains(&format!("pub const ONNX_PATH: &str = {:?};", abs.display().to_string())), "{model}");
    assert!(!model.contains("pub const SPEC"));
    assert!(lib.contains("cnnc::load(std::path::Path::new(model::ONNX_PATH), input)?.graph"), "{lib}");
    let graph = cnnc::load(&abs, cnnc::InputSize::Declared).unwrap().graph;
    check_values_in_order(&model, graph.nodes.len());
    assert!(model.contains(", training)?;") && model.contains(" + &x"), "BatchNorm and an Add: {model}");
    std::fs::remove_dir_all(&dir).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["emit", "candle", "tests/data/onnx/attn/eca.ts.onnx", "-o"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model = std::fs::read_to_string(dir.join("src/model.rs")).unwrap();
    assert_eq!(model.matches("= swap_channels_width(&x").count(), 2, "{model}");
    std::fs::remove_dir_all(&dir).unwrap();
}
