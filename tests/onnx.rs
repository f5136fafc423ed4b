//! ONNX import, export and re-initialization.
//!
//! - hand-built `ModelProto`s, one per operator and attribute variant;
//! - fixtures under `tests/data/onnx/{ok,err}` (made by `make_fixtures.py` with the
//!   official `onnx` package, and by `cnnc export-onnx`) with the expected dump beside
//!   each (`.lower` for a model, `.err` for a rejected one); `UPDATE_EXPECT=1` rewrites them;
//! - the round trip spec → ONNX → plan = spec → plan, and `init`.

use cnnc::analyze::{Mode, Options};
use cnnc::ir::{self, Op, Pad, PoolKind, Shape};
use cnnc::onnx::proto::{tensor_proto::DataType, AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use cnnc::onnx::{self, Bytes, ImportOptions};
use prost::Message;

mod common;
use common::{attr, float_init, image_input, init, input, int64s, model_at, node, scalar, A};
use std::path::{Path, PathBuf};

// ------------------------------------------------------------------ builders

fn model(inputs: Vec<ValueInfoProto>, nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    model_at(13, inputs, nodes, inits)
}

fn import(m: &ModelProto) -> Result<ir::Graph, String> {
    onnx::import(m, &ImportOptions::default()).map_err(|e| e.to_string())
}

/// Encodes then decodes, as a file would go.
fn import_bytes(m: &ModelProto) -> Result<ir::Graph, String> {
    let model = onnx::decode(Bytes::from(m.encode_to_vec())).map_err(|e| e.to_string())?;
    import(&model)
}

fn conv_of(g: &ir::Graph, k: usize) -> &ir::Conv {
    match &g.nodes[k].op {
        Op::Conv(c) => c,
        other => panic!("node {k} is {other:?}"),
    }
}

fn bn_of(g: &ir::Graph, k: usize) -> ir::BatchNorm {
    match &g.nodes[k].op {
        Op::BatchNorm(b) => b.clone(),
        other => panic!("node {k} is {}", other.kind_name()),
    }
}

fn pool_of(g: &ir::Graph, k: usize) -> &ir::Pool {
    match &g.nodes[k].op {
        Op::Pool(p) => p,
        other => panic!("node {k} is {other:?}"),
    }
}

fn img(c: u64, h: u64, w: u64) -> Shape {
    Shape::Image { c, h, w }
}

fn pad(begin: u64, end: u64) -> Pad {
    Pad { begin, end }
}

/// One Conv with weight [8, 3/group, k, k] on a 3×H×W input, with the given attributes.
fn one_conv(h: i64, w: i64, k: i64, group: i64, attrs: Vec<AttributeProto>) -> Result<ir::Graph, String> {
    let mut attrs = attrs;
    attrs.push(attr("group", A::I(group)));
    import_bytes(&model(
        vec![image_input(3, h, w)],
        vec![node("c", "Conv", &["x", "W", "B"], &["y"], attrs)],
        vec![init("W", &[6, 3 / group, k, k]), init("B", &[6])],
    ))
}

// ------------------------------------------------------------------ proto drift

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

#[test]
fn generated_code_matches_the_vendored_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = std::fs::read(root.join("src/onnx/onnx.proto")).unwrap();
    let generated = std::fs::read_to_string(root.join("src/onnx/onnx.rs")).unwrap();
    let recorded = generated
        .lines()
        .take(8)
        .find_map(|l| l.strip_prefix("// onnx.proto fnv1a64: "))
        .expect("onnx.rs records the hash of the onnx.proto it was generated from");
    assert_eq!(
        recorded,
        format!("{:016x}", fnv1a64(&proto)),
        "src/onnx/onnx.proto changed since src/onnx/onnx.rs was generated: regenerate it (see src/onnx/mod.rs)"
    );
}

// ------------------------------------------------------------------ operators

#[test]
fn conv_explicit_asymmetric_pads_strides_dilations() {
    let g = one_conv(
        17,
        20,
        3,
        1,
        vec![attr("pads", A::Is(vec![1, 0, 2, 3])), attr("strides", A::Is(vec![2, 3])), attr("dilations", A::Is(vec![2, 1]))],
    )
    .unwrap();
    let c = conv_of(&g, 0);
    assert_eq!(c.pad, [pad(1, 2), pad(0, 3)]);
    assert_eq!((c.stride, c.dilation, c.kernel, c.groups, c.bias), ([2, 3], [2, 1], [3, 3], 1, true));
    // h: (17 + 3 - 5) / 2 + 1 = 8; w: (20 + 3 - 3) / 3 + 1 = 7
    assert_eq!(g.nodes[0].output, img(6, 8, 7));
    let p = g.nodes[0].params.as_ref().unwrap();
    assert_eq!((p.weight.as_str(), p.bias.as_deref()), ("W", Some("B")));
    assert_eq!(g.nodes[0].origin, ir::Origin::OnnxNode("c".into()));
}

#[test]
fn conv_groups() {
    let g = one_conv(8, 8, 3, 3, vec![attr("pads", A::Is(vec![1, 1, 1, 1]))]).unwrap();
    assert_eq!(conv_of(&g, 0).groups, 3);
    assert_eq!(conv_of(&g, 0).in_channels, 3);
    assert_eq!(g.nodes[0].output, img(6, 8, 8));
}

#[test]
fn conv_auto_pad() {
    let same_upper = one_conv(10, 7, 4, 1, vec![attr("auto_pad", A::S("SAME_UPPER")), attr("strides", A::Is(vec![2, 2]))]).unwrap();
    // out = ceil(10/2) = 5: total pad (5-1)*2 + 4 - 10 = 2; w: out 4, total (3*2 + 4 - 7) = 3
    assert_eq!(conv_of(&same_upper, 0).pad, [pad(1, 1), pad(1, 2)]);
    assert_eq!(same_upper.nodes[0].output, img(6, 5, 4));
    let same_lower = one_conv(10, 7, 4, 1, vec![attr("auto_pad", A::S("SAME_LOWER")), attr("strides", A::Is(vec![2, 2]))]).unwrap();
    assert_eq!(conv_of(&same_lower, 0).pad, [pad(1, 1), pad(2, 1)]);
    let valid = one_conv(10, 7, 4, 1, vec![attr("auto_pad", A::S("VALID")), attr("pads", A::Is(vec![5, 5, 5, 5]))]).unwrap();
    assert_eq!(conv_of(&valid, 0).pad, [pad(0, 0), pad(0, 0)]);
    assert_eq!(valid.nodes[0].output, img(6, 7, 4));
    let notset = one_conv(10, 7, 3, 1, vec![attr("auto_pad", A::S("NOTSET"))]).unwrap();
    assert_eq!(notset.nodes[0].output, img(6, 8, 5));
}

#[test]
fn conv_without_bias() {
    let g = import(&model(
        vec![image_input(3, 8, 8)],
        vec![node("c", "Conv", &["x", "W", ""], &["y"], vec![])],
        vec![init("W", &[4, 3, 1, 1])],
    ))
    .unwrap();
    assert!(!conv_of(&g, 0).bias);
    assert_eq!(g.nodes[0].params.as_ref().unwrap().bias, None);
}

fn stem(extra: Vec<NodeProto>, extra_inits: Vec<TensorProto>) -> Result<ir::Graph, String> {
    let mut nodes = vec![node("conv", "Conv", &["x", "W", "B"], &["c"], vec![])];
    nodes.extend(extra);
    let mut inits = vec![init("W", &[4, 3, 3, 3]), init("B", &[4])];
    inits.extend(extra_inits);
    import_bytes(&model(vec![image_input(3, 11, 11)], nodes, inits))
}

#[test]
fn max_pool_pads_and_ceil_mode() {
    // conv 3×3 on 11×11 → 9×9; pool 2/s2 with ceil: 5 (the last window starts inside)
    let g = stem(
        vec![node(
            "pool",
            "MaxPool",
            &["c"],
            &["p"],
            vec![attr("kernel_shape", A::Is(vec![2, 2])), attr("strides", A::Is(vec![2, 2])), attr("ceil_mode", A::I(1))],
        )],
        vec![],
    )
    .unwrap();
    let p = pool_of(&g, 1);
    assert_eq!((p.kind, p.ceil_mode, p.kernel, p.stride), (PoolKind::Max, true, [2, 2], [2, 2]));
    assert_eq!(g.nodes[1].output, img(4, 5, 5));
    let g = stem(
        vec![node(
            "pool",
            "MaxPool",
            &["c"],
            &["p"],
            vec![attr("kernel_shape", A::Is(vec![3, 3])), attr("strides", A::Is(vec![2, 2])), attr("pads", A::Is(vec![1, 1, 1, 1]))],
        )],
        vec![],
    )
    .unwrap();
    assert_eq!(pool_of(&g, 1).pad, [pad(1, 1), pad(1, 1)]);
    assert_eq!(g.nodes[1].output, img(4, 5, 5));
}

#[test]
fn average_pool_count_include_pad() {
    for flag in [0, 1] {
        let g = stem(
            vec![node(
                "pool",
                "AveragePool",
                &["c"],
                &["p"],
                vec![attr("kernel_shape", A::Is(vec![3, 3])), attr("pads", A::Is(vec![1, 1, 1, 1])), attr("count_include_pad", A::I(flag))],
            )],
            vec![],
        )
        .unwrap();
        let p = pool_of(&g, 1);
        assert_eq!((p.kind, p.count_include_pad), (PoolKind::Avg, flag == 1));
        assert_eq!(g.nodes[1].output, img(4, 9, 9));
    }
}

#[test]
fn global_pools_and_reduce_mean() {
    for (op, kind) in [("GlobalAveragePool", PoolKind::Avg), ("GlobalMaxPool", PoolKind::Max)] {
        let g = stem(vec![node("g", op, &["c"], &["p"], vec![])], vec![]).unwrap();
        assert_eq!((&g.nodes[1].op, g.nodes[1].output), (&Op::GlobalPool(kind), img(4, 1, 1)));
    }
    // opset 13 form: axes attribute; keepdims 0 adds a flatten
    let g = stem(vec![node("m", "ReduceMean", &["c"], &["p"], vec![attr("axes", A::Is(vec![2, 3])), attr("keepdims", A::I(0))])], vec![])
        .unwrap();
    assert_eq!(g.nodes[1].op, Op::GlobalPool(PoolKind::Avg));
    assert_eq!((&g.nodes[2].op, g.nodes[2].output), (&Op::Flatten, Shape::Vector { n: 4 }));
    // opset 18 form: axes as an input, negative
    let g = stem(vec![node("m", "ReduceMean", &["c", "axes"], &["p"], vec![])], vec![int64s("axes", &[-1, -2])]).unwrap();
    assert_eq!((&g.nodes[1].op, g.nodes[1].output, g.nodes.len()), (&Op::GlobalPool(PoolKind::Avg), img(4, 1, 1), 2));
    let err = stem(vec![node("m", "ReduceMean", &["c"], &["p"], vec![attr("axes", A::Is(vec![1]))])], vec![]).unwrap_err();
    assert_eq!(err, "node `m` (ReduceMean): axes [1] are not supported: only the spatial axes [2, 3] (a global pooling)");
}

#[test]
fn activations_and_no_ops() {
    let g = stem(
        vec![
            node("d", "Dropout", &["c"], &["d"], vec![]),
            node("a", "LeakyRelu", &["d"], &["a"], vec![attr("alpha", A::F(0.25))]),
            node("i", "Identity", &["a"], &["i"], vec![]),
        ],
        vec![],
    )
    .unwrap();
    assert_eq!(g.nodes.len(), 2);
    assert_eq!(g.nodes[1].op, Op::Activation(ir::Activation::LeakyRelu { slope: 0.25 }));
    assert_eq!(g.nodes[1].inputs, vec![ir::ValueId(1)]);
    let g = stem(vec![node("r", "Relu", &["c"], &["r"], vec![]), node("l", "LeakyRelu", &["r"], &["l"], vec![])], vec![]).unwrap();
    assert_eq!(g.nodes[2].op, Op::Activation(ir::Activation::LeakyRelu { slope: 0.01 }));
}

fn linear(g: &ir::Graph, k: usize) -> (&ir::Linear, &ir::ParamNames) {
    match &g.nodes[k].op {
        Op::Linear(l) => (l, g.nodes[k].params.as_ref().unwrap()),
        other => panic!("node {k} is {other:?}"),
    }
}

#[test]
fn gemm_trans_b_and_flatten() {
    for (trans, dims) in [(1, [10i64, 324]), (0, [324, 10])] {
        let g = stem(
            vec![
                node("f", "Flatten", &["c"], &["f"], vec![attr("axis", A::I(1))]),
                node("fc", "Gemm", &["f", "FW", "FB"], &["y"], vec![attr("transB", A::I(trans)), attr("alpha", A::F(1.0))]),
            ],
            vec![init("FW", &dims), init("FB", &[10])],
        )
        .unwrap();
        assert_eq!(g.nodes[1].output, Shape::Vector { n: 324 });
        let (l, p) = linear(&g, 2);
        assert_eq!((l.in_features, l.out_features, l.bias), (324, 10, true));
        assert_eq!((p.weight.as_str(), p.bias.as_deref()), ("FW", Some("FB")));
    }
}

