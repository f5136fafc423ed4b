//! ONNX `ModelProto` → [`ir::Graph`].
//!
//! Steps, in order: check the opset; find the `Add` nodes that are the bias of a `MatMul`
//! (MatMul + Add is one linear layer); report every unsupported node at once; sort the
//! nodes topologically (a cycle is an error); find the one data input and its shape; then
//! convert node by node through [`OPS`], one function per `op_type`.
//!
//! Values are of three kinds:
//! - **constants**: initializers, `Constant` nodes, weights given as graph inputs, and
//!   everything computed from them alone. Every node whose inputs are all constants is
//!   folded here by [`consts::eval`] (the shape arithmetic exporters emit: `Shape`,
//!   `Gather`, `Cast`, `Concat`, `Div`, `Ceil`, …); `Shape` of a data value folds too,
//!   since every data shape is known. Weights are known by their dims only (planning
//!   never reads their payload); small tensors keep their values.
//! - **data**: computed from the graph input, with an [`ir`] node and a [`Shape`].
//! - **pending**: an element-wise function of one data value, built up node by node
//!   (`x·sigmoid(x)`, `0.5·x·(1 + erf(x/√2))`, `x·clip(x + 3, 0, 6)/6`), and an explicit
//!   zero `Pad`, kept until a consumer needs the value. Then it becomes one IR node
//!   (a named activation when it is one), or, for a pad read by a `Conv`, the conv's
//!   own padding.
//!
//! Identity, Dropout, Cast and a trailing Softmax produce no IR node: their output is
//! their input.

use super::consts::{self, Tensor};
use super::proto::{
    attribute_proto::AttributeType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use super::OnnxError;
use crate::ir::{self, Activation, BatchNorm, Conv, Expr, Fn1, Linear, Op, Origin, Pad, ParamNames, Pool, PoolKind, Shape, ValueId};
use std::collections::{BTreeSet, HashMap, HashSet};

mod standardize;

/// What the importer needs beyond the model.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// One sample's input size: the declared one, or an override (needed when the
    /// graph's sizes are symbolic).
    pub input: crate::InputSize,
}

/// Largest size accepted for one axis, and for the number of elements of one sample:
/// keeps every later product within `u64`.
const MAX_DIM: u64 = 1 << 31;
const MAX_NUMEL: u64 = 1 << 48;

type OpFn = for<'m> fn(&mut Importer<'m>, &Cx<'m>) -> Result<(), String>;

/// The operator table: op_type, its converter for data inputs, and which of its inputs
/// are parameters (not data), so that a parameter given as a graph input is not taken
/// for the data input. A node whose inputs are all constants is folded instead
/// ([`consts::is_foldable`]).
const OPS: &[(&str, OpFn, &[usize])] = &[
    ("Conv", conv, &[1, 2]),
    ("ConvTranspose", conv_transpose, &[1, 2]),
    ("Gemm", gemm, &[1, 2]),
    ("MatMul", matmul, &[1]),
    ("Add", add, &[]),
    ("Sum", add, &[]),
    ("Sub", sub, &[]),
    ("Mul", mul, &[]),
    ("Div", div, &[]),
    ("Relu", unary, &[]),
    ("LeakyRelu", unary, &[]),
    ("PRelu", prelu, &[1]),
    ("Tanh", unary, &[]),
    ("Sigmoid", unary, &[]),
    ("HardSigmoid", unary, &[]),
    ("HardSwish", unary, &[]),
    ("Clip", clip, &[1, 2]),
    ("Elu", unary, &[]),
    ("Softplus", unary, &[]),
    ("Mish", unary, &[]),
    ("Gelu", unary, &[]),
    ("Erf", unary, &[]),
    ("Exp", unary, &[]),
    ("Neg", unary, &[]),
    ("Abs", unary, &[]),
    ("Sqrt", unary, &[]),
    ("Reciprocal", reciprocal, &[]),
    ("BatchNormalization", batch_norm, &[1, 2, 3, 4]),
    ("InstanceNormalization", instance_norm, &[1, 2]),
    ("GroupNormalization", group_norm, &[1, 2]),
    ("LayerNormalization", layer_norm, &[1, 2]),
    ("MaxPool", max_pool, &[]),
    ("AveragePool", average_pool, &[]),
    ("GlobalAveragePool", global_average_pool, &[]),
    ("GlobalMaxPool", global_max_pool, &[]),
    ("ReduceMean", reduce_mean, &[1]),
    ("ReduceMax", reduce_max, &[1]),
    ("Flatten", flatten, &[]),
    ("Reshape", reshape, &[1]),
    ("Gather", gather, &[1]),
    ("Transpose", transpose, &[]),
    ("Squeeze", squeeze, &[1]),
    ("Unsqueeze", unsqueeze, &[1]),
    ("Concat", concat, &[]),
    ("Split", split, &[1]),
    ("Slice", slice, &[1, 2, 3, 4]),
    ("Pad", pad, &[1, 2, 3]),
    ("Resize", resize, &[1, 2, 3]),
    ("Upsample", resize, &[1]),
    ("Dropout", identity, &[1, 2]),
    ("Identity", identity, &[]),
    ("Cast", identity, &[]),
    ("Softmax", trailing, &[]),
    ("LogSoftmax", trailing, &[]),
    ("Shape", shape_of, &[]),
    ("Constant", constant, &[]),
];

/// The operator types the importer handles, for the error that lists unsupported nodes.
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv (grouped, depthwise)",
    "ConvTranspose",
    "Gemm",
    "MatMul(+Add)",
    "Add",
    "Sum",
    "Mul (gates, x·sigmoid(x))",
    "Sub/Div (by constants)",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Tanh",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Elu",
    "Softplus",
    "Mish",
    "Gelu",
    "Erf",
    "ReduceMean/Sub/Mul/Div/Add/Sqrt/Pow/Reciprocal on a conv weight (weight standardization)",
    "BatchNormalization",
    "InstanceNormalization (and GroupNorm as torch exports it)",
    "GroupNormalization",
    "LayerNormalization (over C, H, W)",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "ReduceMean",
    "ReduceMax",
    "Flatten",
    "Reshape",
    "Transpose (channel shuffle; [0, 2, 1] of a pooled vector's view)",
    "Squeeze/Unsqueeze (a pooled vector to (N, C, 1) and back)",
    "Conv 1-D (across the channels of a pooled vector: efficient channel attention)",
    "Concat",
    "Split",
    "Slice",
    "Pad (zero, before a Conv)",
    "Resize",
    "Upsample",
    "Dropout",
    "Identity",
    "Cast",
    "Softmax/LogSoftmax (trailing; over positions: global-context attention; across a radix of 2: split attention)",
    "Gather (of a flattened image, back in its own order: the dynamo exporter's as_strided)",
    "constant shape arithmetic (Shape, Gather, Unsqueeze, Squeeze, Ceil, ConstantOfShape, …)",
];

/// The ops cnnc takes on a 3-D value (N, A, B), held as the image (A, 1, B) (see
/// `Importer::rank3`): a 1-D conv over its last axis, the transpose of its two axes,
/// Unsqueeze back to an image, and element-wise functions.
const RANK3_OPS: &[&str] = &["Transpose", "Conv", "Unsqueeze", "Relu", "Sigmoid", "HardSigmoid", "Tanh", "Identity", "Cast", "Dropout"];

/// The ops cnnc takes on a channels-last value (see `Importer::channels_last`): those
/// that act on each element, or on the last axis as the IR's ops act on the channels.
const CHANNELS_LAST_OPS: &[&str] = &[
    "Transpose",
    "LayerNormalization",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Tanh",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Elu",
    "Softplus",
    "Mish",
    "Gelu",
    "Erf",
    "Dropout",
    "Identity",
    "Cast",
];

fn lookup(op: &str) -> Option<&'static (&'static str, OpFn, &'static [usize])> {
    OPS.iter().find(|(name, _, _)| *name == op)
}

/// A constant value: its dims, and its values when they are known (small tensors;
/// weights are known by their dims only).
#[derive(Clone, Debug)]
struct Param {
    dims: Vec<i64>,
    value: Option<Tensor>,
}

impl Param {
    fn ints(&self) -> Option<Vec<i64>> {
        self.value.as_ref().and_then(Tensor::as_ints)
    }
    /// The single number of a one-element tensor.
    fn scalar(&self) -> Option<f64> {
        let v = self.value.as_ref()?;
        (v.numel() == 1).then(|| v.as_floats()[0])
    }
}

/// An element-wise function of a data value, not yet an IR node.
#[derive(Clone, Debug)]
struct Pending {
    base: ValueId,
    shape: Shape,
    expr: Expr,
    /// The ONNX node that applied the last step: the IR node is named after it.
    name: String,
}

/// The views of global-context attention (see `Importer::attention`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum AttView {
    Values,
    Weights,
    Column,
    Pooled,
}

/// A data value reshaped to (N, g, C/g, H, W) for a channel shuffle, maybe transposed.
#[derive(Clone, Copy, Debug)]
struct Grouped {
    base: ValueId,
    shape: Shape,
    groups: u64,
    transposed: bool,
}

struct Importer<'m> {
    params: HashMap<String, Param>,
    values: HashMap<&'m str, (ValueId, Shape)>,
    pending: HashMap<&'m str, Pending>,
    /// Explicit zero padding, kept for the Conv that reads it.
    pads: HashMap<&'m str, (ValueId, Shape, [Pad; 2])>,
    grouped: HashMap<&'m str, Grouped>,
    /// A data value reshaped to (N, G, −1) for a GroupNorm (torch exports GroupNorm as
    /// InstanceNormalization over that view): (the image, its shape, G).
    group_view: HashMap<&'m str, (ValueId, Shape, u64)>,
    /// The InstanceNormalization of such a view, until the Reshape back: (the image, its
    /// shape, G, ε).
    group_norm: HashMap<&'m str, (ValueId, Shape, u64, f64)>,
    /// Outputs of normalizations whose affine γ (`Some(false)`) or β (`Some(true)`) the
    /// next per-channel Mul or Add supplies: the IR node index.
    norm_affine: HashMap<&'m str, (usize, bool)>,
    /// Which node makes each value (to name a folded constant after its initializer).
    producers: HashMap<&'m str, &'m NodeProto>,
    nodes: Vec<ir::Node>,
    /// MatMul node index → (bias name, Add output name) when an Add adds its bias.
    matmul_bias: HashMap<usize, (&'m str, &'m str)>,
    /// Indices of the Add nodes folded into a MatMul.
    fused_adds: HashSet<usize>,
    /// The graph's output names (a Softmax is accepted only there).
    outputs: HashSet<&'m str>,
    /// Weight layers whose names were recovered from the node's scope.
    renamed: Vec<String>,
    /// Normalization parameters the dynamo exporter shared between equal initial values,
    /// named after their own nodes instead ([`Importer::own_param_name`]).
    unshared: Vec<String>,
    /// Values the graph holds channels-last (N, H, W, C), after a Transpose with perm
    /// [0, 2, 3, 1]: in the IR they are the image itself (ConvNeXt's LayerNorm and Linear
    /// layers between two permutes).
    channels_last: HashSet<&'m str>,
    /// Operations in the element-wise functions made so far ([`super::budget::check_expr`]).
    expr_ops: usize,
    /// Values computed from a stored conv weight by the steps of a weight standardization.
    weight_syms: HashMap<&'m str, standardize::Sym>,
    /// The views of global-context attention: x as (N, 1, C, H·W), the softmax of its
    /// mask over the positions (N, 1, H·W) and as a column (N, 1, H·W, 1), their MatMul
    /// (N, 1, C, 1): the IR value and which view.
    attention: HashMap<&'m str, (ValueId, Shape, AttView)>,
    /// Split attention's view of a pooled vector (N, groups, radix, −1), maybe transposed
    /// to (N, radix, groups, −1): (the vector, its shape, groups, radix, transposed).
    radix_view: HashMap<&'m str, (ValueId, Shape, u64, u64, bool)>,
    /// An image of a batch-1 export reshaped to one flat axis (Reshape to [-1]): the
    /// value and its shape, for the Gather that reads it back in order (the dynamo
    /// exporter's `as_strided` of ConvNeXt's pooled map).
    flat_view: HashMap<&'m str, (ValueId, Shape)>,
    /// 3-D values (N, A, B), held as the image (A, 1, B): a pooled vector squeezed to
    /// (N, C, 1), its transpose (N, 1, C), a 1-D conv's output (efficient channel attention).
    rank3: HashSet<&'m str>,
}

/// One node being converted.
struct Cx<'m> {
    node: &'m NodeProto,
    index: usize,
    name: String,
    op: &'m str,
}

