//! Text dumps of the pipeline's stages, shared by the CLI and the golden tests:
//! the graph IR ([`graph_table`]), the unified layers with their analysis
//! ([`lower_table`]) and one unit's index sets ([`inspect`]).

use crate::analyze::{LayerAnalysis, Mode};
use crate::index::ConvGeometry;
use crate::ir::{Graph, Op, ValueId};
use crate::unify::{Layer, Network};
use std::fmt::Write;

/// `k{h}x{w} s{h}x{w} pad(t,l,b,r)`: the window of a conv or pooling.
fn window(kernel: [u64; 2], stride: [u64; 2], pad: &[crate::ir::Pad; 2]) -> String {
    format!(
        "k{}x{} s{}x{} pad(t{},l{},b{},r{})",
        kernel[0], kernel[1], stride[0], stride[1], pad[0].begin, pad[1].begin, pad[0].end, pad[1].end
    )
}

/// One line per graph node: value, op, module name, output shape.
/// Every node's output, as the graph analysis predicts it: the mean over channels and
/// positions of E[x²] and of the gradient's E[δ²] (for a unit gradient of the output's
/// second moment, as the plan's), one row per node, the input first. Names are the ONNX
/// nodes', so that a measurement keyed by them (`scripts/torch/measure_nodes.py`) can be
/// set beside it row by row.
pub fn node_table(g: &Graph, a: &crate::analyze::graph::GraphAnalysis) -> String {
    let header = ["#", "node", "op", "reads", "output", "E[x²]", "E[δ²]"];
    let name = |v: crate::ir::ValueId| if v.0 == 0 { "input".to_string() } else { g.nodes[v.0 - 1].name.clone() };
    let shape = |s: crate::ir::Shape| {
        let (c, h, w) = s.chw();
        dims(&[c, h, w])
    };
    let mut rows = vec![vec![
        "0".into(),
        "input".into(),
        "input".into(),
        "-".into(),
        shape(g.input),
        fmt_g(a.values[0].0),
        a.values[0].1.map_or("fused".into(), fmt_g),
    ]];
    for (k, n) in g.nodes.iter().enumerate() {
        let reads = n.inputs.iter().map(|&v| name(v)).collect::<Vec<_>>().join(",");
        let (f, b) = a.values[k + 1];
        let b = b.map_or("fused".into(), fmt_g);
        rows.push(vec![(k + 1).to_string(), n.name.clone(), n.op.kind_name().replace(' ', "_"), reads, shape(n.output), fmt_g(f), b]);
    }
    let mut out = format!("graph {}  nodes {}\n", g.name, g.nodes.len());
    out.push_str(&columns(&header, &rows, &[true, false, false, false, false, true, true]));
    out
}

pub fn graph_table(g: &Graph) -> String {
    let mut out = format!("graph {}  input {}\n", g.name, g.input);
    for (k, n) in g.nodes.iter().enumerate() {
        let inputs: Vec<String> = n.inputs.iter().map(|v| format!("%{}", v.0)).collect();
        let detail = match &n.op {
            Op::Conv(c) => format!(
                "conv {}->{} {} d{}x{} g{}{}",
                c.in_channels,
                c.out_channels,
                window(c.kernel, c.stride, &c.pad),
                c.dilation[0],
                c.dilation[1],
                c.groups,
                if c.bias { "" } else { " nobias" }
            ),
            Op::Linear(l) => format!("linear {}->{}{}", l.in_features, l.out_features, if l.bias { "" } else { " nobias" }),
            Op::Activation(a) => a.to_string(),
            Op::Pool(p) => {
                format!("{} {}{}", n.op.kind_name(), window(p.kernel, p.stride, &p.pad), if p.ceil_mode { " ceil" } else { "" })
            }
            Op::Elementwise(e) => format!("elementwise {e}"),
            Op::BatchNorm(b) => format!(
                "{} {} eps {} ({})",
                match b.groups {
                    Some(1) if b.per_position => "layernorm over channels".to_string(),
                    None => "batchnorm".to_string(),
                    Some(g) if g == b.channels && g > 1 => "instancenorm".to_string(),
                    Some(1) => "layernorm".to_string(),
                    Some(g) => format!("groupnorm {g} groups"),
                },
                b.channels,
                b.epsilon,
                match b.groups {
                    Some(_) if b.per_position => "per-position statistics",
                    Some(_) => "per-sample statistics",
                    None if b.training => "batch statistics",
                    None => "running statistics",
                }
            ),
            Op::ChannelSlice { start, end } => format!("slice channels {start}..{end}"),
            Op::Shuffle { groups } => format!("shuffle groups {groups}"),
            Op::SwapChannelsWidth => "swap channels and width".to_string(),
            Op::SoftmaxPositions => "softmax over positions".to_string(),
            Op::AddBroadcast => "add (the second broadcast over the positions)".to_string(),
            Op::RadixSoftmax { radix, groups } => format!("softmax across the radix {radix} (groups {groups})"),
            Op::AttentionPool => "attention pool (Σ_p a_p x_p)".to_string(),
            Op::Resample(r) => format!("resample {} {:?}", if r.linear { "linear" } else { "nearest" }, r.transform),
            Op::Dilate { stride } => format!("dilate x{}x{} (zeros between)", stride[0], stride[1]),
            Op::Resize { scale, linear } => format!("resize x{}x{} {}", scale[0], scale[1], if *linear { "linear" } else { "nearest" }),
            other => other.kind_name().to_string(),
        };
        let _ = writeln!(out, "%{} = {} ({})  -> {}  [{}]", k + 1, detail, inputs.join(", "), n.output, n.name);
        debug_assert_eq!(g.shape(ValueId(k + 1)), n.output);
    }
    out
}

