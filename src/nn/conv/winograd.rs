//! 3×3 stride-1 convolutions by Winograd's minimal filtering, F(2×2, 3×3) (Lavin and
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2×2 tile of the output is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for the 4×4 input patch `d`
//! under it: 16 multiplies per tile and channel pair where the direct form takes 36. Over
//! channels the element-wise products are 16 GEMMs, one per position ξ of the 4×4
//! transformed tile: `M_ξ (Co × tiles) = U_ξ (Co × C) · V_ξ (C × tiles)`. (PyTorch's 3×3
//! layers ran at 131 GFLOP/s-equivalent on one core of our machine, where a GEMM peaks at
//! 110: it too multiplies less than im2col does.)
//!
//! The input gradient of such a convolution is again one: the output gradient correlated
//! with the kernels turned by 180° and transposed over channels, padded by `2 − pad`.
//! The weight gradient goes through the same transforms (see [`param_grad`]): 16 GEMMs over
//! the tiles, summing products of transformed output-gradient tiles and input patches.
//!
//! F(2×2, 3×3) keeps f32 accuracy (its transforms only add, subtract and halve): the tests
//! hold all three passes to 1e-4 of a naive f64 loop in f32, 1e-12 in f64.

use super::{grow, matmul, parallelism, Block, Elem, Geom, Mat, Pooled};
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether the convolution (and its gradients) goes through Winograd: 3×3, stride 1,
/// no dilation, one group, and enough channels for the 16 GEMMs to pay for the transforms.
pub(super) fn fits(g: &Geom) -> bool {
    let tiles = |a: usize, b: usize| a.div_ceil(2) * b.div_ceil(2);
    g.kh == 3
        && g.kw == 3
        && g.spec.stride == [1, 1]
        && g.spec.dilation == [1, 1]
        && g.groups == 1
        && g.c >= MIN_CHANNELS
        && g.co >= MIN_CHANNELS
        && tiles(g.oh, g.ow).min(tiles(g.h, g.w)) >= MIN_TILES
}

/// Below this many tiles per sample (in the output, or in the input for the input
/// gradient), the kernels' transform and 16 thin GEMMs cost more than they save. Measured
/// on F34's layers at batch 16: 4×4 maps (4 tiles) gain ≈ 10 % forward (1 thread 3.9 →
/// 3.2–3.7 ms, 2 threads 1.95 → 1.75 ms for 256→256), 2×2 maps (1 tile) lose 2× (512→512:
/// 4.2 → 7.0–8.3 ms).
const MIN_TILES: usize = 4;

/// Below this many input or output channels the GEMMs are too thin (F34's first 3×3
/// layer has 64).
const MIN_CHANNELS: usize = 16;

/// One correlation `y (N, Co, OH, OW) = x (N, C, H, W) ⋆ 3×3 kernels`, with x read at
/// row `2·ty + r − top`, column `2·tx + q − left` for tile (ty, tx) (zero outside).
pub(super) struct Corr {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) co: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) top: isize,
    pub(super) left: isize,
    pub(super) threads: usize,
}

impl Corr {
    fn th(&self) -> usize {
        self.oh.div_ceil(2)
    }
    fn tw(&self) -> usize {
        self.ow.div_ceil(2)
    }
    fn tiles(&self) -> usize {
        self.th() * self.tw()
    }
    pub(super) fn out_sample(&self) -> usize {
        self.co * self.oh * self.ow
    }
}

/// The forward pass of the convolution `g`, bias and ReLU included. With `keep`, the
/// transformed kernels are left there for the input gradient.
pub(super) fn forward<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, relu: bool, keep: Option<&Kept>) -> Vec<T> {
    let u = transform_kernels(w, g.co, g.c, g.threads);
    let us = skew(g.co * g.c);
    let out = run(&forward_corr(g), x, &|xi| Mat::rows(&u[xi * us..][..g.co * g.c], g.c), b, relu);
    if let Some(k) = keep {
        k.put(u);
    }
    out
}

