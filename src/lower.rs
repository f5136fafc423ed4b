//! Lowering: AST ([`crate::syntax::File`]) → graph IR ([`crate::ir::Graph`]).
//!
//! Expands `repeat` blocks and `× N` chains, resolves layer kinds and their options,
//! infers every shape, and names every module the way PyTorch names the children of
//! an `nn.Sequential` holding the same layers (an implicit `nn.Flatten` is inserted,
//! and counted, before a linear layer that reads an image). All errors are collected
//! and returned together, each with the span of the offending token; after the first
//! shape error, shape checks stop (to avoid cascades) but option checks go on.

use crate::diag::{Diagnostic, Span};
use crate::ir::{self, Activation, Graph, Node, Op, Origin, Pad, PoolKind, Shape, ValueId};
use crate::syntax::{Arg, ArgKind, File, Item, Layer, Spanned, Value};
use std::collections::HashMap;

/// More layers than this after expanding repeats is treated as a mistake.
pub const MAX_NODES: u64 = 100_000;
/// No size in a network may exceed this (keeps every count far from u64 overflow).
pub const MAX_SIZE: u64 = 1 << 24;
/// No tensor may hold more elements than this per sample.
pub const MAX_NUMEL: u64 = 1 << 40;

/// Lowers a parsed file. Returns every error found.
pub fn lower(file: &File) -> Result<Graph, Vec<Diagnostic>> {
    let mut cx = Lower { errors: Vec::new(), nodes: Vec::new(), shape: None, seq: 0, labels: HashMap::new() };
    cx.shape = cx.input_shape(&file.input);
    let mut expanded = Vec::new();
    let (mut total, mut iterations) = (0u64, 0u64);
    if expand(&file.items, &mut Vec::new(), &mut expanded, (&mut total, &mut iterations), &mut cx.errors).is_ok() {
        for (layer, path) in &expanded {
            cx.layer(layer, path);
        }
    }
    let input = cx.input_shape_unchecked(&file.input);
    let mut errors = cx.errors;
    dedup(&mut errors);
    if errors.is_empty() {
        Ok(Graph { name: file.name.value.clone(), input, nodes: cx.nodes, notes: Vec::new() })
    } else {
        Err(errors)
    }
}

fn dedup(errors: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::new();
    errors.retain(|d| seen.insert((d.span, d.message.clone())));
    errors.sort_by_key(|d| d.span.start);
}

/// Iterations of `repeat` and `× N` loops an expansion may take, layers or not
/// (`repeat 100000 { repeat 100000 { } }` makes no layer but 10¹⁰ iterations).
pub const MAX_ITERATIONS: u64 = 1_000_000;

/// Counts one loop iteration against [`MAX_ITERATIONS`]; the diagnostic points at the
/// loop's count.
fn iterate(iterations: &mut u64, span: Span, errors: &mut Vec<Diagnostic>) -> Result<(), ()> {
    *iterations += 1;
    if *iterations > MAX_ITERATIONS {
        errors.push(Diagnostic::new(span, format!("expanding the repeats takes more than {MAX_ITERATIONS} iterations")));
        return Err(());
    }
    Ok(())
}

