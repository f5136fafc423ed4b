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
