//! Index sets of the unified layers, explicit and lazy.
//!
//! In: the geometry of one convolution ([`ConvGeometry`]) or pooling ([`PoolGeometry`]).
//! Out: for a unit, the paper's index sets, as iterators that never materialize more
//! than one kernel axis at a time:
//! - forward: `s(ℓ,i)` and `a(ℓ,i)` together ([`ConvGeometry::s_set`] yields pairs
//!   (input, tap)), `c(ℓ,i)` ([`ConvGeometry::c`]), `t(ℓ,i)` ([`PoolGeometry::t_set`]);
//! - backward: `j(ℓ,i)` and `h(ℓ,i)` together ([`ConvGeometry::j_set`] yields pairs
//!   (conv output, weight)), `d(ℓ,i)` ([`PoolGeometry::d_set`]).
//!
//! Flat indices follow PyTorch's memory order: a tensor (C,H,W) is indexed
//! `(c·H + y)·W + x`; a tap `a` indexes one output channel's kernel (C_in/groups, KH, KW);
//! a weight index `h` indexes the whole weight (C_out, C_in/groups, KH, KW).
//!
//! Counts come in closed form per axis ([`Axis::taps`] is O(1) per output position) and
//! multiply across axes and channels: `ε = (C_in/groups) · C_out · A_h · A_w`, where
//! `A` is an axis' number of (output position, tap) pairs that read real input.
//! Tests check every count against plain enumeration.

use std::ops::Range;

/// One spatial axis of a convolution. Output position `o` with tap `k` reads input
/// position `o·stride − pad_begin + k·dilation`, when that lies in `0..input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    pub input: u64,
    pub output: u64,
    pub kernel: u64,
    pub stride: u64,
    pub pad_begin: u64,
    pub dilation: u64,
}

impl Axis {
    /// The taps of output position `o` that read real (not padded) input: a contiguous range.
    pub fn taps(&self, o: u64) -> Range<u64> {
        // Input position of tap k: o·s − p + k·d. We need 0 ≤ that ≤ input − 1.
        let origin = (o * self.stride) as i128 - self.pad_begin as i128;
        let d = self.dilation as i128;
        let lo = if origin >= 0 { 0 } else { (-origin + d - 1) / d };
        let last_in = self.input as i128 - 1 - origin; // k·d ≤ last_in
        if last_in < 0 {
            return 0..0;
        }
        let hi = (last_in / d + 1).min(self.kernel as i128);
        if hi <= lo {
            0..0
        } else {
            lo as u64..hi as u64
        }
    }

    /// Input position read by output `o` through tap `k` (valid only for `k ∈ taps(o)`).
    #[inline]
    pub fn input_of(&self, o: u64, k: u64) -> u64 {
        o * self.stride + k * self.dilation - self.pad_begin
    }

    /// Number of (output position, tap) pairs that read real input: `Σ_o |taps(o)|`.
    pub fn connections(&self) -> u64 {
        (0..self.output).map(|o| self.taps(o).end - self.taps(o).start).sum()
    }

    /// The (output position, tap) pairs that read input position `i`, by increasing
    /// output position.
    pub fn readers(&self, i: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for k in (0..self.kernel).rev() {
            let t = i as i128 + self.pad_begin as i128 - (k * self.dilation) as i128;
            if t >= 0 && t % self.stride as i128 == 0 {
                let o = (t / self.stride as i128) as u64;
                if o < self.output {
                    out.push((o, k));
                }
            }
        }
        out
    }
}

/// A convolution seen as the paper's layer: a linear layer is the convolution whose
/// kernel covers its whole (C,H,W) input and whose output is (N,1,1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub in_channels: u64,
    pub out_channels: u64,
    pub groups: u64,
    pub h: Axis,
    pub w: Axis,
}

/// One connection of a conv output unit: `input` ∈ s(ℓ,i), `tap` ∈ a(ℓ,i), same position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Connection {
    pub input: u64,
    pub tap: u64,
}

/// One connection of an input unit: `output` ∈ j(ℓ,i), `weight` ∈ h(ℓ,i), same position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackConnection {
    pub output: u64,
    pub weight: u64,
}

impl ConvGeometry {
    /// `M_{ℓ-1}`: elements of the input.
    pub fn m_in(&self) -> u64 {
        self.in_channels * self.h.input * self.w.input
    }
    /// `M'_ℓ`: elements of the convolution output.
    pub fn m_out(&self) -> u64 {
        self.out_channels * self.h.output * self.w.output
    }
    /// Input channels seen by one output channel.
    pub fn group_in(&self) -> u64 {
        self.in_channels / self.groups
    }
    /// Output channels of one group.
    pub fn group_out(&self) -> u64 {
        self.out_channels / self.groups
    }
    /// Taps of one output channel's kernel (C_in/groups · KH · KW).
    pub fn taps_per_kernel(&self) -> u64 {
        self.group_in() * self.h.kernel * self.w.kernel
    }