/// Flattens repeats into (layer, repetition path). Fails (with a diagnostic) when the
/// expansion would exceed [`MAX_NODES`] layers or [`MAX_ITERATIONS`] iterations. Each
/// item's own problems (a count of 0) are reported on its first visit only (every
/// enclosing loop at its first iteration), not once per enclosing iteration.
fn expand<'a>(
    items: &'a [Item],
    path: &mut Vec<u64>,
    out: &mut Vec<(&'a Layer, Vec<u64>)>,
    (total, iterations): (&mut u64, &mut u64),
    errors: &mut Vec<Diagnostic>,
) -> Result<(), ()> {
    let first_visit = path.iter().all(|&k| k == 0);
    for item in items {
        match item {
            Item::Repeat { count, body, .. } => {
                if count.value == 0 && first_visit {
                    errors.push(Diagnostic::new(count.span, "`repeat 0` repeats nothing; remove the block or repeat at least once"));
                }
                if count.value > MAX_NODES {
                    errors
                        .push(Diagnostic::new(count.span, format!("repeat count {} is over the limit of {MAX_NODES} layers", count.value)));
                    return Err(());
                }
                for k in 0..count.value {
                    iterate(iterations, count.span, errors)?;
                    path.push(k);
                    expand(body, path, out, (total, iterations), errors)?;
                    path.pop();
                }
            }
            Item::Chain { layers, times, .. } => {
                let n = times.as_ref().map_or(1, |t| t.value);
                if let Some(t) = times {
                    if t.value == 0 && first_visit {
                        errors.push(Diagnostic::new(t.span, "`× 0` repeats nothing"));
                    }
                    if t.value > MAX_NODES {
                        errors.push(Diagnostic::new(t.span, format!("repeat count {} is over the limit of {MAX_NODES} layers", t.value)));
                        return Err(());
                    }
                }
                for k in 0..n {
                    if let Some(t) = times {
                        iterate(iterations, t.span, errors)?;
                        path.push(k);
                    }
                    for layer in layers {
                        *total += 1;
                        if *total > MAX_NODES {
                            errors.push(Diagnostic::new(
                                layer.span,
                                format!("the network has more than {MAX_NODES} layers after expanding repeats"),
                            ));
                            return Err(());
                        }
                        out.push((layer, path.clone()));
                    }
                    if times.is_some() {
                        path.pop();
                    }
                }
            }
        }
    }
    Ok(())
}

struct Lower {
    errors: Vec<Diagnostic>,
    nodes: Vec<Node>,
    /// Shape of the last value; `None` once a shape error has been reported.
    shape: Option<Shape>,
    /// Index of the next module in the equivalent `nn.Sequential`.
    seq: u64,
    labels: HashMap<String, Span>,
}

/// Options of one layer, checked off as they are used so that leftovers are reported.
struct Opts<'a> {
    op: &'a str,
    args: Vec<(&'a Arg, bool)>,
}

impl<'a> Opts<'a> {
    fn new(op: &'a str, args: &'a [Arg]) -> Self {
        Opts { op, args: args.iter().map(|a| (a, false)).collect() }
    }

    /// Takes a size given positionally (`3`, `3x5`) or as `key=`.
    fn size(&mut self, key: &str, cx: &mut Lower) -> Option<Spanned<Vec<u64>>> {
        let mut found = None;
        for (arg, used) in &mut self.args {
            let hit = match &arg.kind {
                ArgKind::Dims(d) if key == "kernel" => Some(d.clone()),
                ArgKind::Keyed { key: k, value } if k.value == key => match value {
                    Value::Dims(d) => Some(d.clone()),
                    v => {
                        cx.err(arg.span, format!("`{key}` of {} must be a size like `3` or `3x3`, not `{}`", self.op, v.describe()));
                        *used = true;
                        None
                    }
                },
                _ => None,
            };
            if let Some(d) = hit {
                *used = true;
                if found.is_some() {
                    cx.err(arg.span, format!("`{key}` of {} is given twice", self.op));
                } else {
                    found = Some(Spanned::new(d, arg.span));
                }
            }
        }
        found
    }

    /// Takes `s2` / `p1x2` style compact options (and their long `key=` forms).
    fn compact(&mut self, letter: char, key: &str, cx: &mut Lower) -> Option<Spanned<Vec<u64>>> {
        let mut found = None;
        for (arg, used) in &mut self.args {
            let hit = match &arg.kind {
                ArgKind::Compact { letter: l, dims } if *l == letter => Some(dims.clone()),
                ArgKind::Keyed { key: k, value } if k.value == key => match value {
                    Value::Dims(d) => Some(d.clone()),
                    v => {
                        cx.err(arg.span, format!("`{key}` of {} must be a size, not `{}`", self.op, v.describe()));
                        *used = true;
                        None
                    }
                },
                _ => None,
            };
            if let Some(d) = hit {
                *used = true;
                if found.is_some() {
                    cx.err(arg.span, format!("`{key}` of {} is given twice", self.op));
                } else {
                    found = Some(Spanned::new(d, arg.span));
                }
            }
        }
        found
    }