/// Converts a decoded model into the graph IR.
pub fn import(model: &ModelProto, opts: &ImportOptions) -> Result<ir::Graph, OnnxError> {
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Decode("the model has no graph".into()))?;
    check_opset(model)?;
    let (matmul_bias, fused_adds) = fuse_linear(graph);
    let unsupported: Vec<(String, String)> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| !is_default_domain(n) || (lookup(n.op_type()).is_none() && !consts::is_foldable(n.op_type())))
        .map(|(k, n)| (node_name(n, k), op_label(n)))
        .collect();
    if !unsupported.is_empty() {
        return Err(OnnxError::Unsupported(unsupported));
    }
    super::names::check_names(graph, |k| node_name(&graph.node[k], k))?;
    let order = topological_order(graph)?;

    let mut imp = Importer {
        params: HashMap::new(),
        values: HashMap::new(),
        pending: HashMap::new(),
        pads: HashMap::new(),
        grouped: HashMap::new(),
        group_view: HashMap::new(),
        group_norm: HashMap::new(),
        norm_affine: HashMap::new(),
        producers: graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect(),
        nodes: Vec::new(),
        matmul_bias,
        fused_adds,
        outputs: graph.output.iter().map(|o| o.name()).collect(),
        renamed: Vec::new(),
        unshared: Vec::new(),
        channels_last: HashSet::new(),
        expr_ops: 0,
        weight_syms: HashMap::new(),
        rank3: HashSet::new(),
        attention: HashMap::new(),
        radix_view: HashMap::new(),
        flat_view: HashMap::new(),
    };
    for t in &graph.initializer {
        imp.params.insert(t.name().to_string(), param_of(t));
    }
    let (data_input, shape) = data_input(graph, &imp, opts)?;
    imp.values.insert(data_input, (ValueId(0), shape));
    for vi in &graph.input {
        if vi.name() != data_input && !imp.params.contains_key(vi.name()) {
            if let Some(dims) = declared_dims(vi).and_then(|d| d.into_iter().collect::<Option<Vec<i64>>>()) {
                imp.params.insert(vi.name().to_string(), Param { dims, value: None });
            }
        }
    }
    for k in order {
        let node = &graph.node[k];
        let cx = Cx { node, index: k, name: node_name(node, k), op: node.op_type() };
        let fail = |message: String| OnnxError::Node { node: cx.name.clone(), op: cx.op.to_string(), message };
        if imp.standardize_step(&cx).map_err(fail)? || imp.try_fold(&cx).map_err(fail)? {
            continue;
        }
        let from_cl = node.input.iter().any(|i| imp.channels_last.contains(i.as_str()));
        if from_cl && !CHANNELS_LAST_OPS.contains(&cx.op) {
            let i = node.input.iter().find(|i| imp.channels_last.contains(i.as_str())).map_or("", String::as_str);
            return Err(fail(format!(
                "its input `{i}` is channels-last (N, H, W, C), after a Transpose with perm [0, 2, 3, 1]: on such a value cnnc takes \
                 LayerNormalization over the last axis, MatMul, element-wise functions, Add and the Transpose back, not {}",
                cx.op
            )));
        }
        let from_r3 = node.input.iter().any(|i| imp.rank3.contains(i.as_str()));
        if from_r3 && !RANK3_OPS.contains(&cx.op) {
            let i = node.input.iter().find(|i| imp.rank3.contains(i.as_str())).map_or("", String::as_str);
            return Err(fail(format!(
                "its input `{i}` is a 3-D view (N, A, B) of a pooled vector: on such a value cnnc takes a 1-D Conv, Transpose [0, 2, 1], \
                 Unsqueeze back to an image and element-wise functions, not {}",
                cx.op
            )));
        }
        let Some((_, convert, _)) = lookup(cx.op) else {
            return Err(fail(match cx.node.input.iter().find(|i| imp.is_data(i)) {
                Some(i) => format!("{} computes on the data value `{i}`: cnnc folds it only on constants", cx.op),
                None => format!("an input of {} is not a known constant", cx.op),
            }));
        };
        convert(&mut imp, &cx).map_err(fail)?;
        if from_r3 && !matches!(cx.op, "Transpose" | "Unsqueeze" | "Conv") {
            imp.rank3.extend(node.output.iter().map(String::as_str));
        }
        if from_cl && cx.op != "Transpose" {
            imp.channels_last.extend(node.output.iter().map(String::as_str));
        }
    }
    // A pending value that no node reads (the network ends in an activation) becomes a
    // node, in the order the values were made.
    let read: HashSet<&str> = graph.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let ends: Vec<&str> = graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).filter(|o| !read.contains(o)).collect();
    for o in ends {
        if imp.pending.contains_key(o) {
            let cx = Cx { node: &graph.node[0], index: 0, name: o.to_string(), op: "output" };
            imp.data(&cx, o).map_err(|message| OnnxError::Model(format!("value `{o}`: {message}")))?;
        }
    }
    if imp.nodes.is_empty() {
        return Err(OnnxError::Model("the graph has no node that cnnc can plan".into()));
    }
    super::names::check_shared_weights(&imp.nodes)?;
    let mut notes = Vec::new();
    if !imp.renamed.is_empty() {
        notes.push(format!(
            "{} weight{} carried names the exporter made up (`onnx::Conv_…`, `onnx::MatMul_…`: constant folding), so cnnc named them after their nodes' scopes ({}{}){}",
            imp.renamed.len(),
            if imp.renamed.len() == 1 { "" } else { "s" },
            imp.renamed.iter().take(2).cloned().collect::<Vec<_>>().join(", "),
            if imp.renamed.len() > 2 { ", …" } else { "" },
            if imp.renamed.iter().any(|r| r.starts_with("`onnx::Conv")) {
                "; if the model had BatchNorm layers, torch folded them into these convs: export with \
                 `training=torch.onnx.TrainingMode.TRAINING` (or `do_constant_folding=False`) to keep them"
            } else {
                ""
            },
        ));
    }
    if !imp.unshared.is_empty() {
        notes.push(format!(
            "{} normalization parameter{} read an initializer the exporter shared between equal initial values, so cnnc named each after \
             its own node's module ({}{})",
            imp.unshared.len(),
            if imp.unshared.len() == 1 { "" } else { "s" },
            imp.unshared.iter().take(2).cloned().collect::<Vec<_>>().join(", "),
            if imp.unshared.len() > 2 { ", …" } else { "" },
        ));
    }
    let name = if graph.name().is_empty() { "onnx".to_string() } else { graph.name().to_string() };
    Ok(ir::Graph { name, input: shape, nodes: imp.nodes, notes })
}
fn is_default_domain(n: &NodeProto) -> bool {
    matches!(n.domain(), "" | "ai.onnx")
}

fn op_label(n: &NodeProto) -> String {
    use super::names::printable;
    if is_default_domain(n) {
        printable(n.op_type()).into_owned()
    } else {
        format!("{}::{}", printable(n.domain()), printable(n.op_type()))
    }
}

/// The node's name, or `op_type#index` when it has none.
fn node_name(n: &NodeProto, k: usize) -> String {
    use super::names::printable;
    if n.name().is_empty() {
        format!("{}#{k}", printable(n.op_type()))
    } else {
        printable(n.name()).into_owned()
    }
}

/// The default domain's opset must be declared (ONNX requires it, and operators such as
/// Pad, Split, Squeeze and Resize changed their inputs between versions) and be 7 or later.
fn check_opset(model: &ModelProto) -> Result<(), OnnxError> {
    let default: Vec<i64> = model.opset_import.iter().filter(|o| matches!(o.domain(), "" | "ai.onnx")).map(|o| o.version()).collect();
    match default.as_slice() {
        [] => Err(OnnxError::Model(
            "the model declares no opset for the default ONNX domain (`opset_import`), so the version of its operators is unknown".into(),
        )),
        [v, ..] if *v < 7 => Err(OnnxError::Model(format!("the model uses opset {v}: cnnc imports opset 7 and later"))),
        _ => Ok(()),
    }
}

/// Finds each MatMul whose only consumer is an Add of a value that no node computes
/// (an initializer, a graph input or a Constant): the pair is one linear layer.
fn fuse_linear(graph: &GraphProto) -> (HashMap<usize, (&str, &str)>, HashSet<usize>) {
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, n) in graph.node.iter().enumerate() {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            consumers.entry(i.as_str()).or_default().push(k);
        }
    }
    // Values computed from data: a bias reached through `Identity` or `Cast` of an
    // initializer (the TorchScript exporter deduplicates equal constants that way) is not.
    let mut constant: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    constant.extend(graph.input.iter().map(|v| v.name()));
    let mut changed = true;
    while changed {
        changed = false;
        for n in &graph.node {
            let passes = matches!(n.op_type(), "Identity" | "Cast") && n.input.first().is_some_and(|i| constant.contains(i.as_str()));
            if n.op_type() == "Constant" || passes {
                for o in &n.output {
                    changed |= constant.insert(o.as_str());
                }
            }
        }
    }
    let data = graph.input.iter().map(|v| v.name()).find(|name| {
        graph.node.iter().any(|n| matches!(n.op_type(), "Conv" | "Gemm" | "MatMul") && n.input.first().map(String::as_str) == Some(*name))
    });
    let computed: HashSet<&str> =
        graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).filter(|o| !constant.contains(o) || Some(*o) == data).collect();
    let mut matmul_bias = HashMap::new();
    let mut fused = HashSet::new();
    for (k, n) in graph.node.iter().enumerate() {
        if n.op_type() != "MatMul" || !is_default_domain(n) {
            continue;
        }
        let Some(out) = n.output.first() else { continue };
        let Some([j]) = consumers.get(out.as_str()).map(Vec::as_slice) else { continue };
        let add = &graph.node[*j];
        if add.op_type() != "Add" || !is_default_domain(add) || add.input.len() != 2 || fused.contains(j) {
            continue;
        }
        let other = if add.input[0] == *out { &add.input[1] } else { &add.input[0] };
        if computed.contains(other.as_str()) || other == out {
            continue;
        }
        if let Some(add_out) = add.output.first() {
            matmul_bias.insert(k, (other.as_str(), add_out.as_str()));
            fused.insert(*j);
        }
    }
    (matmul_bias, fused)
}

/// Kahn's algorithm, keeping the file order among ready nodes. Values that no node
/// produces (graph inputs, initializers, undefined names) do not constrain the order;
/// undefined names are reported by the node that reads them.
fn topological_order(graph: &GraphProto) -> Result<Vec<usize>, OnnxError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (k, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o.as_str(), k).is_some() {
                return Err(OnnxError::Model(format!("value `{o}` is produced by two nodes")));
            }
        }
    }
    let n = graph.node.len();
    let mut pending = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (k, node) in graph.node.iter().enumerate() {
        for i in &node.input {
            if let Some(&p) = producer.get(i.as_str()) {
                pending[k] += 1;
                dependents[p].push(k);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&k| pending[k] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(k) = ready.pop_first() {
        order.push(k);
        for &d in &dependents[k] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() < n {
        let stuck: Vec<String> = (0..n)
            .filter(|&k| pending[k] > 0)
            .map(|k| format!("`{}` ({})", node_name(&graph.node[k], k), graph.node[k].op_type()))
            .collect();
        return Err(OnnxError::Model(format!("the graph has a cycle: nodes {} depend on each other", stuck.join(", "))));
    }
    Ok(order)
}

/// The declared dims of a graph input: `None` when it has no tensor shape; an unknown or
/// symbolic size is `None` inside.
fn declared_dims(vi: &ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use super::proto::tensor_shape_proto::dimension::Value;
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else { return None };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(v)) if v > 0 => Some(v),
                _ => None,
            })
            .collect(),
    )
}

fn dims_text(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.map_or("?".to_string(), |v| v.to_string())).collect();
    format!("[{}]", parts.join(", "))
}

/// The single graph input that is data (not a weight), and one sample's shape.
fn data_input<'m>(graph: &'m GraphProto, imp: &Importer<'_>, opts: &ImportOptions) -> Result<(&'m str, Shape), OnnxError> {
    let mut param_uses: HashSet<&str> = HashSet::new();
    for (k, n) in graph.node.iter().enumerate() {
        if let Some((_, _, params)) = lookup(n.op_type()) {
            for &p in params.iter() {
                if let Some(i) = n.input.get(p) {
                    param_uses.insert(i.as_str());
                }
            }
        }
        if let Some((bias, _)) = imp.matmul_bias.get(&k) {
            param_uses.insert(bias);
        }
    }
    let candidates: Vec<&ValueInfoProto> =
        graph.input.iter().filter(|vi| !imp.params.contains_key(vi.name()) && !param_uses.contains(vi.name())).collect();
    let vi = match candidates.as_slice() {
        [vi] => *vi,
        [] => return Err(OnnxError::Model("the graph has no data input (every graph input is a weight or an initializer)".into())),
        many => {
            let names: Vec<String> = many.iter().map(|v| format!("`{}`", v.name())).collect();
            return Err(OnnxError::Model(format!(
                "the graph has {} data inputs ({}): cnnc plans networks with one input",
                many.len(),
                names.join(", ")
            )));
        }
    };
    let name = vi.name();
    let declared = declared_dims(vi);
    let given = match opts.input {
        crate::InputSize::Declared => None,
        crate::InputSize::Chw(chw) => Some(chw),
        crate::InputSize::Square(s) => match declared.as_deref() {
            Some([_, Some(c), _, _]) => Some([*c as u64, s, s]),
            Some(d) => {
                return Err(OnnxError::Model(format!(
                    "--image-size {s} needs an image input with a known channel count; the graph input `{name}` has shape {}: give --input CxHxW",
                    dims_text(d)
                )))
            }
            None => return Err(OnnxError::Model(format!("the graph input `{name}` has no declared shape: give --input CxHxW"))),
        },
    };
    if let Some([c, h, w]) = given {
        for (axis, v) in [("C", c), ("H", h), ("W", w)] {
            if v == 0 || v > MAX_DIM {
                return Err(OnnxError::Model(format!("--input: {axis} = {v} is out of range (1 to {MAX_DIM})")));
            }
        }
        return checked_shape(Shape::Image { c, h, w }).map(|s| (name, s)).map_err(OnnxError::Model);
    }
    let hint = "give one sample's shape with --input CxHxW";
    let shape = match declared.as_deref() {
        Some([_, Some(c), Some(h), Some(w)]) => Shape::Image { c: *c as u64, h: *h as u64, w: *w as u64 },
        Some([_, Some(n)]) => Shape::Vector { n: *n as u64 },
        Some(d @ ([_, _, _, _] | [_, _])) => {
            return Err(OnnxError::Model(format!(
                "the graph input `{name}` has shape {} with unknown or symbolic sizes: {hint}",
                dims_text(d)
            )))
        }
        Some(d) => {
            return Err(OnnxError::Model(format!(
                "the graph input `{name}` has shape {}: cnnc takes (N, C, H, W) images or (N, F) vectors",
                dims_text(d)
            )))
        }
        None => return Err(OnnxError::Model(format!("the graph input `{name}` has no declared shape: {hint}"))),
    };
    for d in shape.dims() {
        if d > MAX_DIM {
            return Err(OnnxError::Model(format!("the graph input `{name}` has a size {d} past the limit {MAX_DIM}")));
        }
    }
    checked_shape(shape).map(|s| (name, s)).map_err(OnnxError::Model)
}

/// A stored weight's dims, each in 1..=`MAX_DIM`, their product within the DSL's limit
/// on a weight (as [`Cx::param`] checks them).
fn checked_dims(name: &str, dims: &[i64]) -> Result<Vec<u64>, String> {
    let d = dims
        .iter()
        .map(|&d| u64::try_from(d).ok().filter(|&d| (1..=MAX_DIM).contains(&d)))
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| format!("the weight `{name}` has an invalid shape {dims:?}"))?;
    let limit = crate::lower::MAX_NUMEL;
    if d.iter().try_fold(1u64, |a, &x| a.checked_mul(x).filter(|&n| n <= limit)).is_none() {
        return Err(format!("the weight `{name}` has shape {d:?}: more than {limit} elements"));
    }
    Ok(d)
}

fn checked_shape(s: Shape) -> Result<Shape, String> {
    let numel = s.dims().iter().try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= MAX_NUMEL));
    match numel {
        Some(_) => Ok(s),
        None => Err(format!("shape {s} has more than {MAX_NUMEL} elements")),
    }
}

/// A tensor's dims, and its values when the payload is there and small: at most
/// [`VALUE_LIMIT`] elements, so that the shapes-only reader (which drops payloads over
/// `slim::KEEP_LIMIT` bytes) and the full decoder see the same constants.
fn param_of(t: &TensorProto) -> Param {
    let count = t.dims.iter().try_fold(1u64, |a, &d| u64::try_from(d).ok().and_then(|d| a.checked_mul(d)));
    let limit = if t.data_type.is_some_and(super::slim::is_integer) { super::slim::INT_KEEP_LIMIT / 8 } else { VALUE_LIMIT };
    let value = if count.is_some_and(|n| n <= limit) { consts::from_proto(t) } else { None };
    Param { dims: t.dims.clone(), value }
}

/// Initializers with more elements are known by their dims only (8-byte elements fit
/// the shapes-only reader's limit).
const VALUE_LIMIT: u64 = super::slim::KEEP_LIMIT / 8;

// ---------------------------------------------------------------- node context helpers

