//! Lowering: AST ([`crate::syntax::File`]) → graph IR ([`crate::ir::Graph`]).
//!
//! Expands `repeat` blocks, `× N` chains and block calls, resolves layer kinds and their
//! options, infers every shape, and names every module the way PyTorch names the children
//! of an `nn.Sequential` holding the same layers (an implicit `nn.Flatten` is inserted,
//! and counted, before a linear layer that reads an image; a group `name: { … }` or a
//! block call is a child whose own children are numbered from 0). Chains build a chain of
//! nodes, each reading the one before; named values (`x = …`, `@x`), joins (`+`, `cat`)
//! and branches build any DAG, in topological order by construction (a value can only
//! name one defined before it). All errors are collected and returned together, each with
//! the span of the offending token; after a shape error the value it made is unknown and
//! shape checks downstream of it stop (to avoid cascades), but option checks go on.

use crate::analyze::budget::MAX_JOIN_INPUTS;
use crate::diag::{Diagnostic, Span};
use crate::ir::{self, Activation, Expr, Fn1, Graph, Node, Op, Origin, Pad, PoolKind, Shape, ValueId};
use crate::syntax::{Arg, ArgKind, BlockDef, Chain, File, Item, Layer, Spanned, Step, Term, Value};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// More layers than this after expanding repeats is treated as a mistake.
pub const MAX_NODES: u64 = 100_000;
/// No size in a network may exceed this (keeps every count far from u64 overflow).
pub const MAX_SIZE: u64 = 1 << 24;
/// No tensor may hold more elements than this per sample.
pub const MAX_NUMEL: u64 = 1 << 40;

/// Lowers a parsed file. Returns every error found.
pub fn lower(file: &File) -> Result<Graph, Vec<Diagnostic>> {
    let mut cx = Lower::new();
    cx.shape = cx.input_shape(&file.input);
    cx.input = cx.input_shape_unchecked(&file.input);
    cx.define_blocks(&file.blocks);
    cx.values.insert("input".into(), Binding { value: cx.cur(), span: None });
    cx.body_names = bound_names(&file.items);
    let done = cx.items(&file.items);
    let input = cx.input_shape_unchecked(&file.input);
    let mut errors = cx.expand_errors;
    if done.is_ok() {
        errors.extend(cx.errors);
    }
    if errors.is_empty() {
        unused_values(&cx.nodes, &mut errors);
    }
    dedup(&mut errors);
    if errors.is_empty() {
        Ok(Graph { name: file.name.value.clone(), input, nodes: cx.nodes, notes: Vec::new() })
    } else {
        Err(errors)
    }
}