    /// Takes a single integer option `key=N`.
    fn keyed_uint(&mut self, key: &str, cx: &mut Lower) -> Option<Spanned<u64>> {
        let mut found = None;
        for (arg, used) in &mut self.args {
            if let ArgKind::Keyed { key: k, value } = &arg.kind {
                if k.value == key {
                    *used = true;
                    match value {
                        Value::Dims(d) if d.len() == 1 => found = Some(Spanned::new(d[0], arg.span)),
                        v => cx.err(arg.span, format!("`{key}` of {} must be an integer, not `{}`", self.op, v.describe())),
                    }
                }
            }
        }
        found
    }

    fn flag(&mut self, name: &str) -> Option<Span> {
        for (arg, used) in &mut self.args {
            if let ArgKind::Flag(f) = &arg.kind {
                if f == name {
                    *used = true;
                    return Some(arg.span);
                }
            }
        }
        None
    }

    /// Takes `key=true|false`.
    fn bool(&mut self, key: &str, cx: &mut Lower) -> Option<bool> {
        let mut found = None;
        for (arg, used) in &mut self.args {
            if let ArgKind::Keyed { key: k, value } = &arg.kind {
                if k.value == key {
                    *used = true;
                    match value {
                        Value::Ident(s) if s == "true" => found = Some(true),
                        Value::Ident(s) if s == "false" => found = Some(false),
                        v => cx.err(arg.span, format!("`{key}` of {} must be `true` or `false`, not `{}`", self.op, v.describe())),
                    }
                }
            }
        }
        found
    }

    fn number(&mut self, key: &str, cx: &mut Lower) -> Option<Spanned<f64>> {
        let mut found = None;
        for (arg, used) in &mut self.args {
            let hit = match &arg.kind {
                ArgKind::Number(x) => Some(*x),
                ArgKind::Dims(d) if d.len() == 1 => Some(d[0] as f64),
                ArgKind::Keyed { key: k, value } if k.value == key => match value {
                    Value::Number(x) => Some(*x),
                    Value::Dims(d) if d.len() == 1 => Some(d[0] as f64),
                    v => {
                        cx.err(arg.span, format!("`{key}` of {} must be a number, not `{}`", self.op, v.describe()));
                        *used = true;
                        None
                    }
                },
                _ => None,
            };
            if let Some(x) = hit {
                *used = true;
                found = Some(Spanned::new(x, arg.span));
            }
        }
        found
    }

    /// Reports every option that no rule took.
    fn finish(self, cx: &mut Lower) {
        for (arg, used) in self.args {
            if !used {
                let what = match &arg.kind {
                    ArgKind::Keyed { key, .. } => format!("unknown option `{}` for {}", key.value, self.op),
                    ArgKind::Flag(f) => format!("unknown option `{f}` for {}", self.op),
                    ArgKind::Compact { letter, .. } => format!("unknown option `{letter}…` for {}", self.op),
                    ArgKind::Dims(_) | ArgKind::Number(_) => format!("unexpected value for {}", self.op),
                };
                cx.err(arg.span, what);
            }
        }
    }
}

/// Expands a 1- or 2-element size to `[h, w]`.
fn pair(d: &Spanned<Vec<u64>>, what: &str, op: &str, cx: &mut Lower) -> Option<[u64; 2]> {
    match d.value.as_slice() {
        [a] => Some([*a, *a]),
        [a, b] => Some([*a, *b]),
        _ => {
            cx.err(d.span, format!("{what} of {op} must be `N` or `HxW`, got {} sizes", d.value.len()));
            None
        }
    }
}

fn positive(v: [u64; 2], span: Span, what: &str, op: &str, cx: &mut Lower) -> Option<[u64; 2]> {
    if v.contains(&0) {
        cx.err(span, format!("{what} of {op} must be at least 1"));
        return None;
    }
    if v.iter().any(|&x| x > MAX_SIZE) {
        cx.err(span, format!("{what} of {op} is larger than the limit of {MAX_SIZE}"));
        return None;
    }
    Some(v)
}

impl Lower {
    fn err(&mut self, span: Span, msg: impl Into<String>) {
        self.errors.push(Diagnostic::new(span, msg));
    }