fn fmt_g(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if (1e-3..1e4).contains(&x.abs()) {
        format!("{x:.6}")
    } else {
        format!("{x:.4e}")
    }
}

/// The unified-layer table: per layer shapes, M, M', ε, T, τ, γ, σ² for `mode`.
pub fn lower_table(net: &Network, analysis: &[LayerAnalysis], mode: Mode) -> String {
    let header = ["ℓ", "name", "kind", "input", "conv", "output", "M", "M'", "ε", "act", "pool", "T", "τ", "γ", "σ²", "q", "r"];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (l, a) in net.layers.iter().zip(analysis) {
        let pool = match &l.pooling {
            None => "-".to_string(),
            Some(p) => format!(
                "{}{}",
                if p.global { "global " } else { "" },
                match p.kind {
                    crate::ir::PoolKind::Max => "max",
                    crate::ir::PoolKind::Avg => "avg",
                }
            ),
        };
        rows.push(vec![
            l.index.to_string(),
            l.weight.module.clone(),
            match l.weight.kind {
                crate::unify::WeightKind::Conv => "conv".into(),
                crate::unify::WeightKind::Linear => "linear".into(),
            },
            l.input.to_string(),
            l.conv_output.to_string(),
            l.output.to_string(),
            a.m_in.to_string(),
            a.m_conv.to_string(),
            a.connections.to_string(),
            l.activation.to_string(),
            pool,
            a.window.to_string(),
            fmt_g(a.tau),
            fmt_g(a.gamma),
            format!("{}{}", fmt_g(a.variance), if a.capped { "*" } else { "" }),
            fmt_g(a.forward_variance),
            fmt_g(a.backward_variance),
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("network {}  input {}  mode {}\n", net.name, net.input, mode.name());
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (k, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if k > 0 {
                s.push_str("  ");
            }
            let pad = w - c.chars().count();
            // Numbers right-aligned, words left-aligned.
            if k >= 6 && k != 9 && k != 10 {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        out.push_str(&line(r));
    }
    let params: u64 = net.layers.iter().map(|l| l.weight.parameters()).sum();
    let capped = analysis.iter().filter(|a| a.capped).count();
    let _ = writeln!(
        out,
        "{} weight layers, {} parameters{}",
        net.layers.len(),
        params,
        if capped > 0 { format!(", {capped} capped (*)") } else { String::new() }
    );
    out
}

fn coords(c: u64, y: u64, x: u64) -> String {
    format!("({c},{y},{x})")
}

/// The index sets of unit `unit` of layer `layer`, listing at most `limit` elements each.
/// Forward: s, a, c for conv output `unit`; t for pooled output `unit`.
/// Backward: j, h for input `unit`; d for element `unit` of v.
pub fn inspect(net: &Network, layer: &Layer, unit: u64, backward: bool, limit: usize) -> Result<String, String> {
    let g: &ConvGeometry = &layer.weight.geometry;
    let mut out = format!("network {}  layer {} (`{}`)  unit {unit}\n", net.name, layer.index, layer.weight.module);
    let list = |out: &mut String, name: &str, what: &str, items: Vec<String>, total: u64| {
        let shown = items.len();
        let _ = writeln!(
            out,
            "{name}  ({what}; {total} elements{})",
            if (shown as u64) < total { format!(", first {shown} shown") } else { String::new() }
        );
        for chunk in items.chunks(8) {
            let _ = writeln!(out, "  {}", chunk.join(" "));
        }
    };
    if !backward {
        if unit >= g.m_out() {
            return Err(format!("unit {unit} is out of range: layer {} has {} conv outputs (M' = {})", layer.index, g.m_out(), g.m_out()));
        }
        let (co, oy, ox) = g.out_coords(unit);
        let _ = writeln!(out, "conv output u_{unit} = {} of {}", coords(co, oy, ox), layer.conv_output);
        let total = g.s_len(unit);
        let mut s_items = Vec::new();
        let mut a_items = Vec::new();
        for conn in g.s_set(unit).take(limit) {
            let (c, y, x) = g.in_coords(conn.input);
            s_items.push(format!("{}={}", conn.input, coords(c, y, x)));
            let kk = g.h.kernel * g.w.kernel;
            a_items.push(format!("{}=({},{},{})", conn.tap, conn.tap / kk, conn.tap % kk / g.w.kernel, conn.tap % g.w.kernel));
        }
        list(&mut out, "s(ℓ,i)", "inputs z^(ℓ-1) read, index=(c,y,x)", s_items, total);
        list(&mut out, "a(ℓ,i)", "kernel taps used, index=(c_in,ky,kx)", a_items, total);
        let _ = writeln!(out, "c(ℓ,i) = {}", g.c(unit));
        if let Some(p) = &layer.pooling {
            let pg = &p.geometry;
            if unit < pg.m_out() {
                let t: Vec<u64> = pg.t_set(unit).collect();
                let n = t.len() as u64;
                let items = t.into_iter().take(limit).map(|v| {
                    let (c, y, x) = g.out_coords(v);
                    format!("{v}={}", coords(c, y, x))
                });
                list(&mut out, "t(ℓ,i)", &format!("elements of v pooled into z_{unit}, T = {}", pg.window_size()), items.collect(), n);
            } else {
                let _ = writeln!(out, "t(ℓ,i)  (unit {unit} is past the {} pooled outputs)", pg.m_out());
            }
        } else {
            let _ = writeln!(out, "t(ℓ,i) = {{{unit}}}  (no pooling: T = 1)");
        }
    } else {
        if unit >= g.m_in() {
            return Err(format!("unit {unit} is out of range: layer {} has {} inputs (M = {})", layer.index, g.m_in(), g.m_in()));
        }
        let (ci, iy, ix) = g.in_coords(unit);
        let _ = writeln!(out, "input z_{unit} = {} of {}", coords(ci, iy, ix), layer.input);
        let total = g.j_len(unit);
        let mut j_items = Vec::new();
        let mut h_items = Vec::new();
        let per_out = g.taps_per_kernel();
        let kk = g.h.kernel * g.w.kernel;
        for b in g.j_set(unit).take(limit) {
            let (c, y, x) = g.out_coords(b.output);
            j_items.push(format!("{}={}", b.output, coords(c, y, x)));
            let tap = b.weight % per_out;
            h_items.push(format!("{}=({},{},{},{})", b.weight, b.weight / per_out, tap / kk, tap % kk / g.w.kernel, tap % g.w.kernel));
        }
        list(&mut out, "j(ℓ,i)", "conv outputs u^(ℓ) that read it, index=(c,y,x)", j_items, total);
        list(&mut out, "h(ℓ,i)", "weights they read it through, index=(c_out,c_in,ky,kx)", h_items, total);
        if let Some(p) = &layer.pooling {
            let pg = &p.geometry;
            if unit < pg.m_in() {
                let d: Vec<u64> = pg.d_set(unit).collect();
                let n = d.len() as u64;
                let (oc, oh, ow) = layer.output.chw();
                let items = d.into_iter().take(limit).map(|z| {
                    let hw = oh * ow;
                    let _ = oc;
                    format!("{z}={}", coords(z / hw, z % hw / ow, z % ow))
                });
                list(&mut out, "d(ℓ,i)", &format!("pooled outputs z^(ℓ) whose window holds v_{unit}"), items.collect(), n);
            } else {
                let _ = writeln!(out, "d(ℓ,i)  (unit {unit} is past the {} elements of v)", pg.m_in());
            }
        } else {
            let _ = writeln!(out, "d(ℓ,i) = {{{unit}}}  (no pooling)");
        }
    }
    Ok(out)
}

/// `cnnc inspect` on a graph: weight layer `layer` (from 1, in node order, as in the
/// plan). A transposed conv (a stride-1 conv of its input with zeros between the
/// positions, `dilate`) lists its index sets in its own input's positions: the zeros are
/// no connections; with `backward`, `unit` is a position of that input.
pub fn inspect_graph(g: &crate::ir::Graph, layer: usize, unit: u64, backward: bool, limit: usize) -> Result<String, String> {
    let layers = crate::unify::graph_layers(g);
    let Some((k, l)) = layer.checked_sub(1).and_then(|i| layers.get(i)) else {
        return Err(format!("--layer {layer} is out of range: {} has weight layers 1 to {}", g.name, layers.len()));
    };
    let net = Network { name: g.name.clone(), input: g.input, layers: Vec::new() };
    let reads = g.nodes[*k].inputs[0];
    let dilated = reads.0.checked_sub(1).and_then(|d| match (&g.nodes[d].op, g.nodes[d].inputs.first()) {
        (crate::ir::Op::Dilate { stride }, Some(v)) => Some((*stride, g.shape(*v))),
        _ => None,
    });
    let Some((stride, original)) = dilated else { return inspect(&net, l, unit, backward, limit) };
    let geo = &l.weight.geometry;
    let (_, oh, ow) = original.chw();
    let (_, dh, dw) = l.input.chw();
    let mut out = format!(
        "network {}  layer {} (`{}`, transposed: stride {}×{}, its input {original} with zeros between the positions, {})\n",
        g.name, l.index, l.weight.module, stride[0], stride[1], l.input
    );
    if !backward {
        if unit >= geo.m_out() {
            return Err(format!("unit {unit} is out of range: layer {} has {} outputs", l.index, geo.m_out()));
        }
        let (co, y, x) = geo.out_coords(unit);
        let _ = writeln!(out, "conv output u_{unit} = {} of {}", coords(co, y, x), l.conv_output);
        let kk = geo.h.kernel * geo.w.kernel;
        let (mut s_items, mut a_items, mut total) = (Vec::new(), Vec::new(), 0u64);
        for conn in geo.s_set(unit) {
            let (c, y, x) = geo.in_coords(conn.input);
            if y % stride[0] != 0 || x % stride[1] != 0 {
                continue; // a zero between the positions: no connection
            }
            total += 1;
            if s_items.len() < limit {
                let (y, x) = (y / stride[0], x / stride[1]);
                s_items.push(format!("{}={}", (c * oh + y) * ow + x, coords(c, y, x)));
                a_items.push(format!("{}=({},{},{})", conn.tap, conn.tap / kk, conn.tap % kk / geo.w.kernel, conn.tap % geo.w.kernel));
            }
        }
        let _ = writeln!(out, "s(ℓ,i)  (inputs read, index=(c,y,x) of {original}; {total} elements)");
        for chunk in s_items.chunks(8) {
            let _ = writeln!(out, "  {}", chunk.join(" "));
        }
        let _ = writeln!(out, "a(ℓ,i)  (kernel taps used, index=(c_in,ky,kx) of the equivalent stride-1 conv's kernel)");
        for chunk in a_items.chunks(8) {
            let _ = writeln!(out, "  {}", chunk.join(" "));
        }
        let _ = writeln!(out, "c(ℓ,i) = {}", geo.c(unit));
    } else {
        let (c, _, _) = original.chw();
        if unit >= c * oh * ow {
            return Err(format!("unit {unit} is out of range: layer {} has {} inputs", l.index, c * oh * ow));
        }
        let (ci, y, x) = (unit / (oh * ow), unit % (oh * ow) / ow, unit % ow);
        let at = (ci * dh + y * stride[0]) * dw + x * stride[1];
        let _ = writeln!(
            out,
            "input z_{unit} = {} of {original} (position {} of the zero-interleaved {})",
            coords(ci, y, x),
            coords(ci, y * stride[0], x * stride[1]),
            l.input
        );
        let mut sub = inspect(&net, l, at, true, limit)?;
        // Drop inspect's own heading and input line: the lines above say them.
        // and its d line (no pooling: the unit itself, in the zero-interleaved positions).
        sub = sub.lines().skip(2).filter(|s| !s.starts_with("d(ℓ,i)")).map(|s| format!("{s}\n")).collect();
        out.push_str(&sub);
    }
    Ok(out)
}

/// Aligned columns: `numeric[k]` right-aligns column k.
fn columns(header: &[&str], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (k, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if k > 0 {
                s.push_str("  ");
            }
            let pad = " ".repeat(w - c.chars().count());
            if numeric.get(k).copied().unwrap_or(false) {
                s.push_str(&pad);
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&pad);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn dims(d: &[u64]) -> String {
    format!("({})", d.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
}

/// The `lower` table of a graph, from its plan: every weight layer (with the activation
/// and pooling that follow it when they are its only readers), then the joins and the
/// BatchNorm nodes with their predicted second moments.
pub fn graph_plan_table(plan: &crate::plan::Plan) -> String {
    let mut out = format!(
        "graph {}  input {}  mode {}  branch scale {}{}\n",
        plan.network,
        dims(&plan.input_shape),
        plan.mode,
        plan.branch_scale.map_or("1".into(), |b| b.to_string()),
        plan.batch.map_or(String::new(), |n| format!("  batch {n}"))
    );
    let header = ["ℓ", "name", "reads", "kind", "input", "conv", "M", "M'", "ε", "act", "pool", "σ²", "E[u²]", "E[δz²]", "note"];
    let rows: Vec<Vec<String>> = plan
        .layers
        .iter()
        .map(|l| {
            let mut note = Vec::new();
            if l.residual_last == Some(true) {
                note.push("branch end".to_string());
            }
            if let Some(bn) = &l.normalized_by {
                note.push(format!("normalized by {bn}"));
            }
            vec![
                l.index.to_string(),
                l.name.clone(),
                l.reads.clone().unwrap_or_default(),
                l.kind.clone(),
                dims(&l.input_shape),
                dims(&l.conv_shape),
                l.m_in.to_string(),
                l.m_conv.to_string(),
                l.connections.to_string(),
                l.activation.kind.clone(),
                l.pooling.as_ref().map_or("-".into(), |p| format!("{}{}", if p.global { "global " } else { "" }, p.kind)),
                format!("{}{}", fmt_g(l.weight.variance), if l.capped { "*" } else { "" }),
                fmt_g(l.predicted.forward_variance),
                fmt_g(l.predicted.backward_variance),
                note.join(", "),
            ]
        })
        .collect();
    let numeric = [true, false, false, false, false, false, true, true, true, false, false, true, true, true, false];
    out.push_str(&columns(&header, &rows, &numeric));
    if let Some(joins) = plan.joins.as_ref().filter(|j| !j.is_empty()) {
        out.push_str("\njoins\n");
        let rows: Vec<Vec<String>> = joins
            .iter()
            .map(|j| {
                let inputs: Vec<String> = j
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(k, i)| {
                        let branch = j.residual_branches.as_ref().is_some_and(|b| b[k]);
                        format!("{i}{}", if branch { " (branch)" } else { "" })
                    })
                    .collect();
                vec![
                    j.name.clone(),
                    j.kind.clone(),
                    dims(&j.output_shape),
                    fmt_g(j.predicted.forward_variance),
                    fmt_g(j.predicted.backward_variance),
                    inputs.join(" + "),
                ]
            })
            .collect();
        out.push_str(&columns(&["name", "kind", "output", "E[x²]", "E[δ²]", "inputs"], &rows, &[false, false, false, true, true, false]));
    }
    if let Some(bns) = plan.batch_norms.as_ref().filter(|b| !b.is_empty()) {
        out.push_str("\nbatch norms\n");
        let rows: Vec<Vec<String>> = bns
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    b.mode.clone(),
                    b.channels.to_string(),
                    fmt_g(b.scale.value),
                    fmt_g(b.predicted.forward_variance),
                    fmt_g(b.predicted.backward_variance),
                    if b.residual_last { "branch end".into() } else { String::new() },
                ]
            })
            .collect();
        out.push_str(&columns(
            &["name", "mode", "C", "γ", "E[y²]", "E[δ²]", "note"],
            &rows,
            &[false, false, true, true, true, true, false],
        ));
    }
    let _ = writeln!(
        out,
        "{} weight layers, {} parameters; predicted output second moment {}, input gradient {}",
        plan.summary.weight_layers,
        plan.summary.parameters,
        fmt_g(plan.summary.predicted_output_variance),
        fmt_g(plan.summary.predicted_input_gradient_variance)
    );
    out
}
