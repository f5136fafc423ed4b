//! Hostile inputs (issue 20): models and descriptions crafted to make cnnc panic, abort,
//! run without bound or write where it should not. Every case is a clean error naming
//! its place (ONNX node, layer, file:line:col) or a correct result; none panics.

use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::ir;
use cnnc::onnx::proto::{ModelProto, NodeProto, TensorProto, ValueInfoProto};
use cnnc::onnx::{self, Bytes, ImportOptions};
use prost::Message;

mod common;
use common::{attr, image_input, init, int64s, model_at, node, scalar, A};

// ------------------------------------------------------------------ builders (tests/common)

fn model(opset: i64, inputs: Vec<ValueInfoProto>, nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    model_at(opset, inputs, nodes, inits)
}

/// Encodes, decodes and imports, as a file would go.
fn import(m: &ModelProto) -> Result<ir::Graph, String> {
    let model = onnx::decode(Bytes::from(m.encode_to_vec())).map_err(|e| e.to_string())?;
    onnx::import(&model, &ImportOptions::default()).map_err(|e| e.to_string())
}

/// A conv `conv` (x → c, weight W [4, 3, 3, 3], bias B) on a 3×11×11 input, then `extra`.
fn stem(opset: i64, extra: Vec<NodeProto>, extra_inits: Vec<TensorProto>) -> ModelProto {
    let mut nodes = vec![node("conv", "Conv", &["x", "W", "B"], &["c"], vec![])];
    nodes.extend(extra);
    let mut inits = vec![init("W", &[4, 3, 3, 3]), init("B", &[4])];
    inits.extend(extra_inits);
    model(opset, vec![image_input(3, 11, 11)], nodes, inits)
}

/// Imports and plans (both analyses, forward and backward): the first error, as the CLI
/// prints it. A plan is checked for numbers JSON cannot hold (written as `null`).
fn plan(m: &ModelProto) -> Result<(), String> {
    let g = import(m)?;
    plan_ir(&g)
}

fn plan_ir(g: &ir::Graph) -> Result<(), String> {
    for analysis in [Analysis::Paper, Analysis::Map] {
        for mode in [Mode::Forward, Mode::Backward] {
            let req = cnnc::GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
            let json = cnnc::plan_graph(g, req).map_err(|e| e.to_string())?.to_json();
            // JSON writes ∞ and NaN as `null`; only these optional fields may be null.
            let nulls = json.lines().filter(|l| l.trim_end().trim_end_matches(',').ends_with("null"));
            for line in nulls {
                let key = line.trim().split('"').nth(1).unwrap_or_default();
                assert!(["bias", "pooling", "conv", "std_cap"].contains(&key), "{mode:?} {analysis:?}: `{line}` in {json}");
            }
        }
    }
    Ok(())
}

/// Lowers a `.cnn` description (as `cnnc plan` reads one) and plans it.
fn plan_cnn(text: &str) -> Result<(), String> {
    let g = cnnc::Source::new("t.cnn", text).graph().map_err(|e| e.to_string())?;
    plan_ir(&g)
}

#[track_caller]
fn assert_error(result: Result<(), String>, expected: &str) {
    match result {
        Ok(()) => panic!("accepted; expected an error containing {expected:?}"),
        Err(e) => assert!(e.contains(expected), "{e:?} does not contain {expected:?}"),
    }
}

/// `count` nodes `op` chained after the stem's conv (`c` → `e1` → … → `e{count}`), each
/// reading its input `arity` times.
fn chain(op: &str, arity: usize, count: usize) -> Vec<NodeProto> {
    (1..=count)
        .map(|k| {
            let input = if k == 1 { "c".to_string() } else { format!("e{}", k - 1) };
            node(&format!("n{k}"), op, &vec![input.as_str(); arity], &[&format!("e{k}")], vec![])
        })
        .collect()
}

// ------------------------------------------------------------------ values checked where they enter

