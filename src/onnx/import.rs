//! ONNX `ModelProto` → [`ir::Graph`].
//!
//! Steps, in order: check the opset; find the `Add` nodes that are the bias of a `MatMul`
//! (MatMul + Add is one linear layer); report every unsupported node at once; sort the
//! nodes topologically (a cycle is an error); find the one data input and its shape; then
//! convert node by node through [`OPS`], one function per `op_type`.
//!
//! Weights are known by their shapes only: an initializer, a graph input with a declared
//! shape (models exported without parameters), or a `Constant` node. Values are either
//! data (produced from the graph input, with an [`ir`] node and a [`Shape`]) or such
//! parameters. Identity and Dropout produce no IR node: their output is their input.

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use super::OnnxError;
use crate::ir::{self, Activation, Conv, Linear, Op, Origin, Pad, ParamNames, Pool, PoolKind, Shape, ValueId};
use std::collections::{BTreeSet, HashMap, HashSet};

/// What the importer needs beyond the model.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// One sample's input shape (C, H, W), overriding the graph input's declared shape
    /// (needed when its sizes are symbolic).
    pub input: Option<[u64; 3]>,
}

/// Largest size accepted for one axis, and for the number of elements of one sample:
/// keeps every later product within `u64`.
const MAX_DIM: u64 = 1 << 31;
const MAX_NUMEL: u64 = 1 << 48;

type OpFn = for<'m> fn(&mut Importer<'m>, &Cx<'m>) -> Result<(), String>;

/// The operator table: op_type, its converter, and which of its inputs are parameters
/// (not data), so that a parameter given as a graph input is not taken for the data input.
const OPS: &[(&str, OpFn, &[usize])] = &[
    ("Conv", conv, &[1, 2]),
    ("Gemm", gemm, &[1, 2]),
    ("MatMul", matmul, &[1]),
    ("Add", add, &[]),
    ("Relu", relu, &[]),
    ("LeakyRelu", leaky_relu, &[]),
    ("Tanh", tanh, &[]),
    ("Sigmoid", sigmoid, &[]),
    ("MaxPool", max_pool, &[]),
    ("AveragePool", average_pool, &[]),
    ("GlobalAveragePool", global_average_pool, &[]),
    ("GlobalMaxPool", global_max_pool, &[]),
    ("ReduceMean", reduce_mean, &[1]),
    ("ReduceMax", reduce_max, &[1]),
    ("Flatten", flatten, &[]),
    ("Reshape", reshape, &[1]),
    ("Dropout", identity, &[1, 2]),
    ("Identity", identity, &[]),
    ("Constant", constant, &[]),
];

/// The operator types the importer handles (`Add` only as the bias of a `MatMul`).
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul(+Add)",
    "Relu",
    "LeakyRelu",
    "Tanh",
    "Sigmoid",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "ReduceMean",
    "ReduceMax",
    "Flatten",
    "Reshape",
    "Dropout",
    "Identity",
    "Constant",
];

fn lookup(op: &str) -> Option<&'static (&'static str, OpFn, &'static [usize])> {
    OPS.iter().find(|(name, _, _)| *name == op)
}

/// A parameter-like value: its dims, and its values when it is a small int64 tensor.
#[derive(Clone, Debug)]
struct Param {
    dims: Vec<i64>,
    ints: Option<Vec<i64>>,
}

