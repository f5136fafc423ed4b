//! The sizes of one conv call ([`Geom`]), and the gather and scatter of receptive
//! fields between the input and a GEMM's columns (im2col, col2im).

use super::*;

/// The sizes of one call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) co: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) groups: usize,
    pub(super) spec: ConvSpec,
    /// rayon's threads, which the batch's blocks are spread over.
    pub(super) threads: usize,
}

impl Geom {
    /// Input channels per group.
    pub(super) fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Output channels per group.
    pub(super) fn cog(&self) -> usize {
        self.co / self.groups
    }
    /// Rows of `cols`: one receptive field's length.
    pub(super) fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    /// Output positions.
    pub(super) fn p(&self) -> usize {
        self.oh * self.ow
    }
    pub(super) fn in_sample(&self) -> usize {
        self.c * self.h * self.w
    }
    pub(super) fn out_sample(&self) -> usize {
        self.co * self.p()
    }
    /// Whether `cols` is the input itself (1×1, stride 1, no padding).
    pub(super) fn direct(&self) -> bool {
        let s = &self.spec;
        self.kh == 1 && self.kw == 1 && s.stride == [1, 1] && s.pad == [0; 4]
    }

    pub(super) fn of(spec: ConvSpec, x: &Shape, w: &Shape) -> candle_core::Result<Geom> {
        let (n, c, h, wd) = x.dims4()?;
        let (co, cg, kh, kw) = w.dims4()?;
        let g = spec.groups;
        if g == 0 || spec.stride.contains(&0) || spec.dilation.contains(&0) {
            candle_core::bail!("conv: groups, stride and dilation must be at least 1 ({spec:?})")
        }
        if c % g != 0 || co % g != 0 || cg != c / g {
            candle_core::bail!("conv: input {x:?} and weight {w:?} do not fit {g} groups")
        }
        let out = |len: usize, before: usize, after: usize, k: usize, d: usize, s: usize| -> candle_core::Result<usize> {
            if k == 0 {
                candle_core::bail!("conv: empty kernel")
            }
            let span = d * (k - 1) + 1;
            let padded = len + before + after;
            if padded < span {
                candle_core::bail!("conv: kernel {k} (dilation {d}) does not fit input {len} padded by {before}+{after}")
            }
            Ok((padded - span) / s + 1)
        };
        let oh = out(h, spec.pad[0], spec.pad[2], kh, spec.dilation[0], spec.stride[0])?;
        let ow = out(wd, spec.pad[1], spec.pad[3], kw, spec.dilation[1], spec.stride[1])?;
        Ok(Geom { n, c, h, w: wd, co, kh, kw, oh, ow, groups: g, spec, threads: threads() })
    }

    /// The output columns `ox` whose input column `ox·sw − left + kx·dw` lies in the
    /// input, as a range (empty when none does).
    pub(super) fn valid_cols(&self, kx: usize) -> std::ops::Range<usize> {
        let (sw, left, off) = (self.spec.stride[1] as isize, self.spec.pad[1] as isize, (kx * self.spec.dilation[1]) as isize);
        // ix = ox·sw + off − left ∈ [0, w)  ⇔  ox ∈ [ceil((left − off)/sw), ceil((w + left − off)/sw)).
        let ceil_div = |a: isize, b: isize| if a <= 0 { -((-a) / b) } else { (a + b - 1) / b };
        let lo = ceil_div(left - off, sw).clamp(0, self.ow as isize) as usize;
        let hi = ceil_div(self.w as isize + left - off, sw).clamp(0, self.ow as isize) as usize;
        lo..hi.max(lo)
    }

