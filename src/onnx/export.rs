//! Graph IR + plan → ONNX, and re-initialization of an existing model from its plan.
//!
//! [`export`] writes opset 13 (IR version 7): Conv, Gemm (transB = 1, PyTorch's
//! `[out, in]` layout), Relu, LeakyRelu, Tanh, Sigmoid, MaxPool, AveragePool,
//! GlobalAveragePool, GlobalMaxPool, Flatten (axis 1); for graphs also Add (Sum of more
//! than two), Concat, Mul, Slice (a channel slice; consecutive slices of one name that
//! cut a value into parts, a Split), Clip (ReLU6), ReduceMean/ReduceMax (keepdims 0: a
//! global pooling and its flatten under one name), a channel shuffle as torch writes it
//! (Reshape to (N, g, C/g, H, W), Transpose [0, 2, 1, 3, 4], Reshape back), Resize
//! (nearest by whole factors as asymmetric/floor, and any [`ir::Resample`] with its
//! coordinate transform and rounding: float32 `scales`, or `sizes` of `axes` [2, 3],
//! opset 18), BatchNormalization (γ the plan's, β, running mean 0 and variance 1; a
//! training-mode one with `training_mode = 1` and its two running-statistics outputs,
//! opset 15), InstanceNormalization, LayerNormalization (opset 17: over (C, H, W), or
//! over the channels of a channels-last view between two Transposes) and
//! GroupNormalization (opset 21, γ and β per channel), each in the form the importer
//! reads back as the same node; the attention ops as torch writes them: split attention's
//! radix softmax (Reshape, Transpose, Softmax, Reshape), global-context attention's
//! softmax over the positions (Reshape to (N, 1, H·W), Softmax) and attention pool
//! (Unsqueeze, MatMul, Reshape), its broadcast Add, efficient channel attention's swap
//! (Squeeze, Transpose; a 1-D Conv across the row; Transpose, Unsqueeze). A conv of a
//! standardized weight is written as TorchScript writes one (see [`standardize`]): its
//! gain parameter at the plan's value, so the export's plan gives `network_gain` = the
//! plan's gain. The batch axis is symbolic (`N`). Not written (an error naming the
//! node): zeros between positions that no transposed conv reads. A transposed conv (its
//! zeros and its conv, with the stored [C_in, C_out/g, k_h, k_w] weight) is one
//! ConvTranspose with the strides, pads and `output_padding` the importer read. Element-wise functions: each named
//! one as its operator (GELU opset 20, hard-swish 14, mish 18; SiLU as x · Sigmoid(x)),
//! arithmetic on constants as Add/Sub/Mul/Div of scalar initializers.
//! Weights are float32, drawn from N(0, std²) of the plan with [`Normal`] (splitmix64 +
//! Box–Muller, seeded), one stream over the layers in order; biases are zero.
//!
//! [`reinit`] replaces, for each layer of a plan, the weight and bias initializers named
//! in it, and a graph plan's normalization parameters (keeping their dims and float type),
//! and touches nothing else; a parameter given only as a graph input with a declared
//! shape gets a new initializer.

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use super::{Bytes, OnnxError};
use crate::ir::{self, Activation, Op, PoolKind, Shape};
use crate::plan::{Plan, PlanLayer};
use prost::Message;

/// The opset and IR version that [`export`] writes.
pub const OPSET: i64 = 13;
pub const IR_VERSION: i64 = 7;

/// Protobuf cannot encode a message of 2 GiB or more.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// A seeded generator of standard normal samples (splitmix64 → Box–Muller). Small,
/// dependency-free, and the same on every platform for a given seed.
#[derive(Clone, Debug)]
pub struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    pub fn new(seed: u64) -> Normal {
        Normal { state: seed, spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform sample in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// One sample of N(0, 1).
    pub fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform();
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

fn fill(rng: &mut Normal, numel: usize, std: f64, ty: DataType) -> Bytes {
    match ty {
        DataType::Double => {
            let mut out = Vec::with_capacity(numel * 8);
            for _ in 0..numel {
                out.extend_from_slice(&(rng.sample() * std).to_le_bytes());
            }
            Bytes::from(out)
        }
        _ => {
            let mut out = Vec::with_capacity(numel * 4);
            for _ in 0..numel {
                out.extend_from_slice(&((rng.sample() * std) as f32).to_le_bytes());
            }
            Bytes::from(out)
        }
    }
}

fn constant(numel: usize, v: f64, ty: DataType) -> Bytes {
    let one: Vec<u8> = if ty == DataType::Double { v.to_le_bytes().to_vec() } else { (v as f32).to_le_bytes().to_vec() };
    Bytes::from(one.repeat(numel))
}

fn zeros(numel: usize, ty: DataType) -> Bytes {
    Bytes::from(vec![0u8; numel * if ty == DataType::Double { 8 } else { 4 }])
}

fn tensor(name: &str, dims: &[u64], ty: DataType, data: Bytes) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(ty as i32),
        raw_data: Some(data),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[u64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(v), ..Default::default() }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Float as i32), f: Some(v), ..Default::default() }
}

fn int64s(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(Bytes::from(v.as_bytes().to_vec())),
        ..Default::default()
    }
}

fn node(name: &str, op: &str, inputs: Vec<String>, output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs,
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, shape: Shape) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let mut dim = vec![Dimension { value: Some(Value::DimParam("N".into())), ..Default::default() }];
    dim.extend(shape.dims().into_iter().map(|d| Dimension { value: Some(Value::DimValue(d as i64)), ..Default::default() }));
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pads(p: &[ir::Pad; 2]) -> Vec<u64> {
    vec![p[0].begin, p[1].begin, p[0].end, p[1].end]
}

fn numel(dims: &[u64]) -> Result<usize, OnnxError> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?))
        .filter(|&n| n <= PROTOBUF_LIMIT)
        .ok_or_else(|| OnnxError::Model(format!("a tensor of shape {dims:?} is too large to write")))
}