struct Importer<'m> {
    params: HashMap<String, Param>,
    values: HashMap<&'m str, (ValueId, Shape)>,
    nodes: Vec<ir::Node>,
    /// MatMul node index → (bias name, Add output name) when an Add adds its bias.
    matmul_bias: HashMap<usize, (&'m str, &'m str)>,
    /// Indices of the Add nodes folded into a MatMul.
    fused_adds: HashSet<usize>,
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
        .filter(|(k, n)| !is_default_domain(n) || lookup(n.op_type()).is_none() || (n.op_type() == "Add" && !fused_adds.contains(k)))
        .map(|(k, n)| (node_name(n, k), op_label(n)))
        .collect();
    if !unsupported.is_empty() {
        return Err(OnnxError::Unsupported(unsupported));
    }
    let order = topological_order(graph)?;

    let mut imp = Importer { params: HashMap::new(), values: HashMap::new(), nodes: Vec::new(), matmul_bias, fused_adds };
    for t in &graph.initializer {
        imp.params.insert(t.name().to_string(), param_of(t));
    }
    let (data_input, shape) = data_input(graph, &imp, opts)?;
    imp.values.insert(data_input, (ValueId(0), shape));
    for vi in &graph.input {
        if vi.name() != data_input && !imp.params.contains_key(vi.name()) {
            if let Some(dims) = declared_dims(vi).and_then(|d| d.into_iter().collect::<Option<Vec<i64>>>()) {
                imp.params.insert(vi.name().to_string(), Param { dims, ints: None });
            }
        }
    }
    for k in order {
        let node = &graph.node[k];
        let cx = Cx { node, index: k, name: node_name(node, k), op: node.op_type() };
        let (_, convert, _) = lookup(cx.op).expect("unsupported nodes were rejected above");
        convert(&mut imp, &cx).map_err(|message| OnnxError::Node { node: cx.name.clone(), op: cx.op.to_string(), message })?;
    }
    if imp.nodes.is_empty() {
        return Err(OnnxError::Model("the graph has no node that cnnc can plan".into()));
    }
    let name = if graph.name().is_empty() { "onnx".to_string() } else { graph.name().to_string() };
    Ok(ir::Graph { name, input: shape, nodes: imp.nodes })
}

fn is_default_domain(n: &NodeProto) -> bool {
    matches!(n.domain(), "" | "ai.onnx")
}

fn op_label(n: &NodeProto) -> String {
    if is_default_domain(n) {
        n.op_type().to_string()
    } else {
        format!("{}::{}", n.domain(), n.op_type())
    }
}

/// The node's name, or `op_type#index` when it has none.
fn node_name(n: &NodeProto, k: usize) -> String {
    if n.name().is_empty() {
        format!("{}#{k}", n.op_type())
    } else {
        n.name().to_string()
    }
}

fn check_opset(model: &ModelProto) -> Result<(), OnnxError> {
    for o in &model.opset_import {
        if matches!(o.domain(), "" | "ai.onnx") && o.version() < 7 {
            return Err(OnnxError::Model(format!("the model uses opset {}: cnnc imports opset 7 and later", o.version())));
        }
    }
    Ok(())
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
    let computed: HashSet<&str> =
        graph.node.iter().filter(|n| n.op_type() != "Constant").flat_map(|n| n.output.iter().map(String::as_str)).collect();
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
    if let Some([c, h, w]) = opts.input {
        for (axis, v) in [("C", c), ("H", h), ("W", w)] {
            if v == 0 || v > MAX_DIM {
                return Err(OnnxError::Model(format!("--input: {axis} = {v} is out of range (1 to {MAX_DIM})")));
            }
        }
        return checked_shape(Shape::Image { c, h, w }).map(|s| (name, s)).map_err(OnnxError::Model);
    }
    let declared = declared_dims(vi);
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

fn checked_shape(s: Shape) -> Result<Shape, String> {
    let numel = s.dims().iter().try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= MAX_NUMEL));
    match numel {
        Some(_) => Ok(s),
        None => Err(format!("shape {s} has more than {MAX_NUMEL} elements")),
    }
}

