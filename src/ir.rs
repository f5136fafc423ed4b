//! The graph IR: typed operators with inferred shapes, in topological order.
//!
//! In: built by a front end (`crate::lower` for `.cnn` files, the ONNX importer for
//! models). Out: consumed by `crate::unify`, which groups the graph into the paper's
//! unified layers.
//!
//! Invariants, established by the front ends and relied on everywhere after:
//! - `nodes[k]` produces value `ValueId(k + 1)`; value 0 is the network input. Every
//!   node's inputs are values produced earlier (the node list is topologically sorted),
//!   so the graph is a DAG even though today's front ends only build chains.
//! - Every node's `output` shape is inferred and every size in it is ≥ 1.
//! - The graph is immutable after construction: passes build new structures.

use crate::diag::Span;
use serde::Serialize;
use std::fmt;

/// The shape of one sample (no batch axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Shape {
    /// Channels × height × width.
    Image { c: u64, h: u64, w: u64 },
    /// A flat vector (after `flatten` or a linear layer).
    Vector { n: u64 },
}

impl Shape {
    /// Number of scalars in one sample.
    pub fn numel(&self) -> u64 {
        match *self {
            Shape::Image { c, h, w } => c * h * w,
            Shape::Vector { n } => n,
        }
    }
    /// The shape as a list of sizes, as a plan writes it.
    pub fn dims(&self) -> Vec<u64> {
        match *self {
            Shape::Image { c, h, w } => vec![c, h, w],
            Shape::Vector { n } => vec![n],
        }
    }
    /// The shape seen as channels × height × width (a vector is `n × 1 × 1`).
    pub fn chw(&self) -> (u64, u64, u64) {
        match *self {
            Shape::Image { c, h, w } => (c, h, w),
            Shape::Vector { n } => (n, 1, 1),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Image { c, h, w } => write!(f, "({c},{h},{w})"),
            Shape::Vector { n } => write!(f, "({n})"),
        }
    }
}

/// Where a node came from, for error messages.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// A span in a `.cnn` source.
    Source(Span),
    /// An ONNX node, by name (or `op_type#index` when unnamed).
    OnnxNode(String),
    /// Inserted by a front end (e.g. the implicit flatten before a linear layer).
    Implicit(Box<Origin>),
}

/// Identifies a value: 0 is the graph input, `k + 1` is the output of `nodes[k]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub name: String,
    pub input: Shape,
    pub nodes: Vec<Node>,
}

impl Graph {
    /// The shape of a value.
    pub fn shape(&self, v: ValueId) -> Shape {
        if v.0 == 0 {
            self.input
        } else {
            self.nodes[v.0 - 1].output
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: Shape,
    /// The module name: parameters are `{name}.weight` and `{name}.bias`. For a `.cnn`
    /// file it is the layer's label, or its index in an equivalent PyTorch
    /// `nn.Sequential`; for ONNX, the initializer names are kept in `params`.
    pub name: String,
    /// Parameter names when the front end knows them (ONNX initializers).
    pub params: Option<ParamNames>,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamNames {
    pub weight: String,
    pub bias: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Conv(Conv),
    Linear(Linear),
    Activation(Activation),
    Pool(Pool),
    GlobalPool(PoolKind),
    Flatten,
}

impl Op {
    /// A short name for tables and messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "conv",
            Op::Linear(_) => "linear",
            Op::Activation(_) => "activation",
            Op::Pool(p) => match p.kind {
                PoolKind::Max => "maxpool",
                PoolKind::Avg => "avgpool",
            },
            Op::GlobalPool(PoolKind::Max) => "global maxpool",
            Op::GlobalPool(PoolKind::Avg) => "global avgpool",
            Op::Flatten => "flatten",
        }
    }
}

/// Padding of one spatial axis: elements added before the first and after the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub struct Pad {
    pub begin: u64,
    pub end: u64,
}

/// A 2-D convolution (cross-correlation, as in PyTorch and ONNX).
/// Axis arrays are `[height, width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub in_channels: u64,
    pub out_channels: u64,
    pub kernel: [u64; 2],
    pub stride: [u64; 2],
    pub pad: [Pad; 2],
    pub dilation: [u64; 2],
    pub groups: u64,
    pub bias: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub in_features: u64,
    pub out_features: u64,
    pub bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    Max,
    Avg,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub kind: PoolKind,
    pub kernel: [u64; 2],
    pub stride: [u64; 2],
    pub pad: [Pad; 2],
    pub ceil_mode: bool,
    /// Average pooling only: whether padded positions count in the divisor.
    pub count_include_pad: bool,
}

/// Element-wise activations. The grammar and IR know more of them than the paper's
/// analysis covers; `crate::analyze` says which it can handle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    LeakyRelu { slope: f64 },
    Tanh,
    Sigmoid,
    Gelu,
    Silu,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Identity => write!(f, "identity"),
            Activation::Relu => write!(f, "relu"),
            Activation::LeakyRelu { slope } => write!(f, "leaky_relu({slope})"),
            Activation::Tanh => write!(f, "tanh"),
            Activation::Sigmoid => write!(f, "sigmoid"),
            Activation::Gelu => write!(f, "gelu"),
            Activation::Silu => write!(f, "silu"),
        }
    }
}

/// Output size of a convolution along one axis, or `None` when it would be < 1.
pub fn conv_out_size(input: u64, kernel: u64, stride: u64, pad: Pad, dilation: u64) -> Option<u64> {
    let padded = input.checked_add(pad.begin)?.checked_add(pad.end)?;
    let span = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    if stride == 0 || padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// Output size of a pooling along one axis (PyTorch's rule, including `ceil_mode`,
/// where a last window that starts in the end padding is dropped), or `None` when < 1.
pub fn pool_out_size(input: u64, kernel: u64, stride: u64, pad: Pad, ceil_mode: bool) -> Option<u64> {
    let padded = input.checked_add(pad.begin)?.checked_add(pad.end)?;
    if stride == 0 || kernel == 0 || padded < kernel {
        return None;
    }
    let room = padded - kernel;
    let mut out = if ceil_mode { room.div_ceil(stride) + 1 } else { room / stride + 1 };
    if ceil_mode && (out - 1) * stride >= input + pad.begin {
        out -= 1;
    }
    Some(out)
}