/// Builds a runnable ONNX model of `graph`, with weights drawn from `plan` (which must be
/// the plan of `graph`: its layers are the graph's conv and linear nodes, in order).
pub fn export(graph: &ir::Graph, plan: &Plan, seed: u64) -> Result<ModelProto, OnnxError> {
    let weight_nodes = graph.nodes.iter().filter(|n| matches!(n.op, Op::Conv(_) | Op::Linear(_))).count();
    if weight_nodes != plan.layers.len() {
        return Err(OnnxError::Model(format!("the plan has {} layers but the graph {weight_nodes} weight nodes", plan.layers.len())));
    }
    super::budget::check_drawn_bytes(plan, |_| 4)?;
    let mut rng = Normal::new(seed);
    let mut layers = plan.layers.iter();
    let scales: std::collections::HashMap<&str, f64> =
        plan.batch_norms.iter().flatten().map(|b| (b.scale.name.as_str(), b.scale.value)).collect();
    let mut opset = OPSET;
    let mut g = GraphProto { name: Some(graph.name.clone()), input: vec![value_info("input", graph.input)], ..Default::default() };
    // ONNX name of each IR value: value 0 is "input".
    let mut names: Vec<String> = vec!["input".into()];
    // Nodes before this one are written by a `Split` of earlier nodes.
    let mut split_until = 0;
    let mut readers = vec![0usize; graph.nodes.len() + 1];
    for v in graph.nodes.iter().flat_map(|n| &n.inputs) {
        readers[v.0] += 1;
    }
    // How each value is written where it is not an (N, C, H, W) or (N, F) tensor.
    let mut views = vec![View::Plain; graph.nodes.len() + 1];
    for (k, n) in graph.nodes.iter().enumerate() {
        // The views only the attention ops' ONNX forms read.
        for (i, v) in n.inputs.iter().enumerate() {
            let ok = match views[v.0] {
                View::Plain => true,
                View::Row => matches!(n.op, Op::Conv(_) | Op::SwapChannelsWidth),
                View::PositionWeights => n.op == Op::AttentionPool && i == 1,
            };
            if !ok {
                return Err(OnnxError::Model(format!(
                    "node `{}` ({}) reads `{}`, which export-onnx writes only in the form {} reads",
                    n.name,
                    n.op.kind_name(),
                    names[v.0],
                    if views[v.0] == View::Row { "a 1-D conv or a swap back" } else { "an attention pool" }
                )));
            }
        }
        let mut input = names[n.inputs.first().map_or(0, |v| v.0)].clone();
        let out = if k + 1 == graph.nodes.len() { "output".to_string() } else { format!("v{}", k + 1) };
        let in_shape = graph.shape(n.inputs.first().copied().unwrap_or(ir::ValueId(0)));
        match &n.op {
            Op::Conv(c) if n.params.as_ref().is_some_and(|p| p.transposed) => {
                let l = layers.next().expect("counted above");
                // The zeros between the positions (stride s) are the ConvTranspose's own.
                let dilated = n.inputs[0].0.checked_sub(1).map(|d| &graph.nodes[d]).filter(|d| matches!(d.op, Op::Dilate { .. }));
                let stride = match dilated {
                    Some(d) => {
                        input = names[d.inputs[0].0].clone();
                        let Op::Dilate { stride } = d.op else { unreachable!("matched") };
                        stride
                    }
                    None => [1, 1],
                };
                let mut pads = [0; 4];
                let mut extra = [0; 2];
                for a in 0..2 {
                    let span = c.dilation[a] * (c.kernel[a] - 1);
                    let unwritable = || {
                        OnnxError::Model(format!(
                            "node `{}` (conv): a transposed conv padded {:?} by its span {span}: no ConvTranspose has it",
                            n.name, c.pad
                        ))
                    };
                    pads[a] = span.checked_sub(c.pad[a].begin).ok_or_else(unwritable)?;
                    // The end's padding, less what `output_padding` adds past the last input.
                    match span.checked_sub(c.pad[a].end) {
                        Some(end) => pads[a + 2] = end,
                        None if c.pad[a].end - span < stride[a].max(c.dilation[a]) => extra[a] = c.pad[a].end - span,
                        None => return Err(unwritable()),
                    }
                }
                let inputs = params(&mut g, &mut rng, l, input)?;
                let mut attrs = vec![
                    ints("kernel_shape", &c.kernel),
                    ints("strides", &stride),
                    ints("pads", &pads),
                    ints("dilations", &c.dilation),
                    int("group", c.groups as i64),
                ];
                if extra != [0, 0] {
                    attrs.push(ints("output_padding", &extra));
                }
                g.node.push(node(&n.name, "ConvTranspose", inputs, &out, attrs));
            }
            // A transposed conv's zeros: written by the ConvTranspose that reads them.
            Op::Dilate { .. }
                if readers[k + 1] == 1
                    && graph.nodes.get(k + 1).is_some_and(|r| {
                        r.inputs == [ir::ValueId(k + 1)] && matches!(r.op, Op::Conv(_)) && r.params.as_ref().is_some_and(|p| p.transposed)
                    }) => {}
            Op::Conv(c) => {
                let l = layers.next().expect("counted above");
                let mut inputs = params(&mut g, &mut rng, l, input)?;
                if let Some(st) = n.params.as_ref().and_then(|p| p.standardized.as_ref()) {
                    inputs[1] = standardize(&mut g, l, st, c.out_channels)?;
                }
                // A conv across the channels of efficient channel attention's row (a 3-D
                // (N, 1, C) value, its weight [out, in, k]) is a 1-D conv.
                let one_d = views[n.inputs[0].0] == View::Row;
                if one_d != (l.weight.shape.len() == 3) {
                    return Err(OnnxError::Model(format!(
                        "node `{}` (conv): a weight of shape {:?} on {}: export-onnx writes 1-D convs (3-D weights) across a swapped row only",
                        n.name,
                        l.weight.shape,
                        if one_d { "a swapped row" } else { "an image" }
                    )));
                }
                let attrs = if one_d {
                    views[k + 1] = View::Row;
                    vec![
                        ints("kernel_shape", &c.kernel[1..]),
                        ints("strides", &c.stride[1..]),
                        ints("pads", &[c.pad[1].begin, c.pad[1].end]),
                        ints("dilations", &c.dilation[1..]),
                        int("group", c.groups as i64),
                    ]
                } else {
                    vec![
                        ints("kernel_shape", &c.kernel),
                        ints("strides", &c.stride),
                        ints("pads", &pads(&c.pad)),
                        ints("dilations", &c.dilation),
                        int("group", c.groups as i64),
                    ]
                };
                g.node.push(node(&n.name, "Conv", inputs, &out, attrs));
            }
            Op::Linear(_) => {
                let l = layers.next().expect("counted above");
                if let Shape::Image { .. } = in_shape {
                    let flat = format!("v{}.flat", k + 1);
                    g.node.push(node(&format!("{}.flatten", n.name), "Flatten", vec![input], &flat, vec![int("axis", 1)]));
                    input = flat;
                }
                let inputs = params(&mut g, &mut rng, l, input)?;
                g.node.push(node(&n.name, "Gemm", inputs, &out, vec![int("transB", 1)]));
            }
            Op::Activation(a) => {
                let f = ir::Expr::Apply(ir::Fn1::Act(*a), Box::new(ir::Expr::X));
                ExprWriter { g: &mut g, opset: &mut opset, name: &n.name, out: &out, count: 0 }.write(&f, &input, true)?;
            }
            Op::Pool(p) => {
                let mut attrs = vec![
                    ints("kernel_shape", &p.kernel),
                    ints("strides", &p.stride),
                    ints("pads", &pads(&p.pad)),
                    int("ceil_mode", p.ceil_mode as i64),
                ];
                let op = match p.kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg => {
                        attrs.push(int("count_include_pad", p.count_include_pad as i64));
                        "AveragePool"
                    }
                };
                g.node.push(node(&n.name, op, vec![input], &out, attrs));
            }
            Op::GlobalPool(kind) => {
                let op = if *kind == PoolKind::Max { "GlobalMaxPool" } else { "GlobalAveragePool" };
                g.node.push(node(&n.name, op, vec![input], &out, vec![]));
            }
            // A global pooling and the flatten of it under one name are one ONNX reduction
            // (`ReduceMean` with keepdims 0, as the importer read them): two nodes would
            // share the name.
            Op::Flatten if k > 0 && n.inputs == [ir::ValueId(k)] && readers[k] == 1 && graph.nodes[k - 1].name == n.name => {
                let pool = g.node.last_mut().expect("the pooling before it");
                let op = if graph.nodes[k - 1].op == Op::GlobalPool(PoolKind::Max) { "ReduceMax" } else { "ReduceMean" };
                if !matches!(graph.nodes[k - 1].op, Op::GlobalPool(_)) {
                    return Err(OnnxError::Model(format!("node `{}` and the node before it share their name", n.name)));
                }
                pool.op_type = Some(op.into());
                pool.attribute = vec![ints("axes", &[2, 3]), int("keepdims", 0)];
                pool.output = vec![out.clone()];
            }
            Op::Flatten => g.node.push(node(&n.name, "Flatten", vec![input], &out, vec![int("axis", 1)])),
            Op::Add => {
                let inputs: Vec<String> = n.inputs.iter().map(|v| names[v.0].clone()).collect();
                let op = if inputs.len() == 2 { "Add" } else { "Sum" };
                g.node.push(node(&n.name, op, inputs, &out, vec![]));
            }
            Op::Concat => {
                let inputs: Vec<String> = n.inputs.iter().map(|v| names[v.0].clone()).collect();
                g.node.push(node(&n.name, "Concat", inputs, &out, vec![int("axis", 1)]));
            }
            Op::Mul => {
                let inputs: Vec<String> = n.inputs.iter().map(|v| names[v.0].clone()).collect();
                g.node.push(node(&n.name, "Mul", inputs, &out, vec![]));
            }
            // Written by the `Split` of the slice before it.
            Op::ChannelSlice { .. } if k < split_until => {}
            // Consecutive slices under one name that cut their input into parts, in
            // order, are one ONNX `Split` (as the importer read them): two nodes would
            // share the name.
            Op::ChannelSlice { start: 0, .. } if split_parts(graph, k).is_some() => {
                let parts = split_parts(graph, k).expect("checked");
                let sizes = format!("v{}.split", k + 1);
                g.initializer.push(int64s(&sizes, &parts.iter().map(|&p| p as i64).collect::<Vec<_>>()));
                let outputs: Vec<String> = (k..k + parts.len())
                    .map(|j| if j + 1 == graph.nodes.len() { "output".to_string() } else { format!("v{}", j + 1) })
                    .collect();
                let mut split = node(&n.name, "Split", vec![input, sizes], &out, vec![int("axis", 1)]);
                split.output = outputs;
                g.node.push(split);
                split_until = k + parts.len();
            }
            Op::ChannelSlice { start, end } => {
                let int64 = |name: String, v: i64| TensorProto {
                    name: Some(name),
                    dims: vec![1],
                    data_type: Some(DataType::Int64 as i32),
                    int64_data: vec![v],
                    ..Default::default()
                };
                let [starts, ends, axes] = ["starts", "ends", "axes"].map(|p| format!("v{}.{p}", k + 1));
                g.initializer.extend([int64(starts.clone(), *start as i64), int64(ends.clone(), *end as i64), int64(axes.clone(), 1)]);
                g.node.push(node(&n.name, "Slice", vec![input, starts, ends, axes], &out, vec![]));
            }
            Op::Elementwise(e) => {
                ExprWriter { g: &mut g, opset: &mut opset, name: &n.name, out: &out, count: 0 }.write(e, &input, true)?;
            }
            Op::Resize { scale, linear } => {
                // Whole factors: nearest as each input's own block (asymmetric, floor: the
                // form the importer reads back as this op), linear as PyTorch's
                // `align_corners=False` (half-pixel).
                let (transform, nearest) = if *linear {
                    (ir::CoordTransform::HalfPixel, ir::NearestMode::Floor)
                } else {
                    (ir::CoordTransform::Asymmetric, ir::NearestMode::Floor)
                };
                let r = ir::Resample { linear: *linear, transform, nearest, scale: scale.map(|s| s as f64) };
                let node = resize(&mut g, &mut opset, k, &n.name, input, &r, [in_shape, n.output], &out)?;
                g.node.push(node);
            }
            Op::Shuffle { groups } => {
                // torch's form: (N, g, C/g, H, W), the two group axes swapped, and back.
                let (c, h, w) = in_shape.chw();
                let (g5, g5t, s5, s4) =
                    (format!("{out}.grouped"), format!("{out}.swapped"), format!("{out}.shape5"), format!("{out}.shape4"));
                let (gi, ci, hi, wi) = (*groups as i64, c as i64, h as i64, w as i64);
                g.initializer.extend([int64s(&s5, &[-1, gi, ci / gi, hi, wi]), int64s(&s4, &[-1, ci, hi, wi])]);
                g.node.push(node(&format!("{}.view", n.name), "Reshape", vec![input, s5], &g5, vec![]));
                g.node.push(node(&format!("{}.swap", n.name), "Transpose", vec![g5], &g5t, vec![ints("perm", &[0, 2, 1, 3, 4])]));
                g.node.push(node(&n.name, "Reshape", vec![g5t, s4], &out, vec![]));
            }
            Op::BatchNorm(bn) if bn.groups.is_some() => {
                let module = bn.module(&n.name);
                let c = bn.channels;
                if bn.scale.is_empty() {
                    return Err(OnnxError::Model(format!(
                        "node `{}` ({}): export-onnx writes normalizations with γ (ONNX's group, instance and layer norms take a scale)",
                        n.name,
                        bn.mode()
                    )));
                }
                let value =
                    *scales.get(bn.scale.as_str()).ok_or_else(|| OnnxError::Model(format!("the plan has no scale `{}`", bn.scale)))?;
                let numel_affine = numel(&bn.affine)?;
                g.initializer.push(tensor(&bn.scale, &bn.affine, DataType::Float, constant(numel_affine, value, DataType::Float)));
                let mut inputs = vec![input.clone(), bn.scale.clone()];
                if !bn.shift.is_empty() {
                    g.initializer.push(tensor(&bn.shift, &bn.affine, DataType::Float, zeros(numel_affine, DataType::Float)));
                    inputs.push(bn.shift.clone());
                }
                let eps = float("epsilon", bn.epsilon as f32);
                let groups = bn.groups.expect("matched");
                let (_, h, w) = in_shape.chw();
                let needs_shift = |what: &str| {
                    if bn.shift.is_empty() {
                        Err(OnnxError::Model(format!(
                            "node `{}` ({what}): export-onnx writes it with β (ONNX's {what} takes a bias)",
                            n.name
                        )))
                    } else {
                        Ok(())
                    }
                };
                if bn.per_position {
                    // ConvNeXt's: a LayerNorm over the channels of a channels-last view.
                    let (last, normed) = (format!("{out}.channels_last"), format!("{out}.normed"));
                    opset = opset.max(17);
                    inputs[0] = last.clone();
                    g.node.push(node(
                        &format!("{module}.to_channels_last"),
                        "Transpose",
                        vec![input],
                        &last,
                        vec![ints("perm", &[0, 2, 3, 1])],
                    ));
                    g.node.push(node(&n.name, "LayerNormalization", inputs, &normed, vec![int("axis", -1), eps]));
                    g.node.push(node(
                        &format!("{module}.to_channels_first"),
                        "Transpose",
                        vec![normed],
                        &out,
                        vec![ints("perm", &[0, 3, 1, 2])],
                    ));
                } else if groups == 1 && bn.affine == [c, h, w] {
                    opset = opset.max(17);
                    g.node.push(node(&n.name, "LayerNormalization", inputs, &out, vec![int("axis", 1), eps]));
                } else if groups == c && c > 1 && bn.affine == [c] {
                    needs_shift("InstanceNormalization")?;
                    g.node.push(node(&n.name, "InstanceNormalization", inputs, &out, vec![eps]));
                } else if bn.affine == [c] {
                    // Opset 21's GroupNormalization: γ and β per channel.
                    needs_shift("GroupNormalization")?;
                    opset = opset.max(21);
                    g.node.push(node(&n.name, "GroupNormalization", inputs, &out, vec![int("num_groups", groups as i64), eps]));
                } else {
                    return Err(OnnxError::Model(format!(
                        "node `{}` ({}): export-onnx does not write γ and β of shape {:?} for it",
                        n.name,
                        bn.mode(),
                        bn.affine
                    )));
                }
            }
            Op::RadixSoftmax { radix, groups } => {
                // Split attention's rSoftMax as torch writes it: (N, groups, radix, −1),
                // the two middle axes swapped, a Softmax over the radix, back to (N, C, 1, 1).
                let [view, swapped, soft, shape4] = ["view", "swapped", "softmax", "shape4"].map(|s| format!("{out}.{s}"));
                let view_shape = format!("{out}.view_shape");
                g.initializer.extend([int64s(&view_shape, &[0, *groups as i64, *radix as i64, -1]), int64s(&shape4, &[0, -1, 1, 1])]);
                g.node.push(node(&format!("{}.view", n.name), "Reshape", vec![input, view_shape], &view, vec![]));
                g.node.push(node(&format!("{}.swap", n.name), "Transpose", vec![view], &swapped, vec![ints("perm", &[0, 2, 1, 3])]));
                g.node.push(node(&n.name, "Softmax", vec![swapped], &soft, vec![int("axis", 1)]));
                g.node.push(node(&format!("{}.back", n.name), "Reshape", vec![soft, shape4], &out, vec![]));
            }
            Op::AddBroadcast => {
                let inputs: Vec<String> = n.inputs.iter().map(|v| names[v.0].clone()).collect();
                g.node.push(node(&n.name, "Add", inputs, &out, vec![]));
            }
            Op::SoftmaxPositions => {
                // Global-context attention's mask (N, 1, H·W), a Softmax over the positions:
                // what its attention pool reads.
                if in_shape.chw().0 != 1 {
                    return Err(OnnxError::Model(format!(
                        "node `{}` (softmax over the positions) of {in_shape}: export-onnx writes it of a 1-channel mask",
                        n.name
                    )));
                }
                let (flat, shape) = (format!("{out}.flat"), format!("{out}.shape"));
                g.initializer.push(int64s(&shape, &[0, 1, -1]));
                g.node.push(node(&format!("{}.view", n.name), "Reshape", vec![input, shape], &flat, vec![]));
                g.node.push(node(&n.name, "Softmax", vec![flat], &out, vec![int("axis", 2)]));
                views[k + 1] = View::PositionWeights;
            }
            Op::AttentionPool => {
                // x viewed (N, 1, C, H·W) times the weights as a column (N, 1, H·W, 1),
                // back to (N, C, 1, 1).
                let c = in_shape.chw().0 as i64;
                if views[n.inputs[1].0] != View::PositionWeights {
                    return Err(OnnxError::Model(format!(
                        "node `{}` (attention pool): export-onnx writes it with weights from a softmax over the positions",
                        n.name
                    )));
                }
                let [flat, values, column, pooled] = ["flat", "values", "column", "pooled"].map(|s| format!("{out}.{s}"));
                let [flat_shape, one, last, shape4] = ["flat_shape", "axis1", "axis_last", "shape4"].map(|s| format!("{out}.{s}"));
                g.initializer.extend([
                    int64s(&flat_shape, &[0, c, -1]),
                    int64s(&one, &[1]),
                    int64s(&last, &[-1]),
                    int64s(&shape4, &[0, c, 1, 1]),
                ]);
                let weights = names[n.inputs[1].0].clone();
                g.node.push(node(&format!("{}.view", n.name), "Reshape", vec![input, flat_shape], &flat, vec![]));
                g.node.push(node(&format!("{}.values", n.name), "Unsqueeze", vec![flat, one], &values, vec![]));
                g.node.push(node(&format!("{}.column", n.name), "Unsqueeze", vec![weights, last], &column, vec![]));
                g.node.push(node(&n.name, "MatMul", vec![values, column], &pooled, vec![]));
                g.node.push(node(&format!("{}.back", n.name), "Reshape", vec![pooled, shape4], &out, vec![]));
            }
            Op::SwapChannelsWidth => {
                // Efficient channel attention's pooled vector (N, C, 1, 1) squeezed to
                // (N, C, 1) and transposed to a row (N, 1, C); a row transposed and
                // unsqueezed back.
                let swapped = format!("{out}.swapped");
                let axis = format!("{out}.axis");
                g.initializer.push(int64s(&axis, &[3]));
                if views[n.inputs[0].0] == View::Row {
                    g.node.push(node(&n.name, "Transpose", vec![input], &swapped, vec![ints("perm", &[0, 2, 1])]));
                    g.node.push(node(&format!("{}.back", n.name), "Unsqueeze", vec![swapped, axis], &out, vec![]));
                } else if in_shape.chw().1 == 1 && in_shape.chw().2 == 1 {
                    let squeezed = format!("{out}.squeezed");
                    g.node.push(node(&format!("{}.squeeze", n.name), "Squeeze", vec![input, axis], &squeezed, vec![]));
                    g.node.push(node(&n.name, "Transpose", vec![squeezed], &out, vec![ints("perm", &[0, 2, 1])]));
                    views[k + 1] = View::Row;
                } else {
                    return Err(OnnxError::Model(format!(
                        "node `{}` (swap) of {in_shape}: export-onnx writes the swap of a pooled vector (C, 1, 1) and back",
                        n.name
                    )));
                }
            }
            Op::Resample(r) => {
                let node = resize(&mut g, &mut opset, k, &n.name, input, r, [in_shape, n.output], &out)?;
                g.node.push(node);
            }
            Op::BatchNorm(bn) if bn.groups.is_none() && !bn.per_position => {
                let c = bn.channels;
                let module = bn.scale.strip_suffix(".weight").map_or_else(|| n.name.clone(), str::to_string);
                let value = if bn.scale.is_empty() {
                    1.0
                } else {
                    *scales.get(bn.scale.as_str()).ok_or_else(|| OnnxError::Model(format!("the plan has no scale `{}`", bn.scale)))?
                };
                let named = |given: &str, role: &str| if given.is_empty() { format!("{module}.{role}") } else { given.to_string() };
                let (scale, shift) = (named(&bn.scale, "weight"), named(&bn.shift, "bias"));
                let (mean, var) = (format!("{module}.running_mean"), format!("{module}.running_var"));
                let n_c = numel(&[c])?;
                g.initializer.extend([
                    tensor(&scale, &[c], DataType::Float, constant(n_c, value, DataType::Float)),
                    tensor(&shift, &[c], DataType::Float, zeros(n_c, DataType::Float)),
                    tensor(&mean, &[c], DataType::Float, zeros(n_c, DataType::Float)),
                    tensor(&var, &[c], DataType::Float, constant(n_c, 1.0, DataType::Float)),
                ]);
                // PyTorch's momentum 0.1 is ONNX's 0.9; training mode needs opset 14.
                let mut attrs = vec![float("epsilon", bn.epsilon as f32), float("momentum", 0.9)];
                if bn.training {
                    attrs.push(int("training_mode", 1));
                    opset = opset.max(15);
                }
                let mut bn_node = node(&n.name, "BatchNormalization", vec![input, scale, shift, mean, var], &out, attrs);
                if bn.training {
                    // Training mode has three outputs (the updated running statistics, as
                    // torch exports them); with one, the model is not valid ONNX and
                    // onnxruntime refuses it.
                    bn_node.output.extend([format!("{out}.running_mean"), format!("{out}.running_var")]);
                }
                g.node.push(bn_node);
            }
            other => {
                return Err(OnnxError::Model(format!(
                    "node `{}` ({}): export-onnx does not write this node yet",
                    n.name,
                    other.kind_name()
                )))
            }
        }
        names.push(out);
    }
    if opset >= 18 {
        axes_as_inputs(&mut g);
    }
    let last = graph.nodes.last().map_or(graph.input, |n| n.output);
    g.output = vec![value_info(names.last().expect("value 0 exists"), last)];
    Ok(ModelProto {
        // The IR version each opset needs past 13: 18 → 8, 19 and 20 → 9, 21 → 10.
        ir_version: Some(match opset {
            21.. => 10,
            19.. => 9,
            18.. => 8,
            _ => IR_VERSION,
        }),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
        producer_name: Some("cnnc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("weights drawn from a cnnc plan: mode {}, seed {seed}", plan.mode)),
        graph: Some(g),
        ..Default::default()
    })
}

