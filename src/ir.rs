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
    /// What a front end wants the user to know (once, on stderr): names it recovered,
    /// BatchNorm layers an exporter folded away.
    pub notes: Vec<String>,
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
    /// The stored weight's shape where it is not the op's own: a Linear applied at each
    /// position of a channels-last image is a 1×1 conv here, its weight [out, in]; a
    /// ConvTranspose's weight is [C_in, C_out/g, k_h, k_w] (see `transposed`).
    pub shape: Option<Vec<u64>>,
    /// The conv is a ConvTranspose's (after its zeros, [`Op::Dilate`], where the stride
    /// is not 1): the stored weight v is [C_in, C_out/g, k_h, k_w] and the conv's is its
    /// transpose per group with the kernel turned by 180°,
    /// w[g·C_out/g + o, i, y, x] = v[g·C_in/g + i, o, k_h − 1 − y, k_w − 1 − x].
    pub transposed: bool,
    /// The weight is standardized per filter before the conv uses it (weight
    /// standardization: BiT's and timm's `StdConv2d`, NF-ResNets' `ScaledStdConv2d`).
    pub standardized: Option<Standardized>,
}

/// A conv weight computed from the stored one per output filter:
/// `w = gain · (v − mean(v)) / √(var(v) + ε)`, the mean and the (biased) variance over
/// the filter's C_in/g · k_h · k_w elements. The stored weight's scale cancels: the
/// effective weight has per-filter mean 0 and mean square gain² (up to ε).
#[derive(Clone, Debug, PartialEq)]
pub struct Standardized {
    /// The product of the constant factors on the standardized weight in the network as
    /// exported (1 for `StdConv2d`; γ/√fan for `ScaledStdConv2d`), a per-filter gain
    /// initializer's values included where they are known and equal.
    pub gain: f64,
    /// The initializer of a per-filter gain multiplying it (`ScaledStdConv2d.gain`), if any,
    /// and its value at initialization (part of `gain`; 1 where the export does not carry it).
    pub gain_param: Option<(String, f64)>,
    /// ε under the square root.
    pub epsilon: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Conv(Conv),
    Linear(Linear),
    Activation(Activation),
    Pool(Pool),
    GlobalPool(PoolKind),
    Flatten,
    /// The element-wise sum of two or more values of one shape (ONNX `Add`, `Sum`).
    Add,
    /// Values side by side along the channel axis.
    Concat,
    /// Batch normalization of each channel (its own node; see `docs/dag.md`).
    BatchNorm(BatchNorm),
    /// The element-wise product of two values; the second may be a per-channel gate
    /// of shape (C, 1, 1), broadcast over the positions (squeeze-excitation).
    Mul,
    /// Channels `start..end` of the input (ONNX `Slice` or one output of `Split` on axis 1).
    ChannelSlice {
        start: u64,
        end: u64,
    },
    /// A channel shuffle (Reshape → Transpose → Reshape): channel `g·n + k` moves to
    /// `k·groups + g`; a permutation of the channels.
    Shuffle {
        groups: u64,
    },
    /// Zeros between the positions: input position (y, x) goes to (y·s_h, x·s_w), every
    /// other position is 0 (output (h − 1)·s_h + 1 × (w − 1)·s_w + 1). A transposed conv
    /// of stride s is this followed by a stride-1 conv (ONNX `ConvTranspose`).
    Dilate {
        stride: [u64; 2],
    },
    /// Nearest or linear upsampling by integer factors [h, w].
    Resize {
        scale: [u64; 2],
        linear: bool,
    },
    /// Split attention's softmax across the radix (ResNeSt's rSoftMax) of a pooled vector
    /// (C, 1, 1), C = groups · radix · n: viewed (groups, radix, n), transposed to
    /// (radix, groups, n), a softmax over the radix: output (r, g, k) is the softmax at r
    /// of inputs (g, ·, k). Radix 2 (a sigmoid of the difference).
    RadixSoftmax {
        radix: u64,
        groups: u64,
    },
    /// x (C, H, W) + t (C, 1, 1), t broadcast over the positions (global-context
    /// attention's channel add).
    AddBroadcast,
    /// A softmax over the positions of each channel of each sample (global-context
    /// attention's weights: its 1-channel mask map, viewed as (N, 1, H·W)).
    SoftmaxPositions,
    /// An attention pool: inputs x (C, H, W) and weights a (1, H, W) → (C, 1, 1), Σ_p a_p
    /// x_c,p (global-context attention: MatMul of x viewed (N, 1, C, H·W) and a viewed
    /// (N, 1, H·W, 1)).
    AttentionPool,
    /// The per-sample transpose of a value of height 1: (A, 1, B) → (B, 1, A), output
    /// channel b, position a = input channel a, position b. An (N, A, B) tensor is the
    /// image (A, 1, B) in the IR: efficient channel attention transposes its pooled vector
    /// (C, 1, 1) to a row (1, 1, C), convolves it across the channels (a 1×k conv) and back.
    SwapChannelsWidth,
    /// Resampling to any size (ONNX `Resize`, linear, or nearest where it is not a whole
    /// factor's copies): each output position a fixed weighted sum of input positions,
    /// separable per axis ([`Resample::weights`]); the output size is the node's shape.
    Resample(Resample),
    /// An element-wise function of one value other than the activations the unified
    /// layers know (ReLU6 as `Clip`, hard-swish, x·sigmoid(x) written out, GELU with `Erf`).
    Elementwise(Expr),
}