/// A tensor's dims, and its values when it is an int64 tensor of at most 16 elements
/// whose data matches its dims.
fn param_of(t: &TensorProto) -> Param {
    let count = t.dims.iter().try_fold(1i64, |a, &d| if d < 0 { None } else { a.checked_mul(d) });
    let ints = match count {
        Some(n) if t.data_type() == DataType::Int64 as i32 && n <= 16 => {
            let values: Vec<i64> = match &t.raw_data {
                _ if !t.int64_data.is_empty() => t.int64_data.clone(),
                Some(raw) if raw.len() as i64 == 8 * n => {
                    raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
                }
                _ => Vec::new(),
            };
            Some(values).filter(|v| v.len() as i64 == n)
        }
        _ => None,
    };
    Param { dims: t.dims.clone(), ints }
}

// ---------------------------------------------------------------- node context helpers

impl<'m> Cx<'m> {
    /// Input `i`'s name, `None` when absent or empty (an omitted optional input).
    fn input(&self, i: usize) -> Option<&'m str> {
        self.node.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn output(&self) -> Result<&'m str, String> {
        self.node.output.first().map(String::as_str).filter(|s| !s.is_empty()).ok_or_else(|| "the node has no output".to_string())
    }

    /// The data value read at input `i`.
    fn data(&self, imp: &Importer<'m>, i: usize) -> Result<(ValueId, Shape), String> {
        let name = self.input(i).ok_or_else(|| format!("input {i} is missing"))?;
        if let Some(v) = imp.values.get(name) {
            return Ok(*v);
        }
        if imp.params.contains_key(name) {
            return Err(format!("input `{name}` is a constant, not data computed from the graph input"));
        }
        Err(format!("input `{name}` is not defined by any node, initializer or graph input"))
    }

    /// The dims of the parameter read at input `i`, all ≥ 1; `what` names it in errors.
    fn param(&self, imp: &Importer<'_>, i: usize, what: &str) -> Result<(&'m str, Vec<u64>), String> {
        let name = self.input(i).ok_or_else(|| format!("the {what} (input {i}) is missing"))?;
        let p = imp.params.get(name).ok_or_else(|| {
            if imp.values.contains_key(name) {
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
        let shape = checked_shape(shape)?;
        self.nodes.push(ir::Node {
            op,
            inputs: vec![input],
            output: shape,
            name: cx.name.clone(),
            params,
            origin: Origin::OnnxNode(cx.name.clone()),
        });
        let id = ValueId(self.nodes.len());
        self.values.insert(output, (id, shape));
        Ok(id)
    }
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
    let (x, shape) = cx.data(imp, 0)?;
    let (c, h, w) = image(cx, shape)?;
    let (weight, wd) = cx.param(imp, 1, "weight")?;
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
    let pad = cx.pads([h, w], [kh, kw], stride, dilation)?;
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
    let params = Some(ParamNames { weight: weight.to_string(), bias });
    imp.push(cx, op, x, Shape::Image { c: m, h: oh, w: ow }, params, cx.output()?)?;
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
    let (x, shape) = cx.data(imp, 0)?;
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
    imp.push(cx, op, x, Shape::Vector { n: out }, Some(ParamNames { weight: weight.to_string(), bias }), cx.output()?)?;
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
    let (x, shape) = cx.data(imp, 0)?;
    let n = vector_input(cx, shape)?;
    let (weight, wd) = cx.param(imp, 1, "weight")?;
    let &[inp, out] = wd.as_slice() else { return Err(format!("the weight `{weight}` has shape {wd:?}, expected 2-D [in, out]")) };
    if inp != n {
        return Err(format!("the input has {n} features but the weight `{weight}` {wd:?} reads {inp}"));
    }
    let fused = imp.matmul_bias.get(&cx.index).copied();
    let bias = linear_bias(imp, cx, fused.map(|(b, _)| b), out)?;
    let op = Op::Linear(Linear { in_features: n, out_features: out, bias: bias.is_some() });
    let params = Some(ParamNames { weight: weight.to_string(), bias });
    let id = imp.push(cx, op, x, Shape::Vector { n: out }, params, cx.output()?)?;
    if let Some((_, add_out)) = fused {
        imp.values.insert(add_out, (id, Shape::Vector { n: out }));
    }
    Ok(())
}

/// An Add reaches here only as the bias of a MatMul, already folded into its linear layer.
fn add<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    if imp.fused_adds.contains(&cx.index) {
        Ok(())
    } else {
        Err("Add is supported only as the bias of a MatMul".into())
    }
}

fn activation<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, act: Activation) -> Result<(), String> {
    let (x, shape) = cx.data(imp, 0)?;
    imp.push(cx, Op::Activation(act), x, shape, None, cx.output()?)?;
    Ok(())
}