/// Writes an element-wise function f(input) as ONNX nodes: each named function as its
/// operator (GELU as opset 20's `Gelu`, hard-swish opset 14's, mish opset 18's, SiLU as
/// x · Sigmoid(x), the form the importer reads back as SiLU), constants as float32 scalar
/// initializers, arithmetic as Add/Sub/Mul/Div. The node that computes f's value is named
/// `name` and writes `out`; the nodes before it `name.e1`, `name.e2`, …
struct ExprWriter<'a> {
    g: &'a mut GraphProto,
    opset: &'a mut i64,
    name: &'a str,
    out: &'a str,
    count: usize,
}

impl ExprWriter<'_> {
    /// The value name of `e` (of the data value `x`); `last`: e is f itself.
    fn write(&mut self, e: &ir::Expr, x: &str, last: bool) -> Result<String, OnnxError> {
        use ir::{Expr, Fn1};
        let value = match e {
            Expr::X if last => return self.push("Identity", vec![x.to_string()], vec![], true),
            Expr::X => return Ok(x.to_string()),
            Expr::Const(c) if last => {
                return Err(OnnxError::Model(format!("node `{}`: the element-wise function is the constant {c}", self.name)))
            }
            Expr::Const(c) => {
                self.count += 1;
                let name = format!("{}.c{}", self.out, self.count);
                self.g.initializer.push(tensor(&name, &[], DataType::Float, Bytes::from((*c as f32).to_le_bytes().to_vec())));
                return Ok(name);
            }
            Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) => {
                let op = match e {
                    Expr::Add(..) => "Add",
                    Expr::Sub(..) => "Sub",
                    Expr::Mul(..) => "Mul",
                    _ => "Div",
                };
                let inputs = vec![self.write(a, x, false)?, self.write(b, x, false)?];
                return self.push(op, inputs, vec![], last);
            }
            Expr::Apply(f, inner) => (f, self.write(inner, x, false)?),
        };
        let (f, v) = value;
        let (op, attrs, opset) = match f {
            Fn1::Act(Activation::Silu) => {
                let s = self.push("Sigmoid", vec![v.clone()], vec![], false)?;
                return self.push("Mul", vec![v, s], vec![], last);
            }
            Fn1::Act(Activation::Identity) => ("Identity", vec![], 13),
            Fn1::Act(Activation::Relu) => ("Relu", vec![], 13),
            Fn1::Act(Activation::LeakyRelu { slope }) => ("LeakyRelu", vec![float("alpha", *slope as f32)], 13),
            Fn1::Act(Activation::Tanh) => ("Tanh", vec![], 13),
            Fn1::Act(Activation::Sigmoid) => ("Sigmoid", vec![], 13),
            Fn1::Act(Activation::Gelu) => ("Gelu", vec![], 20),
            Fn1::Clip { min, max } => {
                // Clip's bounds are optional inputs: an infinite one is left out ("").
                let mut inputs = vec![v];
                for (what, b) in [("min", *min), ("max", *max)] {
                    if b.is_finite() {
                        let name = format!("{}.{what}", self.out);
                        self.g.initializer.push(tensor(&name, &[], DataType::Float, Bytes::from((b as f32).to_le_bytes().to_vec())));
                        inputs.push(name);
                    } else {
                        inputs.push(String::new());
                    }
                }
                while inputs.last().is_some_and(String::is_empty) {
                    inputs.pop();
                }
                return self.push("Clip", inputs, vec![], last);
            }
            Fn1::HardSigmoid { alpha, beta } => ("HardSigmoid", vec![float("alpha", *alpha as f32), float("beta", *beta as f32)], 13),
            Fn1::HardSwish => ("HardSwish", vec![], 14),
            Fn1::Elu { alpha } => ("Elu", vec![float("alpha", *alpha as f32)], 13),
            Fn1::Softplus => ("Softplus", vec![], 13),
            Fn1::Mish => ("Mish", vec![], 18),
            Fn1::Erf => ("Erf", vec![], 13),
            Fn1::Exp => ("Exp", vec![], 13),
            Fn1::Neg => ("Neg", vec![], 13),
            Fn1::Abs => ("Abs", vec![], 13),
            Fn1::Sqrt => ("Sqrt", vec![], 13),
        };
        *self.opset = (*self.opset).max(opset);
        self.push(op, vec![v], attrs, last)
    }

    /// A node of `op`; the last one is `name` writing `out`, the others numbered.
    fn push(&mut self, op: &str, inputs: Vec<String>, attrs: Vec<AttributeProto>, last: bool) -> Result<String, OnnxError> {
        let (name, out) = if last {
            (self.name.to_string(), self.out.to_string())
        } else {
            self.count += 1;
            (format!("{}.e{}", self.name, self.count), format!("{}.e{}", self.out, self.count))
        };
        self.g.node.push(node(&name, op, inputs, &out, attrs));
        Ok(out)
    }
}

