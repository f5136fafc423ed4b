//! The analyses' work and memory, computed from the graph before they run: a model
//! whose figures exceed a budget is refused with the node and the figure, instead of
//! running for hours or exhausting memory (a 4 MB model with a 1025×1025 kernel on a
//! 4096² map; a Gemm to 2²² features followed by 300 activations).
//!
//! The figures are upper bounds of the analyses' inner loops, not timings:
//! - values: the per-channel analysis keeps a few numbers per channel of every value
//!   (Σ channels, [`MAX_CHANNEL_ENTRIES`]); the map analysis a plane per value
//!   (Σ positions, [`MAX_MAP_POSITIONS`]);
//! - steps of the map analysis: a conv sums, at each output position, its taps, forward
//!   and backward, per group (output positions × kernel area × groups); a pooling
//!   (output positions × window); a join or an element-wise node its planes
//!   ([`MAX_MAP_STEPS`]);
//! - joins: an Add or Concat of n inputs costs the analysis n² (its branches are traced
//!   per input), [`MAX_JOIN_INPUTS`]; every Add marks the ancestors of its inputs among
//!   the values before it, [`MAX_JOIN_WORK`].

use super::{Analysis, AnalysisError};
use crate::ir::{Graph, Node, Op, Shape};
use crate::unify::Network;

/// Σ over values of their channels (a vector's features) in the per-channel analysis:
/// ~40 bytes each, so about 640 MB. A DenseNet-201 holds 1.5 million.
pub const MAX_CHANNEL_ENTRIES: u64 = 16 << 20;

/// Σ over values of their positions (h × w) in the map analysis: one plane per moment
/// and segment of channels, 8 bytes a number. ResNet-50 at 224² holds about a million.
pub const MAX_MAP_POSITIONS: u64 = 64 << 20;

/// Steps (one add of the inner loops) of the map analysis: about 4.3 × 10⁹, seconds in
/// a release build. ResNet-50 at 224² takes about 3 × 10⁷.
pub const MAX_MAP_STEPS: u128 = 1 << 32;

/// Inputs of one join (Add, Concat): DenseNet-201's widest Concat has 49.
pub const MAX_JOIN_INPUTS: usize = 1024;

/// Work of finding residual branches: each Add marks the ancestors of each of its inputs
/// over the values before it (Σ over Adds of values × inputs). About 2 × 10⁹; ResNet-152
/// takes 10⁵.
pub const MAX_JOIN_WORK: u128 = 1 << 31;

fn positions(s: Shape) -> u64 {
    match s {
        Shape::Image { h, w, .. } => h * w,
        Shape::Vector { .. } => 1,
    }
}

fn channels(s: Shape) -> u64 {
    s.chw().0
}

/// The map analysis's steps at one node (see the module's doc).
fn map_steps(g: &Graph, n: &Node) -> u128 {
    let input = n.inputs.first().map_or(g.input, |&v| g.shape(v));
    let out = positions(n.output) as u128;
    match &n.op {
        Op::Conv(c) => 2 * out * (c.kernel[0] as u128 * c.kernel[1] as u128) * c.groups as u128,
        Op::Linear(l) => 2 * l.in_features as u128,
        Op::Pool(p) => 2 * out * (p.kernel[0] as u128 * p.kernel[1] as u128),
        Op::GlobalPool(_) => 2 * positions(input) as u128,
        _ => n.inputs.len().max(1) as u128 * out.max(positions(input) as u128),
    }
}

