//! 3×3 stride-1 convolutions by Winograd's F(4×4, 3×3) (Lavin and Gray, 2016): all three
//! passes of the layers whose maps hold four 4×4 tiles or more with little padding to
//! whole tiles (7×7, 8×8, 16×16, 28×28, 56×56; not 14×14: [`fits`]).
//!
//! Each 4×4 tile of the output is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for the 6×6 input patch `d`
//! under it (interpolation points 0, ±1, ±2, ∞): 36 multiplies per tile and channel pair
//! where F(2×2, 3×3) (`winograd.rs`) takes 64 for the same 16 outputs and the direct form
//! 144. Over channels these are 36 GEMMs, `M_ξ (Co × tiles) = U_ξ (Co × C) · V_ξ (C ×
//! tiles)`, with 0.56× the FLOPs of F(2×2, 3×3)'s 16, and a transformed input 2.25× the
//! input's size instead of 4×: less to write, pack and read.
//!
//! The input gradient is the output gradient correlated with the kernels turned by 180°
//! and transposed over channels ([`input_corr`]); unlike F(2×2, 3×3)'s, G does not map a
//! turned kernel to a permutation of the transformed one (the point 2 turns into ½), so
//! the turned kernels are transformed on their own (nothing is [`super::winograd::Kept`]).
//! The weight gradient is `winograd::param_grad_by` with this file's transforms.
//!
//! Accuracy: the transforms multiply by up to 8 and by 1/24, so rounding errors grow more
//! than F(2×2, 3×3)'s, whose transforms only add and halve; the tests hold all three
//! passes to 1e-4 of a naive f64 loop in f32 and to 1e-12 in f64.

use super::winograd::{forward_corr, input_corr, param_grad_by, skew, Corr};
use super::{grow, matmul, parallelism, Block, Elem, Geom, Mat, Pooled};
use gemm::Parallelism;
use rayon::prelude::*;

/// Values in a transformed tile (6 × 6), and so GEMMs per pass.
const N: usize = 36;

/// Whether the three passes of `g` go through F(4×4, 3×3): where F(2×2, 3×3) would
/// ([`super::winograd::fits`]), a sample has at least [`MIN_TILES`] 4×4 tiles in its
/// output and in its input, and the 4×4 tiles' GEMMs do at most 0.6× the multiply-adds of
/// the 2×2 tiles' (0.56× where the map's size is a multiple of 4; a 14×14 map's 16 tiles
/// cover 16×16, 0.73×: measured on a par with F(2×2, 3×3), so it stays there).
pub(super) fn fits(g: &Geom) -> bool {
    // 4×4 tiles of an a × b map, at least MIN_TILES, whose 36 GEMM columns each come to
    // at most 0.6× the 16 of F(2×2, 3×3)'s 2×2 tiles (maps a multiple of 4 or near it).
    let pays = |a: usize, b: usize| {
        let (t4, t2) = (a.div_ceil(4) * b.div_ceil(4), a.div_ceil(2) * b.div_ceil(2));
        t4 >= MIN_TILES && 5 * 36 * t4 <= 3 * 16 * t2
    };
    super::winograd::fits(g) && pays(g.oh, g.ow) && pays(g.h, g.w)
}

/// From this many 4×4 tiles per sample on, F(4×4, 3×3) is the faster in every pass on
/// ResNet-18's and F34's shapes at batch 16 (`benches/layers.rs`, one thread, AMD EPYC
/// Zen 3): forward and backward 5–27 % faster on 7×7, 8×8, 16×16, 28×28 and 56×56 maps.
/// Smaller maps (F34's 4×4 at 64×64 input: one tile) stay with F(2×2, 3×3).
const MIN_TILES: usize = 4;

fn th(s: &Corr) -> usize {
    s.oh.div_ceil(4)
}
fn tw(s: &Corr) -> usize {
    s.ow.div_ceil(4)
}
fn tiles(s: &Corr) -> usize {
    th(s) * tw(s)
}

/// The forward pass of the convolution `g`, bias and ReLU included.
pub(super) fn forward<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, relu: bool) -> Vec<T> {
    let u = transform_kernels(w, g.co, g.c, false, g.threads);
    let us = skew(g.co * g.c);
    run(&forward_corr(g), x, &|xi| Mat::rows(&u[xi * us..][..g.co * g.c], g.c), b, relu)
}

