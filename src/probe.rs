//! The signal-propagation probe: does the real network keep the variances a plan predicts?
//!
//! In: a [`Network`], a [`Plan`] for it, and [`ProbeOptions`]. Out: per layer, the plan's
//! predicted `q^(ℓ)` (variance of the conv output) and `r^(ℓ-1)` (variance of the gradient
//! at the layer input), and what the candle network measures: for each of K independent
//! weight draws, N(0,1) inputs are pushed through, the loss is `⟨y, g⟩` with g ~ N(0,1)
//! (so the output gradient has unit variance, the plan's `r^(L) = 1`), and the mean over
//! units and samples of `u²` and of `(∂loss/∂z^(ℓ-1))²` is taken. The report gives the
//! mean over draws, its standard error, and measured/predicted.
//!
//! Graphs ([`probe_graph`]): the same per weight node (u² at its output, the gradient at
//! its input), and per join and BatchNorm node (both at its output), the gradient of
//! each value read through a zero variable added to it.
//!
//! The backward pass of a chain runs layer by layer (each layer's input a fresh variable, the
//! gradient from the layer above fed in as the loss weights), which is the chain rule
//! exactly and lets every intermediate gradient be read.

use crate::ir::Graph;
use crate::nn::{GraphModel, Model, NnError};
use crate::plan::Plan;
use crate::unify::Network;
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_distr::Distribution;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug)]
pub struct ProbeOptions {
    /// K: independent weight draws.
    pub draws: usize,
    /// Inputs per draw.
    pub batch: usize,
    pub seed: u64,
}

