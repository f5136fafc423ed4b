//! The candle generator for graphs: any network `cnnc::nn::GraphModel` runs (residual
//! additions, concatenations, BatchNorm, gates, slices, shuffles, element-wise
//! functions, resizes and resamplings to any size) → a crate whose `src/model.rs`
//! writes the graph out.
//!
//! In: the graph IR, its plan (`cnnc-plan/2`, or a chain's), the `.cnn` text. Out: the
//! four files of [`super::generate`], the model a struct with one field per weight
//! layer, normalization, pooling, resize and resampling (named after its module: `layer1_0_conv1`
//! for `layer1.0.conv1`), `new(vb)` asking for every parameter in node order (each
//! weight with `Init::Randn` and the plan's σ, biases and β `Init::Const(0)`, γ
//! `Init::Const` of the plan's scale), so that a `SeededVarMap` draws `GraphModel`'s
//! weights; and `forward` one `let xK = …;` per node, value `K` node `K − 1`'s output,
//! running the same tensor operations as `GraphModel::node_forward` through the same
//! `cnnc::nn` building blocks, so the two agree bit for bit (the generated tests check it
//! in training and evaluation mode, gradients included).
//!
//! Invariants: deterministic and rustfmt-clean output; what `GraphModel` refuses or the
//! generator cannot write (a weight stored in another shape than the conv reads, and
//! standardized) is an error naming every such node, never a crate that differs from
//! cnnc's model.

use super::MAIN_TEMPLATE;
use super::{dims, fill, lit, raw_lit, valid_package_name, CandleOptions, BIG_MODEL_PARAMETERS};
use crate::emit::{EmitError, File};
use crate::ir::{Activation, Expr, Fn1, Graph, Node, Op, Shape, ValueId};
use crate::plan::Plan;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

const LIB_TEMPLATE: &str = include_str!("../../../codegen/templates/graph_lib.rs.in");
const TRAIN_TEST_TEMPLATE: &str = include_str!("../../../codegen/templates/graph_train_test.rs.in");

/// Where a generated graph crate reads its graph again (for its plan and its tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphSource {
    /// The `.cnn` text of [`CandleOptions::spec_text`], embedded.
    Cnn,
    /// An ONNX model at this path (absolute, or relative to where the crate's tests and
    /// binary run), read at the crate's input size.
    Onnx { path: String },
}

/// Generates the crate of a `.cnn` graph. The plan must be the graph's.
pub fn generate_graph(graph: &Graph, plan: &Plan, opts: &CandleOptions) -> Result<Vec<File>, EmitError> {
    generate_graph_from(graph, plan, opts, &GraphSource::Cnn)
}

/// Generates the crate of a graph that `source` holds. The plan must be the graph's.
pub fn generate_graph_from(graph: &Graph, plan: &Plan, opts: &CandleOptions, source: &GraphSource) -> Result<Vec<File>, EmitError> {
    if !valid_package_name(&opts.name) {
        return Err(EmitError::Unsupported(format!(
            "`{}` is not a valid crate name (letters, digits, `-`, `_`; not starting with a digit)",
            opts.name
        )));
    }
    let Shape::Image { h, w, .. } = graph.input else {
        return Err(EmitError::Unsupported(format!(
            "the candle generator needs an image input (C×H×W), the network takes {}",
            graph.input
        )));
    };
    let model = model(graph, plan, opts, source)?;
    let graph_code = match source {
        GraphSource::Cnn => "Ok(cnnc::Source::new(SPEC_PATH, model::SPEC).graph()?)".to_string(),
        GraphSource::Onnx { .. } => "let input = cnnc::InputSize::Chw(model::INPUT.map(|d| d as u64));\n    \
             Ok(cnnc::load(std::path::Path::new(model::ONNX_PATH), input)?.graph)"
            .to_string(),
    };
    let lib = opts.name.replace('-', "_");
    let generator = format!("cnnc {}", env!("CARGO_PKG_VERSION"));
    let cargo = super::cargo_toml(opts, &generator);
    let spec_literal = format!("{:?}", opts.spec_path);
    // Training twice in a debug build: seconds for tiny inputs, minutes past 64×64.
    let train_test = match (h == w, h * w <= 64 * 64) {
        (false, _) => String::new(),
        (true, true) => TRAIN_TEST_TEMPLATE.replace("{{attr}}", ""),
        (true, false) => TRAIN_TEST_TEMPLATE
            .replace("{{attr}}", "    #[ignore = \"trains twice at the full input size: run with cargo test --release -- --ignored\"]\n"),
    };
    let vars = [
        ("network", graph.name.as_str()),
        ("spec", &opts.spec_path),
        ("lib", &lib),
        ("spec_literal", &spec_literal),
        ("train_test", &train_test),
        ("graph", &graph_code),
    ];
    Ok(vec![
        File { path: "Cargo.toml".into(), text: cargo },
        File { path: "src/lib.rs".into(), text: fill(LIB_TEMPLATE, &vars) },
        File { path: "src/main.rs".into(), text: fill(MAIN_TEMPLATE, &vars) },
        File { path: "src/model.rs".into(), text: model },
    ])
}

fn node_msg(k: usize, n: &Node, message: &str) -> String {
    format!("node {k} (`{}`, {}): {message}", n.name, n.op.kind_name())
}

/// A float as a Rust expression of type f64 that is exactly `v`.
fn flit(v: f64) -> String {
    if v.is_nan() {
        "f64::NAN".into()
    } else if v == f64::INFINITY {
        "f64::INFINITY".into()
    } else if v == f64::NEG_INFINITY {
        "f64::NEG_INFINITY".into()
    } else {
        format!("{v:?}")
    }
}

/// A Rust identifier from a module name: `layer1.0.conv1` → `layer1_0_conv1`; `fallback`
/// where the name gives none; a suffix where it is taken.
fn ident(name: &str, fallback: &str, taken: &mut HashSet<String>) -> String {
    let mut s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    s = s.trim_matches('_').to_string();
    if s.is_empty() {
        s = fallback.to_string();
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, 'm');
    }
    const RESERVED: &[&str] = &[
        "as", "async", "await", "box", "break", "const", "continue", "crate", "do", "dyn", "else", "enum", "extern", "false", "final",
        "fn", "for", "if", "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return",
        "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where",
        "while", "yield", "sink", "training",
    ];
    if RESERVED.contains(&s.as_str()) {
        s.push('_');
    }
    let base = s.clone();
    let mut i = 2;
    while !taken.insert(s.clone()) {
        s = format!("{base}_{i}");
        i += 1;
    }
    s
}

/// An activation of the tensor `v` (a variable name), as `cnnc::nn::activate` runs it.
fn act_code(a: Activation, v: &str) -> String {
    match a {
        Activation::Identity => format!("{v}.clone()"),
        Activation::Relu => format!("cnnc::nn::relu::relu(&{v})?"),
        Activation::LeakyRelu { slope } => format!("candle_nn::ops::leaky_relu(&{v}, {})?", flit(slope)),
        Activation::Tanh => format!("{v}.tanh()?"),
        Activation::Sigmoid => format!("candle_nn::ops::sigmoid(&{v})?"),
        Activation::Gelu => format!("{v}.gelu_erf()?"),
        Activation::Silu => format!("{v}.silu()?"),
    }
}