    /// A shape error: reported, and shape checks stop from here on.
    fn shape_err(&mut self, span: Span, msg: impl Into<String>) {
        self.err(span, msg);
        self.shape = None;
    }

    fn input_shape_unchecked(&self, dims: &Spanned<Vec<u64>>) -> Shape {
        match dims.value.as_slice() {
            [c, h, w] => Shape::Image { c: *c, h: *h, w: *w },
            [n] => Shape::Vector { n: *n },
            _ => Shape::Vector { n: 0 },
        }
    }

    fn input_shape(&mut self, dims: &Spanned<Vec<u64>>) -> Option<Shape> {
        let d = &dims.value;
        if d.len() != 3 && d.len() != 1 {
            self.err(dims.span, format!("the input must be `CxHxW` (or a vector size `N`), got {} sizes", d.len()));
            return None;
        }
        if d.contains(&0) {
            self.err(dims.span, "every input size must be at least 1");
            return None;
        }
        if d.iter().any(|&x| x > MAX_SIZE) {
            self.err(dims.span, format!("an input size is larger than the limit of {MAX_SIZE}"));
            return None;
        }
        let shape = self.input_shape_unchecked(dims);
        self.check_numel(shape, dims.span)
    }

    fn check_numel(&mut self, shape: Shape, span: Span) -> Option<Shape> {
        let n = match shape {
            Shape::Image { c, h, w } => c.checked_mul(h).and_then(|x| x.checked_mul(w)),
            Shape::Vector { n } => Some(n),
        };
        match n {
            Some(n) if n <= MAX_NUMEL => Some(shape),
            _ => {
                self.shape_err(span, format!("the tensor {shape} has more than {MAX_NUMEL} elements"));
                None
            }
        }
    }

    fn module_name(&mut self, layer: &Layer, path: &[u64]) -> String {
        let index = self.seq;
        self.seq += 1;
        match &layer.label {
            None => index.to_string(),
            Some(label) => {
                let mut name = label.value.clone();
                for k in path {
                    name.push_str(&format!(".{k}"));
                }
                if let Some(first) = self.labels.get(&name) {
                    let (first, this) = (*first, label.span);
                    if first != this {
                        self.errors.push(
                            Diagnostic::new(this, format!("the layer name `{name}` is used twice")).with_note_at(first, "first used"),
                        );
                    }
                } else {
                    self.labels.insert(name.clone(), label.span);
                }
                name
            }
        }
    }

    fn push(&mut self, op: Op, output: Shape, name: String, span: Span) {
        let input = ValueId(self.nodes.len());
        self.nodes.push(Node { op, inputs: vec![input], output, name, params: None, origin: Origin::Source(span) });
    }

    fn no_sizes(&mut self, layer: &Layer, op: &str) {
        if let Some(s) = layer.out_size.as_ref().or(layer.in_size.as_ref()) {
            self.err(s.span, format!("{op} takes no `-> N` size"));
        }
    }

    fn layer(&mut self, layer: &Layer, path: &[u64]) {
        let key: String = layer.op.value.to_ascii_lowercase().chars().filter(|&c| c != '_').collect();
        match key.as_str() {
            "conv" | "conv2d" => self.conv(layer, path),
            "linear" | "fc" | "dense" => self.linear(layer, path),
            "maxpool" | "avgpool" => self.pool(layer, path, if key == "maxpool" { PoolKind::Max } else { PoolKind::Avg }),
            "globalavgpool" | "gap" => self.global_pool(layer, path, PoolKind::Avg),
            "globalmaxpool" => self.global_pool(layer, path, PoolKind::Max),
            "flatten" => self.flatten(layer, path),
            "relu" | "identity" | "leakyrelu" | "tanh" | "sigmoid" | "gelu" | "silu" => self.activation(layer, path, &key),
            _ => self.err(
                layer.op.span,
                format!(
                    "unknown layer `{}` (known: conv, linear, relu, leaky_relu, identity, tanh, sigmoid, gelu, silu, maxpool, avgpool, global_avgpool, global_maxpool, flatten)",
                    layer.op.value
                ),
            ),
        }
    }