/// The input gradient of the convolution `g` from its output gradient `dout`.
pub(super) fn input_grad<T: Elem>(g: &Geom, dout: &[T], w: &[T]) -> Vec<T> {
    let u = transform_kernels(w, g.co, g.c, true, g.threads);
    let us = skew(g.co * g.c);
    // The turned kernels, Ci × Co: U_ξ of the turned kernels (Co × Ci) read transposed.
    run(&input_corr(g), dout, &|xi| Mat::transposed(&u[xi * us..][..g.co * g.c], g.c), None, false)
}

/// The weight and bias gradients `[dW (Co × C·9), db (Co)]` of the convolution `g` from
/// its input `x` and output gradient `dout`, as `winograd::param_grad` with F(4×4, 3×3)'s
/// matrices: with `E` a 4×4 tile of `dout[co]` and `D` the 6×6 patch of `x[c]` under it,
/// `dW[co][c] = Gᵀ S G` with `S_ξ = Σ_tiles (A E Aᵀ)_ξ (Bᵀ D B)_ξ`, 36 GEMMs over the tiles.
pub(super) fn param_grad<T: Elem>(g: &Geom, x: &[T], dout: &[T]) -> Vec<T> {
    let s = forward_corr(g);
    param_grad_by::<T, N, _, _>(&s, x, dout, block(&s), grad_block, weight_tile)
}

/// Adds samples `start..start + len`'s `S_ξ` into `acc` (or, unless `accumulate`, writes them there).
#[allow(clippy::too_many_arguments)]
fn grad_block<T: Elem>(
    s: &Corr,
    x: &[T],
    dout: &[T],
    start: usize,
    len: usize,
    acc: &mut [T],
    ss: usize,
    blk: &mut Block<T>,
    par: Parallelism,
    accumulate: bool,
) {
    let (c, co) = (s.c, s.co);
    let nt = len * tiles(s);
    let (v, vs) = planes(&mut blk.cols, c * nt);
    transform_input(s, x, start, len, v, vs);
    let (e, es) = planes(&mut blk.out, co * nt);
    transform_grad(s, dout, start, len, e, es);
    for xi in 0..N {
        let (sx, ex, vx) = (&mut acc[xi * ss..][..co * c], &e[xi * es..][..co * nt], &v[xi * vs..][..c * nt]);
        matmul(sx, accumulate, co, c, nt, Mat::rows(ex, nt), Mat::transposed(vx, nt), par);
    }
}

/// `A e` for one column (or row) `e` of a 4×4 output-gradient tile, with A = (Aᵀ)ᵀ of [`at`].
#[inline(always)]
fn a<T: Elem>(e: [T; 4]) -> [T; 6] {
    let (two, four, eight) = (T::of(2.0), T::of(4.0), T::of(8.0));
    let (p, q) = (e[0] + e[2], e[1] + e[3]);
    let (p2, q2) = (e[0] + e[2] * four, e[1] * two + e[3] * eight);
    [e[0], p + q, p - q, p2 + q2, p2 - q2, e[3]]
}

/// E (36 planes `es` apart, each Co × tiles) for samples `start..start + len` of the
/// output gradient: `A E Aᵀ` for every 4×4 tile E (zero past the output's edge): along
/// the columns one row at a time, then along the rows for a whole plane at once (as
/// [`transform_input`]).
fn transform_grad<T: Elem>(s: &Corr, dout: &[T], start: usize, len: usize, e: &mut [T], es: usize) {
    let (th, tw, co) = (th(s), tw(s), s.co);
    let (tp, nt) = (th * tw, len * th * tw);
    let (oh, ow) = (s.oh, s.ow);
    let zero = T::default();
    // (q, phase) areas of th rows of tw values: q's six areas `4·tp` apart.
    let mut cols = vec![zero; 6 * 4 * tp];
    for j in 0..len {
        let sample = &dout[(start + j) * co * oh * ow..][..co * oh * ow];
        for (o, plane) in sample.chunks_exact(oh * ow).enumerate() {
            for y in 0..4 * th {
                let at = (y % 4) * tp + (y / 4) * tw;
                let mut parts = cols.chunks_exact_mut(4 * tp).map(|a| &mut a[at..at + tw]);
                let [d0, d1, d2, d3, d4, d5]: [&mut [T]; 6] = std::array::from_fn(|_| parts.next().expect("six areas"));
                if y >= oh {
                    for d in [d0, d1, d2, d3, d4, d5] {
                        d.fill(zero);
                    }
                    continue;
                }
                let src = &plane[y * ow..][..ow];
                for tx in 0..tw {
                    let p: [T; 4] = match src.get(4 * tx..4 * tx + 4) {
                        Some(p) => p.try_into().expect("four values"),
                        None => std::array::from_fn(|k| src.get(4 * tx + k).copied().unwrap_or(zero)),
                    };
                    let r = a(p);
                    (d0[tx], d1[tx], d2[tx], d3[tx], d4[tx], d5[tx]) = (r[0], r[1], r[2], r[3], r[4], r[5]);
                }
            }
            // A along the rows: plane ξ = 6r + q of E from the four tile rows of column q.
            let col = o * nt + j * tp;
            for q in 0..6 {
                let area = &cols[q * 4 * tp..][..4 * tp];
                let (r0, r1, r2, r3) = (&area[..tp], &area[tp..2 * tp], &area[2 * tp..3 * tp], &area[3 * tp..]);
                let mut outs = e.chunks_exact_mut(es).skip(q).step_by(6).map(|p| &mut p[col..col + tp]);
                let [o0, o1, o2, o3, o4, o5]: [&mut [T]; 6] = std::array::from_fn(|_| outs.next().expect("six planes"));
                for t in 0..tp {
                    let r = a([r0[t], r1[t], r2[t], r3[t]]);
                    (o0[t], o1[t], o2[t], o3[t], o4[t], o5[t]) = (r[0], r[1], r[2], r[3], r[4], r[5]);
                }
            }
        }
    }
}

