//! Unification: graph IR → the paper's unified layers (conv + activation + pooling).
//!
//! In: a [`Graph`] whose nodes form a chain. Out: a [`Network`] of [`Layer`]s ℓ = 1..L,
//! each a weight operation (conv, or linear seen as a conv that reads every input), an
//! activation (identity when none is written) and an optional pooling (global pooling
//! included), with the geometry the index sets and the analysis need.
//!
//! What does not fit the unified form is an error naming the node: an activation or
//! pooling before any weight layer, two activations or two poolings in a row, an
//! activation after a pooling, or a node that is not part of a chain.

use crate::index::{Axis, ConvGeometry, PoolAxis, PoolGeometry};
use crate::ir::{self, Activation, Graph, Op, Origin, Pad, PoolKind, Shape, ValueId};

#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub name: String,
    pub input: Shape,
    pub layers: Vec<Layer>,
}

/// Unified layer ℓ: `u = conv(z^(ℓ-1))`, `v = f(u)`, `z^(ℓ) = pool(v)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// ℓ, counted from 1 as in the paper.
    pub index: usize,
    pub weight: Weight,
    pub activation: Activation,
    pub pooling: Option<Pooling>,
    /// Shape of `z^(ℓ-1)`.
    pub input: Shape,
    /// Shape of `u^(ℓ)` (and `v^(ℓ)`).
    pub conv_output: Shape,
    /// Shape of `z^(ℓ)`.
    pub output: Shape,
    pub origin: Origin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    Conv,
    Linear,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Weight {
    pub kind: WeightKind,
    /// Module name (`0`, `stem`, …).
    pub module: String,
    pub weight_param: String,
    pub bias_param: Option<String>,
    /// The parameter's shape as PyTorch stores it: (C_out, C_in/groups, KH, KW) or (N, M).
    pub weight_shape: Vec<u64>,
    pub geometry: ConvGeometry,
    /// The convolution's own options (for a conv), as written.
    pub conv: Option<ir::Conv>,
}

impl Weight {
    /// PyTorch's fan-in: inputs per output (C_in/groups · KH · KW, or M for linear).
    pub fn fan_in(&self) -> u64 {
        self.geometry.taps_per_kernel()
    }
    /// PyTorch's fan-out: C_out · KH · KW (it ignores groups), or N for linear.
    ///
    /// Saturating: exact for every layer the front ends make (each weight has at most
    /// [`crate::lower::MAX_NUMEL`] = 2^40 elements, and C_out · KH · KW is at most that),
    /// `u64::MAX` for a hand-built layer past `u64`, never a wrapped count or a panic.
    pub fn fan_out(&self) -> u64 {
        let g = &self.geometry;
        match self.kind {
            WeightKind::Linear => g.out_channels,
            WeightKind::Conv => g.out_channels.saturating_mul(g.h.kernel).saturating_mul(g.w.kernel),
        }
    }
    /// Number of parameters, bias included.
    ///
    /// Saturating, like [`Weight::fan_out`]: exact for every layer the front ends make
    /// (at most 2^40 weights plus 2^31 biases; summed over at most `lower::MAX_NODES`
    /// layers that stays below 2^58), `u64::MAX` for a hand-built layer past `u64`.
    pub fn parameters(&self) -> u64 {
        let w = self.weight_shape.iter().fold(1u64, |a, &d| a.saturating_mul(d));
        w.saturating_add(if self.bias_param.is_some() { self.geometry.out_channels } else { 0 })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pooling {
    pub kind: PoolKind,
    pub global: bool,
    pub module: String,
    pub geometry: PoolGeometry,
    /// The pooling's own options (for a windowed pooling), as written.
    pub pool: Option<ir::Pool>,
}

/// An error located at a graph node.
#[derive(Clone, Debug, PartialEq)]
pub struct UnifyError {
    pub origin: Origin,
    pub message: String,
}

struct Open {
    layer: Layer,
    has_activation: bool,
}

/// Groups the graph into unified layers. Returns every error found.
pub fn unify(graph: &Graph) -> Result<Network, Vec<UnifyError>> {
    let mut errors = Vec::new();
    let mut layers: Vec<Layer> = Vec::new();
    let mut open: Option<Open> = None;
    let mut err = |node: &ir::Node, message: String| errors.push(UnifyError { origin: node.origin.clone(), message });

    for (k, node) in graph.nodes.iter().enumerate() {
        if node.inputs != [ValueId(k)] {
            err(
                node,
                format!(
                    "{} `{}` does not read the previous layer's output: only chains of layers can be unified",
                    node.op.kind_name(),
                    node.name
                ),
            );
            continue;
        }
        let input = graph.shape(ValueId(k));
        match &node.op {
            Op::Conv(_) if node.params.as_ref().is_some_and(|p| p.standardized.is_some()) => err(
                node,
                format!("conv `{}` has a standardized weight, which the unified layers (the paper's equations) do not model", node.name),
            ),
            Op::Conv(_) | Op::Linear(_) => {
                if let Some(o) = open.take() {
                    layers.push(o.layer);
                }
                let weight = weight(node, input);
                open = Some(Open {
                    layer: Layer {
                        index: layers.len() + 1,
                        weight,
                        activation: Activation::Identity,
                        pooling: None,
                        input,
                        conv_output: node.output,
                        output: node.output,
                        origin: node.origin.clone(),
                    },
                    has_activation: false,
                });
            }
            Op::Activation(act) => match &mut open {
                None => err(node, format!("activation `{act}` before any weight layer: a unified layer starts with a conv or linear layer")),
                Some(o) if o.layer.pooling.is_some() => err(
                    node,
                    format!("activation `{act}` after a pooling: a unified layer is conv → activation → pooling; put the activation before the pooling"),
                ),
                Some(o) if o.has_activation => err(node, format!("two activations in a row (`{}` then `{act}`)", o.layer.activation)),
                Some(o) => {
                    o.layer.activation = *act;
                    o.has_activation = true;
                }
            },
            Op::Pool(_) | Op::GlobalPool(_) => match &mut open {
                None => err(node, format!("{} before any weight layer: a unified layer starts with a conv or linear layer", node.op.kind_name())),
                Some(o) if o.layer.pooling.is_some() => err(node, format!("two poolings in a row: {} follows another pooling", node.op.kind_name())),
                Some(o) => {
                    o.layer.pooling = Some(pooling(node, input));
                    o.layer.output = node.output;
                }
            },
            Op::Flatten => {
                if let Some(o) = &mut open {
                    o.layer.output = node.output;
                }
            }
            other => err(node, format!("{} `{}` is not part of a chain of unified layers", other.kind_name(), node.name)),
        }
    }
    if let Some(o) = open.take() {
        layers.push(o.layer);
    }
    if layers.is_empty() && errors.is_empty() {
        errors.push(UnifyError {
            origin: Origin::Implicit(Box::new(Origin::Source(Default::default()))),
            message: "the network has no weight layer".into(),
        });
    }
    if errors.is_empty() {
        Ok(Network { name: graph.name.clone(), input: graph.input, layers })
    } else {
        Err(errors)
    }
}

/// The weight layers of any graph, in node order (the order of a graph plan's layers),
/// each as a unified layer of its conv or linear alone (no activation, no pooling): what
/// `cnnc inspect` lists for graphs. With each, its node index.
pub fn graph_layers(graph: &Graph) -> Vec<(usize, Layer)> {
    graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Conv(_) | Op::Linear(_)))
        .enumerate()
        .map(|(i, (k, n))| {
            let input = graph.shape(n.inputs[0]);
            let layer = Layer {
                index: i + 1,
                weight: weight(n, input),
                activation: Activation::Identity,
                pooling: None,
                input,
                conv_output: n.output,
                output: n.output,
                origin: n.origin.clone(),
            };
            (k, layer)
        })
        .collect()
}