    fn conv(&mut self, layer: &Layer, path: &[u64]) {
        let op = "conv";
        let mut o = Opts::new(op, &layer.args);
        let kernel = o.size("kernel", self);
        let stride = o.compact('s', "stride", self);
        let pad = self.padding(&mut o, op);
        let dilation = o.compact('d', "dilation", self);
        let groups = o.compact('g', "groups", self);
        let bias = self.bias(&mut o);
        o.finish(self);

        let kernel = match kernel {
            Some(k) => pair(&k, "the kernel", op, self).and_then(|v| positive(v, k.span, "the kernel", op, self)),
            None => {
                self.err(layer.op.span, "conv needs a kernel size, e.g. `conv(3/p1) -> 64`");
                None
            }
        };
        let stride = match stride {
            Some(s) => pair(&s, "the stride", op, self).and_then(|v| positive(v, s.span, "the stride", op, self)),
            None => Some([1, 1]),
        };
        let dilation = match dilation {
            Some(s) => pair(&s, "the dilation", op, self).and_then(|v| positive(v, s.span, "the dilation", op, self)),
            None => Some([1, 1]),
        };
        let groups = match groups {
            Some(g) if g.value.len() == 1 && g.value[0] >= 1 => Some(Spanned::new(g.value[0], g.span)),
            Some(g) => {
                self.err(g.span, "groups of conv must be one integer ≥ 1");
                None
            }
            None => Some(Spanned::new(1, layer.span)),
        };
        let out_channels = match &layer.out_size {
            Some(o) if o.value == 0 => {
                self.err(o.span, "a conv needs at least 1 output channel");
                None
            }
            Some(o) if o.value > MAX_SIZE => {
                self.err(o.span, format!("{} output channels is over the limit of {MAX_SIZE}", o.value));
                None
            }
            Some(o) => Some(o.value),
            None => {
                self.err(layer.span, "conv needs its output channels, e.g. `conv(3/p1) -> 64`");
                None
            }
        };
        let name = self.module_name(layer, path);
        let (Some(kernel), Some(stride), Some(pad), Some(dilation), Some(groups), Some(out_channels)) =
            (kernel, stride, pad, dilation, groups, out_channels)
        else {
            self.shape = None;
            return;
        };
        let Some(shape) = self.shape else { return };
        let Shape::Image { c, h, w } = shape else {
            return self.shape_err(layer.op.span, format!("conv needs an image input (C,H,W), but its input is the vector {shape}"));
        };
        if let Some(i) = &layer.in_size {
            if i.value != c {
                return self.shape_err(
                    i.span,
                    format!("channel mismatch: this conv is written for {} input channels, but its input {shape} has {c}", i.value),
                );
            }
        }
        if c % groups.value != 0 || out_channels % groups.value != 0 {
            return self.shape_err(
                groups.span,
                format!("{} groups must divide both the input channels ({c}) and the output channels ({out_channels})", groups.value),
            );
        }
        let mut out = [0u64; 2];
        for (axis, (input, axis_name)) in [(h, "height"), (w, "width")].into_iter().enumerate() {
            match ir::conv_out_size(input, kernel[axis], stride[axis], pad[axis], dilation[axis]) {
                Some(n) => out[axis] = n,
                None => {
                    return self.shape_err(
                        layer.op.span,
                        format!(
                            "conv output {axis_name} would be ≤ 0: input {axis_name} {input} + padding {} + {} is smaller than the kernel's reach {}",
                            pad[axis].begin,
                            pad[axis].end,
                            dilation[axis] * (kernel[axis] - 1) + 1
                        ),
                    )
                }
            }
        }
        let output = Shape::Image { c: out_channels, h: out[0], w: out[1] };
        let Some(output) = self.check_numel(output, layer.span) else { return };
        let weights = [c / groups.value, kernel[0], kernel[1]].iter().try_fold(out_channels, |acc, &x| acc.checked_mul(x));
        if weights.is_none_or(|n| n > MAX_NUMEL) {
            return self.shape_err(layer.span, format!("this conv would have more than {MAX_NUMEL} weights"));
        }
        let conv = ir::Conv { in_channels: c, out_channels, kernel, stride, pad, dilation, groups: groups.value, bias };
        self.push(Op::Conv(conv), output, name, layer.span);
        self.shape = Some(output);
    }