    /// The input row of output row `oy` and kernel row `ky`, if inside the input.
    pub(super) fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.spec.stride[0] + ky * self.spec.dilation[0]) as isize - self.spec.pad[0] as isize;
        (iy >= 0 && (iy as usize) < self.h).then_some(iy as usize)
    }

    /// For each kernel column `kx`: the output columns that read inside the input, and
    /// the input column of the first of them.
    pub(super) fn taps(&self) -> Vec<(std::ops::Range<usize>, usize)> {
        (0..self.kw)
            .map(|kx| {
                let xs = self.valid_cols(kx);
                let ix0 = if xs.is_empty() { 0 } else { xs.start * self.spec.stride[1] + kx * self.spec.dilation[1] - self.spec.pad[1] };
                (xs, ix0)
            })
            .collect()
    }

    /// Gathers group `g`'s receptive fields of one sample `x` (C, H, W) into `cols`: K rows
    /// of P, row `r` at `cols[r·ld..]` (a sample's columns within a block's matrix).
    pub(super) fn im2col<T: Elem>(&self, x: &[T], g: usize, cols: &mut [T], ld: usize) {
        let (hw, p, ow, sw) = (self.h * self.w, self.p(), self.ow, self.spec.stride[1]);
        let taps = self.taps();
        for ci in 0..self.cg() {
            let plane = &x[(g * self.cg() + ci) * hw..][..hw];
            for ky in 0..self.kh {
                for (kx, (xs, ix0)) in taps.iter().enumerate() {
                    let row = &mut cols[((ci * self.kh + ky) * self.kw + kx) * ld..][..p];
                    for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
                        let Some(iy) = self.in_row(oy, ky).filter(|_| !xs.is_empty()) else {
                            out.fill(T::default());
                            continue;
                        };
                        out[..xs.start].fill(T::default());
                        out[xs.end..].fill(T::default());
                        let src = &plane[iy * self.w..][..self.w];
                        if sw == 1 {
                            out[xs.clone()].copy_from_slice(&src[*ix0..ix0 + xs.len()]);
                        } else if sw == 2 {
                            // Pairs instead of step_by: vectorized (a 7×7/2 stem's gather
                            // was 20 % of its backward).
                            let (dst, last) = (&mut out[xs.clone()], xs.len() - 1);
                            for (o, pair) in dst[..last].iter_mut().zip(src[*ix0..].chunks_exact(2)) {
                                *o = pair[0];
                            }
                            dst[last] = src[ix0 + 2 * last];
                        } else {
                            for (o, &v) in out[xs.clone()].iter_mut().zip(src[*ix0..].iter().step_by(sw)) {
                                *o = v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds `cols` (K rows of P, row `r` at `cols[r·ld..]`) back into group `g` of one
    /// sample's input gradient `dx` (C, H, W): the adjoint of [`Geom::im2col`].
    pub(super) fn col2im<T: Elem>(&self, cols: &[T], g: usize, dx: &mut [T], ld: usize) {
        let (hw, p, ow, sw) = (self.h * self.w, self.p(), self.ow, self.spec.stride[1]);
        let taps = self.taps();
        for ci in 0..self.cg() {
            let plane = &mut dx[(g * self.cg() + ci) * hw..][..hw];
            for ky in 0..self.kh {
                for (kx, (xs, ix0)) in taps.iter().enumerate() {
                    if xs.is_empty() {
                        continue;
                    }
                    let row = &cols[((ci * self.kh + ky) * self.kw + kx) * ld..][..p];
                    for (oy, src) in row.chunks_exact(ow).enumerate() {
                        let Some(iy) = self.in_row(oy, ky) else { continue };
                        let dst = &mut plane[iy * self.w..][..self.w];
                        let src = &src[xs.clone()];
                        if sw == 1 {
                            for (d, &s) in dst[*ix0..ix0 + xs.len()].iter_mut().zip(src) {
                                *d += s;
                            }
                        } else {
                            for (d, &s) in dst[*ix0..].iter_mut().step_by(sw).zip(src) {
                                *d += s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Samples per block: enough that a block's GEMMs have at least [`MIN_COLUMNS`]
    /// columns (small feature maps, e.g. F34's 7×7 layers, would otherwise run GEMMs of
    /// 49 columns, and the weight gradient would be read and written once per sample).
    /// With several threads, the block count is a multiple of the thread count (no
    /// thread waits on another's last block), and where that leaves fewer blocks than
    /// threads, the batch is split evenly over the threads as long as each block keeps
    /// [`MIN_SPLIT_COLUMNS`] (gather, GEMM and scatter then all run in parallel).
    pub(super) fn block(&self) -> usize {
        block_len(self.n, self.p(), self.threads)
    }
}