/// How ONNX `Resize` maps an output coordinate to an input one
/// (`coordinate_transformation_mode`), with `scale` = output/input length (or the given scale).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CoordTransform {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

/// ONNX `Resize`'s `nearest_mode`: how a fractional input coordinate picks its position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// A resampling (see [`Op::Resample`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Resample {
    /// Linear interpolation (bilinear on an image), or nearest.
    pub linear: bool,
    pub transform: CoordTransform,
    pub nearest: NearestMode,
    /// Per axis (h, w), the scale the coordinate transform divides by: output/input, or
    /// the `scales` the model gives.
    pub scale: [f64; 2],
}

impl Resample {
    /// Per output position of axis `axis` (0: h, 1: w), the input positions it reads and
    /// their weights (summing to 1), from `input` to `output` positions, as ONNX defines
    /// them: the coordinate transform, then the nearest position or the two neighbours,
    /// the coordinate clamped to [0, input − 1] (the edge value beyond it).
    pub fn weights(&self, axis: usize, input: u64, output: u64) -> Vec<Vec<(usize, f64)>> {
        let scale = self.scale[axis];
        let last = input.saturating_sub(1) as f64;
        (0..output)
            .map(|o| {
                let o = o as f64;
                let x = match self.transform {
                    CoordTransform::HalfPixel => (o + 0.5) / scale - 0.5,
                    CoordTransform::PytorchHalfPixel if output > 1 => (o + 0.5) / scale - 0.5,
                    CoordTransform::PytorchHalfPixel => 0.0,
                    CoordTransform::AlignCorners if output > 1 => o * last / (output - 1) as f64,
                    CoordTransform::AlignCorners => 0.0,
                    CoordTransform::Asymmetric => o / scale,
                    CoordTransform::TfHalfPixelForNn => (o + 0.5) / scale,
                };
                if self.linear {
                    let x = x.clamp(0.0, last);
                    let lo = x.floor();
                    let t = x - lo;
                    let lo = lo as usize;
                    if t == 0.0 || lo as f64 >= last {
                        vec![(lo, 1.0)]
                    } else {
                        vec![(lo, 1.0 - t), (lo + 1, t)]
                    }
                } else {
                    let r = match self.nearest {
                        NearestMode::Floor => x.floor(),
                        NearestMode::Ceil => x.ceil(),
                        NearestMode::RoundPreferFloor if x.fract() == 0.5 => x.floor(),
                        NearestMode::RoundPreferCeil if x.fract() == 0.5 => x.ceil(),
                        _ => x.round(),
                    };
                    vec![(r.clamp(0.0, last) as usize, 1.0)]
                }
            })
            .collect()
    }
}

/// A normalization: `y = γ (x − μ) / √(σ² + ε) + β` per channel, with the batch's
/// statistics (`training`), the running ones (inference), or — `groups` — each sample's
/// own statistics over groups of channels and all positions.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    pub channels: u64,
    pub epsilon: f64,
    /// Batch statistics (BatchNorm in training mode), or running ones; with `groups`, true.
    pub training: bool,
    /// `Some(g)`: each sample's statistics over each of g groups of C/g channels and all
    /// positions — GroupNorm; InstanceNorm is g = C, a LayerNorm over (C, H, W) g = 1.
    pub groups: Option<u64>,
    /// With `groups` = Some(1): the statistics of each sample at each position, over the
    /// channels alone (a LayerNorm over the last axis of a channels-last view: ConvNeXt's).
    pub per_position: bool,
    /// Initializer names of γ and β (empty: the normalization has no affine parameters).
    pub scale: String,
    pub shift: String,
    /// Shape of γ and β: [C], or [C, H, W] for a LayerNorm's element-wise affine.
    pub affine: Vec<u64>,
}