    /// `ε_ℓ = Σ_i |s(ℓ,i)|`, in closed form. `None` on u128 overflow (impossible for
    /// shapes that passed lowering's size limits).
    pub fn connections(&self) -> Option<u128> {
        (self.group_in() as u128)
            .checked_mul(self.out_channels as u128)?
            .checked_mul(self.h.connections() as u128)?
            .checked_mul(self.w.connections() as u128)
    }

    /// `|s(ℓ,i)|` for conv output unit `i`, in closed form.
    pub fn s_len(&self, unit: u64) -> u64 {
        let (_, oy, ox) = self.out_coords(unit);
        let ty = self.h.taps(oy);
        let tx = self.w.taps(ox);
        self.group_in() * (ty.end - ty.start) * (tx.end - tx.start)
    }

    /// `|j(ℓ,i)|` for input unit `i`, in closed form.
    pub fn j_len(&self, unit: u64) -> u64 {
        let (_, iy, ix) = self.in_coords(unit);
        self.group_out() * self.h.readers(iy).len() as u64 * self.w.readers(ix).len() as u64
    }

    /// (channel, y, x) of a conv output unit.
    pub fn out_coords(&self, unit: u64) -> (u64, u64, u64) {
        let hw = self.h.output * self.w.output;
        (unit / hw, unit % hw / self.w.output, unit % self.w.output)
    }
    /// (channel, y, x) of an input unit.
    pub fn in_coords(&self, unit: u64) -> (u64, u64, u64) {
        let hw = self.h.input * self.w.input;
        (unit / hw, unit % hw / self.w.input, unit % self.w.input)
    }

    /// `c(ℓ,i)`: the output channel of conv output unit `i`.
    pub fn c(&self, unit: u64) -> u64 {
        unit / (self.h.output * self.w.output)
    }

    /// `s(ℓ,i)` with `a(ℓ,i)`: the inputs read by conv output unit `i < M'` and the
    /// kernel taps that read them, in increasing order of both.
    pub fn s_set(&self, unit: u64) -> SIter {
        let (co, oy, ox) = self.out_coords(unit);
        let g = co / self.group_out();
        let ys = self.h.taps(oy);
        let xs = self.w.taps(ox);
        let empty = ys.is_empty() || xs.is_empty() || self.group_in() == 0;
        SIter {
            geo: *self,
            cin_base: g * self.group_in(),
            oy,
            ox,
            ys: ys.clone(),
            xs: xs.clone(),
            ci: if empty { self.group_in() } else { 0 },
            ky: ys.start,
            kx: xs.start,
        }
    }

    /// `j(ℓ,i)` with `h(ℓ,i)`: the conv outputs that read input unit `i < M` and the
    /// weights they read it through. This is exactly the transpose of `s`/`a`.
    pub fn j_set(&self, unit: u64) -> JIter {
        let (ci, iy, ix) = self.in_coords(unit);
        let g = ci / self.group_in();
        JIter {
            geo: *self,
            ci_local: ci - g * self.group_in(),
            co_range: g * self.group_out()..(g + 1) * self.group_out(),
            ys: self.h.readers(iy),
            xs: self.w.readers(ix),
            co: g * self.group_out(),
            y: 0,
            x: 0,
        }
    }

    /// Calls `f(input, tap)` for every connection of unit `i`: the fastest enumeration.
    #[inline]
    pub fn for_each_s(&self, unit: u64, mut f: impl FnMut(u64, u64)) {
        let (co, oy, ox) = self.out_coords(unit);
        let g = co / self.group_out();
        let ys = self.h.taps(oy);
        let xs = self.w.taps(ox);
        let (kh, kw) = (self.h.kernel, self.w.kernel);
        let (ih, iw) = (self.h.input, self.w.input);
        for cl in 0..self.group_in() {
            let cin = g * self.group_in() + cl;
            for ky in ys.clone() {
                let row = (cin * ih + self.h.input_of(oy, ky)) * iw;
                let tap_row = (cl * kh + ky) * kw;
                for kx in xs.clone() {
                    f(row + self.w.input_of(ox, kx), tap_row + kx);
                }
            }
        }
    }
}

/// Iterator over `s(ℓ,i)` × `a(ℓ,i)`; see [`ConvGeometry::s_set`].
#[derive(Clone, Debug)]
pub struct SIter {
    geo: ConvGeometry,
    cin_base: u64,
    oy: u64,
    ox: u64,
    ys: Range<u64>,
    xs: Range<u64>,
    ci: u64,
    ky: u64,
    kx: u64,
}

impl Iterator for SIter {
    type Item = Connection;
    #[inline]
    fn next(&mut self) -> Option<Connection> {
        if self.ci >= self.geo.group_in() {
            return None;
        }
        let g = &self.geo;
        let cin = self.cin_base + self.ci;
        let input = (cin * g.h.input + g.h.input_of(self.oy, self.ky)) * g.w.input + g.w.input_of(self.ox, self.kx);
        let tap = (self.ci * g.h.kernel + self.ky) * g.w.kernel + self.kx;
        self.kx += 1;
        if self.kx == self.xs.end {
            self.kx = self.xs.start;
            self.ky += 1;
            if self.ky == self.ys.end {
                self.ky = self.ys.start;
                self.ci += 1;
            }
        }
        Some(Connection { input, tap })
    }
}