/// Writes the standardization of the weight of `l` (drawn already) as the TorchScript
/// exporter writes BiT's and NF-ResNets' convs: ReduceMean over the filter, Sub, Mul,
/// ReduceMean, Add ε, Sqrt, Div; then the per-filter gain parameter, at the plan's value
/// (so that the network applies the plan's gain), and the constant factor. Returns the
/// name of the weight the conv reads.
fn standardize(g: &mut GraphProto, l: &PlanLayer, st: &ir::Standardized, filters: u64) -> Result<String, OnnxError> {
    let v = l.weight.name.clone();
    let at = |step: &str| format!("{v}.{step}");
    let scalar = |name: String, x: f64| tensor(&name, &[], DataType::Float, Bytes::from((x as f32).to_le_bytes().to_vec()));
    let mean = vec![ints("axes", &[1, 2, 3]), int("keepdims", 1)];
    g.initializer.push(scalar(at("epsilon"), st.epsilon));
    g.node.extend([
        node(&at("mean"), "ReduceMean", vec![v.clone()], &at("mean"), mean.clone()),
        node(&at("centered"), "Sub", vec![v.clone(), at("mean")], &at("centered"), vec![]),
        node(&at("square"), "Mul", vec![at("centered"), at("centered")], &at("square"), vec![]),
        node(&at("var"), "ReduceMean", vec![at("square")], &at("var"), mean),
        node(&at("var_eps"), "Add", vec![at("var"), at("epsilon")], &at("var_eps"), vec![]),
        node(&at("std"), "Sqrt", vec![at("var_eps")], &at("std"), vec![]),
        node(&at("standardized"), "Div", vec![at("centered"), at("std")], &at("standardized"), vec![]),
    ]);
    let mut w = at("standardized");
    let factor = match &st.gain_param {
        Some((name, init)) => {
            let planned = l.standardized.as_ref().and_then(|i| i.gain_param.as_ref()).filter(|p| p.name == *name);
            let value = planned.ok_or_else(|| OnnxError::Model(format!("the plan has no value of the gain `{name}`")))?.value;
            let n = numel(&[filters])?;
            g.initializer.push(tensor(name, &[filters, 1, 1, 1], DataType::Float, constant(n, value, DataType::Float)));
            g.node.push(node(&at("gained"), "Mul", vec![w, name.clone()], &at("gained"), vec![]));
            w = at("gained");
            st.gain / init
        }
        None => st.gain,
    };
    if factor != 1.0 {
        g.initializer.push(scalar(at("factor"), factor));
        g.node.push(node(&at("scaled"), "Mul", vec![w, at("factor")], &at("scaled"), vec![]));
        w = at("scaled");
    }
    Ok(w)
}

