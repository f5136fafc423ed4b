//! Names as a model file writes them: checked once before import (each value defined
//! once), and made printable before they reach a message or a dump.

use super::proto::GraphProto;
use super::OnnxError;
use std::borrow::Cow;
use std::collections::HashMap;

/// `s` with its control characters (terminal escape sequences, newlines, NUL…) written
/// as escapes (`\u{1b}`, `\n`), every other character as it is.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect())
}

/// Every value has one definition: a graph input, an initializer, or the output of one
/// node. A node output named like a graph input or an initializer (which would shadow
/// it, or be shadowed), or like another node's output, is an error naming both.
/// (An initializer may share a graph input's name: it is that input's default value.)
pub(super) fn check_names(graph: &GraphProto, node_name: impl Fn(usize) -> String) -> Result<(), OnnxError> {
    let mut defined: HashMap<&str, String> = HashMap::new();
    for t in &graph.initializer {
        if defined.insert(t.name(), format!("the initializer `{}`", printable(t.name()))).is_some() {
            return Err(OnnxError::Model(format!("two initializers are named `{}`", printable(t.name()))));
        }
    }
    for vi in &graph.input {
        defined.entry(vi.name()).or_insert_with(|| format!("the graph input `{}`", printable(vi.name())));
    }
    for (k, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            let this = format!("node `{}` ({})", node_name(k), printable(n.op_type()));
            if let Some(first) = defined.get(o.as_str()) {
                return Err(OnnxError::Model(format!("{this} redefines the value `{}`, which is {first}", printable(o))));
            }
            defined.insert(o.as_str(), format!("the output of {this}"));
        }
    }
    Ok(())
}

/// Each weight tensor belongs to one layer: a plan gives every weight one σ, and `init`
/// draws each tensor once, so a weight initializer read by two weight layers (tied
/// weights) is an error naming both, rather than two plan entries with different σ of
/// which the last would win.
pub(super) fn check_shared_weights(nodes: &[crate::ir::Node]) -> Result<(), OnnxError> {
    let mut owner: HashMap<&str, &crate::ir::Node> = HashMap::new();
    for n in nodes {
        let Some(p) = &n.params else { continue };
        if let Some(first) = owner.insert(p.weight.as_str(), n) {
            return Err(OnnxError::Model(format!(
                "the weight `{}` is read by node `{}` ({}) and node `{}` ({}): cnnc plans one σ per weight tensor, \
                 and does not support weights shared by several layers",
                printable(&p.weight),
                first.name,
                first.op.kind_name(),
                n.name,
                n.op.kind_name()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("conv1"), "conv1");
        assert_eq!(printable("σ/β"), "σ/β");
        assert_eq!(printable("a\u{1b}[2Jb\n\0"), "a\\u{1b}[2Jb\\n\\u{0}");
    }
}
