//! Constant folding of ONNX shape arithmetic.
//!
//! In: one node whose inputs are all known constants (initializers that carry their values,
//! `Constant` nodes, results folded before), as [`Tensor`]s; for `Shape`, the dims of its
//! data input ([`shape_op`]). Out: the node's single output as a [`Tensor`]. The importer
//! folds every such node before it builds its graph, so the chains that exporters emit
//! (`Shape → Gather → Cast → Div → Ceil → Sub → Mul → Clip → Concat` feeding `Pad` or
//! `Reshape`) reach it as plain int64 constants.
//!
//! Semantics are ONNX's, with numpy broadcasting for the elementwise ops. Where an operator
//! changed form between opsets the evaluator accepts both, telling them apart by the
//! attributes and inputs the node has: `Slice` (attributes before opset 10), `Unsqueeze`,
//! `Squeeze` and the reductions (`axes` attribute or input), `Clip` (`min`/`max`
//! attributes before opset 11), `Reshape` (`shape` attribute before opset 5).
//!
//! Invariants:
//! - Values are held by class only: every integer type as `i64`, every float type as `f64`,
//!   bools as `bool`. `Cast` checks that integers fit the target type (uint64 values past
//!   `i64::MAX` are refused) and rounds floats to the target's precision (float32, float16,
//!   bfloat16); arithmetic after that runs in `f64` without rounding again.
//! - Elementwise ops take operands of one class, as ONNX requires one type; a bool operand
//!   counts as an int (0 or 1). Integer `Div` truncates toward zero, as C and ONNX Runtime
//!   do (the reference implementation casts numpy's quotient back to the int type).
//! - A tensor has at most [`MAX_RANK`] axes and as many values as its dims say; the product
//!   of its dims, an empty axis counted as 1, is at most [`MAX_CONST`] (so no stride or
//!   index overflows). [`eval`] checks its inputs against this and refuses to build more.
//! - Nothing panics on any node or input: bad attributes, out-of-range indices, integer
//!   overflow (checked arithmetic) and integer division by zero are errors naming the
//!   attribute or the value.

use super::proto::{
    attribute_proto::AttributeType,
    tensor_proto::{DataLocation, DataType},
    AttributeProto, NodeProto, TensorProto,
};
use std::cmp::Ordering;

/// The most values a folded constant may have: larger ones are refused, not materialized.
pub(crate) const MAX_CONST: u64 = 1 << 16;

/// The most axes a folded constant may have.
pub(crate) const MAX_RANK: usize = 64;

/// A constant tensor: dims (row-major) and values, one per element.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tensor {
    pub dims: Vec<u64>,
    pub data: Data,
}

/// The values of a [`Tensor`], by class: every integer type is held as `i64`, every float
/// type as `f64`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    Int(Vec<i64>),
    Float(Vec<f64>),
    Bool(Vec<bool>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Int(v) => v.len(),
            Data::Float(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Data::Int(_) => "int",
            Data::Float(_) => "float",
            Data::Bool(_) => "bool",
        }
    }

    /// The values at `index`, in that order; every index must be in range.
    fn take(&self, index: &[usize]) -> Data {
        match self {
            Data::Int(v) => Data::Int(index.iter().map(|&i| v[i]).collect()),
            Data::Float(v) => Data::Float(index.iter().map(|&i| v[i]).collect()),
            Data::Bool(v) => Data::Bool(index.iter().map(|&i| v[i]).collect()),
        }
    }
}

impl Tensor {
    /// An int tensor. `values` must hold one value per element of `dims` ([`eval`] checks).
    pub fn ints(dims: Vec<u64>, values: Vec<i64>) -> Tensor {
        Tensor { dims, data: Data::Int(values) }
    }

    /// A float tensor. `values` must hold one value per element of `dims` ([`eval`] checks).
    pub fn floats(dims: Vec<u64>, values: Vec<f64>) -> Tensor {
        Tensor { dims, data: Data::Float(values) }
    }

    /// A bool tensor. `values` must hold one value per element of `dims` ([`eval`] checks).
    pub fn bools(dims: Vec<u64>, values: Vec<bool>) -> Tensor {
        Tensor { dims, data: Data::Bool(values) }
    }

    pub fn scalar_int(v: i64) -> Tensor {
        Tensor::ints(Vec::new(), vec![v])
    }

    pub fn scalar_float(v: f64) -> Tensor {
        Tensor::floats(Vec::new(), vec![v])
    }

    /// The number of elements its dims describe (saturating at `u64::MAX`).
    pub fn numel(&self) -> u64 {
        numel_of(&self.dims)
    }

    /// The values of an int tensor, or of a bool tensor as 0 and 1; `None` for floats.
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::Int(v) => Some(v.clone()),
            Data::Bool(v) => Some(v.iter().map(|&b| b as i64).collect()),
            Data::Float(_) => None,
        }
    }

    /// The values converted to `f64` (bools as 0 and 1).
    pub fn as_floats(&self) -> Vec<f64> {
        match &self.data {
            Data::Int(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Float(v) => v.clone(),
            Data::Bool(v) => v.iter().map(|&b| b as u8 as f64).collect(),
        }
    }
}

/// The values of a `TensorProto` of type int64, int32, int16, int8, uint64, uint32, uint16,
/// uint8, bool, float, double, float16 or bfloat16. `None` when the payload is absent
/// (large payloads are dropped before planning), stored outside the model, inconsistent
/// with the dims, of another type, or of more than [`MAX_CONST`] elements.
pub(crate) fn from_proto(t: &TensorProto) -> Option<Tensor> {
    decode(t).ok()
}

/// The operators [`eval`] evaluates (all in the default domain).
pub(crate) fn is_foldable(op_type: &str) -> bool {
    lookup(op_type).is_some()
}

/// Evaluates one node on constant inputs, with ONNX semantics. `inputs[i]` is the value of
/// the node's input `i`, `None` for an omitted optional input. For `Shape` of a value that
/// is not itself a constant, call [`shape_op`] with its dims instead.
pub(crate) fn eval(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    if !matches!(node.domain(), "" | "ai.onnx") {
        return Err(format!("operators of domain `{}` are not folded", node.domain()));
    }
    let op = node.op_type();
    let (_, f) = lookup(op).ok_or_else(|| format!("{op} is not an operator the constant folder evaluates"))?;
    for (i, t) in inputs.iter().enumerate() {
        if let Some(t) = t {
            check(t).map_err(|e| format!("input {i}: {e}"))?;
        }
    }
    let out = f(node, inputs)?;
    check(&out)?;
    Ok(out)
}

/// `Shape` of a value with dims `dims` (the batch axis included): a 1-D int64 tensor of the
/// dims from attribute `start` (default 0) to `end` (default the rank), which are clamped
/// to the rank and may be negative (counted from the end), as in opset 15.
pub(crate) fn shape_op(node: &NodeProto, dims: &[u64]) -> Result<Tensor, String> {
    let rank = dims.len() as i64;
    let bound = |v: i64| (if v < 0 { v.saturating_add(rank) } else { v }).clamp(0, rank) as usize;
    let start = bound(int_attr(node, "start")?.unwrap_or(0));
    let end = bound(int_attr(node, "end")?.unwrap_or(rank)).max(start);
    let values = dims[start..end]
        .iter()
        .map(|&d| i64::try_from(d).map_err(|_| format!("the size {d} does not fit in int64")))
        .collect::<Result<Vec<i64>, String>>()?;
    let n = values.len() as u64;
    size_of(&[n])?;
    Ok(Tensor::ints(vec![n], values))
}

// ---------------------------------------------------------------- sizes and index maps

fn numel_of(dims: &[u64]) -> u64 {
    if dims.contains(&0) {
        0
    } else {
        dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }
}

/// The number of elements of a tensor of shape `dims`, when the tensor is within the limits
/// ([`MAX_RANK`] axes, a product of dims of at most [`MAX_CONST`] counting empty axes as 1).
fn size_of(dims: &[u64]) -> Result<usize, String> {
    if dims.len() > MAX_RANK {
        return Err(format!("a constant of rank {} is past the limit of {MAX_RANK} axes for folding", dims.len()));
    }
    let bound = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d.max(1)).filter(|&b| b <= MAX_CONST));
    match bound {
        Some(_) if dims.contains(&0) => Ok(0),
        Some(n) => Ok(n as usize),
        None => {
            let n = dims.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128));
            Err(format!("a constant of shape {dims:?} ({n} elements) is past the limit of {MAX_CONST} elements for folding"))
        }
    }
}

/// A tensor within the limits whose values match its dims.
fn check(t: &Tensor) -> Result<(), String> {
    let n = size_of(&t.dims)?;
    if t.data.len() != n {
        return Err(format!("a tensor of shape {:?} holds {} values instead of {n}", t.dims, t.data.len()));
    }
    Ok(())
}

/// Row-major strides of a tensor within the limits (an empty axis counted as 1, so every
/// stride is at most [`MAX_CONST`]).
fn strides(dims: &[u64]) -> Vec<i64> {
    let mut s = vec![1i64; dims.len()];
    for a in (0..dims.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * dims[a + 1].max(1) as i64;
    }
    s
}

/// For each element of a row-major tensor of shape `out`, in order, `start + Σ iₐ·stepₐ`
/// where `iₐ` is its index along axis `a`. Callers choose steps that keep every value a
/// valid index, with step 0 on axes of size 1 (so no product overflows).
fn affine_map(out: &[u64], start: i64, step: &[i64]) -> Vec<usize> {
    let n = numel_of(out) as usize;
    let mut map = Vec::with_capacity(n);
    let mut index = vec![0u64; out.len()];
    let mut at = start;
    for _ in 0..n {
        map.push(at as usize);
        for a in (0..out.len()).rev() {
            index[a] += 1;
            at += step[a];
            if index[a] < out[a] {
                break;
            }
            at -= step[a] * out[a] as i64;
            index[a] = 0;
        }
    }
    map
}

/// The numpy broadcast of `shapes`.
fn broadcast_shape(shapes: &[&[u64]]) -> Result<Vec<u64>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1u64; rank];
    for (a, o) in out.iter_mut().enumerate() {
        for s in shapes {
            let Some(k) = (a + s.len()).checked_sub(rank) else { continue };
            let d = s[k];
            if d != 1 {
                if *o == 1 {
                    *o = d;
                } else if *o != d {
                    let all: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
                    return Err(format!("shapes {} do not broadcast together", all.join(" and ")));
                }
            }
        }
    }
    Ok(out)
}

/// `t` broadcast to `out`, a shape within the limits that `t.dims` broadcasts to.
fn broadcast_to(t: &Tensor, out: &[u64]) -> Tensor {
    let off = out.len() - t.dims.len();
    let s = strides(&t.dims);
    let step: Vec<i64> = (0..out.len()).map(|a| if a < off || t.dims[a - off] == 1 { 0 } else { s[a - off] }).collect();
    Tensor { dims: out.to_vec(), data: t.data.take(&affine_map(out, 0, &step)) }
}

/// Two operands broadcast to their common shape.
fn broadcast_pair(a: &Tensor, b: &Tensor) -> Result<(Vec<u64>, Data, Data), String> {
    let dims = broadcast_shape(&[&a.dims, &b.dims])?;
    size_of(&dims)?;
    let (x, y) = (broadcast_to(a, &dims).data, broadcast_to(b, &dims).data);
    Ok((dims, x, y))
}

/// Values as numbers: bools count as ints.
enum Num {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

fn num(d: Data) -> Num {
    match d {
        Data::Int(v) => Num::Int(v),
        Data::Float(v) => Num::Float(v),
        Data::Bool(v) => Num::Int(v.into_iter().map(i64::from).collect()),
    }
}

impl Num {
    fn kind(&self) -> &'static str {
        match self {
            Num::Int(_) => "int",
            Num::Float(_) => "float",
        }
    }
}