/// Opset 18 takes a reduction's axes as an input, not an attribute: rewrites the
/// reductions of `g` so.
fn axes_as_inputs(g: &mut GraphProto) {
    let mut extra = Vec::new();
    for n in g.node.iter_mut().filter(|n| matches!(n.op_type(), "ReduceMean" | "ReduceMax")) {
        let Some(k) = n.attribute.iter().position(|a| a.name() == "axes") else { continue };
        let axes = n.attribute.remove(k);
        let name = format!("{}.axes", n.output[0]);
        extra.push(int64s(&name, &axes.ints));
        n.input.push(name);
    }
    g.initializer.extend(extra);
}

/// The channels of each part where nodes `k…` are two or more channel slices of one
/// value under one name that cut all its channels, in order (`Split`'s outputs).
fn split_parts(graph: &ir::Graph, k: usize) -> Option<Vec<u64>> {
    let first = &graph.nodes[k];
    let channels = graph.shape(*first.inputs.first()?).chw().0;
    let mut parts = Vec::new();
    let mut at = 0;
    for n in &graph.nodes[k..] {
        match n.op {
            Op::ChannelSlice { start, end } if start == at && n.name == first.name && n.inputs == first.inputs => {
                parts.push(end - start);
                at = end;
            }
            _ => break,
        }
        if at == channels {
            break;
        }
    }
    (at == channels && parts.len() > 1).then_some(parts)
}