impl<'m> Cx<'m> {
    /// Input `i`'s name, `None` when absent or empty (an omitted optional input).
    fn input(&self, i: usize) -> Option<&'m str> {
        self.node.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn output(&self) -> Result<&'m str, String> {
        self.node.output.first().map(String::as_str).filter(|s| !s.is_empty()).ok_or_else(|| "the node has no output".to_string())
    }

    /// The dims of the parameter read at input `i`, all in 1..=`MAX_DIM`, their product at
    /// most [`crate::lower::MAX_NUMEL`] (2^40, the DSL's limit on a weight); `what` names
    /// it in errors. The limit keeps every weight count (fan-in, fan-out, parameters, and
    /// their sum over `lower::MAX_NODES` nodes) within `u64`.
    fn param(&self, imp: &Importer<'_>, i: usize, what: &str) -> Result<(&'m str, Vec<u64>), String> {
        let name = self.input(i).ok_or_else(|| format!("the {what} (input {i}) is missing"))?;
        let p = imp.params.get(name).ok_or_else(|| {
            if imp.is_data(name) {
                format!("the {what} `{name}` is computed by the graph: cnnc needs it as an initializer")
            } else {
                format!("the {what} `{name}` has no initializer and no declared shape")
            }
        })?;
        let dims = p
            .dims
            .iter()
            .map(|&d| u64::try_from(d).ok().filter(|&d| (1..=MAX_DIM).contains(&d)))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| format!("the {what} `{name}` has an invalid shape {:?}", p.dims))?;
        let limit = crate::lower::MAX_NUMEL;
        if dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d).filter(|&n| n <= limit)).is_none() {
            return Err(format!("the {what} `{name}` has shape {dims:?}: more than {limit} elements (the limit is 2^{})", limit.ilog2()));
        }
        Ok((name, dims))
    }

    fn attr(&self, name: &str) -> Option<&'m AttributeProto> {
        self.node.attribute.iter().find(|a| a.name() == name)
    }

    /// Whether attribute `a` has type `t` (an attribute without a type is judged by its fields).
    fn check_type(a: &AttributeProto, t: AttributeType, present: bool) -> bool {
        match a.r#type {
            Some(x) if x != AttributeType::Undefined as i32 => x == t as i32,
            _ => present,
        }
    }

    fn int(&self, name: &str, default: i64) -> Result<i64, String> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if Self::check_type(a, AttributeType::Int, a.i.is_some()) => Ok(a.i()),
            Some(_) => Err(format!("attribute `{name}` must be an integer")),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, String> {
        match self.int(name, 0)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("attribute `{name}` must be 0 or 1, got {v}")),
        }
    }

    fn float(&self, name: &str, default: f32) -> Result<f32, String> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if Self::check_type(a, AttributeType::Float, a.f.is_some()) && a.f().is_finite() => Ok(a.f()),
            Some(a) if Self::check_type(a, AttributeType::Float, a.f.is_some()) => {
                Err(format!("attribute `{name}` must be finite, got {}", a.f()))
            }
            Some(_) => Err(format!("attribute `{name}` must be a float")),
        }
    }

    fn ints(&self, name: &str) -> Result<Option<&'m [i64]>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if Self::check_type(a, AttributeType::Ints, true) => Ok(Some(&a.ints)),
            Some(_) => Err(format!("attribute `{name}` must be a list of integers")),
        }
    }

    fn string(&self, name: &str, default: &'static str) -> Result<String, String> {
        match self.attr(name) {
            None => Ok(default.to_string()),
            Some(a) if Self::check_type(a, AttributeType::String, a.s.is_some()) => {
                Ok(String::from_utf8_lossy(a.s.as_deref().unwrap_or_default()).into_owned())
            }
            Some(_) => Err(format!("attribute `{name}` must be a string")),
        }
    }

    /// A per-axis attribute of two positive integers (`strides`, `dilations`, `kernel_shape`).
    fn pair(&self, name: &str, default: Option<u64>) -> Result<[u64; 2], String> {
        match self.ints(name)? {
            None => default.map(|d| [d, d]).ok_or_else(|| format!("attribute `{name}` is required")),
            Some(&[a, b]) if (1..=MAX_DIM as i64).contains(&a) && (1..=MAX_DIM as i64).contains(&b) => Ok([a as u64, b as u64]),
            Some(v @ &[_, _]) => Err(format!("attribute `{name}` = {v:?} is out of range: each value must be from 1 to {MAX_DIM}")),
            Some(v) => Err(format!("attribute `{name}` = {v:?} must have 2 values (2-D only), got {}", v.len())),
        }
    }

    /// Explicit pads from `auto_pad` and `pads` ([h_begin, w_begin, h_end, w_end]).
    fn pads(&self, input: [u64; 2], kernel: [u64; 2], stride: [u64; 2], dilation: [u64; 2]) -> Result<[Pad; 2], String> {
        let auto = self.string("auto_pad", "NOTSET")?;
        match auto.as_str() {
            "NOTSET" => match self.ints("pads")? {
                None => Ok([Pad::default(); 2]),
                Some(&[hb, wb, he, we]) => {
                    let all = [hb, wb, he, we];
                    if all.iter().any(|&p| !(0..=MAX_DIM as i64).contains(&p)) {
                        return Err(format!("attribute `pads` = {all:?} is out of range: each value must be from 0 to {MAX_DIM}"));
                    }
                    Ok([Pad { begin: hb as u64, end: he as u64 }, Pad { begin: wb as u64, end: we as u64 }])
                }
                Some(v) => Err(format!("attribute `pads` = {v:?} must have 4 values (2-D only), got {}", v.len())),
            },
            "VALID" => Ok([Pad::default(); 2]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let axis = |a: usize| {
                    let out = input[a].div_ceil(stride[a]);
                    let span = dilation[a] * (kernel[a] - 1) + 1;
                    let total = ((out - 1) * stride[a] + span).saturating_sub(input[a]);
                    let small = total / 2;
                    if auto == "SAME_UPPER" {
                        Pad { begin: small, end: total - small }
                    } else {
                        Pad { begin: total - small, end: small }
                    }
                };
                Ok([axis(0), axis(1)])
            }
            other => Err(format!("attribute `auto_pad` = `{other}` is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")),
        }
    }
}

impl<'m> Importer<'m> {
    /// Appends an IR node reading `input` and binds `output` to its value.
    fn push(
        &mut self,
        cx: &Cx<'m>,
        op: Op,
        input: ValueId,
        shape: Shape,
        params: Option<ParamNames>,
        output: &'m str,
    ) -> Result<ValueId, String> {
        self.push_n(cx, op, vec![input], shape, params, output)
    }

    /// Appends an IR node reading `inputs` and binds `output` to its value.
    fn push_n(
        &mut self,
        cx: &Cx<'m>,
        op: Op,
        inputs: Vec<ValueId>,
        shape: Shape,
        params: Option<ParamNames>,
        output: &'m str,
    ) -> Result<ValueId, String> {
        let id = self.node(cx, op, inputs, shape, params)?;
        self.values.insert(output, (id, shape));
        Ok(id)
    }

    /// Appends an IR node without binding a name to it.
    fn node(&mut self, cx: &Cx<'m>, op: Op, inputs: Vec<ValueId>, shape: Shape, params: Option<ParamNames>) -> Result<ValueId, String> {
        self.named(cx.name.clone(), op, inputs, shape, params)
    }

    fn named(&mut self, name: String, op: Op, inputs: Vec<ValueId>, shape: Shape, params: Option<ParamNames>) -> Result<ValueId, String> {
        let shape = checked_shape(shape)?;
        if self.nodes.len() as u64 >= crate::lower::MAX_NODES {
            return Err(format!("the graph has more than {} nodes", crate::lower::MAX_NODES));
        }
        self.nodes.push(ir::Node { op, inputs, output: shape, origin: Origin::OnnxNode(name.clone()), name, params });
        Ok(ValueId(self.nodes.len()))
    }

    /// Whether `name` is computed from the graph input.
    fn is_data(&self, name: &str) -> bool {
        self.values.contains_key(name)
            || self.pending.contains_key(name)
            || self.pads.contains_key(name)
            || self.grouped.contains_key(name)
            || self.group_view.contains_key(name)
            || self.group_norm.contains_key(name)
            || self.attention.contains_key(name)
            || self.radix_view.contains_key(name)
            || self.flat_view.contains_key(name)
    }

    /// The initializer a folded constant was made from through shape-only ops
    /// (Unsqueeze, Reshape, Squeeze: a GroupNorm's γ; Identity and Cast of it), or its own
    /// name. An Identity whose output has a name of its own is where the TorchScript
    /// exporter deduplicated equal initializers (every ConvNeXt block's layer scale is
    /// `Identity(features.1.0.layer_scale)`): that name is the parameter's.
    /// A normalization's (or layer scale's) parameter name: its initializer's
    /// ([`Importer::source_name`]), or — where the dynamo exporter shares one initializer
    /// between equal parameters (every LayerNorm γ of ConvNeXt is the stem's
    /// `features.0.1.weight`, every layer scale the first block's) — the node's own: its
    /// module (`pkg.torch.onnx.name_scopes`) and the initializer's last name component,
    /// taken only where the node's `pkg.torch.onnx.fx_node` reads that parameter
    /// (`%p_features_1_1_layer_scale`). A plan applied by name then sets each one.
    ///
    /// Where the initializer's name is made up (`val_27`: the dynamo exporter folded a
    /// GroupNorm's γ into its [C, 1, 1] view), the last component is the parameter's role
    /// in a torch normalization, `role` (`weight` for γ, `bias` for β), under the same check.
    fn own_param_name(&mut self, cx: &Cx<'m>, name: &'m str, role: &str) -> String {
        let source = self.source_name(name);
        let made_up = made_up_name(source);
        let own = name_scopes_module(cx.node).and_then(|m| {
            let last = if made_up { role } else { source.rsplit('.').next()? };
            let candidate = format!("{m}.{last}");
            let fx = cx.node.metadata_props.iter().find(|p| p.key() == "pkg.torch.onnx.fx_node")?.value();
            let placeholder = format!("%p_{}", candidate.replace('.', "_"));
            let reads = fx
                .match_indices(&placeholder)
                .any(|(i, _)| !fx[i + placeholder.len()..].starts_with(|ch: char| ch.is_alphanumeric() || ch == '_'));
            (reads && candidate != source).then_some(candidate)
        });
        // A TorchScript export has no fx_node to check against; its node names carry the
        // module scope (`/bn1/Mul`), as for a MatMul's made-up weight.
        let own = own.or_else(|| made_up.then(|| scope_module(&cx.name).map(|m| format!("{m}.{role}"))).flatten());
        match own {
            Some(own) => {
                let note = format!("`{source}` → `{own}`");
                if made_up {
                    self.renamed.push(note);
                } else {
                    self.unshared.push(note);
                }
                own
            }
            None => source.to_string(),
        }
    }