fn mixed(x: &Num, y: &Num) -> String {
    format!("the operands are {} and {} tensors: ONNX requires one type", x.kind(), y.kind())
}

// ---------------------------------------------------------------- attributes and inputs

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

/// Whether attribute `a` has type `t` (an attribute without a type is judged by its fields).
fn typed(a: &AttributeProto, t: AttributeType, present: bool) -> bool {
    match a.r#type {
        Some(x) if x != AttributeType::Undefined as i32 => x == t as i32,
        _ => present,
    }
}

fn int_attr(node: &NodeProto, name: &str) -> Result<Option<i64>, String> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if typed(a, AttributeType::Int, a.i.is_some()) => Ok(Some(a.i())),
        Some(_) => Err(format!("attribute `{name}` must be an integer")),
    }
}

fn ints_attr<'n>(node: &'n NodeProto, name: &str) -> Result<Option<&'n [i64]>, String> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if typed(a, AttributeType::Ints, true) => Ok(Some(&a.ints)),
        Some(_) => Err(format!("attribute `{name}` must be a list of integers")),
    }
}

fn float_attr(node: &NodeProto, name: &str) -> Result<Option<f32>, String> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if typed(a, AttributeType::Float, a.f.is_some()) => Ok(Some(a.f())),
        Some(_) => Err(format!("attribute `{name}` must be a float")),
    }
}

fn floats_attr<'n>(node: &'n NodeProto, name: &str) -> Result<Option<&'n [f32]>, String> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if typed(a, AttributeType::Floats, true) => Ok(Some(&a.floats)),
        Some(_) => Err(format!("attribute `{name}` must be a list of floats")),
    }
}

fn tensor_attr<'n>(node: &'n NodeProto, name: &str) -> Result<Option<&'n TensorProto>, String> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if typed(a, AttributeType::Tensor, a.t.is_some()) => {
            a.t.as_ref().map(Some).ok_or_else(|| format!("attribute `{name}` has no tensor"))
        }
        Some(_) => Err(format!("attribute `{name}` must be a tensor")),
    }
}

fn flag(node: &NodeProto, name: &str, default: bool) -> Result<bool, String> {
    match int_attr(node, name)? {
        None => Ok(default),
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        Some(v) => Err(format!("attribute `{name}` must be 0 or 1, got {v}")),
    }
}

/// Input `i`, which the operator requires; `what` names it in errors.
fn arg<'t>(inputs: &[Option<&'t Tensor>], i: usize, what: &str) -> Result<&'t Tensor, String> {
    inputs.get(i).copied().flatten().ok_or_else(|| format!("the {what} (input {i}) is missing"))
}

fn opt<'t>(inputs: &[Option<&'t Tensor>], i: usize) -> Option<&'t Tensor> {
    inputs.get(i).copied().flatten()
}

/// The values of a 1-D (or scalar) int tensor.
fn int_vector(t: &Tensor, what: &str) -> Result<Vec<i64>, String> {
    if t.dims.len() > 1 {
        return Err(format!("the {what} must be a 1-D int tensor, got shape {:?}", t.dims));
    }
    t.as_ints().ok_or_else(|| format!("the {what} must be an int tensor, got {}", t.data.kind()))
}

/// A one-element tensor's value.
#[derive(Clone, Copy)]
enum Scalar {
    Int(i64),
    Float(f64),
}

fn scalar(t: &Tensor, what: &str) -> Result<Scalar, String> {
    match (t.numel(), &t.data) {
        (1, Data::Int(v)) => Ok(Scalar::Int(v[0])),
        (1, Data::Bool(v)) => Ok(Scalar::Int(v[0] as i64)),
        (1, Data::Float(v)) => Ok(Scalar::Float(v[0])),
        _ => Err(format!("the {what} must have one element, got shape {:?}", t.dims)),
    }
}

/// Sizes from int values, all ≥ 0.
fn dims_of(values: &[i64], what: &str) -> Result<Vec<u64>, String> {
    values.iter().map(|&v| u64::try_from(v).map_err(|_| format!("the {what} {values:?} has a negative size {v}"))).collect()
}

/// Axis `value` of a tensor of rank `rank`, negative values counted from the end.
fn axis(value: i64, rank: usize, what: &str) -> Result<usize, String> {
    let r = rank as i64;
    if (-r..r).contains(&value) {
        Ok(if value < 0 { value + r } else { value } as usize)
    } else {
        Err(format!("{what} = {value} is out of range for rank {rank}"))
    }
}

/// Distinct axes of a tensor of rank `rank`.
fn axes_list(values: &[i64], rank: usize, what: &str) -> Result<Vec<usize>, String> {
    let mut axes = Vec::with_capacity(values.len());
    for &v in values {
        let a = axis(v, rank, what)?;
        if axes.contains(&a) {
            return Err(format!("{what} = {values:?} names axis {a} twice"));
        }
        axes.push(a);
    }
    Ok(axes)
}

/// The axes of Squeeze, Unsqueeze and the reductions: attribute `axes` (older opsets) or
/// input `i` (newer); `None` when neither is given.
fn axes_of(node: &NodeProto, inputs: &[Option<&Tensor>], i: usize) -> Result<Option<Vec<i64>>, String> {
    match (ints_attr(node, "axes")?, opt(inputs, i)) {
        (Some(_), Some(_)) => Err(format!("the axes are given twice, as attribute `axes` and as input {i}")),
        (Some(a), None) => Ok(Some(a.to_vec())),
        (None, Some(t)) => int_vector(t, "axes").map(Some),
        (None, None) => Ok(None),
    }
}

// ---------------------------------------------------------------- tensor protos

/// [`from_proto`], saying why a tensor cannot be read.
fn decode(t: &TensorProto) -> Result<Tensor, String> {
    let dims = dims_of(&t.dims, "tensor's dims")?;
    let n = size_of(&dims)?;
    if t.segment.is_some() {
        return Err("the tensor is segmented".into());
    }
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err("the tensor's values are stored in an external file".into());
    }
    let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
    let ints32 = || t.int32_data.iter().map(|&v| v as i64).collect::<Vec<i64>>();
    let dt = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
    let data = match (dt, raw) {
        (DataType::Int64, Some(r)) => Data::Int(words(r)?.into_iter().map(i64::from_le_bytes).collect()),
        (DataType::Int64, None) => Data::Int(t.int64_data.clone()),
        (DataType::Int32, Some(r)) => Data::Int(words(r)?.into_iter().map(|w| i32::from_le_bytes(w) as i64).collect()),
        (DataType::Int16, Some(r)) => Data::Int(words(r)?.into_iter().map(|w| i16::from_le_bytes(w) as i64).collect()),
        (DataType::Uint16, Some(r)) => Data::Int(words(r)?.into_iter().map(|w| u16::from_le_bytes(w) as i64).collect()),
        (DataType::Int8, Some(r)) => Data::Int(r.iter().map(|&b| b as i8 as i64).collect()),
        (DataType::Uint8, Some(r)) => Data::Int(r.iter().map(|&b| b as i64).collect()),
        (DataType::Int32 | DataType::Int16 | DataType::Uint16 | DataType::Int8 | DataType::Uint8, None) => Data::Int(ints32()),
        (DataType::Uint32, Some(r)) => Data::Int(words(r)?.into_iter().map(|w| u32::from_le_bytes(w) as i64).collect()),
        (DataType::Uint64 | DataType::Uint32, _) => {
            let wide: Vec<u64> = match raw {
                Some(r) => words(r)?.into_iter().map(u64::from_le_bytes).collect(),
                None => t.uint64_data.clone(),
            };
            let ints = wide.iter().map(|&v| i64::try_from(v).map_err(|_| format!("the uint64 value {v} is past the int64 range")));
            Data::Int(ints.collect::<Result<_, _>>()?)
        }
        (DataType::Bool, Some(r)) => Data::Bool(r.iter().map(|&b| b != 0).collect()),
        (DataType::Bool, None) => Data::Bool(t.int32_data.iter().map(|&v| v != 0).collect()),
        (DataType::Float, Some(r)) => Data::Float(words(r)?.into_iter().map(|w| f32::from_le_bytes(w) as f64).collect()),
        (DataType::Float, None) => Data::Float(t.float_data.iter().map(|&v| v as f64).collect()),
        (DataType::Double, Some(r)) => Data::Float(words(r)?.into_iter().map(f64::from_le_bytes).collect()),
        (DataType::Double, None) => Data::Float(t.double_data.clone()),
        (DataType::Float16 | DataType::Bfloat16, _) => {
            let bits: Vec<u16> = match raw {
                Some(r) => words(r)?.into_iter().map(u16::from_le_bytes).collect(),
                None => t.int32_data.iter().map(|&v| v as u16).collect(),
            };
            let value = if dt == DataType::Float16 { f16_value } else { bf16_value };
            Data::Float(bits.into_iter().map(value).collect())
        }
        (other, _) => return Err(format!("tensors of type {} are not folded", other.as_str_name())),
    };
    match data.len() {
        0 if n > 0 => Err(format!("the values of the {dims:?} tensor are absent (large payloads are not loaded for planning)")),
        m if m != n => Err(format!("the tensor holds {m} values but its dims {dims:?} need {n}")),
        _ => Ok(Tensor { dims, data }),
    }
}

/// `raw` cut into little-endian words of `N` bytes.
fn words<const N: usize>(raw: &[u8]) -> Result<Vec<[u8; N]>, String> {
    if !raw.len().is_multiple_of(N) {
        return Err(format!("the raw data has {} bytes, not a multiple of the {N}-byte element", raw.len()));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut w = [0u8; N];
            w.copy_from_slice(c);
            w
        })
        .collect())
}

/// The IEEE half-precision value of `bits`.
fn f16_value(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = (bits >> 10) & 0x1f;
    let man = (bits & 0x3ff) as f64;
    sign * match exp {
        0 => man * 2f64.powi(-24),
        31 if man == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1024.0 + man) * 2f64.powi(e as i32 - 25),
    }
}

/// The bfloat16 value of `bits` (the upper half of a float32).
fn bf16_value(bits: u16) -> f64 {
    f32::from_bits((bits as u32) << 16) as f64
}

// ---------------------------------------------------------------- one function per op

type EvalFn = fn(&NodeProto, &[Option<&Tensor>]) -> Result<Tensor, String>;

/// The operator table: op_type and its evaluator.
const OPS: &[(&str, EvalFn)] = &[
    ("Identity", identity),
    ("Constant", constant),
    ("Cast", cast),
    ("Shape", shape),
    ("Gather", gather),
    ("Concat", concat),
    ("Slice", slice),
    ("Unsqueeze", unsqueeze),
    ("Squeeze", squeeze),
    ("Reshape", reshape),
    ("Add", add),
    ("Sub", sub),
    ("Mul", mul),
    ("Div", div),
    ("Mod", modulo),
    ("Pow", pow),
    ("Neg", neg),
    ("Abs", abs),
    ("Ceil", ceil),
    ("Floor", floor),
    ("Round", round),
    ("Sqrt", sqrt),
    ("Max", max),
    ("Min", min),
    ("Clip", clip),
    ("Equal", equal),
    ("Less", less),
    ("LessOrEqual", less_or_equal),
    ("Greater", greater),
    ("GreaterOrEqual", greater_or_equal),
    ("Not", not),
    ("And", and),
    ("Or", or),
    ("Xor", xor),
    ("Where", where_),
    ("Range", range),
    ("ConstantOfShape", constant_of_shape),
    ("ReduceSum", reduce_sum),
    ("ReduceProd", reduce_prod),
    ("ReduceMax", reduce_max),
    ("ReduceMin", reduce_min),
    ("Expand", expand),
    ("Tile", tile),
    ("Transpose", transpose),
];

fn lookup(op: &str) -> Option<&'static (&'static str, EvalFn)> {
    OPS.iter().find(|(name, _)| *name == op)
}