    /// `p1`, `p1x2`, `pad=1`, and per side `pad_top=… pad_bottom=… pad_left=… pad_right=…`.
    fn padding(&mut self, o: &mut Opts<'_>, op: &str) -> Option<[Pad; 2]> {
        let sym = o.compact('p', "pad", self);
        let sides = ["pad_top", "pad_bottom", "pad_left", "pad_right"].map(|k| o.keyed_uint(k, self));
        let mut pad = [Pad::default(); 2];
        if let Some(s) = &sym {
            let [ph, pw] = pair(s, "the padding", op, self)?;
            if ph > MAX_SIZE || pw > MAX_SIZE {
                self.err(s.span, format!("the padding of {op} is larger than the limit of {MAX_SIZE}"));
                return None;
            }
            pad = [Pad { begin: ph, end: ph }, Pad { begin: pw, end: pw }];
        }
        for (k, side) in sides.iter().enumerate() {
            if let Some(v) = side {
                if sym.is_some() {
                    self.err(v.span, format!("give the padding of {op} either symmetric (`p…`) or per side, not both"));
                    return None;
                }
                if v.value > MAX_SIZE {
                    self.err(v.span, format!("the padding of {op} is larger than the limit of {MAX_SIZE}"));
                    return None;
                }
                match k {
                    0 => pad[0].begin = v.value,
                    1 => pad[0].end = v.value,
                    2 => pad[1].begin = v.value,
                    _ => pad[1].end = v.value,
                }
            }
        }
        Some(pad)
    }

    fn bias(&mut self, o: &mut Opts<'_>) -> bool {
        let nobias = o.flag("nobias").is_some();
        match o.bool("bias", self) {
            Some(b) => b && !nobias,
            None => !nobias,
        }
    }

    fn linear(&mut self, layer: &Layer, path: &[u64]) {
        let mut o = Opts::new("linear", &layer.args);
        let bias = self.bias(&mut o);
        o.finish(self);
        let out = match &layer.out_size {
            Some(o) if o.value == 0 => {
                self.err(o.span, "a linear layer needs at least 1 output");
                None
            }
            Some(o) if o.value > MAX_SIZE => {
                self.err(o.span, format!("{} outputs is over the limit of {MAX_SIZE}", o.value));
                None
            }
            Some(o) => Some(o.value),
            None => {
                self.err(layer.span, "linear needs its output size, e.g. `linear -> 10`");
                None
            }
        };
        let Some(shape) = self.shape else {
            self.module_name(layer, path);
            return;
        };
        let n = shape.numel();
        if let Shape::Image { .. } = shape {
            // PyTorch needs an nn.Flatten here; it takes a Sequential index too.
            let index = self.seq;
            self.seq += 1;
            self.push(Op::Flatten, Shape::Vector { n }, index.to_string(), layer.span);
            if let Some(last) = self.nodes.last_mut() {
                last.origin = Origin::Implicit(Box::new(Origin::Source(layer.span)));
            }
        }
        let name = self.module_name(layer, path);
        let Some(out) = out else {
            self.shape = None;
            return;
        };
        if let Some(i) = &layer.in_size {
            if i.value != n {
                return self.shape_err(
                    i.span,
                    format!("size mismatch: this linear layer is written for {} inputs, but its input {shape} has {n}", i.value),
                );
            }
        }
        if n > MAX_SIZE * 64 {
            return self.shape_err(layer.span, format!("a linear layer over {n} inputs is over the limit of {}", MAX_SIZE * 64));
        }
        if n.checked_mul(out).is_none_or(|w| w > MAX_NUMEL) {
            return self.shape_err(layer.span, format!("this linear layer would have more than {MAX_NUMEL} weights"));
        }
        let output = Shape::Vector { n: out };
        self.push(Op::Linear(ir::Linear { in_features: n, out_features: out, bias }), output, name, layer.span);
        self.shape = Some(output);
    }

