//! Convolutions of maps of at most four pixels (F34's 2×2 layers at 64×64), forward and
//! input gradient, as one GEMM per (output pixel, input pixel) pair that a kernel tap
//! joins. im2col would multiply by all `kh·kw` taps of every output pixel, most of which
//! read padding: a 3×3 conv on a 2×2 map with padding 1 has 16 such pairs where im2col
//! computes 36 (2.25× the FLOPs).
//!
//! With P an output pixel, I an input pixel and t = tap(P, I) the kernel tap that joins
//! them (stride 1): `out_P (Co × N) = Σ_I W_t (Co × C) · X_I (C × N)` and
//! `dx_Iᵀ (N × C) = Σ_P dout_Pᵀ (N × Co) · W_t (Co × C)`. The kernels are copied tap by
//! tap first (`W_t` contiguous, [`by_tap`]), once a training step: the forward keeps the
//! copy for the input gradient ([`Kept`]). GEMMs reading `W_t` in place, every tap's
//! values 9 floats apart, touch every cache line of all the kernels for each of the 16
//! pairs (a 512→512 layer's 9.4 MB sixteen times): on a full-width AVX-512 Xeon the
//! forward's GEMMs took 5.2–5.6 ms that way, against 0.74 ms for the copy and 1.35 ms
//! for the GEMMs after it; the input gradient's 7.6–8.8 against 1.3 ms. The activations
//! and gradients stay strided views. The results go to per-pixel scratch matrices,
//! spread over rayon's threads by pixel, then to (N, C, H, W) order. The weight gradient
//! stays im2col's (its GEMMs over the batch would have K = N).

use super::{matmul, parallelism, Elem, Geom, Kept, Mat, Pooled};
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
/// (rows × N, or its transpose N × rows when `transposed`; zero where there is none),
/// spread over the threads by pixel; returned in (N, rows, pixels) order, each value
/// through `finish(row, value)`.
fn per_pixel<T: Elem>(
    g: &Geom,
    count: usize,
    rows: usize,
    depth: usize,
    transposed: bool,
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
            let (m, n) = if transposed { (g.n, rows) } else { (rows, g.n) };
            matmul(d, k > 0, m, n, depth, a, b, par);
        }
    };
    if g.threads > 1 && count >= g.threads {
        s.par_chunks_mut(len).enumerate().for_each(|(j, d)| one(d, j, Parallelism::None));
    } else {
        for (j, d) in s.chunks_mut(len).enumerate() {
            one(d, j, parallelism(g.threads));
        }
    }
    // dst[n][r][j] = finish(r, s[j][r][n]) (or s[j][n][r]).
    let at = |j: usize, r: usize, n: usize| if transposed { (j * g.n + n) * rows + r } else { (j * rows + r) * g.n + n };
    let mut dst = super::zeros(g.n * rows * count);
    dst.par_chunks_mut(rows * count).enumerate().for_each(|(n, sample)| {
        for (r, px) in sample.chunks_exact_mut(count).enumerate() {
            for (j, v) in px.iter_mut().enumerate() {
                *v = finish(r, s[at(j, r, n)]);
            }
        }
    });
    dst
}

/// The kernels `w` (Co, C, kh, kw) tap by tap: `W_t` (Co × C, row-major) at `t·Co·C`.
/// Bands of output channels in parallel, each read once and written to every tap's plane.
fn by_tap<T: Elem>(g: &Geom, w: &[T]) -> Pooled<T> {
    let (co, c, taps) = (g.co, g.c, g.kh * g.kw);
    let mut wt = Pooled::take(taps * co * c);
    let band = co.div_ceil(4 * g.threads.max(1)).max(1);
    // Task b: band b of each tap's plane.
    let mut tasks: Vec<Vec<&mut [T]>> = (0..co.div_ceil(band)).map(|_| Vec::with_capacity(taps)).collect();
    for plane in wt.chunks_mut(co * c) {
        for (task, part) in tasks.iter_mut().zip(plane.chunks_mut(band * c)) {
            task.push(part);
        }
    }
    tasks.into_par_iter().enumerate().for_each(|(b, mut planes)| {
        for lo in 0..planes[0].len() / c {
            let row = &w[(b * band + lo) * c * taps..][..c * taps];
            for (t, plane) in planes.iter_mut().enumerate() {
                for (d, k) in plane[lo * c..][..c].iter_mut().zip(row.chunks_exact(taps)) {
                    *d = k[t];
                }
            }
        }
    });
    wt
}

/// The forward pass, bias and ReLU included; the kernels by tap go to `keep`.
pub(super) fn forward<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, relu: bool, keep: Option<&Kept>) -> Vec<T> {
    let (hw, po) = (g.h * g.w, g.oh * g.ow);
    let wt = by_tap(g, w);
    // W_t (Co × C): wt[t][o][c]; X_I (C × N): x[n][c][I].
    let terms = |p: usize| {
        (0..hw)
            .filter_map(|i| tap(g, p, i).map(|t| (i, t)))
            .map(|(i, t)| {
                let a = Mat::rows(&wt[t * g.co * g.c..][..g.co * g.c], g.c);
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
    let out = per_pixel(g, po, g.co, g.c, false, &terms, &finish);
    if let Some(k) = keep {
        k.put(wt);
    }
    out
}

/// The input gradient from the output gradient `dout`, with the forward's kernels by tap
/// if it [`Kept`] them.
pub(super) fn input_grad<T: Elem>(g: &Geom, dout: &[T], w: &[T], kept: Option<&Kept>) -> Vec<T> {
    let (hw, po, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let wt = kept.and_then(Kept::take).filter(|u: &Pooled<T>| u.len() == taps * g.co * g.c).unwrap_or_else(|| by_tap(g, w));
    // dout_Pᵀ (N × Co): dout[n][o][P]; W_t (Co × C): wt[t][o][c].
    let terms = |i: usize| {
        (0..po)
            .filter_map(|p| tap(g, p, i).map(|t| (p, t)))
            .map(|(p, t)| {
                let a = Mat { ptr: dout[p..].as_ptr(), rs: (g.co * po) as isize, cs: po as isize };
                let b = Mat::rows(&wt[t * g.co * g.c..][..g.co * g.c], g.c);
                (a, b)
            })
            .collect()
    };
    per_pixel(g, hw, g.c, g.co, true, &terms, &|_, v| v)
}