fn identity(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    arg(inputs, 0, "input").cloned()
}

fn constant(node: &NodeProto, _: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let [a] = node.attribute.as_slice() else {
        let names: Vec<String> = node.attribute.iter().map(|a| format!("`{}`", a.name())).collect();
        let got = if names.is_empty() { "none".to_string() } else { names.join(", ") };
        return Err(format!("a Constant needs exactly one value attribute, got {got}"));
    };
    let name = a.name();
    let t = match name {
        "value" => {
            let t = tensor_attr(node, name)?.ok_or("attribute `value` is missing")?;
            decode(t).map_err(|e| format!("attribute `value`: {e}"))?
        }
        "value_int" => Tensor::scalar_int(int_attr(node, name)?.unwrap_or_default()),
        "value_float" => Tensor::scalar_float(float_attr(node, name)?.unwrap_or_default() as f64),
        "value_ints" => {
            let v = ints_attr(node, name)?.unwrap_or_default();
            Tensor::ints(vec![v.len() as u64], v.to_vec())
        }
        "value_floats" => {
            let v = floats_attr(node, name)?.unwrap_or_default();
            Tensor::floats(vec![v.len() as u64], v.iter().map(|&x| x as f64).collect())
        }
        other => return Err(format!("attribute `{other}` of Constant is not folded (only value, value_int(s), value_float(s))")),
    };
    size_of(&t.dims)?;
    Ok(t)
}

/// The class a `Cast` converts to.
enum Target {
    /// An integer type holding `lo..=hi` (uint64 limited to the int64 range).
    Int {
        name: &'static str,
        lo: i64,
        hi: i64,
    },
    Float(FloatFormat),
    Bool,
}

#[derive(Clone, Copy)]
enum FloatFormat {
    Single,
    Double,
    Half,
    Brain,
}

fn cast_target(to: i64) -> Result<Target, String> {
    let dt = i32::try_from(to)
        .ok()
        .and_then(|t| DataType::try_from(t).ok())
        .ok_or_else(|| format!("attribute `to` = {to} is not an ONNX data type"))?;
    let int = |name, lo, hi| Target::Int { name, lo, hi };
    Ok(match dt {
        DataType::Int64 => int("int64", i64::MIN, i64::MAX),
        DataType::Int32 => int("int32", i32::MIN as i64, i32::MAX as i64),
        DataType::Int16 => int("int16", i16::MIN as i64, i16::MAX as i64),
        DataType::Int8 => int("int8", i8::MIN as i64, i8::MAX as i64),
        DataType::Uint64 => int("uint64", 0, i64::MAX),
        DataType::Uint32 => int("uint32", 0, u32::MAX as i64),
        DataType::Uint16 => int("uint16", 0, u16::MAX as i64),
        DataType::Uint8 => int("uint8", 0, u8::MAX as i64),
        DataType::Float => Target::Float(FloatFormat::Single),
        DataType::Double => Target::Float(FloatFormat::Double),
        DataType::Float16 => Target::Float(FloatFormat::Half),
        DataType::Bfloat16 => Target::Float(FloatFormat::Brain),
        DataType::Bool => Target::Bool,
        other => return Err(format!("attribute `to` = {to} ({}) is not a type the constant folder casts to", other.as_str_name())),
    })
}

/// `x` truncated toward zero (as C does), when it is finite and the result is in `lo..=hi`.
fn float_to_int(x: f64, name: &str, lo: i64, hi: i64) -> Result<i64, String> {
    let t = x.trunc();
    // `hi as f64 + 1.0` is exact for every `hi` used (2^k - 1, or i64::MAX rounding to 2^63).
    if t.is_finite() && t >= lo as f64 && t < hi as f64 + 1.0 {
        Ok(t as i64)
    } else {
        Err(format!("the value {x} cannot be cast to {name}"))
    }
}

/// `x` rounded to the nearest value of `format` (ties to even, overflow to infinity).
fn round_float(x: f64, format: FloatFormat) -> f64 {
    match format {
        FloatFormat::Double => x,
        FloatFormat::Single => x as f32 as f64,
        FloatFormat::Half => round_binary(x, 10, -14, 65504.0),
        FloatFormat::Brain => round_binary(x, 7, -126, (2.0 - 2f64.powi(-7)) * 2f64.powi(127)),
    }
}

/// `x` rounded to a binary format with `fraction` fraction bits, smallest normal exponent
/// `min_exp` and largest finite value `max`. Scaling by powers of two is exact in `f64`, so
/// the only rounding is the one to an integral multiple of the format's quantum at `x`.
fn round_binary(x: f64, fraction: i32, min_exp: i32, max: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let exp = ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let quantum = 2f64.powi(exp.max(min_exp) - fraction);
    let r = (x / quantum).round_ties_even() * quantum;
    if r.abs() > max {
        f64::INFINITY.copysign(x)
    } else {
        r
    }
}

fn cast(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "input")?;
    let to = int_attr(node, "to")?.ok_or("attribute `to` is required")?;
    let data = match cast_target(to)? {
        Target::Int { name, lo, hi } => {
            let fits = |v: i64| if (lo..=hi).contains(&v) { Ok(v) } else { Err(format!("the value {v} cannot be cast to {name}")) };
            Data::Int(match &x.data {
                Data::Int(v) => v.iter().map(|&v| fits(v)).collect::<Result<_, _>>()?,
                Data::Float(v) => v.iter().map(|&v| float_to_int(v, name, lo, hi)).collect::<Result<_, _>>()?,
                Data::Bool(v) => v.iter().map(|&b| b as i64).collect(),
            })
        }
        Target::Float(format) => Data::Float(x.as_floats().into_iter().map(|v| round_float(v, format)).collect()),
        Target::Bool => Data::Bool(match &x.data {
            Data::Int(v) => v.iter().map(|&v| v != 0).collect(),
            Data::Float(v) => v.iter().map(|&v| v != 0.0).collect(),
            Data::Bool(v) => v.clone(),
        }),
    };
    Ok(Tensor { dims: x.dims.clone(), data })
}

fn shape(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    shape_op(node, &arg(inputs, 0, "data")?.dims)
}

fn gather(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "data")?;
    let indices = arg(inputs, 1, "indices")?;
    let Data::Int(index) = &indices.data else {
        return Err(format!("the indices must be an int tensor, got {}", indices.data.kind()));
    };
    if x.dims.is_empty() {
        return Err("Gather needs data of rank 1 or more, got a scalar".into());
    }
    let a = axis(int_attr(node, "axis")?.unwrap_or(0), x.dims.len(), "attribute `axis`")?;
    let d = x.dims[a];
    let index = index
        .iter()
        .map(|&i| {
            let j = if i < 0 { i as i128 + d as i128 } else { i as i128 };
            if (0..d as i128).contains(&j) {
                Ok(j as usize)
            } else {
                Err(format!("index {i} is out of range for axis {a} of size {d}"))
            }
        })
        .collect::<Result<Vec<usize>, String>>()?;
    let dims: Vec<u64> = [&x.dims[..a], &indices.dims[..], &x.dims[a + 1..]].concat();
    if size_of(&dims)? == 0 {
        return Ok(Tensor { dims, data: x.data.take(&[]) });
    }
    let outer = numel_of(&x.dims[..a]) as usize;
    let inner = numel_of(&x.dims[a + 1..]) as usize;
    let mut map = Vec::with_capacity(outer * index.len() * inner);
    for o in 0..outer {
        for &k in &index {
            map.extend((0..inner).map(|i| (o * d as usize + k) * inner + i));
        }
    }
    Ok(Tensor { dims, data: x.data.take(&map) })
}

/// `parts[t]` cut into `outer` chunks of `sizes[t]` values, interleaved part by part.
fn join<T: Copy>(parts: &[&[T]], sizes: &[usize], outer: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(sizes.iter().sum::<usize>() * outer);
    for o in 0..outer {
        for (p, &s) in parts.iter().zip(sizes) {
            out.extend_from_slice(&p[o * s..(o + 1) * s]);
        }
    }
    out
}

fn concat(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let axis_value = int_attr(node, "axis")?.ok_or("attribute `axis` is required")?;
    let parts = (0..inputs.len()).map(|i| arg(inputs, i, "operand")).collect::<Result<Vec<&Tensor>, String>>()?;
    let first = parts.first().ok_or("Concat needs at least one input")?;
    let rank = first.dims.len();
    if rank == 0 {
        return Err("Concat cannot join scalars (rank 0)".into());
    }
    let a = axis(axis_value, rank, "attribute `axis`")?;
    let mut total = 0u64;
    for (i, p) in parts.iter().enumerate() {
        let same = p.dims.len() == rank && (0..rank).all(|k| k == a || p.dims[k] == first.dims[k]);
        if !same {
            return Err(format!("input {i} has shape {:?}, which does not match {:?} outside axis {a}", p.dims, first.dims));
        }
        total = total.checked_add(p.dims[a]).ok_or("the joined axis overflows")?;
    }
    let mut dims = first.dims.clone();
    dims[a] = total;
    if size_of(&dims)? == 0 {
        return Ok(Tensor { dims, data: first.data.take(&[]) });
    }
    let outer = numel_of(&first.dims[..a]) as usize;
    let inner = numel_of(&first.dims[a + 1..]) as usize;
    let sizes: Vec<usize> = parts.iter().map(|p| p.dims[a] as usize * inner).collect();
    let data = if parts.iter().all(|p| matches!(p.data, Data::Bool(_))) {
        let v: Vec<&[bool]> = parts.iter().filter_map(|p| if let Data::Bool(b) = &p.data { Some(&b[..]) } else { None }).collect();
        Data::Bool(join(&v, &sizes, outer))
    } else {
        let nums: Vec<Num> = parts.iter().map(|p| num(p.data.clone())).collect();
        if let Some(x) = nums.iter().find(|x| x.kind() != nums[0].kind()) {
            return Err(mixed(&nums[0], x));
        }
        let ints: Vec<&[i64]> = nums.iter().filter_map(|x| if let Num::Int(v) = x { Some(&v[..]) } else { None }).collect();
        let floats: Vec<&[f64]> = nums.iter().filter_map(|x| if let Num::Float(v) = x { Some(&v[..]) } else { None }).collect();
        if floats.is_empty() {
            Data::Int(join(&ints, &sizes, outer))
        } else {
            Data::Float(join(&floats, &sizes, outer))
        }
    };
    Ok(Tensor { dims, data })
}

fn slice(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "data")?;
    let rank = x.dims.len();
    let (starts, ends, axes, steps) = if attr(node, "starts").is_some() || attr(node, "ends").is_some() {
        let starts = ints_attr(node, "starts")?.ok_or("attribute `starts` is required")?.to_vec();
        let ends = ints_attr(node, "ends")?.ok_or("attribute `ends` is required")?.to_vec();
        (starts, ends, ints_attr(node, "axes")?.map(<[i64]>::to_vec), None)
    } else {
        let starts = int_vector(arg(inputs, 1, "starts")?, "starts")?;
        let ends = int_vector(arg(inputs, 2, "ends")?, "ends")?;
        let axes = opt(inputs, 3).map(|t| int_vector(t, "axes")).transpose()?;
        let steps = opt(inputs, 4).map(|t| int_vector(t, "steps")).transpose()?;
        (starts, ends, axes, steps)
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(format!(
            "starts, ends, axes and steps must have one value per sliced axis, got {n}, {}, {} and {}",
            ends.len(),
            axes.len(),
            steps.len()
        ));
    }
    let axes = axes_list(&axes, rank, "axes")?;
    let mut begin = vec![0i64; rank];
    let mut step = vec![1i64; rank];
    let mut count = x.dims.clone();
    for k in 0..n {
        let a = axes[k];
        let d = x.dims[a] as i128;
        let st = steps[k] as i128;
        if st == 0 {
            return Err(format!("steps = {steps:?} has a 0 for axis {a}"));
        }
        let (mut s, mut e) = (starts[k] as i128, ends[k] as i128);
        if s < 0 {
            s += d;
        }
        if e < 0 {
            e += d;
        }
        // The spec's clamping; no `clamp`, whose bounds cross when d = 0 and the step is negative.
        let c = if st > 0 {
            s = s.max(0).min(d);
            e = e.max(0).min(d);
            if e > s {
                (e - s + st - 1) / st
            } else {
                0
            }
        } else {
            s = s.max(0).min(d - 1);
            e = e.max(-1).min(d - 1);
            if s > e {
                (s - e - st - 1) / -st
            } else {
                0
            }
        };
        begin[a] = if c > 0 { s as i64 } else { 0 };
        step[a] = steps[k];
        count[a] = c as u64;
    }
    size_of(&count)?;
    let s = strides(&x.dims);
    let start = (0..rank).map(|a| begin[a] * s[a]).sum();
    let step: Vec<i64> = (0..rank).map(|a| if count[a] <= 1 { 0 } else { step[a] * s[a] }).collect();
    let map = affine_map(&count, start, &step);
    Ok(Tensor { dims: count, data: x.data.take(&map) })
}

