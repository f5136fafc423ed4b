//! Diagnostics: errors that point into a source text.
//!
//! Every front-end error is a [`Diagnostic`]: a byte span and a plain-words message.
//! [`render`] prints them the way a compiler does (`--> file:line:col`, the source line
//! and a caret), using pest's renderer so that syntax errors and semantic errors look
//! the same. Spans are plain byte offsets so that later stages can keep them without
//! borrowing the source.

use std::fmt;

/// A half-open byte range `start..end` into one source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    pub fn from_pest(span: pest::Span<'_>) -> Span {
        Span { start: span.start(), end: span.end() }
    }
}

/// One error in a source text.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    /// A secondary remark printed after the message (e.g. where a name was first defined).
    pub note: Option<String>,
    /// Where the note points, when it points somewhere (rendered as `path:line:col`).
    pub note_span: Option<Span>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { span, message: message.into(), note: None, note_span: None }
    }
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.note = Some(note.into());
        self
    }
    /// A note about another place in the same source.
    pub fn with_note_at(mut self, span: Span, note: impl Into<String>) -> Diagnostic {
        self.note = Some(note.into());
        self.note_span = Some(span);
        self
    }
}

/// Line and column (both 1-based, columns in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..floor_char_boundary(src, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(src: &str, mut offset: usize) -> usize {
    while offset > 0 && !src.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Renders one diagnostic like a compiler error:
///
/// ```text
/// error: unknown layer `convv`
///  --> net.cnn:4:1
///   |
/// 4 | convv(3) -> 8
///   | ^^^^^
/// ```
pub fn render(src: &str, path: &str, diag: &Diagnostic) -> String {
    let start = floor_char_boundary(src, diag.span.start.min(src.len()));
    let end = floor_char_boundary(src, diag.span.end.min(src.len())).max(start);
    let (line, col) = line_col(src, start);
    let line_start = src[..start].rfind('\n').map_or(0, |k| k + 1);
    let line_end = src[start..].find('\n').map_or(src.len(), |k| start + k);
    let text = src[line_start..line_end].trim_end_matches('\r');
    // Underline to the end of the span or of the line, whichever comes first; at least one caret.
    let width = src[start..end.min(line_end).max(start)].chars().count().max(1);
    let number = line.to_string();
    let gutter = " ".repeat(number.len());
    let indent: String = text.chars().take(col - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    let mut out = format!(
        "error: {}\n{gutter}--> {path}:{line}:{col}\n{gutter} |\n{number} | {text}\n{gutter} | {indent}{}",
        diag.message,
        "^".repeat(width)
    );
    if let Some(note) = &diag.note {
        match diag.note_span {
            Some(at) => {
                let (l, c) = line_col(src, at.start);
                out.push_str(&format!("\n{gutter} = note: {note} at {path}:{l}:{c}"));
            }
            None => out.push_str(&format!("\n{gutter} = note: {note}")),
        }
    }
    out
}

/// All the diagnostics of one source, rendered together.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub path: String,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

/// Diagnostics rendered at most (each renders its source line): the count of the rest
/// follows them.
pub const MAX_SHOWN: usize = 50;

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, d) in self.items.iter().take(MAX_SHOWN).enumerate() {
            if k > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{}", render(&self.source, &self.path, d))?;
        }
        if self.items.len() > MAX_SHOWN {
            write!(f, "\n… and {} more errors not shown", self.items.len() - MAX_SHOWN)?;
        }
        if self.items.len() > 1 {
            write!(f, "\nerror: {} errors in {}", self.items.len(), self.path)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
