//! Parsing: `.cnn` text → [`File`], an AST that keeps every span.
//!
//! In: the source text. Out: the AST, or every syntax error found (pest stops at the
//! first one; number-range errors are all collected). The AST says nothing about which
//! layers exist or what their options mean: that is lowering's job (`crate::lower`),
//! which then reports unknown names with their spans.

use crate::diag::{Diagnostic, Span};
use pest::iterators::Pair;
use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/cnnc.pest"]
struct CnnParser;

/// A value with the span it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Spanned<T> {
        Spanned { value, span }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub name: Spanned<String>,
    pub input: Spanned<Vec<u64>>,
    /// `block NAME(…) { … }` definitions, in source order (callable from anywhere).
    pub blocks: Vec<BlockDef>,
    pub items: Vec<Item>,
}

/// `block NAME(PARAM, PARAM=DEFAULT, …) { … }`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Spanned<String>,
    pub params: Vec<Param>,
    pub body: Vec<Item>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Spanned<String>,
    pub default: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `repeat N { … }`
    Repeat { count: Spanned<u64>, body: Vec<Item>, span: Span },
    /// `step, step, … × N` (a chain of one layer is the common case).
    Chain(Chain),
    /// `NAME = chain`
    Bind { name: Spanned<String>, chain: Chain, span: Span },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub steps: Vec<Step>,
    pub times: Option<Spanned<u64>>,
    pub span: Span,
}

/// One step of a chain.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A layer, or a call of a block (decided by lowering).
    Layer(Layer),
    /// `@x`: the chain goes on from the value `x`.
    Ref(Spanned<String>),
    /// `+ term`: the current value plus the term's.
    Add { term: Term, span: Span },
    /// `cat(term, …)`: the terms side by side along the channels.
    Cat { terms: Vec<Term>, span: Span },
    /// `label: { … }` (or `{ … }`): a nested naming scope, like an `nn.Sequential`.
    Group { label: Option<Spanned<String>>, items: Vec<Item>, span: Span },
}