fn unsqueeze(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "data")?;
    let axes = axes_of(node, inputs, 1)?.ok_or("the axes (attribute `axes` or input 1) are required")?;
    let rank = x.dims.len() + axes.len();
    let axes = axes_list(&axes, rank, "axes")?;
    let mut src = x.dims.iter().copied();
    let dims: Vec<u64> = (0..rank).filter_map(|a| if axes.contains(&a) { Some(1) } else { src.next() }).collect();
    size_of(&dims)?;
    Ok(Tensor { dims, data: x.data.clone() })
}

/// Without axes (or with an empty list, as ONNX Runtime reads it) every axis of size 1 goes.
fn squeeze(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "data")?;
    let dims = match axes_of(node, inputs, 1)?.filter(|a| !a.is_empty()) {
        None => x.dims.iter().copied().filter(|&d| d != 1).collect(),
        Some(axes) => {
            let axes = axes_list(&axes, x.dims.len(), "axes")?;
            if let Some(&a) = axes.iter().find(|&&a| x.dims[a] != 1) {
                return Err(format!("axis {a} of shape {:?} has size {}, not 1", x.dims, x.dims[a]));
            }
            x.dims.iter().enumerate().filter(|(a, _)| !axes.contains(a)).map(|(_, &d)| d).collect()
        }
    };
    Ok(Tensor { dims, data: x.data.clone() })
}

fn reshape(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "data")?;
    let target = match (opt(inputs, 1), ints_attr(node, "shape")?) {
        (Some(t), _) => int_vector(t, "shape")?,
        (None, Some(s)) => s.to_vec(),
        (None, None) => return Err("the shape (input 1) is missing".into()),
    };
    let allow_zero = flag(node, "allowzero", false)?;
    let mut dims = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &s) in target.iter().enumerate() {
        match s {
            -1 if infer.is_some() => return Err(format!("the shape {target:?} has more than one -1")),
            -1 => {
                infer = Some(i);
                dims.push(1);
            }
            0 if !allow_zero => {
                let d = x.dims.get(i).ok_or_else(|| {
                    format!("the shape {target:?} copies (0) axis {i}, which the rank-{} input does not have", x.dims.len())
                })?;
                dims.push(*d);
            }
            s if s < 0 => return Err(format!("the shape {target:?} has a negative size {s}")),
            s => dims.push(s as u64),
        }
    }
    let n = x.numel();
    if let Some(i) = infer {
        let known = numel_of(&dims);
        if known == 0 || n % known != 0 {
            return Err(format!("cannot infer the -1 of shape {target:?} for {n} elements of shape {:?}", x.dims));
        }
        dims[i] = n / known;
    }
    if numel_of(&dims) != n {
        return Err(format!("cannot reshape {n} elements of shape {:?} to {target:?}", x.dims));
    }
    size_of(&dims)?;
    Ok(Tensor { dims, data: x.data.clone() })
}

type IntOp = fn(i64, i64) -> Result<i64, String>;

/// An elementwise binary op on two operands of one class, broadcast.
fn arith(a: &Tensor, b: &Tensor, int: IntOp, float: fn(f64, f64) -> f64) -> Result<Tensor, String> {
    let (dims, x, y) = broadcast_pair(a, b)?;
    let data = match (num(x), num(y)) {
        (Num::Int(x), Num::Int(y)) => Data::Int(x.iter().zip(&y).map(|(&p, &q)| int(p, q)).collect::<Result<_, _>>()?),
        (Num::Float(x), Num::Float(y)) => Data::Float(x.iter().zip(&y).map(|(&p, &q)| float(p, q)).collect()),
        (x, y) => return Err(mixed(&x, &y)),
    };
    Ok(Tensor { dims, data })
}

fn binary(inputs: &[Option<&Tensor>], int: IntOp, float: fn(f64, f64) -> f64) -> Result<Tensor, String> {
    arith(arg(inputs, 0, "first operand")?, arg(inputs, 1, "second operand")?, int, float)
}

fn add(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    binary(inputs, |p, q| p.checked_add(q).ok_or_else(|| format!("{p} + {q} overflows int64")), |p, q| p + q)
}

fn sub(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    binary(inputs, |p, q| p.checked_sub(q).ok_or_else(|| format!("{p} - {q} overflows int64")), |p, q| p - q)
}

fn mul(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    binary(inputs, |p, q| p.checked_mul(q).ok_or_else(|| format!("{p} * {q} overflows int64")), |p, q| p * q)
}

/// Integer division truncates toward zero (-7 / 2 = -3), as in C and ONNX Runtime.
fn div(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    binary(
        inputs,
        |p, q| match q {
            0 => Err(format!("integer division by zero ({p} / 0)")),
            _ => p.checked_div(q).ok_or_else(|| format!("{p} / {q} overflows int64")),
        },
        |p, q| p / q,
    )
}

/// `fmod` 0 (the default, ints only): the remainder has the divisor's sign (Python's `%`);
/// `fmod` 1: the dividend's sign (C's `fmod`, and `%` on ints).
fn modulo(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let fmod = flag(node, "fmod", false)?;
    let (a, b) = (arg(inputs, 0, "dividend")?, arg(inputs, 1, "divisor")?);
    if !fmod && (matches!(a.data, Data::Float(_)) || matches!(b.data, Data::Float(_))) {
        return Err("attribute `fmod` must be 1 for float tensors".into());
    }
    let int: IntOp = if fmod { |p, q| int_rem(p, q, true) } else { |p, q| int_rem(p, q, false) };
    arith(a, b, int, |p, q| p % q)
}

fn int_rem(p: i64, q: i64, fmod: bool) -> Result<i64, String> {
    if q == 0 {
        return Err(format!("integer division by zero ({p} mod 0)"));
    }
    // `wrapping_rem` only wraps for i64::MIN % -1, whose remainder is 0.
    let r = p.wrapping_rem(q);
    Ok(if !fmod && r != 0 && (r < 0) != (q < 0) { r + q } else { r })
}

/// The result has the base's class; an int base to a float exponent truncates.
fn pow(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let (dims, x, y) = broadcast_pair(arg(inputs, 0, "base")?, arg(inputs, 1, "exponent")?)?;
    let data = match (num(x), num(y)) {
        (Num::Int(x), Num::Int(y)) => Data::Int(x.iter().zip(&y).map(|(&b, &e)| int_pow(b, e)).collect::<Result<_, _>>()?),
        (Num::Int(x), Num::Float(y)) => Data::Int(
            x.iter().zip(&y).map(|(&b, &e)| float_to_int((b as f64).powf(e), "int64", i64::MIN, i64::MAX)).collect::<Result<_, _>>()?,
        ),
        (Num::Float(x), Num::Int(y)) => Data::Float(x.iter().zip(&y).map(|(&b, &e)| b.powf(e as f64)).collect()),
        (Num::Float(x), Num::Float(y)) => Data::Float(x.iter().zip(&y).map(|(&b, &e)| b.powf(e)).collect()),
    };
    Ok(Tensor { dims, data })
}

fn int_pow(b: i64, e: i64) -> Result<i64, String> {
    match b {
        1 => Ok(1),
        -1 => Ok(if e % 2 == 0 { 1 } else { -1 }),
        _ if e < 0 => Err(format!("{b} to the negative power {e} is not an integer")),
        0 => Ok((e == 0) as i64),
        _ => u32::try_from(e).ok().and_then(|e| b.checked_pow(e)).ok_or_else(|| format!("{b} ^ {e} overflows int64")),
    }
}

/// An elementwise unary op; `int` is `None` where the op takes floats only.
fn unary(
    inputs: &[Option<&Tensor>],
    op: &str,
    int: Option<fn(i64) -> Result<i64, String>>,
    float: fn(f64) -> f64,
) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "input")?;
    let data = match (num(x.data.clone()), int) {
        (Num::Int(v), Some(f)) => Data::Int(v.into_iter().map(f).collect::<Result<_, _>>()?),
        (Num::Int(_), None) => return Err(format!("{op} takes float tensors, got {}", x.data.kind())),
        (Num::Float(v), _) => Data::Float(v.into_iter().map(float).collect()),
    };
    Ok(Tensor { dims: x.dims.clone(), data })
}

fn neg(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    unary(inputs, "Neg", Some(|v| v.checked_neg().ok_or_else(|| format!("-({v}) overflows int64"))), |v| -v)
}

fn abs(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    unary(inputs, "Abs", Some(|v| v.checked_abs().ok_or_else(|| format!("|{v}| overflows int64"))), f64::abs)
}

/// Ceil, Floor and Round leave ints as they are (ONNX defines them on floats only).
fn ceil(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    unary(inputs, "Ceil", Some(Ok), f64::ceil)
}

fn floor(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    unary(inputs, "Floor", Some(Ok), f64::floor)
}

/// Halves round to even (2.5 → 2), as ONNX specifies.
fn round(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    unary(inputs, "Round", Some(Ok), f64::round_ties_even)
}

fn sqrt(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    unary(inputs, "Sqrt", None, f64::sqrt)
}

/// Max or Min of one or more operands, broadcast; a NaN operand gives NaN.
fn extremum(inputs: &[Option<&Tensor>], int: IntOp, float: fn(f64, f64) -> f64) -> Result<Tensor, String> {
    let mut acc = arg(inputs, 0, "first operand")?.clone();
    for i in 1..inputs.len() {
        acc = arith(&acc, arg(inputs, i, "operand")?, int, float)?;
    }
    Ok(acc)
}

fn max(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    extremum(inputs, |p, q| Ok(p.max(q)), |p, q| if p.is_nan() || q.is_nan() { f64::NAN } else { p.max(q) })
}

fn min(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    extremum(inputs, |p, q| Ok(p.min(q)), |p, q| if p.is_nan() || q.is_nan() { f64::NAN } else { p.min(q) })
}