/// An ONNX `Resize` of `r` from `shapes[0]` to `shapes[1]`, its `scales` or `sizes`
/// initializer added to `g`: `scales` (opset 13) where the scale is a float32 (as the
/// importer read it) that gives the output size, else `sizes` of the spatial `axes`
/// (opset 18: the batch size is symbolic) where the scale is output/input (ONNX's scale
/// then); the coordinate transform and the nearest rounding written out.
#[allow(clippy::too_many_arguments)]
fn resize(
    g: &mut GraphProto,
    opset: &mut i64,
    k: usize,
    name: &str,
    input: String,
    r: &ir::Resample,
    shapes: [Shape; 2],
    out: &str,
) -> Result<NodeProto, OnnxError> {
    let ((_, h, w), (_, oh, ow)) = (shapes[0].chw(), shapes[1].chw());
    let at = format!("v{}", k + 1);
    let gives = |i: u64, s: f64, o: u64| s as f32 as f64 == s && (i as f64 * s).floor() == o as f64;
    // X, roi (none), then `scales`, or none and `sizes`.
    let mut attrs = Vec::new();
    let inputs = if gives(h, r.scale[0], oh) && gives(w, r.scale[1], ow) {
        let bytes: Vec<u8> = [1.0, 1.0, r.scale[0], r.scale[1]].iter().flat_map(|&s| (s as f32).to_le_bytes()).collect();
        g.initializer.push(tensor(&format!("{at}.scales"), &[4], DataType::Float, Bytes::from(bytes)));
        vec![input, String::new(), format!("{at}.scales")]
    } else if r.scale == [oh as f64 / h as f64, ow as f64 / w as f64] {
        g.initializer.push(TensorProto {
            name: Some(format!("{at}.sizes")),
            dims: vec![2],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![oh as i64, ow as i64],
            ..Default::default()
        });
        attrs.push(ints("axes", &[2, 3]));
        *opset = (*opset).max(18);
        vec![input, String::new(), String::new(), format!("{at}.sizes")]
    } else {
        return Err(OnnxError::Model(format!(
            "node `{name}` (resample): scale {:?} from {} to {} is neither output/input nor a float32 that gives the output size, which ONNX `Resize` cannot write",
            r.scale, shapes[0], shapes[1]
        )));
    };
    let transform = match r.transform {
        ir::CoordTransform::HalfPixel => "half_pixel",
        ir::CoordTransform::PytorchHalfPixel => "pytorch_half_pixel",
        ir::CoordTransform::AlignCorners => "align_corners",
        ir::CoordTransform::Asymmetric => "asymmetric",
        ir::CoordTransform::TfHalfPixelForNn => "tf_half_pixel_for_nn",
    };
    let nearest = match r.nearest {
        ir::NearestMode::RoundPreferFloor => "round_prefer_floor",
        ir::NearestMode::RoundPreferCeil => "round_prefer_ceil",
        ir::NearestMode::Floor => "floor",
        ir::NearestMode::Ceil => "ceil",
    };
    attrs.extend([
        string("mode", if r.linear { "linear" } else { "nearest" }),
        string("coordinate_transformation_mode", transform),
        string("nearest_mode", nearest),
    ]);
    Ok(node(name, "Resize", inputs, out, attrs))
}