/// What a forward pass keeps for its input gradient: the kernels by tap of a tiny map
/// (`tiny.rs`), or here the transformed kernels U, which the input gradient
/// multiplies by the same matrices: the kernels turned by 180° transform to U with ξ's
/// rows and columns 0 and 3 swapped (G·J = P·G for the reversal J and the swap P, as
/// G's middle rows are symmetric), so `U'_ξ = U_{turn(ξ)}ᵀ`. One transform per training
/// step instead of two. Empty until the forward runs; the input gradient takes it (a
/// second backward through the same graph transforms again).
#[derive(Clone, Default)]
pub(super) struct Kept(std::sync::Arc<std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>>);

impl Kept {
    pub(super) fn put<T: Elem>(&self, u: Pooled<T>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(u));
    }
    pub(super) fn take<T: Elem>(&self) -> Option<Pooled<T>> {
        let u = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        u.downcast::<Pooled<T>>().ok().map(|u| *u)
    }
}

/// ξ = 4r + q of the kernels turned by 180°: rows and columns 0 and 3 swapped.
fn turn(xi: usize) -> usize {
    const P: [usize; 4] = [3, 1, 2, 0];
    4 * P[xi / 4] + P[xi % 4]
}

/// The correlation the forward pass of `g` is.
pub(super) fn forward_corr(g: &Geom) -> Corr {
    Corr {
        n: g.n,
        c: g.c,
        h: g.h,
        w: g.w,
        co: g.co,
        oh: g.oh,
        ow: g.ow,
        top: g.spec.pad[0] as isize,
        left: g.spec.pad[1] as isize,
        threads: g.threads,
    }
}

/// The correlation the input gradient of `g` is: the output gradient by the kernels
/// turned by 180° and transposed over channels, padded by `2 − pad`.
pub(super) fn input_corr(g: &Geom) -> Corr {
    Corr {
        n: g.n,
        c: g.co,
        h: g.oh,
        w: g.ow,
        co: g.c,
        oh: g.h,
        ow: g.w,
        top: 2 - g.spec.pad[0] as isize,
        left: 2 - g.spec.pad[1] as isize,
        threads: g.threads,
    }
}

/// The input gradient of the convolution `g` from its output gradient `dout`, with the
/// forward's transformed kernels if it [`Kept`] them.
pub(super) fn input_grad<T: Elem>(g: &Geom, dout: &[T], w: &[T], kept: Option<&Kept>) -> Vec<T> {
    let s = input_corr(g);
    let us = skew(g.co * g.c);
    let u =
        kept.and_then(Kept::take).filter(|u: &Pooled<T>| u.len() == 16 * us).unwrap_or_else(|| transform_kernels(w, g.co, g.c, g.threads));
    // The turned kernels, Ci × Co: U_{turn(ξ)} (Co × Ci) read transposed.
    run(&s, dout, &|xi| Mat::transposed(&u[turn(xi) * us..][..g.co * g.c], g.c), None, false)
}

/// The weight and bias gradients `[dW (Co × C·9), db (Co)]` of the convolution `g` from
/// its input `x` and output gradient `dout`. With `E` a 2×2 tile of `dout[co]` and `D` the
/// 4×4 patch of `x[c]` under it, the forward's `⟨E, Aᵀ[(G w Gᵀ) ⊙ (Bᵀ D B)]A⟩` is
/// `Σ_ξ (A E Aᵀ)_ξ (G w Gᵀ)_ξ (Bᵀ D B)_ξ`, so `dW[co][c] = Gᵀ S G` with
/// `S_ξ = Σ_tiles (A E Aᵀ)_ξ (Bᵀ D B)_ξ`: per ξ a GEMM over the tiles,
/// `S_ξ (Co × C) += E_ξ (Co × tiles) · V_ξᵀ (tiles × C)`, V the forward's input transform.
pub(super) fn param_grad<T: Elem>(g: &Geom, x: &[T], dout: &[T]) -> Vec<T> {
    let s = forward_corr(g);
    param_grad_by(&s, x, dout, block(&s), grad_block, weight_tile)
}