/// Bounds are inputs 1 and 2 (opset 11 on, either may be omitted) or attributes `min` and
/// `max` (before, floats only). A lower bound above the upper one gives the upper one
/// everywhere, as ONNX specifies; NaN stays NaN.
fn clip(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    fn clamp<T: PartialOrd>(x: T, lo: T, hi: T) -> T {
        let y = if x < lo { lo } else { x };
        if y > hi {
            hi
        } else {
            y
        }
    }
    let x = arg(inputs, 0, "input")?;
    let (lo_attr, hi_attr) = (float_attr(node, "min")?, float_attr(node, "max")?);
    let (lo_in, hi_in) = (opt(inputs, 1).map(|t| scalar(t, "min")).transpose()?, opt(inputs, 2).map(|t| scalar(t, "max")).transpose()?);
    let data = match num(x.data.clone()) {
        Num::Float(v) => {
            let bound = |a: Option<f32>, i: Option<Scalar>, default: f64, what: &str| match (a, i) {
                (Some(a), _) => Ok(a as f64),
                (None, Some(Scalar::Float(f))) => Ok(f),
                (None, Some(Scalar::Int(_))) => Err(format!("the {what} is an int but the input is a float tensor")),
                (None, None) => Ok(default),
            };
            let lo = bound(lo_attr, lo_in, f64::NEG_INFINITY, "min")?;
            let hi = bound(hi_attr, hi_in, f64::INFINITY, "max")?;
            Data::Float(v.into_iter().map(|x| clamp(x, lo, hi)).collect())
        }
        Num::Int(v) => {
            if lo_attr.is_some() || hi_attr.is_some() {
                return Err("the attributes `min` and `max` (before opset 11) clip float tensors only".into());
            }
            let bound = |i: Option<Scalar>, default: i64, what: &str| match i {
                Some(Scalar::Int(v)) => Ok(v),
                Some(Scalar::Float(_)) => Err(format!("the {what} is a float but the input is an int tensor")),
                None => Ok(default),
            };
            let (lo, hi) = (bound(lo_in, i64::MIN, "min")?, bound(hi_in, i64::MAX, "max")?);
            Data::Int(v.into_iter().map(|x| clamp(x, lo, hi)).collect())
        }
    };
    Ok(Tensor { dims: x.dims.clone(), data })
}

/// A comparison of two operands of one class, broadcast, into bools; any comparison with
/// NaN is false.
fn compare(inputs: &[Option<&Tensor>], holds: fn(Option<Ordering>) -> bool) -> Result<Tensor, String> {
    let (dims, x, y) = broadcast_pair(arg(inputs, 0, "first operand")?, arg(inputs, 1, "second operand")?)?;
    let data = match (num(x), num(y)) {
        (Num::Int(x), Num::Int(y)) => x.iter().zip(&y).map(|(p, q)| holds(p.partial_cmp(q))).collect(),
        (Num::Float(x), Num::Float(y)) => x.iter().zip(&y).map(|(p, q)| holds(p.partial_cmp(q))).collect(),
        (x, y) => return Err(mixed(&x, &y)),
    };
    Ok(Tensor { dims, data: Data::Bool(data) })
}

fn equal(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    compare(inputs, |o| o == Some(Ordering::Equal))
}

fn less(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    compare(inputs, |o| o == Some(Ordering::Less))
}

fn less_or_equal(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    compare(inputs, |o| matches!(o, Some(Ordering::Less | Ordering::Equal)))
}

fn greater(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    compare(inputs, |o| o == Some(Ordering::Greater))
}

fn greater_or_equal(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    compare(inputs, |o| matches!(o, Some(Ordering::Greater | Ordering::Equal)))
}

fn not(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "input")?;
    let Data::Bool(v) = &x.data else { return Err(format!("Not takes bool tensors, got {}", x.data.kind())) };
    Ok(Tensor::bools(x.dims.clone(), v.iter().map(|b| !b).collect()))
}

/// A logical op on two bool operands, broadcast.
fn logic(inputs: &[Option<&Tensor>], f: fn(bool, bool) -> bool) -> Result<Tensor, String> {
    let (dims, x, y) = broadcast_pair(arg(inputs, 0, "first operand")?, arg(inputs, 1, "second operand")?)?;
    let (Data::Bool(x), Data::Bool(y)) = (&x, &y) else {
        return Err(format!("logical operators take bool tensors, got {} and {}", x.kind(), y.kind()));
    };
    Ok(Tensor::bools(dims, x.iter().zip(y).map(|(&p, &q)| f(p, q)).collect()))
}

fn and(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    logic(inputs, |p, q| p && q)
}

fn or(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    logic(inputs, |p, q| p || q)
}

fn xor(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    logic(inputs, |p, q| p != q)
}

/// The condition is a bool tensor (an int one counts nonzero as true).
fn where_(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    fn pick<T: Copy>(c: &[bool], x: &[T], y: &[T]) -> Vec<T> {
        c.iter().zip(x.iter().zip(y)).map(|(&c, (&p, &q))| if c { p } else { q }).collect()
    }
    let (c, x, y) = (arg(inputs, 0, "condition")?, arg(inputs, 1, "X")?, arg(inputs, 2, "Y")?);
    let dims = broadcast_shape(&[&c.dims, &x.dims, &y.dims])?;
    size_of(&dims)?;
    let cond = match broadcast_to(c, &dims).data {
        Data::Bool(b) => b,
        Data::Int(v) => v.iter().map(|&v| v != 0).collect(),
        Data::Float(_) => return Err("the condition must be a bool tensor, got float".into()),
    };
    let data = match (broadcast_to(x, &dims).data, broadcast_to(y, &dims).data) {
        (Data::Bool(p), Data::Bool(q)) => Data::Bool(pick(&cond, &p, &q)),
        (p, q) => match (num(p), num(q)) {
            (Num::Int(p), Num::Int(q)) => Data::Int(pick(&cond, &p, &q)),
            (Num::Float(p), Num::Float(q)) => Data::Float(pick(&cond, &p, &q)),
            (p, q) => return Err(mixed(&p, &q)),
        },
    };
    Ok(Tensor { dims, data })
}

/// `start + k·delta` for k from 0 while short of `limit`: max(⌈(limit − start) / delta⌉, 0)
/// values.
fn range(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let too_many = |n: String| format!("Range would make {n} values, past the limit of {MAX_CONST} for folding");
    let s = scalar(arg(inputs, 0, "start")?, "start")?;
    let l = scalar(arg(inputs, 1, "limit")?, "limit")?;
    let d = scalar(arg(inputs, 2, "delta")?, "delta")?;
    match (s, l, d) {
        (Scalar::Int(s), Scalar::Int(l), Scalar::Int(d)) => {
            if d == 0 {
                return Err("the delta of Range is 0".into());
            }
            let (s, l, d) = (s as i128, l as i128, d as i128);
            let span = if d > 0 { l - s } else { s - l };
            let n = if span > 0 { (span + d.abs() - 1) / d.abs() } else { 0 };
            if n > MAX_CONST as i128 {
                return Err(too_many(n.to_string()));
            }
            // Every value lies between start and limit, so within int64.
            let values: Vec<i64> = (0..n).map(|k| (s + k * d) as i64).collect();
            Ok(Tensor::ints(vec![n as u64], values))
        }
        (Scalar::Float(s), Scalar::Float(l), Scalar::Float(d)) => {
            let n = ((l - s) / d).ceil().max(0.0);
            if !n.is_finite() || d == 0.0 {
                return Err(format!("Range from {s} to {l} by {d} has no finite number of values"));
            }
            if n > MAX_CONST as f64 {
                return Err(too_many(n.to_string()));
            }
            let n = n as u64;
            Ok(Tensor::floats(vec![n], (0..n).map(|k| s + k as f64 * d).collect()))
        }
        _ => Err("start, limit and delta of Range must have one type".into()),
    }
}

fn constant_of_shape(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let shape = int_vector(arg(inputs, 0, "shape")?, "shape")?;
    let dims = dims_of(&shape, "shape")?;
    let n = size_of(&dims)?;
    let value = match tensor_attr(node, "value")? {
        None => Tensor::scalar_float(0.0),
        Some(t) => decode(t).map_err(|e| format!("attribute `value`: {e}"))?,
    };
    if value.numel() != 1 {
        return Err(format!("attribute `value` must hold one value, got shape {:?}", value.dims));
    }
    let data = match value.data {
        Data::Int(v) => Data::Int(vec![v[0]; n]),
        Data::Float(v) => Data::Float(vec![v[0]; n]),
        Data::Bool(v) => Data::Bool(vec![v[0]; n]),
    };
    Ok(Tensor { dims, data })
}

#[derive(Clone, Copy, PartialEq)]
enum Reduction {
    Sum,
    Prod,
    Max,
    Min,
}

/// Axes from attribute `axes` or input 1; none (or an empty list) reduces every axis,
/// unless `noop_with_empty_axes` is 1. Ints stay ints (checked); bools count as ints.
fn reduce(node: &NodeProto, inputs: &[Option<&Tensor>], how: Reduction) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "data")?;
    let keep = flag(node, "keepdims", true)?;
    let noop = flag(node, "noop_with_empty_axes", false)?;
    let rank = x.dims.len();
    let reduced: Vec<bool> = match axes_of(node, inputs, 1)? {
        Some(a) if !a.is_empty() => {
            let axes = axes_list(&a, rank, "axes")?;
            (0..rank).map(|k| axes.contains(&k)).collect()
        }
        _ if noop => return Ok(x.clone()),
        _ => vec![true; rank],
    };
    let kept: Vec<u64> = (0..rank).map(|k| if reduced[k] { 1 } else { x.dims[k] }).collect();
    let out_strides = strides(&kept);
    let step: Vec<i64> = (0..rank).map(|k| if reduced[k] { 0 } else { out_strides[k] }).collect();
    let slot = affine_map(&x.dims, 0, &step);
    let slots = numel_of(&kept) as usize;
    let dims: Vec<u64> = if keep { kept } else { (0..rank).filter(|&k| !reduced[k]).map(|k| x.dims[k]).collect() };
    let empty = || format!("the reduction over axes {reduced:?} of shape {:?} has no values", x.dims);
    let data = match num(x.data.clone()) {
        Num::Int(v) => {
            let mut acc: Vec<Option<i64>> = vec![None; slots];
            for (&s, &v) in slot.iter().zip(&v) {
                acc[s] = Some(match acc[s] {
                    None => v,
                    Some(a) => match how {
                        Reduction::Sum => a.checked_add(v).ok_or_else(|| format!("the sum overflows int64 at {a} + {v}"))?,
                        Reduction::Prod => a.checked_mul(v).ok_or_else(|| format!("the product overflows int64 at {a} * {v}"))?,
                        Reduction::Max => a.max(v),
                        Reduction::Min => a.min(v),
                    },
                });
            }
            let finish = |a: Option<i64>| match (a, how) {
                (Some(a), _) => Ok(a),
                (None, Reduction::Sum) => Ok(0),
                (None, Reduction::Prod) => Ok(1),
                (None, _) => Err(empty()),
            };
            Data::Int(acc.into_iter().map(finish).collect::<Result<_, _>>()?)
        }
        Num::Float(v) => {
            let mut acc: Vec<Option<f64>> = vec![None; slots];
            for (&s, &v) in slot.iter().zip(&v) {
                acc[s] = Some(match acc[s] {
                    None => v,
                    Some(a) => match how {
                        Reduction::Sum => a + v,
                        Reduction::Prod => a * v,
                        _ if a.is_nan() || v.is_nan() => f64::NAN,
                        Reduction::Max => a.max(v),
                        Reduction::Min => a.min(v),
                    },
                });
            }
            let finish = |a: Option<f64>| match (a, how) {
                (Some(a), _) => Ok(a),
                (None, Reduction::Sum) => Ok(0.0),
                (None, Reduction::Prod) => Ok(1.0),
                (None, _) => Err(empty()),
            };
            Data::Float(acc.into_iter().map(finish).collect::<Result<_, _>>()?)
        }
    };
    Ok(Tensor { dims, data })
}

fn reduce_sum(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    reduce(node, inputs, Reduction::Sum)
}

fn reduce_prod(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    reduce(node, inputs, Reduction::Prod)
}

fn reduce_max(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    reduce(node, inputs, Reduction::Max)
}

fn reduce_min(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    reduce(node, inputs, Reduction::Min)
}

/// The input broadcast with the shape input (numpy rules both ways, as ONNX specifies).
fn expand(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "input")?;
    let shape = dims_of(&int_vector(arg(inputs, 1, "shape")?, "shape")?, "shape")?;
    let dims = broadcast_shape(&[&x.dims, &shape])?;
    size_of(&dims)?;
    Ok(broadcast_to(x, &dims))
}