impl BatchNorm {
    /// A BatchNorm over `channels` (γ and β of shape [C]).
    pub fn batch(channels: u64, epsilon: f64, training: bool, scale: String, shift: String) -> BatchNorm {
        BatchNorm { channels, epsilon, training, groups: None, per_position: false, scale, shift, affine: vec![channels] }
    }
    /// The module its parameters and running statistics belong to: its scale's
    /// (`layer1.0.bn1` of `layer1.0.bn1.weight`), or else the node's name.
    pub fn module(&self, node_name: &str) -> String {
        self.scale.strip_suffix(".weight").map_or_else(|| node_name.to_string(), str::to_string)
    }
    /// Whether it normalizes with statistics of the data it sees (batch or per sample), so
    /// that whatever scale comes in, its output has the same (a scale-invariant input).
    pub fn own_statistics(&self) -> bool {
        self.training || self.groups.is_some()
    }
    /// The plan's name for its statistics: "training", "inference", "instance",
    /// "layer", "layer:channels", "group:G", or "scale" (a per-channel parameter and
    /// nothing else: ConvNeXt's layer scale, ε 0 and no shift).
    pub fn mode(&self) -> String {
        if self.per_position {
            return "layer:channels".into();
        }
        if !self.training && self.groups.is_none() && self.epsilon == 0.0 && self.shift.is_empty() {
            return "scale".into();
        }
        match self.groups {
            None if self.training => "training".into(),
            None => "inference".into(),
            Some(g) if g == self.channels && g > 1 => "instance".into(),
            Some(1) => "layer".into(),
            Some(g) => format!("group:{g}"),
        }
    }
}

/// An element-wise function of one variable `x`, as ONNX nodes wrote it.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    X,
    Const(f64),
    Apply(Fn1, Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
}

/// The one-argument functions an [`Expr`] applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fn1 {
    Act(Activation),
    Clip { min: f64, max: f64 },
    HardSigmoid { alpha: f64, beta: f64 },
    HardSwish,
    Elu { alpha: f64 },
    Softplus,
    Mish,
    Erf,
    Exp,
    Neg,
    Abs,
    Sqrt,
}

/// A value and its derivative (forward-mode automatic differentiation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dual {
    pub v: f64,
    pub d: f64,
}

impl Expr {
    /// `f(x)` and `f'(x)`.
    pub fn eval(&self, x: f64) -> Dual {
        match self {
            Expr::X => Dual { v: x, d: 1.0 },
            Expr::Const(c) => Dual { v: *c, d: 0.0 },
            Expr::Apply(f, e) => f.apply(e.eval(x)),
            Expr::Add(a, b) => {
                let (a, b) = (a.eval(x), b.eval(x));
                Dual { v: a.v + b.v, d: a.d + b.d }
            }
            Expr::Sub(a, b) => {
                let (a, b) = (a.eval(x), b.eval(x));
                Dual { v: a.v - b.v, d: a.d - b.d }
            }
            Expr::Mul(a, b) => {
                let (a, b) = (a.eval(x), b.eval(x));
                Dual { v: a.v * b.v, d: a.d * b.v + a.v * b.d }
            }
            Expr::Div(a, b) => {
                let (a, b) = (a.eval(x), b.eval(x));
                Dual { v: a.v / b.v, d: (a.d * b.v - a.v * b.d) / (b.v * b.v) }
            }
        }
    }