/// The weight and bias gradients of correlation `s` by a Winograd transform of P values
/// a tile: `S` summed over blocks of `bs` samples by `grad_block` (which adds samples
/// `start..start + len`'s `S_ξ`, P planes `ss` apart, into `acc`, or, unless
/// `accumulate`, writes them there; one accumulator per job, a fixed split of the blocks,
/// summed in job order), then `dW = weight_tile(S)` for every kernel, then `db`.
pub(super) fn param_grad_by<T: Elem, const P: usize, B, W>(
    s: &Corr,
    x: &[T],
    dout: &[T],
    bs: usize,
    grad_block: B,
    weight_tile: W,
) -> Vec<T>
where
    B: Fn(&Corr, &[T], &[T], usize, usize, &mut [T], usize, &mut Block<T>, Parallelism, bool) + Sync,
    W: Fn(&[T; P]) -> [T; 9] + Sync,
{
    let (co, c, t) = (s.co, s.c, s.threads);
    let ss = skew(co * c);
    let blocks = s.n.div_ceil(bs);
    // S summed over blocks `range` (P planes `ss` apart, Co × C each, the first block's
    // GEMMs writing over the pooled buffer's old contents).
    let sum_blocks = |range: std::ops::Range<usize>, par: Parallelism| {
        let mut acc = Pooled::take(P * ss);
        if range.is_empty() {
            acc.fill(T::default());
        }
        let mut blk = Block::new();
        for (k, i) in range.enumerate() {
            let start = i * bs;
            grad_block(s, x, dout, start, bs.min(s.n - start), &mut acc, ss, &mut blk, par, k > 0);
        }
        acc
    };
    let parts: Vec<Pooled<T>> = if t > 1 && blocks >= t {
        let per = blocks.div_ceil(t);
        (0..blocks.div_ceil(per)).into_par_iter().map(|j| sum_blocks(j * per..((j + 1) * per).min(blocks), Parallelism::None)).collect()
    } else {
        vec![sum_blocks(0..blocks, parallelism(t))]
    };
    // dW (Co·C kernels, one tile of S each, S summed over the jobs in order; in parallel), then db.
    let (first, rest) = parts.split_first().expect("one job or more");
    let (first, rest): (&[T], Vec<&[T]>) = (first, rest.iter().map(|p| &p[..]).collect());
    let kernels = co * c;
    let mut out = vec![T::default(); kernels * 9 + co];
    const KERNELS: usize = 256;
    out[..kernels * 9].par_chunks_mut(9 * KERNELS).enumerate().for_each(|(i, dst)| {
        for (k, kernel) in (i * KERNELS..).zip(dst.chunks_exact_mut(9)) {
            let sm: [T; P] = std::array::from_fn(|xi| rest.iter().fold(first[xi * ss + k], |a, part| a + part[xi * ss + k]));
            kernel.copy_from_slice(&weight_tile(&sm));
        }
    });
    let p = s.oh * s.ow;
    for (o, d) in out[kernels * 9..].iter_mut().enumerate() {
        *d = dout.chunks_exact(co * p).fold(T::default(), |d, sample| d + super::sum(&sample[o * p..][..p]));
    }
    out
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
    let nt = len * s.tiles();
    let (v, vs) = planes(&mut blk.cols, c * nt);
    transform_input(s, x, start, len, v, vs);
    let (e, es) = planes(&mut blk.out, co * nt);
    transform_grad(s, dout, start, len, e, es);
    for xi in 0..16 {
        let (sx, ex, vx) = (&mut acc[xi * ss..][..co * c], &e[xi * es..][..co * nt], &v[xi * vs..][..c * nt]);
        matmul(sx, accumulate, co, c, nt, Mat::rows(ex, nt), Mat::transposed(vx, nt), par);
    }
}

