//! The candle generator: a network and its plan → a Rust crate.
//!
//! Out: `Cargo.toml`, `src/lib.rs`, `src/model.rs` (generated here, token by token) and
//! `src/main.rs` (the training binary, from `codegen/templates/`). The model struct holds
//! one `cnnc::nn::conv::Conv2d` or `candle_nn::Linear` per unified layer and a `PoolSpec` per pooling;
//! `Model::new(vb)` asks `vb` for every weight with `Init::Randn { mean: 0, stdev: σ }`
//! (σ from the plan, embedded in `LAYERS`) and every bias with `Init::Const(0)`, in the
//! plan's order, so that a [`SeededVarMap`](super::SeededVarMap) gives cnnc's own draw.
//! `forward` performs the same tensor operations as `cnnc::nn::Model::forward`, so the
//! two agree bit for bit on the same weights (the generated test checks it). Graphs that
//! are not such chains are [`generate_graph`]'s (`candle/graph.rs`).

use super::{EmitError, File};
use crate::ir::{Activation, PoolKind, Shape};
use crate::plan::Plan;
use crate::unify::{Layer, Network, WeightKind};
use std::fmt::Write;

mod graph;
pub use graph::{generate_graph, generate_graph_from, GraphSource};

/// Above this many parameters the generated whole-network equality test is `#[ignore]`d
/// (it draws every weight twice and runs the network twice: F34's 21 M take 7 s in a test
/// build on 2 cores, its dependencies optimized as cnnc's workspace and a standalone
/// generated crate build them).
const BIG_MODEL_PARAMETERS: u64 = 50_000_000;

/// What the generated crate is called and how it finds cnnc.
#[derive(Clone, Debug)]
pub struct CandleOptions {
    /// The package name; its library is the same with `-` read as `_`.
    pub name: String,
    /// The `.cnn` file as it should be named in the generated docs.
    pub spec_path: String,
    /// The `.cnn` text: embedded, so that the generated test can re-plan it.
    pub spec_text: String,
    /// The `path` of the cnnc dependency, relative to the crate or absolute.
    pub cnnc_path: String,
    /// Whether the crate is its own workspace root (`[workspace]`); false for a member of
    /// cnnc's workspace such as `codegen/f34`.
    pub standalone: bool,
}

const CARGO_TEMPLATE: &str = include_str!("../../codegen/templates/Cargo.toml.in");
const LIB_TEMPLATE: &str = include_str!("../../codegen/templates/lib.rs.in");
const MAIN_TEMPLATE: &str = include_str!("../../codegen/templates/main.rs.in");
const TRAIN_TEST_TEMPLATE: &str = include_str!("../../codegen/templates/train_test.rs.in");

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// The generated crate's `Cargo.toml` (chains and graphs alike).
fn cargo_toml(opts: &CandleOptions, generator: &str) -> String {
    let workspace = if opts.standalone {
        "\n# Its own workspace root, so that it builds wherever it was emitted.\n[workspace]\n\n[profile.dev.package.\"*\"]\nopt-level = 3\n"
    } else {
        ""
    };
    fill(
        CARGO_TEMPLATE,
        &[
            ("generator", generator),
            ("spec", &opts.spec_path),
            ("name", &opts.name),
            ("cnnc_path", &opts.cnnc_path),
            ("workspace", workspace),
        ],
    )
}

/// The generated crate's test that it trains as `cnnc train` does: for square inputs only
/// (training takes square images), and `#[ignore]`d past 64×64, where training twice in a
/// debug build takes minutes (`cargo test --release -- --ignored` runs it).
fn train_test(net: &Network) -> String {
    let (_, h, w) = net.input.chw();
    let attr = match (h == w, h * w <= 64 * 64) {
        (false, _) => return String::new(),
        (true, true) => "",
        (true, false) => "    #[ignore = \"trains twice at the full input size: run with cargo test --release -- --ignored\"]\n",
    };
    TRAIN_TEST_TEMPLATE.replace("{{attr}}", attr)
}

/// A package name cargo accepts: ASCII letters, digits, `-` and `_`, not starting with a digit.
pub fn valid_package_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A package name from a network name: lower case, other characters as `_`.
pub fn package_name(network: &str) -> String {
    let mut s: String = network.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert_str(0, "net_");
    }
    s
}