/// `Gᵀ S G` (3×3, row-major) for one 6×6 `S`, with Gᵀ = [[¼,−⅙,−⅙,1/24,1/24,0],
/// [0,−⅙,⅙,1/12,−1/12,0], [0,−⅙,−⅙,⅙,⅙,1]].
fn weight_tile<T: Elem>(sm: &[T; N]) -> [T; 9] {
    let (quarter, sixth, twelfth, t24) = (T::of(0.25), T::of(1.0 / 6.0), T::of(1.0 / 12.0), T::of(1.0 / 24.0));
    let gt = |v: [T; 6]| -> [T; 3] {
        let (p, m, p2, m2) = (v[1] + v[2], v[2] - v[1], v[3] + v[4], v[3] - v[4]);
        [v[0] * quarter - p * sixth + p2 * t24, m * sixth + m2 * twelfth, (p2 - p) * sixth + v[5]]
    };
    // Gᵀ along the rows (column q of S), then along the columns.
    let mut t = [[T::default(); 6]; 3];
    for q in 0..6 {
        let [t0, t1, t2] = gt(std::array::from_fn(|r| sm[6 * r + q]));
        (t[0][q], t[1][q], t[2][q]) = (t0, t1, t2);
    }
    let mut d = [T::default(); 9];
    for (r, row) in t.iter().enumerate() {
        d[3 * r..3 * r + 3].copy_from_slice(&gt(*row));
    }
    d
}

/// `U` (36 × Co × C, ξ planes [`skew`]ed) from kernels `w` (Co, C, 3, 3), each turned by
/// 180° if `turned`: `U_ξ[co][c] = (G w[co][c] Gᵀ)_ξ`. Bands of rows in parallel.
fn transform_kernels<T: Elem>(w: &[T], co: usize, c: usize, turned: bool, threads: usize) -> Pooled<T> {
    let us = skew(co * c);
    let mut u = Pooled::take(N * us);
    let band = co.div_ceil(4 * threads.max(1)).max(1);
    // Task b: band b of each of the 36 planes.
    let mut tasks: Vec<Vec<&mut [T]>> = (0..co.div_ceil(band)).map(|_| Vec::with_capacity(N)).collect();
    for plane in u.chunks_mut(us) {
        for (task, part) in tasks.iter_mut().zip(plane[..co * c].chunks_mut(band * c)) {
            task.push(part);
        }
    }
    tasks.into_par_iter().enumerate().for_each(|(b, mut planes)| kernel_band(w, c, b * band, turned, &mut planes));
    u
}