    fn activation(&mut self, layer: &Layer, path: &[u64], key: &str) {
        let op = layer.op.value.as_str();
        let mut o = Opts::new(op, &layer.args);
        let act = match key {
            "relu" => Activation::Relu,
            "identity" => Activation::Identity,
            "leakyrelu" => {
                let slope = o.number("slope", self).map_or(0.01, |s| s.value);
                Activation::LeakyRelu { slope }
            }
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "gelu" => Activation::Gelu,
            _ => Activation::Silu,
        };
        o.finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer, path);
        if let Some(shape) = self.shape {
            self.push(Op::Activation(act), shape, name, layer.span);
        }
    }

    fn pool(&mut self, layer: &Layer, path: &[u64], kind: PoolKind) {
        let op = if kind == PoolKind::Max { "maxpool" } else { "avgpool" };
        let mut o = Opts::new(op, &layer.args);
        let kernel = o.size("kernel", self);
        let stride = o.compact('s', "stride", self);
        let pad = self.padding(&mut o, op);
        let ceil_mode = o.flag("ceil").is_some();
        let exclude = if kind == PoolKind::Avg { o.flag("exclude_pad") } else { None };
        o.finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer, path);
        let kernel = match kernel {
            Some(k) => pair(&k, "the kernel", op, self).and_then(|v| positive(v, k.span, "the kernel", op, self)),
            None => {
                self.err(layer.op.span, format!("{op} needs a kernel size, e.g. `{op}(3/s2/p1)`"));
                None
            }
        };
        let stride = match stride {
            Some(s) => pair(&s, "the stride", op, self).and_then(|v| positive(v, s.span, "the stride", op, self)),
            None => kernel,
        };
        let (Some(kernel), Some(stride), Some(pad)) = (kernel, stride, pad) else {
            self.shape = None;
            return;
        };
        for axis in 0..2 {
            if pad[axis].begin.max(pad[axis].end) * 2 > kernel[axis] {
                return self.shape_err(
                    layer.span,
                    format!("the padding of {op} must be at most half its kernel, or a window would see only padding"),
                );
            }
        }
        let Some(shape) = self.shape else { return };
        let Shape::Image { c, h, w } = shape else {
            return self.shape_err(layer.op.span, format!("{op} needs an image input (C,H,W), but its input is the vector {shape}"));
        };
        let mut out = [0u64; 2];
        for (axis, (input, axis_name)) in [(h, "height"), (w, "width")].into_iter().enumerate() {
            match ir::pool_out_size(input, kernel[axis], stride[axis], pad[axis], ceil_mode) {
                Some(n) => out[axis] = n,
                None => {
                    return self.shape_err(
                        layer.op.span,
                        format!(
                            "{op} output {axis_name} would be ≤ 0: input {axis_name} {input} with padding is smaller than the kernel {}",
                            kernel[axis]
                        ),
                    )
                }
            }
        }
        let pool = ir::Pool { kind, kernel, stride, pad, ceil_mode, count_include_pad: exclude.is_none() };
        let output = Shape::Image { c, h: out[0], w: out[1] };
        self.push(Op::Pool(pool), output, name, layer.span);
        self.shape = Some(output);
    }

    fn global_pool(&mut self, layer: &Layer, path: &[u64], kind: PoolKind) {
        let op = layer.op.value.as_str();
        Opts::new(op, &layer.args).finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer, path);
        let Some(shape) = self.shape else { return };
        let Shape::Image { c, .. } = shape else {
            return self.shape_err(layer.op.span, format!("{op} needs an image input (C,H,W), but its input is the vector {shape}"));
        };
        let output = Shape::Image { c, h: 1, w: 1 };
        self.push(Op::GlobalPool(kind), output, name, layer.span);
        self.shape = Some(output);
    }

    fn flatten(&mut self, layer: &Layer, path: &[u64]) {
        Opts::new("flatten", &layer.args).finish(self);
        self.no_sizes(layer, "flatten");
        let name = self.module_name(layer, path);
        let Some(shape) = self.shape else { return };
        let output = Shape::Vector { n: shape.numel() };
        self.push(Op::Flatten, output, name, layer.span);
        self.shape = Some(output);
    }
}