fn activation_literal(a: Activation) -> String {
    match a {
        Activation::Identity => "Activation::Identity".into(),
        Activation::Relu => "Activation::Relu".into(),
        Activation::LeakyRelu { slope } => format!("Activation::LeakyRelu {{ slope: {} }}", flit(slope)),
        Activation::Tanh => "Activation::Tanh".into(),
        Activation::Sigmoid => "Activation::Sigmoid".into(),
        Activation::Gelu => "Activation::Gelu".into(),
        Activation::Silu => "Activation::Silu".into(),
    }
}

fn fn1_literal(f: Fn1) -> String {
    match f {
        Fn1::Act(a) => format!("Fn1::Act({})", activation_literal(a)),
        Fn1::Clip { min, max } => format!("Fn1::Clip {{ min: {}, max: {} }}", flit(min), flit(max)),
        Fn1::HardSigmoid { alpha, beta } => format!("Fn1::HardSigmoid {{ alpha: {}, beta: {} }}", flit(alpha), flit(beta)),
        Fn1::HardSwish => "Fn1::HardSwish".into(),
        Fn1::Elu { alpha } => format!("Fn1::Elu {{ alpha: {} }}", flit(alpha)),
        Fn1::Softplus => "Fn1::Softplus".into(),
        Fn1::Mish => "Fn1::Mish".into(),
        Fn1::Erf => "Fn1::Erf".into(),
        Fn1::Exp => "Fn1::Exp".into(),
        Fn1::Neg => "Fn1::Neg".into(),
        Fn1::Abs => "Fn1::Abs".into(),
        Fn1::Sqrt => "Fn1::Sqrt".into(),
    }
}

/// Part of an element-wise expression: a constant (folded here, as `GraphModel` folds
/// it), or code of type `Tensor` (`var`: a variable's name, to be borrowed or cloned).
enum Val {
    C(f64),
    T { code: String, var: bool },
}

impl Val {
    fn tensor(code: String) -> Val {
        Val::T { code, var: false }
    }
}

/// The code of `e` applied to the variable `x`: the operations of `GraphModel`'s `expr`,
/// in the same order, constants folded with the same f64 arithmetic.
fn expr_code(e: &Expr, x: &str, uses: &mut Uses) -> Val {
    use Val::{C, T};
    match e {
        Expr::X => T { code: x.to_string(), var: true },
        Expr::Const(c) => C(*c),
        Expr::Apply(f, a) => match expr_code(a, x, uses) {
            C(c) => C(f.apply(crate::ir::Dual { v: c, d: 0.0 }).v),
            T { code, .. } => match f {
                Fn1::Act(a) if !code.contains(|c: char| !c.is_ascii_alphanumeric() && c != '_') => Val::tensor(act_code(*a, &code)),
                _ => {
                    uses.fn1 = true;
                    uses.activation |= matches!(f, Fn1::Act(_));
                    Val::tensor(format!("fn1({}, &{code})?", fn1_literal(*f)))
                }
            },
        },
        Expr::Add(a, b) => match (expr_code(a, x, uses), expr_code(b, x, uses)) {
            (C(a), C(b)) => C(a + b),
            (T { code: t, .. }, C(c)) | (C(c), T { code: t, .. }) => Val::tensor(format!("{t}.affine(1.0, {})?", flit(c))),
            (T { code: a, .. }, T { code: b, .. }) => Val::tensor(format!("(&{a} + &{b})?")),
        },
        Expr::Sub(a, b) => match (expr_code(a, x, uses), expr_code(b, x, uses)) {
            (C(a), C(b)) => C(a - b),
            (T { code: t, .. }, C(c)) => Val::tensor(format!("{t}.affine(1.0, {})?", flit(-c))),
            (C(c), T { code: t, .. }) => Val::tensor(format!("{t}.affine(-1.0, {})?", flit(c))),
            (T { code: a, .. }, T { code: b, .. }) => Val::tensor(format!("(&{a} - &{b})?")),
        },
        Expr::Mul(a, b) => match (expr_code(a, x, uses), expr_code(b, x, uses)) {
            (C(a), C(b)) => C(a * b),
            (T { code: t, .. }, C(c)) | (C(c), T { code: t, .. }) => Val::tensor(format!("{t}.affine({}, 0.0)?", flit(c))),
            (T { code: a, .. }, T { code: b, .. }) => Val::tensor(format!("(&{a} * &{b})?")),
        },
        Expr::Div(a, b) => match (expr_code(a, x, uses), expr_code(b, x, uses)) {
            (C(a), C(b)) => C(a / b),
            (T { code: t, .. }, C(c)) => Val::tensor(format!("{t}.affine({}, 0.0)?", flit(1.0 / c))),
            (C(c), T { code: t, .. }) => Val::tensor(format!("{t}.recip()?.affine({}, 0.0)?", flit(c))),
            (T { code: a, .. }, T { code: b, .. }) => Val::tensor(format!("(&{a} / &{b})?")),
        },
    }
}

/// Which imports and helpers the generated file needs.
#[derive(Default)]
struct Uses {
    conv: bool,
    /// Convs without and with a fused ReLU.
    conv_plain: bool,
    conv_relu: bool,
    /// A conv of a weight stored in another shape.
    conv_reshaped: bool,
    /// A ConvTranspose's conv.
    conv_transposed: bool,
    /// A conv of a standardized weight.
    standardized: bool,
    linear: bool,
    pool: bool,
    norm: bool,
    resize: bool,
    fn1: bool,
    /// An activation inside an element-wise expression (`Fn1::Act`).
    activation: bool,
    shuffle: bool,
    dilate: bool,
    /// The attention ops' functions of `cnnc::nn::graph` it calls.
    attention: std::collections::BTreeSet<&'static str>,
    n: bool,
}

/// rustfmt's defaults (what the generated crates are kept to).
const MAX_WIDTH: usize = 100;
const FN_CALL_WIDTH: usize = 60;
const ARRAY_WIDTH: usize = 60;
const CHAIN_WIDTH: usize = 60;

/// A call `head args… tail` at `indent`, laid out as rustfmt lays it out: on one line where
/// it fits (the arguments within `fn_call_width`), else one argument a line.
fn call(indent: usize, head: &str, args: &[String], tail: &str) -> String {
    let one = args.join(", ");
    let pad = " ".repeat(indent);
    if one.len() <= FN_CALL_WIDTH && indent + head.len() + one.len() + tail.len() <= MAX_WIDTH {
        return format!("{pad}{head}{one}{tail}\n");
    }
    let mut s = format!("{pad}{head}\n");
    for a in args {
        let _ = writeln!(s, "{pad}    {a},");
    }
    format!("{s}{pad}{tail}\n")
}

