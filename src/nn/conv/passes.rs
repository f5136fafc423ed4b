//! The three passes of a conv over the batch's blocks: forward, input gradient and
//! parameter gradient (with the Winograd and tiny-map variants they hand over to).

use super::*;

/// Forward of one block into `out` (the block's samples of the output, N×Co×P layout).
pub(super) fn forward_block<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, out: &mut [T], blk: &mut Block<T>, par: Parallelism) {
    let (k, p, cog, nc) = (g.k(), g.p(), g.cog(), blk.nc(g));
    for grp in 0..g.groups {
        let wg = &w[grp * cog * k..][..cog * k];
        let bg = b.map(|b| &b[grp * cog..][..cog]);
        if blk.len == 1 {
            // One sample: the GEMM writes the output in place.
            let dst = &mut out[grp * cog * p..][..cog * p];
            if let Some(bg) = bg {
                for (row, &bv) in dst.chunks_exact_mut(p).zip(bg) {
                    row.fill(bv);
                }
            }
            if g.direct() {
                let xs = &x[blk.start * g.in_sample() + grp * k * p..][..k * p];
                matmul(dst, bg.is_some(), cog, p, k, Mat::rows(wg, k), Mat::rows(xs, p), par);
            } else {
                blk.gather_cols(g, x, grp);
                matmul(dst, bg.is_some(), cog, p, k, Mat::rows(wg, k), Mat::rows(&blk.cols, p), par);
            }
            continue;
        }
        blk.gather_cols(g, x, grp);
        grow(&mut blk.out, cog * nc);
        if let Some(bg) = bg {
            for (row, &bv) in blk.out[..cog * nc].chunks_exact_mut(nc).zip(bg) {
                row.fill(bv);
            }
        }
        matmul(&mut blk.out, bg.is_some(), cog, nc, k, Mat::rows(wg, k), Mat::rows(&blk.cols, nc), par);
        for j in 0..blk.len {
            let dst = &mut out[j * g.out_sample() + grp * cog * p..][..cog * p];
            for (co, row) in dst.chunks_exact_mut(p).enumerate() {
                row.copy_from_slice(&blk.out[co * nc + j * p..][..p]);
            }
        }
    }
}

/// Runs `f(block, the block's part of dst)` over the batch's blocks: in parallel over
/// rayon's threads (single-threaded GEMMs) when there are enough blocks, else in turn
/// with multi-threaded GEMMs.
pub(super) fn over_blocks<T: Elem>(g: &Geom, dst: &mut [T], per_sample: usize, f: impl Fn(&mut Block<T>, &mut [T], Parallelism) + Sync) {
    let t = g.threads;
    let bs = g.block();
    let chunk = bs * per_sample;
    if t > 1 && g.n.div_ceil(bs) >= t {
        dst.par_chunks_mut(chunk).enumerate().for_each_init(Block::new, |blk, (i, d)| f(blk.at(g, i * bs), d, Parallelism::None));
    } else {
        let mut blk = Block::new();
        for (i, d) in dst.chunks_mut(chunk).enumerate() {
            f(blk.at(g, i * bs), d, parallelism(t));
        }
    }
}

pub(super) fn forward<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, relu: bool, keep: Option<&Kept>) -> Vec<T> {
    if winograd4::fits(g) {
        return winograd4::forward(g, x, w, b, relu);
    }
    if winograd::fits(g) {
        return winograd::forward(g, x, w, b, relu, keep);
    }
    if tiny::fits(g) {
        return tiny::forward(g, x, w, b, relu, keep);
    }
    let mut out = zeros(g.n * g.out_sample());
    over_blocks(g, &mut out, g.out_sample(), |blk, o, par| {
        forward_block(g, x, w, b, o, blk, par);
        if relu {
            // While the block's output is still in cache.
            for v in o.iter_mut() {
                *v = v.relu();
            }
        }
    });
    out
}

/// Input gradient of one block's samples (`dx`, N×C×H×W layout) from the output gradient.
pub(super) fn input_grad_block<T: Elem>(g: &Geom, dout: &[T], w: &[T], dx: &mut [T], blk: &mut Block<T>, par: Parallelism) {
    let (k, p, cog, nc) = (g.k(), g.p(), g.cog(), blk.nc(g));
    for grp in 0..g.groups {
        let wg = &w[grp * cog * k..][..cog * k];
        if blk.len == 1 {
            let dg = &dout[blk.start * g.out_sample() + grp * cog * p..][..cog * p];
            if g.direct() {
                let dst = &mut dx[grp * k * p..][..k * p];
                matmul(dst, false, k, p, cog, Mat::transposed(wg, k), Mat::rows(dg, p), par);
            } else {
                grow(&mut blk.cols, k * p);
                matmul(&mut blk.cols, false, k, p, cog, Mat::transposed(wg, k), Mat::rows(dg, p), par);
                g.col2im(&blk.cols, grp, dx, p);
            }
            continue;
        }
        blk.gather_out(g, dout, grp);
        grow(&mut blk.cols, k * nc);
        matmul(&mut blk.cols, false, k, nc, cog, Mat::transposed(wg, k), Mat::rows(&blk.out, nc), par);
        for j in 0..blk.len {
            g.col2im(&blk.cols[j * p..], grp, &mut dx[j * g.in_sample()..][..g.in_sample()], nc);
        }
    }
}