    /// The named activation this expression is, when it is exactly one.
    pub fn as_activation(&self) -> Option<Activation> {
        use Expr::*;
        let is_x = |e: &Expr| matches!(e, X);
        match self {
            X => Some(Activation::Identity),
            Apply(Fn1::Act(a), e) if is_x(e) => Some(*a),
            Apply(Fn1::Clip { min, max }, e) if is_x(e) && *min == 0.0 && *max == f64::INFINITY => Some(Activation::Relu),
            Mul(a, b) => match (a.as_ref(), b.as_ref()) {
                (X, Apply(Fn1::Act(Activation::Sigmoid), e)) | (Apply(Fn1::Act(Activation::Sigmoid), e), X) if is_x(e) => {
                    Some(Activation::Silu)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the expression is one named function of x (an activation, ReLU6 as a
    /// clip, hard-swish, …): another function applied to it is a node of its own.
    /// Building blocks (erf, exp, neg, abs, sqrt) and arithmetic are not.
    pub fn is_named_function(&self) -> bool {
        match self {
            Expr::Apply(f, e) => matches!(**e, Expr::X) && !matches!(f, Fn1::Erf | Fn1::Exp | Fn1::Neg | Fn1::Abs | Fn1::Sqrt),
            other => other.as_activation().is_some_and(|a| a != Activation::Identity),
        }
    }

    /// Whether `f` is non-decreasing (checked on a grid: a max pooling commutes with it).
    pub fn monotone(&self) -> bool {
        let mut prev = f64::NEG_INFINITY;
        for k in -400..=400 {
            let v = self.eval(k as f64 * 0.03).v;
            if v < prev - 1e-12 {
                return false;
            }
            prev = v;
        }
        true
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::X => write!(f, "x"),
            Expr::Const(c) => write!(f, "{c}"),
            Expr::Apply(g, e) => write!(f, "{g}({e})"),
            Expr::Add(a, b) => write!(f, "({a} + {b})"),
            Expr::Sub(a, b) => write!(f, "({a} - {b})"),
            Expr::Mul(a, b) => write!(f, "{a}·{b}"),
            Expr::Div(a, b) => write!(f, "{a}/{b}"),
        }
    }
}

impl fmt::Display for Fn1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fn1::Act(a) => write!(f, "{a}"),
            Fn1::Clip { min, max } => write!(f, "clip[{min},{max}]"),
            Fn1::HardSigmoid { alpha, beta } => write!(f, "hardsigmoid[{alpha},{beta}]"),
            Fn1::HardSwish => write!(f, "hardswish"),
            Fn1::Elu { alpha } => write!(f, "elu[{alpha}]"),
            Fn1::Softplus => write!(f, "softplus"),
            Fn1::Mish => write!(f, "mish"),
            Fn1::Erf => write!(f, "erf"),
            Fn1::Exp => write!(f, "exp"),
            Fn1::Neg => write!(f, "neg"),
            Fn1::Abs => write!(f, "abs"),
            Fn1::Sqrt => write!(f, "sqrt"),
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

impl Fn1 {
    /// `g(a)` with the chain rule applied to `a`'s derivative.
    pub fn apply(&self, a: Dual) -> Dual {
        let x = a.v;
        let (v, dv) = match *self {
            Fn1::Act(act) => act.eval(x),
            // Not `f64::clamp`, which panics when min > max or a bound is NaN (the
            // importer refuses such bounds; this stays total anyway).
            Fn1::Clip { min, max } => (x.max(min).min(max), if x > min && x < max { 1.0 } else { 0.0 }),
            Fn1::HardSigmoid { alpha, beta } => {
                let y = alpha * x + beta;
                (y.clamp(0.0, 1.0), if y > 0.0 && y < 1.0 { alpha } else { 0.0 })
            }
            Fn1::HardSwish => {
                let g = ((x + 3.0) / 6.0).clamp(0.0, 1.0);
                let dg = if x > -3.0 && x < 3.0 { 1.0 / 6.0 } else { 0.0 };
                (x * g, g + x * dg)
            }
            Fn1::Elu { alpha } => {
                if x > 0.0 {
                    (x, 1.0)
                } else {
                    (alpha * x.exp_m1(), alpha * x.exp())
                }
            }
            Fn1::Softplus => (softplus(x), sigmoid(x)),
            Fn1::Mish => {
                let t = softplus(x).tanh();
                (x * t, t + x * (1.0 - t * t) * sigmoid(x))
            }
            Fn1::Erf => (libm::erf(x), 2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp()),
            Fn1::Exp => (x.exp(), x.exp()),
            Fn1::Neg => (-x, -1.0),
            Fn1::Abs => (x.abs(), if x >= 0.0 { 1.0 } else { -1.0 }),
            Fn1::Sqrt => (x.sqrt(), 0.5 / x.sqrt()),
        };
        Dual { v, d: dv * a.d }
    }
}

impl Activation {
    /// `f(x)` and `f'(x)`.
    pub fn eval(&self, x: f64) -> (f64, f64) {
        match *self {
            Activation::Identity => (x, 1.0),
            Activation::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
            Activation::LeakyRelu { slope } => {
                if x > 0.0 {
                    (x, 1.0)
                } else {
                    (slope * x, slope)
                }
            }
            Activation::Tanh => (x.tanh(), 1.0 - x.tanh().powi(2)),
            Activation::Sigmoid => (sigmoid(x), sigmoid(x) * (1.0 - sigmoid(x))),
            Activation::Gelu => {
                let cdf = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (x * cdf, cdf + x * pdf)
            }
            Activation::Silu => (x * sigmoid(x), sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x)))),
        }
    }
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
            Op::Add => "add",
            Op::Concat => "concat",
            Op::BatchNorm(_) => "batchnorm",
            Op::Mul => "mul",
            Op::ChannelSlice { .. } => "slice",
            Op::Shuffle { .. } => "shuffle",
            Op::Resize { .. } => "resize",
            Op::Dilate { .. } => "dilate",
            Op::Resample(_) => "resample",
            Op::SwapChannelsWidth => "swap",
            Op::SoftmaxPositions => "softmax positions",
            Op::AddBroadcast => "add broadcast",
            Op::RadixSoftmax { .. } => "radix softmax",
            Op::AttentionPool => "attention pool",
            Op::Elementwise(_) => "elementwise",
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