/// Generates the crate's files. The plan must be the network's.
pub fn generate(net: &Network, plan: &Plan, opts: &CandleOptions) -> Result<Vec<File>, EmitError> {
    if !valid_package_name(&opts.name) {
        return Err(EmitError::Unsupported(format!(
            "`{}` is not a valid crate name (letters, digits, `-`, `_`; not starting with a digit)",
            opts.name
        )));
    }
    check_plan(net, plan)?;
    let lib = opts.name.replace('-', "_");
    let generator = format!("cnnc {}", env!("CARGO_PKG_VERSION"));
    let cargo = cargo_toml(opts, &generator);
    let spec_literal = format!("{:?}", opts.spec_path);
    let vars = [
        ("network", net.name.as_str()),
        ("spec", &opts.spec_path),
        ("lib", &lib),
        ("spec_literal", &spec_literal),
        ("train_test", &train_test(net)),
    ];
    Ok(vec![
        File { path: "Cargo.toml".into(), text: cargo },
        File { path: "src/lib.rs".into(), text: fill(LIB_TEMPLATE, &vars) },
        File { path: "src/main.rs".into(), text: fill(MAIN_TEMPLATE, &vars) },
        File { path: "src/model.rs".into(), text: model(net, plan, opts)? },
    ])
}

fn check_plan(net: &Network, plan: &Plan) -> Result<(), EmitError> {
    if plan.layers.len() != net.layers.len() {
        return Err(EmitError::PlanMismatch(format!("the plan has {} layers, the network {}", plan.layers.len(), net.layers.len())));
    }
    for (l, p) in net.layers.iter().zip(&plan.layers) {
        if p.weight.name != l.weight.weight_param || p.weight.shape != l.weight.weight_shape {
            return Err(EmitError::PlanMismatch(format!(
                "layer {}: the plan has `{}` {:?}, the network `{}` {:?}",
                l.index, p.weight.name, p.weight.shape, l.weight.weight_param, l.weight.weight_shape
            )));
        }
        if !(p.weight.std.is_finite() && p.weight.std >= 0.0) {
            return Err(EmitError::PlanMismatch(format!("layer {}: std {} is not a finite non-negative number", l.index, p.weight.std)));
        }
    }
    Ok(())
}

fn layer_err(l: &Layer, message: impl Into<String>) -> EmitError {
    EmitError::Layer { layer: l.index, module: l.weight.module.clone(), message: message.into() }
}

/// A Rust string literal (the `Debug` form escapes quotes, backslashes and controls).
fn lit(s: &str) -> String {
    format!("{s:?}")
}

/// A raw string literal holding `s` exactly.
fn raw_lit(s: &str) -> String {
    let mut hashes = 1;
    while s.contains(&format!("\"{}", "#".repeat(hashes))) {
        hashes += 1;
    }
    let h = "#".repeat(hashes);
    format!("r{h}\"{s}\"{h}")
}