widest! {
/// Rows `first..` of the 36 planes of [`transform_kernels`] (as many as `planes[0]` holds).
fn kernel_band<T: Elem>(w: &[T], c: usize, first: usize, turned: bool, planes: &mut [&mut [T]]) {
    for lr in 0..planes[0].len() / c {
        let r = first + lr;
        // Sixteen kernels at a time (one vector per value), then the rest one by one.
        let row = &w[r * c * 9..][..c * 9];
        let mut q = 0;
        for k16 in row.chunks_exact(16 * 9) {
            for (plane, v) in planes.iter_mut().zip(kernel_lanes::<T, 16>(k16, turned)) {
                plane[lr * c + q..][..16].copy_from_slice(&v);
            }
            q += 16;
        }
        for k1 in row[q * 9..].chunks_exact(9) {
            for (plane, [v]) in planes.iter_mut().zip(kernel_lanes::<T, 1>(k1, turned)) {
                plane[lr * c + q] = v;
            }
            q += 1;
        }
    }
}
}

/// `G k Gᵀ` (6×6, row-major) for `L` 3×3 kernels `k` (9 values each, one after the other,
/// read turned by 180° if `turned`): value ξ of kernel l at `[ξ][l]`.
#[inline(always)]
fn kernel_lanes<T: Elem, const L: usize>(k: &[T], turned: bool) -> [[T; L]; N] {
    let k = &k[..9 * L];
    let mut kr = [[T::default(); L]; 9];
    for (l, kernel) in k.chunks_exact(9).enumerate() {
        for (j, &v) in kernel.iter().enumerate() {
            kr[if turned { 8 - j } else { j }][l] = v;
        }
    }
    let (quarter, sixth, twelfth, t24) = (T::of(0.25), T::of(1.0 / 6.0), T::of(1.0 / 12.0), T::of(1.0 / 24.0));
    // G [a, b, d] = [a/4, −(a + b + d)/6, −(a − b + d)/6, a/24 + b/12 + d/6,
    // a/24 − b/12 + d/6, d], lane by lane.
    let g = |a: &[T; L], b: &[T; L], d: &[T; L]| -> [[T; L]; 6] {
        let mut o = [[T::default(); L]; 6];
        for l in 0..L {
            let (ad, e, f) = (a[l] + d[l], a[l] * t24 + d[l] * sixth, b[l] * twelfth);
            o[0][l] = a[l] * quarter;
            o[1][l] = T::default() - (ad + b[l]) * sixth;
            o[2][l] = T::default() - (ad - b[l]) * sixth;
            o[3][l] = e + f;
            o[4][l] = e - f;
            o[5][l] = d[l];
        }
        o
    };
    // G k (6×3), column by column, then (G k) Gᵀ (6×6), row by row.
    let mut gk = [[[T::default(); L]; 3]; 6];
    for col in 0..3 {
        for (r, v) in g(&kr[col], &kr[3 + col], &kr[6 + col]).into_iter().enumerate() {
            gk[r][col] = v;
        }
    }
    let mut v = [[T::default(); L]; N];
    for (r, [a, b, d]) in gk.iter().enumerate() {
        v[6 * r..6 * r + 6].copy_from_slice(&g(a, b, d));
    }
    v
}

/// `Bᵀ d` for one column (or row) `d` of a 6×6 patch, with Bᵀ = [[4,0,−5,0,1,0],
/// [0,−4,−4,1,1,0], [0,4,−4,−1,1,0], [0,−2,−1,2,1,0], [0,2,−1,−2,1,0], [0,4,0,−5,0,1]].
#[inline(always)]
fn bt<T: Elem>(d: [T; 6]) -> [T; 6] {
    let (two, four, five) = (T::of(2.0), T::of(4.0), T::of(5.0));
    let (t0, t1) = (d[4] - d[2] * four, d[3] - d[1] * four);
    let (t2, t3) = (d[4] - d[2], (d[3] - d[1]) * two);
    [d[0] * four - d[2] * five + d[4], t0 + t1, t0 - t1, t2 + t3, t2 - t3, d[1] * four - d[3] * five + d[5]]
}

/// `Aᵀ m` for one column (or row) `m` of a transformed tile, with Aᵀ = [[1,1,1,1,1,0],
/// [0,1,−1,2,−2,0], [0,1,1,4,4,0], [0,1,−1,8,−8,1]].
#[inline(always)]
fn at<T: Elem>(m: [T; 6]) -> [T; 4] {
    let (two, four, eight) = (T::of(2.0), T::of(4.0), T::of(8.0));
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + a + c, b + d * two, a + c * four, b + d * eight + m[5]]
}

/// Samples per block: enough tiles for the GEMMs, spread evenly over the threads.
fn block(s: &Corr) -> usize {
    super::block_len(s.n, tiles(s), s.threads)
}