    fn source_name(&self, name: &'m str) -> &'m str {
        let made_up = made_up_name;
        let mut n = name;
        for _ in 0..16 {
            match self.producers.get(n) {
                Some(p)
                    if !p.input.is_empty()
                        && (matches!(p.op_type(), "Unsqueeze" | "Reshape" | "Squeeze" | "Transpose")
                            || (matches!(p.op_type(), "Identity" | "Cast") && made_up(n))) =>
                {
                    n = p.input[0].as_str();
                }
                _ => break,
            }
        }
        n
    }

    /// A Mul (`shift` false) or Add (`shift` true) of a normalization's output by a
    /// per-channel constant: its γ or β, absorbed into the node. Returns whether it was.
    fn absorb_affine(&mut self, cx: &Cx<'m>, shift: bool) -> Result<bool, String> {
        let (Some(a), Some(b)) = (cx.input(0), cx.input(1)) else { return Ok(false) };
        let (data, constant) = if self.norm_affine.contains_key(a) { (a, b) } else { (b, a) };
        let Some(&(node, awaiting_shift)) = self.norm_affine.get(data) else { return Ok(false) };
        let Some(p) = self.params.get(constant) else { return Ok(false) };
        let Op::BatchNorm(bn) = &self.nodes[node].op else { return Ok(false) };
        let numel: i64 = p.dims.iter().product();
        if awaiting_shift != shift || numel != bn.channels as i64 || p.dims.iter().filter(|&&d| d != 1).count() > 1 {
            return Ok(false);
        }
        let name = self.own_param_name(cx, constant, if shift { "bias" } else { "weight" });
        let Op::BatchNorm(bn) = &mut self.nodes[node].op else { unreachable!("checked above") };
        if shift {
            bn.shift = name;
        } else {
            bn.scale = name;
        }
        let v = self.values[data];
        let out = cx.output()?;
        self.values.insert(out, v);
        self.norm_affine.remove(data);
        if !shift {
            self.norm_affine.insert(out, (node, true));
        }
        Ok(true)
    }

    /// The data value called `name`, made an IR node first if it is pending.
    fn data(&mut self, cx: &Cx<'m>, name: &'m str) -> Result<(ValueId, Shape), String> {
        if let Some(v) = self.values.get(name) {
            return Ok(*v);
        }
        if let Some(p) = self.pending.get(name).cloned() {
            let op = match p.expr.as_activation() {
                Some(Activation::Identity) => {
                    self.pending.remove(name);
                    self.values.insert(name, (p.base, p.shape));
                    return Ok((p.base, p.shape));
                }
                Some(act) => Op::Activation(act),
                None => Op::Elementwise(p.expr),
            };
            let id = self.named(p.name, op, vec![p.base], p.shape, None)?;
            self.pending.remove(name);
            self.values.insert(name, (id, p.shape));
            return Ok((id, p.shape));
        }
        if self.pads.contains_key(name) {
            return Err(format!("the padded value `{name}` is read by a {}: cnnc takes an explicit Pad only before a Conv", cx.op));
        }
        if self.grouped.contains_key(name) {
            return Err(format!(
                "`{name}` is a 5-D view of an image: cnnc takes it only as part of a channel shuffle (Reshape → Transpose → Reshape)"
            ));
        }
        if self.radix_view.contains_key(name) {
            return Err(format!(
                "`{name}` is a (N, groups, radix, −1) view of a pooled vector: cnnc takes it only as split attention's Transpose [0, 2, 1, 3] \
                 and Softmax over the radix"
            ));
        }
        if self.flat_view.contains_key(name) {
            return Err(format!(
                "`{name}` is an image reshaped to one flat axis (Reshape to [-1]): cnnc takes it only as read back in order by a Gather \
                 (indices [1, C, H, W], the image's own)"
            ));
        }
        if self.attention.contains_key(name) {
            return Err(format!(
                "`{name}` is a view of global-context attention: cnnc takes it only as Reshape (N, C, H·W) → Unsqueeze → MatMul with the \
                 Softmax over positions of the mask → Reshape (N, C, 1, 1)"
            ));
        }
        if self.params.contains_key(name) {
            return Err(format!("input `{name}` is a constant, not data computed from the graph input"));
        }
        Err(format!("input `{name}` is not defined by any node, initializer or graph input"))
    }

    /// The data value read at input `i`.
    fn data_at(&mut self, cx: &Cx<'m>, i: usize) -> Result<(ValueId, Shape), String> {
        let name = cx.input(i).ok_or_else(|| format!("input {i} is missing"))?;
        self.data(cx, name)
    }

    /// Input `i` as an element-wise function of a data value, when it is data.
    fn expr(&self, cx: &Cx<'m>, i: usize) -> Option<Pending> {
        let name = cx.input(i)?;
        if let Some(p) = self.pending.get(name) {
            return Some(p.clone());
        }
        self.values.get(name).map(|&(base, shape)| Pending { base, shape, expr: Expr::X, name: String::new() })
    }

    /// Input `i` as a constant, when it is one.
    fn constant(&self, cx: &Cx<'m>, i: usize) -> Option<&Param> {
        cx.input(i).and_then(|n| self.params.get(n))
    }

    /// Folds the node when every input it has is a known constant. Returns whether it did.
    fn try_fold(&mut self, cx: &Cx<'m>) -> Result<bool, String> {
        if !consts::is_foldable(cx.op) || cx.op == "Constant" {
            return Ok(false);
        }
        let names: Vec<Option<&'m str>> = (0..cx.node.input.len()).map(|i| cx.input(i)).collect();
        if names.iter().flatten().any(|n| self.is_data(n)) {
            return Ok(false);
        }
        // Shape of a weight: its dims, known without its values.
        if cx.op == "Shape" {
            if let Some(p) = names.first().copied().flatten().and_then(|n| self.params.get(n)) {
                let dims: Vec<u64> = p.dims.iter().map(|&d| d.max(0) as u64).collect();
                let t = consts::shape_op(cx.node, &dims)?;
                let d = t.dims.iter().map(|&d| d as i64).collect();
                self.params.insert(cx.output()?.to_string(), Param { dims: d, value: Some(t) });
                return Ok(true);
            }
        }
        // Identity and Cast of a weight whose values are not loaded: the dims pass through.
        if matches!(cx.op, "Identity" | "Cast") {
            if let Some(p) = names.first().copied().flatten().and_then(|n| self.params.get(n)) {
                if p.value.is_none() {
                    let p = p.clone();
                    self.params.insert(cx.output()?.to_string(), p);
                    return Ok(true);
                }
            }
        }
        // Transpose of a weight whose values are not loaded (a Linear's weight before its
        // MatMul when constants are not folded: ConvNeXt's, exported by cnnc.torch): the
        // dims permuted.
        if cx.op == "Transpose" {
            if let Some(p) = names.first().copied().flatten().and_then(|n| self.params.get(n)) {
                if p.value.is_none() {
                    let rank = p.dims.len();
                    let perm: Vec<usize> = match cx.ints("perm")? {
                        Some(v) => v
                            .iter()
                            .map(|&i| usize::try_from(i).ok().filter(|&i| i < rank))
                            .collect::<Option<_>>()
                            .ok_or("attribute `perm` is out of range")?,
                        None => (0..rank).rev().collect(),
                    };
                    let mut seen = vec![false; rank];
                    if perm.len() != rank || perm.iter().any(|&i| std::mem::replace(&mut seen[i], true)) {
                        return Err(format!("attribute `perm` = {perm:?} is not a permutation of the weight's {rank} axes"));
                    }
                    let dims = perm.iter().map(|&i| p.dims[i]).collect();
                    self.params.insert(cx.output()?.to_string(), Param { dims, value: None });
                    return Ok(true);
                }
            }
        }
        // Unsqueeze of a small weight whose values are not loaded (a GroupNorm's γ in a
        // stripped export): its dims, from the op on zeros of the weight's dims.
        if cx.op == "Unsqueeze" {
            if let Some(p) = names.first().copied().flatten().and_then(|n| self.params.get(n)) {
                let numel = p.dims.iter().try_fold(1u64, |a, &d| u64::try_from(d).ok().and_then(|d| a.checked_mul(d)));
                if let (None, Some(n @ 0..=65536)) = (&p.value, numel) {
                    let zeros = Tensor::floats(p.dims.iter().map(|&d| d as u64).collect(), vec![0.0; n as usize]);
                    let rest: Vec<Option<&Tensor>> =
                        names[1..].iter().map(|n| n.and_then(|n| self.params.get(n)).and_then(|p| p.value.as_ref())).collect();
                    let mut inputs = vec![Some(&zeros)];
                    inputs.extend(rest);
                    let out = consts::eval(cx.node, &inputs)?;
                    let dims = out.dims.iter().map(|&d| d as i64).collect();
                    self.params.insert(cx.output()?.to_string(), Param { dims, value: None });
                    return Ok(true);
                }
            }
        }
        let mut inputs: Vec<Option<&Tensor>> = Vec::with_capacity(names.len());
        for n in &names {
            match n {
                None => inputs.push(None),
                Some(n) => match self.params.get(*n) {
                    Some(Param { value: Some(t), .. }) => inputs.push(Some(t)),
                    Some(_) => return Err(format!("input `{n}` is a weight whose values are not known: {} cannot be folded", cx.op)),
                    None => return Err(format!("input `{n}` is not defined by any node, initializer or graph input")),
                },
            }
        }
        let out = consts::eval(cx.node, &inputs)?;
        let dims = out.dims.iter().map(|&d| d as i64).collect();
        self.params.insert(cx.output()?.to_string(), Param { dims, value: Some(out) });
        Ok(true)
    }

    /// Binds `output` to an element-wise function of a data value.
    fn pend(&mut self, cx: &Cx<'m>, p: Pending) -> Result<(), String> {
        self.expr_ops = super::budget::check_expr(&p.expr, self.expr_ops)?;
        self.pending.insert(cx.output()?, Pending { name: cx.name.clone(), ..p });
        Ok(())
    }

    /// The plan names of a weight layer's parameters: the initializer names, or, where the
    /// exporter made them up (`onnx::Conv_193`, after folding a BatchNorm into the conv),
    /// the module path recovered from the node's scope (`/layer1/layer1.0/conv1/Conv` →
    /// `layer1.0.conv1`).
    fn param_names(&mut self, cx: &Cx<'m>, weight: &str, bias: Option<String>) -> ParamNames {
        if weight.starts_with("onnx::") {
            if let Some(module) = scope_module(&cx.name) {
                self.renamed.push(format!("`{weight}` → `{module}.weight`"));
                return ParamNames {
                    weight: format!("{module}.weight"),
                    bias: bias.map(|_| format!("{module}.bias")),
                    shape: None,
                    standardized: None,
                    transposed: false,
                };
            }
        }
        ParamNames { weight: weight.to_string(), bias, shape: None, standardized: None, transposed: false }
    }
}

/// The module path of a TorchScript node name: `/layer1/layer1.0/conv1/Conv` →
/// `layer1.0.conv1`, `/features/features.1/conv/conv.0/conv.0.0/Conv` →
/// `features.1.conv.0.0`. Each scope is a child of the previous one, written either as
/// its own name (`conv1`) or as the previous scope's name extended (`layer1.0`).
pub fn scope_module(node: &str) -> Option<String> {
    let parts: Vec<&str> = node.strip_prefix('/')?.split('/').collect();
    let (_, scopes) = parts.split_last()?;
    if scopes.is_empty() || scopes.iter().any(|s| s.is_empty()) {
        return None;
    }
    let mut path = String::new();
    let mut last = "";
    for s in scopes {
        match s.strip_prefix(last).and_then(|rest| rest.strip_prefix('.')) {
            Some(rest) if !last.is_empty() => {
                path.push('.');
                path.push_str(rest);
            }
            _ => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(s);
            }
        }
        last = s;
    }
    Some(path)
}

/// A name an exporter made up (`onnx::Conv_193`, `/layer1/Transpose_output_0`, `val_4`, a
/// number), not a parameter's.
fn made_up_name(n: &str) -> bool {
    n.starts_with("onnx::") || n.starts_with('/') || n.starts_with("val_") || n.chars().all(|c| c.is_ascii_digit())
}

/// The module path the dynamo exporter records in a node's metadata:
/// `pkg.torch.onnx.name_scopes` = ['', 'features', …, 'features.1.0.block.3', 'linear'] →
/// `features.1.0.block.3` (the last scope is the call, the one before it the module).
fn name_scopes_module(node: &NodeProto) -> Option<String> {
    let v = node.metadata_props.iter().find(|p| p.key() == "pkg.torch.onnx.name_scopes")?.value();
    let scopes: Vec<&str> = v.trim_start_matches('[').trim_end_matches(']').split(',').map(|s| s.trim().trim_matches('\'')).collect();
    let module = scopes.len().checked_sub(2).map(|i| scopes[i])?;
    (!module.is_empty() && module.chars().all(|ch| ch.is_alphanumeric() || ch == '.' || ch == '_')).then(|| module.to_string())
}

fn image(cx: &Cx<'_>, shape: Shape) -> Result<(u64, u64, u64), String> {
    match shape {
        Shape::Image { c, h, w } => Ok((c, h, w)),
        Shape::Vector { .. } => {
            Err(format!("input `{}` has shape {shape}: {} needs an (N, C, H, W) image", cx.input(0).unwrap_or("?"), cx.op))
        }
    }
}

// ---------------------------------------------------------------- one function per op

fn conv<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    // An explicit zero Pad before the conv is the conv's own padding.
    let extra = cx.input(0).and_then(|n| imp.pads.get(n)).copied();
    let (x, shape) = match extra {
        Some((v, s, _)) => (v, s),
        None => imp.data_at(cx, 0)?,
    };
    if cx.input(0).is_some_and(|i| imp.rank3.contains(i)) {
        return conv_1d(imp, cx, x, shape);
    }
    let (c, h, w) = image(cx, shape)?;
    let standardized = imp.standardized_weight(cx)?;
    let (weight, wd) = match &standardized {
        Some((name, dims, _)) => (name.as_str(), checked_dims(name, dims)?),
        None => cx.param(imp, 1, "weight")?,
    };
    let &[m, cg, kh, kw] = wd.as_slice() else {
        return Err(format!("the weight `{weight}` has shape {wd:?}: cnnc handles 2-D convolutions (a 4-D weight)"));
    };
    let group = cx.int("group", 1)?;
    if group < 1 || group as u64 > m || m % group as u64 != 0 {
        return Err(format!("attribute `group` = {group} is out of range: it must divide the {m} output channels"));
    }
    let groups = group as u64;
    if cg * groups != c {
        return Err(format!("the input has {c} channels but the weight `{weight}` {wd:?} with group {groups} expects {}", cg * groups));
    }
    if let Some(k) = cx.ints("kernel_shape")? {
        if k != [kh as i64, kw as i64] {
            return Err(format!("attribute `kernel_shape` = {k:?} disagrees with the weight `{weight}` {wd:?}"));
        }
    }
    let stride = cx.pair("strides", Some(1))?;
    let dilation = cx.pair("dilations", Some(1))?;
    let mut pad = cx.pads([h, w], [kh, kw], stride, dilation)?;
    if let Some((_, _, more)) = extra {
        for a in 0..2 {
            pad[a].begin += more[a].begin;
            pad[a].end += more[a].end;
        }
    }
    let bias = match cx.input(2) {
        None => None,
        Some(_) => {
            let (b, bd) = cx.param(imp, 2, "bias")?;
            if bd.iter().product::<u64>() != m {
                return Err(format!("the bias `{b}` has shape {bd:?}, expected [{m}]"));
            }
            Some(b.to_string())
        }
    };
    let size = |a: usize, n: u64| {
        ir::conv_out_size(n, [kh, kw][a], stride[a], pad[a], dilation[a])
            .ok_or_else(|| format!("the output would be empty: input {shape}, kernel {kh}×{kw}, dilation {dilation:?}, padding {pad:?}"))
    };
    let (oh, ow) = (size(0, h)?, size(1, w)?);
    let op = Op::Conv(Conv { in_channels: c, out_channels: m, kernel: [kh, kw], stride, pad, dilation, groups, bias: bias.is_some() });
    let mut params = imp.param_names(cx, weight, bias);
    params.standardized = standardized.map(|(_, _, s)| s);
    imp.push(cx, op, x, Shape::Image { c: m, h: oh, w: ow }, Some(params), cx.output()?)?;
    Ok(())
}

/// A 1-D `Conv` of a 3-D view (N, A, B), held as the image (A, 1, B): the 2-D conv of
/// kernel 1 × k over it, its weight [out, A/g, k] named with that shape in the plan.
fn conv_1d<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, x: ValueId, shape: Shape) -> Result<(), String> {
    let (c, _, w) = shape.chw();
    let (weight, wd) = cx.param(imp, 1, "weight")?;
    let &[m, cg, k] = wd.as_slice() else {
        return Err(format!("the weight `{weight}` has shape {wd:?}: a 1-D conv of a 3-D value needs a 3-D weight"));
    };
    let group = cx.int("group", 1)?;
    if group < 1 || group as u64 > m || m % group as u64 != 0 || cg * group as u64 != c {
        return Err(format!("the input has {c} channels but the weight `{weight}` {wd:?} with group {group} does not fit them"));
    }
    let one = |name: &str, default: u64| -> Result<u64, String> {
        match cx.ints(name)? {
            None => Ok(default),
            Some(&[v]) if (1..=MAX_DIM as i64).contains(&v) => Ok(v as u64),
            Some(v) => Err(format!("attribute `{name}` = {v:?} must be one value from 1 to {MAX_DIM} (a 1-D conv)")),
        }
    };
    let (stride, dilation) = (one("strides", 1)?, one("dilations", 1)?);
    if cx.string("auto_pad", "NOTSET")? != "NOTSET" {
        return Err("attribute `auto_pad` is not supported on a 1-D conv: give `pads`".into());
    }
    let pad = match cx.ints("pads")? {
        None => Pad::default(),
        Some(&[b, e]) if (0..=MAX_DIM as i64).contains(&b) && (0..=MAX_DIM as i64).contains(&e) => Pad { begin: b as u64, end: e as u64 },
        Some(v) => Err(format!("attribute `pads` = {v:?} must have 2 values from 0 to {MAX_DIM} (a 1-D conv)"))?,
    };
    if cx.input(2).is_some() {
        let (b, bd) = cx.param(imp, 2, "bias")?;
        if bd.iter().product::<u64>() != m {
            return Err(format!("the bias `{b}` has shape {bd:?}, expected [{m}]"));
        }
    }
    let bias = cx.input(2).map(str::to_string);
    let ow =
        ir::conv_out_size(w, k, stride, pad, dilation).ok_or_else(|| format!("the output would be empty: input {shape}, kernel {k}"))?;
    let op = Op::Conv(Conv {
        in_channels: c,
        out_channels: m,
        kernel: [1, k],
        stride: [1, stride],
        pad: [Pad::default(), pad],
        dilation: [1, dilation],
        groups: group as u64,
        bias: bias.is_some(),
    });
    let mut params = imp.param_names(cx, weight, bias);
    params.shape = Some(wd.clone());
    let out = cx.output()?;
    imp.push(cx, op, x, Shape::Image { c: m, h: 1, w: ow }, Some(params), out)?;
    imp.rank3.insert(out);
    Ok(())
}