/// E (16 planes `es` apart, each Co × tiles) for samples `start..start + len` of the
/// output gradient: `A E Aᵀ` for every 2×2 tile E (zero past the output's edge), with
/// A = [[1,0],[1,1],[1,−1],[0,−1]]: along the columns one row at a time, then along the
/// rows for a whole plane at once (as [`transform_input`]).
fn transform_grad<T: Elem>(s: &Corr, dout: &[T], start: usize, len: usize, e: &mut [T], es: usize) {
    let (th, tw, co) = (s.th(), s.tw(), s.co);
    let (tp, nt) = (th * tw, len * th * tw);
    let (oh, ow) = (s.oh, s.ow);
    let zero = T::default();
    // A along the columns: for each q, the tiles' first rows (th × tw), then their second.
    let mut cols = vec![zero; 8 * tp];
    for j in 0..len {
        let sample = &dout[(start + j) * co * oh * ow..][..co * oh * ow];
        for (o, plane) in sample.chunks_exact(oh * ow).enumerate() {
            for y in 0..2 * th {
                let at = (y % 2) * 4 * tp + (y / 2) * tw;
                let (c0, rest) = cols[at..].split_at_mut(tp);
                let (c1, rest) = rest.split_at_mut(tp);
                let (c2, c3) = rest.split_at_mut(tp);
                let (c0, c1, c2, c3) = (&mut c0[..tw], &mut c1[..tw], &mut c2[..tw], &mut c3[..tw]);
                if y >= oh {
                    for c in [c0, c1, c2, c3] {
                        c.fill(zero);
                    }
                    continue;
                }
                let src = &plane[y * ow..][..ow];
                let outs = c0.iter_mut().zip(c1.iter_mut()).zip(c2.iter_mut()).zip(c3.iter_mut());
                for (tx, (((d0, d1), d2), d3)) in outs.enumerate() {
                    let (a, b) = match src.get(2 * tx..2 * tx + 2) {
                        Some(&[a, b]) => (a, b),
                        _ => (src[2 * tx], zero),
                    };
                    (*d0, *d1, *d2, *d3) = (a, a + b, a - b, zero - b);
                }
            }
            let col = o * nt + j * tp;
            let (c0, c1) = cols.split_at(4 * tp);
            for q in 0..4 {
                let (r0, r1) = (&c0[q * tp..][..tp], &c1[q * tp..][..tp]);
                let (e0, rest) = e[q * es + col..].split_at_mut(4 * es);
                let (e1, rest) = rest.split_at_mut(4 * es);
                let (e2, e3) = rest.split_at_mut(4 * es);
                e0[..tp].copy_from_slice(r0);
                zip3(&mut e1[..tp], r0, r1, |a, b| a + b);
                zip3(&mut e2[..tp], r0, r1, |a, b| a - b);
                zip3(&mut e3[..tp], r0, r1, |_, b| zero - b);
            }
        }
    }
}

/// `Gᵀ S G` (3×3, row-major) for one 4×4 `S`, with Gᵀ = [[1,½,½,0],[0,½,−½,0],[0,½,½,1]].
fn weight_tile<T: Elem>(sm: &[T; 16]) -> [T; 9] {
    let half = T::HALF;
    let mut t = [[T::default(); 4]; 3];
    for q in 0..4 {
        let (s0, s1, s2, s3) = (sm[q], sm[4 + q], sm[8 + q], sm[12 + q]);
        t[0][q] = s0 + (s1 + s2) * half;
        t[1][q] = (s1 - s2) * half;
        t[2][q] = (s1 + s2) * half + s3;
    }
    let mut d = [T::default(); 9];
    for (r, row) in t.iter().enumerate() {
        let [t0, t1, t2, t3] = *row;
        d[3 * r] = t0 + (t1 + t2) * half;
        d[3 * r + 1] = (t1 - t2) * half;
        d[3 * r + 2] = (t1 + t2) * half + t3;
    }
    d
}