/// A value that no node reads and that is not the last (the network's output) is a
/// mistake (`conv…, @x, …` drops the conv): an error at the layer that makes it.
fn unused_values(nodes: &[Node], errors: &mut Vec<Diagnostic>) {
    let mut read = vec![false; nodes.len() + 1];
    for n in nodes {
        for v in &n.inputs {
            read[v.0] = true;
        }
    }
    for (k, n) in nodes.iter().enumerate().take(nodes.len().saturating_sub(1)) {
        if !read[k + 1] {
            if let Origin::Source(span) = &n.origin {
                errors.push(Diagnostic::new(*span, "the value this makes is never used (only the last value is the network's output)"));
            }
        }
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

/// Inputs of all joins together (a `cat` of a `cat` copies its parts: 50k `cat`s of 1024
/// parts would hold 5·10⁷ of them).
pub const MAX_JOIN_INPUTS_TOTAL: usize = 1 << 20;

/// Blocks calling blocks deeper than this is an error (lowering recurses once per call).
pub const MAX_CALL_DEPTH: usize = 64;

/// Bodies (of repeats, groups, calls) and branches nested deeper than this, counted
/// through block calls, is an error: lowering recurses once per level (the parser's own
/// limit, `syntax::MAX_NESTING`, holds within one block only).
pub const MAX_DEPTH: usize = 128;

/// The names a body binds (`x = …`), in its repeats, groups and branches too (not in
/// the blocks it calls): a reference to one of them before its binding is "used before
/// its definition", to any other name "unknown".
fn bound_names(items: &[Item]) -> HashSet<String> {
    fn chain(c: &Chain, out: &mut HashSet<String>) {
        for step in &c.steps {
            match step {
                Step::Add { term, .. } => term_names(term, out),
                Step::Cat { terms, .. } => terms.iter().for_each(|t| term_names(t, out)),
                Step::Group { items, .. } => walk(items, out),
                Step::Layer(_) | Step::Ref(_) => {}
            }
        }
    }
    fn term_names(t: &Term, out: &mut HashSet<String>) {
        if let Term::Branch(c) = t {
            chain(c, out);
        }
    }
    fn walk(items: &[Item], out: &mut HashSet<String>) {
        for item in items {
            match item {
                Item::Repeat { body, .. } => walk(body, out),
                Item::Chain(c) => chain(c, out),
                Item::Bind { name, chain: c, .. } => {
                    out.insert(name.value.clone());
                    chain(c, out);
                }
            }
        }
    }
    let mut out = HashSet::new();
    walk(items, &mut out);
    out
}

/// A value the source can name: its id and shape (`None` after an error made it
/// unknown), and where it was bound (`None`: the network's or a block's input).
#[derive(Clone)]
struct Binding {
    value: Option<(ValueId, Shape)>,
    span: Option<Span>,
}

/// The naming and value scope of the file's top level, of a group or of a block call.
#[derive(Default)]
struct Scope {
    /// Prepended to every module name (`layer1.0.`).
    prefix: String,
    /// Index of the next module in the equivalent `nn.Sequential`.
    seq: u64,
    /// Where this scope's repeat indices start in `Lower::path`.
    path_base: usize,
    /// Joins named so far (`add`, `add_1`, …).
    joins: HashMap<&'static str, u64>,
}

struct Lower<'a> {
    errors: Vec<Diagnostic>,
    /// Errors of the expansion (repeat counts, budgets): when one aborts lowering, these
    /// are the only ones reported.
    expand_errors: Vec<Diagnostic>,
    nodes: Vec<Node>,
    /// Shape of the current value; `None` once a shape error has been reported on its way.
    shape: Option<Shape>,
    /// The current value (meaningful while `shape` is `Some`).
    value: ValueId,
    scope: Scope,
    /// Every module name given, where its label is and the block call it came from.
    labels: HashMap<String, (Span, usize)>,
    /// Repeat indices of the enclosing loops, outermost first.
    path: Vec<u64>,
    /// Layers and loop iterations so far (against [`MAX_NODES`], [`MAX_ITERATIONS`]).
    total: u64,
    iterations: u64,
    blocks: HashMap<&'a str, &'a BlockDef>,
    /// The named values of the current scope (`input`, or `in` in a block).
    values: HashMap<String, Binding>,
    /// The names the current body binds somewhere ([`bound_names`]).
    body_names: HashSet<String>,
    /// Block parameters and their values in the current call.
    env: HashMap<String, Value>,
    /// Blocks being expanded, outermost first; and a counter identifying each call.
    calls: Vec<&'a str>,
    call_id: usize,
    /// Bodies and branches entered and not left (against [`MAX_DEPTH`]).
    depth: usize,
    /// Inputs of the joins built so far (against [`MAX_JOIN_INPUTS_TOTAL`]).
    join_inputs: usize,
    /// The network input's shape (value 0).
    input: Shape,
}

/// The layer kinds lowering knows (a block may not take one of these names).
const KINDS: &str = "conv, linear, batchnorm, relu, relu6, leaky_relu, prelu, identity, tanh, sigmoid, hardsigmoid, hardswish, gelu, silu, elu, softplus, mish, maxpool, avgpool, global_avgpool, global_maxpool, flatten, dropout, slice, shuffle";

/// A layer kind's key: lower case, `_` dropped (`Max_Pool` = `maxpool`).
fn kind_key(op: &str) -> String {
    op.to_ascii_lowercase().chars().filter(|&c| c != '_').collect()
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
    fn size(&mut self, key: &str, cx: &mut Lower<'_>) -> Option<Spanned<Vec<u64>>> {
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
    fn compact(&mut self, letter: char, key: &str, cx: &mut Lower<'_>) -> Option<Spanned<Vec<u64>>> {
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
    fn keyed_uint(&mut self, key: &str, cx: &mut Lower<'_>) -> Option<Spanned<u64>> {
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
    fn bool(&mut self, key: &str, cx: &mut Lower<'_>) -> Option<bool> {
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

    fn number(&mut self, key: &str, cx: &mut Lower<'_>) -> Option<Spanned<f64>> {
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
    fn finish(self, cx: &mut Lower<'_>) {
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
fn pair(d: &Spanned<Vec<u64>>, what: &str, op: &str, cx: &mut Lower<'_>) -> Option<[u64; 2]> {
    match d.value.as_slice() {
        [a] => Some([*a, *a]),
        [a, b] => Some([*a, *b]),
        _ => {
            cx.err(d.span, format!("{what} of {op} must be `N` or `HxW`, got {} sizes", d.value.len()));
            None
        }
    }
}

fn positive(v: [u64; 2], span: Span, what: &str, op: &str, cx: &mut Lower<'_>) -> Option<[u64; 2]> {
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

impl<'a> Lower<'a> {
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

    fn new() -> Lower<'a> {
        Lower {
            errors: Vec::new(),
            expand_errors: Vec::new(),
            nodes: Vec::new(),
            shape: None,
            value: ValueId(0),
            scope: Scope::default(),
            labels: HashMap::new(),
            path: Vec::new(),
            total: 0,
            iterations: 0,
            blocks: HashMap::new(),
            values: HashMap::new(),
            body_names: HashSet::new(),
            env: HashMap::new(),
            calls: Vec::new(),
            call_id: 0,
            depth: 0,
            join_inputs: 0,
            input: Shape::Vector { n: 0 },
        }
    }

    /// The current value, `None` when an error made it unknown.
    fn cur(&self) -> Option<(ValueId, Shape)> {
        self.shape.map(|s| (self.value, s))
    }

    fn set_cur(&mut self, v: Option<(ValueId, Shape)>) {
        match v {
            Some((id, shape)) => {
                self.value = id;
                self.shape = Some(shape);
            }
            None => self.shape = None,
        }
    }

    fn expand_err(&mut self, span: Span, msg: impl Into<String>) {
        self.expand_errors.push(Diagnostic::new(span, msg));
    }

    /// Whether every enclosing loop is at its first iteration: an item's own problems (a
    /// count of 0) are reported then only, not once per enclosing iteration.
    fn first_visit(&self) -> bool {
        self.path.iter().all(|&k| k == 0)
    }

    /// Counts one loop iteration against [`MAX_ITERATIONS`]; the diagnostic points at
    /// the loop's count.
    fn iterate(&mut self, span: Span) -> Result<(), ()> {
        self.iterations += 1;
        if self.iterations > MAX_ITERATIONS {
            self.expand_err(span, format!("expanding the repeats takes more than {MAX_ITERATIONS} iterations"));
            return Err(());
        }
        Ok(())
    }

    fn define_blocks(&mut self, blocks: &'a [BlockDef]) {
        for b in blocks {
            let key = kind_key(&b.name.value);
            if KINDS.split(", ").any(|k| kind_key(k) == key) || matches!(key.as_str(), "cat" | "repeat" | "block") {
                self.err(b.name.span, format!("a block cannot be called `{}`: that is a layer kind", b.name.value));
                continue;
            }
            if let Some(first) = self.blocks.get(b.name.value.as_str()) {
                let d = Diagnostic::new(b.name.span, format!("the block `{}` is defined twice", b.name.value))
                    .with_note_at(first.name.span, "first defined");
                self.errors.push(d);
                continue;
            }
            let mut seen: HashMap<&str, Span> = HashMap::new();
            for p in &b.params {
                if let Some(first) = seen.insert(&p.name.value, p.name.span) {
                    let d = Diagnostic::new(p.name.span, format!("the parameter `{}` is given twice", p.name.value))
                        .with_note_at(first, "first given");
                    self.errors.push(d);
                }
            }
            self.blocks.insert(&b.name.value, b);
        }
    }

    /// Lowers items in order. `Err` aborts the whole lowering (an expansion budget).
    fn items(&mut self, items: &'a [Item]) -> Result<(), ()> {
        self.depth += 1;
        let r = self.items_within(items);
        self.depth -= 1;
        r
    }

    /// Refuses to go [`MAX_DEPTH`] levels deep (the error points at `span`).
    fn deeper(&mut self, span: Span) -> Result<(), ()> {
        if self.depth >= MAX_DEPTH {
            self.expand_err(
                span,
                format!("blocks, repeats, groups and branches are nested more than {MAX_DEPTH} deep here (counted through block calls)"),
            );
            return Err(());
        }
        Ok(())
    }

    fn items_within(&mut self, items: &'a [Item]) -> Result<(), ()> {
        for item in items {
            match item {
                Item::Repeat { count, body, .. } => {
                    if count.value == 0 && self.first_visit() {
                        self.expand_err(count.span, "`repeat 0` repeats nothing; remove the block or repeat at least once");
                    }
                    if count.value > MAX_NODES {
                        self.expand_err(count.span, format!("repeat count {} is over the limit of {MAX_NODES} layers", count.value));
                        return Err(());
                    }
                    self.deeper(count.span)?;
                    for k in 0..count.value {
                        self.iterate(count.span)?;
                        self.path.push(k);
                        let r = self.items(body);
                        self.path.pop();
                        r?;
                    }
                }
                Item::Chain(c) => self.chain(c)?,
                Item::Bind { name, chain, .. } => {
                    self.chain(chain)?;
                    self.bind(name);
                }
            }
        }
        Ok(())
    }

    fn chain(&mut self, chain: &'a Chain) -> Result<(), ()> {
        let n = chain.times.as_ref().map_or(1, |t| t.value);
        if let Some(t) = &chain.times {
            if t.value == 0 && self.first_visit() {
                self.expand_err(t.span, "`× 0` repeats nothing");
            }
            if t.value > MAX_NODES {
                self.expand_err(t.span, format!("repeat count {} is over the limit of {MAX_NODES} layers", t.value));
                return Err(());
            }
        }
        for k in 0..n {
            if let Some(t) = &chain.times {
                self.iterate(t.span)?;
                self.path.push(k);
            }
            let r = chain.steps.iter().try_for_each(|step| self.step(step));
            if chain.times.is_some() {
                self.path.pop();
            }
            r?;
        }
        Ok(())
    }

    fn step(&mut self, step: &'a Step) -> Result<(), ()> {
        match step {
            Step::Layer(layer) => {
                self.total += 1;
                if self.total > MAX_NODES {
                    self.expand_err(layer.span, format!("the network has more than {MAX_NODES} layers after expanding repeats"));
                    return Err(());
                }
                let layer = self.substitute(layer);
                match self.blocks.get(layer.op.value.as_str()) {
                    Some(&block) => return self.call(&layer, block),
                    None => self.layer(&layer),
                }
            }
            Step::Ref(name) => {
                let v = self.lookup(name);
                self.set_cur(v);
            }
            Step::Add { term, span } => {
                let lhs = self.cur();
                let rhs = self.term(term, lhs)?;
                self.add(lhs, rhs, *span);
            }
            Step::Cat { terms, span } => {
                let start = self.cur();
                let mut values = Vec::new();
                for t in terms {
                    values.push(self.term(t, start)?);
                }
                self.cat(values, *span);
            }
            Step::Group { label, items, span } => {
                self.deeper(*span)?;
                let name = self.name_module(label.as_ref());
                let outer = std::mem::replace(
                    &mut self.scope,
                    Scope { prefix: format!("{name}."), path_base: self.path.len(), ..Scope::default() },
                );
                let r = self.items(items);
                self.scope = outer;
                r?;
            }
        }
        Ok(())
    }

    /// The value of a join's operand: a named value, or a branch run from `start`.
    fn term(&mut self, term: &'a Term, start: Option<(ValueId, Shape)>) -> Result<Option<(ValueId, Shape)>, ()> {
        match term {
            Term::Ref(name) => Ok(self.lookup(name)),
            Term::Branch(chain) => {
                self.deeper(chain.span)?;
                self.set_cur(start);
                self.depth += 1;
                let r = self.chain(chain);
                self.depth -= 1;
                r?;
                Ok(self.cur())
            }
        }
    }

    fn lookup(&mut self, name: &Spanned<String>) -> Option<(ValueId, Shape)> {
        if let Some(b) = self.values.get(&name.value) {
            return b.value;
        }
        let message = if self.body_names.contains(&name.value) {
            format!("the value `{}` is used before its definition", name.value)
        } else if self.calls.is_empty() {
            format!("no value named `{}` (`@input` is the network's input; `x = …` names a value)", name.value)
        } else {
            format!(
                "no value named `{}` in block `{}` (`@in` is the block's input; `x = …` names a value)",
                name.value,
                self.calls[self.calls.len() - 1]
            )
        };
        self.err(name.span, message);
        None
    }

    /// `name = …`: the current value gets a name (again, on the next iteration of a loop).
    fn bind(&mut self, name: &Spanned<String>) {
        let value = self.cur();
        if let Some(first) = self.values.get(&name.value) {
            match first.span {
                None => {
                    let what = if self.calls.is_empty() { "the network's input" } else { "the block's input" };
                    return self.err(name.span, format!("`{}` is {what}; give this value another name", name.value));
                }
                Some(first) if first != name.span => {
                    let d = Diagnostic::new(name.span, format!("the value `{}` is defined twice", name.value))
                        .with_note_at(first, "first defined");
                    return self.errors.push(d);
                }
                Some(_) => {}
            }
        }
        self.values.insert(name.value.clone(), Binding { value, span: Some(name.span) });
    }

    /// `+`: the sum of the current value and another of the same shape.
    fn add(&mut self, lhs: Option<(ValueId, Shape)>, rhs: Option<(ValueId, Shape)>, span: Span) {
        let (Some((a, sa)), Some((b, sb))) = (lhs, rhs) else {
            self.shape = None;
            return;
        };
        if sa != sb {
            return self.shape_err(span, format!("shape mismatch at `+`: {sa} + {sb} (a sum needs values of one shape)"));
        }
        let name = self.join_name("add");
        if self.push_n(Op::Add, vec![a, b], sa, name, span) {
            self.shape = Some(sa);
        }
    }

    /// `cat(…)`: values side by side along the channels. A value that is itself a `cat`
    /// gives its parts (as torchvision's DenseNet concatenates all earlier features).
    fn cat(&mut self, values: Vec<Option<(ValueId, Shape)>>, span: Span) {
        let Some(values) = values.into_iter().collect::<Option<Vec<_>>>() else {
            self.shape = None;
            return;
        };
        let mut parts = Vec::new();
        for (v, s) in values {
            match v.0.checked_sub(1).map(|k| &self.nodes[k]) {
                Some(node) if node.op == Op::Concat && matches!(node.origin, Origin::Source(_)) => {
                    parts.extend(node.inputs.iter().map(|&i| (i, self.value_shape(i))))
                }
                _ => parts.push((v, s)),
            }
        }
        if parts.len() > MAX_JOIN_INPUTS {
            return self.shape_err(span, format!("this `cat` joins {} values, over the limit of {MAX_JOIN_INPUTS}", parts.len()));
        }
        let first = parts[0].1;
        let mut channels = 0u64;
        for &(_, s) in &parts {
            let same = match (first, s) {
                (Shape::Image { h, w, .. }, Shape::Image { h: h2, w: w2, .. }) => (h, w) == (h2, w2),
                (Shape::Vector { .. }, Shape::Vector { .. }) => true,
                _ => false,
            };
            if !same {
                return self.shape_err(span, format!("cannot concatenate {first} and {s}: every size but the channels must agree"));
            }
            channels += s.chw().0;
        }
        if parts.len() == 1 {
            return self.set_cur(Some(parts[0]));
        }
        let output = match first {
            Shape::Image { h, w, .. } => Shape::Image { c: channels, h, w },
            Shape::Vector { .. } => Shape::Vector { n: channels },
        };
        let Some(output) = self.check_numel(output, span) else { return };
        let name = self.join_name("cat");
        if self.push_n(Op::Concat, parts.into_iter().map(|(v, _)| v).collect(), output, name, span) {
            self.shape = Some(output);
        }
    }

    fn value_shape(&self, v: ValueId) -> Shape {
        match v.0.checked_sub(1) {
            Some(k) => self.nodes[k].output,
            None => self.input,
        }
    }

    /// A call of a block: its body in a scope of its own (values: `in`; modules named
    /// `NAME.…` after the call's label or index), its arguments bound to its parameters.
    fn call(&mut self, layer: &Layer, block: &'a BlockDef) -> Result<(), ()> {
        let bname = block.name.value.as_str();
        if let Some(s) = layer.out_size.as_ref().or(layer.in_size.as_ref()) {
            self.err(s.span, format!("a call of block `{bname}` takes no `-> N` size"));
        }
        let env = self.arguments(layer, block);
        let name = self.name_module(layer.label.as_ref());
        if let Some(k) = self.calls.iter().position(|&c| c == bname) {
            let mut cycle: Vec<&str> = self.calls[k..].to_vec();
            cycle.push(bname);
            self.err(layer.op.span, format!("block `{bname}` calls itself: {}", cycle.join(" → ")));
            self.shape = None;
            return Ok(());
        }
        if self.calls.len() >= MAX_CALL_DEPTH {
            self.err(layer.op.span, format!("blocks call blocks more than {MAX_CALL_DEPTH} deep"));
            self.shape = None;
            return Ok(());
        }
        let Some(env) = env else {
            self.shape = None;
            return Ok(());
        };
        self.deeper(layer.op.span)?;
        self.call_id += 1;
        let scope = Scope { prefix: format!("{name}."), path_base: self.path.len(), ..Scope::default() };
        let outer_scope = std::mem::replace(&mut self.scope, scope);
        let values = HashMap::from([("in".to_string(), Binding { value: self.cur(), span: None })]);
        let outer_values = std::mem::replace(&mut self.values, values);
        let outer_names = std::mem::replace(&mut self.body_names, bound_names(&block.body));
        let outer_env = std::mem::replace(&mut self.env, env);
        self.calls.push(bname);
        let first_error = self.errors.len();
        let r = self.items(&block.body);
        self.calls.pop();
        // An error in the body says which call it came from (the innermost one).
        for d in &mut self.errors[first_error..] {
            if d.note.is_none() {
                d.note = Some(format!("in this call of block `{bname}`"));
                d.note_span = Some(layer.span);
            }
        }
        self.scope = outer_scope;
        self.values = outer_values;
        self.body_names = outer_names;
        self.env = outer_env;
        r
    }

    /// Binds a call's arguments (positional first, then `key=value`) to the block's
    /// parameters; `None` after reporting a missing, unknown or extra argument.
    fn arguments(&mut self, layer: &Layer, block: &BlockDef) -> Option<HashMap<String, Value>> {
        let bname = &block.name.value;
        let mut env: HashMap<String, Value> = HashMap::new();
        let mut ok = true;
        let mut next = 0;
        for arg in &layer.args {
            let (key, value) = match &arg.kind {
                ArgKind::Keyed { key, value } => (Some(key.value.clone()), value.clone()),
                ArgKind::Dims(d) => (None, Value::Dims(d.clone())),
                ArgKind::Number(x) => (None, Value::Number(*x)),
                ArgKind::Flag(f) => (None, Value::Ident(f.clone())),
                ArgKind::Compact { letter, .. } => {
                    self.err(arg.span, format!("`{letter}…` is not an argument of block `{bname}`: write `name=value`"));
                    ok = false;
                    continue;
                }
            };
            let param = match key {
                Some(k) => match block.params.iter().find(|p| p.name.value == k) {
                    Some(p) => p,
                    None => {
                        self.err(arg.span, format!("block `{bname}` has no parameter `{k}`"));
                        ok = false;
                        continue;
                    }
                },
                None => match block.params.get(next) {
                    Some(p) => {
                        next += 1;
                        p
                    }
                    None => {
                        self.err(arg.span, format!("block `{bname}` takes {} arguments, this is one more", block.params.len()));
                        ok = false;
                        continue;
                    }
                },
            };
            if env.insert(param.name.value.clone(), value).is_some() {
                self.err(arg.span, format!("the parameter `{}` of block `{bname}` is given twice", param.name.value));
                ok = false;
            }
        }
        for p in &block.params {
            if !env.contains_key(&p.name.value) {
                match &p.default {
                    Some(v) => {
                        env.insert(p.name.value.clone(), v.clone());
                    }
                    None => {
                        self.err(layer.op.span, format!("block `{bname}` needs its parameter `{}`", p.name.value));
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(env)
    }

    /// The layer with the current call's parameters replaced by their values: in its
    /// kind (`norm` → `batchnorm`), options (`stride=s`, a bare `k`) and `-> c`.
    fn substitute<'l>(&mut self, layer: &'l Layer) -> Cow<'l, Layer> {
        if self.env.is_empty() && layer.out_name.is_none() {
            return Cow::Borrowed(layer);
        }
        let mut l = layer.clone();
        if let Some(Value::Ident(kind)) = self.env.get(&l.op.value) {
            l.op.value = kind.clone();
        }
        for arg in &mut l.args {
            match &mut arg.kind {
                ArgKind::Flag(f) => {
                    if let Some(v) = self.env.get(f.as_str()) {
                        arg.kind = match v.clone() {
                            Value::Dims(d) => ArgKind::Dims(d),
                            Value::Number(x) => ArgKind::Number(x),
                            Value::Ident(s) => ArgKind::Flag(s),
                        };
                    }
                }
                ArgKind::Keyed { value, .. } => {
                    if let Value::Ident(name) = value {
                        if let Some(v) = self.env.get(name.as_str()) {
                            *value = v.clone();
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(n) = l.out_name.take() {
            match self.env.get(&n.value) {
                Some(Value::Dims(d)) if d.len() == 1 => l.out_size = Some(Spanned::new(d[0], n.span)),
                Some(v) => {
                    self.err(n.span, format!("`-> {}` needs an integer, but `{}` is `{}` here", n.value, n.value, v.describe()));
                    l.out_name = Some(n);
                }
                None => {
                    self.err(n.span, format!("`-> {}`: no block parameter is called `{}`", n.value, n.value));
                    l.out_name = Some(n);
                }
            }
        }
        Cow::Owned(l)
    }

    /// `{prefix}add`, `{prefix}add_1`, … (joins are not modules: they take no index).
    fn join_name(&mut self, kind: &'static str) -> String {
        let k = self.scope.joins.entry(kind).or_insert(0);
        let name = if *k == 0 { format!("{}{kind}", self.scope.prefix) } else { format!("{}{kind}_{k}", self.scope.prefix) };
        *k += 1;
        name
    }

    fn module_name(&mut self, layer: &Layer) -> String {
        self.name_module(layer.label.as_ref())
    }

    /// The next module's name: its label (with the indices of the repeats around it in
    /// this scope), or its index in the scope's `nn.Sequential`; after the scope's prefix.
    fn name_module(&mut self, label: Option<&Spanned<String>>) -> String {
        let index = self.scope.seq;
        self.scope.seq += 1;
        let prefix = self.scope.prefix.clone();
        match label {
            None => format!("{prefix}{index}"),
            Some(label) => {
                let mut name = format!("{prefix}{}", label.value);
                for k in &self.path[self.scope.path_base..] {
                    name.push_str(&format!(".{k}"));
                }
                let here = (label.span, self.call_id);
                if let Some(&first) = self.labels.get(&name) {
                    if first != here {
                        self.errors.push(
                            Diagnostic::new(label.span, format!("the layer name `{name}` is used twice"))
                                .with_note_at(first.0, "first used"),
                        );
                    }
                } else {
                    self.labels.insert(name.clone(), here);
                }
                name
            }
        }
    }

    /// A node reading the current value; it becomes the current value.
    fn push(&mut self, op: Op, output: Shape, name: String, span: Span) {
        let input = self.value;
        self.push_n(op, vec![input], output, name, span);
    }

    /// A node reading `inputs`; it becomes the current value. `false` (reported once)
    /// when the joins' inputs would pass [`MAX_JOIN_INPUTS_TOTAL`].
    fn push_n(&mut self, op: Op, inputs: Vec<ValueId>, output: Shape, name: String, span: Span) -> bool {
        if inputs.len() > 1 {
            if self.join_inputs <= MAX_JOIN_INPUTS_TOTAL && self.join_inputs + inputs.len() > MAX_JOIN_INPUTS_TOTAL {
                self.err(span, format!("the joins (`+`, `cat`) up to here have more than {MAX_JOIN_INPUTS_TOTAL} inputs in all"));
            }
            self.join_inputs += inputs.len();
            if self.join_inputs > MAX_JOIN_INPUTS_TOTAL {
                self.shape = None;
                return false;
            }
        }
        self.nodes.push(Node { op, inputs, output, name, params: None, origin: Origin::Source(span) });
        self.value = ValueId(self.nodes.len());
        true
    }

    fn no_sizes(&mut self, layer: &Layer, op: &str) {
        if let Some(s) = layer.out_size.as_ref().or(layer.in_size.as_ref()) {
            self.err(s.span, format!("{op} takes no `-> N` size"));
        }
    }

    fn layer(&mut self, layer: &Layer) {
        let key = kind_key(&layer.op.value);
        match key.as_str() {
            "conv" | "conv2d" => self.conv(layer),
            "linear" | "fc" | "dense" => self.linear(layer),
            "maxpool" | "avgpool" => self.pool(layer, if key == "maxpool" { PoolKind::Max } else { PoolKind::Avg }),
            "globalavgpool" | "gap" => self.global_pool(layer, PoolKind::Avg),
            "globalmaxpool" => self.global_pool(layer, PoolKind::Max),
            "flatten" => self.flatten(layer),
            "relu" | "identity" | "leakyrelu" | "prelu" | "tanh" | "sigmoid" | "gelu" | "silu" => self.activation(layer, &key),
            "relu6" | "hardswish" | "hardsigmoid" | "elu" | "softplus" | "mish" => self.elementwise(layer, &key),
            "batchnorm" | "batchnorm2d" | "bn" => self.batch_norm(layer),
            "dropout" => self.dropout(layer),
            "slice" => self.slice(layer),
            "shuffle" => self.shuffle(layer),
            _ => self.err(layer.op.span, format!("unknown layer `{}` (known: {KINDS}; or a block)", layer.op.value)),
        }
    }

    fn conv(&mut self, layer: &Layer) {
        let op = "conv";
        let mut o = Opts::new(op, &layer.args);
        let kernel = o.size("kernel", self);
        let stride = o.compact('s', "stride", self);
        let pad = self.padding(&mut o, op);
        let dilation = o.compact('d', "dilation", self);
        let groups = o.compact('g', "groups", self);
        let depthwise = o.flag("depthwise").or_else(|| o.flag("dw"));
        let bias = self.bias(&mut o);
        o.finish(self);
        if let (Some(dw), Some(g)) = (depthwise, &groups) {
            self.err(if dw.start > g.span.start { dw } else { g.span }, "give a conv either `depthwise` or its groups, not both");
        }

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
            // Depthwise: as many groups as input channels (0 until the input is known).
            None => Some(Spanned::new(if depthwise.is_some() { 0 } else { 1 }, depthwise.unwrap_or(layer.span))),
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
            // Depthwise: as many outputs as inputs unless written (0 until the input is known).
            None if depthwise.is_some() => Some(0),
            // `-> c` that named no integer parameter: reported already.
            None if layer.out_name.is_some() => None,
            None => {
                self.err(layer.span, "conv needs its output channels, e.g. `conv(3/p1) -> 64`");
                None
            }
        };
        let name = self.module_name(layer);
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
        let groups = if groups.value == 0 { Spanned::new(c, groups.span) } else { groups };
        let out_channels = if out_channels == 0 { c } else { out_channels };
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

    fn linear(&mut self, layer: &Layer) {
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
            None if layer.out_name.is_some() => None,
            None => {
                self.err(layer.span, "linear needs its output size, e.g. `linear -> 10`");
                None
            }
        };
        let Some(shape) = self.shape else {
            self.module_name(layer);
            return;
        };
        let n = shape.numel();
        if let Shape::Image { .. } = shape {
            // PyTorch needs an nn.Flatten here; it takes a Sequential index too.
            let index = self.name_module(None);
            self.push(Op::Flatten, Shape::Vector { n }, index, layer.span);
            if let Some(last) = self.nodes.last_mut() {
                last.origin = Origin::Implicit(Box::new(Origin::Source(layer.span)));
            }
        }
        let name = self.module_name(layer);
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

    fn activation(&mut self, layer: &Layer, key: &str) {
        let op = layer.op.value.as_str();
        let mut o = Opts::new(op, &layer.args);
        let act = match key {
            "relu" => Activation::Relu,
            "identity" => Activation::Identity,
            "leakyrelu" => {
                let slope = o.number("slope", self).map_or(0.01, |s| s.value);
                Activation::LeakyRelu { slope }
            }
            // PyTorch's nn.PReLU at initialization: one slope, 0.25 (as the ONNX importer reads it).
            "prelu" => Activation::LeakyRelu { slope: o.number("slope", self).map_or(0.25, |s| s.value) },
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "gelu" => Activation::Gelu,
            _ => Activation::Silu,
        };
        o.finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer);
        if let Some(shape) = self.shape {
            self.push(Op::Activation(act), shape, name, layer.span);
        }
    }

    fn pool(&mut self, layer: &Layer, kind: PoolKind) {
        let op = if kind == PoolKind::Max { "maxpool" } else { "avgpool" };
        let mut o = Opts::new(op, &layer.args);
        let kernel = o.size("kernel", self);
        let stride = o.compact('s', "stride", self);
        let pad = self.padding(&mut o, op);
        let ceil_mode = o.flag("ceil").is_some();
        let exclude = if kind == PoolKind::Avg { o.flag("exclude_pad") } else { None };
        o.finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer);
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

    fn global_pool(&mut self, layer: &Layer, kind: PoolKind) {
        let op = layer.op.value.as_str();
        Opts::new(op, &layer.args).finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer);
        let Some(shape) = self.shape else { return };
        let Shape::Image { c, .. } = shape else {
            return self.shape_err(layer.op.span, format!("{op} needs an image input (C,H,W), but its input is the vector {shape}"));
        };
        let output = Shape::Image { c, h: 1, w: 1 };
        self.push(Op::GlobalPool(kind), output, name, layer.span);
        self.shape = Some(output);
    }

    /// The element-wise functions the ONNX importer reads as `Expr`s (ReLU6 is its
    /// `Clip(0, 6)`), so that a spec and a torch export give the same node.
    fn elementwise(&mut self, layer: &Layer, key: &str) {
        let op = layer.op.value.as_str();
        let mut o = Opts::new(op, &layer.args);
        let f = match key {
            "relu6" => Fn1::Clip { min: 0.0, max: 6.0 },
            "hardswish" => Fn1::HardSwish,
            // PyTorch's nn.Hardsigmoid: x/6 + 1/2, clipped to [0, 1].
            "hardsigmoid" => Fn1::HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5 },
            "elu" => Fn1::Elu { alpha: o.number("alpha", self).map_or(1.0, |a| a.value) },
            "softplus" => Fn1::Softplus,
            _ => Fn1::Mish,
        };
        o.finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer);
        if let Some(shape) = self.shape {
            self.push(Op::Elementwise(Expr::Apply(f, Box::new(Expr::X))), shape, name, layer.span);
        }
    }

    /// `batchnorm` (`eps=1e-5`; `running` for the running statistics of evaluation mode,
    /// batch statistics otherwise): parameters `NAME.weight` (γ) and `NAME.bias` (β).
    fn batch_norm(&mut self, layer: &Layer) {
        let op = "batchnorm";
        let mut o = Opts::new(op, &layer.args);
        let epsilon = o.number("eps", self);
        let running = o.flag("running").is_some();
        o.finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer);
        let epsilon = match epsilon {
            Some(e) if e.value < 0.0 => {
                self.err(e.span, "the `eps` of batchnorm must not be negative");
                1e-5
            }
            Some(e) => e.value,
            None => 1e-5,
        };
        let Some(shape) = self.shape else { return };
        let Shape::Image { c, .. } = shape else {
            return self.shape_err(layer.op.span, format!("batchnorm needs an image input (C,H,W), but its input is the vector {shape}"));
        };
        let bn = ir::BatchNorm::batch(c, epsilon, !running, format!("{name}.weight"), format!("{name}.bias"));
        self.push(Op::BatchNorm(bn), shape, name, layer.span);
    }

    /// `dropout(p)`: the identity at initialization; no node, but a module index (as
    /// PyTorch's `nn.Dropout` takes one in an `nn.Sequential`).
    fn dropout(&mut self, layer: &Layer) {
        let mut o = Opts::new("dropout", &layer.args);
        if let Some(p) = o.number("p", self) {
            if !(0.0..1.0).contains(&p.value) {
                self.err(p.span, "the probability of dropout must be in [0, 1)");
            }
        }
        o.finish(self);
        self.no_sizes(layer, "dropout");
        self.module_name(layer);
    }

    /// `slice(START, END)` (or `start=`, `end=`): channels START..END of the input.
    fn slice(&mut self, layer: &Layer) {
        let op = "slice";
        let mut bounds = Vec::new();
        let mut o = Opts::new(op, &layer.args);
        for key in ["start", "end"] {
            bounds.push(o.keyed_uint(key, self));
        }
        for (arg, used) in &mut o.args {
            if let ArgKind::Dims(d) = &arg.kind {
                if d.len() == 1 && bounds.iter().filter(|b| b.is_some()).count() < 2 {
                    *used = true;
                    let slot = bounds.iter_mut().find(|b| b.is_none()).expect("a free bound");
                    *slot = Some(Spanned::new(d[0], arg.span));
                }
            }
        }
        o.finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer);
        let (Some(start), Some(end)) = (bounds[0].clone(), bounds[1].clone()) else {
            self.err(layer.span, "slice needs its channels, e.g. `slice(0, 58)` for channels 0 to 57");
            self.shape = None;
            return;
        };
        let Some(shape) = self.shape else { return };
        let Shape::Image { c, h, w } = shape else {
            return self.shape_err(layer.op.span, format!("slice needs an image input (C,H,W), but its input is the vector {shape}"));
        };
        if start.value >= end.value || end.value > c {
            return self.shape_err(
                layer.span,
                format!("slice({}, {}) must take 0 ≤ start < end ≤ {c}, the channels of its input {shape}", start.value, end.value),
            );
        }
        let output = Shape::Image { c: end.value - start.value, h, w };
        self.push(Op::ChannelSlice { start: start.value, end: end.value }, output, name, layer.span);
        self.shape = Some(output);
    }

    /// `shuffle(G)` (or `groups=G`): ShuffleNet's channel shuffle of G groups.
    fn shuffle(&mut self, layer: &Layer) {
        let op = "shuffle";
        let mut o = Opts::new(op, &layer.args);
        let groups = o.size("kernel", self).or_else(|| o.keyed_uint("groups", self).map(|g| Spanned::new(vec![g.value], g.span)));
        o.finish(self);
        self.no_sizes(layer, op);
        let name = self.module_name(layer);
        let groups = match groups {
            Some(g) if g.value.len() == 1 && g.value[0] >= 1 => Spanned::new(g.value[0], g.span),
            Some(g) => return self.shape_err(g.span, "shuffle takes one number of groups ≥ 1, e.g. `shuffle(2)`"),
            None => return self.shape_err(layer.span, "shuffle needs its number of groups, e.g. `shuffle(2)`"),
        };
        let Some(shape) = self.shape else { return };
        let Shape::Image { c, .. } = shape else {
            return self.shape_err(layer.op.span, format!("shuffle needs an image input (C,H,W), but its input is the vector {shape}"));
        };
        if c % groups.value != 0 {
            return self.shape_err(groups.span, format!("{} groups must divide the channels ({c}) of the input", groups.value));
        }
        self.push(Op::Shuffle { groups: groups.value }, shape, name, layer.span);
    }

    fn flatten(&mut self, layer: &Layer) {
        Opts::new("flatten", &layer.args).finish(self);
        self.no_sizes(layer, "flatten");
        let name = self.module_name(layer);
        let Some(shape) = self.shape else { return };
        let output = Shape::Vector { n: shape.numel() };
        self.push(Op::Flatten, output, name, layer.span);
        self.shape = Some(output);
    }
}