/// How [`export`] writes a value other than as the IR's (N, C, H, W) or (N, F) tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
enum View {
    Plain,
    /// Efficient channel attention's swapped row (A, 1, B) as (N, A, B): what a 1-D conv
    /// and the swap back read.
    Row,
    /// Global-context attention's softmax over the positions of a 1-channel map, as
    /// (N, 1, H·W): what its attention pool reads.
    PositionWeights,
}

/// Adds the layer's weight and bias initializers; returns the node's inputs.
fn params(g: &mut GraphProto, rng: &mut Normal, l: &PlanLayer, input: String) -> Result<Vec<String>, OnnxError> {
    let w = &l.weight;
    g.initializer.push(tensor(&w.name, &w.shape, DataType::Float, fill(rng, numel(&w.shape)?, w.std, DataType::Float)));
    let mut inputs = vec![input, w.name.clone()];
    if let Some(b) = &l.bias {
        g.initializer.push(tensor(&b.name, &b.shape, DataType::Float, zeros(numel(&b.shape)?, DataType::Float)));
        inputs.push(b.name.clone());
    }
    Ok(inputs)
}

/// Encodes a model; fails past protobuf's 2 GiB limit.
pub fn encode(model: &ModelProto) -> Result<Vec<u8>, OnnxError> {
    let len = model.encoded_len();
    if len > PROTOBUF_LIMIT {
        return Err(OnnxError::Model(format!(
            "the model takes {len} bytes, past protobuf's 2 GiB limit (write it with `write_model`, which moves large tensors to external data)"
        )));
    }
    Ok(model.encode_to_vec())
}

