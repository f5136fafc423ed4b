//! The plan: what cnnc emits, as JSON or YAML.
//!
//! In: a [`Network`] and its [`LayerAnalysis`] list. Out: a [`Plan`], plain data with a
//! versioned `format` field; its JSON Schema (`specs/plan.schema.json`) is generated
//! from these types by `cnnc schema` and a test keeps the checked-in copy in step.
//! A consumer applies it by drawing every `weight` from N(mean, std²) and setting every
//! `bias` to zero; parameter names follow PyTorch's `state_dict` of the equivalent
//! `nn.Sequential` (or the ONNX initializer names).

use crate::analyze::{LayerAnalysis, Mode, Options};
use crate::ir::{Activation, Pad, PoolKind};
use crate::unify::{Network, WeightKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The plan format this build writes. Bumped on any incompatible change.
pub const FORMAT: &str = "cnnc-plan/1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Always "cnnc-plan/1" for this version of the format.
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
        let conv = w.conv.as_ref().map(|c| ConvInfo {
            kernel: c.kernel.to_vec(),
            stride: c.stride.to_vec(),
            padding: pad4(&c.pad),
            dilation: c.dilation.to_vec(),
            groups: c.groups,
        });
        let pooling = layer.pooling.as_ref().map(|p| {
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
        });
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
            weight: WeightInit {
                name: w.weight_param.clone(),
                shape: w.weight_shape.clone(),
                distribution: "normal".into(),
                mean: 0.0,
                std: a.variance.sqrt(),
                variance: a.variance,
            },
            bias: w.bias_param.as_ref().map(|name| BiasInit {
                name: name.clone(),
                shape: vec![w.geometry.out_channels],
                init: "zeros".into(),
            }),
            capped: a.capped,
            uncapped_std: a.uncapped_std,
            predicted: Predicted {
                forward_variance: a.forward_variance,
                backward_variance: a.backward_variance,
                forward_range: a.forward_range.map(|(lo, hi)| [lo, hi]),
                backward_range: a.backward_range.map(|(lo, hi)| [lo, hi]),
            },
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
    }
}

impl Plan {
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
