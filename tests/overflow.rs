//! Sizes at the edge of u64: ONNX weights whose element count overflows (or nearly), and
//! the weight counts of hand-built layers. Every case is an error naming the node and the
//! weight, or an exact count; never an overflow panic (debug) or a wrapped count (release).

mod common;

use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::index::{Axis, ConvGeometry};
use cnnc::onnx::proto::{ModelProto, NodeProto, TensorProto};
use cnnc::onnx::{self, ImportOptions};
use cnnc::unify::{Weight, WeightKind};
use common::{attr, init, input, model_at, node, A};
use prost::Message;
use std::process::Command;

// ------------------------------------------------------------------ builders (tests/common)

/// An opset-13 model of these nodes reading `x` of shape (N, dims…), N symbolic.
fn model(input_dims: &[i64], nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    let dims: Vec<Option<i64>> = std::iter::once(None).chain(input_dims.iter().map(|&d| Some(d))).collect();
    model_at(13, vec![input("x", &dims)], nodes, inits)
}

/// Imports `m` and plans it (paper analysis, forward mode): the plan's parameter count,
/// or the first error as text.
fn plan(m: &ModelProto) -> Result<u64, String> {
    let graph = onnx::import(m, &ImportOptions::default()).map_err(|e| e.to_string())?;
    let req = cnnc::GraphRequest {
        opts: Options { mode: Mode::Forward, std_cap: None },
        analysis: Analysis::Paper,
        branch_scale: 1.0,
        batch: None,
    };
    cnnc::plan_graph(&graph, req).map(|p| p.summary.parameters).map_err(|e| e.to_string())
}

const G: i64 = 1 << 31;

/// One Conv `c` with weight `W` [.., .., k, k] on a 1×1×1 input, padded by k/2 on every
/// side: a 2×2 output for an even k.
fn one_conv(weight: &[i64]) -> ModelProto {
    let pads = attr("pads", A::Is(vec![weight[2] / 2; 4]));
    model(&[1, 1, 1], vec![node("c", "Conv", &["x", "W"], &["y"], vec![pads])], vec![init("W", weight)])
}

// ------------------------------------------------------------------ ONNX weights

#[test]
fn conv_weights_past_the_limit_are_errors_naming_node_and_weight() {
    // 2^93 elements: overflowed u64 in fan_out and the parameter count.
    let err = plan(&one_conv(&[G, 1, G, G])).unwrap_err();
    assert_eq!(
        err,
        "node `c` (Conv): the weight `W` has shape [2147483648, 1, 2147483648, 2147483648]: \
         more than 1099511627776 elements (the limit is 2^40)"
    );
    // 2^41 elements, no u64 overflow, still past the limit.
    let err = plan(&one_conv(&[2, 1, 1 << 20, 1 << 20])).unwrap_err();
    assert!(err.starts_with("node `c` (Conv): the weight `W` has shape [2, 1, 1048576, 1048576]: more than"), "{err}");
    // Exactly 2^40 elements plans, with the exact count (no bias).
    assert_eq!(plan(&one_conv(&[1, 1, 1 << 20, 1 << 20])), Ok(1 << 40));
}

#[test]
fn linear_weights_past_the_limit_are_errors_naming_node_and_weight() {
    // Gemm reading 2^31 features into 2^31 outputs: 2^62 weights.
    let gemm = model(&[G], vec![node("fc", "Gemm", &["x", "W"], &["y"], vec![])], vec![init("W", &[G, G])]);
    assert_eq!(
        plan(&gemm).unwrap_err(),
        "node `fc` (Gemm): the weight `W` has shape [2147483648, 2147483648]: more than 1099511627776 elements (the limit is 2^40)"
    );
    let matmul = model(&[G], vec![node("mm", "MatMul", &["x", "W"], &["y"], vec![])], vec![init("W", &[G, 1 << 10])]);
    assert_eq!(
        plan(&matmul).unwrap_err(),
        "node `mm` (MatMul): the weight `W` has shape [2147483648, 1024]: more than 1099511627776 elements (the limit is 2^40)"
    );
    // 2^31 × 2^9 = 2^40 weights and 2^9 biases: exact.
    let at_limit =
        model(&[G], vec![node("fc", "Gemm", &["x", "W", "B"], &["y"], vec![])], vec![init("W", &[G, 1 << 9]), init("B", &[1 << 9])]);
    assert_eq!(plan(&at_limit), Ok((1 << 40) + (1 << 9)));
}

#[test]
fn a_bias_of_any_rank_is_checked_without_overflow() {
    // A rank-3 bias of 2^93 elements whose product wrapped to 0 in u64.
    let m =
        model(&[1, 1, 1], vec![node("c", "Conv", &["x", "W", "B"], &["y"], vec![])], vec![init("W", &[2, 1, 1, 1]), init("B", &[G, G, G])]);
    let err = plan(&m).unwrap_err();
    assert!(err.starts_with("node `c` (Conv): the bias `B` has shape [2147483648, 2147483648, 2147483648]: more than"), "{err}");
}

#[test]
fn the_cli_exits_non_zero_on_a_huge_weight() {
    let path = std::env::temp_dir().join(format!("cnnc-overflow-{}.onnx", std::process::id()));
    std::fs::write(&path, one_conv(&[G, 1, G, G]).encode_to_vec()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc")).arg("plan").arg(&path).output().unwrap();
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node `c` (Conv): the weight `W`") && !stderr.contains("panicked"), "{stderr}");
}

// ------------------------------------------------------------------ counts of hand-built layers

/// A conv layer of `out` × `cg` × `k` × `k` weights, with a bias, built by hand (no front
/// end's limit applies).
fn conv_weight(out: u64, cg: u64, k: u64) -> Weight {
    let axis = Axis { input: k, output: 1, kernel: k, stride: 1, pad_begin: 0, dilation: 1 };
    Weight {
        kind: WeightKind::Conv,
        module: "c".into(),
        weight_param: "c.weight".into(),
        bias_param: Some("c.bias".into()),
        weight_shape: vec![out, cg, k, k],
        geometry: ConvGeometry { in_channels: cg, out_channels: out, groups: 1, h: axis, w: axis },
        conv: None,
    }
}

#[test]
fn fan_out_and_parameters_are_exact_within_u64_and_saturate_past_it() {
    let w = conv_weight(1 << 20, 3, 1 << 10);
    assert_eq!(w.fan_out(), 1 << 40);
    assert_eq!(w.parameters(), 3 * (1 << 40) + (1 << 20));
    // Both front ends refuse such a layer; a hand-built one saturates instead of wrapping.
    let w = conv_weight(1 << 31, 1, 1 << 31);
    assert_eq!(w.fan_out(), u64::MAX);
    assert_eq!(w.parameters(), u64::MAX);
    // The bias alone tips the count over.
    let w = conv_weight(u64::MAX, 1, 1);
    assert_eq!(w.fan_out(), u64::MAX);
    assert_eq!(w.parameters(), u64::MAX);
}