/// `ConvTranspose`: zeros between the input's positions (stride s: `Op::Dilate`), then a
/// stride-1 conv with padding d(k − 1) − p at the start and d(k − 1) − p + output_padding
/// at the end — the same output, the same weights read in another order. Its plan entry
/// keeps the stored weight's shape [C_in, C_out/g, k_h, k_w].
fn conv_transpose<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let (c, h, w) = image(cx, shape)?;
    let (weight, wd) = cx.param(imp, 1, "weight")?;
    let &[ci, mg, kh, kw] = wd.as_slice() else {
        return Err(format!("the weight `{weight}` has shape {wd:?}: cnnc handles 2-D transposed convolutions (a 4-D weight)"));
    };
    let group = cx.int("group", 1)?;
    if group < 1 || c % group as u64 != 0 {
        return Err(format!("attribute `group` = {group} is out of range: it must divide the {c} input channels"));
    }
    let groups = group as u64;
    if ci != c {
        return Err(format!("the input has {c} channels but the weight `{weight}` {wd:?} reads {ci}"));
    }
    let m = mg.checked_mul(groups).filter(|&m| m <= MAX_DIM).ok_or("too many output channels")?;
    if let Some(k) = cx.ints("kernel_shape")? {
        if k != [kh as i64, kw as i64] {
            return Err(format!("attribute `kernel_shape` = {k:?} disagrees with the weight `{weight}` {wd:?}"));
        }
    }
    if cx.string("auto_pad", "NOTSET")? != "NOTSET" {
        return Err("attribute `auto_pad` of a ConvTranspose is not supported: give `pads`".into());
    }
    if cx.attr("output_shape").is_some() {
        return Err("attribute `output_shape` of a ConvTranspose is not supported: give `pads` and `output_padding`".into());
    }
    let stride = cx.pair("strides", Some(1))?;
    let dilation = cx.pair("dilations", Some(1))?;
    let pad = cx.pads([h, w], [kh, kw], stride, dilation)?;
    let extra = match cx.ints("output_padding")? {
        None => [0, 0],
        Some(&[a, b]) if (0..=MAX_DIM as i64).contains(&a) && (0..=MAX_DIM as i64).contains(&b) => [a as u64, b as u64],
        Some(v) => return Err(format!("attribute `output_padding` = {v:?} must be two values from 0 to {MAX_DIM}")),
    };
    let mut conv_pad = [Pad::default(); 2];
    for a in 0..2 {
        let span = dilation[a] * ([kh, kw][a] - 1);
        if pad[a].begin > span || pad[a].end > span {
            return Err(format!("attribute `pads` = {pad:?} is larger than the kernel's span {span}: the output would be cropped"));
        }
        if extra[a] >= stride[a].max(dilation[a]) {
            return Err(format!("attribute `output_padding` = {extra:?} must be smaller than the stride or the dilation"));
        }
        conv_pad[a] = Pad { begin: span - pad[a].begin, end: span - pad[a].end + extra[a] };
    }
    let bias = match cx.input(2) {
        None => None,
        Some(_) => {
            let (b, bd) = cx.param(imp, 2, "bias")?;
            if bd.iter().product::<u64>() != m {
                return Err(format!("the bias `{b}` has shape {bd:?}, expected [{m}]"));
            }
            Some(b.to_string())
        }
    };
    let (dh, dw) = ((h - 1) * stride[0] + 1, (w - 1) * stride[1] + 1);
    let input = if stride == [1, 1] { x } else { imp.node(cx, Op::Dilate { stride }, vec![x], Shape::Image { c, h: dh, w: dw }, None)? };
    let size = |a: usize, n: u64| {
        ir::conv_out_size(n, [kh, kw][a], 1, conv_pad[a], dilation[a])
            .ok_or_else(|| format!("the output would be empty: input {shape}, kernel {kh}×{kw}, padding {pad:?}"))
    };
    let (oh, ow) = (size(0, dh)?, size(1, dw)?);
    let op = Op::Conv(Conv {
        in_channels: c,
        out_channels: m,
        kernel: [kh, kw],
        stride: [1, 1],
        pad: conv_pad,
        dilation,
        groups,
        bias: bias.is_some(),
    });
    let mut params = imp.param_names(cx, weight, bias);
    params.shape = Some(wd.clone());
    params.transposed = true;
    imp.push(cx, op, input, Shape::Image { c: m, h: oh, w: ow }, Some(params), cx.output()?)?;
    Ok(())
}

fn vector_input(cx: &Cx<'_>, shape: Shape) -> Result<u64, String> {
    match shape {
        Shape::Vector { n } => Ok(n),
        Shape::Image { .. } => {
            Err(format!("input `{}` has shape {shape}: {} needs a 2-D (N, F) input (flatten it first)", cx.input(0).unwrap_or("?"), cx.op))
        }
    }
}

fn gemm<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let n = vector_input(cx, shape)?;
    if cx.int("transA", 0)? != 0 {
        return Err("attribute `transA` must be 0: the input is (N, F)".into());
    }
    let trans_b = cx.flag("transB")?;
    for a in ["alpha", "beta"] {
        let v = cx.float(a, 1.0)?;
        if v != 1.0 {
            return Err(format!("attribute `{a}` = {v} is not supported: cnnc plans Gemm with alpha = beta = 1"));
        }
    }
    let (weight, wd) = cx.param(imp, 1, "weight")?;
    let &[r, s] = wd.as_slice() else { return Err(format!("the weight `{weight}` has shape {wd:?}, expected 2-D")) };
    let (inp, out) = if trans_b { (s, r) } else { (r, s) };
    if inp != n {
        return Err(format!("the input has {n} features but the weight `{weight}` {wd:?} (transB = {}) reads {inp}", trans_b as u8));
    }
    let bias = linear_bias(imp, cx, cx.input(2), out)?;
    let op = Op::Linear(Linear { in_features: n, out_features: out, bias: bias.is_some() });
    let params = Some(imp.param_names(cx, weight, bias));
    imp.push(cx, op, x, Shape::Vector { n: out }, params, cx.output()?)?;
    Ok(())
}

fn linear_bias(imp: &Importer<'_>, cx: &Cx<'_>, name: Option<&str>, out: u64) -> Result<Option<String>, String> {
    let Some(b) = name else { return Ok(None) };
    let p = imp.params.get(b).ok_or_else(|| format!("the bias `{b}` has no initializer and no declared shape"))?;
    let numel = p.dims.iter().try_fold(1i64, |a, &d| a.checked_mul(d));
    if numel != Some(out as i64) || p.dims.iter().any(|&d| d < 1) {
        return Err(format!("the bias `{b}` has shape {:?}, expected [{out}] ({} {})", p.dims, cx.op, cx.name));
    }
    Ok(Some(b.to_string()))
}

fn matmul<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let views = (cx.input(0).and_then(|n| imp.attention.get(n)).copied(), cx.input(1).and_then(|n| imp.attention.get(n)).copied());
    if let (Some((x, shape, AttView::Values)), Some((a, ashape, AttView::Column))) = views {
        let (c, h, w) = shape.chw();
        if ashape != (Shape::Image { c: 1, h, w }) {
            return Err(format!("the attention weights {ashape} do not match the values {shape}"));
        }
        let out = Shape::Image { c, h: 1, w: 1 };
        let id = imp.node(cx, Op::AttentionPool, vec![x, a], out, None)?;
        imp.attention.insert(cx.output()?, (id, out, AttView::Pooled));
        return Ok(());
    }
    if views.0.is_some() || views.1.is_some() {
        return Err(
            "a MatMul of global-context attention views: cnnc takes x (N, 1, C, H·W) times the softmax column (N, 1, H·W, 1)".into()
        );
    }
    let (x, shape) = imp.data_at(cx, 0)?;
    if cx.input(0).is_some_and(|i| imp.channels_last.contains(i)) {
        return channels_last_linear(imp, cx, x, shape);
    }
    let n = vector_input(cx, shape)?;
    let (weight, wd) = cx.param(imp, 1, "weight")?;
    let &[inp, out] = wd.as_slice() else { return Err(format!("the weight `{weight}` has shape {wd:?}, expected 2-D [in, out]")) };
    if inp != n {
        return Err(format!("the input has {n} features but the weight `{weight}` {wd:?} reads {inp}"));
    }
    let fused = imp.matmul_bias.get(&cx.index).copied();
    let bias = linear_bias(imp, cx, fused.map(|(b, _)| b), out)?;
    let op = Op::Linear(Linear { in_features: n, out_features: out, bias: bias.is_some() });
    let params = Some(ParamNames { weight: weight.to_string(), bias, shape: None, standardized: None, transposed: false });
    let id = imp.push(cx, op, x, Shape::Vector { n: out }, params, cx.output()?)?;
    if let Some((_, add_out)) = fused {
        imp.values.insert(add_out, (id, Shape::Vector { n: out }));
    }
    Ok(())
}

/// A MatMul of a channels-last (N, H, W, C) value by a [C, C'] weight: a Linear applied
/// at each position (ConvNeXt's), a 1×1 conv in the IR. Its plan entry keeps the Linear's
/// weight shape [C', C], named after the node's scope when the exporter made the name up
/// (the TorchScript exporter stores the transposed weight as `onnx::MatMul_…`).
fn channels_last_linear<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, x: ValueId, shape: Shape) -> Result<(), String> {
    let (c, h, w) = image(cx, shape)?;
    let (weight, wd) = cx.param(imp, 1, "weight")?;
    let &[inp, out] = wd.as_slice() else { return Err(format!("the weight `{weight}` has shape {wd:?}, expected 2-D [in, out]")) };
    if inp != c {
        return Err(format!("the input has {c} channels (its last axis) but the weight `{weight}` {wd:?} reads {inp}"));
    }
    let fused = imp.matmul_bias.get(&cx.index).copied();
    let bias = linear_bias(imp, cx, fused.map(|(b, _)| b), out)?;
    let op = Op::Conv(Conv {
        in_channels: c,
        out_channels: out,
        kernel: [1, 1],
        stride: [1, 1],
        pad: [Pad::default(); 2],
        dilation: [1, 1],
        groups: 1,
        bias: bias.is_some(),
    });
    // The exporters store the transposed weight under a name of their own (`onnx::MatMul_…`,
    // `val_…`): the module is the node's scope (TorchScript's node name, or the dynamo
    // exporter's `pkg.torch.onnx.name_scopes`).
    let module = scope_module(&cx.name).or_else(|| name_scopes_module(cx.node));
    // Unfolded, the MatMul reads Transpose(the Linear's own weight): that name.
    let source = imp.source_name(weight);
    let weight = if made_up_name(source) { weight } else { source };
    let mut params = match module {
        Some(m) if made_up_name(weight) => {
            imp.renamed.push(format!("`{weight}` → `{m}.weight`"));
            ParamNames {
                weight: format!("{m}.weight"),
                bias: bias.map(|_| format!("{m}.bias")),
                shape: None,
                standardized: None,
                transposed: false,
            }
        }
        _ => ParamNames { weight: weight.to_string(), bias, shape: None, standardized: None, transposed: false },
    };
    params.shape = Some(vec![out, c]);
    let out_shape = Shape::Image { c: out, h, w };
    let id = imp.push(cx, op, x, out_shape, Some(params), cx.output()?)?;
    if let Some((_, add_out)) = fused {
        imp.values.insert(add_out, (id, out_shape));
        imp.channels_last.insert(add_out);
    }
    Ok(())
}

fn pool<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, kind: PoolKind) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let (c, h, w) = image(cx, shape)?;
    let kernel = cx.pair("kernel_shape", None)?;
    let stride = cx.pair("strides", Some(1))?;
    if cx.pair("dilations", Some(1))? != [1, 1] {
        return Err("attribute `dilations` must be [1, 1]: dilated pooling is not supported".into());
    }
    let pad = cx.pads([h, w], kernel, stride, [1, 1])?;
    for a in 0..2 {
        if pad[a].begin >= kernel[a] || pad[a].end >= kernel[a] {
            return Err(format!("attribute `pads` = {pad:?} is out of range: each pad must be smaller than the kernel {kernel:?}"));
        }
    }
    let ceil_mode = cx.flag("ceil_mode")?;
    let count_include_pad = if kind == PoolKind::Avg { cx.flag("count_include_pad")? } else { false };
    let size = |a: usize, n: u64| {
        ir::pool_out_size(n, kernel[a], stride[a], pad[a], ceil_mode)
            .ok_or_else(|| format!("the output would be empty: input {shape}, kernel {kernel:?}"))
    };
    let (oh, ow) = (size(0, h)?, size(1, w)?);
    let op = Op::Pool(Pool { kind, kernel, stride, pad, ceil_mode, count_include_pad });
    imp.push(cx, op, x, Shape::Image { c, h: oh, w: ow }, None, cx.output()?)?;
    Ok(())
}

fn max_pool<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    if cx.node.output.get(1).is_some_and(|o| !o.is_empty()) {
        return Err("the Indices output of MaxPool is not supported".into());
    }
    pool(imp, cx, PoolKind::Max)
}

fn average_pool<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    pool(imp, cx, PoolKind::Avg)
}

fn global_pool<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, kind: PoolKind, keep_dims: bool) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let (c, _, _) = image(cx, shape)?;
    let out = cx.output()?;
    let id = imp.push(cx, Op::GlobalPool(kind), x, Shape::Image { c, h: 1, w: 1 }, None, out)?;
    if !keep_dims {
        imp.push(cx, Op::Flatten, id, Shape::Vector { n: c }, None, out)?;
    }
    Ok(())
}

fn global_average_pool<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    global_pool(imp, cx, PoolKind::Avg, true)
}

fn global_max_pool<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    global_pool(imp, cx, PoolKind::Max, true)
}

/// A reduction over the two spatial axes of an image is a global pooling.
fn reduce<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, kind: PoolKind) -> Result<(), String> {
    let axes: Vec<i64> = match (cx.ints("axes")?, cx.input(1)) {
        (Some(a), _) => a.to_vec(),
        (None, Some(name)) => {
            imp.params.get(name).and_then(Param::ints).ok_or_else(|| format!("the axes `{name}` must be a constant int64 tensor"))?
        }
        (None, None) => return Err(format!("{} over all axes is not supported: give axes [2, 3]", cx.op)),
    };
    let mut norm: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
    norm.sort_unstable();
    if norm != [2, 3] {
        return Err(format!("axes {axes:?} are not supported: only the spatial axes [2, 3] (a global pooling)"));
    }
    let keep = match cx.int("keepdims", 1)? {
        0 => false,
        1 => true,
        v => return Err(format!("attribute `keepdims` must be 0 or 1, got {v}")),
    };
    global_pool(imp, cx, kind, keep)
}

fn reduce_mean<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    reduce(imp, cx, PoolKind::Avg)
}

fn reduce_max<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    reduce(imp, cx, PoolKind::Max)
}

fn flatten<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let rank = if matches!(shape, Shape::Image { .. }) { 4 } else { 2 };
    let axis = cx.int("axis", 1)?;
    if axis != 1 && axis != 1 - rank {
        return Err(format!("attribute `axis` = {axis} is not supported: only axis 1 (keep the batch axis)"));
    }
    imp.push(cx, Op::Flatten, x, Shape::Vector { n: shape.numel() }, None, cx.output()?)?;
    Ok(())
}