/// The weight of a conv or linear node reading a value of shape `input` (its parameter
/// names, shape and geometry). Panics on any other node.
pub fn weight(node: &ir::Node, input: Shape) -> Weight {
    let (weight_param, bias_param) = match &node.params {
        Some(p) => (p.weight.clone(), p.bias.clone()),
        None => (format!("{}.weight", node.name), Some(format!("{}.bias", node.name))),
    };
    let (c, h, w) = input.chw();
    match &node.op {
        Op::Conv(conv) => {
            let (_, oh, ow) = node.output.chw();
            let axis = |a: usize, input: u64, output: u64| Axis {
                input,
                output,
                kernel: conv.kernel[a],
                stride: conv.stride[a],
                pad_begin: conv.pad[a].begin,
                dilation: conv.dilation[a],
            };
            Weight {
                kind: WeightKind::Conv,
                module: node.name.clone(),
                weight_param,
                bias_param: if conv.bias { bias_param } else { None },
                weight_shape: node
                    .params
                    .as_ref()
                    .and_then(|p| p.shape.clone())
                    .unwrap_or_else(|| vec![conv.out_channels, conv.in_channels / conv.groups, conv.kernel[0], conv.kernel[1]]),
                geometry: ConvGeometry {
                    in_channels: c,
                    out_channels: conv.out_channels,
                    groups: conv.groups,
                    h: axis(0, h, oh),
                    w: axis(1, w, ow),
                },
                conv: Some(conv.clone()),
            }
        }
        Op::Linear(lin) => {
            // A linear layer reads every input: a conv whose kernel is the whole input.
            let full = |n: u64| Axis { input: n, output: 1, kernel: n, stride: 1, pad_begin: 0, dilation: 1 };
            Weight {
                kind: WeightKind::Linear,
                module: node.name.clone(),
                weight_param,
                bias_param: if lin.bias { bias_param } else { None },
                weight_shape: vec![lin.out_features, lin.in_features],
                geometry: ConvGeometry { in_channels: c, out_channels: lin.out_features, groups: 1, h: full(h), w: full(w) },
                conv: None,
            }
        }
        _ => unreachable!("weight() is called on conv and linear nodes only"),
    }
}

/// The pooling of a pool or global pool node reading a value of shape `input`. Panics on
/// any other node.
pub fn pooling(node: &ir::Node, input: Shape) -> Pooling {
    let (c, h, w) = input.chw();
    let (_, oh, ow) = node.output.chw();
    match &node.op {
        Op::Pool(p) => {
            let axis = |a: usize, input: u64, output: u64| PoolAxis {
                input,
                output,
                kernel: p.kernel[a],
                stride: p.stride[a],
                pad_begin: p.pad[a].begin,
            };
            Pooling {
                kind: p.kind,
                global: false,
                module: node.name.clone(),
                geometry: PoolGeometry { channels: c, h: axis(0, h, oh), w: axis(1, w, ow) },
                pool: Some(p.clone()),
            }
        }
        Op::GlobalPool(kind) => {
            let full = |n: u64| PoolAxis { input: n, output: 1, kernel: n, stride: 1, pad_begin: 0 };
            Pooling {
                kind: *kind,
                global: true,
                module: node.name.clone(),
                geometry: PoolGeometry { channels: c, h: full(h), w: full(w) },
                pool: None,
            }
        }
        _ => unreachable!("pooling() is called on pooling nodes only"),
    }
}

impl Pad {
    pub fn total(&self) -> u64 {
        self.begin + self.end
    }
}