pub(super) fn input_grad<T: Elem>(g: &Geom, dout: &[T], w: &[T], kept: Option<&Kept>) -> Vec<T> {
    if winograd4::fits(g) {
        // Nothing is kept for it; what an earlier forward by another path left goes.
        drop(kept.and_then(Kept::take::<T>));
        return winograd4::input_grad(g, dout, w);
    }
    if winograd::fits(g) {
        return winograd::input_grad(g, dout, w, kept);
    }
    if tiny::fits(g) {
        return tiny::input_grad(g, dout, w, kept);
    }
    let mut dx = zeros(g.n * g.in_sample());
    over_blocks(g, &mut dx, g.in_sample(), |blk, d, par| input_grad_block(g, dout, w, d, blk, par));
    dx
}

/// Adds one block's weight and bias gradients into `acc` = [dW (Co × K), db (Co)].
pub(super) fn param_grad_block<T: Elem>(
    g: &Geom,
    x: &[T],
    dout: &[T],
    acc: &mut [T],
    accumulate: bool,
    blk: &mut Block<T>,
    par: Parallelism,
) {
    let (k, p, cog, nc) = (g.k(), g.p(), g.cog(), blk.nc(g));
    let (dw, db) = acc.split_at_mut(g.co * k);
    for grp in 0..g.groups {
        let dst = &mut dw[grp * cog * k..][..cog * k];
        if blk.len == 1 {
            let dg = &dout[blk.start * g.out_sample() + grp * cog * p..][..cog * p];
            if g.direct() {
                let xs = &x[blk.start * g.in_sample() + grp * k * p..][..k * p];
                matmul(dst, accumulate, cog, k, p, Mat::rows(dg, p), Mat::transposed(xs, p), par);
            } else {
                let ld = winograd::skew(p);
                blk.gather_cols_ld(g, x, grp, ld);
                matmul(dst, accumulate, cog, k, p, Mat::rows(dg, p), Mat::transposed(&blk.cols, ld), par);
            }
        } else {
            blk.gather_out(g, dout, grp);
            let ld = winograd::skew(nc);
            blk.gather_cols_ld(g, x, grp, ld);
            matmul(dst, accumulate, cog, k, nc, Mat::rows(&blk.out, nc), Mat::transposed(&blk.cols, ld), par);
        }
    }
    let samples = &dout[blk.start * g.out_sample()..][..blk.len * g.out_sample()];
    for (o, d) in db.iter_mut().enumerate() {
        let s = samples.chunks_exact(g.out_sample()).fold(T::default(), |s, sample| s + sum(&sample[o * p..][..p]));
        *d = if accumulate { *d + s } else { s };
    }
}

/// A sum in eight interleaved partial sums (vectorizable).
pub(super) fn sum<T: Elem>(v: &[T]) -> T {
    let mut acc = [T::default(); 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut s = chunks.remainder().iter().fold(T::default(), |s, &x| s + x);
    for a in acc {
        s += a;
    }
    s
}

pub(super) fn param_grad<T: Elem>(g: &Geom, x: &[T], dout: &[T]) -> Vec<T> {
    if winograd4::fits(g) {
        return winograd4::param_grad(g, x, dout);
    }
    if winograd::fits(g) {
        return winograd::param_grad(g, x, dout);
    }
    let len = g.co * g.k() + g.co;
    let t = g.threads;
    let bs = g.block();
    let blocks = g.n.div_ceil(bs);
    if t > 1 && blocks >= t {
        // One accumulator per job (a fixed split of the blocks), summed in job order.
        let per = blocks.div_ceil(t);
        // Pooled (not zeroed: each job's first block writes over it).
        let parts: Vec<Pooled<T>> = (0..blocks.div_ceil(per))
            .into_par_iter()
            .map(|j| {
                let mut acc = Pooled::take(len);
                let mut blk = Block::new();
                for i in j * per..((j + 1) * per).min(blocks) {
                    param_grad_block(g, x, dout, &mut acc, i > j * per, blk.at(g, i * bs), Parallelism::None);
                }
                acc
            })
            .collect();
        // Summed in job order, in parallel (9.4 MiB for a 512-channel 3×3 layer).
        let (first, rest) = parts.split_first().expect("two blocks or more");
        let mut acc: Vec<T> = first.par_iter().with_min_len(CHUNK).copied().collect();
        acc.par_chunks_mut(CHUNK).enumerate().for_each(|(i, a)| {
            for part in rest {
                for (a, &b) in a.iter_mut().zip(&part[i * CHUNK..]) {
                    *a += b;
                }
            }
        });
        acc
    } else {
        let mut acc = vec![T::default(); len];
        let mut blk = Block::new();
        for i in 0..blocks {
            param_grad_block(g, x, dout, &mut acc, i > 0, blk.at(g, i * bs), parallelism(t));
        }
        acc
    }
}