/// Iterator over `j(ℓ,i)` × `h(ℓ,i)`; see [`ConvGeometry::j_set`].
#[derive(Clone, Debug)]
pub struct JIter {
    geo: ConvGeometry,
    ci_local: u64,
    co_range: Range<u64>,
    ys: Vec<(u64, u64)>,
    xs: Vec<(u64, u64)>,
    co: u64,
    y: usize,
    x: usize,
}

impl Iterator for JIter {
    type Item = BackConnection;
    fn next(&mut self) -> Option<BackConnection> {
        if self.ys.is_empty() || self.xs.is_empty() || self.co >= self.co_range.end {
            return None;
        }
        let g = &self.geo;
        let (oy, ky) = self.ys[self.y];
        let (ox, kx) = self.xs[self.x];
        let output = (self.co * g.h.output + oy) * g.w.output + ox;
        let weight = ((self.co * g.group_in() + self.ci_local) * g.h.kernel + ky) * g.w.kernel + kx;
        self.x += 1;
        if self.x == self.xs.len() {
            self.x = 0;
            self.y += 1;
            if self.y == self.ys.len() {
                self.y = 0;
                self.co += 1;
            }
        }
        Some(BackConnection { output, weight })
    }
}

/// One spatial axis of a pooling. Output `o`'s window covers input positions
/// `o·stride − pad_begin .. o·stride − pad_begin + kernel`, clipped to `0..input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolAxis {
    pub input: u64,
    pub output: u64,
    pub kernel: u64,
    pub stride: u64,
    pub pad_begin: u64,
}

impl PoolAxis {
    /// The input positions in output `o`'s window.
    pub fn window(&self, o: u64) -> Range<u64> {
        let start = (o * self.stride) as i128 - self.pad_begin as i128;
        let end = start + self.kernel as i128;
        let lo = start.clamp(0, self.input as i128) as u64;
        let hi = end.clamp(0, self.input as i128) as u64;
        lo..hi.max(lo)
    }

    /// The outputs whose window contains input position `i`.
    pub fn containing(&self, i: u64) -> Range<u64> {
        // o·s − p ≤ i  and  i < o·s − p + K   ⇔   (i + p − K + 1)/s ≤ o ≤ (i + p)/s
        let s = self.stride as i128;
        let top = i as i128 + self.pad_begin as i128;
        let lo_num = top - self.kernel as i128 + 1;
        let lo = if lo_num <= 0 { 0 } else { (lo_num + s - 1) / s };
        let hi = (top / s + 1).min(self.output as i128);
        if hi <= lo {
            0..0
        } else {
            lo as u64..hi as u64
        }
    }
}

/// A pooling over (C,H,W) → (C,H',W'), channel by channel. A global pooling is the
/// pooling whose window is the whole input plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub channels: u64,
    pub h: PoolAxis,
    pub w: PoolAxis,
}

impl PoolGeometry {
    /// `T_ℓ`, as the paper and the reference code count it: the kernel's area, whatever
    /// its stride, overlap or padding.
    pub fn window_size(&self) -> u64 {
        self.h.kernel * self.w.kernel
    }
    pub fn m_in(&self) -> u64 {
        self.channels * self.h.input * self.w.input
    }
    pub fn m_out(&self) -> u64 {
        self.channels * self.h.output * self.w.output
    }

    /// `t(ℓ,i)`: the elements of `v` pooled into output unit `i`, increasing. Positions
    /// in the padding are not elements of `v`, so border windows are smaller than `T`.
    pub fn t_set(&self, unit: u64) -> impl Iterator<Item = u64> + Clone + use<> {
        let hw = self.h.output * self.w.output;
        let (c, oy, ox) = (unit / hw, unit % hw / self.w.output, unit % self.w.output);
        let (ih, iw) = (self.h.input, self.w.input);
        let xs = self.w.window(ox);
        self.h.window(oy).flat_map(move |y| xs.clone().map(move |x| (c * ih + y) * iw + x))
    }

    /// `d(ℓ,i)`: the output units whose window contains element `i` of `v`, increasing.
    pub fn d_set(&self, unit: u64) -> impl Iterator<Item = u64> + Clone + use<> {
        let hw = self.h.input * self.w.input;
        let (c, iy, ix) = (unit / hw, unit % hw / self.w.input, unit % self.w.input);
        let (oh, ow) = (self.h.output, self.w.output);
        let xs = self.w.containing(ix);
        self.h.containing(iy).flat_map(move |y| xs.clone().map(move |x| (c * oh + y) * ow + x))
    }
}
