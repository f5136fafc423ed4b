//! Bounds on the importer's own work, fixed before the work is done, so that a small
//! file cannot make it run without end or exhaust memory.

use crate::ir::Expr;

/// Operations one element-wise function may hold (GELU written out has 6; hard-swish,
/// Mish and friends fewer than 20). Each analysis evaluates it at every quadrature point.
pub const MAX_EXPR_OPS: usize = 1_000;

/// Operations in all the element-wise functions an import builds, together: each step
/// of a chain is kept as its own value (another node may read it), so a chain of n
/// steps holds n²/2 operations; this keeps that below about 200 MB.
pub const MAX_TOTAL_EXPR_OPS: usize = 4_000_000;

/// The number of operations in `e` (an `Apply`, `Add`, … or leaf each count one),
/// counting no further than `limit + 1`.
pub fn expr_ops(e: &Expr, limit: usize) -> usize {
    let mut count = 0;
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        count += 1;
        if count > limit {
            break;
        }
        match e {
            Expr::X | Expr::Const(_) => {}
            Expr::Apply(_, a) => stack.push(a),
            Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) => {
                stack.push(a);
                stack.push(b);
            }
        }
    }
    count
}

/// Checks a new element-wise function against [`MAX_EXPR_OPS`] and, with `made` the
/// operations made before it, against [`MAX_TOTAL_EXPR_OPS`]; returns the new total.
/// A function whose steps reuse their input (`y = Mul(y, y)` repeated) doubles per step
/// and meets the first limit within a few steps.
pub fn check_expr(e: &Expr, made: usize) -> Result<usize, String> {
    let ops = expr_ops(e, MAX_EXPR_OPS);
    if ops > MAX_EXPR_OPS {
        return Err(format!(
            "the element-wise function ending here has more than {MAX_EXPR_OPS} operations: cnnc keeps element-wise chains up to that size"
        ));
    }
    let total = made + ops;
    if total > MAX_TOTAL_EXPR_OPS {
        return Err(format!(
            "the element-wise chains of this graph hold more than {MAX_TOTAL_EXPR_OPS} operations together (each step keeps its own copy): \
             cnnc plans chains of at most a few hundred steps"
        ));
    }
    Ok(total)
}

/// Bytes of weights `export-onnx` and `init` may draw for one model (4 GiB: a model with
/// more is not a convolutional network cnnc plans; the file is written past protobuf's
/// 2 GiB limit with external data). Checked before anything is allocated.
pub const MAX_DRAWN_BYTES: u64 = 1 << 32;

/// The bytes the plan's weights and biases take, `element_bytes(name)` each element of
/// the tensor `name`; an error when they exceed [`MAX_DRAWN_BYTES`] (or u64).
pub fn check_drawn_bytes(plan: &crate::plan::Plan, element_bytes: impl Fn(&str) -> u64) -> Result<u64, super::OnnxError> {
    let tensors = plan
        .layers
        .iter()
        .flat_map(|l| std::iter::once((&l.weight.name, &l.weight.shape)).chain(l.bias.as_ref().map(|b| (&b.name, &b.shape))));
    let mut total: u64 = 0;
    for (name, shape) in tensors {
        let bytes = shape.iter().try_fold(element_bytes(name), |a, &d| a.checked_mul(d)).and_then(|b| total.checked_add(b));
        match bytes {
            Some(t) if t <= MAX_DRAWN_BYTES => total = t,
            _ => {
                return Err(super::OnnxError::Model(format!(
                    "the weights up to `{}` {shape:?} take more than {MAX_DRAWN_BYTES} bytes (4 GiB), more than cnnc draws for one model",
                    super::names::printable(name)
                )))
            }
        }
    }
    Ok(total)
}