/// A reshape of data: to (batch, features) — the target is [b, F] with F the sample
/// size, or [b, -1] with b = 0 (copy the batch) or 1 (an export at batch size 1) — or one step of a
/// channel shuffle: (N, C, H, W) → (N, g, C/g, H, W), and back after the transpose.
fn reshape<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let target_name = cx.input(1).ok_or("the shape input is missing")?;
    let target = imp
        .params
        .get(target_name)
        .and_then(Param::ints)
        .ok_or_else(|| format!("the shape `{target_name}` must be a constant int64 tensor (it did not fold to one)"))?;
    if let Some(g) = cx.input(0).and_then(|n| imp.grouped.get(n)).copied() {
        let Shape::Image { c, h, w } = g.shape else { unreachable!("only images are grouped") };
        let back = matches!(*target.as_slice(), [_, cc, hh, ww] if (cc == c as i64 || cc == -1) && hh == h as i64 && ww == w as i64);
        if !g.transposed || !back {
            return Err(format!("a reshape of the 5-D view to {target:?} is not a channel shuffle: expected [N, {c}, {h}, {w}] after Transpose [0, 2, 1, 3, 4]"));
        }
        imp.push(cx, Op::Shuffle { groups: g.groups }, g.base, g.shape, None, cx.output()?)?;
        return Ok(());
    }
    if let Some((x, shape, view)) = cx.input(0).and_then(|n| imp.attention.get(n)).copied() {
        let (c, _, _) = shape.chw();
        if view != AttView::Pooled || !matches!(*target.as_slice(), [_, cc, 1, 1] if cc == c as i64 || cc == -1) {
            return Err(format!(
                "a reshape of a global-context attention view to {target:?}: cnnc takes its pooled context back to [N, {c}, 1, 1]"
            ));
        }
        imp.values.insert(cx.output()?, (x, shape));
        return Ok(());
    }
    if let Some((x, shape, g, epsilon)) = cx.input(0).and_then(|n| imp.group_norm.get(n)).copied() {
        // The Reshape back after a GroupNorm's InstanceNormalization.
        let Shape::Image { c, h, w } = shape else { unreachable!("only images are viewed in groups") };
        if !matches!(*target.as_slice(), [_, cc, hh, ww] if cc == c as i64 && hh == h as i64 && ww == w as i64) {
            return Err(format!("a reshape of a GroupNorm's groups to {target:?}: expected the image's shape [N, {c}, {h}, {w}] back"));
        }
        let bn = BatchNorm {
            channels: c,
            epsilon,
            training: true,
            groups: Some(g),
            per_position: false,
            scale: String::new(),
            shift: String::new(),
            affine: vec![c],
        };
        let out = cx.output()?;
        imp.push(cx, Op::BatchNorm(bn), x, shape, None, out)?;
        imp.norm_affine.insert(out, (imp.nodes.len() - 1, false));
        return Ok(());
    }
    let (x, shape) = imp.data_at(cx, 0)?;
    if let (Shape::Image { c, h: 1, w: 1 }, &[_, g, r, rest]) = (shape, target.as_slice()) {
        // (N, groups, radix, −1): split attention's view of its pooled logits.
        if g > 0 && r > 1 && (c as i64) % (g * r) == 0 && (rest == -1 || rest * g * r == c as i64) {
            imp.radix_view.insert(cx.output()?, (x, shape, g as u64, r as u64, false));
            return Ok(());
        }
    }
    // Split attention's weights reshaped to (N, C) on their way back to (N, C, 1, 1): the
    // same numbers, kept as the image.
    let radix_out = x.0 > 0 && matches!(imp.nodes[x.0 - 1].op, Op::RadixSoftmax { .. });
    if let (true, Shape::Image { c, h: 1, w: 1 }, &[_, f]) = (radix_out, shape, target.as_slice()) {
        if f == -1 || f == c as i64 {
            return identity(imp, cx);
        }
    }
    if let (Shape::Image { c, h: 1, w: 1 }, &[_, -1 | 0, 1, 1]) = (shape, target.as_slice()) {
        let _ = c;
        return identity(imp, cx);
    }
    if let (Shape::Image { c, h, w }, &[_, g, rest]) = (shape, target.as_slice()) {
        // (N, G, −1): the view a GroupNorm normalizes.
        if g > 0 && c as i64 % g == 0 && (rest == -1 || rest == (c as i64 / g) * (h * w) as i64) {
            imp.group_view.insert(cx.output()?, (x, shape, g as u64));
            return Ok(());
        }
    }
    if let (Shape::Image { c, h, w }, &[_, g, n, hh, ww]) = (shape, target.as_slice()) {
        if g > 0 && (n == -1 || g * n == c as i64) && c as i64 % g == 0 && hh == h as i64 && ww == w as i64 {
            imp.grouped.insert(cx.output()?, Grouped { base: x, shape, groups: g as u64, transposed: false });
            return Ok(());
        }
    }
    if let (Shape::Image { .. }, [-1]) = (shape, target.as_slice()) {
        // One flat axis, the batch's too: only a Gather back to the image's own order
        // ([`gather`]) may read it.
        imp.flat_view.insert(cx.output()?, (x, shape));
        return Ok(());
    }
    let n = shape.numel() as i64;
    let ok = match *target.as_slice() {
        [_, f] if f == n => true,
        // The batch axis copied (0) or 1 (an export at batch size 1), the rest inferred:
        // another first size would move elements between samples ([5, -1] of 256).
        [0 | 1, -1] => true,
        _ => false,
    };
    if ok {
        imp.push(cx, Op::Flatten, x, Shape::Vector { n: shape.numel() }, None, cx.output()?)?;
        return Ok(());
    }
    if let (Shape::Image { c, h, w }, &[_, cc, hh, ww]) = (shape, target.as_slice()) {
        if [cc, hh, ww] == [c as i64, h as i64, w as i64] {
            return identity(imp, cx);
        }
    }
    Err(format!("a reshape of {shape} to {target:?} is not supported: only to 2-D (batch, {n}), or a channel shuffle"))
}

/// A Gather of data: only of a flattened image (Reshape to [-1], [`reshape`]) along its one
/// axis, by constant indices shaped [1, C, H, W] that read every element in its own
/// order — the identity. The dynamo exporter writes a permute of ConvNeXt's pooled
/// (1, 768, 1, 1) map so (`as_strided`); any other order would move elements between
/// channels and positions, which cnnc does not take.
fn gather<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let name = cx.input(0).ok_or("input 0 is missing")?;
    let Some(&(x, shape)) = imp.flat_view.get(name) else {
        return Err(format!(
            "a Gather of the data value `{name}` is taken only from a flattened image (Reshape to [-1]) read back in order"
        ));
    };
    if cx.int("axis", 0)? != 0 {
        return Err("a Gather of a flattened image must be along its one axis (axis 0)".into());
    }
    let idx_name = cx.input(1).ok_or("the indices input is missing")?;
    let idx = imp.params.get(idx_name).ok_or_else(|| format!("the indices `{idx_name}` must be a constant"))?;
    let (c, h, w) = shape.chw();
    if idx.dims != [1, c as i64, h as i64, w as i64] {
        return Err(format!("the indices `{idx_name}` have dims {:?}: expected the image's own [1, {c}, {h}, {w}]", idx.dims));
    }
    let values = idx.ints().ok_or_else(|| {
        format!("the values of the indices `{idx_name}` are not in the file (an integer tensor whose payload was dropped)")
    })?;
    if values.len() as u64 != c * h * w || values.iter().enumerate().any(|(i, &v)| v != i as i64) {
        return Err(format!("the indices `{idx_name}` do not read the image in its own order: cnnc takes only that (the identity)"));
    }
    imp.values.insert(cx.output()?, (x, shape));
    Ok(())
}

/// The transpose of a channel shuffle: (N, g, C/g, H, W) with perm [0, 2, 1, 3, 4].
fn transpose<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let g = cx.input(0).and_then(|n| imp.grouped.get(n)).copied();
    let perm = cx.ints("perm")?;
    if let Some((x, shape, g, r, false)) = cx.input(0).and_then(|n| imp.radix_view.get(n)).copied() {
        if perm != Some(&[0, 2, 1, 3]) {
            return Err(format!(
                "a transpose of split attention's (N, groups, radix, −1) view with perm {perm:?}: cnnc takes [0, 2, 1, 3]"
            ));
        }
        imp.radix_view.insert(cx.output()?, (x, shape, g, r, true));
        return Ok(());
    }
    if cx.input(0).is_some_and(|i| imp.rank3.contains(i)) {
        let (x, shape) = imp.data_at(cx, 0)?;
        let (a, _, b) = shape.chw();
        if perm != Some(&[0, 2, 1]) {
            return Err(format!("a transpose of a 3-D view with perm {perm:?}: cnnc takes [0, 2, 1]"));
        }
        let out = cx.output()?;
        imp.push(cx, Op::SwapChannelsWidth, x, Shape::Image { c: b, h: 1, w: a }, None, out)?;
        imp.rank3.insert(out);
        return Ok(());
    }
    match g {
        Some(g) if perm == Some(&[0, 2, 1, 3, 4]) && !g.transposed => {
            imp.grouped.insert(cx.output()?, Grouped { transposed: true, ..g });
            Ok(())
        }
        _ if perm == Some(&[0, 2, 3, 1]) && !cx.input(0).is_some_and(|i| imp.channels_last.contains(i)) => {
            // The image seen channels-last: the same IR value, marked.
            let v = imp.data_at(cx, 0)?;
            image(cx, v.1)?;
            let out = cx.output()?;
            imp.values.insert(out, v);
            imp.channels_last.insert(out);
            Ok(())
        }
        _ if perm == Some(&[0, 3, 1, 2]) && cx.input(0).is_some_and(|i| imp.channels_last.contains(i)) => {
            // Back to (N, C, H, W).
            let v = imp.data_at(cx, 0)?;
            imp.values.insert(cx.output()?, v);
            Ok(())
        }
        _ => {
            imp.data_at(cx, 0)?;
            Err(format!(
                "a transpose with perm {perm:?} is not supported: only the channel shuffle's [0, 2, 1, 3, 4], and an image to channels-last \
                 ([0, 2, 3, 1]) and back ([0, 3, 1, 2])"
            ))
        }
    }
}

/// The axes of a Squeeze or Unsqueeze: attribute `axes` (opset < 13) or input 1.
fn squeeze_axes(imp: &Importer<'_>, cx: &Cx<'_>) -> Result<Vec<i64>, String> {
    match (cx.ints("axes")?, cx.input(1)) {
        (Some(a), _) => Ok(a.to_vec()),
        (None, Some(name)) => {
            imp.params.get(name).and_then(Param::ints).ok_or_else(|| format!("the axes `{name}` must be a constant int64 tensor"))
        }
        (None, None) => Err(format!("{} without axes is not supported on data", cx.op)),
    }
}

/// `Squeeze` of data: a pooled vector (N, C, 1, 1) to (N, C, 1) (axis 3), the 3-D view
/// efficient channel attention convolves across its channels.
fn squeeze<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let axes = squeeze_axes(imp, cx)?;
    match (shape, axes.as_slice()) {
        (Shape::Image { h: 1, w: 1, .. }, [3] | [-1]) if !cx.input(0).is_some_and(|i| imp.rank3.contains(i)) => {
            let out = cx.output()?;
            imp.values.insert(out, (x, shape));
            imp.rank3.insert(out);
            Ok(())
        }
        _ => Err(format!("a Squeeze of {shape} on axes {axes:?}: cnnc takes a pooled vector (C, 1, 1) squeezed on its last axis")),
    }
}

/// `Unsqueeze` of a 3-D view (N, C, 1) back to the image (N, C, 1, 1) (axis 3).
fn unsqueeze<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let axes = squeeze_axes(imp, cx)?;
    // Global-context attention: x viewed (N, C, H·W) → (N, 1, C, H·W); the softmax of
    // the mask (N, 1, H·W) → (N, 1, H·W, 1).
    if let Some((x, shape, g)) = cx.input(0).and_then(|n| imp.group_view.get(n)).copied() {
        if g == shape.chw().0 && axes == [1] {
            imp.attention.insert(cx.output()?, (x, shape, AttView::Values));
            return Ok(());
        }
    }
    if let Some((a, shape, AttView::Weights)) = cx.input(0).and_then(|n| imp.attention.get(n)).copied() {
        if matches!(axes.as_slice(), [3] | [-1]) {
            imp.attention.insert(cx.output()?, (a, shape, AttView::Column));
            return Ok(());
        }
    }
    let (x, shape) = imp.data_at(cx, 0)?;
    match (shape, axes.as_slice()) {
        (Shape::Image { h: 1, w: 1, .. }, [3] | [-1]) if cx.input(0).is_some_and(|i| imp.rank3.contains(i)) => {
            imp.values.insert(cx.output()?, (x, shape));
            Ok(())
        }
        _ => Err(format!("an Unsqueeze of {shape} on axes {axes:?}: cnnc takes a 3-D view (N, C, 1) back to (N, C, 1, 1)")),
    }
}

fn identity<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let name = cx.input(0).ok_or("input 0 is missing")?;
    let out = cx.output()?;
    if let Some(p) = imp.pending.get(name).cloned() {
        imp.pending.insert(out, p);
    } else if let Some(p) = imp.pads.get(name).copied() {
        imp.pads.insert(out, p);
    } else {
        let v = imp.data(cx, name)?;
        imp.values.insert(out, v);
    }
    Ok(())
}

/// A Softmax or LogSoftmax at the end of the network: post-processing, no parameters.
fn trailing<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    // Split attention: the softmax over the radix of the transposed view (axis 1).
    if let Some((x, shape, g, r, transposed)) = cx.input(0).and_then(|n| imp.radix_view.get(n)).copied() {
        if cx.op != "Softmax" || !transposed || cx.int("axis", -1)? != 1 {
            return Err(format!(
                "a {} of split attention's view: cnnc takes Softmax over the radix (axis 1 after Transpose [0, 2, 1, 3])",
                cx.op
            ));
        }
        if r != 2 {
            return Err(format!("a softmax across a radix of {r}: cnnc plans radix 2 (a sigmoid of the difference of two logits)"));
        }
        imp.push(cx, Op::RadixSoftmax { radix: r, groups: g }, x, shape, None, cx.output()?)?;
        return Ok(());
    }
    // Global-context attention: the softmax over the positions of a 1-channel map viewed
    // (N, 1, H·W).
    if let Some((x, shape, 1)) = cx.input(0).and_then(|n| imp.group_view.get(n)).copied() {
        if cx.op == "Softmax" && shape.chw().0 == 1 && matches!(cx.int("axis", -1)?, 2 | -1) {
            let id = imp.node(cx, Op::SoftmaxPositions, vec![x], shape, None)?;
            imp.attention.insert(cx.output()?, (id, shape, AttView::Weights));
            return Ok(());
        }
    }
    if !imp.outputs.contains(cx.output()?) {
        return Err(format!("{} is supported only at the end of the network (its output a graph output)", cx.op));
    }
    identity(imp, cx)
}

/// `Shape` of a data value: a constant, since every data shape is known (batch 1).
fn shape_of<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let name = cx.input(0).ok_or("input 0 is missing")?;
    let shape = if let Some(g) = imp.grouped.get(name) {
        let Shape::Image { c, h, w } = g.shape else { unreachable!("only images are grouped") };
        if g.transposed {
            vec![1, c / g.groups, g.groups, h, w]
        } else {
            vec![1, g.groups, c / g.groups, h, w]
        }
    } else if let Some((_, s, pad)) = imp.pads.get(name) {
        let (c, h, w) = s.chw();
        vec![1, c, h + pad[0].total(), w + pad[1].total()]
    } else {
        let (_, s) = match imp.pending.get(name) {
            Some(p) => (p.base, p.shape),
            None => imp.data(cx, name)?,
        };
        std::iter::once(1).chain(s.dims()).collect()
    };
    let t = consts::shape_op(cx.node, &shape)?;
    let dims = t.dims.iter().map(|&d| d as i64).collect();
    imp.params.insert(cx.output()?.to_string(), Param { dims, value: Some(t) });
    Ok(())
}