/// `U` (16 × Co × C, ξ planes [`skew`]ed) from kernels `w` (Co, C, 3, 3): `U_ξ[co][c] = (G w[co][c] Gᵀ)_ξ`.
/// Bands of rows in parallel (16 Co·C values to write: as long as a small layer's GEMMs).
fn transform_kernels<T: Elem>(w: &[T], co: usize, c: usize, threads: usize) -> Pooled<T> {
    let (rows, cols) = (co, c);
    let us = skew(rows * cols);
    let mut u = Pooled::take(16 * us);
    let band = rows.div_ceil(4 * threads.max(1)).max(1);
    // Task b: band b of each of the 16 planes.
    let mut tasks: Vec<Vec<&mut [T]>> = (0..rows.div_ceil(band)).map(|_| Vec::with_capacity(16)).collect();
    for plane in u.chunks_mut(us) {
        for (task, part) in tasks.iter_mut().zip(plane[..rows * cols].chunks_mut(band * cols)) {
            task.push(part);
        }
    }
    tasks.into_par_iter().enumerate().for_each(|(b, mut planes)| kernel_band(w, c, b * band, &mut planes));
    u
}

widest! {
/// Rows `first..` of the 16 planes of [`transform_kernels`] (as many as `planes[0]` holds).
fn kernel_band<T: Elem>(w: &[T], c: usize, first: usize, planes: &mut [&mut [T]]) {
    for lr in 0..planes[0].len() / c {
        let r = first + lr;
        // Sixteen kernels at a time (one vector per value), then the rest one by one.
        let row = &w[r * c * 9..][..c * 9];
        let mut q = 0;
        for k16 in row.chunks_exact(16 * 9) {
            for (plane, v) in planes.iter_mut().zip(transform_kernels_lanes::<T, 16>(k16)) {
                plane[lr * c + q..][..16].copy_from_slice(&v);
            }
            q += 16;
        }
        for k1 in row[q * 9..].chunks_exact(9) {
            for (plane, [v]) in planes.iter_mut().zip(transform_kernels_lanes::<T, 1>(k1)) {
                plane[lr * c + q] = v;
            }
            q += 1;
        }
    }
}
}

/// `G k Gᵀ` (4×4, row-major) for `L` 3×3 kernels `k` (9 values each, one after the
/// other): value ξ of kernel l at `[ξ][l]`, so that each operation below runs on `L` lanes.
#[inline(always)]
fn transform_kernels_lanes<T: Elem, const L: usize>(k: &[T]) -> [[T; L]; 16] {
    let half = T::HALF;
    // kr[j][l]: value j (row-major 3×3) of kernel l. Plain loops: `array::from_fn` here
    // did not inline.
    let k = &k[..9 * L];
    let mut kr = [[T::default(); L]; 9];
    for (l, kernel) in k.chunks_exact(9).enumerate() {
        for (j, &v) in kernel.iter().enumerate() {
            kr[j][l] = v;
        }
    }
    // [a, (a + b + d)·½, (a − b + d)·½, d], lane by lane.
    let g = |a: &[T; L], b: &[T; L], d: &[T; L]| -> [[T; L]; 4] {
        let (mut s, mut t) = ([T::default(); L], [T::default(); L]);
        for l in 0..L {
            s[l] = (a[l] + b[l] + d[l]) * half;
            t[l] = (a[l] - b[l] + d[l]) * half;
        }
        [*a, s, t, *d]
    };
    // G k (4×3), column by column, then (G k) Gᵀ (4×4), row by row.
    let mut gk = [[[T::default(); L]; 3]; 4];
    for col in 0..3 {
        for (r, v) in g(&kr[col], &kr[3 + col], &kr[6 + col]).into_iter().enumerate() {
            gk[r][col] = v;
        }
    }
    let mut v = [[T::default(); L]; 16];
    for (r, [a, b, d]) in gk.iter().enumerate() {
        v[4 * r..4 * r + 4].copy_from_slice(&g(a, b, d));
    }
    v
}