/// The graph analyses' budgets (see the module's doc): every value's channels, joins'
/// widths, and for the map analysis every value's positions and the steps per node.
/// The error names the node over its budget (or the largest when only the sum is) and
/// the figure.
pub fn check_graph(g: &Graph, analysis: Analysis) -> Result<(), AnalysisError> {
    let node_err = |n: &Node, message: String| AnalysisError::Node { node: n.name.clone(), op: n.op.kind_name().into(), message };
    for n in &g.nodes {
        if matches!(n.op, Op::Add | Op::Concat) && n.inputs.len() > MAX_JOIN_INPUTS {
            return Err(node_err(n, format!("a join of {} inputs: cnnc's analysis takes at most {MAX_JOIN_INPUTS}", n.inputs.len())));
        }
    }
    let join_work: u128 = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Add))
        .map(|(k, n)| (k as u128 + 2) * (n.inputs.len() as u128 + 1))
        .sum();
    if join_work > MAX_JOIN_WORK {
        let adds = g.nodes.iter().filter(|n| matches!(n.op, Op::Add)).count();
        let last = g.nodes.iter().rev().find(|n| matches!(n.op, Op::Add)).expect("joins counted");
        return Err(node_err(
            last,
            format!(
                "tracing the residual branches of {adds} joins over {} values takes {:.2e} steps, over the budget of {:.2e}",
                g.nodes.len() + 1,
                join_work as f64,
                MAX_JOIN_WORK as f64
            ),
        ));
    }
    let widest = g.nodes.iter().rev().max_by_key(|n| channels(n.output));
    let entries: u64 = channels(g.input) + g.nodes.iter().map(|n| channels(n.output)).sum::<u64>();
    if let (true, Some(n)) = (entries > MAX_CHANNEL_ENTRIES, widest) {
        return Err(node_err(
            n,
            format!(
                "the analysis keeps {entries} channel moments (Σ over values of their channels, or features), over its budget of \
                 {MAX_CHANNEL_ENTRIES}; this value has {}",
                channels(n.output)
            ),
        ));
    }
    if analysis != Analysis::Map {
        return Ok(());
    }
    let largest = g.nodes.iter().rev().max_by_key(|n| positions(n.output));
    let planes: u64 = positions(g.input) + g.nodes.iter().map(|n| positions(n.output)).sum::<u64>();
    if let (true, Some(n)) = (planes > MAX_MAP_POSITIONS, largest) {
        return Err(node_err(
            n,
            format!(
                "the map analysis keeps {planes} positions (Σ over values of h × w), over its budget of {MAX_MAP_POSITIONS}; \
                 this value has {}: plan with --analysis paper",
                positions(n.output)
            ),
        ));
    }
    let steps: Vec<u128> = g.nodes.iter().map(|n| map_steps(g, n)).collect();
    let total: u128 = steps.iter().sum();
    if total > MAX_MAP_STEPS {
        let (k, most) = steps.iter().enumerate().max_by_key(|(_, s)| **s).expect("a graph over budget has nodes");
        return Err(node_err(&g.nodes[k], steps_message(total, *most)));
    }
    Ok(())
}

fn steps_message(total: u128, here: u128) -> String {
    format!(
        "the map analysis would take {:.2e} steps (output positions × taps, forward and backward), over its budget of {:.2e}; \
         {:.2e} of them here: plan with --analysis paper",
        total as f64, MAX_MAP_STEPS as f64, here as f64
    )
}

/// [`check_graph`]'s step budget for the chain map analysis of unified layers.
pub fn check_chain_map(net: &Network) -> Result<(), AnalysisError> {
    let steps: Vec<u128> = net
        .layers
        .iter()
        .map(|l| {
            let geo = &l.weight.geometry;
            let conv = 2 * positions(l.conv_output) as u128 * (geo.h.kernel as u128 * geo.w.kernel as u128) * geo.groups as u128;
            let pool = l.pooling.as_ref().map_or(0, |p| 2 * positions(l.output) as u128 * p.geometry.window_size() as u128);
            conv + pool + positions(l.input) as u128
        })
        .collect();
    let total: u128 = steps.iter().sum();
    let positions_total: u64 = net.layers.iter().map(|l| positions(l.input) + positions(l.conv_output) + positions(l.output)).sum();
    let (k, most) = match steps.iter().enumerate().max_by_key(|(_, s)| **s) {
        Some((k, s)) => (k, *s),
        None => return Ok(()),
    };
    let layer = &net.layers[k];
    let fail = |message| AnalysisError::Layer { layer: layer.index, module: layer.weight.module.clone(), message };
    if positions_total > MAX_MAP_POSITIONS {
        return Err(fail(format!(
            "the map analysis keeps {positions_total} positions (Σ over layers of h × w), over its budget of {MAX_MAP_POSITIONS}: \
             plan with --analysis paper"
        )));
    }
    if total > MAX_MAP_STEPS {
        return Err(fail(steps_message(total, most)));
    }
    Ok(())
}