/// Mean over draws and its standard error.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Stat {
    pub mean: f64,
    /// Standard error of the mean over draws (0 with one draw).
    pub stderr: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(xs: &[f64]) -> Stat {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Stat {
            mean,
            stderr: (var / n).sqrt(),
            min: xs.iter().cloned().fold(f64::INFINITY, f64::min),
            max: xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerProbe {
    pub index: usize,
    pub name: String,
    /// Graphs: what the row measures (`conv`, `linear`, `add`, `concat`, `mul`,
    /// `batchnorm`); chains have weight layers only and leave it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub predicted_forward: f64,
    pub measured_forward: Stat,
    pub predicted_backward: f64,
    pub measured_backward: Stat,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProbeReport {
    pub network: String,
    pub mode: String,
    pub analysis: String,
    pub draws: usize,
    pub batch: usize,
    pub layers: Vec<LayerProbe>,
}

fn mean_square(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.sqr()?.mean_all()?.to_scalar::<f64>()
}

/// `shape` samples of N(0,1), drawn from `rng` in order.
pub fn gaussian(shape: &[usize], rng: &mut rand::rngs::StdRng, dev: &Device) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rand_distr::StandardNormal.sample(rng)).collect();
    Tensor::from_vec(values, shape, dev)
}

/// Measures one draw: (E[u²] per layer, E[(∂loss/∂z^(ℓ-1))²] per layer).
pub fn measure(model: &Model, x: &Tensor, rng: &mut rand::rngs::StdRng) -> Result<(Vec<f64>, Vec<f64>), NnError> {
    let at = |k: usize, l: &crate::nn::ModelLayer, e: candle_core::Error| NnError::Layer {
        layer: k + 1,
        module: l.module.clone(),
        message: e.to_string(),
    };
    let mut inputs = Vec::with_capacity(model.layers.len());
    let mut forward = Vec::with_capacity(model.layers.len());
    let mut z = x.clone();
    for (k, l) in model.layers.iter().enumerate() {
        let u = l.conv(&z).map_err(|e| at(k, l, e))?;
        forward.push(mean_square(&u).map_err(|e| at(k, l, e))?);
        inputs.push(z);
        z = l.activate_and_pool(&u).map_err(|e| at(k, l, e))?;
    }
    let mut grad = gaussian(z.dims(), rng, &model.device)?.to_dtype(model.dtype)?;
    let mut backward = vec![0.0; model.layers.len()];
    for (k, l) in model.layers.iter().enumerate().rev() {
        let input = Var::from_tensor(&inputs[k].detach()).map_err(|e| at(k, l, e))?;
        let out = l.forward(input.as_tensor()).map_err(|e| at(k, l, e))?;
        let loss = (out * &grad).and_then(|t| t.sum_all()).map_err(|e| at(k, l, e))?;
        let grads = loss.backward().map_err(|e| at(k, l, e))?;
        grad = match grads.get(input.as_tensor()) {
            Some(g) => g.detach(),
            None => Tensor::zeros(input.dims(), model.dtype, &model.device)?,
        };
        backward[k] = mean_square(&grad).map_err(|e| at(k, l, e))?;
    }
    Ok((forward, backward))
}

/// Runs the probe: `opts.draws` weight draws of `plan`, each with `opts.batch` inputs.
pub fn probe(net: &Network, plan: &Plan, opts: ProbeOptions, device: &Device) -> Result<ProbeReport, NnError> {
    if opts.draws == 0 || opts.batch == 0 {
        return Err(NnError::PlanMismatch("the probe needs at least one draw and one input".into()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut fwd: Vec<Vec<f64>> = vec![Vec::new(); net.layers.len()];
    let mut bwd: Vec<Vec<f64>> = vec![Vec::new(); net.layers.len()];
    let mut shape = vec![opts.batch];
    shape.extend(net.input.dims().into_iter().map(|d| d as usize));
    for draw in 0..opts.draws {
        let model = Model::new(net, plan, opts.seed.wrapping_add(draw as u64), device, DType::F32)?;
        let x = gaussian(&shape, &mut rng, device)?;
        let (f, b) = measure(&model, &x, &mut rng)?;
        for k in 0..net.layers.len() {
            fwd[k].push(f[k]);
            bwd[k].push(b[k]);
        }
    }
    let layers = net
        .layers
        .iter()
        .zip(&plan.layers)
        .enumerate()
        .map(|(k, (l, p))| LayerProbe {
            index: l.index,
            name: l.weight.module.clone(),
            kind: None,
            predicted_forward: p.predicted.forward_variance,
            measured_forward: Stat::of(&fwd[k]),
            predicted_backward: p.predicted.backward_variance,
            measured_backward: Stat::of(&bwd[k]),
        })
        .collect();
    Ok(ProbeReport {
        network: net.name.clone(),
        mode: plan.mode.clone(),
        analysis: plan.analysis.clone(),
        draws: opts.draws,
        batch: opts.batch,
        layers,
    })
}

/// What one row of a graph's probe reads: the value whose second moment is the forward
/// measure, and the value whose gradient's second moment is the backward one.
struct Row {
    name: String,
    kind: &'static str,
    forward_at: usize,
    backward_at: usize,
    predicted: (f64, f64),
}

/// The rows of a graph's probe, in node order: every weight node (E[u²] at its output, the
/// gradient at its input, as the plan's layers), every join and BatchNorm the plan
/// reports (both at the node's output).
fn graph_rows(model: &GraphModel, plan: &Plan) -> Result<Vec<Row>, NnError> {
    let mismatch = |m: String| NnError::PlanMismatch(m);
    let layers: HashMap<&str, &crate::plan::PlanLayer> = plan.layers.iter().map(|l| (l.weight.name.as_str(), l)).collect();
    // Joins and BatchNorm nodes by name, in node order (a name may repeat: taken in turn).
    let mut others: HashMap<&str, std::collections::VecDeque<(f64, f64)>> = HashMap::new();
    for j in plan.joins.iter().flatten() {
        others.entry(j.name.as_str()).or_default().push_back((j.predicted.forward_variance, j.predicted.backward_variance));
    }
    let mut norms: HashMap<&str, std::collections::VecDeque<(f64, f64)>> = HashMap::new();
    for b in plan.batch_norms.iter().flatten() {
        norms.entry(b.name.as_str()).or_default().push_back((b.predicted.forward_variance, b.predicted.backward_variance));
    }
    let mut rows = Vec::new();
    for (k, n) in model.nodes.iter().enumerate() {
        let row = |predicted| Row { name: n.name.clone(), kind: n.kind, forward_at: k + 1, backward_at: k + 1, predicted };
        match n.kind {
            "conv" | "linear" => {
                let w = n.weight().expect("a weight node has a weight");
                let p = layers.get(w.name.as_str()).ok_or_else(|| mismatch(format!("the plan has no weight `{}`", w.name)))?;
                rows.push(Row { backward_at: n.inputs[0], ..row((p.predicted.forward_variance, p.predicted.backward_variance)) });
            }
            "add" | "concat" | "mul" => {
                if let Some(p) = others.get_mut(n.name.as_str()).and_then(|q| q.pop_front()) {
                    rows.push(row(p));
                }
            }
            "batchnorm" => {
                if let Some(p) = norms.get_mut(n.name.as_str()).and_then(|q| q.pop_front()) {
                    rows.push(row(p));
                }
            }
            _ => {}
        }
    }
    Ok(rows)
}

/// Measures one draw of a graph: (E[v²], E[(∂loss/∂w)²]) of each row's values, with the
/// loss `⟨y, g⟩`, g ~ N(0,1). A zero variable is added to every value whose gradient is
/// read (its gradient is the value's, whatever reads it).
fn measure_graph(model: &GraphModel, rows: &[Row], x: &Tensor, rng: &mut rand::rngs::StdRng) -> Result<(Vec<f64>, Vec<f64>), NnError> {
    let watched: std::collections::BTreeSet<usize> = rows.iter().map(|r| r.backward_at).collect();
    let forward_at: std::collections::BTreeSet<usize> = rows.iter().map(|r| r.forward_at).collect();
    let mut taps: HashMap<usize, Var> = HashMap::new();
    let mut seen: HashMap<usize, f64> = HashMap::new();
    let x = if watched.contains(&0) {
        let v = Var::zeros(x.dims(), x.dtype(), x.device())?;
        let y = (x + v.as_tensor())?;
        taps.insert(0, v);
        y
    } else {
        x.clone()
    };
    let values = model.values(&x, |k, y| {
        if forward_at.contains(&(k + 1)) {
            seen.insert(k + 1, mean_square(&y)?);
        }
        if watched.contains(&(k + 1)) {
            let v = Var::zeros(y.dims(), y.dtype(), y.device())?;
            let y = (y + v.as_tensor())?;
            taps.insert(k + 1, v);
            return Ok(y);
        }
        Ok(y)
    })?;
    let out = values.last().cloned().flatten().expect("the output is kept");
    let g = gaussian(out.dims(), rng, &model.device)?.to_dtype(model.dtype)?;
    let grads = (out * g)?.sum_all()?.backward()?;
    let backward_of = |v: usize| -> Result<f64, NnError> {
        match grads.get(taps[&v].as_tensor()) {
            Some(g) => Ok(mean_square(g)?),
            None => Ok(0.0),
        }
    };
    let forward = rows.iter().map(|r| seen[&r.forward_at]).collect();
    let backward = rows.iter().map(|r| backward_of(r.backward_at)).collect::<Result<_, _>>()?;
    Ok((forward, backward))
}

/// [`probe`] of any graph ([`GraphModel`], every ReLU a node of its own so that each
/// conv's output `u` is read): per weight node, forward E[u²] at its output and backward
/// the gradient's second moment at its input; per join and BatchNorm node, both at its
/// output; against the plan's predictions. BatchNorm uses batch statistics (training
/// mode), as the plan of a training-mode BatchNorm assumes.
pub fn probe_graph(graph: &Graph, plan: &Plan, opts: ProbeOptions, device: &Device) -> Result<ProbeReport, NnError> {
    if opts.draws == 0 || opts.batch == 0 {
        return Err(NnError::PlanMismatch("the probe needs at least one draw and one input".into()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut shape = vec![opts.batch];
    shape.extend(graph.input.dims().into_iter().map(|d| d as usize));
    let mut rows = Vec::new();
    let (mut fwd, mut bwd): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    for draw in 0..opts.draws {
        let mut model = GraphModel::new(graph, plan, opts.seed.wrapping_add(draw as u64), device, DType::F32)?;
        model.unfuse();
        if draw == 0 {
            rows = graph_rows(&model, plan)?;
            fwd = vec![Vec::new(); rows.len()];
            bwd = vec![Vec::new(); rows.len()];
        }
        let x = gaussian(&shape, &mut rng, device)?;
        let (f, b) = measure_graph(&model, &rows, &x, &mut rng)?;
        for k in 0..rows.len() {
            fwd[k].push(f[k]);
            bwd[k].push(b[k]);
        }
    }
    let layers = rows
        .into_iter()
        .enumerate()
        .map(|(k, r)| LayerProbe {
            index: k + 1,
            name: r.name,
            kind: Some(r.kind.to_string()),
            predicted_forward: r.predicted.0,
            measured_forward: Stat::of(&fwd[k]),
            predicted_backward: r.predicted.1,
            measured_backward: Stat::of(&bwd[k]),
        })
        .collect();
    Ok(ProbeReport {
        network: graph.name.clone(),
        mode: plan.mode.clone(),
        analysis: plan.analysis.clone(),
        draws: opts.draws,
        batch: opts.batch,
        layers,
    })
}

fn fmt(x: f64) -> String {
    if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e4) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

impl ProbeReport {
    /// The terminal table: per layer, predicted vs measured (mean ± standard error) and the ratio.
    pub fn table(&self) -> String {
        let label = |l: &LayerProbe| match l.kind.as_deref() {
            None | Some("conv") | Some("linear") => l.name.clone(),
            Some(k) => format!("{} [{k}]", l.name),
        };
        let width = self.layers.iter().map(|l| label(l).chars().count()).max().unwrap_or(0).max(10);
        let mut out = format!(
            "{}  init {} (analysis {})  {} draws × {} inputs\n{:>3}  {:<width$} {:>10} {:>22} {:>8}   {:>10} {:>22} {:>8}\n",
            self.network,
            self.mode,
            self.analysis,
            self.draws,
            self.batch,
            "ℓ",
            "name",
            "q pred",
            "q measured ± se",
            "ratio",
            "r pred",
            "r measured ± se",
            "ratio"
        );
        for l in &self.layers {
            let q = &l.measured_forward;
            let r = &l.measured_backward;
            out.push_str(&format!(
                "{:>3}  {:<width$} {:>10} {:>22} {:>8.3}   {:>10} {:>22} {:>8.3}\n",
                l.index,
                label(l),
                fmt(l.predicted_forward),
                format!("{} ± {}", fmt(q.mean), fmt(q.stderr)),
                q.mean / l.predicted_forward,
                fmt(l.predicted_backward),
                format!("{} ± {}", fmt(r.mean), fmt(r.stderr)),
                r.mean / l.predicted_backward
            ));
        }
        out
    }
}

/// Measured variance against depth for several reports on one chart (log scale): the
/// conv-output variance q and the input-gradient variance r of each init, at the weight
/// layers; for a graph also the stream — E[x²] and the gradient's second moment at each
/// residual Add and Concat, where a residual network's growth shows — on the same depth
/// axis (the probe's row numbers). BatchNorm rows (γ² by construction) are not drawn.
pub fn plot(reports: &[ProbeReport], format: crate::plot::Format) -> Result<Vec<u8>, String> {
    let series = plot_series(reports);
    let title = reports.first().map_or("probe".to_string(), |r| {
        format!("{}: measured variance per layer ({} analysis, {} draws)", r.network, r.analysis, r.draws)
    });
    crate::plot::line_chart_as(format, &title, "layer ℓ", "variance", &series, true)
}

/// The lines [`plot`] draws.
fn plot_series(reports: &[ProbeReport]) -> Vec<crate::plot::Series> {
    let mut series = Vec::new();
    for r in reports {
        let is_weight = |l: &&LayerProbe| matches!(l.kind.as_deref(), None | Some("conv" | "linear"));
        let is_join = |l: &&LayerProbe| matches!(l.kind.as_deref(), Some("add" | "concat"));
        let points = |keep: &dyn Fn(&&LayerProbe) -> bool, backward: bool| -> Vec<(f64, f64)> {
            r.layers
                .iter()
                .filter(keep)
                .map(|l| (l.index as f64, if backward { l.measured_backward.mean } else { l.measured_forward.mean }))
                .collect()
        };
        series.push(crate::plot::Series { name: format!("{} q (u²)", r.mode), points: points(&is_weight, false) });
        series.push(crate::plot::Series { name: format!("{} r (∂z²)", r.mode), points: points(&is_weight, true) });
        if r.layers.iter().any(|l| is_join(&l)) {
            series.push(crate::plot::Series { name: format!("{} stream E[x²]", r.mode), points: points(&is_join, false) });
            series.push(crate::plot::Series { name: format!("{} stream ∂x²", r.mode), points: points(&is_join, true) });
        }
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph's probe draws the weight layers' q and r, and the stream (Adds and Concats)
    /// as lines of their own; BatchNorm rows are not drawn.
    #[test]
    fn the_plot_draws_the_stream_apart_from_the_weight_layers() {
        let row = |index: usize, kind: &str, f: f64, b: f64| LayerProbe {
            index,
            name: format!("n{index}"),
            kind: Some(kind.to_string()),
            predicted_forward: f,
            measured_forward: Stat { mean: f, stderr: 0.0, min: f, max: f },
            predicted_backward: b,
            measured_backward: Stat { mean: b, stderr: 0.0, min: b, max: b },
        };
        let report = ProbeReport {
            network: "n".into(),
            mode: "forward".into(),
            analysis: "map".into(),
            draws: 1,
            batch: 1,
            layers: vec![row(1, "conv", 1.0, 0.5), row(2, "batchnorm", 1.0, 0.7), row(3, "add", 2.0, 0.4), row(4, "linear", 1.0, 0.3)],
        };
        let series = plot_series(&[report]);
        let by_name = |n: &str| series.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("no line `{n}`")).points.clone();
        assert_eq!(by_name("forward q (u²)"), [(1.0, 1.0), (4.0, 1.0)]);
        assert_eq!(by_name("forward r (∂z²)"), [(1.0, 0.5), (4.0, 0.3)]);
        assert_eq!(by_name("forward stream E[x²]"), [(3.0, 2.0)]);
        assert_eq!(by_name("forward stream ∂x²"), [(3.0, 0.4)]);
        assert_eq!(series.len(), 4);
    }
}
