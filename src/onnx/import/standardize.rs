//! Weight standardization on initializers: a conv weight computed from the stored one per
//! output filter, `w = gain · (v − mean(v)) / √(var(v) + ε)` (BiT's `StdConv2d`,
//! NF-ResNets' scaled form), as the TorchScript exporter writes it:
//!
//! ```text
//! m = ReduceMean(v, axes [1, 2, 3], keepdims)        Sub(v, m)                 → v − m
//! Mul(v − m, v − m) or Pow(v − m, 2)                 → (v − m)²
//! ReduceMean((v − m)², axes [1, 2, 3])                → var;   Add(var, ε)
//! Sqrt(var + ε)                                       → std;   Reciprocal(std), Pow(var + ε, −0.5), Div(1, std) → 1/std
//! Div(v − m, std) or Mul(v − m, 1/std)                → standardized;   Mul/Div by constants and a per-filter gain
//! ```
//!
//! Each step is followed symbolically (no weight values are read): the conv that reads
//! the result is a conv of the stored weight `v`, marked [`ir::Standardized`]. Any other
//! use of these values is an error naming the node. The dynamo exporter folds the whole
//! computation into a new initializer (the standardized weight itself): such a conv is a
//! plain conv to cnnc.

use super::{Cx, Importer, Param};
use crate::ir;

/// What a value computed from a stored conv weight is.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Step {
    /// mean(v) per filter.
    Mean,
    /// v − mean(v).
    Centered,
    /// (v − mean(v))².
    Square,
    /// var(v) + ε per filter.
    Var { eps: f64 },
    /// √(var(v) + ε).
    Std { eps: f64 },
    /// 1 / √(var(v) + ε).
    InvStd { eps: f64 },
    /// gain · (v − mean(v)) / √(var(v) + ε).
    Standard { eps: f64, gain: f64, gain_param: Option<(String, f64)> },
    /// A per-filter gain parameter (dims [O, 1, 1, 1]) times a constant `factor`, before
    /// it multiplies the standardized weight (`ScaledStdConv2d`'s `gain · γ/√fan`).
    Gain { factor: f64 },
}

/// A value computed from the stored weight `weight` (dims `dims`) by the steps so far.
#[derive(Clone, Debug)]
pub(super) struct Sym {
    pub(super) weight: String,
    pub(super) dims: Vec<i64>,
    pub(super) step: Step,
}

/// The ops a standardization is made of.
const OPS: &[&str] = &["ReduceMean", "Sub", "Mul", "Div", "Add", "Sqrt", "Pow", "Reciprocal", "Identity", "Cast"];