/// An operand of a join.
#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    /// `@x`
    Ref(Spanned<String>),
    /// `(chain)`: starts from the current value (or from the `@x` it begins with).
    Branch(Chain),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub label: Option<Spanned<String>>,
    pub op: Spanned<String>,
    pub args: Vec<Arg>,
    /// Written input size (`conv(3) 64 -> 128`, `linear 512 -> 10`).
    pub in_size: Option<Spanned<u64>>,
    /// Written output size (`-> 128`).
    pub out_size: Option<Spanned<u64>>,
    /// Output size written as a block parameter's name (`-> c`), replaced by its value
    /// when the block is called.
    pub out_name: Option<Spanned<String>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub kind: ArgKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ArgKind {
    /// `key=value`
    Keyed { key: Spanned<String>, value: Value },
    /// `s2`, `p1x2`: a letter and sizes.
    Compact { letter: char, dims: Vec<u64> },
    /// `3` or `3x5` (an integer alone is a one-element size).
    Dims(Vec<u64>),
    /// `0.1`, `-2.5e-3`
    Number(f64),
    /// `nobias`, `ceil`
    Flag(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Dims(Vec<u64>),
    Number(f64),
    Ident(String),
}

impl Value {
    pub fn describe(&self) -> String {
        match self {
            Value::Dims(d) => d.iter().map(u64::to_string).collect::<Vec<_>>().join("x"),
            Value::Number(x) => x.to_string(),
            Value::Ident(s) => s.clone(),
        }
    }
}

/// Parses a whole `.cnn` source. Errors carry byte spans into `src`.
pub fn parse(src: &str) -> Result<File, Vec<Diagnostic>> {
    check_nesting(src)?;
    let mut pairs = CnnParser::parse(Rule::file, src).map_err(|e| vec![syntax_error(e)])?;
    let file = pairs.next().expect("the file rule always yields one pair");
    let mut b = Builder { errors: Vec::new() };
    let out = b.file(file);
    if b.errors.is_empty() {
        Ok(out)
    } else {
        Err(b.errors)
    }
}

/// Braces, or parentheses, nested deeper than this are an error (the parser, the AST and
/// the lowering recurse once per level).
pub const MAX_NESTING: usize = 64;

/// Refuses `{ … }` blocks and parentheses nested past [`MAX_NESTING`] before the
/// (recursive) parser sees them; comments run to the end of their line.
fn check_nesting(src: &str) -> Result<(), Vec<Diagnostic>> {
    let (mut braces, mut parens) = (0usize, 0usize);
    let mut in_comment = false;
    let mut prev = '\0';
    for (at, c) in src.char_indices() {
        match c {
            '\n' => in_comment = false,
            _ if in_comment => {}
            '#' => in_comment = true,
            '/' if prev == '/' => in_comment = true,
            '{' | '(' => {
                let (depth, what) = if c == '{' { (&mut braces, "blocks `{ … }`") } else { (&mut parens, "parentheses") };
                *depth += 1;
                if *depth > MAX_NESTING {
                    let message = format!("{what} are nested more than {MAX_NESTING} deep");
                    return Err(vec![Diagnostic::new(Span::new(at, at + 1), message)]);
                }
            }
            '}' => braces = braces.saturating_sub(1),
            ')' => parens = parens.saturating_sub(1),
            _ => {}
        }
        prev = if in_comment { '\0' } else { c };
    }
    Ok(())
}

fn syntax_error(e: pest::error::Error<Rule>) -> Diagnostic {
    let span = match e.location {
        pest::error::InputLocation::Pos(p) => Span::new(p, p),
        pest::error::InputLocation::Span((a, b)) => Span::new(a, b),
    };
    let message = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, negatives } => {
            let mut pos: Vec<String> = positives.iter().map(|r| rule_name(*r).to_string()).collect();
            pos.sort();
            pos.dedup();
            let neg: Vec<String> = negatives.iter().map(|r| rule_name(*r).to_string()).collect();
            match (pos.is_empty(), neg.is_empty()) {
                (false, _) => format!("syntax error: expected {}", join_or(&pos)),
                (true, false) => format!("syntax error: unexpected {}", join_or(&neg)),
                (true, true) => "syntax error".to_string(),
            }
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    Diagnostic::new(span, message)
}

fn join_or(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} or {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

fn rule_name(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::file => "a network description",
        Rule::network_decl => "`network NAME`",
        Rule::input_decl => "`input CxHxW`",
        Rule::repeat => "`repeat N { … }`",
        Rule::close_brace => "`}`",
        Rule::item | Rule::chain | Rule::layer | Rule::step => "a layer",
        Rule::block_def => "`block NAME(…) { … }`",
        Rule::params | Rule::param => "a block parameter",
        Rule::binding => "`NAME = …`",
        Rule::add => "`+ @value` or `+ (…)`",
        Rule::cat => "`cat(…)`",
        Rule::term => "`@value` or `(…)`",
        Rule::branch => "`(…)`",
        Rule::value_ref => "`@value`",
        Rule::group => "`{ … }`",
        Rule::size_name => "an integer",
        Rule::bind_name => "`NAME = …`",
        Rule::times => "`× N`",
        Rule::sizes | Rule::in_size => "`-> N`",
        Rule::label => "a layer name",
        Rule::op_name => "a layer kind",
        Rule::args | Rule::arg => "an option",
        Rule::keyed => "`key=value`",
        Rule::value => "a value",
        Rule::compact => "an option like `s2`",
        Rule::flag => "a flag",
        Rule::dims => "a size like `3` or `3x3`",
        Rule::paren_dims => "a shape like `(3, 224, 224)`",
        Rule::number => "a number",
        Rule::uint => "an integer",
        Rule::ident => "a name",
        Rule::WHITESPACE | Rule::COMMENT => "whitespace",
    }
}

fn value_ref(pair: Pair<'_, Rule>) -> Spanned<String> {
    let id = pair.into_inner().next().expect("a value reference has a name");
    Spanned::new(id.as_str().to_string(), Span::from_pest(id.as_span()))
}

struct Builder {
    errors: Vec<Diagnostic>,
}

impl Builder {
    fn file(&mut self, pair: Pair<'_, Rule>) -> File {
        let mut name = None;
        let mut input = None;
        let mut items = Vec::new();
        let mut blocks = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::network_decl => {
                    let id = p.into_inner().next().expect("network_decl has a name");
                    name = Some(Spanned::new(id.as_str().to_string(), Span::from_pest(id.as_span())));
                }
                Rule::input_decl => {
                    let span = Span::from_pest(p.as_span());
                    let d = p.into_inner().next().expect("input_decl has dims");
                    input = Some(Spanned::new(self.dims(d), span));
                }
                Rule::block_def => blocks.push(self.block_def(p)),
                Rule::repeat | Rule::chain | Rule::binding => items.push(self.item(p)),
                Rule::EOI => {}
                r => unreachable!("unexpected rule {r:?} in file"),
            }
        }
        File {
            name: name.expect("grammar requires a network declaration"),
            input: input.expect("grammar requires an input declaration"),
            blocks,
            items,
        }
    }

    fn block_def(&mut self, pair: Pair<'_, Rule>) -> BlockDef {
        let span = Span::from_pest(pair.as_span());
        let mut inner = pair.into_inner();
        let id = inner.next().expect("block has a name");
        let name = Spanned::new(id.as_str().to_string(), Span::from_pest(id.as_span()));
        let mut params = Vec::new();
        let mut body = Vec::new();
        for p in inner {
            match p.as_rule() {
                Rule::params => {
                    for q in p.into_inner() {
                        let mut it = q.into_inner();
                        let id = it.next().expect("param has a name");
                        let name = Spanned::new(id.as_str().to_string(), Span::from_pest(id.as_span()));
                        let default = it.next().map(|v| self.value(v));
                        params.push(Param { name, default });
                    }
                }
                Rule::close_brace => {}
                _ => body.push(self.item(p)),
            }
        }
        BlockDef { name, params, body, span }
    }

    fn chain(&mut self, pair: Pair<'_, Rule>) -> Chain {
        let span = Span::from_pest(pair.as_span());
        let mut steps = Vec::new();
        let mut times = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::times => {
                    let n = p.into_inner().next().expect("times has a count");
                    times = Some(self.uint_spanned(n));
                }
                _ => steps.push(self.step(p)),
            }
        }
        Chain { steps, times, span }
    }

    fn step(&mut self, pair: Pair<'_, Rule>) -> Step {
        let span = Span::from_pest(pair.as_span());
        match pair.as_rule() {
            Rule::layer => Step::Layer(self.layer(pair)),
            Rule::value_ref => Step::Ref(value_ref(pair)),
            Rule::add => {
                let term = self.term(pair.into_inner().next().expect("add has a term"));
                Step::Add { term, span }
            }
            Rule::cat => Step::Cat { terms: pair.into_inner().map(|t| self.term(t)).collect(), span },
            Rule::group => {
                let mut label = None;
                let mut items = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::label => label = Some(Spanned::new(p.as_str().to_string(), Span::from_pest(p.as_span()))),
                        Rule::close_brace => {}
                        _ => items.push(self.item(p)),
                    }
                }
                Step::Group { label, items, span }
            }
            r => unreachable!("unexpected rule {r:?} as a step"),
        }
    }

    fn term(&mut self, pair: Pair<'_, Rule>) -> Term {
        match pair.as_rule() {
            Rule::value_ref => Term::Ref(value_ref(pair)),
            Rule::branch => Term::Branch(self.chain(pair.into_inner().next().expect("branch has a chain"))),
            r => unreachable!("unexpected rule {r:?} as a term"),
        }
    }

    fn item(&mut self, pair: Pair<'_, Rule>) -> Item {
        let span = Span::from_pest(pair.as_span());
        match pair.as_rule() {
            Rule::repeat => {
                let mut inner = pair.into_inner();
                let count = self.uint_spanned(inner.next().expect("repeat has a count"));
                let body = inner.filter(|p| p.as_rule() != Rule::close_brace).map(|p| self.item(p)).collect();
                Item::Repeat { count, body, span }
            }
            Rule::chain => Item::Chain(self.chain(pair)),
            Rule::binding => {
                let mut inner = pair.into_inner();
                let id = inner.next().expect("binding has a name");
                let name = Spanned::new(id.as_str().to_string(), Span::from_pest(id.as_span()));
                let chain = self.chain(inner.next().expect("binding has a chain"));
                Item::Bind { name, chain, span }
            }
            r => unreachable!("unexpected rule {r:?} as item"),
        }
    }

    fn layer(&mut self, pair: Pair<'_, Rule>) -> Layer {
        let span = Span::from_pest(pair.as_span());
        let mut label = None;
        let mut op = None;
        let mut args = Vec::new();
        let mut in_size = None;
        let mut out_size = None;
        let mut out_name = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::label => label = Some(Spanned::new(p.as_str().to_string(), Span::from_pest(p.as_span()))),
                Rule::op_name => op = Some(Spanned::new(p.as_str().to_string(), Span::from_pest(p.as_span()))),
                Rule::args => args = p.into_inner().map(|a| self.arg(a)).collect(),
                Rule::sizes => {
                    for n in p.into_inner() {
                        match n.as_rule() {
                            Rule::in_size => in_size = Some(self.uint_spanned(n)),
                            Rule::size_name => out_name = Some(Spanned::new(n.as_str().to_string(), Span::from_pest(n.as_span()))),
                            _ => out_size = Some(self.uint_spanned(n)),
                        }
                    }
                }
                r => unreachable!("unexpected rule {r:?} in layer"),
            }
        }
        Layer { label, op: op.expect("layer has an op name"), args, in_size, out_size, out_name, span }
    }

    fn arg(&mut self, pair: Pair<'_, Rule>) -> Arg {
        let span = Span::from_pest(pair.as_span());
        let inner = pair.into_inner().next().expect("arg has one alternative");
        let kind = match inner.as_rule() {
            Rule::keyed => {
                let mut it = inner.into_inner();
                let k = it.next().expect("keyed has a key");
                let key = Spanned::new(k.as_str().to_string(), Span::from_pest(k.as_span()));
                let value = self.value(it.next().expect("keyed has a value"));
                ArgKind::Keyed { key, value }
            }
            Rule::compact => {
                let letter = inner.as_str().chars().next().expect("compact starts with a letter");
                let d = inner.into_inner().next().expect("compact has dims");
                ArgKind::Compact { letter, dims: self.dims(d) }
            }
            Rule::dims => ArgKind::Dims(self.dims(inner)),
            Rule::number => ArgKind::Number(self.number(inner)),
            Rule::flag => ArgKind::Flag(inner.as_str().to_string()),
            r => unreachable!("unexpected rule {r:?} in arg"),
        };
        Arg { kind, span }
    }

    fn value(&mut self, pair: Pair<'_, Rule>) -> Value {
        let v = pair.into_inner().next().expect("value has one alternative");
        match v.as_rule() {
            Rule::dims => Value::Dims(self.dims(v)),
            Rule::number => Value::Number(self.number(v)),
            Rule::ident => Value::Ident(v.as_str().to_string()),
            r => unreachable!("unexpected rule {r:?} in value"),
        }
    }

    fn dims(&mut self, pair: Pair<'_, Rule>) -> Vec<u64> {
        pair.into_inner().map(|p| self.uint(p)).collect()
    }

    fn uint_spanned(&mut self, pair: Pair<'_, Rule>) -> Spanned<u64> {
        let span = Span::from_pest(pair.as_span());
        Spanned::new(self.uint(pair), span)
    }

    fn uint(&mut self, pair: Pair<'_, Rule>) -> u64 {
        match pair.as_str().parse::<u64>() {
            Ok(v) => v,
            Err(_) => {
                self.errors.push(Diagnostic::new(
                    Span::from_pest(pair.as_span()),
                    format!("integer `{}` is too large (the limit is {})", pair.as_str(), u64::MAX),
                ));
                0
            }
        }
    }

    fn number(&mut self, pair: Pair<'_, Rule>) -> f64 {
        match pair.as_str().parse::<f64>() {
            Ok(v) if v.is_finite() => v,
            _ => {
                self.errors
                    .push(Diagnostic::new(Span::from_pest(pair.as_span()), format!("number `{}` is not a finite number", pair.as_str())));
                0.0
            }
        }
    }
}