/// Samples per block: enough tiles for the GEMMs, spread evenly over the threads (the
/// rule of [`Geom::block`], on tiles instead of output positions).
fn block(s: &Corr) -> usize {
    super::block_len(s.n, s.tiles(), s.threads)
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
    let (tp, tw) = (s.tiles(), s.tw());
    let nt = len * tp;
    let (c, co) = (s.c, s.co);
    // V (16 × C × tiles): the transformed input patches; ξ planes `vs` apart.
    let (v, vs) = planes(&mut blk.cols, c * nt);
    transform_input(s, x, start, len, v, vs);
    // M_ξ = U_ξ · V_ξ.
    let (m, ms) = planes(&mut blk.out, co * nt);
    for xi in 0..16 {
        let (mx, vx) = (&mut m[xi * ms..][..co * nt], &v[xi * vs..][..c * nt]);
        matmul(mx, false, co, nt, c, u(xi), Mat::rows(vx, nt), par);
    }
    // Y = Aᵀ M A per tile, plus bias, ReLU: Aᵀ along the rows for a whole plane at once
    // (`sa`: for each q, the tiles' first output rows, th × tw, then their second), then
    // along the columns as each output row is written.
    let (oh, ow) = (s.oh, s.ow);
    let mut sa = vec![T::default(); 8 * tp];
    let mut y = vec![T::default(); 2 * tw];
    for j in 0..len {
        for o in 0..co {
            let bias = b.map_or(T::default(), |b| b[o]);
            let plane = &mut out[(j * co + o) * oh * ow..][..oh * ow];
            let col = o * nt + j * tp;
            let mrow = |xi: usize| &m[xi * ms + col..][..tp];
            let (s0, s1) = sa.split_at_mut(4 * tp);
            for q in 0..4 {
                let (m0, m1, m2, m3) = (mrow(q), mrow(4 + q), mrow(8 + q), mrow(12 + q));
                for (((d, &a), &b), &c) in s0[q * tp..][..tp].iter_mut().zip(m0).zip(m1).zip(m2) {
                    *d = a + b + c;
                }
                for (((d, &a), &b), &c) in s1[q * tp..][..tp].iter_mut().zip(m1).zip(m2).zip(m3) {
                    *d = a - b - c;
                }
            }
            for (oy, dst) in plane.chunks_exact_mut(ow).enumerate() {
                let at = (oy % 2) * 4 * tp + (oy / 2) * tw;
                let q = |q: usize| &sa[at + q * tp..][..tw];
                for ((((pair, &a), &b), &c), &d) in y.chunks_exact_mut(2).zip(q(0)).zip(q(1)).zip(q(2)).zip(q(3)) {
                    let (e0, e1) = (a + b + c + bias, b - c - d + bias);
                    pair[0] = if relu { e0.relu() } else { e0 };
                    pair[1] = if relu { e1.relu() } else { e1 };
                }
                dst.copy_from_slice(&y[..ow]);
            }
        }
    }
}