/// The correlation `s` of `x` by the transformed kernels `u(ξ)` (Co × C each).
fn run<T: Elem>(s: &Corr, x: &[T], u: &(dyn Fn(usize) -> Mat<T> + Sync), b: Option<&[T]>, relu: bool) -> Vec<T> {
    let mut out = super::zeros(s.n * s.out_sample());
    let bs = block(s);
    let chunk = bs * s.out_sample();
    if s.threads > 1 && s.n.div_ceil(bs) >= s.threads {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Block::new, |blk, (i, o)| run_block(s, x, u, b, relu, i * bs, o, blk, Parallelism::None));
    } else {
        let mut blk = Block::new();
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            run_block(s, x, u, b, relu, i * bs, o, &mut blk, parallelism(s.threads));
        }
    }
    out
}

/// 36 [`skew`]ed planes of `len` elements in scratch buffer `buf`, and their stride.
fn planes<T: Elem>(buf: &mut Vec<T>, len: usize) -> (&mut [T], usize) {
    let stride = skew(len);
    grow(buf, N * stride);
    (&mut buf[..N * stride], stride)
}

/// Samples `start..` of the output (`out`, as many samples as it holds).
#[allow(clippy::too_many_arguments)]
fn run_block<T: Elem>(
    s: &Corr,
    x: &[T],
    u: &(dyn Fn(usize) -> Mat<T> + Sync),
    b: Option<&[T]>,
    relu: bool,
    start: usize,
    out: &mut [T],
    blk: &mut Block<T>,
    par: Parallelism,
) {
    let len = out.len() / s.out_sample();
    let (tp, tw) = (tiles(s), tw(s));
    let nt = len * tp;
    let (c, co) = (s.c, s.co);
    // V (36 × C × tiles): the transformed input patches; ξ planes `vs` apart.
    let (v, vs) = planes(&mut blk.cols, c * nt);
    transform_input(s, x, start, len, v, vs);
    // M_ξ = U_ξ · V_ξ.
    let (m, ms) = planes(&mut blk.out, co * nt);
    for xi in 0..N {
        let (mx, vx) = (&mut m[xi * ms..][..co * nt], &v[xi * vs..][..c * nt]);
        matmul(mx, false, co, nt, c, u(xi), Mat::rows(vx, nt), par);
    }
    // Y = Aᵀ M A per tile, plus bias, ReLU: Aᵀ along the rows for a whole plane at once
    // (`sa`: for each output row r of a tile and patch column q, the tiles' values, tp
    // each, at (6r + q)·tp), then along the columns as each output row is written.
    let (oh, ow) = (s.oh, s.ow);
    let mut sa = vec![T::default(); 24 * tp];
    let mut y = vec![T::default(); 4 * tw];
    for j in 0..len {
        for o in 0..co {
            let bias = b.map_or(T::default(), |b| b[o]);
            let plane = &mut out[(j * co + o) * oh * ow..][..oh * ow];
            let col = o * nt + j * tp;
            let mrow = |xi: usize| &m[xi * ms + col..][..tp];
            let (s0, rest) = sa.split_at_mut(6 * tp);
            let (s1, rest) = rest.split_at_mut(6 * tp);
            let (s2, s3) = rest.split_at_mut(6 * tp);
            for q in 0..6 {
                let (m0, m1, m2, m3, m4, m5) = (mrow(q), mrow(6 + q), mrow(12 + q), mrow(18 + q), mrow(24 + q), mrow(30 + q));
                let (d0, d1, d2, d3) = (&mut s0[q * tp..][..tp], &mut s1[q * tp..][..tp], &mut s2[q * tp..][..tp], &mut s3[q * tp..][..tp]);
                for t in 0..tp {
                    let [e0, e1, e2, e3] = at([m0[t], m1[t], m2[t], m3[t], m4[t], m5[t]]);
                    (d0[t], d1[t], d2[t], d3[t]) = (e0, e1, e2, e3);
                }
            }
            for (oy, dst) in plane.chunks_exact_mut(ow).enumerate() {
                let base = (oy % 4) * 6 * tp + (oy / 4) * tw;
                let q = |q: usize| &sa[base + q * tp..][..tw];
                let (q0, q1, q2, q3, q4, q5) = (q(0), q(1), q(2), q(3), q(4), q(5));
                for (tx, four) in y.chunks_exact_mut(4).enumerate() {
                    let e = at([q0[tx], q1[tx], q2[tx], q3[tx], q4[tx], q5[tx]]);
                    for (d, e) in four.iter_mut().zip(e) {
                        let e = e + bias;
                        *d = if relu { e.relu() } else { e };
                    }
                }
                dst.copy_from_slice(&y[..ow]);
            }
        }
    }
}