/// Clip bounds with min > max or NaN, as attributes (before opset 11) or as inputs, are
/// errors naming the node (they panicked in `f64::clamp` during the analysis).
#[test]
fn clip_bounds_out_of_order_or_nan_are_errors() {
    let bad = "node `clip` (Clip): the Clip bounds must be numbers with min ≤ max";
    let by_attrs =
        |lo: f32, hi: f32| stem(10, vec![node("clip", "Clip", &["c"], &["y"], vec![attr("min", A::F(lo)), attr("max", A::F(hi))])], vec![]);
    assert_error(plan(&by_attrs(6.0, 0.0)), bad);
    assert_error(plan(&by_attrs(f32::NAN, 6.0)), "node `clip` (Clip): attribute `min` must be finite, got NaN");
    assert_error(plan(&by_attrs(0.0, f32::NAN)), "node `clip` (Clip): attribute `max` must be finite, got NaN");
    let by_inputs = |lo: f32, hi: f32| {
        stem(13, vec![node("clip", "Clip", &["c", "lo", "hi"], &["y"], vec![])], vec![scalar("lo", lo), scalar("hi", hi)])
    };
    assert_error(plan(&by_inputs(1.0, -1.0)), bad);
    assert_error(plan(&by_inputs(f32::NAN, 1.0)), bad);
    assert_error(plan(&by_inputs(0.0, f32::NAN)), bad);
    // Equal bounds, one bound, ReLU6: planned.
    plan(&by_inputs(-1.0, 2.0)).unwrap();
    plan(&by_attrs(0.0, 6.0)).unwrap();
    plan(&stem(13, vec![node("clip", "Clip", &["c", "lo"], &["y"], vec![])], vec![scalar("lo", 0.0)])).unwrap();
}

/// A Slice step of 0 is invalid ONNX; other steps subsample or reverse the axis, which
/// cnnc does not model: errors naming the node, whether or not the slice is full.
#[test]
fn slice_steps_other_than_one_are_errors() {
    let slice = |starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]| {
        stem(
            13,
            vec![node("s", "Slice", &["c", "starts", "ends", "axes", "steps"], &["y"], vec![])],
            vec![int64s("starts", starts), int64s("ends", ends), int64s("axes", axes), int64s("steps", steps)],
        )
    };
    assert_error(plan(&slice(&[0], &[i64::MAX], &[2], &[0])), "node `s` (Slice): the step along axis 2 is 0");
    assert_error(plan(&slice(&[0], &[2], &[1], &[0])), "node `s` (Slice): the step along axis 1 is 0");
    assert_error(plan(&slice(&[0], &[i64::MAX], &[3], &[2])), "node `s` (Slice): Slice with step 2 along axis 3 is not supported");
    assert_error(plan(&slice(&[-1], &[i64::MIN], &[3], &[-1])), "Slice with step -1 along axis 3 is not supported");
    plan(&slice(&[0], &[2], &[1], &[1])).unwrap();
}