fn relu<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    activation(imp, cx, Activation::Relu)
}

fn leaky_relu<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let slope = cx.float("alpha", 0.01)?;
    // The shortest decimal that reads back as this f32 (0.2, not 0.20000000298…).
    let slope: f64 = slope.to_string().parse().unwrap_or(slope as f64);
    activation(imp, cx, Activation::LeakyRelu { slope })
}

fn tanh<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    activation(imp, cx, Activation::Tanh)
}

fn sigmoid<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    activation(imp, cx, Activation::Sigmoid)
}

fn pool<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>, kind: PoolKind) -> Result<(), String> {
    let (x, shape) = cx.data(imp, 0)?;
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
    let (x, shape) = cx.data(imp, 0)?;
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
            imp.params.get(name).and_then(|p| p.ints.clone()).ok_or_else(|| format!("the axes `{name}` must be a constant int64 tensor"))?
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
    let (x, shape) = cx.data(imp, 0)?;
    let rank = if matches!(shape, Shape::Image { .. }) { 4 } else { 2 };
    let axis = cx.int("axis", 1)?;
    if axis != 1 && axis != 1 - rank {
        return Err(format!("attribute `axis` = {axis} is not supported: only axis 1 (keep the batch axis)"));
    }
    imp.push(cx, Op::Flatten, x, Shape::Vector { n: shape.numel() }, None, cx.output()?)?;
    Ok(())
}

/// A reshape to (batch, features): the target is [b, F] with F the sample size, or
/// [b, -1] with b = 0 (copy the batch) or a fixed batch.
fn reshape<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let (x, shape) = cx.data(imp, 0)?;
    let target_name = cx.input(1).ok_or("the shape input is missing")?;
    let target = imp
        .params
        .get(target_name)
        .and_then(|p| p.ints.clone())
        .ok_or_else(|| format!("the shape `{target_name}` must be a constant int64 tensor"))?;
    let n = shape.numel() as i64;
    let ok = match *target.as_slice() {
        [_, f] if f == n => true,
        [b, -1] => b >= 0,
        _ => false,
    };
    if !ok {
        return Err(format!("a reshape of {shape} to {target:?} is not supported: only to 2-D (batch, {n})"));
    }
    imp.push(cx, Op::Flatten, x, Shape::Vector { n: shape.numel() }, None, cx.output()?)?;
    Ok(())
}

fn identity<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let v = cx.data(imp, 0)?;
    imp.values.insert(cx.output()?, v);
    Ok(())
}

fn constant<'m>(imp: &mut Importer<'m>, cx: &Cx<'m>) -> Result<(), String> {
    let out = cx.output()?;
    let p = if let Some(t) = cx.attr("value").and_then(|a| a.t.as_ref()) {
        param_of(t)
    } else if let Some(v) = cx.ints("value_ints")? {
        Param { dims: vec![v.len() as i64], ints: Some(v.to_vec()) }
    } else if cx.attr("value_int").is_some() {
        Param { dims: vec![], ints: Some(vec![cx.int("value_int", 0)?]) }
    } else if let Some(a) = cx.node.attribute.first() {
        return Err(format!("attribute `{}` of Constant is not supported", a.name()));
    } else {
        return Err("the Constant has no value".into());
    };
    imp.params.insert(out.to_string(), p);
    Ok(())
}