/// `let y = Tensor::cat(&[parts…], 1)?;` in the body, laid out as rustfmt lays it out: a
/// long array of short items packed into lines.
fn concat(y: &str, parts: &[String]) -> String {
    let array = format!("&[{}]", parts.join(", "));
    if array.len() + 3 <= FN_CALL_WIDTH || array.len() <= ARRAY_WIDTH {
        return call(8, &format!("let {y} = Tensor::cat("), &[array, "1".into()], ")?;");
    }
    let mut s = format!("        let {y} = Tensor::cat(\n            &[\n");
    let mut line = String::new();
    for p in parts {
        if !line.is_empty() && 16 + line.len() + 1 + p.len() + 1 > MAX_WIDTH {
            let _ = writeln!(s, "                {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(p);
        line.push(',');
    }
    let _ = writeln!(s, "                {line}");
    s + "            ],\n            1,\n        )?;\n"
}

/// `let y = self.f.call…;` in the body (`then`: a further `.method(…)?`, or nothing),
/// laid out as rustfmt lays it out: a chain longer than `chain_width` one element a line.
fn field_call(y: &str, f: &str, call: &str, then: &str) -> String {
    let chain = format!("self.{f}.{call}{then}");
    if chain.len() <= CHAIN_WIDTH && 8 + "let  = ;".len() + y.len() + chain.len() <= MAX_WIDTH {
        return format!("        let {y} = {chain};\n");
    }
    let mut s = format!("        let {y} = self\n            .{f}\n            .{call}");
    if !then.is_empty() {
        let _ = write!(s, "\n            {then}");
    }
    s + ";\n"
}

/// The array literal of `items` as string literals after `head` (at the start of a line,
/// the whole ending `;`), laid out as rustfmt lays it out: on one line where it fits
/// (within `array_width`), else packed several a line where every literal is short
/// (`short_array_element_width_threshold`, 10), else one a line.
fn string_array(head: &str, items: &[String]) -> String {
    let lits: Vec<String> = items.iter().map(|i| lit(i)).collect();
    let one = format!("[{}]", lits.join(", "));
    if one.len() <= ARRAY_WIDTH && head.len() + one.len() < MAX_WIDTH {
        return one;
    }
    if lits.iter().all(|l| l.len() <= 10) {
        let mut s = String::from("[\n");
        let mut line = String::new();
        for l in &lits {
            if !line.is_empty() && 4 + line.len() + 1 + l.len() + 1 > MAX_WIDTH {
                let _ = writeln!(s, "    {line}");
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(l);
            line.push(',');
        }
        let _ = writeln!(s, "    {line}");
        return s + "]";
    }
    array(&lits.iter().map(|l| format!("    {l},\n")).collect::<String>())
}

/// An array literal of the given entries (each its own lines), `[]` for none.
fn array(entries: &str) -> String {
    if entries.is_empty() {
        "[]".into()
    } else {
        format!("[\n{entries}]")
    }
}

/// The model's methods that run its conv nodes (those it uses).
fn conv_methods(uses: &Uses) -> String {
    let mut s = String::new();
    if uses.conv_plain {
        s.push_str(
            "    /// A conv node: cnnc's op, whose backward hands its weight and bias gradients\n    \
             /// to [`Model::backward`] (`GraphModel`'s hand-over).\n    \
             fn conv(&self, c: &Conv2d, x: &Tensor) -> Result<Tensor> {\n        \
             c.forward_with_sink(x, false, &self.sink)\n    \
             }\n\n",
        );
    }
    if uses.conv_relu {
        s.push_str(
            "    /// A conv node and the ReLU that is its only reader, in one op (as `GraphModel`\n    \
             /// fuses them), with the same gradient hand-over.\n    \
             fn conv_relu(&self, c: &Conv2d, x: &Tensor) -> Result<Tensor> {\n        \
             c.forward_with_sink(x, true, &self.sink)\n    \
             }\n\n",
        );
    }
    s
}

/// `src/model.rs` of a graph.
fn model(graph: &Graph, plan: &Plan, opts: &CandleOptions, source: &GraphSource) -> Result<String, EmitError> {
    let (c, h, w) = graph.input.chw();
    let Some(last) = graph.nodes.last() else { return Err(EmitError::Unsupported("the network has no node".into())) };
    let by_weight: HashMap<&str, &crate::plan::PlanLayer> = plan.layers.iter().map(|l| (l.weight.name.as_str(), l)).collect();
    let scales: HashMap<&str, f64> = plan.batch_norms.iter().flatten().map(|b| (b.scale.name.as_str(), b.scale.value)).collect();
    let weight_nodes = graph.nodes.iter().filter(|n| matches!(n.op, Op::Conv(_) | Op::Linear(_))).count();
    if weight_nodes != plan.layers.len() {
        return Err(EmitError::PlanMismatch(format!("the plan has {} weight layers, the network {weight_nodes}", plan.layers.len())));
    }
    if plan.input_shape != graph.input.dims() {
        return Err(EmitError::PlanMismatch(format!("the plan is for input {:?}, the network takes {}", plan.input_shape, graph.input)));
    }
    let mut readers = vec![0usize; graph.nodes.len() + 1];
    for n in &graph.nodes {
        for v in &n.inputs {
            readers[v.0] += 1;
        }
    }
    let mut errors = Vec::new();
    let mut uses = Uses::default();
    let mut taken = HashSet::new();
    let (mut fields, mut inits, mut body) = (String::new(), String::new(), String::new());
    let mut layers = String::new(); // LAYERS entries
    let mut norms = String::new(); // BATCH_NORMS entries
    let (mut n_layers, mut n_norms) = (0usize, 0usize);
    let mut resamples = String::new(); // RESAMPLES entries
    let mut n_resamples = 0usize;
    let mut params: Vec<String> = Vec::new();
    let mut buffers: Vec<String> = Vec::new();
    let mut parameters: u64 = 0;
    let mut fused_prev = false;
    for (k, n) in graph.nodes.iter().enumerate() {
        if n.inputs.is_empty() || n.inputs.iter().any(|v| v.0 > k) {
            errors.push(node_msg(k, n, "reads a value not computed before it"));
            continue;
        }
        let input = graph.shape(n.inputs[0]);
        let x = |i: usize| format!("x{}", n.inputs[i].0);
        let y = format!("x{}", k + 1);
        let kind = n.op.kind_name();
        let _ = writeln!(body, "        // node {k}: {kind} `{}` → {}", n.name, n.output);
        let fused_here = fused_prev;
        fused_prev = false;
        // (N, C, 1, 1) for a conv or pooling that reads a vector, as `GraphModel` reshapes it.
        let as_image = |uses: &mut Uses| -> String {
            match input {
                Shape::Image { .. } => x(0),
                _ => {
                    uses.n = true;
                    format!("&{}.reshape((n, {}, 1, 1))?", x(0), input.numel())
                }
            }
        };
        let reshape_out = |natural: [u64; 3], uses: &mut Uses| -> String {
            if n.output.dims() == natural {
                String::new()
            } else {
                uses.n = true;
                format!(".reshape((n, {}))?", dims(&n.output.dims()))
            }
        };
        match &n.op {
            Op::RadixSoftmax { radix, groups } => {
                uses.attention.insert("radix_softmax");
                let _ = writeln!(body, "        let {y} = radix_softmax(&{}, {radix}, {groups})?;", x(0));
            }
            Op::AddBroadcast => {
                let _ = writeln!(body, "        let {y} = {}.broadcast_add(&{})?;", x(0), x(1));
            }
            Op::SoftmaxPositions => {
                uses.attention.insert("softmax_positions");
                let _ = writeln!(body, "        let {y} = softmax_positions(&{})?;", x(0));
            }
            Op::AttentionPool => {
                uses.attention.insert("attention_pool");
                let _ = writeln!(body, "        let {y} = attention_pool(&{}, &{})?;", x(0), x(1));
            }
            Op::SwapChannelsWidth => {
                uses.attention.insert("swap_channels_width");
                let _ = writeln!(body, "        let {y} = swap_channels_width(&{})?;", x(0));
            }
            Op::Conv(_) | Op::Linear(_) => {
                let wt = crate::unify::weight(n, input);
                let Some(p) = by_weight.get(wt.weight_param.as_str()) else {
                    return Err(EmitError::PlanMismatch(format!("node {k} (`{}`): the plan has no weight `{}`", n.name, wt.weight_param)));
                };
                if p.weight.shape != wt.weight_shape {
                    return Err(EmitError::PlanMismatch(format!(
                        "`{}`: the plan's shape is {:?}, the network's {:?}",
                        wt.weight_param, p.weight.shape, wt.weight_shape
                    )));
                }
                let std = p.weight.std;
                if !(std.is_finite() && std >= 0.0) {
                    return Err(EmitError::PlanMismatch(format!("`{}`: std {std} is not a finite non-negative number", wt.weight_param)));
                }
                parameters += wt.parameters();
                let module = wt.weight_param.strip_suffix(".weight").unwrap_or(&n.name);
                let f = ident(module, &format!("{kind}{k}"), &mut taken);
                let bias = match &wt.bias_param {
                    Some(b) => format!("Some({})", lit(b)),
                    None => "None".into(),
                };
                let _ = write!(
                    layers,
                    "    PlanLayer {{\n        weight: {},\n        bias: {bias},\n        shape: &[{}],\n        std: {:?},\n    }},\n",
                    lit(&wt.weight_param),
                    dims(&wt.weight_shape),
                    std
                );
                params.push(wt.weight_param.clone());
                params.extend(wt.bias_param.clone());
                let li = n_layers;
                n_layers += 1;
                match &n.op {
                    Op::Conv(cv) => {
                        uses.conv = true;
                        let own = [cv.out_channels, cv.in_channels / cv.groups, cv.kernel[0], cv.kernel[1]];
                        // A weight stored in another shape than the op reads (a channels-last
                        // linear layer as a 1×1 conv): reshaped, no gradient hand-over.
                        // A ConvTranspose's weight ([C_in, C_out/g, k_h, k_w]): transposed and
                        // turned (`cnnc::nn::graph::transposed_weight`), no hand-over either.
                        let transposed = n.params.as_ref().is_some_and(|p| p.transposed);
                        let reshaped = !transposed && wt.weight_shape != own;
                        let standardized = n.params.as_ref().and_then(|p| p.standardized.as_ref());
                        if (reshaped || transposed) && standardized.is_some() {
                            errors.push(node_msg(k, n, "a standardized weight stored in another shape than the conv reads"));
                            continue;
                        }
                        let pd = cv.pad;
                        let relu = matches!(graph.nodes.get(k + 1), Some(next)
                            if next.op == Op::Activation(Activation::Relu) && next.inputs == [ValueId(k + 1)])
                            && readers[k + 1] == 1;
                        fused_prev = relu;
                        let _ = writeln!(
                            fields,
                            "    /// `{}`: conv {}×{}{} → {}{}.\n    pub {f}: Conv2d,",
                            n.name,
                            cv.kernel[0],
                            cv.kernel[1],
                            if cv.stride == [1, 1] { String::new() } else { format!(" /{}", cv.stride[0]) },
                            n.output,
                            if cv.groups > 1 { format!(", {} groups", cv.groups) } else { String::new() },
                        );
                        let args = [
                            "&vb".to_string(),
                            format!("&LAYERS[{li}]"),
                            format!("{:?}", cv.stride),
                            format!("{:?}", cv.dilation),
                            format!("{:?}", [pd[0].begin, pd[1].begin, pd[0].end, pd[1].end]),
                            cv.groups.to_string(),
                        ];
                        let init = if transposed { "conv_transposed_layer" } else { "conv" };
                        inits.push_str(&call(12, &format!("{f}: {init}("), &args, ")?,"));
                        let arg = as_image(&mut uses);
                        let arg = if arg.starts_with('&') { arg } else { format!("&{arg}") };
                        let (_, oh, ow) = n.output.chw();
                        let out = reshape_out([cv.out_channels, oh, ow], &mut uses);
                        if let Some(st) = standardized {
                            uses.standardized = true;
                            let g = ident(&format!("{f}_std"), &format!("std{k}"), &mut taken);
                            let (factor, gain) = match &st.gain_param {
                                None => (st.gain, "None".to_string()),
                                Some((name, init)) => {
                                    let Some(v) = p.standardized.as_ref().and_then(|i| i.gain_param.as_ref()).filter(|g| g.name == *name)
                                    else {
                                        return Err(EmitError::PlanMismatch(format!(
                                            "node {k} (`{}`): the plan has no value of the gain `{name}`",
                                            n.name
                                        )));
                                    };
                                    params.push(name.clone());
                                    (st.gain / init, format!("Some(({}, {}, {}))", lit(name), cv.out_channels, flit(v.value)))
                                }
                            };
                            let _ = writeln!(
                                fields,
                                "    /// `{}`: the conv's weight standardization.\n    pub {g}: WeightStandardization,",
                                n.name
                            );
                            let args = ["&vb".to_string(), flit(st.epsilon), flit(factor), gain];
                            inits.push_str(&call(12, &format!("{g}: WeightStandardization::new("), &args, ")?,"));
                            let args = [format!("&self.{f}"), format!("&self.{g}"), arg, relu.to_string()];
                            body.push_str(&call(8, &format!("let {y} = conv_standardized("), &args, &format!(")?{out};")));
                        } else if transposed {
                            uses.conv_transposed = true;
                            let args = [format!("&self.{f}"), arg, cv.groups.to_string(), relu.to_string()];
                            body.push_str(&call(8, &format!("let {y} = conv_transposed("), &args, &format!(")?{out};")));
                        } else if reshaped {
                            uses.conv_reshaped = true;
                            let args = [format!("&self.{f}"), arg, format!("{own:?}"), relu.to_string()];
                            body.push_str(&call(8, &format!("let {y} = conv_reshaped("), &args, &format!(")?{out};")));
                        } else {
                            uses.conv_relu |= relu;
                            uses.conv_plain |= !relu;
                            let op = if relu { "conv_relu" } else { "conv" };
                            let _ = writeln!(body, "        let {y} = self.{op}(&self.{f}, {arg})?{out};");
                        }
                    }
                    _ => {
                        uses.linear = true;
                        let _ = writeln!(fields, "    /// `{}`: linear → {}.\n    pub {f}: Linear,", n.name, n.output);
                        let _ = writeln!(inits, "            {f}: linear(&vb, &LAYERS[{li}])?,");
                        uses.n |= !matches!(input, Shape::Vector { .. }) || !matches!(n.output, Shape::Vector { .. });
                        let out = if matches!(n.output, Shape::Vector { .. }) {
                            String::new()
                        } else {
                            format!(".reshape((n, {}))?", dims(&n.output.dims()))
                        };
                        let arg = match input {
                            Shape::Vector { .. } => format!("&{}", x(0)),
                            _ => format!("&{}.reshape((n, ()))?", x(0)),
                        };
                        body.push_str(&field_call(&y, &f, &format!("forward({arg})?"), &out));
                    }
                }
            }
            Op::Activation(a) => {
                if *a == Activation::Relu && fused_here {
                    let _ = writeln!(body, "        // (applied by the conv above)\n        let {y} = {};", x(0));
                } else {
                    let _ = writeln!(body, "        let {y} = {};", act_code(*a, &x(0)));
                }
            }
            Op::Elementwise(e) => {
                let code = match expr_code(e, &x(0), &mut uses) {
                    Val::T { code, var: true } => format!("{code}.clone()"),
                    Val::T { code, .. } => code,
                    Val::C(c) => format!("({}.zeros_like()? + {})?", x(0), flit(c)),
                };
                let _ = writeln!(body, "        let {y} = {code};");
            }
            Op::Pool(_) | Op::GlobalPool(_) => {
                uses.pool = true;
                let p = crate::unify::pooling(n, input);
                let f = ident(&n.name, &format!("pool{k}"), &mut taken);
                let _ = writeln!(fields, "    /// `{}`: {kind} → {}.\n    pub {f}: PoolSpec,", n.name, n.output);
                let _ = writeln!(inits, "            {f}: {},", super::pool_literal(&p));
                let arg = as_image(&mut uses);
                let arg = if arg.starts_with('&') { arg } else { format!("&{arg}") };
                let g = &p.geometry;
                let out = reshape_out([g.channels, g.h.output, g.w.output], &mut uses);
                body.push_str(&field_call(&y, &f, &format!("apply({arg})?"), &out));
            }
            Op::Flatten => {
                uses.n = true;
                let _ = writeln!(body, "        let {y} = {}.reshape((n, {}))?;", x(0), dims(&n.output.dims()));
            }
            Op::Add => {
                let mut s = x(0);
                for i in 1..n.inputs.len() {
                    s = if i == 1 { format!("(&{s} + &{})?", x(i)) } else { format!("({s} + &{})?", x(i)) };
                }
                let _ = writeln!(body, "        let {y} = {s};");
            }
            Op::Concat => {
                let parts: Vec<String> = (0..n.inputs.len()).map(|i| format!("&{}", x(i))).collect();
                body.push_str(&concat(&y, &parts));
            }
            Op::Mul => {
                let _ = writeln!(body, "        let {y} = {}.broadcast_mul(&{})?;", x(0), x(1));
            }
            Op::ChannelSlice { start, end } => {
                let _ = writeln!(body, "        let {y} = {}.narrow(1, {start}, {})?;", x(0), end - start);
            }
            Op::Shuffle { groups } => {
                uses.shuffle = true;
                let _ = writeln!(body, "        let {y} = channel_shuffle(&{}, {groups})?;", x(0));
            }
            Op::Dilate { stride } => {
                uses.dilate = true;
                let _ = writeln!(body, "        let {y} = dilate(&{}, {stride:?})?;", x(0));
            }
            Op::Resize { scale, linear } => {
                uses.resize = true;
                let (_, ih, iw) = input.chw();
                let f = ident(&n.name, &format!("resize{k}"), &mut taken);
                let _ = writeln!(
                    fields,
                    "    /// `{}`: {} upsampling ×{:?} → {}.\n    pub {f}: Resize,",
                    n.name,
                    if *linear { "linear" } else { "nearest" },
                    scale,
                    n.output
                );
                let _ = writeln!(inits, "            {f}: Resize::new({ih}, {iw}, {scale:?}, {linear}, vb.device(), vb.dtype())?,");
                body.push_str(&field_call(&y, &f, &format!("forward(&{})?", x(0)), ""));
            }
            Op::Resample(r) => {
                let (Shape::Image { h: ih, w: iw, .. }, Shape::Image { h: oh, w: ow, .. }) = (input, n.output) else {
                    errors.push(node_msg(k, n, &format!("resamples images, not {input} → {}", n.output)));
                    continue;
                };
                uses.resize = true;
                let f = ident(&n.name, &format!("resample{k}"), &mut taken);
                let _ = writeln!(
                    fields,
                    "    /// `{}`: {} resampling → {}.\n    pub {f}: Resize,",
                    n.name,
                    if r.linear { "linear" } else { "nearest" },
                    n.output
                );
                let _ = write!(
                    resamples,
                    "    Resample {{\n        linear: {},\n        transform: CoordTransform::{:?},\n        nearest: NearestMode::{:?},\n        scale: [{}, {}],\n    }},\n",
                    r.linear,
                    r.transform,
                    r.nearest,
                    flit(r.scale[0]),
                    flit(r.scale[1])
                );
                let args = [
                    format!("&RESAMPLES[{n_resamples}]"),
                    format!("[{ih}, {iw}]"),
                    format!("[{oh}, {ow}]"),
                    "vb.device()".to_string(),
                    "vb.dtype()".to_string(),
                ];
                n_resamples += 1;
                inits.push_str(&call(12, &format!("{f}: Resize::resample("), &args, ")?,"));
                body.push_str(&field_call(&y, &f, &format!("forward(&{})?", x(0)), ""));
            }
            Op::BatchNorm(bn) => {
                uses.norm = true;
                let module = bn.module(&n.name);
                let f = ident(&module, &format!("norm{k}"), &mut taken);
                let value = if bn.scale.is_empty() {
                    1.0
                } else {
                    let Some(v) = scales.get(bn.scale.as_str()) else {
                        return Err(EmitError::PlanMismatch(format!(
                            "node {k} (`{}`): the plan has no BatchNorm scale `{}`",
                            n.name, bn.scale
                        )));
                    };
                    params.push(bn.scale.clone());
                    if !bn.shift.is_empty() {
                        params.push(bn.shift.clone());
                    }
                    *v
                };
                let groups = match bn.groups {
                    Some(g) => format!("Some({g})"),
                    None => "None".into(),
                };
                let _ = write!(
                    norms,
                    "    PlanNorm {{\n        module: {},\n        scale: {},\n        shift: {},\n        channels: {},\n        affine: &[{}],\n        epsilon: {},\n        training: {},\n        groups: {groups},\n        per_position: {},\n        value: {},\n    }},\n",
                    lit(&module),
                    lit(&bn.scale),
                    lit(&bn.shift),
                    bn.channels,
                    dims(&bn.affine),
                    flit(bn.epsilon),
                    bn.training,
                    bn.per_position,
                    flit(value)
                );
                let ni = n_norms;
                n_norms += 1;
                let stats = match (bn.training, bn.groups) {
                    (_, Some(_)) => "each sample's statistics",
                    (true, None) => "batch statistics (running ones in evaluation)",
                    (false, None) => "fixed statistics (mean 0, variance 1)",
                };
                let _ =
                    writeln!(fields, "    /// `{}`: {kind} over {} channels, {stats}.\n    pub {f}: Normalization,", n.name, bn.channels);
                let _ = writeln!(inits, "            {f}: norm(&vb, &BATCH_NORMS[{ni}])?,");
                if bn.training && bn.groups.is_none() {
                    buffers.push(f.clone());
                }
                body.push_str(&field_call(&y, &f, &format!("forward(&{}, training)?", x(0)), ""));
            }
        }
    }
    if !errors.is_empty() {
        return Err(EmitError::Nodes(errors));
    }
    let outputs = last.output.numel();
    let mut s = String::new();
    let std_cap = match plan.std_cap {
        Some(c) => format!("Some({c:?})"),
        None => "None".into(),
    };
    let analysis = if plan.analysis == "map" { "Map" } else { "Paper" };
    let branch_scale = flit(plan.branch_scale.unwrap_or(1.0));
    let plan_batch = match plan.batch {
        Some(b) => format!("Some({b})"),
        None => "None".into(),
    };
    let _ = write!(
        s,
        "//! {name}: a candle model generated by `cnnc emit candle` (cnnc {version}) from\n\
         //! `{spec}`, init mode `{mode}`, for {c}×{h}×{w} inputs.\n\
         //!\n\
         //! A graph: [`Model::forward`] computes its values in order, `x0` the input and `xK`\n\
         //! the output of node K − 1 (cnnc's numbering: `cnnc graph` lists the nodes), with\n\
         //! the operations of `cnnc::nn::GraphModel`. [`Model::new`] asks its `VarBuilder`\n\
         //! for every parameter in node order: each weight with `Init::Randn {{ mean: 0.0,\n\
         //! stdev: σ }}`, σ the plan's ([`LAYERS`]), biases and BatchNorm shifts with\n\
         //! `Init::Const(0.0)`, BatchNorm scales with the plan's constant ([`BATCH_NORMS`]).\n\
         //! Over a `cnnc::emit::SeededVarMap` with seed `s` the weights are those of\n\
         //! `cnnc train --seed s`; over a `VarMap` they are drawn by candle; over a checkpoint\n\
         //! they are loaded. BatchNorm uses batch statistics while the model trains and its\n\
         //! running statistics ([`Model::buffers`]) after [`Model::set_training`]`(false)`.\n\
         //! Readable, and yours to edit: regenerating overwrites it.\n\
         \n\
         // σ are the plan's numbers, not approximations of named constants (1/√2 is one).\n\
         #![allow(clippy::approx_constant)]\n\
         \n",
        name = graph.name,
        version = env!("CARGO_PKG_VERSION"),
        spec = opts.spec_path,
        mode = plan.mode,
    );
    let _ = writeln!(s, "use candle_core::backprop::GradStore;");
    let _ = writeln!(s, "use candle_core::{{Result, Tensor, Var}};");
    let mut nn_items = vec!["Init"];
    if uses.linear {
        nn_items.extend(["Linear", "Module"]);
    }
    nn_items.push("VarBuilder");
    let _ = writeln!(s, "use candle_nn::{{{}}};", nn_items.join(", "));
    let mut ir_items = Vec::new();
    if uses.activation {
        ir_items.push("Activation");
    }
    if uses.fn1 {
        ir_items.push("Fn1");
    }
    if uses.norm {
        ir_items.push("BatchNorm");
    }
    if n_resamples > 0 {
        ir_items.extend(["CoordTransform", "NearestMode", "Resample"]);
    }
    if !ir_items.is_empty() {
        ir_items.sort();
        let list = if ir_items.len() == 1 { ir_items[0].to_string() } else { format!("{{{}}}", ir_items.join(", ")) };
        let _ = writeln!(s, "use cnnc::ir::{list};");
    }
    let _ = writeln!(s, "use cnnc::nn::conv::{{{}}};", if uses.conv { "Conv2d, ConvSpec, GradSink" } else { "GradSink" });
    let mut g_items = Vec::new();
    if uses.shuffle {
        g_items.push("channel_shuffle");
    }
    if uses.dilate {
        g_items.push("dilate");
    }
    if uses.fn1 {
        g_items.push("fn1");
    }
    if uses.norm {
        g_items.push("Normalization");
    }
    if uses.resize {
        g_items.push("Resize");
    }
    if uses.standardized {
        g_items.push("WeightStandardization");
    }
    g_items.extend(uses.attention.iter().copied());
    // rustfmt's order: functions, then types, each alphabetical.
    g_items.sort_by_key(|i| (i.starts_with(|c: char| c.is_ascii_uppercase()), *i));
    if !g_items.is_empty() {
        let list = if g_items.len() == 1 { g_items[0].to_string() } else { format!("{{{}}}", g_items.join(", ")) };
        let _ = writeln!(s, "use cnnc::nn::graph::{list};");
    }
    if uses.pool {
        let _ = writeln!(s, "use cnnc::nn::pool::{{PoolDim, PoolMode, PoolSpec}};");
    }
    let _ = writeln!(s, "use std::sync::atomic::{{AtomicBool, Ordering}};");
    let _ = write!(
        s,
        "\n/// The network this model was generated from.\n\
         {source_const}\n\
         \n\
         /// The plan's init mode, σ cap, analysis, residual branch scale and batch size.\n\
         pub const MODE: &str = {mode};\n\
         pub const STD_CAP: Option<f64> = {std_cap};\n\
         pub const ANALYSIS: cnnc::analyze::Analysis = cnnc::analyze::Analysis::{analysis};\n\
         pub const BRANCH_SCALE: f64 = {branch_scale};\n\
         pub const PLAN_BATCH: Option<u64> = {plan_batch};\n\
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
         /// The plan's weight layers, in node order.\n\
         pub const LAYERS: [PlanLayer; {n_layers}] = {layers};\n\
         \n\
         /// One normalization node: its module (the running statistics' prefix), γ and β\n\
         /// names (empty: none), shapes, statistics (`cnnc::ir::BatchNorm`) and the plan's γ.\n\
         #[derive(Clone, Copy, Debug)]\n\
         pub struct PlanNorm {{\n    \
             pub module: &'static str,\n    \
             pub scale: &'static str,\n    \
             pub shift: &'static str,\n    \
             pub channels: u64,\n    \
             pub affine: &'static [u64],\n    \
             pub epsilon: f64,\n    \
             pub training: bool,\n    \
             pub groups: Option<u64>,\n    \
             pub per_position: bool,\n    \
             pub value: f64,\n\
         }}\n\
         \n\
         /// The normalizations, in node order.\n\
         pub const BATCH_NORMS: [PlanNorm; {n_norms}] = {norms};\n\
         \n\
         {resample_const}\
         /// The parameters in node order (weight, bias; γ, β), as cnnc's model lists them.\n\
         pub const PARAMETERS: [&str; {n_params}] = {param_list};\n\
         \n\
         /// {name}, module by module.\n\
         #[derive(Debug)]\n\
         pub struct Model {{\n{fields}    \
             /// Where the conv ops leave their weight gradients ([`Model::backward`]).\n    \
             sink: GradSink,\n    \
             training: AtomicBool,\n\
         }}\n\n",
        source_const = match source {
            GraphSource::Cnn => format!("pub const SPEC: &str = {};", raw_lit(&opts.spec_text)),
            GraphSource::Onnx { path } => format!("pub const ONNX_PATH: &str = {};", lit(path)),
        },
        mode = lit(&plan.mode),
        n_params = params.len(),
        param_list = string_array(&format!("pub const PARAMETERS: [&str; {}] = ", params.len()), &params),
        layers = array(&layers),
        norms = array(&norms),
        resample_const = if n_resamples == 0 {
            String::new()
        } else {
            format!(
                "/// The resamplings (`cnnc::ir::Resample`: ONNX `Resize` to any size), in node order.\n\
                 pub const RESAMPLES: [Resample; {n_resamples}] = {};\n\n",
                array(&resamples)
            )
        },
        name = graph.name,
    );
    let n_line = if uses.n { "        let n = xs.dim(0)?;\n" } else { "" };
    let input_line = format!("        let x0 = xs.reshape(({}{c}, {h}, {w}))?;\n", if uses.n { "n, " } else { "xs.dim(0)?, " });
    let training_line = if uses.norm { "        let training = self.is_training();\n" } else { "" };
    let buffer_code = match buffers.split_first() {
        None => "        Vec::new()\n".to_string(),
        Some((first, rest)) => {
            let mut code = format!("        let mut out = self.{first}.buffers();\n");
            for b in rest {
                let _ = writeln!(code, "        out.extend(self.{b}.buffers());");
            }
            code + "        out\n"
        }
    };
    let _ = write!(
        s,
        "impl Model {{\n    \
             /// Builds the model from `vb` (see the module doc for what each parameter is).\n    \
             pub fn new(vb: VarBuilder) -> Result<Model> {{\n        \
                 Ok(Model {{\n{inits}            \
                     sink: GradSink::default(),\n            \
                     training: AtomicBool::new(true),\n        \
                 }})\n    \
             }}\n\
         \n    \
             /// Runs a batch (N, {c}, {h}, {w}); returns (N, {out}).\n    \
             pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {{\n\
         {n_line}{training_line}{input_line}{body}        Ok(x{last_value})\n    \
             }}\n\
         \n\
         {conv_methods}    \
             /// The gradients of `loss`: candle's autograd, the conv weight and bias gradients\n    \
             /// handed over by cnnc's conv ops (`cnnc::nn::backward_with_sink`).\n    \
             pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {{\n        \
                 cnnc::nn::backward_with_sink(&self.sink, loss)\n    \
             }}\n\
         \n    \
             /// Training mode (the default: BatchNorm uses and tracks batch statistics) or\n    \
             /// evaluation mode (it uses its running statistics).\n    \
             pub fn set_training(&self, on: bool) {{\n        \
                 self.training.store(on, Ordering::SeqCst);\n    \
             }}\n\
         \n    \
             pub fn is_training(&self) -> bool {{\n        \
                 self.training.load(Ordering::SeqCst)\n    \
             }}\n\
         \n    \
             /// The BatchNorm running statistics (checkpoint buffers), by `state_dict` name.\n    \
             pub fn buffers(&self) -> Vec<(String, Var)> {{\n{buffer_code}    \
             }}\n\
         \n    \
             /// The parameter names in node order.\n    \
             pub fn parameter_names() -> Vec<&'static str> {{\n        \
                 PARAMETERS.to_vec()\n    \
             }}\n\
         }}\n\n",
        out = dims(&last.output.dims()),
        last_value = graph.nodes.len(),
        conv_methods = conv_methods(&uses),
    );
    s.push_str("fn weight(vb: &VarBuilder, p: &PlanLayer) -> Result<Tensor> {\n    let init = Init::Randn {\n        mean: 0.0,\n        stdev: p.std,\n    };\n    vb.get_with_hints(p.shape, p.weight, init)\n}\n\n");
    s.push_str("fn bias(vb: &VarBuilder, p: &PlanLayer) -> Result<Option<Tensor>> {\n    p.bias\n        .map(|b| vb.get_with_hints(p.shape[0], b, Init::Const(0.0)))\n        .transpose()\n}\n\n");
    if uses.conv {
        s.push_str(
            "/// A conv layer: cnnc's convolution (im2col + GEMM or Winograd on the CPU, candle's\n\
             /// `conv2d` elsewhere), padded by `pad` = [top, left, bottom, right].\n\
             fn conv(\n    vb: &VarBuilder,\n    p: &PlanLayer,\n    stride: [usize; 2],\n    dilation: [usize; 2],\n    pad: [usize; 4],\n    groups: usize,\n) -> Result<Conv2d> {\n    \
             let spec = ConvSpec {\n        stride,\n        dilation,\n        pad,\n        groups,\n    };\n    \
             Ok(Conv2d::new(weight(vb, p)?, bias(vb, p)?, spec))\n}\n\n",
        );
    }
    if uses.norm {
        s.push_str(
            "/// A normalization: cnnc's (`cnnc::nn::graph::normalize`), γ the plan's constant.\n\
             fn norm(vb: &VarBuilder, p: &PlanNorm) -> Result<Normalization> {\n    \
             let spec = BatchNorm {\n        channels: p.channels,\n        epsilon: p.epsilon,\n        training: p.training,\n        \
             groups: p.groups,\n        per_position: p.per_position,\n        scale: p.scale.into(),\n        shift: p.shift.into(),\n        \
             affine: p.affine.to_vec(),\n    };\n    Normalization::new(vb, spec, p.module, p.value)\n}\n\n",
        );
    }
    if uses.conv_reshaped {
        s.push_str(
            "/// A conv whose weight is stored in another shape than it reads (a channels-last linear\n\
             /// layer as a 1×1 conv): reshaped, its gradient through candle's autograd, the ReLU\n\
             /// of its only reader after it, as `GraphModel` runs it.\n\
             fn conv_reshaped(c: &Conv2d, x: &Tensor, shape: [usize; 4], relu: bool) -> Result<Tensor> {\n    \
             let w = c.weight.reshape(shape.to_vec())?;\n    \
             let u = c.spec.apply(x, &w, c.bias.as_ref())?;\n    \
             if relu {\n        cnnc::nn::relu::relu(&u)\n    } else {\n        Ok(u)\n    }\n}\n\n",
        );
    }
    if uses.conv_transposed {
        s.push_str(
            "/// A ConvTranspose's stride-1 conv (after its zeros): the stored weight, [C_in, C_out/g,\n\
             /// k_h, k_w], transposed per group and turned by 180° (`cnnc::nn::graph::transposed_weight`),\n\
             /// its gradient through candle's autograd, the ReLU of its only reader after it, as\n\
             /// `GraphModel` runs it.\n\
             fn conv_transposed(c: &Conv2d, x: &Tensor, groups: usize, relu: bool) -> Result<Tensor> {\n    \
             let w = cnnc::nn::graph::transposed_weight(&c.weight, groups)?;\n    \
             let u = c.spec.apply(x, &w, c.bias.as_ref())?;\n    \
             if relu {\n        cnnc::nn::relu::relu(&u)\n    } else {\n        Ok(u)\n    }\n}\n\n\
             /// A ConvTranspose's layer: its weight as stored, [C_in, C_out/g, k_h, k_w], and a\n\
             /// bias of C_out = C_out/g · g.\n\
             fn conv_transposed_layer(\n    vb: &VarBuilder,\n    p: &PlanLayer,\n    stride: [usize; 2],\n    dilation: [usize; 2],\n    pad: [usize; 4],\n    groups: usize,\n) -> Result<Conv2d> {\n    \
             let spec = ConvSpec {\n        stride,\n        dilation,\n        pad,\n        groups,\n    };\n    \
             let bias = p\n        .bias\n        .map(|b| vb.get_with_hints(p.shape[1] * groups, b, Init::Const(0.0)))\n        .transpose()?;\n    \
             Ok(Conv2d::new(weight(vb, p)?, bias, spec))\n}\n\n",
        );
    }
    if uses.standardized {
        s.push_str(
            "/// A conv of a standardized weight: the weight it uses computed from the stored one\n\
             /// (`cnnc::nn::graph::standardize_weight`), its gradient through candle's autograd,\n\
             /// the ReLU of its only reader after it, as `GraphModel` runs it.\n\
             fn conv_standardized(\n    c: &Conv2d,\n    s: &WeightStandardization,\n    x: &Tensor,\n    relu: bool,\n) -> Result<Tensor> {\n    \
             let w = s.weight(&c.weight)?;\n    \
             let u = c.spec.apply(x, &w, c.bias.as_ref())?;\n    \
             if relu {\n        cnnc::nn::relu::relu(&u)\n    } else {\n        Ok(u)\n    }\n}\n\n",
        );
    }
    if uses.linear {
        s.push_str(
            "fn linear(vb: &VarBuilder, p: &PlanLayer) -> Result<Linear> {\n    Ok(Linear::new(weight(vb, p)?, bias(vb, p)?))\n}\n\n",
        );
    }
    let ignore = if parameters > BIG_MODEL_PARAMETERS {
        format!("    #[ignore = \"{parameters} parameters drawn twice: run with --release -- --ignored\"]\n")
    } else {
        String::new()
    };
    let graph_line = match source {
        GraphSource::Cnn => CNN_GRAPH_LINE.to_string(),
        GraphSource::Onnx { .. } => "        let input = cnnc::InputSize::Chw(INPUT.map(|d| d as u64));\n        \
             let graph = cnnc::load(std::path::Path::new(ONNX_PATH), input)\n            .unwrap()\n            .graph;\n"
            .to_string(),
    };
    s.push_str(
        &TESTS
            .replace(CNN_GRAPH_LINE, &graph_line)
            .replace("{{ignore}}", &ignore)
            .replace("{c}", &c.to_string())
            .replace("{h}", &h.to_string())
            .replace("{w}", &w.to_string()),
    );
    Ok(s)
}

/// How the generated tests read a `.cnn` graph (an ONNX one's read its file instead).
const CNN_GRAPH_LINE: &str = "        let graph = cnnc::Source::new(\"spec\", SPEC).graph().unwrap();\n";

/// The generated model's tests: the embedded plan is cnnc's, and the model is cnnc's
/// `GraphModel` bit for bit (weights, outputs in training and evaluation, gradients
/// through the hand-over, running statistics).
const TESTS: &str = r#"#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn reference() -> (cnnc::ir::Graph, cnnc::plan::Plan) {
        let graph = cnnc::Source::new("spec", SPEC).graph().unwrap();
        let req = cnnc::GraphRequest {
            opts: cnnc::analyze::Options {
                mode: MODE.parse().unwrap(),
                std_cap: STD_CAP,
            },
            analysis: ANALYSIS,
            branch_scale: BRANCH_SCALE,
            batch: PLAN_BATCH,
        };
        let plan = cnnc::plan_graph(&graph, req).unwrap();
        (graph, plan)
    }

    /// The embedded σ and scales are those cnnc plans for the embedded spec.
    #[test]
    fn layers_are_the_plan() {
        let (_, plan) = reference();
        assert_eq!(plan.layers.len(), LAYERS.len());
        for l in &LAYERS {
            let p = plan
                .layers
                .iter()
                .find(|p| p.weight.name == l.weight)
                .unwrap();
            assert_eq!(p.bias.as_ref().map(|b| b.name.as_str()), l.bias);
            assert_eq!(
                p.weight.shape,
                l.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()
            );
            assert_eq!(p.weight.std, l.std, "{}", l.weight);
        }
        let norms = plan.batch_norms.unwrap_or_default();
        for b in BATCH_NORMS.iter().filter(|b| !b.scale.is_empty()) {
            let p = norms.iter().find(|p| p.scale.name == b.scale).unwrap();
            assert_eq!(p.scale.value, b.value, "{}", b.scale);
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The same seed gives `cnnc train`'s weights, and the same outputs, gradients and
    /// running statistics, in training and in evaluation mode.
    #[test]
{{ignore}}    fn same_output_as_cnnc() {
        let (graph, plan) = reference();
        let dev = Device::Cpu;
        let cnnc_model = cnnc::nn::GraphModel::new(&graph, &plan, 7, &dev, DType::F32).unwrap();
        let vars = cnnc::emit::SeededVarMap::new(7);
        let model = Model::new(vars.var_builder(DType::F32, &dev)).unwrap();
        let names: Vec<String> = cnnc_model
            .named_vars()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, Model::parameter_names());
        for (name, var) in cnnc_model.named_vars() {
            assert_eq!(values(&vars.var(&name).unwrap()), values(&var), "{name}");
        }
        let buffer_names =
            |b: Vec<(String, Var)>| b.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(
            buffer_names(model.buffers()),
            buffer_names(cnnc_model.buffers())
        );
        // Training mode: outputs, then the gradients of the same loss.
        let x = Tensor::randn(0f32, 1.0, (3, {c}, {h}, {w}), &dev).unwrap();
        let ours = model.forward(&x).unwrap();
        let theirs = cnnc_model.forward(&x).unwrap();
        assert_eq!(values(&ours), values(&theirs));
        let r = Tensor::randn(0f32, 1.0, ours.shape(), &dev).unwrap();
        let ours_grads = model
            .backward(&(&ours * &r).unwrap().sum_all().unwrap())
            .unwrap();
        let theirs_grads = cnnc_model
            .backward(&(&theirs * &r).unwrap().sum_all().unwrap())
            .unwrap();
        for (name, var) in cnnc_model.named_vars() {
            let g = |grads: &GradStore, v: &Var| grads.get(v.as_tensor()).map(values);
            let ours = g(&ours_grads, &vars.var(&name).unwrap());
            let theirs = g(&theirs_grads, &var);
            assert!(theirs.is_some(), "cnnc's model has a gradient of {name}");
            assert_eq!(ours, theirs, "the gradient of {name}");
        }
        // A second training step's running statistics, then evaluation mode.
        let x = Tensor::randn(0f32, 1.0, (3, {c}, {h}, {w}), &dev).unwrap();
        assert_eq!(
            values(&model.forward(&x).unwrap()),
            values(&cnnc_model.forward(&x).unwrap())
        );
        for ((name, ours), (_, theirs)) in model.buffers().iter().zip(cnnc_model.buffers()) {
            assert_eq!(values(ours), values(&theirs), "{name}");
        }
        model.set_training(false);
        cnnc_model.set_training(false);
        assert_eq!(
            values(&model.forward(&x).unwrap()),
            values(&cnnc_model.forward(&x).unwrap())
        );
    }
}
"#;