/// An activation whose slope makes τ or γ infinite (a plan of `null`s before) is an
/// error naming the layer; so is a graph whose gradients overflow through such slopes.
#[test]
fn enormous_slopes_are_errors_naming_the_layer() {
    let chain =
        |slope: &str| format!("network n\ninput 3x16x16\nConv(3/p1) -> 4, leaky_relu({slope})\nConv(3/p1) -> 4, relu\nConv(3/p1) -> 4\n");
    assert_error(plan_cnn(&chain("1e300")), "layer 1 (`0`): its activation and pooling give τ = inf and γ = inf");
    plan_cnn(&chain("0.2")).unwrap();
    // ONNX slopes are f32 (≤ 3.4e38): τ stays finite, but five of them in a residual
    // graph multiply the gradient's second moment past f64.
    let mut nodes = vec![node("conv", "Conv", &["x", "W", "B"], &["c0"], vec![])];
    let mut inits = vec![init("W", &[4, 3, 3, 3]), init("B", &[4])];
    for k in 1..=5 {
        let (prev, act, conv, w) = (format!("c{}", k - 1), format!("a{k}"), format!("c{k}"), format!("W{k}"));
        nodes.push(node(&act, "LeakyRelu", &[&prev], &[&act], vec![attr("alpha", A::F(3e38))]));
        nodes.push(node(&conv, "Conv", &[&act, &w], &[&conv], vec![attr("pads", A::Is(vec![1, 1, 1, 1]))]));
        inits.push(init(&w, &[4, 4, 3, 3]));
    }
    nodes.push(node("res", "Add", &["c5", "c0"], &["y"], vec![]));
    let m = model(13, vec![image_input(3, 11, 11)], nodes, inits);
    plan(&m).unwrap();
    // σ² = 0 is no overflow: the last layer of a residual branch at --branch-scale 0.
    let req = cnnc::GraphRequest {
        opts: Options { mode: Mode::Forward, std_cap: None },
        analysis: Analysis::Paper,
        branch_scale: 0.0,
        batch: None,
    };
    let zero = cnnc::plan_graph(&import(&m).unwrap(), req).unwrap();
    assert_eq!(zero.layers.iter().filter(|l| l.weight.std == 0.0).count(), 1);
    // Constant factors multiply past f64 in an element-wise chain between two convs.
    let mut nodes = vec![];
    for k in 1..=5 {
        nodes.push(node(&format!("m{k}"), "Mul", &[&format!("c{}", k - 1).replace("c0", "c"), "big"], &[&format!("c{k}")], vec![]));
    }
    nodes.push(node("conv2", "Conv", &["c5", "W2"], &["y"], vec![]));
    let m = stem(13, nodes, vec![scalar("big", 3e38), init("W2", &[4, 4, 3, 3])]);
    assert_error(plan(&m), "over- or underflows");
}

/// A node output named like a graph input, an initializer or another node's output
/// would shadow it (the node silently ignored, or the input redefined): an error naming
/// both definitions.
#[test]
fn redefined_names_are_errors_naming_both_definitions() {
    let relu_to = |out: &str| stem(13, vec![node("r", "Relu", &["c"], &[out], vec![])], vec![]);
    assert_error(plan(&relu_to("x")), "node `r` (Relu) redefines the value `x`, which is the graph input `x`");
    assert_error(plan(&relu_to("W")), "node `r` (Relu) redefines the value `W`, which is the initializer `W`");
    assert_error(plan(&relu_to("c")), "node `r` (Relu) redefines the value `c`, which is the output of node `conv` (Conv)");
    let twice = stem(13, vec![node("r", "Relu", &["c"], &["y"], vec![]), node("s", "Sigmoid", &["c"], &["y"], vec![])], vec![]);
    assert_error(plan(&twice), "node `s` (Sigmoid) redefines the value `y`, which is the output of node `r` (Relu)");
    let mut two_inits = stem(13, vec![], vec![init("W", &[4, 3, 3, 3])]);
    assert_error(plan(&two_inits), "two initializers are named `W`");
    // An initializer that is also a graph input (its default value) is one definition.
    let g = two_inits.graph.as_mut().unwrap();
    g.initializer.pop();
    g.input.push(ValueInfoProto { name: Some("W".into()), ..Default::default() });
    plan(&two_inits).unwrap();
}

/// Two weight layers reading one initializer (tied weights) would get two plan entries
/// with different σ, and `init` would draw the tensor with the last: an error naming
/// both layers.
#[test]
fn a_weight_shared_by_two_layers_is_an_error() {
    let m = stem(
        13,
        vec![
            node("r", "Relu", &["c"], &["r"], vec![]),
            node("conv2", "Conv", &["r", "V"], &["c2"], vec![]),
            node("conv3", "Conv", &["c2", "V"], &["y"], vec![]),
        ],
        vec![init("V", &[4, 4, 1, 1])],
    );
    assert_error(plan(&m), "the weight `V` is read by node `conv2` (conv) and node `conv3` (conv)");
}