fn tile(_: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "input")?;
    let repeats = dims_of(&int_vector(arg(inputs, 1, "repeats")?, "repeats")?, "repeats")?;
    if repeats.len() != x.dims.len() {
        return Err(format!("the repeats {repeats:?} must have one value per axis of shape {:?}", x.dims));
    }
    let dims = x
        .dims
        .iter()
        .zip(&repeats)
        .map(|(&d, &r)| d.checked_mul(r))
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| format!("tiling shape {:?} by {repeats:?} overflows", x.dims))?;
    let n = size_of(&dims)?;
    let s = strides(&x.dims);
    let mut map = Vec::with_capacity(n);
    let mut index = vec![0u64; dims.len()];
    for _ in 0..n {
        map.push((0..dims.len()).map(|a| (index[a] % x.dims[a]) as i64 * s[a]).sum::<i64>() as usize);
        for a in (0..dims.len()).rev() {
            index[a] += 1;
            if index[a] < dims[a] {
                break;
            }
            index[a] = 0;
        }
    }
    Ok(Tensor { dims, data: x.data.take(&map) })
}

fn transpose(node: &NodeProto, inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = arg(inputs, 0, "input")?;
    let rank = x.dims.len();
    let perm: Vec<i64> = match ints_attr(node, "perm")? {
        Some(p) => p.to_vec(),
        None => (0..rank as i64).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..rank as i64).collect::<Vec<i64>>() {
        return Err(format!("attribute `perm` = {perm:?} is not a permutation of the {rank} axes"));
    }
    let s = strides(&x.dims);
    let dims: Vec<u64> = perm.iter().map(|&p| x.dims[p as usize]).collect();
    let step: Vec<i64> = perm.iter().map(|&p| s[p as usize]).collect();
    let map = affine_map(&dims, 0, &step);
    Ok(Tensor { dims, data: x.data.take(&map) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::bytes::Bytes;

    fn node(op: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto { op_type: Some(op.into()), attribute, ..Default::default() }
    }

    fn named(name: &str, t: AttributeType) -> AttributeProto {
        AttributeProto { name: Some(name.into()), r#type: Some(t as i32), ..Default::default() }
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto { i: Some(v), ..named(name, AttributeType::Int) }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { ints: v.to_vec(), ..named(name, AttributeType::Ints) }
    }

    fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto { f: Some(v), ..named(name, AttributeType::Float) }
    }

    fn tensor(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto { t: Some(t), ..named(name, AttributeType::Tensor) }
    }

    /// A 1-D int tensor.
    fn iv(v: &[i64]) -> Tensor {
        Tensor::ints(vec![v.len() as u64], v.to_vec())
    }

    /// A 1-D float tensor.
    fn fv(v: &[f64]) -> Tensor {
        Tensor::floats(vec![v.len() as u64], v.to_vec())
    }

    fn try_run(n: &NodeProto, inputs: &[&Tensor]) -> Result<Tensor, String> {
        eval(n, &inputs.iter().map(|t| Some(*t)).collect::<Vec<_>>())
    }

    fn run(n: &NodeProto, inputs: &[&Tensor]) -> Tensor {
        try_run(n, inputs).unwrap_or_else(|e| panic!("{} failed: {e}", n.op_type()))
    }

    fn fail(n: &NodeProto, inputs: &[&Tensor]) -> String {
        match try_run(n, inputs) {
            Ok(t) => panic!("{} should fail, gave {t:?}", n.op_type()),
            Err(e) => e,
        }
    }

    #[test]
    fn add_broadcasts_a_column_against_a_row() {
        let col = Tensor::ints(vec![2, 1], vec![1, 2]);
        let row = iv(&[10, 20, 30]);
        assert_eq!(run(&node("Add", vec![]), &[&col, &row]), Tensor::ints(vec![2, 3], vec![11, 21, 31, 12, 22, 32]));
        let t = run(&node("Mul", vec![]), &[&Tensor::scalar_float(2.0), &Tensor::floats(vec![1, 2], vec![1.5, -3.0])]);
        assert_eq!(t, Tensor::floats(vec![1, 2], vec![3.0, -6.0]));
        let e = fail(&node("Add", vec![]), &[&iv(&[1, 2]), &iv(&[1, 2, 3])]);
        assert!(e.contains("do not broadcast"), "{e}");
    }

    #[test]
    fn binary_ops_need_one_type_but_take_bools_as_ints() {
        let e = fail(&node("Add", vec![]), &[&iv(&[1]), &fv(&[1.0])]);
        assert!(e.contains("int and float"), "{e}");
        let b = Tensor::bools(vec![2], vec![true, false]);
        assert_eq!(run(&node("Add", vec![]), &[&b, &iv(&[5, 5])]), iv(&[6, 5]));
    }

    #[test]
    fn gather_takes_negative_and_scalar_indices() {
        let shape = iv(&[1, 3, 225, 224]);
        let g = node("Gather", vec![int("axis", 0)]);
        assert_eq!(run(&g, &[&shape, &Tensor::scalar_int(-1)]), Tensor::scalar_int(224));
        assert_eq!(run(&g, &[&shape, &iv(&[2, -2])]), iv(&[225, 225]));
        let m = Tensor::ints(vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        let cols = run(&node("Gather", vec![int("axis", 1)]), &[&m, &iv(&[-1, 0])]);
        assert_eq!(cols, Tensor::ints(vec![2, 2], vec![3, 1, 6, 4]));
        let row = run(&node("Gather", vec![int("axis", -2)]), &[&m, &Tensor::scalar_int(1)]);
        assert_eq!(row, iv(&[4, 5, 6]));
    }

    #[test]
    fn gather_rejects_indices_out_of_range() {
        let e = fail(&node("Gather", vec![]), &[&iv(&[1, 2, 3]), &Tensor::scalar_int(3)]);
        assert_eq!(e, "index 3 is out of range for axis 0 of size 3");
        let e = fail(&node("Gather", vec![]), &[&iv(&[1, 2, 3]), &Tensor::scalar_int(-4)]);
        assert!(e.contains("index -4"), "{e}");
        let e = fail(&node("Gather", vec![int("axis", 1)]), &[&iv(&[1, 2, 3]), &Tensor::scalar_int(0)]);
        assert_eq!(e, "attribute `axis` = 1 is out of range for rank 1");
    }

    #[test]
    fn slice_follows_the_clamping_rules() {
        let x = iv(&[0, 1, 2, 3, 4]);
        let s = node("Slice", vec![]);
        // Negative end, step 1: [1:-1].
        assert_eq!(run(&s, &[&x, &iv(&[1]), &iv(&[-1])]), iv(&[1, 2, 3]));
        // Step -1 from the last element past the front: [::-1].
        assert_eq!(run(&s, &[&x, &iv(&[-1]), &iv(&[i64::MIN]), &iv(&[0]), &iv(&[-1])]), iv(&[4, 3, 2, 1, 0]));
        // Step -2 from 4 down to (not including) 0: [4:0:-2].
        assert_eq!(run(&s, &[&x, &iv(&[4]), &iv(&[0]), &iv(&[0]), &iv(&[-2])]), iv(&[4, 2]));
        // An end past the size is clamped; an empty range gives an empty tensor.
        assert_eq!(run(&s, &[&x, &iv(&[3]), &iv(&[i64::MAX])]), iv(&[3, 4]));
        assert_eq!(run(&s, &[&x, &iv(&[3]), &iv(&[1])]), iv(&[]));
        // 2-D along axis 1 only, step 2; and the opset-9 attribute form.
        let m = Tensor::ints(vec![2, 4], (0..8).collect());
        let cols = Tensor::ints(vec![2, 2], vec![1, 3, 5, 7]);
        assert_eq!(run(&s, &[&m, &iv(&[1]), &iv(&[4]), &iv(&[-1]), &iv(&[2])]), cols);
        let old = node("Slice", vec![ints("starts", &[1]), ints("ends", &[2]), ints("axes", &[0])]);
        assert_eq!(run(&old, &[&m]), Tensor::ints(vec![1, 4], vec![4, 5, 6, 7]));
        let e = fail(&s, &[&x, &iv(&[0]), &iv(&[3]), &iv(&[0]), &iv(&[0])]);
        assert!(e.contains("steps = [0]"), "{e}");
    }

    #[test]
    fn reshape_copies_zeros_and_infers_minus_one() {
        let x = Tensor::ints(vec![2, 3, 4], (0..24).collect());
        let r = node("Reshape", vec![]);
        assert_eq!(run(&r, &[&x, &iv(&[0, -1])]).dims, vec![2, 12]);
        assert_eq!(run(&r, &[&x, &iv(&[-1, 0, 2])]).dims, vec![4, 3, 2]);
        let e = fail(&node("Reshape", vec![int("allowzero", 1)]), &[&x, &iv(&[0, -1])]);
        assert!(e.contains("cannot infer"), "{e}");
        let e = fail(&r, &[&x, &iv(&[5, -1])]);
        assert!(e.contains("cannot infer the -1"), "{e}");
        let e = fail(&r, &[&x, &iv(&[2, 3, 5])]);
        assert_eq!(e, "cannot reshape 24 elements of shape [2, 3, 4] to [2, 3, 5]");
        let e = fail(&r, &[&x, &iv(&[-1, -1])]);
        assert!(e.contains("more than one -1"), "{e}");
    }

    #[test]
    fn int_div_truncates_toward_zero_and_mod_follows_fmod() {
        let d = node("Div", vec![]);
        assert_eq!(run(&d, &[&iv(&[-7, 7, -7, 7]), &iv(&[2, -2, -2, 2])]), iv(&[-3, -3, 3, 3]));
        assert_eq!(run(&d, &[&fv(&[-7.0]), &fv(&[2.0])]), fv(&[-3.5]));
        assert!(fail(&d, &[&iv(&[1]), &iv(&[0])]).contains("division by zero"));
        assert!(fail(&d, &[&iv(&[i64::MIN]), &iv(&[-1])]).contains("overflows"));
        let m = node("Mod", vec![]);
        assert_eq!(run(&m, &[&iv(&[-7, 7, 6]), &iv(&[2, -2, 3])]), iv(&[1, -1, 0]));
        let c = node("Mod", vec![int("fmod", 1)]);
        assert_eq!(run(&c, &[&iv(&[-7, 7]), &iv(&[2, -2])]), iv(&[-1, 1]));
        assert_eq!(run(&c, &[&fv(&[-7.5]), &fv(&[2.0])]), fv(&[-1.5]));
        assert!(fail(&m, &[&fv(&[1.0]), &fv(&[2.0])]).contains("`fmod` must be 1"));
    }

    #[test]
    fn arithmetic_overflow_is_an_error() {
        let e = fail(&node("Add", vec![]), &[&iv(&[i64::MAX]), &iv(&[1])]);
        assert_eq!(e, format!("{} + 1 overflows int64", i64::MAX));
        assert!(fail(&node("Mul", vec![]), &[&iv(&[1 << 40]), &iv(&[1 << 40])]).contains("overflows"));
        assert!(fail(&node("Neg", vec![]), &[&iv(&[i64::MIN])]).contains("overflows"));
        assert!(fail(&node("Pow", vec![]), &[&iv(&[3]), &iv(&[40])]).contains("overflows"));
        assert_eq!(run(&node("Pow", vec![]), &[&iv(&[3, -1, 0]), &iv(&[4, 5, 0])]), iv(&[81, -1, 1]));
        assert_eq!(run(&node("Pow", vec![]), &[&fv(&[2.0]), &iv(&[-1])]), fv(&[0.5]));
    }

    #[test]
    fn concat_joins_1d_ints_and_checks_shapes() {
        let c = node("Concat", vec![int("axis", 0)]);
        assert_eq!(run(&c, &[&iv(&[1, 2]), &iv(&[]), &iv(&[3])]), iv(&[1, 2, 3]));
        let a = Tensor::ints(vec![2, 1], vec![1, 2]);
        let b = Tensor::ints(vec![2, 2], vec![3, 4, 5, 6]);
        let joined = run(&node("Concat", vec![int("axis", -1)]), &[&a, &b]);
        assert_eq!(joined, Tensor::ints(vec![2, 3], vec![1, 3, 4, 2, 5, 6]));
        assert!(fail(&c, &[&a, &b]).contains("does not match"));
        assert!(fail(&c, &[&iv(&[1]), &fv(&[1.0])]).contains("int and float"));
        assert_eq!(fail(&node("Concat", vec![]), &[&iv(&[1])]), "attribute `axis` is required");
    }

    /// Evaluates `node` on `inputs` (with omitted ones), as the importer will.
    fn step(op: &str, attribute: Vec<AttributeProto>, inputs: &[Option<&Tensor>]) -> Tensor {
        eval(&node(op, attribute), inputs).unwrap_or_else(|e| panic!("{op} failed: {e}"))
    }

    /// The chain timm's TF-"same" padding exports for an (N, C, size, size) input: per
    /// spatial axis `pad = max((ceil(size / stride) - 1) * stride + (kernel - 1) + 1 - size, 0)`,
    /// split `pad // 2` before and the rest after, then the ONNX Pad order
    /// [begin per axis…, end per axis…]. Returns (the total pad of one axis, the pads).
    fn same_pads(size: u64, kernel: i64, stride: i64) -> (i64, Tensor) {
        let shape = shape_op(&node("Shape", vec![]), &[1, 3, size, size]).unwrap();
        let float = DataType::Float as i64;
        let (mut begins, mut ends, mut total) = (Vec::new(), Vec::new(), 0);
        for axis in [2, 3] {
            let ih = step("Gather", vec![int("axis", 0)], &[Some(&shape), Some(&Tensor::scalar_int(axis))]);
            let ih = step("Cast", vec![int("to", float)], &[Some(&ih)]);
            let t = step("Div", vec![], &[Some(&ih), Some(&Tensor::scalar_float(stride as f64))]);
            let t = step("Ceil", vec![], &[Some(&t)]);
            let t = step("Sub", vec![], &[Some(&t), Some(&Tensor::scalar_float(1.0))]);
            let t = step("Mul", vec![], &[Some(&t), Some(&Tensor::scalar_float(stride as f64))]);
            let t = step("Add", vec![], &[Some(&t), Some(&Tensor::scalar_float(kernel as f64))]);
            let t = step("Sub", vec![], &[Some(&t), Some(&ih)]);
            let t = step("Cast", vec![int("to", DataType::Int64 as i64)], &[Some(&t)]);
            let pad = step("Clip", vec![], &[Some(&t), Some(&Tensor::scalar_int(0)), None]);
            total = pad.as_ints().unwrap()[0];
            let begin = step("Div", vec![], &[Some(&pad), Some(&Tensor::scalar_int(2))]);
            let end = step("Sub", vec![], &[Some(&pad), Some(&begin)]);
            let axes = iv(&[0]);
            begins.push(step("Unsqueeze", vec![], &[Some(&begin), Some(&axes)]));
            ends.push(step("Unsqueeze", vec![ints("axes", &[0])], &[Some(&end)]));
        }
        let zeros = iv(&[0, 0]);
        let parts = [&zeros, &begins[0], &begins[1], &zeros, &ends[0], &ends[1]];
        let pads = step("Concat", vec![int("axis", 0)], &parts.map(Some));
        (total, pads)
    }

    #[test]
    fn tf_same_padding_chain_folds_to_pads() {
        // 225, kernel 3, stride 2: out = ceil(225 / 2) = 113, pad = 112 * 2 + 3 - 225 = 2.
        assert_eq!(same_pads(225, 3, 2), (2, iv(&[0, 0, 1, 1, 0, 0, 1, 1])));
        // 224: out = 112, pad = 111 * 2 + 3 - 224 = 1, all of it after.
        assert_eq!(same_pads(224, 3, 2), (1, iv(&[0, 0, 0, 0, 0, 0, 1, 1])));
        // 11, kernel 1, stride 3: out = 4, pad = 3 * 3 + 1 - 11 = -1, clipped to 0.
        assert_eq!(same_pads(11, 1, 3), (0, iv(&[0; 8])));
        // 5, kernel 5, stride 1: pad = 4 + 5 - 5 = 4, two on each side.
        assert_eq!(same_pads(5, 5, 1), (4, iv(&[0, 0, 2, 2, 0, 0, 2, 2])));
    }

    #[test]
    fn cast_truncates_floats_toward_zero_and_rounds_to_the_target() {
        let to = |t: DataType| node("Cast", vec![int("to", t as i64)]);
        let x = fv(&[2.7, -2.7, -0.5, 3.0]);
        assert_eq!(run(&to(DataType::Int64), &[&x]), iv(&[2, -2, 0, 3]));
        assert_eq!(run(&to(DataType::Int32), &[&x]), iv(&[2, -2, 0, 3]));
        assert!(fail(&to(DataType::Int64), &[&fv(&[f64::NAN])]).contains("cannot be cast to int64"));
        assert!(fail(&to(DataType::Int64), &[&fv(&[9.3e18])]).contains("cannot be cast to int64"));
        assert!(fail(&to(DataType::Uint8), &[&iv(&[256])]).contains("cannot be cast to uint8"));
        assert_eq!(run(&to(DataType::Float), &[&fv(&[0.1])]), fv(&[0.1f32 as f64]));
        // float16 has 11 significant bits: 2049 is a tie between 2048 and 2050 (even: 2048).
        assert_eq!(run(&to(DataType::Float16), &[&iv(&[2049, 2051, 70000])]), fv(&[2048.0, 2052.0, f64::INFINITY]));
        assert_eq!(run(&to(DataType::Bfloat16), &[&iv(&[257])]), fv(&[256.0]));
        let b = run(&to(DataType::Bool), &[&fv(&[0.0, -0.5])]);
        assert_eq!(b, Tensor::bools(vec![2], vec![false, true]));
        assert_eq!(run(&to(DataType::Int64), &[&b]), iv(&[0, 1]));
        assert!(fail(&to(DataType::String), &[&x]).contains("STRING"));
        assert!(fail(&node("Cast", vec![]), &[&x]).contains("attribute `to` is required"));
    }

    #[test]
    fn shape_op_honours_start_and_end() {
        let dims = [1, 3, 225, 224];
        assert_eq!(shape_op(&node("Shape", vec![]), &dims).unwrap(), iv(&[1, 3, 225, 224]));
        assert_eq!(shape_op(&node("Shape", vec![int("start", -2)]), &dims).unwrap(), iv(&[225, 224]));
        assert_eq!(shape_op(&node("Shape", vec![int("start", 1), int("end", -1)]), &dims).unwrap(), iv(&[3, 225]));
        assert_eq!(shape_op(&node("Shape", vec![int("start", 9)]), &dims).unwrap(), iv(&[]));
        assert_eq!(shape_op(&node("Shape", vec![int("start", 3), int("end", 1)]), &dims).unwrap(), iv(&[]));
        let m = Tensor::ints(vec![2, 3], vec![0; 6]);
        assert_eq!(run(&node("Shape", vec![]), &[&m]), iv(&[2, 3]));
    }

    #[test]
    fn unsqueeze_and_squeeze_take_axes_as_attribute_or_input() {
        let s = Tensor::scalar_int(7);
        assert_eq!(run(&node("Unsqueeze", vec![ints("axes", &[0])]), &[&s]), iv(&[7]));
        let x = iv(&[1, 2, 3]);
        assert_eq!(run(&node("Unsqueeze", vec![]), &[&x, &iv(&[0, -1])]).dims, vec![1, 3, 1]);
        let y = Tensor::ints(vec![1, 3, 1], vec![1, 2, 3]);
        assert_eq!(run(&node("Squeeze", vec![]), &[&y]), x);
        assert_eq!(run(&node("Squeeze", vec![]), &[&y, &iv(&[])]), x);
        assert_eq!(run(&node("Squeeze", vec![]), &[&y, &iv(&[-1])]).dims, vec![1, 3]);
        assert_eq!(run(&node("Squeeze", vec![ints("axes", &[0])]), &[&y]).dims, vec![3, 1]);
        assert!(fail(&node("Squeeze", vec![ints("axes", &[1])]), &[&y]).contains("not 1"));
        assert!(fail(&node("Unsqueeze", vec![ints("axes", &[0, 0])]), &[&x]).contains("twice"));
        assert!(fail(&node("Unsqueeze", vec![]), &[&x]).contains("required"));
    }

    #[test]
    fn elementwise_unary_and_comparison_ops() {
        let x = fv(&[-1.5, 0.5, 2.5, 3.5]);
        assert_eq!(run(&node("Ceil", vec![]), &[&x]), fv(&[-1.0, 1.0, 3.0, 4.0]));
        assert_eq!(run(&node("Floor", vec![]), &[&x]), fv(&[-2.0, 0.0, 2.0, 3.0]));
        assert_eq!(run(&node("Round", vec![]), &[&x]), fv(&[-2.0, 0.0, 2.0, 4.0]));
        assert_eq!(run(&node("Abs", vec![]), &[&iv(&[-3, 4])]), iv(&[3, 4]));
        assert_eq!(run(&node("Neg", vec![]), &[&iv(&[-3, 4])]), iv(&[3, -4]));
        assert_eq!(run(&node("Sqrt", vec![]), &[&fv(&[9.0])]), fv(&[3.0]));
        assert!(fail(&node("Sqrt", vec![]), &[&iv(&[9])]).contains("float"));
        let lt = run(&node("Less", vec![]), &[&iv(&[1, 5]), &Tensor::scalar_int(3)]);
        assert_eq!(lt, Tensor::bools(vec![2], vec![true, false]));
        let eq = run(&node("Equal", vec![]), &[&fv(&[f64::NAN, 1.0]), &fv(&[f64::NAN, 1.0])]);
        assert_eq!(eq, Tensor::bools(vec![2], vec![false, true]));
        assert_eq!(run(&node("Not", vec![]), &[&eq]), Tensor::bools(vec![2], vec![true, false]));
        let ge = run(&node("GreaterOrEqual", vec![]), &[&iv(&[3, 2]), &iv(&[3, 3])]);
        assert_eq!(run(&node("And", vec![]), &[&ge, &eq]), Tensor::bools(vec![2], vec![false, false]));
        assert_eq!(run(&node("Or", vec![]), &[&ge, &eq]), Tensor::bools(vec![2], vec![true, true]));
    }

    #[test]
    fn max_min_clip_and_where() {
        let m = run(&node("Max", vec![]), &[&iv(&[1, 5]), &Tensor::scalar_int(3), &iv(&[0, 9])]);
        assert_eq!(m, iv(&[3, 9]));
        assert_eq!(run(&node("Min", vec![]), &[&fv(&[1.0, 5.0]), &fv(&[2.0, 2.0])]), fv(&[1.0, 2.0]));
        let x = iv(&[-5, 0, 5, 10]);
        let clip = node("Clip", vec![]);
        let (lo, hi) = (Tensor::scalar_int(0), Tensor::scalar_int(6));
        assert_eq!(eval(&clip, &[Some(&x), Some(&lo), Some(&hi)]).unwrap(), iv(&[0, 0, 5, 6]));
        assert_eq!(eval(&clip, &[Some(&x), None, Some(&hi)]).unwrap(), iv(&[-5, 0, 5, 6]));
        assert_eq!(eval(&clip, &[Some(&x), Some(&hi), Some(&lo)]).unwrap(), iv(&[0, 0, 0, 0]));
        let old = node("Clip", vec![float("min", 0.0), float("max", 1.0)]);
        assert_eq!(run(&old, &[&fv(&[-1.0, 0.5, 2.0])]), fv(&[0.0, 0.5, 1.0]));
        assert!(fail(&old, &[&x]).contains("float tensors only"));
        let c = Tensor::bools(vec![2], vec![true, false]);
        assert_eq!(run(&node("Where", vec![]), &[&c, &iv(&[1, 2]), &Tensor::scalar_int(0)]), iv(&[1, 0]));
    }

    #[test]
    fn range_and_constant_of_shape() {
        let r = node("Range", vec![]);
        let (s, l) = (Tensor::scalar_int(10), Tensor::scalar_int(1));
        assert_eq!(run(&r, &[&s, &l, &Tensor::scalar_int(-3)]), iv(&[10, 7, 4]));
        assert_eq!(run(&r, &[&l, &s, &Tensor::scalar_int(4)]), iv(&[1, 5, 9]));
        assert_eq!(run(&r, &[&s, &l, &Tensor::scalar_int(1)]), iv(&[]));
        let f = run(&r, &[&Tensor::scalar_float(0.0), &Tensor::scalar_float(1.0), &Tensor::scalar_float(0.25)]);
        assert_eq!(f, fv(&[0.0, 0.25, 0.5, 0.75]));
        assert!(fail(&r, &[&s, &l, &Tensor::scalar_int(0)]).contains("delta"));
        let big = fail(&r, &[&Tensor::scalar_int(i64::MIN), &Tensor::scalar_int(i64::MAX), &Tensor::scalar_int(1)]);
        assert!(big.contains("past the limit"), "{big}");
        let c = run(&node("ConstantOfShape", vec![]), &[&iv(&[2, 1])]);
        assert_eq!(c, Tensor::floats(vec![2, 1], vec![0.0, 0.0]));
        let seven = TensorProto { dims: vec![1], data_type: Some(DataType::Int64 as i32), int64_data: vec![7], ..Default::default() };
        let c = run(&node("ConstantOfShape", vec![tensor("value", seven)]), &[&iv(&[3])]);
        assert_eq!(c, iv(&[7, 7, 7]));
        assert!(fail(&node("ConstantOfShape", vec![]), &[&iv(&[2, -1])]).contains("negative"));
    }

    #[test]
    fn constant_of_shape_refuses_more_than_max_const() {
        let e = fail(&node("ConstantOfShape", vec![]), &[&iv(&[1 << 20, 1 << 20])]);
        assert_eq!(e, "a constant of shape [1048576, 1048576] (1099511627776 elements) is past the limit of 65536 elements for folding");
        assert!(fail(&node("Expand", vec![]), &[&iv(&[1]), &iv(&[1 << 17])]).contains("past the limit"));
        assert!(fail(&node("Tile", vec![]), &[&iv(&[1, 2, 3]), &iv(&[i64::MAX])]).contains("overflows"));
        assert!(fail(&node("Tile", vec![]), &[&iv(&[1, 2]), &iv(&[1 << 62])]).contains("past the limit"));
    }

    #[test]
    fn reductions_take_axes_and_keepdims() {
        let x = Tensor::ints(vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(run(&node("ReduceProd", vec![]), &[&x]), Tensor::ints(vec![1, 1], vec![720]));
        assert_eq!(run(&node("ReduceSum", vec![int("keepdims", 0)]), &[&x, &iv(&[0])]), iv(&[5, 7, 9]));
        let m = run(&node("ReduceMax", vec![ints("axes", &[-1])]), &[&x]);
        assert_eq!(m, Tensor::ints(vec![2, 1], vec![3, 6]));
        let m = run(&node("ReduceMin", vec![int("keepdims", 0)]), &[&x]);
        assert_eq!(m, Tensor::ints(vec![], vec![1]));
        assert_eq!(run(&node("ReduceSum", vec![int("noop_with_empty_axes", 1)]), &[&x]), x);
        let empty = Tensor::ints(vec![0, 2], vec![]);
        assert_eq!(run(&node("ReduceSum", vec![ints("axes", &[0])]), &[&empty]), Tensor::ints(vec![1, 2], vec![0, 0]));
        assert!(fail(&node("ReduceMax", vec![ints("axes", &[0])]), &[&empty]).contains("no values"));
    }

    #[test]
    fn expand_tile_and_transpose() {
        let x = Tensor::ints(vec![2, 1], vec![1, 2]);
        assert_eq!(run(&node("Expand", vec![]), &[&x, &iv(&[1, 3])]), Tensor::ints(vec![2, 3], vec![1, 1, 1, 2, 2, 2]));
        assert_eq!(run(&node("Tile", vec![]), &[&x, &iv(&[2, 2])]), Tensor::ints(vec![4, 2], vec![1, 1, 2, 2, 1, 1, 2, 2]));
        let m = Tensor::ints(vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        let t = Tensor::ints(vec![3, 2], vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(run(&node("Transpose", vec![]), &[&m]), t);
        assert_eq!(run(&node("Transpose", vec![ints("perm", &[1, 0])]), &[&m]), t);
        assert!(fail(&node("Transpose", vec![ints("perm", &[0, 0])]), &[&m]).contains("not a permutation"));
    }

    #[test]
    fn constant_reads_every_value_attribute() {
        let c = |a| run(&node("Constant", vec![a]), &[]);
        assert_eq!(c(int("value_int", 3)), Tensor::scalar_int(3));
        assert_eq!(c(ints("value_ints", &[1, 2])), iv(&[1, 2]));
        assert_eq!(c(float("value_float", 0.5)), Tensor::scalar_float(0.5));
        let raw = TensorProto {
            dims: vec![2],
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(Bytes::from([5i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())),
            ..Default::default()
        };
        assert_eq!(c(tensor("value", raw)), iv(&[5, -1]));
        let stripped = TensorProto { dims: vec![64, 3], data_type: Some(DataType::Float as i32), ..Default::default() };
        let e = fail(&node("Constant", vec![tensor("value", stripped)]), &[]);
        assert!(e.contains("absent"), "{e}");
        assert!(fail(&node("Constant", vec![]), &[]).contains("exactly one"));
    }

    #[test]
    fn from_proto_reads_typed_and_raw_payloads() {
        let t = |dt: DataType, dims: Vec<i64>| TensorProto { dims, data_type: Some(dt as i32), ..Default::default() };
        let i32s = TensorProto { int32_data: vec![-1, 2], ..t(DataType::Int32, vec![2]) };
        assert_eq!(from_proto(&i32s), Some(iv(&[-1, 2])));
        let f = TensorProto { float_data: vec![1.5], ..t(DataType::Float, vec![]) };
        assert_eq!(from_proto(&f), Some(Tensor::scalar_float(1.5)));
        let u8s = TensorProto { raw_data: Some(Bytes::from_static(&[255, 1])), ..t(DataType::Uint8, vec![2]) };
        assert_eq!(from_proto(&u8s), Some(iv(&[255, 1])));
        // float16 1.0 is 0x3c00, -2.0 is 0xc000.
        let h = TensorProto { raw_data: Some(Bytes::from_static(&[0x00, 0x3c, 0x00, 0xc0])), ..t(DataType::Float16, vec![2]) };
        assert_eq!(from_proto(&h), Some(fv(&[1.0, -2.0])));
        let b = TensorProto { raw_data: Some(Bytes::from_static(&[1, 0])), ..t(DataType::Bool, vec![2]) };
        assert_eq!(from_proto(&b), Some(Tensor::bools(vec![2], vec![true, false])));
        assert_eq!(from_proto(&t(DataType::Int64, vec![0])), Some(iv(&[])));
        // Absent, inconsistent, negative dims, too large, an unsupported type.
        assert_eq!(from_proto(&t(DataType::Int64, vec![4])), None);
        assert_eq!(from_proto(&TensorProto { int64_data: vec![1, 2, 3], ..t(DataType::Int64, vec![2]) }), None);
        assert_eq!(from_proto(&TensorProto { raw_data: Some(Bytes::from_static(&[0; 7])), ..t(DataType::Int64, vec![1]) }), None);
        assert_eq!(from_proto(&TensorProto { int64_data: vec![1], ..t(DataType::Int64, vec![-1]) }), None);
        assert_eq!(from_proto(&t(DataType::Float, vec![1 << 20])), None);
        assert_eq!(from_proto(&TensorProto { string_data: vec![Bytes::from_static(b"a")], ..t(DataType::String, vec![1]) }), None);
    }

    #[test]
    fn eval_checks_its_inputs_and_operators() {
        let bad = Tensor::ints(vec![3], vec![1, 2]);
        assert!(fail(&node("Identity", vec![]), &[&bad]).contains("holds 2 values instead of 3"));
        assert!(fail(&node("Conv", vec![]), &[&iv(&[1])]).contains("not an operator"));
        let custom = NodeProto { domain: Some("com.example".into()), ..node("Add", vec![]) };
        assert!(fail(&custom, &[&iv(&[1]), &iv(&[1])]).contains("com.example"));
        assert!(fail(&node("Add", vec![]), &[&iv(&[1])]).contains("missing"));
        assert!(is_foldable("Gather") && is_foldable("Shape") && !is_foldable("Conv"));
    }

    /// Every operator on a spread of odd inputs and attributes: results or errors, no panic.
    #[test]
    fn eval_never_panics() {
        let tensors = [
            Tensor::scalar_int(0),
            Tensor::scalar_int(-1),
            iv(&[1, -2, i64::MAX]),
            Tensor::ints(vec![2, 2], vec![i64::MIN, 0, 3, -1]),
            iv(&[]),
            fv(&[f64::NAN, 2.5]),
            Tensor::scalar_float(f64::INFINITY),
            Tensor::bools(vec![2, 1], vec![true, false]),
            Tensor::ints(vec![0, 3], vec![]),
        ];
        let value = TensorProto { dims: vec![1], data_type: Some(DataType::Int64 as i32), int64_data: vec![2], ..Default::default() };
        let attrs = [
            vec![],
            vec![int("axis", -3), int("keepdims", 0)],
            vec![int("axis", 1), int("to", DataType::Float16 as i64)],
            vec![ints("axes", &[0, -1]), int("to", DataType::Uint8 as i64), int("fmod", 1)],
            vec![ints("perm", &[1, 0]), int("allowzero", 1), int("start", -9), int("end", 9)],
            vec![ints("starts", &[i64::MIN]), ints("ends", &[i64::MAX]), float("min", 1.0), float("max", -1.0)],
            vec![tensor("value", value), int("noop_with_empty_axes", 1), int("value_int", 4)],
            vec![int("to", 9999), ints("axes", &[]), ints("shape", &[-1, 0])],
        ];
        let mut choices: Vec<Option<&Tensor>> = vec![None];
        choices.extend(tensors.iter().map(Some));
        let mut runs = 0;
        for (op, _) in OPS {
            for a in &attrs {
                let n = node(op, a.clone());
                for i in 0..choices.len().pow(3) {
                    let pick = |k: u32| choices[i / choices.len().pow(k) % choices.len()];
                    for len in 0..=3 {
                        let inputs: Vec<Option<&Tensor>> = (0..len).map(pick).collect();
                        if len < 3 && i >= choices.len().pow(len) {
                            continue;
                        }
                        runs += 1;
                        if let Ok(t) = eval(&n, &inputs) {
                            assert!(check(&t).is_ok(), "{op} gave a malformed {t:?}");
                        }
                    }
                }
            }
        }
        assert!(runs > 100_000);
        for dims in [vec![], vec![0, u64::MAX], vec![u64::MAX, 2], vec![1; 65]] {
            let _ = shape_op(&node("Shape", vec![int("start", i64::MIN), int("end", i64::MAX)]), &dims);
        }
    }
}