#[test]
fn matmul_plus_add_is_one_linear_layer() {
    let g = stem(
        vec![
            node(
                "shape",
                "Constant",
                &[],
                &["s"],
                vec![AttributeProto { t: Some(int64s("v", &[0, -1])), r#type: Some(4), ..attr("value", A::I(0)) }],
            ),
            node("view", "Reshape", &["c", "s"], &["f"], vec![]),
            node("mm", "MatMul", &["f", "MW"], &["m"], vec![]),
            node("add", "Add", &["MB", "m"], &["y"], vec![]),
            node("relu", "Relu", &["y"], &["z"], vec![]),
        ],
        vec![init("MW", &[324, 7]), init("MB", &[7])],
    )
    .unwrap();
    assert_eq!(g.nodes.len(), 4, "{:#?}", g.nodes);
    let (l, p) = linear(&g, 2);
    assert_eq!((l.in_features, l.out_features), (324, 7));
    assert_eq!((p.weight.as_str(), p.bias.as_deref()), ("MW", Some("MB")));
    assert_eq!(g.nodes[3].inputs, vec![ir::ValueId(3)]);
}

#[test]
fn reshape_targets() {
    let ok = |target: &[i64]| stem(vec![node("view", "Reshape", &["c", "s"], &["f"], vec![])], vec![int64s("s", target)]);
    for t in [[1, 324], [-1, 324], [0, -1], [1, -1]] {
        assert_eq!(ok(&t).unwrap().nodes[1].output, Shape::Vector { n: 324 }, "{t:?}");
    }
    assert_eq!(
        ok(&[4, 9, 9]).unwrap_err(),
        "node `view` (Reshape): a reshape of (4,9,9) to [4, 9, 9] is not supported: only to 2-D (batch, 324), or a channel shuffle"
    );
}

#[test]
fn weights_as_graph_inputs_and_nodes_out_of_order() {
    let m = model(
        vec![input("W", &[Some(4), Some(3), Some(3), Some(3)]), image_input(3, 8, 8), input("B", &[Some(4)])],
        vec![node("relu", "Relu", &["c"], &["r"], vec![]), node("conv", "Conv", &["x", "W", "B"], &["c"], vec![])],
        vec![],
    );
    let g = import_bytes(&m).unwrap();
    assert_eq!(g.input, img(3, 8, 8));
    assert_eq!(g.nodes[0].name, "conv");
    assert_eq!(g.nodes[1].inputs, vec![ir::ValueId(1)]);
}

#[test]
fn unnamed_nodes_are_named_by_op_and_index() {
    let m = model(
        vec![image_input(3, 8, 8)],
        vec![node("", "Conv", &["x", "W"], &["c"], vec![]), node("", "Relu", &["c"], &["r"], vec![])],
        vec![init("W", &[4, 3, 3, 3])],
    );
    let g = import(&m).unwrap();
    assert_eq!((g.nodes[0].name.as_str(), g.nodes[1].name.as_str()), ("Conv#0", "Relu#1"));
}

#[test]
fn input_option_overrides_symbolic_sizes() {
    let m = model(
        vec![input("x", &[None, Some(3), None, None])],
        vec![node("conv", "Conv", &["x", "W"], &["c"], vec![])],
        vec![init("W", &[4, 3, 3, 3])],
    );
    assert_eq!(
        import(&m).unwrap_err(),
        "the graph input `x` has shape [?, 3, ?, ?] with unknown or symbolic sizes: give one sample's shape with --input CxHxW"
    );
    let g = onnx::import(&m, &ImportOptions { input: cnnc::InputSize::Chw([3, 32, 16]) }).unwrap();
    assert_eq!(g.nodes[0].output, img(4, 30, 14));
}

// ------------------------------------------------------------------ errors at nodes

fn conv_error(attrs: Vec<AttributeProto>, w: &[i64]) -> String {
    import(&model(vec![image_input(3, 8, 8)], vec![node("conv", "Conv", &["x", "W"], &["c"], attrs)], vec![init("W", w)])).unwrap_err()
}

#[test]
fn attribute_errors_name_the_attribute_op_and_node() {
    let cases: Vec<(Vec<AttributeProto>, &str)> = vec![
        (vec![attr("strides", A::Is(vec![1, 0]))], "node `conv` (Conv): attribute `strides` = [1, 0] is out of range: each value must be from 1 to 2147483648"),
        (vec![attr("strides", A::Is(vec![1, 1, 1]))], "node `conv` (Conv): attribute `strides` = [1, 1, 1] must have 2 values (2-D only), got 3"),
        (vec![attr("pads", A::Is(vec![1, -1, 0, 0]))], "node `conv` (Conv): attribute `pads` = [1, -1, 0, 0] is out of range: each value must be from 0 to 2147483648"),
        (vec![attr("group", A::I(0))], "node `conv` (Conv): attribute `group` = 0 is out of range: it must divide the 4 output channels"),
        (vec![attr("group", A::F(1.0))], "node `conv` (Conv): attribute `group` must be an integer"),
        (vec![attr("auto_pad", A::S("SAME"))], "node `conv` (Conv): attribute `auto_pad` = `SAME` is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER"),
        (vec![attr("kernel_shape", A::Is(vec![5, 5]))], "node `conv` (Conv): attribute `kernel_shape` = [5, 5] disagrees with the weight `W` [4, 3, 3, 3]"),
        (vec![attr("dilations", A::Is(vec![9, 9]))], "node `conv` (Conv): the output would be empty: input (3,8,8), kernel 3×3, dilation [9, 9], padding [Pad { begin: 0, end: 0 }, Pad { begin: 0, end: 0 }]"),
    ];
    for (attrs, expected) in cases {
        assert_eq!(conv_error(attrs, &[4, 3, 3, 3]), expected);
    }
    assert_eq!(
        conv_error(vec![], &[4, 3, 3]),
        "node `conv` (Conv): the weight `W` has shape [4, 3, 3]: cnnc handles 2-D convolutions (a 4-D weight)"
    );
    assert_eq!(
        conv_error(vec![], &[4, 2, 3, 3]),
        "node `conv` (Conv): the input has 3 channels but the weight `W` [4, 2, 3, 3] with group 1 expects 2"
    );
    assert_eq!(conv_error(vec![], &[4, 3, 0, 3]), "node `conv` (Conv): the weight `W` has an invalid shape [4, 3, 0, 3]");
}

#[test]
fn other_node_errors() {
    let err = stem(vec![node("pool", "MaxPool", &["c"], &["p"], vec![])], vec![]).unwrap_err();
    assert_eq!(err, "node `pool` (MaxPool): attribute `kernel_shape` is required");
    let err = stem(
        vec![node("pool", "MaxPool", &["c"], &["p"], vec![attr("kernel_shape", A::Is(vec![2, 2])), attr("ceil_mode", A::I(2))])],
        vec![],
    )
    .unwrap_err();
    assert_eq!(err, "node `pool` (MaxPool): attribute `ceil_mode` must be 0 or 1, got 2");
    let err = stem(vec![node("fc", "Gemm", &["c", "FW"], &["y"], vec![])], vec![init("FW", &[324, 10])]).unwrap_err();
    assert_eq!(err, "node `fc` (Gemm): input `c` has shape (4,9,9): Gemm needs a 2-D (N, F) input (flatten it first)");
    let err = stem(
        vec![node("f", "Flatten", &["c"], &["f"], vec![]), node("fc", "Gemm", &["f", "FW"], &["y"], vec![attr("alpha", A::F(2.0))])],
        vec![init("FW", &[324, 10])],
    )
    .unwrap_err();
    assert_eq!(err, "node `fc` (Gemm): attribute `alpha` = 2 is not supported: cnnc plans Gemm with alpha = beta = 1");
    let err = stem(vec![node("r", "Relu", &["nowhere"], &["r"], vec![])], vec![]).unwrap_err();
    assert_eq!(err, "node `r` (Relu): input `nowhere` is not defined by any node, initializer or graph input");
    let err = stem(vec![node("f", "Flatten", &["c"], &["f"], vec![attr("axis", A::I(2))])], vec![]).unwrap_err();
    assert_eq!(err, "node `f` (Flatten): attribute `axis` = 2 is not supported: only axis 1 (keep the batch axis)");
}

#[test]
fn unsupported_ops_are_listed_at_once() {
    let err = stem(
        vec![
            node("lrn", "LRN", &["c"], &["n"], vec![]),
            node("res", "Add", &["n", "c"], &["a"], vec![]),
            node("", "MeanVarianceNormalization", &["a"], &["y"], vec![]),
            NodeProto { domain: Some("com.microsoft".into()), ..node("fused", "FusedConv", &["y"], &["z"], vec![]) },
        ],
        vec![],
    )
    .unwrap_err();
    assert!(
        err.starts_with("3 unsupported ONNX nodes: `lrn` (LRN), `MeanVarianceNormalization#3` (MeanVarianceNormalization), `fused` (com.microsoft::FusedConv) (cnnc imports graphs of Conv (grouped, depthwise), ConvTranspose, Gemm, MatMul(+Add), "),
        "{err}"
    );
}

#[test]
fn model_errors() {
    // a cycle
    let err = stem(vec![node("a", "Relu", &["b_out"], &["a_out"], vec![]), node("b", "Relu", &["a_out"], &["b_out"], vec![])], vec![])
        .unwrap_err();
    assert_eq!(err, "the graph has a cycle: nodes `a` (Relu), `b` (Relu) depend on each other");
    // two data inputs
    let m = model(vec![image_input(3, 8, 8), input("z", &[None, Some(3)])], vec![node("r", "Relu", &["x"], &["r"], vec![])], vec![]);
    assert_eq!(import(&m).unwrap_err(), "the graph has 2 data inputs (`x`, `z`): cnnc plans networks with one input");
    // no weight layer
    let m = model(vec![image_input(3, 8, 8)], vec![node("r", "Relu", &["x"], &["r"], vec![])], vec![]);
    let g = import(&m).unwrap();
    assert!(cnnc::network(&g, None).is_err());
    // old opset
    let mut m = model(vec![image_input(3, 8, 8)], vec![], vec![]);
    m.opset_import[0].version = Some(6);
    assert_eq!(import(&m).unwrap_err(), "the model uses opset 6: cnnc imports opset 7 and later");
    m.opset_import.clear();
    assert!(import(&m).unwrap_err().starts_with("the model declares no opset for the default ONNX domain"));
    // produced twice
    let err = stem(vec![node("a", "Relu", &["c"], &["c"], vec![])], vec![]).unwrap_err();
    assert_eq!(err, "node `a` (Relu) redefines the value `c`, which is the output of node `conv` (Conv)");
}

/// Every truncation and every byte flipped (XOR 0xA5) of a small model: decode, import
/// and planning give an error or the uncorrupted model's plan, never a panic and never
/// another plan; and all of them but one are errors.
#[test]
fn decode_errors_never_panic() {
    fn plan_of(bytes: &[u8]) -> Result<cnnc::plan::Plan, String> {
        let m = onnx::decode(Bytes::from(bytes.to_vec())).map_err(|e| e.to_string())?;
        let g = onnx::import(&m, &ImportOptions::default()).map_err(|e| e.to_string())?;
        let opts = Options { mode: Mode::Forward, std_cap: None };
        cnnc::plan_graph(&g, cnnc::GraphRequest { opts, analysis: Default::default(), branch_scale: 1.0, batch: None })
            .map_err(|e| e.to_string())
    }
    let good = model(vec![image_input(3, 8, 8)], vec![node("conv", "Conv", &["x", "W"], &["c"], vec![])], vec![init("W", &[4, 3, 3, 3])])
        .encode_to_vec();
    let want = plan_of(&good).unwrap();
    let mut errors = 0;
    let mut check = |what: String, bytes: &[u8]| match plan_of(bytes) {
        Err(_) => errors += 1,
        Ok(plan) => assert!(plan == want, "{what}: a plan that is not the uncorrupted model's: {plan:?}"),
    };
    for cut in 0..good.len() {
        check(format!("cut at byte {cut}"), &good[..cut]);
    }
    for k in 0..good.len() {
        let mut bad = good.clone();
        bad[k] ^= 0xA5;
        check(format!("byte {k} flipped"), &bad);
    }
    // Every one is an error here: even the cut that drops exactly the trailing
    // `opset_import` (a model that says nothing of its operators' versions).
    assert_eq!(errors, 2 * good.len(), "some corrupted inputs planned");
    assert_eq!(
        onnx::decode(Bytes::new()).unwrap_err().to_string(),
        "not a valid ONNX model: the file decodes as protobuf but has no graph"
    );
}

// ------------------------------------------------------------------ fixtures

fn data_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx").join(sub)
}

fn fixtures(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    v
}

fn input_of(path: &Path) -> cnnc::InputSize {
    let Ok(text) = std::fs::read_to_string(path.with_extension("input")) else { return cnnc::InputSize::Declared };
    let v: Vec<u64> = text.trim().split('x').map(|s| s.parse().unwrap()).collect();
    cnnc::InputSize::Chw([v[0], v[1], v[2]])
}

/// The dump a fixture is checked against: its `lower` table, or its error message.
fn check(path: &Path) -> Result<String, String> {
    let result = onnx::load(path, &ImportOptions { input: input_of(path) }).map_err(cnnc::Error::from).and_then(|g| {
        let req = cnnc::GraphRequest {
            opts: Options { mode: Mode::Forward, std_cap: None },
            analysis: Default::default(),
            branch_scale: 1.0,
            batch: None,
        };
        cnnc::lower_report(&g, req)
    });
    result.map_err(|e| format!("{e}\n"))
}

fn expect_file(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_EXPECT=1", path.display()));
    assert_eq!(actual, expected, "{} differs (UPDATE_EXPECT=1 rewrites it)", path.display());
}

#[test]
fn ok_fixtures_match_their_lower_tables() {
    let files = fixtures("ok");
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let out = check(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(out.contains("mode forward"), "{}: {out}", f.display());
        expect_file(&f.with_extension("lower"), &out);
    }
}

/// Every error fixture is rejected, with its message; one that plans fails the test,
/// under UPDATE_EXPECT too.
#[test]
fn err_fixtures_match_their_messages() {
    let files = fixtures("err");
    assert!(files.len() >= 8, "{files:?}");
    for f in files {
        match check(&f) {
            Ok(table) => panic!("{} plans: an error fixture must be rejected\n{table}", f.display()),
            Err(message) => expect_file(&f.with_extension("err"), &message),
        }
    }
}

#[test]
fn dynamo_fixture_needs_input_and_has_no_weight_data() {
    let path = data_dir("ok").join("dynamo_style.onnx");
    assert!(!data_dir("ok").join("dynamo_style.onnx.data").exists());
    let err = onnx::load(&path, &ImportOptions::default()).unwrap_err().to_string();
    assert!(err.contains("give one sample's shape with --input CxHxW"), "{err}");
}

// ------------------------------------------------------------------ export, round trip, init

fn spec_plan(text: &str, mode: Mode) -> (ir::Graph, cnnc::plan::Plan) {
    let src = cnnc::Source::new("t.cnn", text);
    let graph = src.graph().unwrap();
    let plan = cnnc::plan(&src.network().unwrap(), Options { mode, std_cap: None }).unwrap();
    (graph, plan)
}

/// The plan with names blanked: what must survive spec → ONNX → plan.
fn numbers(p: &cnnc::plan::Plan) -> cnnc::plan::Plan {
    let mut p = p.clone();
    p.network = String::new();
    for l in &mut p.layers {
        l.name = String::new();
        l.weight.name = String::new();
        if let Some(b) = &mut l.bias {
            b.name = String::new();
        }
    }
    p
}

const SPECS: &[&str] = &[
    "network A\ninput 3x32x32\nConv(3/p1) -> 8, relu\nMaxPool(2/s2)\nConv(3/s2/p1) -> 16, leaky_relu(0.1)\nAvgPool(3/s2/p1)\nConv(1) -> 16, relu\nglobal_maxpool\nLinear -> 10\n",
    "network B\ninput 1x28x28\nConv(5) -> 6, relu\nMaxPool(3/s2/p1)\nConv(5) -> 16, relu\nflatten\nLinear -> 120, relu\nLinear -> 84, tanh\nLinear -> 10\n",
];

#[test]
fn round_trip_spec_to_onnx_to_plan() {
    let mut texts: Vec<String> = SPECS.iter().map(|s| s.to_string()).collect();
    texts.push(
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/f34.cnn"))
            .unwrap()
            .replace("input 3x224x224", "input 3x64x64"),
    );
    for text in &texts {
        for mode in [Mode::Forward, Mode::Backward] {
            let (graph, plan) = spec_plan(text, mode);
            let model = onnx::export(&graph, &plan, 7).unwrap();
            let bytes = onnx::encode(&model).unwrap();
            let back = onnx::import(&onnx::decode(Bytes::from(bytes)).unwrap(), &ImportOptions::default()).unwrap();
            let plan2 = cnnc::plan(&cnnc::network(&back, None).unwrap(), Options { mode, std_cap: None }).unwrap();
            assert_eq!(numbers(&plan2), numbers(&plan), "{text}");
            // the initializer names are the plan's
            let inits: Vec<&str> = model.graph.as_ref().unwrap().initializer.iter().map(|t| t.name()).collect();
            assert_eq!(inits[0], plan.layers[0].weight.name);
        }
    }
}

fn floats(t: &TensorProto) -> Vec<f32> {
    t.raw_data.as_ref().unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn std_of(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

#[test]
fn exported_weights_follow_the_plan() {
    let (graph, plan) = spec_plan(SPECS[0], Mode::Forward);
    let model = onnx::export(&graph, &plan, 1).unwrap();
    let g = model.graph.as_ref().unwrap();
    for l in &plan.layers {
        let w = g.initializer.iter().find(|t| t.name() == l.weight.name).unwrap();
        assert_eq!(w.dims, l.weight.shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        let s = std_of(&floats(w));
        assert!((s / l.weight.std - 1.0).abs() < 0.15, "{}: {s} vs {}", l.weight.name, l.weight.std);
        let b = g.initializer.iter().find(|t| Some(t.name()) == l.bias.as_ref().map(|b| b.name.as_str())).unwrap();
        assert!(floats(b).iter().all(|&x| x == 0.0));
    }
    // the same seed gives the same bytes; another seed does not
    assert_eq!(onnx::encode(&onnx::export(&graph, &plan, 1).unwrap()).unwrap(), onnx::encode(&model).unwrap());
    assert_ne!(onnx::encode(&onnx::export(&graph, &plan, 2).unwrap()).unwrap(), onnx::encode(&model).unwrap());
}

#[test]
fn normal_generator_moments() {
    let mut rng = onnx::Normal::new(42);
    let v: Vec<f64> = (0..200_000).map(|_| rng.sample()).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    let kurt = v.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / v.len() as f64 / (var * var);
    assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01 && (kurt - 3.0).abs() < 0.05, "{mean} {var} {kurt}");
}

#[test]
fn init_rewrites_initializers_only() {
    let path = data_dir("ok").join("torchscript_style.onnx");
    let original = onnx::read_model(&path).unwrap();
    let graph = onnx::import(&original, &ImportOptions::default()).unwrap();
    let plan = cnnc::plan(&cnnc::network(&graph, None).unwrap(), Options { mode: Mode::Backward, std_cap: None }).unwrap();
    let mut model = original.clone();
    onnx::reinit(&mut model, &plan, 3).unwrap();
    let (a, b) = (original.graph.as_ref().unwrap(), model.graph.as_ref().unwrap());
    assert_eq!((&a.node, &a.input, &a.output, &a.name), (&b.node, &b.input, &b.output, &b.name));
    assert_eq!(
        (&original.opset_import, original.ir_version, &original.producer_name),
        (&model.opset_import, model.ir_version, &model.producer_name)
    );
    assert_eq!(a.initializer.len(), b.initializer.len());
    for (x, y) in a.initializer.iter().zip(&b.initializer) {
        assert_eq!((x.name(), &x.dims, x.data_type), (y.name(), &y.dims, y.data_type));
    }
    let conv = b.initializer.iter().find(|t| t.name() == "features.3.weight").unwrap();
    let s = std_of(&floats(conv));
    assert!((s / plan.layers[1].weight.std - 1.0).abs() < 0.1, "{s} vs {}", plan.layers[1].weight.std);
    assert!(floats(b.initializer.iter().find(|t| t.name() == "fc.bias").unwrap()).iter().all(|&x| x == 0.0));
    // the re-initialized model plans the same
    let again = onnx::import(&onnx::decode(Bytes::from(onnx::encode(&model).unwrap())).unwrap(), &ImportOptions::default()).unwrap();
    assert_eq!(again, graph);
}

/// `init` of a graph (torch's training-mode export of ResNet-18) from a plan with
/// `--branch-scale 0`: weights at the plan's std, every BatchNorm γ at its plan value (0
/// at the end of a residual branch), β zero; the graph unchanged.
#[test]
fn init_of_a_graph_sets_batchnorm_parameters() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/real/resnet18.train.onnx");
    let mut model = onnx::read_model(&path).unwrap();
    let graph = onnx::import(&model, &ImportOptions::default()).unwrap();
    let req = cnnc::GraphRequest {
        opts: Options { mode: Mode::Forward, std_cap: None },
        analysis: cnnc::analyze::Analysis::Paper,
        branch_scale: 0.0,
        batch: None,
    };
    let plan = cnnc::plan_graph(&graph, req).unwrap();
    // Trained running statistics, which init resets.
    let g = model.graph.as_mut().unwrap();
    let running: Vec<String> =
        g.node.iter().filter(|n| n.op_type() == "BatchNormalization").flat_map(|n| [n.input[3].clone(), n.input[4].clone()]).collect();
    for name in &running {
        let t = g.initializer.iter_mut().find(|t| t.name() == name.as_str()).unwrap_or_else(|| panic!("no initializer `{name}`"));
        let n = t.dims.iter().product::<i64>() as usize;
        *t = TensorProto { raw_data: Some(Bytes::from(3f32.to_le_bytes().repeat(n))), float_data: vec![], ..t.clone() };
    }
    onnx::reinit(&mut model, &plan, 5).unwrap();
    let g = model.graph.as_ref().unwrap();
    let values = |name: &str| floats(g.initializer.iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("no `{name}`")));
    let norms = plan.batch_norms.as_ref().unwrap();
    assert_eq!(norms.len(), 20);
    assert_eq!(norms.iter().filter(|b| b.residual_last).count(), 8);
    for b in norms {
        assert!(!b.residual_last || b.scale.value == 0.0, "{}: α = 0", b.name);
        assert!(values(&b.scale.name).iter().all(|&v| v == b.scale.value as f32), "{}", b.scale.name);
        assert!(values(&b.shift.name).iter().all(|&v| v == 0.0), "{}", b.shift.name);
    }
    // The running statistics the plan assumes (mean 0, variance 1).
    let bns: Vec<&NodeProto> = g.node.iter().filter(|n| n.op_type() == "BatchNormalization").collect();
    assert_eq!(bns.len(), 20);
    for n in bns {
        assert!(values(&n.input[3]).iter().all(|&v| v == 0.0) && values(&n.input[4]).iter().all(|&v| v == 1.0), "{}", n.name());
    }
    let first = &plan.layers[0];
    let s = std_of(&values(&first.weight.name));
    assert!((s / first.weight.std - 1.0).abs() < 0.05, "{s} vs {}", first.weight.std);
    let again = onnx::import(&onnx::decode(Bytes::from(onnx::encode(&model).unwrap())).unwrap(), &ImportOptions::default()).unwrap();
    assert_eq!(again, graph);
}

#[test]
fn init_adds_initializers_for_weights_given_as_inputs() {
    let path = data_dir("ok").join("no_params.onnx");
    let mut model = onnx::read_model(&path).unwrap();
    let graph = onnx::import(&model, &ImportOptions::default()).unwrap();
    let plan = cnnc::plan(&cnnc::network(&graph, None).unwrap(), Options { mode: Mode::Forward, std_cap: None }).unwrap();
    onnx::reinit(&mut model, &plan, 0).unwrap();
    let names: Vec<&str> = model.graph.as_ref().unwrap().initializer.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["w1", "b1", "w3", "w2"]);
    assert_eq!(model.graph.as_ref().unwrap().initializer[3].dims, [6, 10]);
}