/// Names with control characters (terminal escape sequences) are escaped in messages,
/// never echoed raw: in the library's errors and on the command line's stderr.
#[test]
fn control_characters_in_names_are_escaped() {
    let evil = "a\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let m = stem(13, vec![node(evil, "Foo\u{1b}[31m", &["c"], &["y"], vec![])], vec![]);
    let e = plan(&m).unwrap_err();
    assert!(!e.contains('\u{1b}') && e.contains("a\\u{1b}]0;pwned\\u{7}\\u{1b}[2J") && e.contains("Foo\\u{1b}[31m"), "{e}");
    let m = stem(13, vec![node(evil, "Clip", &["c"], &["y"], vec![attr("min", A::F(1.0)), attr("max", A::F(0.0))])], vec![]);
    let e = plan(&m).unwrap_err();
    assert!(!e.contains('\u{1b}') && e.contains("node `a\\u{1b}]0;pwned\\u{7}\\u{1b}[2J` (Clip)"), "{e}");

    let dir = std::env::temp_dir().join(format!("cnnc-hostile-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("evil.onnx");
    let mut m = stem(13, vec![node(evil, "Relu", &["c"], &["y"], vec![])], vec![]);
    m.graph.as_mut().unwrap().node[1].output[0] = "c".into();
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let cnn = dir.join("evil.cnn");
    std::fs::write(&cnn, "network n\ninput 3x8x8\nConv(3) -> 4, relu \u{1b}[2J(\n").unwrap();
    for file in [&path, &cnn] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc")).arg("plan").arg(file).output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!err.contains('\u{1b}') && err.contains("\\u{1b}"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Reshape to (batch, features) whose first size is not the batch axis (0) or 1 (an
/// export at batch size 1) moves elements between samples ([5, -1] of 256 elements);
/// a feature count other than the sample's is refused too.
#[test]
fn reshapes_that_do_not_keep_the_sample_size_are_errors() {
    let reshape = |target: &[i64]| stem(13, vec![node("view", "Reshape", &["c", "s"], &["f"], vec![])], vec![int64s("s", target)]);
    for t in [[5, -1], [-1, -1], [2, 162], [-1, 323], [1, 325]] {
        assert_error(plan(&reshape(&t)), "node `view` (Reshape): a reshape of (4,9,9) to");
    }
    for t in [[0, -1], [1, -1], [-1, 324], [1, 324]] {
        plan(&reshape(&t)).unwrap();
    }
}

// ------------------------------------------------------------------ bounded work and memory

/// An element-wise chain whose steps read their input twice (`y = Mul(y, y)`) doubled
/// its expression per step (40 steps: 2⁴⁰ operations); a chain of 20k `Neg` kept n²/2
/// operations. Both meet a limit named in the error, within milliseconds.
#[test]
fn element_wise_chains_are_bounded() {
    for op in ["Mul", "Add"] {
        let t = std::time::Instant::now();
        assert_error(plan(&stem(13, chain(op, 2, 40), vec![])), "has more than 1000 operations");
        assert!(t.elapsed().as_secs() < 5, "{op}: {:?}", t.elapsed());
    }
    assert_error(plan(&stem(13, chain("Neg", 1, 20_000), vec![])), "node `n1000` (Neg): the element-wise function ending here has more");
    // Chains under the limit, many of them: their operations together are bounded.
    let t = std::time::Instant::now();
    let mut nodes = vec![];
    for c in 0..12 {
        let mut links = chain("Neg", 1, 990);
        for n in &mut links {
            n.name = Some(format!("{c}.{}", n.name()));
            n.output[0] = format!("{c}.{}", n.output[0]);
            if n.input[0] != "c" {
                n.input[0] = format!("{c}.{}", n.input[0]);
            }
        }
        nodes.extend(links);
    }
    assert_error(plan(&stem(13, nodes, vec![])), "hold more than 4000000 operations together");
    assert!(t.elapsed().as_secs() < 20, "{:?}", t.elapsed());
    // Short chains are planned as before.
    plan(&stem(13, chain("Add", 2, 3), vec![])).unwrap();
    plan(&stem(13, chain("Neg", 1, 300), vec![])).unwrap();
}

fn cli(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stderr).unwrap())
}

/// Weights a file declares but does not carry are drawn by `init`, and a spec's by
/// `export-onnx`: their bytes are checked before anything is allocated (a 230-byte model
/// declaring [32767, 1024, 8, 8] allocated 8 GB and aborted).
#[test]
fn weights_to_draw_are_checked_in_bytes_before_allocating() {
    let dir = std::env::temp_dir().join(format!("cnnc-hostile-bytes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = model(
        13,
        vec![image_input(1024, 8, 8)],
        vec![node("conv", "Conv", &["x", "W"], &["y"], vec![])],
        vec![init("W", &[32767, 1024, 8, 8])],
    );
    let path = dir.join("declared.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 300);
    let out = dir.join("out.onnx");
    let (code, err) = cli(&["init".as_ref(), path.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the weights up to `W` [32767, 1024, 8, 8] take more than 4294967296 bytes (4 GiB)"), "{err}");
    let spec = dir.join("wide.cnn");
    std::fs::write(&spec, "network wide\ninput 32767x1x1\nConv(1) -> 65535\n").unwrap();
    let (code, err) = cli(&["export-onnx".as_ref(), spec.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the weights up to `0.weight` [65535, 32767, 1, 1] take more than 4294967296 bytes"), "{err}");
    assert!(!out.exists());
    // At the limit's scale of a real network, both write.
    let small = dir.join("small.cnn");
    std::fs::write(&small, "network small\ninput 3x8x8\nConv(3) -> 4, relu\nConv(3) -> 4\n").unwrap();
    let (code, err) = cli(&["export-onnx".as_ref(), small.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = cli(&["init".as_ref(), out.as_os_str(), "-o".as_ref(), dir.join("again.onnx").as_os_str()]);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The analyses' work and memory are computed from the graph before they run: a large
/// kernel on a large map (hours of the map analysis), a wide Gemm followed by many
/// activations (tens of GB of per-feature moments) are refused with the figure; the
/// paper analysis of the same chain, whose work does not grow with the map, plans it.
#[test]
fn analysis_budgets_are_checked_up_front() {
    let spec = "network wide\ninput 1x4096x4096\nConv(1025) -> 1, relu\nConv(3) -> 1\n";
    let g = cnnc::Source::new("t.cnn", spec).graph().unwrap();
    let net = cnnc::unify::unify(&g).unwrap();
    let t = std::time::Instant::now();
    let e = cnnc::analyze::analyze_with(&net, Options { mode: Mode::Forward, std_cap: None }, Analysis::Map).unwrap_err().to_string();
    assert!(e.starts_with("layer 1 (`0`): the map analysis would take 1.98e13 steps") && e.contains("plan with --analysis paper"), "{e}");
    cnnc::analyze::analyze_with(&net, Options { mode: Mode::Forward, std_cap: None }, Analysis::Paper).unwrap();
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());

    // The same kernel in a graph (a residual join makes it one).
    let big = model(
        13,
        vec![image_input(1, 4096, 4096)],
        vec![
            node("big", "Conv", &["x", "K"], &["c"], vec![attr("pads", A::Is(vec![512, 512, 512, 512]))]),
            node("res", "Add", &["c", "x"], &["y"], vec![]),
        ],
        vec![init("K", &[1, 1, 1025, 1025])],
    );
    let g = import(&big).unwrap();
    let req =
        |analysis| cnnc::GraphRequest { opts: Options { mode: Mode::Forward, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
    let e = cnnc::plan_graph(&g, req(Analysis::Map)).unwrap_err().to_string();
    assert!(e.starts_with("node `big` (conv): the map analysis would take"), "{e}");

    // Gemm to 2²² features, then 300 activations: 1.3 × 10⁹ per-feature moments.
    let mut nodes =
        vec![node("flat", "Flatten", &["x"], &["f"], vec![]), node("fc", "Gemm", &["f", "G"], &["a0"], vec![attr("transB", A::I(1))])];
    for k in 1..=300 {
        nodes.push(node(
            &format!("act{k}"),
            if k % 2 == 0 { "Relu" } else { "Tanh" },
            &[&format!("a{}", k - 1)],
            &[&format!("a{k}")],
            vec![],
        ));
    }
    let m = model(13, vec![image_input(3, 1, 1)], nodes, vec![init("G", &[1 << 22, 3])]);
    let t = std::time::Instant::now();
    let g = import(&m).unwrap();
    for analysis in [Analysis::Paper, Analysis::Map] {
        let e = cnnc::plan_graph(&g, req(analysis)).unwrap_err().to_string();
        assert!(
            e.starts_with("node `fc` (linear): the analysis keeps 1262485510 channel moments") && e.contains("over its budget of 16777216"),
            "{e}"
        );
    }
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
}

/// A join of many inputs (a Sum of 10k convs' outputs took 12 s, quadratic in the count)
/// is planned in bounded time, or refused past the join width budget.
#[test]
fn wide_joins_are_bounded() {
    let sum = |n: usize| {
        let mut nodes = vec![];
        let mut inits = vec![];
        let mut outs = vec![];
        for k in 0..n {
            nodes.push(node(&format!("conv{k}"), "Conv", &["x", &format!("W{k}")], &[&format!("c{k}")], vec![]));
            inits.push(init(&format!("W{k}"), &[2, 3, 1, 1]));
            outs.push(format!("c{k}"));
        }
        nodes.push(node("sum", "Sum", &outs.iter().map(String::as_str).collect::<Vec<_>>(), &["y"], vec![]));
        model(13, vec![image_input(3, 4, 4)], nodes, inits)
    };
    let t = std::time::Instant::now();
    plan(&sum(1000)).unwrap();
    assert!(t.elapsed().as_secs() < 20, "{:?}", t.elapsed());
    let t = std::time::Instant::now();
    assert_error(plan(&sum(10_000)), "node `sum` (add): a join of 10000 inputs: cnnc's analysis takes at most 1024");
    assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
    // 40k residual blocks (a 1×1 conv and a join), each join tracing its branches over
    // the values before it.
    let (mut nodes, mut inits) = (vec![], vec![]);
    for k in 1..=40_000 {
        let prev = if k == 1 { "c".to_string() } else { format!("e{}", k - 1) };
        nodes.push(node(&format!("conv{k}"), "Conv", &[&prev, &format!("W{k}")], &[&format!("b{k}")], vec![]));
        nodes.push(node(&format!("n{k}"), "Add", &[&format!("b{k}"), &prev], &[&format!("e{k}")], vec![]));
        inits.push(init(&format!("W{k}"), &[4, 4, 1, 1]));
    }
    let t = std::time::Instant::now();
    assert_error(plan(&stem(13, nodes, inits)), "node `n40000` (add): tracing the residual branches of 40000 joins over 80002 values");
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
}

// ------------------------------------------------------------------ the DSL

fn dsl_error(text: &str) -> String {
    let t = std::time::Instant::now();
    let e = cnnc::Source::new("t.cnn", text).graph().unwrap_err().to_string();
    assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
    e
}

/// `repeat` loops count iterations, not layers (three nested `repeat 100000` with empty
/// bodies ran for minutes); a count of 0 deep inside is reported once, not once per
/// enclosing iteration (10¹⁰ diagnostics); nesting is limited before the recursive
/// parser runs (20k nested `repeat 1 {` overflowed the stack); at most 50 diagnostics
/// are rendered.
#[test]
fn repeats_are_bounded_in_iterations_depth_and_diagnostics() {
    let e = dsl_error("network n\ninput 3x8x8\nrepeat 100000 { repeat 100000 { repeat 100000 { } } }\nConv(3) -> 4\n");
    assert!(e.contains("expanding the repeats takes more than 1000000 iterations") && e.contains("--> t.cnn:3:40"), "{e}");
    let e =
        dsl_error("network n\ninput 3x8x8\nrepeat 1000 { repeat 999 { repeat 0 { Conv(3) -> 4 } Conv(3, p1) -> 3 × 0 } }\nConv(3) -> 4\n");
    assert_eq!(e.matches("`repeat 0` repeats nothing").count(), 1, "{e}");
    assert_eq!(e.matches("`× 0` repeats nothing").count(), 1, "{e}");
    assert!(e.ends_with("error: 2 errors in t.cnn"), "{e}");
    for n in [65, 20_000, 100_000] {
        let text = format!("network n\ninput 3x8x8\n{}Conv(3) -> 4\n{}", "repeat 1 {\n".repeat(n), "}\n".repeat(n));
        let e = dsl_error(&text);
        assert!(e.contains("blocks `{ … }` are nested more than 64 deep") && e.contains("--> t.cnn:67:10"), "{e}");
    }
    // 64 deep, and braces in comments, are fine.
    let text = format!("network n\ninput 3x8x8\n# {{{{{{\n{}Conv(3) -> 4 // }}}}\n{}", "repeat 1 {\n".repeat(64), "}\n".repeat(64));
    cnnc::Source::new("t.cnn", &text).graph().unwrap();
    let text = format!("network n\ninput 3x8x8\n{}", "Conv(1) -> 4, bogus\n".repeat(300));
    let e = dsl_error(&text);
    assert_eq!(e.matches("--> t.cnn:").count(), 50, "{e}");
    assert!(e.contains("… and 250 more errors not shown") && e.ends_with("error: 300 errors in t.cnn"), "{e}");
}

/// Every unsupported node is counted, but at most 50 are named in the message (a model
/// of 100k unknown nodes made a message of megabytes).
#[test]
fn unsupported_node_lists_are_capped() {
    let nodes = (0..100_000).map(|k| node(&format!("n{k}"), "Foo", &["c"], &[&format!("y{k}")], vec![])).collect();
    let e = plan(&stem(13, nodes, vec![])).unwrap_err();
    assert!(e.starts_with("100000 unsupported ONNX nodes: `n0` (Foo), `n1` (Foo)"), "{}", &e[..200]);
    assert!(e.contains("`n49` (Foo) and 99950 more (cnnc imports graphs of") && !e.contains("`n50`"), "{}", &e[..3000.min(e.len())]);
    assert!(e.len() < 5000, "{}", e.len());
}

/// A run's lock file is rewritten with the pid: a link planted at its name is refused,
/// and its target keeps its bytes.
#[cfg(all(unix, feature = "train"))]
#[test]
fn a_link_at_a_run_lock_is_not_followed() {
    let dir = std::env::temp_dir().join(format!("cnnc-hostile-lock-{}", std::process::id()));
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "secret").unwrap();
    std::os::unix::fs::symlink(&victim, run.join(".lock")).unwrap();
    let Err(e) = cnnc::train::lock_run(&run) else { panic!("a link at the lock is accepted") };
    let e = e.to_string();
    assert!(e.contains(".lock: it is a symbolic link"), "{e}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Lowering recurses once per body and branch, through block calls too: 64 repeats
/// around 63 nested branches lower (on a test thread's stack), and blocks that each nest
/// 40 levels and call the next are refused at 128 levels, before the stack runs out.
#[test]
fn graph_nesting_is_bounded_through_block_calls() {
    let text = format!(
        "network n\ninput 3x8x8\n{}{}conv(1) -> 3{}\n{}",
        "repeat 1 {\n".repeat(64),
        "+ (".repeat(63),
        ")".repeat(63),
        "}\n".repeat(64)
    );
    cnnc::Source::new("t.cnn", &text).graph().unwrap();
    let mut text = "network n\ninput 3x8x8\n".to_string();
    for k in 0..70 {
        text.push_str(&format!(
            "block b{k}(c) {{ {}{}b{}(c){}{} }}\n",
            "repeat 1 { ".repeat(20),
            "+ (".repeat(20),
            k + 1,
            ")".repeat(20),
            " }".repeat(20)
        ));
    }
    text.push_str("block b70(c) { conv(1) -> c }\nb0(3)\n");
    let e = dsl_error(&text);
    assert!(e.contains("nested more than 128 deep here (counted through block calls)"), "{e}");
}

/// A `cat` of a `cat` copies its parts: 2000 concatenations of a 1001-part one would hold
/// 2·10⁶ inputs; lowering stops at 2²⁰ inputs in all, with the join that passes it.
#[test]
fn join_inputs_are_bounded_in_all() {
    let text =
        "network n\ninput 4x2x2\nblock d() { cat(@in, (conv(1) -> 1)) }\nx = d() x 1000\nrepeat 2000 { @x, cat(@x, (conv(1) -> 1)) }\n";
    let e = dsl_error(text);
    assert!(e.contains("the joins (`+`, `cat`) up to here have more than 1048576 inputs in all") && e.contains("--> t.cnn:5:19"), "{e}");
}