enum Arg<'a> {
    /// A stored conv weight (an initializer or weight input of rank 4).
    Weight(&'a str, Vec<i64>),
    Sym(Sym),
    /// A known scalar constant.
    Scalar(f64),
    /// Another constant.
    Other(&'a str),
}

impl<'m> Importer<'m> {
    fn arg(&self, name: &'m str) -> Arg<'m> {
        if let Some(s) = self.weight_syms.get(name) {
            return Arg::Sym(s.clone());
        }
        match self.params.get(name) {
            Some(p) if p.dims.len() == 4 && p.value.as_ref().is_none_or(|v| v.numel() > 1) => Arg::Weight(name, p.dims.clone()),
            Some(p) if p.scalar().is_some() => Arg::Scalar(p.scalar().unwrap_or_default()),
            _ => Arg::Other(name),
        }
    }

    /// Whether `name` is a constant of dims [O, 1, 1, 1]: a per-filter gain.
    fn gain_shaped(&self, name: &str) -> bool {
        self.params.get(name).is_some_and(|p| p.dims.len() == 4 && p.dims[1..] == [1, 1, 1] && !self.weight_syms.contains_key(name))
    }

    /// Follows node `cx` when it is a step of a weight standardization. Returns whether
    /// it was (then nothing else converts it).
    pub(super) fn standardize_step(&mut self, cx: &Cx<'m>) -> Result<bool, String> {
        let names: Vec<&'m str> = (0..cx.node.input.len()).filter_map(|i| cx.input(i)).collect();
        let reads_sym = names.iter().any(|n| self.weight_syms.contains_key(n));
        if !reads_sym {
            // Only a per-filter mean of a stored 4-D weight starts one.
            let starts = (cx.op == "ReduceMean"
                && names.first().is_some_and(|n| matches!(self.arg(n), Arg::Weight(..)))
                && filter_axes(self, cx)? == Some(true))
                || (cx.op == "Mul"
                    && names.len() == 2
                    && names.iter().any(|n| self.gain_shaped(n))
                    && names.iter().any(|n| matches!(self.arg(n), Arg::Scalar(_))));
            if !starts {
                return Ok(false);
            }
        }
        // A Conv reads its standardized weight itself ([`Importer::standardized_weight`]).
        if cx.op == "Conv" && cx.input(0).is_some_and(|x| !self.weight_syms.contains_key(x)) {
            return Ok(false);
        }
        let from = names.iter().find_map(|n| self.weight_syms.get(n).map(|s| s.weight.clone()));
        if !OPS.contains(&cx.op) {
            let w = from.unwrap_or_default();
            return Err(format!(
                "it reads a value computed from the weight `{w}` (a weight standardization): on such values cnnc takes {}, not {}",
                OPS.join(", "),
                cx.op
            ));
        }
        let args: Vec<Arg<'m>> = names.iter().map(|n| self.arg(n)).collect();
        let unexpected = || {
            format!(
                "{} of these inputs is not a step of a weight standardization cnnc knows (mean, centering, variance, ε, square root, gain)",
                cx.op
            )
        };
        let sym = |weight: &str, dims: &[i64], step: Step| Sym { weight: weight.to_string(), dims: dims.to_vec(), step };
        let out = match (cx.op, args.as_slice()) {
            ("Identity" | "Cast", [Arg::Sym(s)]) => s.clone(),
            ("ReduceMean", [Arg::Weight(w, d), ..]) => sym(w, d, Step::Mean),
            ("Mul", [Arg::Weight(w, d), Arg::Scalar(c)] | [Arg::Scalar(c), Arg::Weight(w, d)]) if self.gain_shaped(w) => {
                sym(w, d, Step::Gain { factor: *c })
            }
            ("Mul", [Arg::Sym(a), Arg::Sym(b)])
                if matches!(
                    (&a.step, &b.step),
                    (Step::Standard { gain_param: None, .. }, Step::Gain { .. })
                        | (Step::Gain { .. }, Step::Standard { gain_param: None, .. })
                ) =>
            {
                let (st, gn) = if matches!(a.step, Step::Gain { .. }) { (b, a) } else { (a, b) };
                let (Step::Standard { eps, gain, .. }, Step::Gain { factor }) = (&st.step, &gn.step) else { unreachable!("matched above") };
                if gn.dims[0] != st.dims[0] {
                    return Err(format!(
                        "the gain `{}` has {} filters, the standardized weight `{}` {}",
                        gn.weight, gn.dims[0], st.weight, st.dims[0]
                    ));
                }
                let value = per_filter_value(&self.params[gn.weight.as_str()]).ok_or_else(|| {
                    format!(
                        "the gain `{}` of the standardized weight `{}` has unequal values: cnnc plans a gain shared by the filters",
                        gn.weight, st.weight
                    )
                })?;
                if value == 0.0 || *factor == 0.0 || !(value * factor).is_finite() {
                    return Err(format!("the gain `{}` of the standardized weight `{}` is 0 at initialization", gn.weight, st.weight));
                }
                let name = self.source_name(&gn.weight).to_string();
                Sym { step: Step::Standard { eps: *eps, gain: gain * factor * value, gain_param: Some((name, value)) }, ..st.clone() }
            }
            ("Mul" | "Div", [Arg::Sym(s), Arg::Scalar(c)]) | ("Mul", [Arg::Scalar(c), Arg::Sym(s)])
                if matches!(s.step, Step::Gain { .. }) =>
            {
                let Step::Gain { factor } = s.step else { unreachable!("matched above") };
                Sym { step: Step::Gain { factor: if cx.op == "Mul" { factor * c } else { factor / c } }, ..s.clone() }
            }
            ("ReduceMean", [Arg::Sym(s), ..]) if s.step == Step::Square && filter_axes(self, cx)? == Some(true) => {
                Sym { step: Step::Var { eps: 0.0 }, ..s.clone() }
            }
            ("Sub", [Arg::Weight(w, d), Arg::Sym(s)]) if s.step == Step::Mean && s.weight == *w => sym(w, d, Step::Centered),
            ("Mul", [Arg::Sym(a), Arg::Sym(b)]) if a.step == Step::Centered && b.step == Step::Centered && a.weight == b.weight => {
                Sym { step: Step::Square, ..a.clone() }
            }
            ("Pow", [Arg::Sym(s), Arg::Scalar(e)]) if s.step == Step::Centered && *e == 2.0 => Sym { step: Step::Square, ..s.clone() },
            ("Add", [Arg::Sym(s), Arg::Scalar(c)] | [Arg::Scalar(c), Arg::Sym(s)]) if *c >= 0.0 => match s.step {
                Step::Var { eps } => Sym { step: Step::Var { eps: eps + c }, ..s.clone() },
                _ => return Err(unexpected()),
            },
            ("Sqrt", [Arg::Sym(s)]) => match s.step {
                Step::Var { eps } => Sym { step: Step::Std { eps }, ..s.clone() },
                _ => return Err(unexpected()),
            },
            ("Reciprocal", [Arg::Sym(s)]) | ("Div", [Arg::Scalar(_), Arg::Sym(s)]) => match s.step {
                Step::Std { eps } if cx.op == "Reciprocal" || matches!(args[0], Arg::Scalar(c) if c == 1.0) => {
                    Sym { step: Step::InvStd { eps }, ..s.clone() }
                }
                _ => return Err(unexpected()),
            },
            ("Pow", [Arg::Sym(s), Arg::Scalar(e)]) if *e == -0.5 => match s.step {
                Step::Var { eps } => Sym { step: Step::InvStd { eps }, ..s.clone() },
                _ => return Err(unexpected()),
            },
            ("Div", [Arg::Sym(a), Arg::Sym(b)]) if a.step == Step::Centered && a.weight == b.weight => match b.step {
                Step::Std { eps } => Sym { step: Step::Standard { eps, gain: 1.0, gain_param: None }, ..a.clone() },
                _ => return Err(unexpected()),
            },
            ("Mul", [Arg::Sym(a), Arg::Sym(b)]) if a.weight == b.weight => match (&a.step, &b.step) {
                (Step::Centered, Step::InvStd { eps }) | (Step::InvStd { eps }, Step::Centered) => {
                    Sym { step: Step::Standard { eps: *eps, gain: 1.0, gain_param: None }, ..a.clone() }
                }
                _ => return Err(unexpected()),
            },
            ("Mul" | "Div", [Arg::Sym(s), Arg::Scalar(c)]) | ("Mul", [Arg::Scalar(c), Arg::Sym(s)]) => match &s.step {
                Step::Standard { eps, gain, gain_param } if *c != 0.0 && c.is_finite() => {
                    let gain = if cx.op == "Mul" { gain * c } else { gain / c };
                    Sym { step: Step::Standard { eps: *eps, gain, gain_param: gain_param.clone() }, ..s.clone() }
                }
                _ => return Err(unexpected()),
            },
            ("Mul", [Arg::Sym(s), Arg::Other(g) | Arg::Weight(g, _)] | [Arg::Other(g) | Arg::Weight(g, _), Arg::Sym(s)]) => {
                match &s.step {
                    Step::Standard { eps, gain, gain_param: None } => {
                        let p = self.params.get(*g).ok_or_else(unexpected)?;
                        let filters = s.dims[0];
                        if p.dims.iter().product::<i64>() != filters || p.dims.first().is_some_and(|&d| d != filters) {
                            return Err(format!(
                            "the gain `{g}` of the standardized weight `{}` has shape {:?}: cnnc takes one gain per filter [{filters}, 1, 1, 1]",
                            s.weight, p.dims
                        ));
                        }
                        // Its values at initialization: known where the export carries them.
                        let value = per_filter_value(p).ok_or_else(|| {
                        format!("the gain `{g}` of the standardized weight `{}` has unequal values: cnnc plans a gain shared by the filters", s.weight)
                    })?;
                        if value == 0.0 || !value.is_finite() {
                            return Err(format!("the gain `{g}` of the standardized weight `{}` is {value} at initialization", s.weight));
                        }
                        let name = self.source_name(g).to_string();
                        Sym { step: Step::Standard { eps: *eps, gain: gain * value, gain_param: Some((name, value)) }, ..s.clone() }
                    }
                    _ => return Err(unexpected()),
                }
            }
            _ => return Err(unexpected()),
        };
        self.weight_syms.insert(cx.output()?, out);
        Ok(true)
    }

    /// The weight a conv reads at input 1 when it is a standardized one: the stored
    /// weight's name and dims, and the standardization.
    pub(super) fn standardized_weight(&self, cx: &Cx<'m>) -> Result<Option<(String, Vec<i64>, ir::Standardized)>, String> {
        let Some(s) = cx.input(1).and_then(|n| self.weight_syms.get(n)) else { return Ok(None) };
        match &s.step {
            Step::Standard { eps, gain, gain_param } => Ok(Some((
                s.weight.clone(),
                s.dims.clone(),
                ir::Standardized { gain: *gain, gain_param: gain_param.clone(), epsilon: *eps },
            ))),
            other => Err(format!("its weight is computed from `{}` but is not a standardized weight (it is {other:?})", s.weight)),
        }
    }
}

/// Whether a ReduceMean takes axes [1, 2, 3] (every axis of a filter) with keepdims;
/// `None` when its axes are not known.
fn filter_axes(imp: &Importer<'_>, cx: &Cx<'_>) -> Result<Option<bool>, String> {
    let axes: Vec<i64> = match (cx.ints("axes")?, cx.input(1)) {
        (Some(a), _) => a.to_vec(),
        (None, Some(name)) => match imp.params.get(name).and_then(Param::ints) {
            Some(a) => a,
            None => return Ok(None),
        },
        (None, None) => return Ok(Some(false)),
    };
    let mut norm: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
    norm.sort_unstable();
    Ok(Some(norm == [1, 2, 3] && cx.int("keepdims", 1)? == 1))
}

/// The one value of a per-filter gain: 1 where the export does not carry the values
/// (torch initializes such gains to ones), `None` when they differ.
fn per_filter_value(p: &Param) -> Option<f64> {
    let Some(v) = &p.value else { return Some(1.0) };
    let v = v.as_floats();
    let first = *v.first()?;
    v.iter().all(|&x| x == first).then_some(first)
}