fn constant<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let t = consts::eval(cx.node, &[])?;
    let dims = t.dims.iter().map(|&d| d as i64).collect();
    imp.params.insert(cx.output()?.to_string(), Param { dims, value: Some(t) });
    Ok(())
}

/// `Add`/`Sum` of data values of one shape: a join. `Add` of a data value and a scalar
/// constant: part of an element-wise function. Data + a non-scalar constant other than a
/// MatMul's bias is refused (at initialization a plan sets biases to zero, but cnnc
/// cannot tell a constant offset from a bias).
fn add<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    if imp.fused_adds.contains(&cx.index) {
        return Ok(());
    }
    if imp.absorb_affine(cx, true)? {
        return Ok(());
    }
    if cx.node.input.len() == 2 {
        if let Some(p) = arith(imp, cx, |a, b| Expr::Add(Box::new(a), Box::new(b)))? {
            return imp.pend(cx, p);
        }
    }
    let names: Vec<&'m str> = (0..cx.node.input.len()).filter_map(|i| cx.input(i)).collect();
    if names.len() < 2 {
        return identity(imp, cx);
    }
    let mut inputs = Vec::new();
    let mut shape = None;
    for n in &names {
        if !imp.is_data(n) {
            return Err(format!("input `{n}` is a constant tensor: cnnc adds constants only as the bias of a MatMul, or as a scalar"));
        }
        let (v, s) = imp.data(cx, n)?;
        match shape {
            None => shape = Some(s),
            // An image plus a per-channel (C, 1, 1) value of the same channels, broadcast
            // over the positions (global-context attention's channel add).
            Some(first @ Shape::Image { c, .. }) if names.len() == 2 && first != s && s == (Shape::Image { c, h: 1, w: 1 }) => {
                inputs.push(v);
                imp.push_n(cx, Op::AddBroadcast, inputs, first, None, cx.output()?)?;
                return Ok(());
            }
            Some(first @ Shape::Image { h: 1, w: 1, c })
                if names.len() == 2 && first != s && s.chw().0 == c && matches!(s, Shape::Image { .. }) =>
            {
                imp.push_n(cx, Op::AddBroadcast, vec![v, inputs[0]], s, None, cx.output()?)?;
                return Ok(());
            }
            Some(first) if first != s => {
                return Err(format!("an {} of mismatched shapes {first} and {s}: cnnc joins values of one shape", cx.op));
            }
            _ => {}
        }
        inputs.push(v);
    }
    imp.push_n(cx, Op::Add, inputs, shape.expect("two inputs"), None, cx.output()?)?;
    Ok(())
}

/// Element-wise arithmetic of the two inputs, when it stays an element-wise function of
/// one data value: data ∘ scalar constant, or two functions of the same value.
fn arith<'m>(imp: &Importer<'m>, cx: &Cx<'m>, f: impl Fn(Expr, Expr) -> Expr) -> Result<Option<Pending>, String> {
    let (a, b) = (imp.expr(cx, 0), imp.expr(cx, 1));
    let scalar = |i: usize| imp.constant(cx, i).and_then(Param::scalar);
    Ok(match (a, b) {
        (Some(a), Some(b)) if a.base == b.base => Some(Pending { expr: f(a.expr, b.expr), ..a }),
        (Some(a), None) => scalar(1).map(|c| Pending { expr: f(a.expr, Expr::Const(c)), ..a }),
        (None, Some(b)) => scalar(0).map(|c| Pending { expr: f(Expr::Const(c), b.expr), ..b }),
        _ => None,
    })
}

fn sub<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    match arith(imp, cx, |a, b| Expr::Sub(Box::new(a), Box::new(b)))? {
        Some(p) => imp.pend(cx, p),
        None => Err("Sub is supported only as part of an element-wise function of one value (by a scalar constant)".into()),
    }
}

fn div<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    match arith(imp, cx, |a, b| Expr::Div(Box::new(a), Box::new(b)))? {
        Some(p) => imp.pend(cx, p),
        None => Err("Div is supported only as part of an element-wise function of one value (by a scalar constant)".into()),
    }
}

/// `Mul`: part of an element-wise function (x·sigmoid(x), x·0.5), or a gate: a value
/// times another of the same shape or of shape (C, 1, 1) (squeeze-excitation).
fn mul<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    if imp.absorb_affine(cx, false)? {
        return Ok(());
    }
    if let Some(p) = arith(imp, cx, |a, b| Expr::Mul(Box::new(a), Box::new(b)))? {
        return imp.pend(cx, p);
    }
    let (a, b) = (cx.input(0).ok_or("input 0 is missing")?, cx.input(1).ok_or("input 1 is missing")?);
    if imp.is_data(a) != imp.is_data(b) {
        return channel_scale(imp, cx, if imp.is_data(a) { (a, b) } else { (b, a) });
    }
    if !imp.is_data(a) || !imp.is_data(b) {
        return Err("Mul of a data value by a constant tensor is not supported (only by a scalar)".into());
    }
    let (mut x, mut xs) = imp.data(cx, a)?;
    let (mut g, mut gs) = imp.data(cx, b)?;
    let gate = |s: Shape, other: Shape| {
        s == other || matches!((s, other), (Shape::Image { c, h: 1, w: 1 }, Shape::Image { c: oc, .. }) if c == oc)
    };
    if !gate(gs, xs) && gate(xs, gs) {
        std::mem::swap(&mut x, &mut g);
        std::mem::swap(&mut xs, &mut gs);
    }
    if !gate(gs, xs) {
        return Err(format!("a Mul of shapes {xs} and {gs}: cnnc multiplies values of one shape, or by a (C, 1, 1) gate"));
    }
    imp.push_n(cx, Op::Mul, vec![x, g], xs, None, cx.output()?)?;
    Ok(())
}

/// A data value times a per-channel parameter (ConvNeXt's layer scale, [C, 1, 1], or [C]
/// on a channels-last value): a normalization node with no statistics of its own and
/// ε = 0 (mode "scale"), so that the plan sets it as it sets a BatchNorm's γ.
fn channel_scale<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, (data, constant): (&'m str, &'m str)) -> Result<(), String> {
    let (x, shape) = imp.data(cx, data)?;
    let (c, _, _) = image(cx, shape)?;
    let dims = imp.params.get(constant).map(|p| p.dims.clone()).unwrap_or_default();
    let channels_last = imp.channels_last.contains(data);
    let fits = if channels_last { dims == [c as i64] } else { matches!(dims.as_slice(), [n, 1, 1] | [1, n, 1, 1] if *n == c as i64) };
    if !fits {
        let want = if channels_last { format!("[{c}] on this channels-last value") } else { format!("[{c}, 1, 1]") };
        return Err(format!(
            "Mul of a data value by the constant `{constant}` of shape {dims:?}: cnnc multiplies by a scalar, or by a per-channel scale {want}"
        ));
    }
    let bn = BatchNorm {
        channels: c,
        epsilon: 0.0,
        training: false,
        groups: None,
        per_position: false,
        scale: imp.own_param_name(cx, constant, "weight"),
        shift: String::new(),
        affine: dims.iter().map(|&d| d as u64).skip_while(|&d| d == 1 && dims.len() == 4).collect(),
    };
    imp.push(cx, Op::BatchNorm(bn), x, shape, None, cx.output()?)?;
    Ok(())
}

/// One-argument element-wise functions.
fn unary<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let f = match cx.op {
        "Relu" => Fn1::Act(Activation::Relu),
        "LeakyRelu" => {
            let slope = cx.float("alpha", 0.01)?;
            // The shortest decimal that reads back as this f32 (0.2, not 0.20000000298…).
            Fn1::Act(Activation::LeakyRelu { slope: slope.to_string().parse().unwrap_or(slope as f64) })
        }
        "Tanh" => Fn1::Act(Activation::Tanh),
        "Sigmoid" => Fn1::Act(Activation::Sigmoid),
        "Gelu" => match cx.string("approximate", "none")?.as_str() {
            "none" => Fn1::Act(Activation::Gelu),
            other => return Err(format!("Gelu with approximate = `{other}` is not supported (only \"none\")")),
        },
        "HardSigmoid" => Fn1::HardSigmoid { alpha: cx.float("alpha", 0.2)? as f64, beta: cx.float("beta", 0.5)? as f64 },
        "HardSwish" => Fn1::HardSwish,
        "Elu" => Fn1::Elu { alpha: cx.float("alpha", 1.0)? as f64 },
        "Softplus" => Fn1::Softplus,
        "Mish" => Fn1::Mish,
        "Erf" => Fn1::Erf,
        "Exp" => Fn1::Exp,
        "Neg" => Fn1::Neg,
        "Abs" => Fn1::Abs,
        "Sqrt" => Fn1::Sqrt,
        other => return Err(format!("{other} is not an element-wise function cnnc knows")),
    };
    apply(imp, cx, f)
}

/// `Reciprocal` of data: 1/x of a value that reaches 0 has no finite moments. (Of a
/// weight's standard deviation it is a step of a weight standardization, taken before.)
fn reciprocal<'m>(_: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let i = cx.input(0).unwrap_or("?");
    Err(format!("Reciprocal of the data value `{i}` has no finite second moment: cnnc takes Reciprocal only in a weight standardization"))
}

fn apply<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, f: Fn1) -> Result<(), String> {
    // An activation after an activation is two nodes (a unified chain may hold the
    // first); only the arithmetic that builds one function (x/√2 → erf, x·sigmoid(x))
    // extends an expression.
    if let Some(name) = cx.input(0) {
        if imp.pending.get(name).is_some_and(|p| p.expr.is_named_function()) {
            imp.data(cx, name)?;
        }
    }
    match imp.expr(cx, 0) {
        Some(p) => imp.pend(cx, Pending { expr: Expr::Apply(f, Box::new(p.expr)), ..p }),
        None => imp.data_at(cx, 0).map(|_| ()),
    }
}

/// `Clip` (ReLU6 is `Clip(0, 6)`): bounds from attributes (opset < 11) or inputs.
fn clip<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let bound = |i: usize, attr: &str, default: f64| -> Result<f64, String> {
        match cx.input(i) {
            Some(n) => imp.params.get(n).and_then(Param::scalar).ok_or_else(|| format!("the Clip bound `{n}` must be a constant scalar")),
            None => Ok(cx.attr(attr).map_or(Ok(default), |_| cx.float(attr, 0.0).map(f64::from))?),
        }
    };
    let (min, max) = (bound(1, "min", f64::NEG_INFINITY)?, bound(2, "max", f64::INFINITY)?);
    if min.is_nan() || max.is_nan() || min > max {
        return Err(format!("the Clip bounds must be numbers with min ≤ max, got min {min} and max {max}"));
    }
    apply(imp, cx, Fn1::Clip { min, max })
}

/// `PRelu` at initialization: a leaky ReLU with its slope; the slope must be one
/// number for every channel (PyTorch initializes it to 0.25).
fn prelu<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let p = imp.constant(cx, 1).ok_or("the slope (input 1) must be an initializer")?;
    let slope = match &p.value {
        Some(t) => {
            let v = t.as_floats();
            match v.first() {
                Some(&s) if v.iter().all(|&x| x == s) => s,
                _ => return Err("PRelu with different slopes per channel is not supported: at initialization they are one number".into()),
            }
        }
        None => 0.25,
    };
    apply(imp, cx, Fn1::Act(Activation::LeakyRelu { slope }))
}

/// `BatchNormalization`: its own node; training mode when `training_mode = 1` or when
/// it has the running-statistics outputs (the TorchScript exporter's training export).
fn batch_norm<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let (c, _, _) = shape.chw();
    let mut names = Vec::new();
    for (i, what) in [(1, "scale"), (2, "shift"), (3, "running mean"), (4, "running variance")] {
        let (n, d) = cx.param(imp, i, what)?;
        if d.iter().product::<u64>() != c {
            return Err(format!("the {what} `{n}` has shape {d:?}, expected [{c}]"));
        }
        names.push(n.to_string());
    }
    let epsilon = norm_epsilon(cx)?;
    let training = cx.flag("training_mode")? || cx.node.output.iter().skip(1).any(|o| !o.is_empty());
    let op = Op::BatchNorm(BatchNorm::batch(c, epsilon, training, names[0].clone(), names[1].clone()));
    imp.push(cx, op, x, shape, None, cx.output()?)?;
    Ok(())
}

/// A normalization's `epsilon` (default 1e-5), not negative, as the shortest decimal that
/// reads back as the f32 the model stores.
fn norm_epsilon(cx: &Cx<'_>) -> Result<f64, String> {
    let epsilon = cx.float("epsilon", 1e-5)?;
    if epsilon.is_nan() || epsilon < 0.0 {
        return Err(format!("attribute `epsilon` = {epsilon} must not be negative"));
    }
    Ok(epsilon.to_string().parse().unwrap_or(epsilon as f64))
}

/// `InstanceNormalization`: on an image, each sample's statistics per channel; on the
/// (N, G, −1) view of a GroupNorm export, per group (the Reshape back makes the node).
fn instance_norm<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let epsilon = norm_epsilon(cx)?;
    if let Some((x, shape, g)) = cx.input(0).and_then(|n| imp.group_view.get(n)).copied() {
        // The per-group scale and bias of this form are constants 1 and 0 (the module's γ
        // and β follow as Mul and Add).
        for (i, what, want) in [(1, "scale", 1.0), (2, "bias", 0.0)] {
            let p = imp.constant(cx, i).ok_or_else(|| format!("the {what} of a GroupNorm's InstanceNormalization must be a constant"))?;
            let ok = p.value.as_ref().is_some_and(|t| t.as_floats().iter().all(|&v| v == want));
            if !ok {
                return Err(format!(
                    "the {what} of a GroupNorm's InstanceNormalization must be all {want} (the module's affine follows it)"
                ));
            }
        }
        imp.group_norm.insert(cx.output()?, (x, shape, g, epsilon));
        return Ok(());
    }
    let (x, shape) = imp.data_at(cx, 0)?;
    let Shape::Image { c, .. } = shape else { return Err(format!("InstanceNormalization of a vector {shape}: it needs an image")) };
    let mut names = Vec::new();
    for (i, what) in [(1, "scale"), (2, "bias")] {
        let (n, d) = cx.param(imp, i, what)?;
        if d.iter().product::<u64>() != c {
            return Err(format!("the {what} `{n}` has shape {d:?}, expected [{c}]"));
        }
        names.push(imp.own_param_name(cx, n, if i == 1 { "weight" } else { "bias" }));
    }
    let bn = BatchNorm {
        channels: c,
        epsilon,
        training: true,
        groups: Some(c),
        per_position: false,
        scale: names[0].clone(),
        shift: names[1].clone(),
        affine: vec![c],
    };
    imp.push(cx, Op::BatchNorm(bn), x, shape, None, cx.output()?)?;
    Ok(())
}