/// Tensors at least this large go to the external data file when a model is too large
/// to encode inline.
const EXTERNAL_MIN: usize = 1024;

/// Writes `model` to `path` atomically. When its encoding would exceed `limit` bytes
/// (protobuf's 2 GiB with [`PROTOBUF_LIMIT`]; smaller in tests), the raw data of every
/// initializer of at least 1 KiB moves to `<file name>.data` beside it, the ONNX external
/// data layout (`location` relative to the model, `offset`, `length`).
pub fn write_model(mut model: ModelProto, path: &std::path::Path, limit: Option<usize>) -> Result<(), OnnxError> {
    use super::proto::{tensor_proto::DataLocation, StringStringEntryProto};
    let limit = limit.unwrap_or(PROTOBUF_LIMIT);
    if model.encoded_len() > limit {
        if crate::output::is_stdout(path) {
            return Err(OnnxError::Model(format!(
                "the model's encoding exceeds {limit} bytes and needs an external data file beside it: name a file, not standard output"
            )));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".into());
        let location = format!("{name}.data");
        let data_path = path.with_file_name(&location);
        crate::output::write_atomic_with(&data_path, |out| {
            let mut offset = 0usize;
            for t in model.graph.iter_mut().flat_map(|g| g.initializer.iter_mut()) {
                let Some(raw) = t.raw_data.take_if(|r| r.len() >= EXTERNAL_MIN) else { continue };
                out.write_all(&raw)?;
                let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
                t.external_data =
                    vec![entry("location", location.clone()), entry("offset", offset.to_string()), entry("length", raw.len().to_string())];
                t.data_location = Some(DataLocation::External as i32);
                offset += raw.len();
            }
            Ok(())
        })
        .map_err(|source| OnnxError::Write { path: data_path.display().to_string(), source })?;
    }
    let bytes = encode(&model)?;
    crate::write_atomic(path, &bytes).map_err(|source| OnnxError::Write { path: path.display().to_string(), source })
}

/// Redraws the initializers that `plan` names (weights from N(0, std²), biases zero; a
/// graph plan's normalization scales γ at their value and shifts β zero, and the running
/// mean and variance of each `BatchNormalization` that reads such a γ set to 0 and 1, the
/// statistics the plan assumes), keeping their dims and float type; every other part of
/// `model` is left as it was.
pub fn reinit(model: &mut ModelProto, plan: &Plan, seed: u64) -> Result<(), OnnxError> {
    let g = model.graph.as_mut().ok_or_else(|| OnnxError::Decode("the model has no graph".into()))?;
    let double = |name: &str| g.initializer.iter().any(|t| t.name() == name && t.data_type() == DataType::Double as i32);
    super::budget::check_drawn_bytes(plan, |name| if double(name) { 8 } else { 4 })?;
    let mut rng = Normal::new(seed);
    for l in &plan.layers {
        set(g, &l.weight.name, Fill::Normal(&mut rng, l.weight.std))?;
        if let Some(b) = &l.bias {
            set(g, &b.name, Fill::Const(0.0))?;
        }
    }
    for b in plan.batch_norms.iter().flatten() {
        set(g, &b.scale.name, Fill::Const(b.scale.value))?;
        if !b.shift.name.is_empty() {
            set(g, &b.shift.name, Fill::Const(0.0))?;
        }
        let running: Vec<(String, String)> = g
            .node
            .iter()
            .filter(|n| n.op_type() == "BatchNormalization" && n.input.get(1) == Some(&b.scale.name) && n.input.len() >= 5)
            .map(|n| (n.input[3].clone(), n.input[4].clone()))
            .collect();
        for (mean, var) in running {
            set(g, &mean, Fill::Const(0.0))?;
            set(g, &var, Fill::Const(1.0))?;
        }
    }
    Ok(())
}

/// What [`set`] writes.
enum Fill<'a> {
    Normal(&'a mut Normal, f64),
    Const(f64),
}

/// Rewrites initializer `name` with normal samples or a constant.
fn set(g: &mut GraphProto, name: &str, fill_with: Fill<'_>) -> Result<(), OnnxError> {
    let (dims, ty, slot) = match g.initializer.iter().position(|t| t.name() == name) {
        Some(k) => {
            let t = &g.initializer[k];
            let ty = match DataType::try_from(t.data_type()) {
                Ok(DataType::Float) => DataType::Float,
                Ok(DataType::Double) => DataType::Double,
                Ok(other) => {
                    return Err(OnnxError::Model(format!(
                        "initializer `{name}` has type {}: cnnc writes float and double weights",
                        other.as_str_name()
                    )))
                }
                Err(_) => return Err(OnnxError::Model(format!("initializer `{name}` has an unknown data type {}", t.data_type()))),
            };
            (t.dims.clone(), ty, Some(k))
        }
        None => {
            use tensor_shape_proto::dimension::Value;
            let vi = g
                .input
                .iter()
                .find(|v| v.name() == name)
                .ok_or_else(|| OnnxError::Model(format!("the model has no initializer `{name}`")))?;
            let dims = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(t)) => t.shape.as_ref().map(|s| {
                    s.dim.iter().map(|d| if let Some(Value::DimValue(v)) = d.value { Some(v) } else { None }).collect::<Option<Vec<i64>>>()
                }),
                _ => None,
            };
            let dims = dims.flatten().ok_or_else(|| OnnxError::Model(format!("the graph input `{name}` has no static shape")))?;
            (dims, DataType::Float, None)
        }
    };
    let udims: Vec<u64> = dims.iter().map(|&d| d.max(0) as u64).collect();
    let n = numel(&udims)?;
    let data = match fill_with {
        Fill::Normal(rng, std) => fill(rng, n, std, ty),
        Fill::Const(0.0) => zeros(n, ty),
        Fill::Const(v) => constant(n, v, ty),
    };
    match slot {
        Some(k) => {
            let old = &mut g.initializer[k];
            let fresh = TensorProto {
                name: old.name.take(),
                dims,
                data_type: Some(ty as i32),
                raw_data: Some(data),
                doc_string: old.doc_string.take(),
                ..Default::default()
            };
            *old = fresh;
        }
        None => g.initializer.push(TensorProto {
            name: Some(name.into()),
            dims,
            data_type: Some(ty as i32),
            raw_data: Some(data),
            ..Default::default()
        }),
    }
    Ok(())
}
