//! The plan: what cnnc emits, as JSON or YAML.
//!
//! In: a [`Network`] and its [`LayerAnalysis`] list. Out: a [`Plan`], plain data with a
//! versioned `format` field; its JSON Schema (`specs/plan.schema.json`) is generated
//! from these types by `cnnc schema` and a test keeps the checked-in copy in step.
//! A consumer applies it by drawing every `weight` from N(mean, std²) and setting every
//! `bias` to zero; parameter names follow PyTorch's `state_dict` of the equivalent
//! `nn.Sequential` (or the ONNX initializer names).

use crate::analyze::graph::{GraphAnalysis, GraphOptions};
use crate::analyze::{LayerAnalysis, Mode, Options};
use crate::ir::{Activation, Graph, Op, Pad, PoolKind, ValueId};
use crate::unify::{Network, WeightKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The plan format this build writes for chains of unified layers.
pub const FORMAT: &str = "cnnc-plan/1";
/// The format of plans of graphs (joins, BatchNorm entries): a superset of
/// `cnnc-plan/1`, under its own name so that a reader of /1 that cannot apply the
/// BatchNorm entries refuses the plan instead of ignoring them.
pub const FORMAT_GRAPH: &str = "cnnc-plan/2";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// "cnnc-plan/1" (a chain of unified layers) or "cnnc-plan/2" (a graph: adds
    /// `batch_norms` and `joins`).
    pub format: String,
    /// The tool that wrote the plan.
    pub generator: String,
    pub network: String,
    /// One sample's input shape, e.g. [3, 224, 224]. The plan is valid for this size only.
    pub input_shape: Vec<u64>,
    /// forward | backward | xavier | kaiming-in | kaiming-out
    pub mode: String,
    /// Which analysis produced the variances: "paper" (the paper's layer means) or "map"
    /// (a variance per spatial position).
    pub analysis: String,
    /// The cap on σ, as a multiple of the padding-aware He value, when one was asked for.
    pub std_cap: Option<f64>,
    pub summary: Summary,
    pub layers: Vec<PlanLayer>,
    /// Graphs only: every BatchNormalization node, with the values its scale and shift
    /// start at.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch_norms: Option<Vec<PlanBatchNorm>>,
    /// Graphs only: every join (add, concat, mul), with its predicted second moments.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub joins: Option<Vec<PlanJoin>>,
    /// Graphs only: the residual branch scale α (`--branch-scale`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub branch_scale: Option<f64>,
    /// Graphs only: the training batch size the gradients were predicted for (`--batch`);
    /// absent: the large-batch limit.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanBatchNorm {
    /// The node's name.
    pub name: String,
    /// "training" (batch statistics), "inference" (running statistics), a normalization
    /// with each sample's statistics: "instance", "layer" (over C, H, W), "group:G" (G
    /// groups of channels), "layer:channels" (over the channels at each position,
    /// ConvNeXt's); or "scale", a per-channel parameter alone (ConvNeXt's layer scale).
    pub mode: String,
    pub channels: u64,
    pub epsilon: f64,
    /// γ: set every element to `value`.
    pub scale: ConstantInit,
    /// β: set every element to `value`.
    pub shift: ConstantInit,
    /// Whether it ends a residual branch (its scale is the branch scale α).
    pub residual_last: bool,
    /// Second moments: `forward_variance` of its output, `backward_variance` of the
    /// gradient at its output.
    pub predicted: Predicted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConstantInit {
    pub name: String,
    pub shape: Vec<u64>,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanJoin {
    /// The node's name.
    pub name: String,
    /// "add", "concat" or "mul".
    pub kind: String,
    /// The nodes whose outputs it reads ("input" for the network input).
    pub inputs: Vec<String>,
    pub output_shape: Vec<u64>,
    /// For an add: which inputs are residual branches (the others are the identity path).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub residual_branches: Option<Vec<bool>>,
    /// Second moments of its output (forward) and of the gradient at its output (backward).
    pub predicted: Predicted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub weight_layers: u64,
    /// Trainable parameters, biases included.
    pub parameters: u64,
    /// Σ ε over the layers.
    pub connections: u64,
    /// Layers whose σ was lowered by the cap.
    pub capped_layers: u64,
    /// Predicted variance of the last layer's output `u^(L)` (forward).
    pub predicted_output_variance: f64,
    /// Predicted gradient variance at the network input (backward).
    pub predicted_input_gradient_variance: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanLayer {
    /// ℓ, from 1.
    pub index: u64,
    /// The weight module's name.
    pub name: String,
    /// "conv" or "linear".
    pub kind: String,
    /// Shape of the layer input z^(ℓ-1).
    pub input_shape: Vec<u64>,
    /// Shape of the convolution output u^(ℓ).
    pub conv_shape: Vec<u64>,
    /// Shape of the layer output z^(ℓ) (after pooling).
    pub output_shape: Vec<u64>,
    /// M_{ℓ-1}
    pub m_in: u64,
    /// M'_ℓ
    pub m_conv: u64,
    /// M_ℓ
    pub m_out: u64,
    /// ε_ℓ = Σ_i |s(ℓ,i)|: connections that read real (not padded) input.
    pub connections: u64,
    pub fan_in: u64,
    pub fan_out: u64,
    /// The convolution's options (absent for a linear layer).
    pub conv: Option<ConvInfo>,
    pub activation: ActivationInfo,
    pub pooling: Option<PoolingInfo>,
    /// T_ℓ: pooling window size (1 without pooling).
    #[serde(rename = "T")]
    pub window: u64,
    pub tau: f64,
    pub gamma: f64,
    pub weight: WeightInit,
    pub bias: Option<BiasInit>,
    /// Whether the std cap lowered σ for this layer.
    pub capped: bool,
    /// σ before the cap.
    pub uncapped_std: f64,
    pub predicted: Predicted,
    /// Graphs only: the node whose output this layer reads ("input" for the network input).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reads: Option<String>,
    /// Graphs only: the last weight layer of a residual branch (it targets α²).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub residual_last: Option<bool>,
    /// Graphs only: the training-mode BatchNorm right after this layer. It sets the
    /// forward signal whatever σ² is: σ² matters only for the gradient.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub normalized_by: Option<String>,
    /// Graphs only: the layer's weight is standardized per filter before use (weight
    /// standardization), so the stored weight's σ does not reach the signal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub standardized: Option<StandardizedInfo>,
}

/// A weight standardized per filter: `w = gain · (v − mean(v)) / √(var(v) + ε)`. The
/// stored weight v's scale cancels (`weight.std` is a convention: the same number as
/// `gain`, so that the stored weight is at its standardized scale); what reaches the
/// signal is the gain, the effective weight's per-element standard deviation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StandardizedInfo {
    /// The gain the plan's predictions assume: √σ² of the rule that chose this layer.
    pub gain: f64,
    /// The gain the network applies as exported (its constants, and a per-filter gain
    /// parameter's values at initialization): 1 for `StdConv2d`, γ/√fan for NF-ResNets'.
    pub network_gain: f64,
    /// The per-filter gain parameter, where the network has one, and the value that gives
    /// `gain`: set every element of it to `value`.
    pub gain_param: Option<GainParam>,
    /// ε under the square root.
    pub epsilon: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GainParam {
    pub name: String,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvInfo {
    /// [kh, kw]
    pub kernel: Vec<u64>,
    /// [sh, sw]
    pub stride: Vec<u64>,
    /// [top, left, bottom, right]
    pub padding: Vec<u64>,
    /// [dh, dw]
    pub dilation: Vec<u64>,
    pub groups: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationInfo {
    /// identity | relu | leaky_relu | tanh | sigmoid | gelu | silu
    pub kind: String,
    /// Negative slope of a leaky ReLU.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slope: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolingInfo {
    /// "max" or "avg"
    pub kind: String,
    /// Whether the window is the whole input plane.
    pub global: bool,
    /// [kh, kw] (the whole plane for a global pooling)
    pub kernel: Vec<u64>,
    pub stride: Vec<u64>,
    /// [top, left, bottom, right]
    pub padding: Vec<u64>,
    pub ceil_mode: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightInit {
    /// Parameter name, e.g. "0.weight".
    pub name: String,
    /// PyTorch layout: [C_out, C_in/groups, kh, kw] or [out, in].
    pub shape: Vec<u64>,
    /// Always "normal".
    pub distribution: String,
    pub mean: f64,
    pub std: f64,
    pub variance: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BiasInit {
    pub name: String,
    pub shape: Vec<u64>,
    /// Always "zeros".
    pub init: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Predicted {
    /// q^(ℓ): variance of the conv output u^(ℓ), for unit-variance input.
    pub forward_variance: f64,
    /// r^(ℓ-1): variance of the gradient at the layer input z^(ℓ-1), for a unit-variance
    /// gradient at the network output.
    pub backward_variance: f64,
    /// Map analysis only: [min, max] over positions of the conv-output variance
    /// (`forward_variance` is its mean).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub forward_range: Option<[f64; 2]>,
    /// Map analysis only: [min, max] over positions of the input-gradient variance.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backward_range: Option<[f64; 2]>,
}

fn pooling_info(p: &crate::unify::Pooling) -> PoolingInfo {
    let g = &p.geometry;
    PoolingInfo {
        kind: match p.kind {
            PoolKind::Max => "max".into(),
            PoolKind::Avg => "avg".into(),
        },
        global: p.global,
        kernel: vec![g.h.kernel, g.w.kernel],
        stride: p.pool.as_ref().map_or(vec![1, 1], |q| q.stride.to_vec()),
        padding: p.pool.as_ref().map_or(vec![0, 0, 0, 0], |q| pad4(&q.pad)),
        ceil_mode: p.pool.as_ref().is_some_and(|q| q.ceil_mode),
    }
}

/// A weight drawn from N(0, σ²), as a plan writes it.
fn weight_init(w: &crate::unify::Weight, variance: f64) -> WeightInit {
    WeightInit {
        name: w.weight_param.clone(),
        shape: w.weight_shape.clone(),
        distribution: "normal".into(),
        mean: 0.0,
        std: variance.sqrt(),
        variance,
    }
}

/// The zero bias of a weight layer that has one.
fn bias_init(w: &crate::unify::Weight) -> Option<BiasInit> {
    w.bias_param.as_ref().map(|name| BiasInit { name: name.clone(), shape: vec![w.geometry.out_channels], init: "zeros".into() })
}

fn conv_info(c: &crate::ir::Conv) -> ConvInfo {
    ConvInfo {
        kernel: c.kernel.to_vec(),
        stride: c.stride.to_vec(),
        padding: pad4(&c.pad),
        dilation: c.dilation.to_vec(),
        groups: c.groups,
    }
}

fn predicted(forward_variance: f64, backward_variance: f64) -> Predicted {
    Predicted { forward_variance, backward_variance, forward_range: None, backward_range: None }
}

/// The plan's account of a standardized weight whose planned σ² is `variance`: the gain
/// √σ², and the value of the per-filter gain parameter that gives it (the network's other
/// factors, `gain / param_init`, kept).
fn standardized_info(s: &crate::ir::Standardized, variance: f64) -> StandardizedInfo {
    let gain = variance.sqrt();
    StandardizedInfo {
        gain,
        network_gain: s.gain,
        gain_param: s.gain_param.as_ref().map(|(name, init)| GainParam { name: name.clone(), value: gain / (s.gain / init) }),
        epsilon: s.epsilon,
    }
}

/// Builds the plan of a graph from its analysis ([`crate::analyze::graph`]).
pub fn build_graph(g: &Graph, a: &GraphAnalysis, opts: GraphOptions, analysis: crate::analyze::Analysis) -> Plan {
    let reads = |v: ValueId| if v.0 == 0 { "input".to_string() } else { g.nodes[v.0 - 1].name.clone() };
    let mut layers = Vec::with_capacity(a.weights.len());
    for (i, r) in a.weights.iter().enumerate() {
        let n = &g.nodes[r.node];
        let w = &r.weight;
        let end = r.pooling.or(r.activation).unwrap_or(r.node);
        let activation = match r.activation.map(|k| &g.nodes[k].op) {
            Some(Op::Activation(act)) => activation_info(*act),
            Some(Op::Elementwise(e)) => ActivationInfo { kind: e.to_string(), slope: None },
            _ => activation_info(Activation::Identity),
        };
        let pooling = r.pooling.map(|k| crate::unify::pooling(&g.nodes[k], g.shape(g.nodes[k].inputs[0])));
        layers.push(PlanLayer {
            index: i as u64 + 1,
            name: w.module.clone(),
            kind: match w.kind {
                WeightKind::Conv => "conv".into(),
                WeightKind::Linear => "linear".into(),
            },
            input_shape: g.shape(n.inputs[0]).dims(),
            conv_shape: n.output.dims(),
            output_shape: g.nodes[end].output.dims(),
            m_in: w.geometry.m_in(),
            m_conv: w.geometry.m_out(),
            m_out: g.nodes[end].output.numel(),
            connections: r.connections,
            fan_in: w.fan_in(),
            fan_out: w.fan_out(),
            conv: w.conv.as_ref().map(conv_info),
            activation,
            window: pooling.as_ref().map_or(1, |p| p.geometry.window_size()),
            pooling: pooling.as_ref().map(pooling_info),
            tau: r.tau,
            gamma: r.gamma,
            weight: weight_init(w, r.variance),
            bias: bias_init(w),
            capped: r.capped,
            uncapped_std: r.uncapped_std,
            predicted: Predicted {
                forward_variance: r.forward_variance,
                backward_variance: r.backward_variance,
                forward_range: r.forward_range.map(|(lo, hi)| [lo, hi]),
                backward_range: r.backward_range.map(|(lo, hi)| [lo, hi]),
            },
            reads: Some(reads(n.inputs[0])),
            residual_last: Some(r.residual_last),
            normalized_by: r.normalized_by.map(|k| g.nodes[k].name.clone()),
            standardized: n.params.as_ref().and_then(|p| p.standardized.as_ref()).map(|s| standardized_info(s, r.variance)),
        });
    }
    let batch_norms = a
        .batch_norms
        .iter()
        .filter_map(|b| {
            let n = &g.nodes[b.node];
            let Op::BatchNorm(bn) = &n.op else { return None };
            // A normalization without affine parameters has nothing to initialize.
            if bn.scale.is_empty() {
                return None;
            }
            Some(PlanBatchNorm {
                name: n.name.clone(),
                mode: bn.mode(),
                channels: bn.channels,
                epsilon: bn.epsilon,
                scale: ConstantInit { name: bn.scale.clone(), shape: bn.affine.clone(), value: b.scale },
                shift: ConstantInit { name: bn.shift.clone(), shape: bn.affine.clone(), value: 0.0 },
                residual_last: b.residual_last,
                predicted: predicted(b.forward_variance, b.backward_variance),
            })
        })
        .collect();
    let joins = a
        .joins
        .iter()
        .map(|j| {
            let n = &g.nodes[j.node];
            PlanJoin {
                name: n.name.clone(),
                kind: n.op.kind_name().into(),
                inputs: n.inputs.iter().map(|&v| reads(v)).collect(),
                output_shape: n.output.dims(),
                residual_branches: matches!(n.op, Op::Add).then(|| j.branches.clone()),
                predicted: predicted(j.forward_variance, j.backward_variance),
            }
        })
        .collect();
    let summary = Summary {
        weight_layers: layers.len() as u64,
        parameters: a.weights.iter().map(|r| r.weight.parameters()).sum::<u64>()
            + g.nodes
                .iter()
                .map(|n| match &n.op {
                    Op::BatchNorm(b) if !b.scale.is_empty() => 2 * b.affine.iter().product::<u64>(),
                    _ => 0,
                })
                .sum::<u64>(),
        connections: a.weights.iter().map(|r| r.connections).fold(0u64, |s, c| s.saturating_add(c)),
        capped_layers: a.weights.iter().filter(|r| r.capped).count() as u64,
        predicted_output_variance: a.output_variance,
        predicted_input_gradient_variance: a.input_gradient_variance,
    };
    Plan {
        format: FORMAT_GRAPH.into(),
        generator: format!("cnnc {}", env!("CARGO_PKG_VERSION")),
        network: g.name.clone(),
        input_shape: g.input.dims(),
        mode: opts.mode.name().into(),
        analysis: analysis.name().into(),
        std_cap: opts.std_cap,
        summary,
        layers,
        batch_norms: Some(batch_norms),
        joins: Some(joins),
        branch_scale: Some(opts.branch_scale),
        batch: opts.batch,
    }
}

fn pad4(pad: &[Pad; 2]) -> Vec<u64> {
    vec![pad[0].begin, pad[1].begin, pad[0].end, pad[1].end]
}

fn activation_info(act: Activation) -> ActivationInfo {
    let (kind, slope) = match act {
        Activation::Identity => ("identity", None),
        Activation::Relu => ("relu", None),
        Activation::LeakyRelu { slope } => ("leaky_relu", Some(slope)),
        Activation::Tanh => ("tanh", None),
        Activation::Sigmoid => ("sigmoid", None),
        Activation::Gelu => ("gelu", None),
        Activation::Silu => ("silu", None),
    };
    ActivationInfo { kind: kind.into(), slope }
}

/// Builds the plan. `analysis` must come from `analyze(net, opts)`.
pub fn build(net: &Network, analysis: &[LayerAnalysis], opts: Options) -> Plan {
    let mut layers = Vec::with_capacity(net.layers.len());
    for (layer, a) in net.layers.iter().zip(analysis) {
        let w = &layer.weight;
        let conv = w.conv.as_ref().map(conv_info);
        let pooling = layer.pooling.as_ref().map(pooling_info);
        layers.push(PlanLayer {
            index: layer.index as u64,
            name: w.module.clone(),
            kind: match w.kind {
                WeightKind::Conv => "conv".into(),
                WeightKind::Linear => "linear".into(),
            },
            input_shape: layer.input.dims(),
            conv_shape: layer.conv_output.dims(),
            output_shape: layer.output.dims(),
            m_in: a.m_in,
            m_conv: a.m_conv,
            m_out: a.m_out,
            connections: a.connections,
            fan_in: a.fan_in,
            fan_out: a.fan_out,
            conv,
            activation: activation_info(layer.activation),
            pooling,
            window: a.window,
            tau: a.tau,
            gamma: a.gamma,
            weight: weight_init(w, a.variance),
            bias: bias_init(w),
            capped: a.capped,
            uncapped_std: a.uncapped_std,
            predicted: Predicted {
                forward_variance: a.forward_variance,
                backward_variance: a.backward_variance,
                forward_range: a.forward_range.map(|(lo, hi)| [lo, hi]),
                backward_range: a.backward_range.map(|(lo, hi)| [lo, hi]),
            },
            reads: None,
            residual_last: None,
            normalized_by: None,
            standardized: None,
        });
    }
    let summary = Summary {
        weight_layers: layers.len() as u64,
        parameters: net.layers.iter().map(|l| l.weight.parameters()).sum(),
        connections: analysis.iter().map(|a| a.connections).fold(0u64, |s, c| s.saturating_add(c)),
        capped_layers: analysis.iter().filter(|a| a.capped).count() as u64,
        predicted_output_variance: analysis.last().map_or(1.0, |a| a.forward_variance),
        predicted_input_gradient_variance: analysis.first().map_or(1.0, |a| a.backward_variance),
    };
    Plan {
        format: FORMAT.into(),
        generator: format!("cnnc {}", env!("CARGO_PKG_VERSION")),
        network: net.name.clone(),
        input_shape: net.input.dims(),
        mode: opts.mode.name().into(),
        analysis: if analysis.iter().any(|a| a.forward_range.is_some()) { "map".into() } else { "paper".into() },
        std_cap: opts.std_cap,
        summary,
        layers,
        batch_norms: None,
        joins: None,
        branch_scale: None,
        batch: None,
    }
}

/// A plan file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ReadError {
    pub path: String,
    pub message: String,
}

impl Plan {
    /// Reads a plan file: YAML for a `.yaml`/`.yml` path, JSON otherwise. The `format`
    /// must be one this cnnc writes ([`FORMAT`], [`FORMAT_GRAPH`]): a plan of a newer
    /// format may carry entries this reader would silently drop.
    pub fn read(path: &std::path::Path) -> Result<Plan, ReadError> {
        let fail = |message: String| ReadError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let yaml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        Plan::parse(&text, yaml).map_err(fail)
    }

    /// Parses a plan's text (YAML or JSON) and checks its `format`.
    pub fn parse(text: &str, yaml: bool) -> Result<Plan, String> {
        // The format first, on its own: a plan of another version fails on that, not on
        // the first field it does not know.
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
        }
        let head: Result<Head, String> = if yaml {
            serde_norway::from_str(text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(text).map_err(|e| e.to_string())
        };
        match head?.format.as_deref() {
            Some(FORMAT | FORMAT_GRAPH) => {}
            Some(other) => return Err(format!("plan format `{other}` is not one this cnnc reads ({FORMAT}, {FORMAT_GRAPH})")),
            None => return Err("not a cnnc plan: no `format` field".into()),
        }
        let plan: Result<Plan, String> = if yaml {
            serde_norway::from_str(text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(text).map_err(|e| e.to_string())
        };
        plan.map_err(|e| format!("not a cnnc plan: {e}"))
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a plan always serializes");
        s.push('\n');
        s
    }
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a plan always serializes")
    }
}

/// The plan's JSON Schema, as written to `specs/plan.schema.json`.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Plan);
    let mut s = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    s.push('\n');
    s
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode `{s}` (expected forward, backward, xavier, kaiming-in or kaiming-out)"))
    }
}
