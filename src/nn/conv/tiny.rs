//! Convolutions of maps of at most four pixels (F34's 2×2 layers at 64×64), forward and
//! input gradient, as one GEMM per (output pixel, input pixel) pair that a kernel tap
//! joins. im2col would multiply by all `kh·kw` taps of every output pixel, most of which
//! read padding: a 3×3 conv on a 2×2 map with padding 1 has 16 such pairs where im2col
//! computes 36 (2.25× the FLOPs).
//!
//! With P an output pixel, I an input pixel and t = tap(P, I) the kernel tap that joins
//! them (stride 1): `out_P (Co × N) = Σ_I W_t (Co × C) · X_I (C × N)` and
//! `dx_I (C × N) = Σ_P W_tᵀ (C × Co) · dout_P (Co × N)`. Every operand is a strided view
//! of the tensors themselves (copying the kernels tap by tap first, so that W_t is
//! contiguous, made a 512→512 layer's forward 1.7 → 4.3 ms); the results go to
//! per-pixel scratch matrices, spread over rayon's threads by pixel, then to
//! (N, C, H, W) order. The weight gradient stays
//! im2col's (its GEMMs over the batch would have K = N).

use super::{matmul, parallelism, Elem, Geom, Mat};
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether `g` runs here: stride and dilation 1, one group, input and output maps of at
/// most 4 pixels, and enough channels both ways for GEMMs.
pub(super) fn fits(g: &Geom) -> bool {
    g.spec.stride == [1, 1]
        && g.spec.dilation == [1, 1]
        && g.groups == 1
        && g.h * g.w <= 4
        && g.oh * g.ow <= 4
        && g.c >= MIN_CHANNELS
        && g.co >= MIN_CHANNELS
}

/// See [`fits`].
const MIN_CHANNELS: usize = 16;

/// The kernel tap (ky·kw + kx) joining output pixel `p` and input pixel `i`, if any.
fn tap(g: &Geom, p: usize, i: usize) -> Option<usize> {
    let (oy, ox, iy, ix) = (p / g.ow, p % g.ow, i / g.w, i % g.w);
    let ky = (iy + g.spec.pad[0]).checked_sub(oy).filter(|&k| k < g.kh)?;
    let kx = (ix + g.spec.pad[1]).checked_sub(ox).filter(|&k| k < g.kw)?;
    Some(ky * g.kw + kx)
}

/// For each of `count` pixels j, `Σ_k a(j, k) · b(k)` over the pairs `terms(j)` gives
/// (rows × N; zero where there is none), spread over the threads by pixel; returned in
/// (N, rows, pixels) order, each value through `finish(row, value)`.
fn per_pixel<T: Elem>(
    g: &Geom,
    count: usize,
    rows: usize,
    depth: usize,
    terms: &(dyn Fn(usize) -> Vec<(Mat<T>, Mat<T>)> + Sync),
    finish: &(dyn Fn(usize, T) -> T + Sync),
) -> Vec<T> {
    if g.n == 0 {
        return Vec::new();
    }
    let len = rows * g.n;
    let mut s = super::zeros(count * len);
    let one = |d: &mut [T], j: usize, par: Parallelism| {
        for (k, (a, b)) in terms(j).into_iter().enumerate() {
            matmul(d, k > 0, rows, g.n, depth, a, b, par);
        }
    };
    if g.threads > 1 && count >= g.threads {
        s.par_chunks_mut(len).enumerate().for_each(|(j, d)| one(d, j, Parallelism::None));
    } else {
        for (j, d) in s.chunks_mut(len).enumerate() {
            one(d, j, parallelism(g.threads));
        }
    }
    // dst[n][r][j] = finish(r, s[j][r][n]).
    let mut dst = super::zeros(g.n * rows * count);
    dst.par_chunks_mut(rows * count).enumerate().for_each(|(n, sample)| {
        for (r, px) in sample.chunks_exact_mut(count).enumerate() {
            for (j, v) in px.iter_mut().enumerate() {
                *v = finish(r, s[(j * rows + r) * g.n + n]);
            }
        }
    });
    dst
}

/// The forward pass, bias and ReLU included.
pub(super) fn forward<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, relu: bool) -> Vec<T> {
    let (hw, po, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    // W_t (Co × C): w[o][c][t]; X_I (C × N): x[n][c][I].
    let terms = |p: usize| {
        (0..hw)
            .filter_map(|i| tap(g, p, i).map(|t| (i, t)))
            .map(|(i, t)| {
                let a = Mat { ptr: w[t..].as_ptr(), rs: (g.c * taps) as isize, cs: taps as isize };
                let b = Mat { ptr: x[i..].as_ptr(), rs: hw as isize, cs: (g.c * hw) as isize };
                (a, b)
            })
            .collect()
    };
    let finish = |o: usize, u: T| {
        let u = u + b.map_or(T::default(), |b| b[o]);
        if relu {
            u.relu()
        } else {
            u
        }
    };
    per_pixel(g, po, g.co, g.c, &terms, &finish)
}

/// The input gradient from the output gradient `dout`.
pub(super) fn input_grad<T: Elem>(g: &Geom, dout: &[T], w: &[T]) -> Vec<T> {
    let (hw, po, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    // W_tᵀ (C × Co): w[o][c][t]; dout_P (Co × N): dout[n][o][P].
    let terms = |i: usize| {
        (0..po)
            .filter_map(|p| tap(g, p, i).map(|t| (p, t)))
            .map(|(p, t)| {
                let a = Mat { ptr: w[t..].as_ptr(), rs: taps as isize, cs: (g.c * taps) as isize };
                let b = Mat { ptr: dout[p..].as_ptr(), rs: po as isize, cs: (g.co * po) as isize };
                (a, b)
            })
            .collect()
    };
    per_pixel(g, hw, g.c, g.co, &terms, &|_, v| v)
}