/// V (36 planes `vs` apart, each C × tiles) for samples `start..start + len` of `x`:
/// `Bᵀ d B` for every tile's 6×6 input patch d (tile (ty, tx) reads rows `4·ty − top ..`
/// and columns `4·tx − left ..`, zeros outside).
///
/// Bᵀ is applied along the columns first, one padded input row at a time, into `cols`
/// (for each patch column q and each row's phase y mod 4, the rows y / 4 of tile values),
/// then along the rows for the whole plane at once: patch row k of tile row ty is padded
/// row 4·ty + k, i.e. phase k mod 4, row ty + k / 4, so each of the six is one slice of
/// `cols` over all the plane's tiles.
fn transform_input<T: Elem>(s: &Corr, x: &[T], start: usize, len: usize, v: &mut [T], vs: usize) {
    let (th, tw, c) = (th(s), tw(s), s.c);
    let (tp, nt) = (th * tw, len * th * tw);
    let plane_len = s.h * s.w;
    let (h, w, left) = (s.h as isize, s.w as isize, s.left);
    let zero = T::default();
    // (q, phase) areas of th + 1 rows of tw values: q's six areas `4·rows` apart.
    let rows = (th + 1) * tw;
    let mut cols = vec![zero; 6 * 4 * rows];
    // Tiles lo..hi read inside the row (no bounds to check); the others read zeros past
    // its ends.
    let lo = (left.max(0) as usize).div_ceil(4).min(tw);
    let hi = if w + left >= 6 { (((w + left - 6) / 4 + 1) as usize).clamp(lo, tw) } else { lo };
    for j in 0..len {
        let sample = &x[(start + j) * c * plane_len..][..c * plane_len];
        for (ci, plane) in sample.chunks_exact(plane_len).enumerate() {
            for y in 0..4 * th + 2 {
                let at = (y % 4) * rows + (y / 4) * tw;
                let mut parts = cols.chunks_exact_mut(4 * rows).map(|a| &mut a[at..at + tw]);
                let [d0, d1, d2, d3, d4, d5]: [&mut [T]; 6] = std::array::from_fn(|_| parts.next().expect("six areas"));
                let iy = y as isize - s.top;
                if iy < 0 || iy >= h {
                    for d in [d0, d1, d2, d3, d4, d5] {
                        d.fill(zero);
                    }
                    continue;
                }
                let src = &plane[iy as usize * s.w..][..s.w];
                let mut put = |tx: usize, p: [T; 6]| {
                    let r = bt(p);
                    (d0[tx], d1[tx], d2[tx], d3[tx], d4[tx], d5[tx]) = (r[0], r[1], r[2], r[3], r[4], r[5]);
                };
                for tx in (0..lo).chain(hi..tw) {
                    let x0 = 4 * tx as isize - left;
                    put(
                        tx,
                        std::array::from_fn(|k| {
                            let i = x0 + k as isize;
                            if (0..w).contains(&i) {
                                src[i as usize]
                            } else {
                                zero
                            }
                        }),
                    );
                }
                for tx in lo..hi {
                    let base = (4 * tx as isize - left) as usize;
                    let p: [T; 6] = src[base..base + 6].try_into().expect("six values");
                    put(tx, p);
                }
            }
            // Bᵀ along the rows: plane ξ = 6r + q of V from the six patch rows of column q.
            let col = ci * nt + j * tp;
            for q in 0..6 {
                let area = &cols[q * 4 * rows..][..4 * rows];
                let row = |k: usize| &area[(k % 4) * rows + (k / 4) * tw..][..tp];
                let (r0, r1, r2, r3, r4, r5) = (row(0), row(1), row(2), row(3), row(4), row(5));
                let mut outs = v.chunks_exact_mut(vs).skip(q).step_by(6).map(|p| &mut p[col..col + tp]);
                let [o0, o1, o2, o3, o4, o5]: [&mut [T]; 6] = std::array::from_fn(|_| outs.next().expect("six planes"));
                for t in 0..tp {
                    let r = bt([r0[t], r1[t], r2[t], r3[t], r4[t], r5[t]]);
                    (o0[t], o1[t], o2[t], o3[t], o4[t], o5[t]) = (r[0], r[1], r[2], r[3], r[4], r[5]);
                }
            }
        }
    }
}