/// V (16 planes `vs` apart, each C × tiles) for samples `start..start + len` of `x`:
/// `Bᵀ d B` for every tile's 4×4 input patch d.
///
/// Bᵀ is applied along the columns first, one padded input row at a time (split into even
/// and odd columns, so that the loops run over contiguous slices), then along the rows for
/// the whole plane at once: a plane's tiles are contiguous in each ξ plane of V, and with
/// the column sums of even and odd rows stored apart, the rows a tile needs are the same
/// slices shifted by one row of tiles. Small maps (F34's 4×4 and 8×8 at 64×64) thus run a
/// few loops per plane instead of dozens of 2-element ones.
fn transform_input<T: Elem>(s: &Corr, x: &[T], start: usize, len: usize, v: &mut [T], vs: usize) {
    let (th, tw, c) = (s.th(), s.tw(), s.c);
    let (tp, nt) = (th * tw, len * th * tw);
    let plane_len = s.h * s.w;
    let (h, w, left) = (s.h as isize, s.w as isize, s.left);
    let zero = T::default();
    // Bᵀ along the columns: for each q, the th + 1 even rows' values (tw each), then the
    // odd rows'.
    let rows = (th + 1) * tw;
    let mut cols = vec![zero; 8 * rows];
    for j in 0..len {
        let sample = &x[(start + j) * c * plane_len..][..c * plane_len];
        for (ci, plane) in sample.chunks_exact(plane_len).enumerate() {
            for y in 0..2 * th + 2 {
                let at = (y % 2) * 4 * rows + (y / 2) * tw;
                let (c0, rest) = cols[at..].split_at_mut(rows);
                let (c1, rest) = rest.split_at_mut(rows);
                let (c2, c3) = rest.split_at_mut(rows);
                let (c0, c1, c2, c3) = (&mut c0[..tw], &mut c1[..tw], &mut c2[..tw], &mut c3[..tw]);
                let iy = y as isize - s.top;
                if iy < 0 || iy >= h {
                    for c in [c0, c1, c2, c3] {
                        c.fill(zero);
                    }
                    continue;
                }
                let src = &plane[iy as usize * s.w..][..s.w];
                // The patch of tile column tx: input columns 2·tx − left + (0..4); tiles
                // lo..hi lie inside the row (a loop without bounds checks, vectorized),
                // the others read zeros past its ends.
                let lo = (left.max(0) as usize).div_ceil(2).min(tw);
                let hi = if w + left >= 4 { (((w + left - 4) / 2 + 1) as usize).clamp(lo, tw) } else { lo };
                let col = |q: isize| -> [T; 4] {
                    let get = |i: isize| if (0..w).contains(&i) { src[i as usize] } else { zero };
                    let x0 = 2 * q - left;
                    [get(x0), get(x0 + 1), get(x0 + 2), get(x0 + 3)]
                };
                let put = |(d0, d1, d2, d3): (&mut T, &mut T, &mut T, &mut T), [p0, p1, p2, p3]: [T; 4]| {
                    (*d0, *d1, *d2, *d3) = (p0 - p2, p1 + p2, p2 - p1, p1 - p3);
                };
                for tx in (0..lo).chain(hi..tw) {
                    put((&mut c0[tx], &mut c1[tx], &mut c2[tx], &mut c3[tx]), col(tx as isize));
                }
                if hi > lo {
                    let base = (2 * lo as isize - left) as usize;
                    let pairs = src[base..].chunks_exact(2).zip(src[base + 2..].chunks_exact(2));
                    let outs = c0[lo..hi].iter_mut().zip(&mut c1[lo..hi]).zip(&mut c2[lo..hi]).zip(&mut c3[lo..hi]);
                    for ((((d0, d1), d2), d3), (a, b)) in outs.zip(pairs) {
                        put((d0, d1, d2, d3), [a[0], a[1], b[0], b[1]]);
                    }
                }
            }
            // Bᵀ along the rows: patch row r of tile row ty is even row ty (r = 0), odd
            // row ty (1), even row ty + 1 (2), odd row ty + 1 (3).
            let col = ci * nt + j * tp;
            let (ce, co) = cols.split_at(4 * rows);
            for q in 0..4 {
                let (e, o) = (&ce[q * rows..][..rows], &co[q * rows..][..rows]);
                let (d0, d1, d2, d3) = (&e[..tp], &o[..tp], &e[tw..], &o[tw..]);
                let (v0, rest) = v[q * vs + col..].split_at_mut(4 * vs);
                let (v1, rest) = rest.split_at_mut(4 * vs);
                let (v2, v3) = rest.split_at_mut(4 * vs);
                zip3(&mut v0[..tp], d0, d2, |a, b| a - b);
                zip3(&mut v1[..tp], d1, d2, |a, b| a + b);
                zip3(&mut v2[..tp], d2, d1, |a, b| a - b);
                zip3(&mut v3[..tp], d1, d3, |a, b| a - b);
            }
        }
    }
}

/// `d[i] = f(a[i], b[i])`.
pub(super) fn zip3<T: Elem>(d: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
        *d = f(a, b);
    }
}

/// 16 [`skew`]ed planes of `len` elements in scratch buffer `buf`, and their stride.
fn planes<T: Elem>(buf: &mut Vec<T>, len: usize) -> (&mut [T], usize) {
    let stride = skew(len);
    grow(buf, 16 * stride);
    (&mut buf[..16 * stride], stride)
}

/// The distance between the ξ planes of V and M for planes of `len` elements: past
/// `len`, to an odd multiple of 64 bytes, so that the 16 streams a transform reads or
/// writes do not all map to the same cache sets (planes 2^k apart thrash L1 and L2).
pub(super) fn skew(len: usize) -> usize {
    const LINE: usize = 16;
    let lines = len.div_ceil(LINE);
    (lines | 1) * LINE
}