fn dims(d: &[u64]) -> String {
    d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

/// The field names of layer ℓ's weight operation and pooling.
fn field(l: &Layer) -> String {
    match l.weight.kind {
        WeightKind::Conv => format!("conv{}", l.index),
        WeightKind::Linear => format!("linear{}", l.index),
    }
}

fn describe(l: &Layer) -> String {
    let mut s = match (&l.weight.kind, &l.weight.conv) {
        (WeightKind::Conv, Some(c)) => {
            let mut s = format!("conv {}×{}", c.kernel[0], c.kernel[1]);
            if c.stride != [1, 1] {
                let _ = write!(s, " /{}", c.stride[0]);
            }
            s
        }
        _ => "linear".to_string(),
    };
    let _ = write!(s, " → {}", l.conv_output);
    if l.activation != Activation::Identity {
        let _ = write!(s, ", {}", l.activation);
    }
    if let Some(p) = &l.pooling {
        let kind = match p.kind {
            PoolKind::Max => "max",
            PoolKind::Avg => "avg",
        };
        let global = if p.global { "global " } else { "" };
        let _ = write!(s, ", {global}{kind} pool → {}", l.output);
    }
    s
}

/// The arguments of the generated `conv(vb, p, stride, dilation, pad, groups)`: a
/// `cnnc::nn::conv::ConvSpec`, as `cnnc::nn` runs it.
struct ConvCode {
    stride: [u64; 2],
    dilation: [u64; 2],
    /// [top, left, bottom, right], as in the plan.
    pad: [u64; 4],
    groups: u64,
}

fn conv_code(l: &Layer) -> Result<ConvCode, EmitError> {
    let Some(c) = &l.weight.conv else { return Err(layer_err(l, "a conv layer without its options")) };
    let p = c.pad;
    Ok(ConvCode { stride: c.stride, dilation: c.dilation, pad: [p[0].begin, p[1].begin, p[0].end, p[1].end], groups: c.groups })
}

/// The `PoolSpec` literal of layer ℓ's pooling, indented for a field of `Model::new`.
fn pool_code(l: &Layer) -> Result<Option<String>, EmitError> {
    let Some(p) = &l.pooling else { return Ok(None) };
    if l.weight.kind == WeightKind::Linear {
        return Err(layer_err(l, "a pooling after a linear layer is not supported by the candle generator"));
    }
    Ok(Some(pool_literal(p)))
}

/// The `PoolSpec` literal of a pooling (as `cnnc::nn::pool::PoolSpec::of` makes it),
/// indented for a field of `Model::new`.
fn pool_literal(p: &crate::unify::Pooling) -> String {
    let (pad_end, count_include_pad) = match &p.pool {
        Some(q) => ([q.pad[0].end, q.pad[1].end], q.count_include_pad),
        None => ([0, 0], false),
    };
    let mode = match p.kind {
        PoolKind::Max => "PoolMode::Max".to_string(),
        PoolKind::Avg => format!("PoolMode::Avg {{\n                    count_include_pad: {count_include_pad},\n                }}"),
    };
    let dim = |a: &crate::index::PoolAxis, end: u64| {
        format!(
            "PoolDim {{\n                    input: {},\n                    output: {},\n                    kernel: {},\n                    stride: {},\n                    pad_begin: {},\n                    pad_end: {end},\n                }}",
            a.input, a.output, a.kernel, a.stride, a.pad_begin
        )
    };
    let g = &p.geometry;
    format!(
        "PoolSpec {{\n                mode: {mode},\n                h: {},\n                w: {},\n            }}",
        dim(&g.h, pad_end[0]),
        dim(&g.w, pad_end[1])
    )
}

fn activation_code(a: Activation) -> Option<String> {
    match a {
        Activation::Identity => None,
        Activation::Relu => Some("x.relu()?".into()),
        Activation::LeakyRelu { slope } => Some(format!("candle_nn::ops::leaky_relu(&x, {slope:?})?")),
        Activation::Tanh => Some("x.tanh()?".into()),
        Activation::Sigmoid => Some("candle_nn::ops::sigmoid(&x)?".into()),
        Activation::Gelu => Some("x.gelu_erf()?".into()),
        Activation::Silu => Some("x.silu()?".into()),
    }
}

/// The shape the tensor has after layer ℓ's pooling, before any reshape to `l.output`.
fn natural_output(l: &Layer) -> Shape {
    match (&l.pooling, l.weight.kind) {
        (Some(p), _) => Shape::Image { c: p.geometry.channels, h: p.geometry.h.output, w: p.geometry.w.output },
        (None, WeightKind::Linear) => Shape::Vector { n: l.conv_output.numel() },
        (None, WeightKind::Conv) => l.conv_output,
    }
}

/// `src/model.rs`.
fn model(net: &Network, plan: &Plan, opts: &CandleOptions) -> Result<String, EmitError> {
    let Some(last) = net.layers.last() else { return Err(EmitError::Unsupported("the network has no layer".into())) };
    let (c, h, w) = net.input.chw();
    let Shape::Image { .. } = net.input else {
        return Err(EmitError::Unsupported(format!("the candle generator needs an image input (C×H×W), the network takes {}", net.input)));
    };
    let outputs = last.output.numel();
    let parameters: u64 = net.layers.iter().map(|l| l.weight.parameters()).sum();
    let mut fields = String::new();
    let mut inits = String::new();
    let mut body = String::new();
    let mut cur = net.input;
    let mut first = true;
    let mut needs_n = false;
    // The expression that reads the current activation: the argument `xs`, then `x`.
    let src = |first: bool| if first { "xs" } else { "x" };
    for (k, l) in net.layers.iter().enumerate() {
        let f = field(l);
        let _ = write!(fields, "    /// Layer {} (`{}`): {}.\n", l.index, l.weight.module, describe(l));
        let _ = writeln!(body, "        // Layer {}: `{}`", l.index, l.weight.module);
        match l.weight.kind {
            WeightKind::Conv => {
                let cc = conv_code(l)?;
                let _ = writeln!(fields, "    pub {f}: Conv2d,");
                let _ = writeln!(
                    inits,
                    "            {f}: conv(&vb, &LAYERS[{k}], {:?}, {:?}, {:?}, {})?,",
                    cc.stride, cc.dilation, cc.pad, cc.groups
                );
                let (ic, ih, iw) = l.input.chw();
                if cur.dims() != [ic, ih, iw] {
                    needs_n = true;
                    let _ = writeln!(body, "        let x = {}.reshape((n, {ic}, {ih}, {iw}))?;", src(first));
                    first = false;
                }
                let arg = if first { "xs" } else { "&x" };
                let _ = writeln!(body, "        let x = self.{f}.forward({arg})?;");
            }
            WeightKind::Linear => {
                let _ = writeln!(fields, "    pub {f}: Linear,");
                let _ = writeln!(inits, "            {f}: linear(&vb, &LAYERS[{k}])?,");
                if !matches!(cur, Shape::Vector { .. }) {
                    let _ = writeln!(body, "        let x = {}.flatten_from(1)?;", src(first));
                    first = false;
                }
                let arg = if first { "xs" } else { "&x" };
                let _ = writeln!(body, "        let x = self.{f}.forward({arg})?;");
            }
        }
        first = false;
        if let Some(a) = activation_code(l.activation) {
            let _ = writeln!(body, "        let x = {a};");
        }
        if let Some(p) = pool_code(l)? {
            let _ = writeln!(fields, "    pub pool{}: PoolSpec,", l.index);
            let _ = writeln!(inits, "            pool{}: {p},", l.index);
            let _ = writeln!(body, "        let x = self.pool{}.apply(&x)?;", l.index);
        }
        cur = natural_output(l);
    }
    if cur.dims() != last.output.dims() {
        needs_n = true;
        let _ = writeln!(body, "        let x = x.reshape((n, {}))?;", dims(&last.output.dims()));
    }
    let uses_pool = net.layers.iter().any(|l| l.pooling.is_some());
    let uses_conv = net.layers.iter().any(|l| l.weight.kind == WeightKind::Conv);
    let uses_linear = net.layers.iter().any(|l| l.weight.kind == WeightKind::Linear);

    let mut s = String::new();
    let std_cap = match plan.std_cap {
        Some(c) => format!("Some({c:?})"),
        None => "None".into(),
    };
    let analysis = if plan.analysis == "map" { "Map" } else { "Paper" };
    let _ = write!(
        s,
        "//! {name}: a candle model generated by `cnnc emit candle` (cnnc {version}) from\n\
         //! `{spec}`, init mode `{mode}`, for {c}×{h}×{w} inputs. Regenerate rather than edit.\n\
         //!\n\
         //! [`Model::new`] asks its `VarBuilder` for every weight with\n\
         //! `Init::Randn {{ mean: 0.0, stdev: σ }}`, σ the plan's ([`LAYERS`]), and for every bias\n\
         //! with `Init::Const(0.0)`, in the plan's order. Over a `cnnc::emit::SeededVarMap` with\n\
         //! seed `s` the weights are those of `cnnc train --seed s`; over a `VarMap` they are\n\
         //! drawn by candle; over a checkpoint they are loaded.\n\
         \n",
        name = net.name,
        version = env!("CARGO_PKG_VERSION"),
        spec = opts.spec_path,
        mode = plan.mode,
    );
    let mut nn_items = Vec::new();
    nn_items.push("Init");
    if uses_linear {
        nn_items.push("Linear");
    }
    nn_items.extend(["Module", "VarBuilder"]);
    let _ = writeln!(s, "use candle_core::{{Result, Tensor}};");
    let _ = writeln!(s, "use candle_nn::{{{}}};", nn_items.join(", "));
    if uses_conv {
        let _ = writeln!(s, "use cnnc::nn::conv::{{Conv2d, ConvSpec}};");
    }
    if uses_pool {
        let _ = writeln!(s, "use cnnc::nn::pool::{{PoolDim, PoolMode, PoolSpec}};");
    }
    let _ = write!(
        s,
        "\n/// The network description this model was generated from.\n\
         pub const SPEC: &str = {spec};\n\
         \n\
         /// The plan's init mode, σ cap and analysis.\n\
         pub const MODE: &str = {mode};\n\
         pub const STD_CAP: Option<f64> = {std_cap};\n\
         pub const ANALYSIS: cnnc::analyze::Analysis = cnnc::analyze::Analysis::{analysis};\n\
         \n\
         /// One sample's input shape (C, H, W).\n\
         pub const INPUT: [usize; 3] = [{c}, {h}, {w}];\n\
         \n\
         /// Outputs per sample (classes).\n\
         pub const OUTPUTS: usize = {outputs};\n\
         \n\
         /// One weight layer of the plan: parameter names (PyTorch's), weight shape, σ.\n\
         #[derive(Clone, Copy, Debug)]\n\
         pub struct PlanLayer {{\n    \
             pub weight: &'static str,\n    \
             pub bias: Option<&'static str>,\n    \
             pub shape: &'static [usize],\n    \
             pub std: f64,\n\
         }}\n\
         \n\
         /// The plan, layer by layer.\n\
         pub const LAYERS: [PlanLayer; {n}] = [\n",
        spec = raw_lit(&opts.spec_text),
        mode = lit(&plan.mode),
        n = net.layers.len(),
    );
    for (l, p) in net.layers.iter().zip(&plan.layers) {
        let bias = match &l.weight.bias_param {
            Some(b) => format!("Some({})", lit(b)),
            None => "None".into(),
        };
        let _ = write!(
            s,
            "    PlanLayer {{\n        weight: {},\n        bias: {bias},\n        shape: &[{}],\n        std: {:?},\n    }},\n",
            lit(&p.weight.name),
            dims(&p.weight.shape),
            p.weight.std
        );
    }
    let _ = write!(s, "];\n\n/// {name}, layer by layer.\n#[derive(Clone, Debug)]\npub struct Model {{\n{fields}}}\n\n", name = net.name);
    let n_line = if needs_n { "        let n = xs.dim(0)?;\n" } else { "" };
    let _ = write!(
        s,
        "impl Model {{\n    \
             /// Builds the model from `vb` (see the module doc for what each weight is).\n    \
             pub fn new(vb: VarBuilder) -> Result<Model> {{\n        \
                 Ok(Model {{\n{inits}        }})\n    \
             }}\n\
         \n    \
             /// Runs a batch (N, {c}, {h}, {w}); returns (N, {out}).\n    \
             pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {{\n\
         {n_line}{body}        Ok(x)\n    \
             }}\n\
         \n    \
             /// The parameter names in the plan's order (each weight, then its bias).\n    \
             pub fn parameter_names() -> Vec<&'static str> {{\n        \
                 LAYERS\n            .iter()\n            .flat_map(|l| std::iter::once(l.weight).chain(l.bias))\n            .collect()\n    \
             }}\n\
         }}\n\n",
        out = dims(&last.output.dims()),
    );
    s.push_str("fn weight(vb: &VarBuilder, p: &PlanLayer) -> Result<Tensor> {\n    let init = Init::Randn {\n        mean: 0.0,\n        stdev: p.std,\n    };\n    vb.get_with_hints(p.shape, p.weight, init)\n}\n\n");
    s.push_str("fn bias(vb: &VarBuilder, p: &PlanLayer) -> Result<Option<Tensor>> {\n    p.bias\n        .map(|b| vb.get_with_hints(p.shape[0], b, Init::Const(0.0)))\n        .transpose()\n}\n\n");
    if uses_conv {
        s.push_str(
            "/// A conv layer: cnnc's convolution (im2col + GEMM on the CPU, candle's `conv2d`\n\
             /// elsewhere), padded by `pad` = [top, left, bottom, right].\n\
             fn conv(\n    vb: &VarBuilder,\n    p: &PlanLayer,\n    stride: [usize; 2],\n    dilation: [usize; 2],\n    pad: [usize; 4],\n    groups: usize,\n) -> Result<Conv2d> {\n    \
             let spec = ConvSpec {\n        stride,\n        dilation,\n        pad,\n        groups,\n    };\n    \
             Ok(Conv2d::new(weight(vb, p)?, bias(vb, p)?, spec))\n}\n\n",
        );
    }
    if uses_linear {
        s.push_str(
            "fn linear(vb: &VarBuilder, p: &PlanLayer) -> Result<Linear> {\n    Ok(Linear::new(weight(vb, p)?, bias(vb, p)?))\n}\n\n",
        );
    }
    let ignore = if parameters > BIG_MODEL_PARAMETERS {
        format!("    #[ignore = \"{parameters} parameters drawn twice: run with --release -- --ignored\"]\n")
    } else {
        String::new()
    };
    let _ = write!(
        s,
        "#[cfg(test)]\n\
         mod tests {{\n    \
             use super::*;\n    \
             use candle_core::{{DType, Device}};\n\
         \n    \
             fn reference() -> (cnnc::unify::Network, cnnc::plan::Plan) {{\n        \
                 let net = cnnc::Source::new(\"spec\", SPEC).network().unwrap();\n        \
                 let mode = MODE.parse().unwrap();\n        \
                 let opts = cnnc::analyze::Options {{\n            mode,\n            std_cap: STD_CAP,\n        }};\n        \
                 let plan = cnnc::plan_with(&net, opts, ANALYSIS).unwrap();\n        \
                 (net, plan)\n    \
             }}\n\
         \n    \
             /// The embedded σ are those cnnc plans for the embedded spec.\n    \
             #[test]\n    \
             fn layers_are_the_plan() {{\n        \
                 let (_, plan) = reference();\n        \
                 assert_eq!(plan.layers.len(), LAYERS.len());\n        \
                 for (p, l) in plan.layers.iter().zip(&LAYERS) {{\n            \
                     assert_eq!(p.weight.name, l.weight);\n            \
                     assert_eq!(p.bias.as_ref().map(|b| b.name.as_str()), l.bias);\n            \
                     assert_eq!(\n                p.weight.shape,\n                l.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()\n            );\n            \
                     assert_eq!(p.weight.std, l.std);\n        \
                 }}\n    \
             }}\n\
         \n    \
             /// The same seed gives `cnnc train`'s weights, and the same output.\n    \
             #[test]\n\
         {ignore}    \
             fn same_output_as_cnnc() {{\n        \
                 let (net, plan) = reference();\n        \
                 let dev = Device::Cpu;\n        \
                 let cnnc_model = cnnc::nn::Model::new(&net, &plan, 7, &dev, DType::F32).unwrap();\n        \
                 let vars = cnnc::emit::SeededVarMap::new(7);\n        \
                 let model = Model::new(vars.var_builder(DType::F32, &dev)).unwrap();\n        \
                 let names: Vec<String> = cnnc_model\n            .named_vars()\n            .into_iter()\n            .map(|(n, _)| n)\n            .collect();\n        \
                 assert_eq!(names, Model::parameter_names());\n        \
                 for (name, var) in cnnc_model.named_vars() {{\n            \
                     let ours = vars.var(&name).unwrap().flatten_all().unwrap();\n            \
                     let theirs = var.flatten_all().unwrap();\n            \
                     assert_eq!(\n                ours.to_vec1::<f32>().unwrap(),\n                theirs.to_vec1::<f32>().unwrap()\n            );\n        \
                 }}\n        \
                 let x = Tensor::randn(0f32, 1.0, (2, {c}, {h}, {w}), &dev).unwrap();\n        \
                 let ours = model.forward(&x).unwrap().flatten_all().unwrap();\n        \
                 let theirs = cnnc_model.forward(&x).unwrap().flatten_all().unwrap();\n        \
                 assert_eq!(\n            ours.to_vec1::<f32>().unwrap(),\n            theirs.to_vec1::<f32>().unwrap()\n        );\n    \
             }}\n\
         }}\n"
    );
    Ok(s)
}