// ------------------------------------------------------------------ CLI

fn cnnc(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cli_plan_lower_export_init() {
    let dir = std::env::temp_dir().join(format!("cnnc-onnx-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dynamo = data_dir("ok").join("dynamo_style.onnx");
    let dynamo = dynamo.to_str().unwrap();
    let (ok, out, err) = cnnc(&["plan", dynamo, "--mode", "backward", "--input", "3x64x64"]);
    assert!(ok, "{err}");
    let plan: cnnc::plan::Plan = serde_json::from_str(&out).unwrap();
    assert_eq!(plan.layers.iter().map(|l| l.weight.name.as_str()).collect::<Vec<_>>(), ["conv1.weight", "conv2.weight", "fc.weight"]);
    assert_eq!(plan.layers[2].bias.as_ref().unwrap().name, "fc.bias");
    let (ok, _, err) = cnnc(&["plan", dynamo]);
    assert!(!ok);
    assert!(err.starts_with("error: ") && err.contains("dynamo_style.onnx: the graph input `x` has shape [?, 3, ?, ?]"), "{err}");
    let (ok, _, err) = cnnc(&["plan", dynamo, "--input", "3x64"]);
    assert!(!ok && err.contains("expected CxHxW"), "{err}");

    let spec = dir.join("a.cnn");
    std::fs::write(&spec, SPECS[0]).unwrap();
    let exported = dir.join("a.onnx");
    let (ok, _, err) = cnnc(&["export-onnx", spec.to_str().unwrap(), "--mode", "forward", "--seed", "7", "-o", exported.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (_, from_spec, _) = cnnc(&["lower", spec.to_str().unwrap()]);
    let (ok, from_onnx, err) = cnnc(&["lower", exported.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(from_onnx, from_spec);
    let reinit = dir.join("a.init.onnx");
    let (ok, _, err) = cnnc(&["init", exported.to_str().unwrap(), "--mode", "backward", "--seed", "7", "-o", reinit.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (_, graph_a, _) = cnnc(&["graph", exported.to_str().unwrap()]);
    let (_, graph_b, _) = cnnc(&["graph", reinit.to_str().unwrap()]);
    assert_eq!(graph_a, graph_b);
    // `--input` resizes a spec and its exported model alike (the exported input is 3x32x32).
    let (ok, spec_40, err) = cnnc(&["lower", spec.to_str().unwrap(), "--input", "3x40x40"]);
    assert!(ok, "{err}");
    let (ok, onnx_40, err) = cnnc(&["lower", exported.to_str().unwrap(), "--input", "3x40x40"]);
    assert!(ok, "{err}");
    assert_eq!(spec_40, onnx_40);
    assert_ne!(spec_40, from_spec);
    let (ok, _, err) = cnnc(&["plan", dir.join("missing.onnx").to_str().unwrap()]);
    assert!(!ok && err.contains("cannot read") && err.contains("missing.onnx"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_of_the_small_spec_is_stable() {
    // tests/data/onnx/ok/exported_small.onnx was written by
    // `cnnc export-onnx tests/data/onnx/ok/exported_small.cnn --seed 7 -o …`.
    let text = std::fs::read_to_string(data_dir("ok").join("exported_small.cnn")).unwrap();
    let (graph, plan) = spec_plan(&text, Mode::Forward);
    let bytes = onnx::encode(&onnx::export(&graph, &plan, 7).unwrap()).unwrap();
    let path = data_dir("ok").join("exported_small.onnx");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    assert!(std::fs::read(&path).unwrap() == bytes, "{} differs from a fresh export (UPDATE_EXPECT=1 rewrites it)", path.display());
}

#[test]
fn shapes_only_reading_matches_full_decoding() {
    // a model whose tensors are past the keep limit (so their payloads are skipped)
    let (graph, plan) = spec_plan(SPECS[1], Mode::Forward);
    let exported = onnx::encode(&onnx::export(&graph, &plan, 3).unwrap()).unwrap();
    let mut files: Vec<Vec<u8>> = fixtures("ok").iter().map(|p| std::fs::read(p).unwrap()).collect();
    files.push(exported.clone());
    for bytes in &files {
        let full = onnx::decode(Bytes::from(bytes.clone())).unwrap();
        let slim = onnx::decode_shapes(std::io::Cursor::new(bytes), bytes.len() as u64).unwrap();
        let opts = ImportOptions {
            input: match full.graph.as_ref().unwrap().name() {
                "dynamo_style" => cnnc::InputSize::Chw([3, 64, 64]),
                _ => cnnc::InputSize::Declared,
            },
        };
        assert_eq!(onnx::import(&slim, &opts).unwrap(), onnx::import(&full, &opts).unwrap());
    }
    let slim = onnx::decode_shapes(std::io::Cursor::new(&exported), exported.len() as u64).unwrap();
    let big = slim.graph.as_ref().unwrap().initializer.iter().find(|t| t.dims.iter().product::<i64>() > 1024).unwrap();
    assert!(big.raw_data.is_none(), "the payload of `{}` was read", big.name());
    assert!(slim.encoded_len() < exported.len() / 20);
}

/// Damaged copies of a real export read with the shapes-only reader: every truncation is
/// an error; every byte changed (+0x41, every third) gives an error or the uncorrupted
/// file's plan, except where the change lands in a name or a number and makes another
/// well-formed model (protobuf cannot tell them apart): that model's plan, the one the
/// full decoder gives for the same bytes.
#[test]
fn shapes_only_reading_of_damaged_files_never_panics() {
    fn plan_of(m: Result<onnx::proto::ModelProto, onnx::OnnxError>) -> Result<cnnc::plan::Plan, String> {
        let g = onnx::import(&m.map_err(|e| e.to_string())?, &ImportOptions::default()).map_err(|e| e.to_string())?;
        let opts = Options { mode: Mode::Forward, std_cap: None };
        cnnc::plan_graph(&g, cnnc::GraphRequest { opts, analysis: Default::default(), branch_scale: 1.0, batch: None })
            .map_err(|e| e.to_string())
    }
    let slim = |bytes: &[u8]| plan_of(onnx::decode_shapes(std::io::Cursor::new(bytes), bytes.len() as u64));
    let full = |bytes: &[u8]| plan_of(onnx::decode(Bytes::from(bytes.to_vec())));
    let good = std::fs::read(data_dir("ok").join("torchscript_style.onnx")).unwrap();
    let want = slim(&good).unwrap();
    for cut in (0..good.len()).step_by(7) {
        let r = onnx::decode_shapes(std::io::Cursor::new(&good[..cut]), cut as u64);
        assert!(r.is_err() || cut == 0, "{cut}");
    }
    let (mut errors, mut same, mut other) = (0, 0, 0);
    for k in (0..good.len()).step_by(3) {
        let mut bad = good.clone();
        bad[k] = bad[k].wrapping_add(0x41);
        match (slim(&bad), full(&bad)) {
            (Err(_), Err(_)) => errors += 1,
            (Ok(a), _) if a == want => same += 1,
            (Ok(a), Ok(b)) if a == b => other += 1,
            (a, b) => panic!("byte {k}: the shapes-only reader gives {a:?}\nthe full decoder {b:?}"),
        }
    }
    eprintln!("{errors} errors, {same} the uncorrupted plan, {other} another well-formed model's plan");
    assert!(errors > 0 && same > 0);
}

#[test]
fn large_models_write_their_weights_as_external_data() {
    let dir = std::env::temp_dir().join(format!("cnnc-onnx-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (graph, plan) = spec_plan(SPECS[1], Mode::Forward);
    let model = onnx::export(&graph, &plan, 5).unwrap();
    let inline = onnx::encode(&model).unwrap();
    let path = dir.join("b.onnx");
    // a limit below the model's size stands for protobuf's 2 GiB
    onnx::write_model(model.clone(), &path, Some(inline.len() / 2)).unwrap();
    let data = std::fs::read(dir.join("b.onnx.data")).unwrap();
    let written = onnx::read_model(&path).unwrap();
    let g = written.graph.as_ref().unwrap();
    let mut moved = 0;
    for (t, orig) in g.initializer.iter().zip(&model.graph.as_ref().unwrap().initializer) {
        let entry = |k: &str| t.external_data.iter().find(|e| e.key() == k).map(|e| e.value().to_string());
        match entry("offset") {
            Some(off) => {
                let (off, len): (usize, usize) = (off.parse().unwrap(), entry("length").unwrap().parse().unwrap());
                assert_eq!(entry("location").as_deref(), Some("b.onnx.data"));
                assert_eq!(&data[off..off + len], orig.raw_data.as_deref().unwrap());
                moved += 1;
            }
            None => assert_eq!(t.raw_data, orig.raw_data),
        }
    }
    assert!(moved >= 3);
    // planning needs no weight bytes: the same graph comes back
    assert_eq!(onnx::load(&path, &ImportOptions::default()).unwrap(), onnx::import(&model, &ImportOptions::default()).unwrap());
    // under the limit, one inline file
    let small = dir.join("c.onnx");
    onnx::write_model(model, &small, None).unwrap();
    assert_eq!(std::fs::read(&small).unwrap(), inline);
    assert!(!dir.join("c.onnx.data").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The torchvision models exported by both of torch's exporters (tests/data/onnx/real,
/// made by make_real.py): every one plans in both modes and with --branch-scale 0, its
/// `lower` table is checked in, and the exports of one model agree with each other.
#[test]
fn real_exports_plan_and_agree_across_exporters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/real");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    files.sort();
    assert!(files.len() >= 39, "{} fixtures", files.len());
    let mut by_model: std::collections::BTreeMap<String, Vec<(String, Vec<f64>)>> = Default::default();
    let mut convnext_stds: std::collections::HashMap<cnnc::analyze::Analysis, Vec<f64>> = Default::default();
    let mut convnext_compared = 0;
    let mut gn_norms: Option<Vec<(String, String, String)>> = None;
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.starts_with("convnext") {
            // ConvNeXt: LayerNorm over the channels of a channels-last view, Linear layers at
            // each position (MatMul), layer scale. The TorchScript export plans with both
            // analyses; in backward mode every layer but the classifier takes the forward
            // rule (each path from it meets a LayerNorm, or a layer that does, first). The
            // dynamo export writes the head's pooled vector as an `as_strided` (Reshape to
            // [-1] and a Gather back in order: the identity); both exports plan alike.
            let dynamo = file.ends_with(".dynamo.onnx");
            let g = onnx::load(path, &ImportOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
            let req =
                |mode, analysis| cnnc::GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
            expect_file(&path.with_extension("lower"), &cnnc::lower_report(&g, req(Mode::Forward, Default::default())).unwrap());
            let lines = cnnc::lower_report(&g, req(Mode::Forward, Default::default())).unwrap();
            assert_eq!(lines.matches("layernorm over channels").count(), 0, "the lower table shows layers, not normalizations");
            for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
                let plan = cnnc::plan_graph(&g, req(Mode::Forward, analysis)).unwrap_or_else(|e| panic!("{file} {analysis:?}: {e}"));
                assert_eq!(plan.layers.len(), 59, "{file}: 18 blocks of 3, the stem, 3 downsampling convs and the classifier");
                assert!(plan.layers.iter().all(|l| (l.predicted.forward_variance - 1.0).abs() < 1e-9 && l.weight.std.is_finite()));
                let linear =
                    plan.layers.iter().find(|l| l.weight.name == "features.1.0.block.3.weight").expect("a Linear named by its scope");
                assert_eq!(linear.weight.shape, vec![384, 96], "the Linear's own [out, in]");
                assert!(plan.batch_norms.iter().flatten().any(|b| b.mode == "layer:channels"), "{file}");
                assert!(
                    plan.batch_norms.iter().flatten().any(|b| b.mode == "scale" && b.scale.name == "features.1.0.layer_scale"),
                    "{file}"
                );
                // The TorchScript exporter deduplicated equal initializers through Identity
                // nodes named after the parameters, the dynamo exporter by reading the first
                // one's directly (every LayerNorm's γ is the stem's `features.0.1.weight`),
                // its metadata naming the parameter each node reads: each normalization
                // keeps its own.
                let norms = plan.batch_norms.as_ref().expect("a graph plan");
                let scales: std::collections::HashSet<&str> = norms.iter().map(|b| b.scale.name.as_str()).collect();
                assert_eq!(scales.len(), norms.len(), "{file}: one γ per normalization");
                if dynamo {
                    assert!(g.notes.iter().any(|n| n.contains("shared between equal initial values")), "{file}: {:?}", g.notes);
                }
                let stds: Vec<f64> = plan.layers.iter().map(|l| l.weight.std).collect();
                match convnext_stds.entry(analysis) {
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(stds);
                    }
                    std::collections::hash_map::Entry::Occupied(e) => {
                        // To 1e-6: the dynamo exporter writes the LayerNorms' ε as f32
                        // (9.99999997e-7), TorchScript as 1e-6.
                        for (a, b) in e.get().iter().zip(&stds) {
                            assert!((a - b).abs() <= 1e-6 * a, "{file} {analysis:?}: the exporters' plans differ: {a} vs {b}");
                        }
                        convnext_compared += 1;
                    }
                }
            }
            for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
                let fwd = cnnc::plan_graph(&g, req(Mode::Forward, analysis)).unwrap();
                let bwd = cnnc::plan_graph(&g, req(Mode::Backward, analysis)).unwrap_or_else(|e| panic!("{file} {analysis:?}: {e}"));
                let (last, rest) = bwd.layers.split_last().unwrap();
                for (b, f) in rest.iter().zip(&fwd.layers) {
                    assert!((b.weight.std - f.weight.std).abs() <= 1e-9 * f.weight.std, "{file} {analysis:?} {}", b.name);
                }
                assert!((last.predicted.backward_variance - 1.0).abs() < 1e-9, "the classifier meets its backward target");
            }
            continue;
        }
        let g = onnx::load(path, &ImportOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if file.starts_with("resnet18_gn") {
            // GroupNorm(32): the dynamo exporter folds γ and β into [C, 1, 1] views under
            // made-up names (`val_27`); cnnc names them after the node's module, as the
            // TorchScript export does, so that the plans agree name for name.
            let opts = Options { mode: Mode::Forward, std_cap: None };
            let plan =
                cnnc::plan_graph(&g, cnnc::GraphRequest { opts, analysis: Default::default(), branch_scale: 0.0, batch: None }).unwrap();
            let norms: Vec<(String, String, String)> = plan
                .batch_norms
                .unwrap()
                .iter()
                .map(|b| (b.mode.clone(), b.scale.name.clone(), format!("{:.12}", b.scale.value)))
                .collect();
            assert!(norms.iter().all(|(mode, _, _)| mode == "group:32"), "{file}: {norms:?}");
            assert_eq!(norms[0].1, "bn1.weight", "{file}");
            match &gn_norms {
                None => gn_norms = Some(norms),
                Some(other) => assert_eq!(&norms, other, "{file}: the exporters' GroupNorm entries differ"),
            }
        }
        let req = |mode, branch_scale| cnnc::GraphRequest {
            opts: Options { mode, std_cap: None },
            analysis: Default::default(),
            branch_scale,
            batch: None,
        };
        expect_file(&path.with_extension("lower"), &cnnc::lower_report(&g, req(Mode::Forward, 1.0)).unwrap());
        for (mode, alpha) in [(Mode::Backward, 1.0), (Mode::Forward, 0.0), (Mode::KaimingIn, 1.0)] {
            let plan = cnnc::plan_graph(&g, req(mode, alpha)).unwrap_or_else(|e| panic!("{} {mode:?}: {e}", path.display()));
            assert!(plan.layers.iter().all(|l| l.weight.std.is_finite() && l.tau.is_finite() && l.gamma.is_finite()), "{}", path.display());
        }
        // The map analysis plans them too (one export per model: it is the slow one), and
        // its forward plan keeps every weight layer's mean E[u²] at its target: 1, whatever
        // the positions' spread.
        let modes: &[Mode] = if file.ends_with(".dynamo.onnx") { &[Mode::Forward, Mode::Backward] } else { &[] };
        for &mode in modes {
            let map = cnnc::GraphRequest { analysis: cnnc::analyze::Analysis::Map, ..req(mode, 1.0) };
            let plan = cnnc::plan_graph(&g, map).unwrap_or_else(|e| panic!("{} map {mode:?}: {e}", path.display()));
            assert!(plan.layers.iter().all(|l| l.predicted.forward_range.is_some()), "{}", path.display());
            if mode == Mode::Forward {
                for l in &plan.layers {
                    assert!(
                        (l.predicted.forward_variance - 1.0).abs() < 1e-9,
                        "{} {}: {}",
                        path.display(),
                        l.name,
                        l.predicted.forward_variance
                    );
                }
            }
        }
        let plan = cnnc::plan_graph(&g, req(Mode::Forward, 1.0)).unwrap();
        let mut stds: Vec<f64> = plan.layers.iter().map(|l| l.weight.std).collect();
        stds.sort_by(f64::total_cmp);
        let model = file.split('.').next().unwrap().to_string();
        by_model.entry(model).or_default().push((file, stds));
    }
    assert_eq!(convnext_compared, 2, "ConvNeXt-T's two exports, each analysis compared");
    // Eval exports (TorchScript with or without weights, dynamo) fold BatchNorm the same way:
    // one network, one set of σ.
    for (model, exports) in &by_model {
        let evals: Vec<&(String, Vec<f64>)> = exports.iter().filter(|(f, _)| !f.contains(".train.")).collect();
        for (file, stds) in evals.iter().skip(1) {
            let (first, reference) = evals[0];
            assert_eq!(stds.len(), reference.len(), "{model}: {file} vs {first}");
            for (a, b) in stds.iter().zip(reference) {
                assert!((a - b).abs() <= 1e-12 * b, "{model}: {file} vs {first}: σ {a} vs {b}");
            }
        }
    }
}

#[test]
fn graph_ops_import_as_joins_and_functions() {
    // A residual Add, a Concat, a Split, a channel shuffle, a gate.
    let g = stem(
        vec![
            node("r", "Relu", &["c"], &["r"], vec![]),
            node("c2", "Conv", &["r", "W2"], &["c2"], vec![]),
            node("res", "Add", &["c2", "c"], &["a"], vec![]),
            node("cat", "Concat", &["a", "r"], &["cat"], vec![attr("axis", A::I(1))]),
            node("split", "Split", &["cat", "sizes"], &["s1", "s2"], vec![attr("axis", A::I(1))]),
            node("v1", "Reshape", &["s2", "g5"], &["v1"], vec![]),
            node("t", "Transpose", &["v1"], &["t"], vec![attr("perm", A::Is(vec![0, 2, 1, 3, 4]))]),
            node("v2", "Reshape", &["t", "g4"], &["shuf"], vec![]),
            node("gap", "GlobalAveragePool", &["shuf"], &["gap"], vec![]),
            node("sig", "Sigmoid", &["gap"], &["gate"], vec![]),
            node("se", "Mul", &["shuf", "gate"], &["y"], vec![]),
        ],
        vec![int64s("sizes", &[2, 6]), int64s("g5", &[1, 2, 3, 9, 9]), int64s("g4", &[1, 6, 9, 9]), init("W2", &[4, 4, 1, 1])],
    )
    .unwrap();
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.kind_name()).collect();
    assert_eq!(ops, ["conv", "activation", "conv", "add", "concat", "slice", "slice", "shuffle", "global avgpool", "activation", "mul"]);
    assert_eq!(g.nodes[3].inputs, vec![ir::ValueId(3), ir::ValueId(1)]);
    assert_eq!((&g.nodes[5].op, g.nodes[5].output), (&Op::ChannelSlice { start: 0, end: 2 }, img(2, 9, 9)));
    assert_eq!((&g.nodes[6].op, g.nodes[6].output), (&Op::ChannelSlice { start: 2, end: 8 }, img(6, 9, 9)));
    assert_eq!(g.nodes[7].op, Op::Shuffle { groups: 2 });
    assert_eq!(g.nodes[10].inputs, vec![ir::ValueId(8), ir::ValueId(10)]);
    // x + relu(x) is one element-wise function of x, not a join of two values.
    let g = stem(vec![node("r", "Relu", &["c"], &["r"], vec![]), node("res", "Add", &["c", "r"], &["a"], vec![])], vec![]).unwrap();
    assert!(matches!(&g.nodes[1].op, Op::Elementwise(_)), "{:?}", g.nodes[1].op);
}

#[test]
fn element_wise_chains_become_one_function() {
    // x·sigmoid(x) is SiLU; the TorchScript exporter's GELU is 0.5·x·(1 + erf(x/√2)).
    let g = stem(vec![node("s", "Sigmoid", &["c"], &["s"], vec![]), node("m", "Mul", &["c", "s"], &["y"], vec![])], vec![]).unwrap();
    assert_eq!((g.nodes.len(), &g.nodes[1].op), (2, &Op::Activation(ir::Activation::Silu)));
    let g = stem(
        vec![
            node("d", "Div", &["c", "sqrt2"], &["d"], vec![]),
            node("e", "Erf", &["d"], &["e"], vec![]),
            node("a", "Add", &["e", "one"], &["a"], vec![]),
            node("m", "Mul", &["c", "a"], &["m"], vec![]),
            node("h", "Mul", &["m", "half"], &["y"], vec![]),
            node("cv", "Conv", &["y", "W2"], &["z"], vec![]),
        ],
        vec![scalar("sqrt2", std::f32::consts::SQRT_2), scalar("one", 1.0), scalar("half", 0.5), init("W2", &[2, 4, 1, 1])],
    )
    .unwrap();
    let Op::Elementwise(e) = &g.nodes[1].op else { panic!("{:?}", g.nodes[1].op) };
    assert_eq!(g.nodes[1].name, "h", "named after the node that finished it");
    for x in [-2.0f64, -0.3, 0.0, 0.7, 3.0] {
        let gelu = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        assert!((e.eval(x).v - gelu).abs() < 1e-6, "{x}: {} vs {gelu}", e.eval(x).v);
    }
    // ReLU6 as Clip with its bounds as inputs; hard-swish; explicit zero Pad into a conv.
    let g = stem(
        vec![
            node("clip", "Clip", &["c", "lo", "hi"], &["r6"], vec![]),
            node("hs", "HardSwish", &["r6"], &["hs"], vec![]),
            node("pad", "Pad", &["hs", "pads"], &["p"], vec![]),
            node("cv", "Conv", &["p", "W2"], &["z"], vec![]),
        ],
        vec![scalar("lo", 0.0), scalar("hi", 6.0), int64s("pads", &[0, 0, 1, 2, 0, 0, 1, 2]), init("W2", &[2, 4, 3, 3])],
    )
    .unwrap();
    assert_eq!(g.nodes[1].op, Op::Elementwise(ir::Expr::Apply(ir::Fn1::Clip { min: 0.0, max: 6.0 }, Box::new(ir::Expr::X))));
    assert!(matches!(&g.nodes[2].op, Op::Elementwise(ir::Expr::Apply(ir::Fn1::HardSwish, _))));
    let c = conv_of(&g, 3);
    assert_eq!(c.pad, [pad(1, 1), pad(2, 2)]);
    assert_eq!(g.nodes[3].output, img(2, 9, 11));
}

#[test]
fn shape_arithmetic_folds_to_constants() {
    // Reshape(c, Concat(Unsqueeze(Gather(Shape(c), 0)), [-1])): [1, -1], a flatten.
    let g = stem(
        vec![
            node("shape", "Shape", &["c"], &["s"], vec![]),
            node("gather", "Gather", &["s", "zero"], &["n"], vec![attr("axis", A::I(0))]),
            node("unsq", "Unsqueeze", &["n", "axes"], &["n1"], vec![]),
            node("cat", "Concat", &["n1", "minus1"], &["target"], vec![attr("axis", A::I(0))]),
            node("view", "Reshape", &["c", "target"], &["f"], vec![]),
        ],
        vec![
            TensorProto { name: Some("zero".into()), data_type: Some(DataType::Int64 as i32), int64_data: vec![0], ..Default::default() },
            int64s("axes", &[0]),
            int64s("minus1", &[-1]),
        ],
    )
    .unwrap();
    assert_eq!((&g.nodes[1].op, g.nodes[1].output), (&Op::Flatten, Shape::Vector { n: 324 }));
}

#[test]
fn bad_graphs_are_errors_that_name_the_node() {
    let err = |nodes: Vec<NodeProto>, inits: Vec<TensorProto>| stem(nodes, inits).unwrap_err();
    let pool = node("pool", "MaxPool", &["c"], &["p"], vec![attr("kernel_shape", A::Is(vec![2, 2])), attr("strides", A::Is(vec![2, 2]))]);
    assert_eq!(
        err(vec![pool.clone(), node("res", "Add", &["c", "p"], &["a"], vec![])], vec![]),
        "node `res` (Add): an Add of mismatched shapes (4,9,9) and (4,4,4): cnnc joins values of one shape"
    );
    assert_eq!(
        err(vec![node("cat", "Concat", &["c", "c"], &["y"], vec![attr("axis", A::I(2))])], vec![]),
        "node `cat` (Concat): Concat along axis 2 is not supported: only along the channel axis 1"
    );
    assert_eq!(
        err(vec![pool, node("cat", "Concat", &["c", "p"], &["y"], vec![attr("axis", A::I(1))])], vec![]),
        "node `cat` (Concat): a Concat of (4,9,9) and (4,4,4): the inputs must agree on every axis but the channels"
    );
    // A shape computed from data values by an op that folds only constants.
    assert_eq!(
        err(
            vec![node("g", "Gather", &["c", "idx"], &["t"], vec![]), node("view", "Reshape", &["c", "t"], &["f"], vec![])],
            vec![int64s("idx", &[0])]
        ),
        "node `g` (Gather): a Gather of the data value `c` is taken only from a flattened image (Reshape to [-1]) read back in order"
    );
    // A Reshape target that depends on a weight whose values are not known.
    assert_eq!(
        err(vec![node("s", "Shape", &["W"], &["ws"], vec![]), node("n", "Neg", &["W"], &["wn"], vec![])], vec![]),
        "node `n` (Neg): input `W` is a weight whose values are not known: Neg cannot be folded"
    );
    assert_eq!(
        err(
            vec![
                node("p", "Pad", &["c", "pads"], &["p"], vec![attr("mode", A::S("reflect"))]),
                node("cv", "Conv", &["p", "W"], &["z"], vec![])
            ],
            vec![int64s("pads", &[0, 0, 1, 1, 0, 0, 1, 1])]
        ),
        "node `p` (Pad): Pad mode `reflect` is not supported: only zero (constant) padding, which is a conv's own padding"
    );
    assert_eq!(
        err(vec![node("m", "Mul", &["c", "W"], &["y"], vec![])], vec![]),
        "node `m` (Mul): Mul of a data value by the constant `W` of shape [4, 3, 3, 3]: cnnc multiplies by a scalar, or by a per-channel scale [4, 1, 1]"
    );
    assert_eq!(
        err(vec![node("sm", "Softmax", &["c"], &["s"], vec![]), node("r", "Relu", &["s"], &["y"], vec![])], vec![]),
        "node `sm` (Softmax): Softmax is supported only at the end of the network (its output a graph output)"
    );
}

#[test]
fn resize_prelu_elu_and_trailing_softmax() {
    let g = stem(
        vec![
            node("up", "Resize", &["c", "", "scales"], &["u"], vec![attr("mode", A::S("nearest"))]),
            node("pr", "PRelu", &["u", "slope"], &["p"], vec![]),
            node("elu", "Elu", &["p"], &["e"], vec![attr("alpha", A::F(0.5))]),
            node("sm", "Softmax", &["e"], &["out"], vec![]),
        ],
        vec![float_init("scales", &[4], vec![1.0, 1.0, 2.0, 3.0]), float_init("slope", &[4, 1, 1], vec![0.25; 4])],
    );
    // The Softmax's output is not a graph output of this little model: refused.
    assert!(g.unwrap_err().contains("Softmax is supported only at the end"));
    let mut m = model(
        vec![image_input(3, 11, 11)],
        vec![
            node("conv", "Conv", &["x", "W", "B"], &["c"], vec![]),
            node("up", "Resize", &["c", "", "scales"], &["u"], vec![attr("mode", A::S("nearest"))]),
            node("pr", "PRelu", &["u", "slope"], &["p"], vec![]),
            node("elu", "Elu", &["p"], &["e"], vec![attr("alpha", A::F(0.5))]),
            node("sm", "Softmax", &["e"], &["out"], vec![]),
        ],
        vec![
            init("W", &[4, 3, 3, 3]),
            init("B", &[4]),
            float_init("scales", &[4], vec![1.0, 1.0, 2.0, 3.0]),
            float_init("slope", &[4, 1, 1], vec![0.25; 4]),
        ],
    );
    m.graph.as_mut().unwrap().output = vec![input("out", &[Some(1), Some(4), Some(18), Some(27)])];
    let g = import_bytes(&m).unwrap();
    let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
    assert_eq!(ops[1], &Op::Resize { scale: [2, 3], linear: false });
    assert_eq!(g.nodes[1].output, img(4, 18, 27));
    assert_eq!(ops[2], &Op::Activation(ir::Activation::LeakyRelu { slope: 0.25 }));
    assert!(matches!(ops[3], Op::Elementwise(ir::Expr::Apply(ir::Fn1::Elu { alpha }, _)) if *alpha == 0.5));
    assert_eq!(g.nodes.len(), 4, "the trailing Softmax is post-processing");
    // Nearest upsampling copies each input: the second moment stays, and each input
    // receives the gradients of its 2·3 copies. Conv → Resize alone, Kaiming fan-in:
    // E[u²] = 2/27 · 27 = 2 (no padding: every tap is real); the gradient at the conv's
    // input, averaged: σ² · C_out · (readers per position, (27/11)² on 11×11) · 6.
    let g = stem(
        vec![node("up", "Resize", &["c", "", "scales"], &["u"], vec![])],
        vec![TensorProto {
            name: Some("scales".into()),
            dims: vec![4],
            data_type: Some(DataType::Float as i32),
            float_data: vec![1.0, 1.0, 2.0, 3.0],
            ..Default::default()
        }],
    )
    .unwrap();
    let opts = cnnc::analyze::graph::GraphOptions { mode: Mode::KaimingIn, std_cap: None, branch_scale: 1.0, batch: None };
    for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
        let a = cnnc::analyze::graph::analyze_graph_with(&g, opts, analysis).unwrap();
        assert!((a.output_variance - 2.0).abs() < 1e-12, "{analysis:?}: {}", a.output_variance);
        let expected = 2.0 / 27.0 * 4.0 * (27.0f64 / 11.0).powi(2) * 6.0;
        assert!(
            (a.weights[0].backward_variance - expected).abs() < 1e-12 * expected,
            "{analysis:?}: {} vs {expected}",
            a.weights[0].backward_variance
        );
    }
}

/// GroupNorm as torch exports it (Reshape to (N, G, −1), InstanceNormalization with
/// constant 1 and 0, Reshape back, Mul by γ and Add β through Unsqueeze), InstanceNorm,
/// GroupNormalization (opset 18) and LayerNormalization over (C, H, W): each one node with
/// each sample's statistics, its γ and β named after the initializers.
#[test]
fn group_instance_and_layer_norms_import_as_per_sample_normalizations() {
    // GroupNorm, TorchScript form: conv → 4 channels, 2 groups.
    let g = stem(
        vec![
            node("r1", "Reshape", &["c", "to_groups"], &["v"], vec![]),
            node("in", "InstanceNormalization", &["v", "ones", "zeros"], &["n"], vec![attr("epsilon", A::F(1e-5))]),
            node("shape", "Shape", &["c"], &["s"], vec![]),
            node("r2", "Reshape", &["n", "s"], &["back"], vec![]),
            node("u1", "Unsqueeze", &["gn.weight", "axes"], &["gw"], vec![]),
            node("mul", "Mul", &["back", "gw"], &["scaled"], vec![]),
            node("u2", "Unsqueeze", &["gn.bias", "axes"], &["gb"], vec![]),
            node("add", "Add", &["scaled", "gb"], &["y"], vec![]),
            node("relu", "Relu", &["y"], &["z"], vec![]),
        ],
        vec![
            int64s("to_groups", &[1, 2, -1]),
            float_init("ones", &[2], vec![1.0, 1.0]),
            float_init("zeros", &[2], vec![0.0, 0.0]),
            float_init("gn.weight", &[4], vec![1.0; 4]),
            float_init("gn.bias", &[4], vec![0.0; 4]),
            int64s("axes", &[1, 2]),
        ],
    )
    .unwrap();
    let b = bn_of(&g, 1);
    assert_eq!((b.groups, b.scale.as_str(), b.shift.as_str(), b.affine.clone()), (Some(2), "gn.weight", "gn.bias", vec![4]));
    // The same with γ and β stripped of their values (an export without weights).
    let stripped = |w: &str, b: &str| {
        stem(
            vec![
                node("r1", "Reshape", &["c", "to_groups"], &["v"], vec![]),
                node("in", "InstanceNormalization", &["v", "ones", "zeros"], &["n"], vec![]),
                node("shape", "Shape", &["c"], &["s"], vec![]),
                node("r2", "Reshape", &["n", "s"], &["back"], vec![]),
                node("u1", "Unsqueeze", &[w, "axes"], &["gw"], vec![]),
                node("mul", "Mul", &["back", "gw"], &["scaled"], vec![]),
                node("u2", "Unsqueeze", &[b, "axes"], &["gb"], vec![]),
                node("add", "Add", &["scaled", "gb"], &["y"], vec![]),
            ],
            vec![
                int64s("to_groups", &[1, 2, -1]),
                float_init("ones", &[2], vec![1.0, 1.0]),
                float_init("zeros", &[2], vec![0.0, 0.0]),
                init(w, &[4]),
                init(b, &[4]),
                int64s("axes", &[1, 2]),
            ],
        )
    };
    let gs = stripped("gn.weight", "gn.bias").unwrap();
    assert_eq!((bn_of(&gs, 1).scale.as_str(), bn_of(&gs, 1).shift.as_str(), gs.nodes.len()), ("gn.weight", "gn.bias", 2));
    assert_eq!(b.mode(), "group:2");
    assert!(
        matches!(g.nodes[2].op, Op::Activation(_)) && g.nodes.len() == 3,
        "{:?}",
        g.nodes.iter().map(|n| n.op.kind_name()).collect::<Vec<_>>()
    );
    // A GroupNorm whose InstanceNormalization scale is not 1 is an error, not a guess.
    let e = stem(
        vec![
            node("r1", "Reshape", &["c", "to_groups"], &["v"], vec![]),
            node("in", "InstanceNormalization", &["v", "twos", "zeros"], &["n"], vec![]),
        ],
        vec![int64s("to_groups", &[1, 2, -1]), float_init("twos", &[2], vec![2.0, 2.0]), float_init("zeros", &[2], vec![0.0, 0.0])],
    )
    .unwrap_err();
    assert!(e.contains("node `in` (InstanceNormalization): the scale of a GroupNorm's InstanceNormalization must be all 1"), "{e}");
    // InstanceNorm on the image: one group a channel.
    let g = stem(
        vec![node("in", "InstanceNormalization", &["c", "in.weight", "in.bias"], &["n"], vec![])],
        vec![init("in.weight", &[4]), init("in.bias", &[4])],
    )
    .unwrap();
    let b = bn_of(&g, 1);
    assert_eq!((b.groups, b.mode(), b.scale.as_str()), (Some(4), "instance".to_string(), "in.weight"));
    // GroupNormalization, opset 18.
    let g = stem(
        vec![node("gn", "GroupNormalization", &["c", "s", "b"], &["n"], vec![attr("num_groups", A::I(2))])],
        vec![init("s", &[4]), init("b", &[4])],
    )
    .unwrap();
    assert_eq!(bn_of(&g, 1).groups, Some(2));
    let e = stem(
        vec![node("gn", "GroupNormalization", &["c", "s", "b"], &["n"], vec![attr("num_groups", A::I(3))])],
        vec![init("s", &[4]), init("b", &[4])],
    )
    .unwrap_err();
    assert!(e.contains("`num_groups` = 3 must divide the 4 channels"), "{e}");
    // LayerNormalization over (C, H, W) of the 9×9 conv output; over the last axis refused.
    let g = stem(
        vec![node("ln", "LayerNormalization", &["c", "ln.weight", "ln.bias"], &["n"], vec![attr("axis", A::I(1))])],
        vec![init("ln.weight", &[4, 9, 9]), init("ln.bias", &[4, 9, 9])],
    )
    .unwrap();
    let b = bn_of(&g, 1);
    assert_eq!((b.groups, b.mode(), b.affine.clone()), (Some(1), "layer".to_string(), vec![4, 9, 9]));
    let e =
        stem(vec![node("ln", "LayerNormalization", &["c", "s", "b"], &["n"], vec![])], vec![init("s", &[9]), init("b", &[9])]).unwrap_err();
    assert!(e.contains("node `ln` (LayerNormalization): LayerNormalization over axis -1 is not supported"), "{e}");
}

/// ConvNeXt's block as both exporters write it: Transpose to channels-last, LayerNorm over
/// the last axis, MatMul (+ its bias) at each position, GELU, MatMul, Transpose back, a
/// layer scale, the residual Add; and what is refused on a channels-last value.
#[test]
fn channels_last_layer_norm_linear_and_layer_scale() {
    let block = |extra: Vec<NodeProto>, extra_inits: Vec<TensorProto>| {
        let mut nodes = vec![
            node(
                "/blk/block.0/Conv",
                "Conv",
                &["c", "dw", "dwb"],
                &["d"],
                vec![attr("group", A::I(4)), attr("pads", A::Is(vec![1, 1, 1, 1]))],
            ),
            node("/blk/block.1/Transpose", "Transpose", &["d"], &["t"], vec![attr("perm", A::Is(vec![0, 2, 3, 1]))]),
            node("/blk/block.2/LayerNormalization", "LayerNormalization", &["t", "ln.w", "ln.b"], &["n"], vec![attr("axis", A::I(-1))]),
            node("/blk/block.3/MatMul", "MatMul", &["n", "onnx::MatMul_7"], &["m"], vec![]),
            node("/blk/block.3/Add", "Add", &["blk.block.3.bias", "m"], &["a"], vec![]),
            node("/blk/block.4/Gelu", "Gelu", &["a"], &["gl"], vec![]),
            node("/blk/block.5/MatMul", "MatMul", &["gl", "onnx::MatMul_8"], &["m2"], vec![]),
            node("/blk/block.6/Transpose", "Transpose", &["m2"], &["back"], vec![attr("perm", A::Is(vec![0, 3, 1, 2]))]),
            node("/blk/Mul", "Mul", &["blk.layer_scale", "back"], &["s"], vec![]),
            node("/blk/Add", "Add", &["s", "c"], &["y"], vec![]),
        ];
        nodes.extend(extra);
        let mut inits = vec![
            init("dw", &[4, 1, 3, 3]),
            init("dwb", &[4]),
            init("ln.w", &[4]),
            init("ln.b", &[4]),
            init("onnx::MatMul_7", &[4, 16]),
            init("blk.block.3.bias", &[16]),
            init("onnx::MatMul_8", &[16, 4]),
            init("blk.layer_scale", &[4, 1, 1]),
        ];
        inits.extend(extra_inits);
        let mut m =
            model(vec![image_input(3, 11, 11)], [vec![node("conv", "Conv", &["x", "W", "B"], &["c"], vec![])], nodes].concat(), inits);
        m.graph.as_mut().unwrap().initializer.extend([init("W", &[4, 3, 3, 3]), init("B", &[4])]);
        m.opset_import[0].version = Some(20);
        import_bytes(&m)
    };
    let g = block(vec![], vec![]).unwrap();
    let kinds: Vec<&str> = g.nodes.iter().map(|n| n.op.kind_name()).collect();
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    let ln = bn_of(&g, 2);
    assert_eq!((ln.groups, ln.per_position, ln.mode(), ln.affine.clone()), (Some(1), true, "layer:channels".to_string(), vec![4]));
    // The MatMuls: 1×1 convs named after their scopes, their plan shape the Linear's [out, in].
    let (c3, p3) = (conv_of(&g, 3), g.nodes[3].params.clone().unwrap());
    assert_eq!((c3.in_channels, c3.out_channels, c3.kernel, c3.bias), (4, 16, [1, 1], true));
    assert_eq!((p3.weight.as_str(), p3.bias.as_deref(), p3.shape), ("blk.block.3.weight", Some("blk.block.3.bias"), Some(vec![16, 4])));
    assert_eq!(g.nodes[3].output, img(16, 9, 9));
    assert_eq!(g.nodes[5].params.as_ref().unwrap().weight, "blk.block.5.weight");
    // The layer scale: a per-channel γ alone; then the residual Add of the NCHW values.
    let s = bn_of(&g, 6);
    assert_eq!((s.mode(), s.scale.as_str(), s.affine.clone()), ("scale".to_string(), "blk.layer_scale", vec![4, 1, 1]));
    assert!(matches!(g.nodes[7].op, Op::Add));
    assert!(g.notes.iter().any(|n| n.contains("`onnx::MatMul_7` → `blk.block.3.weight`") && !n.contains("BatchNorm")), "{:?}", g.notes);
    // Unfolded (cnnc.torch's export): the MatMul reads Transpose(the Linear's own weight),
    // which folds to its dims; the plan entry is that weight.
    let nodes = vec![
        node("conv", "Conv", &["x", "W", "B"], &["c"], vec![]),
        node("/t/Transpose", "Transpose", &["c"], &["t"], vec![attr("perm", A::Is(vec![0, 2, 3, 1]))]),
        node("/fc/Transpose", "Transpose", &["fc.weight"], &["wt"], vec![attr("perm", A::Is(vec![1, 0]))]),
        node("/fc/MatMul", "MatMul", &["t", "wt"], &["m"], vec![]),
        node("/back/Transpose", "Transpose", &["m"], &["y"], vec![attr("perm", A::Is(vec![0, 3, 1, 2]))]),
    ];
    let g = import_bytes(&model(
        vec![image_input(3, 11, 11)],
        nodes,
        vec![init("W", &[4, 3, 3, 3]), init("B", &[4]), init("fc.weight", &[16, 4])],
    ))
    .unwrap();
    let p = g.nodes[1].params.clone().unwrap();
    assert_eq!((p.weight.as_str(), p.shape, g.nodes[1].output), ("fc.weight", Some(vec![16, 4]), img(16, 9, 9)));
    // Refused on a channels-last value: any op outside the list, naming the value.
    let e = block(vec![node("bad", "Conv", &["t", "W2"], &["z"], vec![])], vec![init("W2", &[4, 4, 1, 1])]).unwrap_err();
    assert!(e.contains("node `bad` (Conv): its input `t` is channels-last (N, H, W, C)"), "{e}");
    let e =
        block(vec![node("ln2", "LayerNormalization", &["t", "ln.w", "ln.b"], &["z"], vec![attr("axis", A::I(1))])], vec![]).unwrap_err();
    assert!(e.contains("LayerNormalization over axis 1 of a channels-last (N, H, W, C) value"), "{e}");
    let e = block(vec![node("sc", "Mul", &["c", "bad_scale"], &["z"], vec![])], vec![init("bad_scale", &[3, 1, 1])]).unwrap_err();
    assert!(e.contains("node `sc` (Mul): Mul of a data value by the constant `bad_scale` of shape [3, 1, 1]"), "{e}");
}

/// ConvTranspose: zeros between the positions (stride s), then a stride-1 conv padded
/// d(k − 1) − p at the start and d(k − 1) − p + output_padding at the end; the output size
/// is torch's (n − 1)s − p_begin − p_end + d(k − 1) + output_padding + 1, and the plan entry
/// keeps the stored weight [C_in, C_out/g, k_h, k_w].
#[test]
fn conv_transpose_is_zeros_between_then_a_conv() {
    let ct = |attrs: Vec<AttributeProto>, w: &[i64]| {
        let group = attrs.iter().find(|a| a.name() == "group").map_or(1, |a| a.i());
        let nodes = vec![node("up", "ConvTranspose", &["c", "up.weight", "up.bias"], &["y"], attrs)];
        stem(nodes, vec![init("up.weight", w), init("up.bias", &[w[1] * group])])
    };
    // The stem's conv gives (4, 9, 9). Kernel 2, stride 2, group 2: (9 − 1)·2 + 2 = 18.
    let g = ct(vec![attr("strides", A::Is(vec![2, 2])), attr("group", A::I(2))], &[4, 3, 2, 2]).unwrap();
    assert_eq!(g.nodes[1].op, Op::Dilate { stride: [2, 2] });
    assert_eq!(g.nodes[1].output, img(4, 17, 17));
    let c = conv_of(&g, 2);
    assert_eq!((c.in_channels, c.out_channels, c.groups, c.kernel, c.stride, c.pad), (4, 6, 2, [2, 2], [1, 1], [pad(1, 1), pad(1, 1)]));
    assert_eq!(g.nodes[2].output, img(6, 18, 18));
    let p = g.nodes[2].params.clone().unwrap();
    assert_eq!((p.weight.as_str(), p.bias.as_deref(), p.shape), ("up.weight", Some("up.bias"), Some(vec![4, 3, 2, 2])));
    // Kernel 4, stride 2, pads 1 (DCGAN): 2n. Kernel 3, stride 2, pads 1, output_padding 1: 2n.
    let g = ct(vec![attr("strides", A::Is(vec![2, 2])), attr("pads", A::Is(vec![1, 1, 1, 1]))], &[4, 2, 4, 4]).unwrap();
    assert_eq!((conv_of(&g, 2).pad, g.nodes[2].output), ([pad(2, 2), pad(2, 2)], img(2, 18, 18)));
    let attrs = vec![attr("strides", A::Is(vec![2, 2])), attr("pads", A::Is(vec![1, 1, 1, 1])), attr("output_padding", A::Is(vec![1, 1]))];
    let g = ct(attrs, &[4, 2, 3, 3]).unwrap();
    assert_eq!((conv_of(&g, 2).pad, g.nodes[2].output), ([pad(1, 2), pad(1, 2)], img(2, 18, 18)));
    // An explicit output_padding of 0 (the dynamo exporter writes it) is none.
    let attrs = vec![attr("strides", A::Is(vec![2, 2])), attr("output_padding", A::Is(vec![0, 0]))];
    assert_eq!(ct(attrs, &[4, 2, 2, 2]).unwrap().nodes[2].output, img(2, 18, 18));
    // Stride 1: no dilation node.
    let g = ct(vec![], &[4, 2, 3, 3]).unwrap();
    assert_eq!((g.nodes.len(), g.nodes[1].output), (2, img(2, 11, 11)));
    // Refused, with the reason.
    let e = ct(vec![attr("output_shape", A::Is(vec![18, 18]))], &[4, 2, 2, 2]).unwrap_err();
    assert!(e.contains("node `up` (ConvTranspose): attribute `output_shape` of a ConvTranspose is not supported"), "{e}");
    let e = ct(vec![attr("pads", A::Is(vec![2, 2, 2, 2]))], &[4, 2, 2, 2]).unwrap_err();
    assert!(e.contains("larger than the kernel's span 1"), "{e}");
    let e = ct(vec![attr("strides", A::Is(vec![2, 2])), attr("output_padding", A::Is(vec![2, 2]))], &[4, 2, 2, 2]).unwrap_err();
    assert!(e.contains("`output_padding` = [2, 2] must be smaller than the stride"), "{e}");
    let e = ct(vec![], &[3, 2, 2, 2]).unwrap_err();
    assert!(e.contains("the input has 4 channels but the weight `up.weight` [3, 2, 2, 2] reads 3"), "{e}");
}

/// `export-onnx` of the graph specs (residual Add, bottleneck-free inverted residuals with
/// ReLU6, dense Concat, training-mode BatchNorm): the export plans exactly as the source
/// (every number, every weight and BatchNorm name), at 32×32, with `--branch-scale 0`.
#[test]
fn exported_graphs_plan_as_their_source() {
    let req = cnnc::GraphRequest {
        opts: Options { mode: Mode::Forward, std_cap: None },
        analysis: cnnc::analyze::Analysis::Paper,
        branch_scale: 0.0,
        batch: None,
    };
    for spec in ["resnet18", "mobilenet_v2", "densenet_small"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("specs/{spec}.cnn"));
        let source = cnnc::load(&path, cnnc::InputSize::Square(32)).unwrap();
        let plan = source.plan(req).unwrap();
        let model = onnx::export(&source.graph, &plan, 3).unwrap();
        assert_eq!(model.opset_import[0].version, Some(15), "{spec}: training-mode BatchNorm");
        let back = onnx::import(&onnx::decode(Bytes::from(onnx::encode(&model).unwrap())).unwrap(), &ImportOptions::default()).unwrap();
        let again = cnnc::plan_graph(&back, req).unwrap();
        let (a, b) = (serde_json::to_value(&plan).unwrap(), serde_json::to_value(&again).unwrap());
        let names = |v: &serde_json::Value, list: &str, key: &str| -> Vec<String> {
            v[list].as_array().unwrap().iter().map(|e| e[key]["name"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(names(&a, "layers", "weight"), names(&b, "layers", "weight"), "{spec}");
        assert_eq!(names(&a, "batch_norms", "scale"), names(&b, "batch_norms", "scale"), "{spec}");
        assert_eq!(a["summary"], b["summary"], "{spec}");
        for (x, y) in plan.layers.iter().zip(&again.layers) {
            assert_eq!(x.weight.std, y.weight.std, "{spec} {}", x.weight.name);
            assert_eq!(x.predicted, y.predicted, "{spec} {}", x.weight.name);
        }
        for (x, y) in plan.batch_norms.iter().flatten().zip(again.batch_norms.iter().flatten()) {
            assert_eq!((x.scale.value, x.residual_last, x.epsilon), (y.scale.value, y.residual_last, y.epsilon), "{spec} {}", x.name);
        }
    }
}

/// Weight standardization (`tests/data/onnx/std/make_std.py`): the TorchScript exports
/// keep it as ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div (BiT's `StdConv2d`) or with rsqrt
/// and a per-filter gain times γ/√fan (NF-ResNets' form): each conv is a conv of the
/// stored weight, marked standardized, and the plan gives the gain (and the gain
/// parameter's value) its σ² is. The dynamo export folds the standardization into a new
/// initializer: a plain conv to cnnc.
#[test]
fn standardized_weights_plan_with_their_gain() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/std");
    let req = |mode, analysis| cnnc::GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
    for (file, gamma) in [("std_conv.ts.onnx", None), ("scaled_std_conv.ts.onnx", Some(1.7139))] {
        let g = onnx::load(&dir.join(file), &ImportOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let convs: Vec<&ir::Node> = g.nodes.iter().filter(|n| matches!(n.op, Op::Conv(_))).collect();
        assert_eq!(convs.len(), 2, "{file}: the standardization's steps make no IR node");
        for (n, name, fan) in [(convs[0], "conv1", 27.0f64), (convs[1], "conv2", 72.0)] {
            let p = n.params.as_ref().unwrap();
            assert_eq!(p.weight, format!("{name}.weight"), "{file}");
            let s = p.standardized.as_ref().unwrap_or_else(|| panic!("{file}: {name} is not marked standardized"));
            match gamma {
                None => assert!(s.gain == 1.0 && s.gain_param.is_none() && (s.epsilon - 1e-10).abs() < 1e-15, "{file}: {s:?}"),
                Some(gm) => {
                    assert!((s.gain - gm / fan.sqrt()).abs() < 1e-6, "{file} {name}: gain {} vs γ/√fan {}", s.gain, gm / fan.sqrt());
                    assert_eq!(s.gain_param, Some((format!("{name}.gain"), 1.0)), "{file}");
                }
            }
        }
        for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
            for mode in [Mode::Forward, Mode::Backward] {
                let plan = cnnc::plan_graph(&g, req(mode, analysis)).unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
                for l in plan.layers.iter().filter(|l| l.kind == "conv") {
                    let s = l.standardized.as_ref().unwrap_or_else(|| panic!("{file}: {} has no `standardized`", l.name));
                    assert!((s.gain - l.weight.std).abs() < 1e-12 && s.gain.is_finite() && s.gain > 0.0, "{file} {}", l.name);
                    if let (Some(p), Some(gm)) = (&s.gain_param, gamma) {
                        let fan = if l.weight.name.starts_with("conv1") { 27.0f64 } else { 72.0 };
                        assert!(
                            (p.value * gm / fan.sqrt() - s.gain).abs() < 1e-6 * s.gain,
                            "{file}: the gain parameter's value gives the gain"
                        );
                    }
                }
            }
        }
    }
    // Forward, the second conv reads a ReLU output whose mean each filter removes: its
    // gain is √(1/(κ Σ_c (E[z²] − μ²)))-like, above the plain conv's σ on the same input.
    let ts = onnx::load(&dir.join("std_conv.ts.onnx"), &ImportOptions::default()).unwrap();
    let dy = onnx::load(&dir.join("std_conv.dynamo.onnx"), &ImportOptions::default()).unwrap();
    assert!(dy.nodes.iter().all(|n| n.params.as_ref().is_none_or(|p| p.standardized.is_none())));
    let f = |g: &ir::Graph| cnnc::plan_graph(g, req(Mode::Forward, cnnc::analyze::Analysis::Paper)).unwrap();
    let (a, b) = (f(&ts), f(&dy));
    assert!((a.layers[0].weight.std - b.layers[0].weight.std).abs() < 1e-12, "the stem reads the zero-mean input: no mean to remove");
    assert!(a.layers[1].weight.std > 1.1 * b.layers[1].weight.std, "{} vs {}", a.layers[1].weight.std, b.layers[1].weight.std);
}

/// Resize to sizes that are not whole multiples (`tests/data/onnx/resize/make_resize.py`):
/// 3×3 → 7×7 bilinear with `align_corners` True and False, 7×7 → 5×5 nearest, by both
/// exporters. Each is a resampling whose weights are torch's own (`resize.json`: torch's
/// `F.interpolate` of the unit vectors), and the two exports plan alike.
#[test]
fn resize_to_any_size_takes_torch_s_interpolation_weights() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/resize");
    let torch: Vec<Vec<Vec<f64>>> = serde_json::from_str(&std::fs::read_to_string(dir.join("resize.json")).unwrap()).unwrap();
    let mut stds = Vec::new();
    for file in ["resize.ts.onnx", "resize.dynamo.onnx"] {
        let g = onnx::load(&dir.join(file), &ImportOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let resamples: Vec<&ir::Node> = g.nodes.iter().filter(|n| matches!(n.op, Op::Resample(_))).collect();
        assert_eq!(resamples.len(), 3, "{file}");
        for (n, expected) in resamples.iter().zip(&torch) {
            let Op::Resample(r) = &n.op else { unreachable!() };
            let (_, h, _) = g.shape(n.inputs[0]).chw();
            let (_, oh, _) = n.output.chw();
            assert_eq!((expected.len() as u64, expected[0].len() as u64), (oh, h), "{file} {}", n.name);
            for axis in [0, 1] {
                for (o, row) in r.weights(axis, h, oh).iter().enumerate() {
                    let mut dense = vec![0.0; h as usize];
                    for &(i, a) in row {
                        dense[i] += a;
                    }
                    for (i, (a, b)) in dense.iter().zip(&expected[o]).enumerate() {
                        assert!((a - b).abs() < 1e-6, "{file} {} axis {axis}: output {o} input {i}: cnnc {a}, torch {b}", n.name);
                    }
                }
            }
        }
        for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
            for mode in [Mode::Forward, Mode::Backward] {
                let req = cnnc::GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
                let plan = cnnc::plan_graph(&g, req).unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
                stds.push((file, plan.layers.iter().map(|l| l.weight.std).collect::<Vec<f64>>()));
            }
        }
    }
    let half = stds.len() / 2;
    for (a, b) in stds[..half].iter().zip(&stds[half..]) {
        for (x, y) in a.1.iter().zip(&b.1) {
            assert!((x - y).abs() <= 1e-12 * y, "{} vs {}: σ {x} vs {y}", a.0, b.0);
        }
    }
}

/// Efficient channel attention (`tests/data/onnx/attn/make_attn.py`), both exporters: the
/// pooled vector squeezed, transposed, convolved across its channels by a 1-D conv,
/// transposed back and unsqueezed is two `swap` nodes around a 1 × 3 conv of one channel,
/// whose plan entry is the stored [1, 1, 3] weight; both exports plan alike in both
/// analyses and modes.
#[test]
fn efficient_channel_attention_imports_from_both_exporters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/attn");
    let mut stds = Vec::new();
    for file in ["eca.ts.onnx", "eca.dynamo.onnx"] {
        let g = onnx::load(&dir.join(file), &ImportOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let kinds: Vec<&str> = g.nodes.iter().map(|n| n.op.kind_name()).collect();
        let at = kinds.iter().position(|k| *k == "swap").unwrap_or_else(|| panic!("{file}: {kinds:?}"));
        assert_eq!(&kinds[at - 1..at + 5], ["global avgpool", "swap", "conv", "swap", "activation", "mul"], "{file}");
        let conv = &g.nodes[at + 1];
        assert_eq!(conv_of(&g, at + 1).kernel, [1, 3], "{file}");
        assert_eq!(conv.output, Shape::Image { c: 1, h: 1, w: 16 }, "{file}");
        assert_eq!(g.nodes[at + 2].output, Shape::Image { c: 16, h: 1, w: 1 }, "{file}");
        for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
            for mode in [Mode::Forward, Mode::Backward] {
                let req = cnnc::GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
                let plan = cnnc::plan_graph(&g, req).unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
                let eca = plan.layers.iter().find(|l| l.weight.name == "eca.conv.weight").expect("the 1-D conv is a weight layer");
                assert_eq!(eca.weight.shape, [1, 1, 3], "{file}");
                assert!(plan.layers.iter().all(|l| l.weight.std.is_finite() && l.weight.std > 0.0));
                stds.push(plan.layers.iter().map(|l| l.weight.std).collect::<Vec<f64>>());
            }
        }
    }
    let half = stds.len() / 2;
    for (a, b) in stds[..half].iter().zip(&stds[half..]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-12 * y, "ts σ {x} vs dynamo σ {y}");
        }
    }
    // Anything else on the 3-D view is refused with the reason.
    let m = model(
        vec![image_input(4, 5, 5)],
        vec![
            node("gap", "GlobalAveragePool", &["x"], &["p"], vec![]),
            node("sq", "Squeeze", &["p", "ax"], &["s"], vec![]),
            node("bad", "MaxPool", &["s"], &["y"], vec![attr("kernel_shape", A::Is(vec![1]))]),
        ],
        vec![int64s("ax", &[3])],
    );
    let e = import(&m).unwrap_err();
    assert!(e.contains("node `bad` (MaxPool)") && e.contains("3-D view"), "{e}");
}

/// `cnnc inspect` on a graph: weight layers in the plan's order; a ConvTranspose's index
/// sets in its own input's positions (the zeros between them are no connections). The
/// U-Net's `up2` is kernel 2, stride 2: each output reads one position of each of the 128
/// input channels, and each input position is read by 2×2 outputs of each of the 64.
#[test]
fn inspect_takes_graphs_and_transposed_convs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/real/unet.train.onnx");
    let p = path.to_str().unwrap();
    let (ok, out, err) = cnnc(&["inspect", p, "--layer", "7", "--unit", "0", "--limit", "3"]);
    assert!(ok, "{err}");
    assert!(out.contains("transposed: stride 2×2") && out.contains("of (128,56,56); 128 elements)"), "{out}");
    assert!(out.contains("0=(0,0,0) 3136=(1,0,0) 6272=(2,0,0)"), "{out}");
    let (ok, out, err) = cnnc(&["inspect", p, "--layer", "7", "--unit", "113", "--backward", "--limit", "4"]);
    assert!(ok, "{err}");
    assert!(out.contains("input z_113 = (0,2,1) of (128,56,56)") && out.contains("256 elements"), "{out}");
    assert!(out.contains("450=(0,4,2) 451=(0,4,3) 562=(0,5,2) 563=(0,5,3)"), "{out}");
    let (ok, _, err) = cnnc(&["inspect", p, "--layer", "14", "--unit", "0"]);
    assert!(!ok && err.contains("--layer 14 is out of range") && err.contains("weight layers 1 to 13"), "{err}");
    // A plain conv of the graph: the chain's sets.
    let (ok, out, err) = cnnc(&["inspect", p, "--layer", "1", "--unit", "0", "--limit", "4"]);
    assert!(ok && out.contains("s(ℓ,i)  (inputs z^(ℓ-1) read, index=(c,y,x); 12 elements"), "{out}{err}");
}

/// Global-context attention (`tests/data/onnx/attn/make_attn.py`), both exporters: the
/// mask's Reshape to (N, 1, H·W) and Softmax over the positions, x's Reshape to (N, C, H·W)
/// and Unsqueeze, their MatMul and the Reshape back are a softmax over positions and an
/// attention pool; the transform's output added to every position a broadcast add.
#[test]
fn global_context_attention_imports_from_both_exporters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/attn");
    let mut stds = Vec::new();
    for file in ["gc.ts.onnx", "gc.dynamo.onnx"] {
        let g = onnx::load(&dir.join(file), &ImportOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let kinds: Vec<&str> = g.nodes.iter().map(|n| n.op.kind_name()).collect();
        assert_eq!(
            kinds,
            [
                "conv",
                "activation",
                "conv",
                "softmax positions",
                "attention pool",
                "conv",
                "activation",
                "conv",
                "add broadcast",
                "global avgpool",
                "flatten",
                "linear"
            ],
            "{file}"
        );
        assert_eq!(g.nodes[4].inputs, [ir::ValueId(2), ir::ValueId(4)], "{file}: the pool reads x and the weights");
        assert_eq!(g.nodes[4].output, Shape::Image { c: 16, h: 1, w: 1 }, "{file}");
        for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
            for mode in [Mode::Forward, Mode::Backward] {
                let req = cnnc::GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
                let plan = cnnc::plan_graph(&g, req).unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
                assert!(plan.layers.iter().all(|l| l.weight.std.is_finite() && l.weight.std > 0.0));
                stds.push(plan.layers.iter().map(|l| l.weight.std).collect::<Vec<f64>>());
            }
        }
    }
    let half = stds.len() / 2;
    for (a, b) in stds[..half].iter().zip(&stds[half..]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-12 * y, "ts σ {x} vs dynamo σ {y}");
        }
    }
}

/// Split attention of radix 2 (`tests/data/onnx/attn/make_attn.py`), both exporters: the
/// splits (Split), their sum, fc1 and fc2, ResNeSt's rSoftMax (Reshape to (N, groups,
/// radix, −1), Transpose [0, 2, 1, 3], Softmax over axis 1, Reshape back) as a radix
/// softmax node, the gates and their sum; both exports plan alike. A radix of 3 is refused
/// with the reason.
#[test]
fn split_attention_imports_from_both_exporters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/attn");
    let mut stds = Vec::new();
    for file in ["split.ts.onnx", "split.dynamo.onnx"] {
        let g = onnx::load(&dir.join(file), &ImportOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let radix: Vec<&ir::Node> = g.nodes.iter().filter(|n| matches!(n.op, Op::RadixSoftmax { .. })).collect();
        assert_eq!(radix.len(), 1, "{file}");
        assert_eq!(radix[0].op, Op::RadixSoftmax { radix: 2, groups: 1 }, "{file}");
        assert_eq!(radix[0].output, Shape::Image { c: 16, h: 1, w: 1 }, "{file}");
        assert_eq!(g.nodes.iter().filter(|n| n.op == Op::Mul).count(), 2, "{file}: the two gates");
        for analysis in [cnnc::analyze::Analysis::Paper, cnnc::analyze::Analysis::Map] {
            for mode in [Mode::Forward, Mode::Backward] {
                let req = cnnc::GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
                let plan = cnnc::plan_graph(&g, req).unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
                assert!(plan.layers.iter().all(|l| l.weight.std.is_finite() && l.weight.std > 0.0));
                stds.push(plan.layers.iter().map(|l| l.weight.std).collect::<Vec<f64>>());
            }
        }
    }
    let half = stds.len() / 2;
    for (a, b) in stds[..half].iter().zip(&stds[half..]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-12 * y, "ts σ {x} vs dynamo σ {y}");
        }
    }
    let m = model(
        vec![image_input(6, 4, 4)],
        vec![
            node("gap", "GlobalAveragePool", &["x"], &["p"], vec![]),
            node("view", "Reshape", &["p", "shape"], &["v"], vec![]),
            node("t", "Transpose", &["v"], &["t"], vec![attr("perm", A::Is(vec![0, 2, 1, 3]))]),
            node("soft", "Softmax", &["t"], &["y"], vec![attr("axis", A::I(1))]),
        ],
        vec![int64s("shape", &[1, 1, 3, -1])],
    );
    let e = import(&m).unwrap_err();
    assert!(e.contains("node `soft` (Softmax)") && e.contains("radix of 3"), "{e}");
}

/// The dynamo exporter's `as_strided` of a pooled map (ConvNeXt's head): Reshape to [-1],
/// then a Gather by indices [1, C, H, W] in the image's own order — the identity. Any
/// other order, other dims, or indices whose values the file lacks, are refused by name.
#[test]
fn a_flattened_image_gathered_back_in_order_is_the_identity() {
    let gathered = |idx: TensorProto| {
        let nodes = vec![
            node("flat", "Reshape", &["c", "minus1"], &["f"], vec![]),
            node("as_strided", "Gather", &["f", "idx"], &["g"], vec![attr("axis", A::I(0))]),
            node("act", "Relu", &["g"], &["y"], vec![]),
        ];
        stem(nodes, vec![int64s("minus1", &[-1]), idx])
    };
    let indices = |name: &str, dims: &[i64], v: Vec<i64>| TensorProto { dims: dims.to_vec(), ..int64s(name, &v) };
    let own: Vec<i64> = (0..4 * 9 * 9).collect();
    let g = gathered(indices("idx", &[1, 4, 9, 9], own.clone())).unwrap();
    let plain = stem(vec![node("act", "Relu", &["c"], &["y"], vec![])], vec![]).unwrap();
    assert_eq!(g.nodes.len(), plain.nodes.len(), "the Reshape and the Gather add no node");
    assert_eq!(g.nodes.last().unwrap().op, plain.nodes.last().unwrap().op);
    assert_eq!(g.nodes.last().unwrap().output, img(4, 9, 9));
    let mut swapped = own.clone();
    swapped.swap(0, 81);
    assert_eq!(
        gathered(indices("idx", &[1, 4, 9, 9], swapped)).unwrap_err(),
        "node `as_strided` (Gather): the indices `idx` do not read the image in its own order: cnnc takes only that (the identity)"
    );
    assert_eq!(
        gathered(indices("idx", &[324], own)).unwrap_err(),
        "node `as_strided` (Gather): the indices `idx` have dims [324]: expected the image's own [1, 4, 9, 9]"
    );
    // The flat view read by anything else.
    let e = stem(
        vec![node("flat", "Reshape", &["c", "minus1"], &["f"], vec![]), node("act", "Relu", &["f"], &["y"], vec![])],
        vec![int64s("minus1", &[-1])],
    )
    .unwrap_err();
    assert!(e.contains("is an image reshaped to one flat axis (Reshape to [-1])"), "{e}");
    // The shapes-only reader keeps integer payloads (indices: 6 KiB in ConvNeXt's dynamo
    // export) and drops the weights' of the same size.
    let raw = |name: &str, data_type: DataType, n: usize| TensorProto {
        name: Some(name.into()),
        dims: vec![n as i64],
        data_type: Some(data_type as i32),
        raw_data: Some(vec![1u8; n * 8].into()),
        ..Default::default()
    };
    let m = model(vec![image_input(3, 11, 11)], vec![], vec![raw("idx", DataType::Int64, 768), raw("w", DataType::Double, 768)]);
    let bytes = m.encode_to_vec();
    let slim = onnx::decode_shapes(std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
    let kept: Vec<Option<usize>> = slim.graph.unwrap().initializer.iter().map(|t| t.raw_data.as_ref().map(|d| d.len())).collect();
    assert_eq!(kept, [Some(768 * 8), None]);
    // All of them together keep at most 1 MiB: 20 index tensors of 64 KiB keep 16.
    let many: Vec<TensorProto> = (0..20).map(|i| raw(&format!("idx{i}"), DataType::Int64, 8192)).collect();
    let bytes = model(vec![image_input(3, 11, 11)], vec![], many).encode_to_vec();
    let slim = onnx::decode_shapes(std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
    let kept = slim.graph.unwrap().initializer.iter().filter(|t| t.raw_data.is_some()).count();
    assert_eq!(kept, 16);
}