/// `GroupNormalization` (opset 18): each sample's statistics over `num_groups` groups.
fn group_norm<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let Shape::Image { c, .. } = shape else { return Err(format!("GroupNormalization of a vector {shape}: it needs an image")) };
    let g = cx.int("num_groups", 0)?;
    if g <= 0 || c as i64 % g != 0 {
        return Err(format!("attribute `num_groups` = {g} must divide the {c} channels"));
    }
    let epsilon = norm_epsilon(cx)?;
    let mut names = Vec::new();
    let mut affine = vec![c];
    for (i, what) in [(1, "scale"), (2, "bias")] {
        let (n, d) = cx.param(imp, i, what)?;
        let numel = d.iter().product::<u64>();
        if numel != c && numel != g as u64 {
            return Err(format!("the {what} `{n}` has shape {d:?}, expected [{c}] (or [{g}], one per group)"));
        }
        affine = vec![numel];
        names.push(imp.own_param_name(cx, n, if i == 1 { "weight" } else { "bias" }));
    }
    let bn = BatchNorm {
        channels: c,
        epsilon,
        training: true,
        groups: Some(g as u64),
        per_position: false,
        scale: names[0].clone(),
        shift: names[1].clone(),
        affine,
    };
    imp.push(cx, Op::BatchNorm(bn), x, shape, None, cx.output()?)?;
    Ok(())
}

/// `LayerNormalization` of an image over (C, H, W) (axis 1): each sample's statistics
/// over all its elements, an element-wise γ and β [C, H, W]; of a channels-last view over
/// its last axis (ConvNeXt's): each position's statistics over the channels, γ and β [C].
fn layer_norm<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let Shape::Image { c, h, w } = shape else { return Err(format!("LayerNormalization of a vector {shape}: cnnc takes it on images")) };
    let axis = cx.int("axis", -1)?;
    // Of a channels-last view, over its last axis: over the channels at each position.
    let per_position = cx.input(0).is_some_and(|i| imp.channels_last.contains(i));
    if per_position && axis != -1 && axis != 3 {
        return Err(format!(
            "LayerNormalization over axis {axis} of a channels-last (N, H, W, C) value: cnnc takes it over the channels (axis −1)"
        ));
    }
    if !per_position && axis != 1 && axis != -3 {
        return Err(format!(
            "LayerNormalization over axis {axis} is not supported: only over (C, H, W) of an image (axis 1 or −3), \
             or over the channels of a channels-last view (after a Transpose with perm [0, 2, 3, 1])"
        ));
    }
    let affine = if per_position { vec![c] } else { vec![c, h, w] };
    let epsilon = norm_epsilon(cx)?;
    let mut names = Vec::new();
    for (i, what) in [(1, "scale"), (2, "bias")] {
        if cx.input(i).is_none() {
            names.push(String::new());
            continue;
        }
        let (n, d) = cx.param(imp, i, what)?;
        if d.iter().product::<u64>() != affine.iter().product::<u64>() {
            return Err(format!("the {what} `{n}` has shape {d:?}, expected {affine:?}"));
        }
        names.push(imp.own_param_name(cx, n, if i == 1 { "weight" } else { "bias" }));
    }
    let bn = BatchNorm {
        channels: c,
        epsilon,
        training: true,
        groups: Some(1),
        per_position,
        scale: names[0].clone(),
        shift: names[1].clone(),
        affine,
    };
    imp.push(cx, Op::BatchNorm(bn), x, shape, None, cx.output()?)?;
    Ok(())
}

/// The axis attribute of a channel op, normalized; only the channel axis is accepted.
fn channel_axis(cx: &Cx<'_>, shape: Shape, default: i64) -> Result<(), String> {
    let axis = cx.int("axis", default)?;
    let rank = if matches!(shape, Shape::Image { .. }) { 4 } else { 2 };
    if axis == 1 || axis == 1 - rank {
        Ok(())
    } else {
        Err(format!("{} along axis {axis} is not supported: only along the channel axis 1", cx.op))
    }
}

fn concat<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let names: Vec<&'m str> = (0..cx.node.input.len()).filter_map(|i| cx.input(i)).collect();
    let mut inputs = Vec::new();
    let mut total = 0u64;
    let mut first: Option<Shape> = None;
    for n in &names {
        let (v, s) = imp.data(cx, n)?;
        channel_axis(cx, s, 0)?;
        let (c, h, w) = s.chw();
        if let Some(f) = first {
            let (_, fh, fw) = f.chw();
            if (fh, fw) != (h, w) || std::mem::discriminant(&f) != std::mem::discriminant(&s) {
                return Err(format!("a Concat of {f} and {s}: the inputs must agree on every axis but the channels"));
            }
        }
        first.get_or_insert(s);
        total = total.checked_add(c).ok_or("too many channels")?;
        inputs.push(v);
    }
    let shape = match first.ok_or("Concat has no input")? {
        Shape::Image { h, w, .. } => Shape::Image { c: total, h, w },
        Shape::Vector { .. } => Shape::Vector { n: total },
    };
    if inputs.len() == 1 {
        return identity(imp, cx);
    }
    imp.push_n(cx, Op::Concat, inputs, shape, None, cx.output()?)?;
    Ok(())
}

fn channel_slice<'m>(
    imp: &mut Importer<'m>,
    cx: &Cx<'m>,
    x: ValueId,
    shape: Shape,
    start: u64,
    end: u64,
    out: &'m str,
) -> Result<(), String> {
    let out_shape = match shape {
        Shape::Image { h, w, .. } => Shape::Image { c: end - start, h, w },
        Shape::Vector { .. } => Shape::Vector { n: end - start },
    };
    if start == 0 && end == shape.chw().0 {
        imp.values.insert(out, (x, shape));
        return Ok(());
    }
    imp.push(cx, Op::ChannelSlice { start, end }, x, out_shape, None, out)?;
    Ok(())
}

/// `Split` along the channels: sizes from input 1 (opset ≥ 13), the `split` attribute, or
/// equal parts.
fn split<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    channel_axis(cx, shape, 0)?;
    let c = shape.chw().0;
    let outs: Vec<&'m str> = cx.node.output.iter().map(String::as_str).collect();
    let sizes: Vec<i64> = match (cx.input(1), cx.ints("split")?) {
        (Some(n), _) => imp.params.get(n).and_then(Param::ints).ok_or_else(|| format!("the split sizes `{n}` must be constant"))?,
        (None, Some(s)) => s.to_vec(),
        (None, None) => {
            let k = outs.len() as u64;
            if k == 0 || c % k != 0 {
                return Err(format!("{c} channels do not split into {k} equal parts"));
            }
            vec![(c / k) as i64; k as usize]
        }
    };
    if sizes.len() != outs.len() || sizes.iter().any(|&s| s < 1) || sizes.iter().sum::<i64>() != c as i64 {
        return Err(format!("split sizes {sizes:?} do not divide {c} channels among {} outputs", outs.len()));
    }
    let mut start = 0u64;
    for (size, out) in sizes.iter().zip(outs) {
        let end = start + *size as u64;
        if !out.is_empty() {
            channel_slice(imp, cx, x, shape, start, end, out)?;
        }
        start = end;
    }
    Ok(())
}

/// `Slice` of data: along the channels, with step 1.
fn slice<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let ints = |i: usize, attr: &str| -> Result<Option<Vec<i64>>, String> {
        match cx.input(i) {
            Some(n) => imp.params.get(n).and_then(Param::ints).map(Some).ok_or_else(|| format!("the Slice input `{n}` must be constant")),
            None => Ok(cx.ints(attr)?.map(<[i64]>::to_vec)),
        }
    };
    let starts = ints(1, "starts")?.ok_or("Slice needs starts")?;
    let ends = ints(2, "ends")?.ok_or("Slice needs ends")?;
    let axes = ints(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = ints(4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    let rank = if matches!(shape, Shape::Image { .. }) { 4 } else { 2 };
    let dims: Vec<u64> = std::iter::once(1).chain(shape.dims()).collect();
    let (mut start, mut end) = (0u64, shape.chw().0);
    for k in 0..starts.len() {
        let (axis, s, e) = (*axes.get(k).ok_or("axes shorter than starts")?, starts[k], *ends.get(k).ok_or("ends shorter than starts")?);
        let axis = if axis < 0 { axis + rank } else { axis };
        let n = *dims.get(axis as usize).ok_or_else(|| format!("axis {axis} is out of range"))? as i64;
        let clamp = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as u64;
        let (s, e) = (clamp(s), clamp(e));
        let full = s == 0 && e == n as u64;
        match steps.get(k).copied().unwrap_or(1) {
            1 => {}
            0 => return Err(format!("the step along axis {axis} is 0 (ONNX requires a non-zero step)")),
            // Any step takes the one element of an axis of size 1; on a longer axis a
            // step other than 1 subsamples or reverses it.
            _ if n == 1 && full => {}
            step => return Err(format!("Slice with step {step} along axis {axis} is not supported (only step 1)")),
        }
        match axis {
            1 => (start, end) = (s, e),
            _ if full => {}
            _ => return Err(format!("Slice along axis {axis} is not supported: only along the channel axis 1")),
        }
    }
    if start >= end {
        return Err(format!("the slice {start}..{end} of the channels is empty"));
    }
    channel_slice(imp, cx, x, shape, start, end, cx.output()?)
}

/// An explicit constant zero `Pad` of the spatial axes, kept for the Conv that reads it.
fn pad<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let mode = cx.string("mode", "constant")?;
    if mode != "constant" {
        return Err(format!("Pad mode `{mode}` is not supported: only zero (constant) padding, which is a conv's own padding"));
    }
    let pads = match cx.input(1) {
        Some(n) => imp.params.get(n).and_then(Param::ints).ok_or_else(|| format!("the pads `{n}` must fold to a constant"))?,
        None => cx.ints("pads")?.map(<[i64]>::to_vec).ok_or("Pad needs pads")?,
    };
    if let Some(v) = cx.input(2) {
        if imp.params.get(v).and_then(Param::scalar) != Some(0.0) {
            return Err(format!("the pad value `{v}` must be the constant 0"));
        }
    }
    if cx.input(3).is_some() {
        return Err("Pad with an axes input is not supported".into());
    }
    let &[n0, c0, hb, wb, n1, c1, he, we] = pads.as_slice() else {
        return Err(format!("pads {pads:?}: cnnc pads 4-D images (8 values)"));
    };
    if [n0, c0, n1, c1] != [0; 4] || [hb, wb, he, we].iter().any(|&p| !(0..=MAX_DIM as i64).contains(&p)) {
        return Err(format!("pads {pads:?}: only non-negative padding of the spatial axes is supported"));
    }
    image(cx, shape)?;
    let p = [Pad { begin: hb as u64, end: he as u64 }, Pad { begin: wb as u64, end: we as u64 }];
    imp.pads.insert(cx.output()?, (x, shape, p));
    Ok(())
}

/// `Resize`/`Upsample` by integer factors (nearest or linear).
/// `Resize` and `Upsample`. Nearest by whole factors whose copies are each input's own
/// (`Op::Resize`); any other size, and linear interpolation, a [`ir::Resample`] with
/// ONNX's coordinate transform and nearest rounding.
fn resize<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = imp.data_at(cx, 0)?;
    let (c, h, w) = image(cx, shape)?;
    let float = |i: usize| imp.params.get(cx.input(i)?).and_then(|p| p.value.as_ref()).map(Tensor::as_floats);
    if cx.ints("axes")?.is_some_and(|a| !matches!(a, [2, 3] | [-2, -1])) {
        return Err("attribute `axes` other than the spatial [2, 3] is not supported".into());
    }
    let (scales_at, sizes_at) = if cx.op == "Upsample" { (1, 9) } else { (2, 3) };
    // The spatial pair of `scales` or `sizes` ([N, C, H, W], or [H, W] with `axes`).
    let spatial = |v: &[f64], what: &str| -> Result<[f64; 2], String> {
        match v {
            [_, _, a, b] | [a, b] => Ok([*a, *b]),
            _ => Err(format!("{what} {v:?}: expected 4 values")),
        }
    };
    let (scale, out) = if let Some(s) = float(scales_at).filter(|s| !s.is_empty()) {
        let [sh, sw] = spatial(&s, "scales")?;
        if s.len() == 4 && (s[0] != 1.0 || s[1] != 1.0) {
            return Err(format!("scales {s:?} change the batch or channel axis"));
        }
        if !(sh > 0.0 && sw > 0.0 && sh.is_finite() && sw.is_finite()) {
            return Err(format!("scales {s:?} must be positive"));
        }
        let size = |n: u64, f: f64| {
            let o = (n as f64 * f).floor();
            (o >= 1.0 && o <= MAX_DIM as f64).then_some(o as u64).ok_or(format!("scale {f} gives an output of {o} positions from {n}"))
        };
        ([sh, sw], [size(h, sh)?, size(w, sw)?])
    } else if let Some(s) = float(sizes_at).filter(|s| !s.is_empty()) {
        let [oh, ow] = spatial(&s, "sizes")?;
        if s.len() == 4 && s[1] != c as f64 {
            return Err(format!("sizes {s:?} change the channels ({c})"));
        }
        let whole = |v: f64| {
            (v >= 1.0 && v.fract() == 0.0 && v <= MAX_DIM as f64)
                .then_some(v as u64)
                .ok_or(format!("sizes {s:?} are not positive whole numbers"))
        };
        let (oh, ow) = (whole(oh)?, whole(ow)?);
        ([oh as f64 / h as f64, ow as f64 / w as f64], [oh, ow])
    } else {
        return Err("Resize needs constant scales or sizes".into());
    };
    let linear = match cx.string("mode", "nearest")?.as_str() {
        "nearest" => false,
        "linear" | "bilinear" => true,
        other => return Err(format!("Resize mode `{other}` is not supported (nearest or linear)")),
    };
    let default_transform = if cx.op == "Upsample" { "asymmetric" } else { "half_pixel" };
    let transform = match cx.string("coordinate_transformation_mode", default_transform)?.as_str() {
        "half_pixel" => ir::CoordTransform::HalfPixel,
        "pytorch_half_pixel" => ir::CoordTransform::PytorchHalfPixel,
        "align_corners" => ir::CoordTransform::AlignCorners,
        "asymmetric" => ir::CoordTransform::Asymmetric,
        "tf_half_pixel_for_nn" => ir::CoordTransform::TfHalfPixelForNn,
        other => return Err(format!("coordinate_transformation_mode `{other}` is not supported")),
    };
    let nearest = match cx.string("nearest_mode", "round_prefer_floor")?.as_str() {
        "round_prefer_floor" => ir::NearestMode::RoundPreferFloor,
        "round_prefer_ceil" => ir::NearestMode::RoundPreferCeil,
        "floor" => ir::NearestMode::Floor,
        "ceil" => ir::NearestMode::Ceil,
        other => return Err(format!("nearest_mode `{other}` is not supported")),
    };
    if cx.int("antialias", 0)? != 0 && linear && (out[0] < h || out[1] < w) {
        return Err("antialiased linear downsampling is not supported".into());
    }
    let r = ir::Resample { linear, transform, nearest, scale };
    let out_shape = Shape::Image { c, h: out[0], w: out[1] };
    // Nearest by whole factors where every input is copied to its own block: the
    // upsampling cnnc has always taken (the same IR, the same plans).
    let copies = |a: usize, n: u64, o: u64| {
        o.is_multiple_of(n) && r.weights(a, n, o).iter().enumerate().all(|(i, row)| row[0].0 as u64 == i as u64 / (o / n))
    };
    if !linear && copies(0, h, out[0]) && copies(1, w, out[1]) {
        imp.push(cx, Op::Resize { scale: [out[0] / h, out[1] / w], linear: false }, x, out_shape, None, cx.output()?)?;
    } else {
        imp.push(cx, Op::Resample(r), x, out_shape, None, cx.output()?)?;
    }
    Ok(())
}
