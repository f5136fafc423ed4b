//! Scratch memory of the conv ops: a block of samples with its per-thread buffers
//! ([`Block`]), and the process-wide pool of large buffers ([`Pooled`]).

use super::*;

/// A block of samples `start..start + len`, and its scratch buffers.
pub(super) struct Block<T: Elem> {
    pub(super) start: usize,
    pub(super) len: usize,
    /// K × (len·P): the block's receptive fields, sample j in columns j·P..(j+1)·P.
    pub(super) cols: Vec<T>,
    /// Co/groups × (len·P): one group's outputs (or output gradients), same columns.
    pub(super) out: Vec<T>,
}

/// `n` zeros, written by rayon's threads (an activation is megabytes; one thread zeroing
/// it leaves the others idle).
pub(super) fn zeros<T: Elem>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(T::default(), n).with_min_len(CHUNK));
    v
}

/// Makes `v` at least `n` long (its contents are scratch: every use writes before it reads).
pub(super) fn grow<T: Elem>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

impl<T: Elem> Block<T> {
    /// A block with this thread's scratch buffers, kept from earlier calls (no
    /// allocation or zeroing per call once the largest layer has run).
    pub(super) fn new() -> Block<T> {
        let (cols, out) = T::scratch().with(|s| {
            let mut s = s.borrow_mut();
            (s.pop().unwrap_or_default(), s.pop().unwrap_or_default())
        });
        Block { start: 0, len: 0, cols, out }
    }
    pub(super) fn at(&mut self, g: &Geom, start: usize) -> &mut Block<T> {
        self.start = start;
        self.len = g.block().min(g.n - start);
        self
    }
    /// The block's columns.
    pub(super) fn nc(&self, g: &Geom) -> usize {
        self.len * g.p()
    }
    /// Fills `cols` with group `grp`'s receptive fields of the block's samples of `x`.
    pub(super) fn gather_cols(&mut self, g: &Geom, x: &[T], grp: usize) {
        self.gather_cols_ld(g, x, grp, self.nc(g));
    }
    /// [`Block::gather_cols`] with rows `ld` apart.
    pub(super) fn gather_cols_ld(&mut self, g: &Geom, x: &[T], grp: usize, ld: usize) {
        let p = g.p();
        grow(&mut self.cols, g.k() * ld);
        for j in 0..self.len {
            let xs = &x[(self.start + j) * g.in_sample()..][..g.in_sample()];
            g.im2col(xs, grp, &mut self.cols[j * p..], ld);
        }
    }
    /// Fills `out` with group `grp`'s rows of the block's samples of `d` (N, Co, P).
    pub(super) fn gather_out(&mut self, g: &Geom, d: &[T], grp: usize) {
        let (nc, p, cog) = (self.nc(g), g.p(), g.cog());
        grow(&mut self.out, cog * nc);
        for j in 0..self.len {
            let ds = &d[(self.start + j) * g.out_sample() + grp * cog * p..][..cog * p];
            for (co, row) in ds.chunks_exact(p).enumerate() {
                self.out[co * nc + j * p..][..p].copy_from_slice(row);
            }
        }
    }
}

impl<T: Elem> Drop for Block<T> {
    fn drop(&mut self) {
        let (cols, out) = (std::mem::take(&mut self.cols), std::mem::take(&mut self.out));
        T::scratch().with(|s| {
            let mut s = s.borrow_mut();
            // Two per thread at most: a rayon job's blocks run one at a time.
            if s.len() < 2 {
                s.push(out);
                s.push(cols);
            }
        });
    }
}

/// A scratch vector from a process-wide pool, given back when dropped: for buffers too
/// big to zero on every call (Winograd's transformed kernels, kept from a forward to its
/// backward, and its weight-gradient accumulators: 4 MiB each for a 256→256 layer, where
/// zeroing them took 15 % of the layer's training step). Its contents are arbitrary:
/// every use writes before it reads.
pub(super) struct Pooled<T: Elem> {
    pub(super) buf: Vec<T>,
    pub(super) len: usize,
}

/// The most bytes the pool keeps: past it, given-back buffers are freed.
pub(super) const POOL_BYTES: usize = 512 << 20;

impl<T: Elem> Pooled<T> {
    /// `len` elements: the smallest spare buffer that holds them, else the largest one
    /// grown (zeros only where it grows), else a new one.
    pub(super) fn take(len: usize) -> Pooled<T> {
        let spare = {
            let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
            let fit = (0..pool.len()).filter(|&i| pool[i].len() >= len).min_by_key(|&i| pool[i].len());
            let pick = fit.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
            pick.map(|i| pool.swap_remove(i))
        };
        let mut buf = spare.unwrap_or_default();
        grow(&mut buf, len);
        Pooled { buf, len }
    }
}

impl<T: Elem> Drop for Pooled<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let bytes = |b: &Vec<T>| b.len() * std::mem::size_of::<T>();
        let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
        if pool.iter().map(bytes).sum::<usize>() + bytes(&buf) <= POOL_BYTES {
            pool.push(buf);
        }
    }
}

impl<T: Elem> std::ops::Deref for Pooled<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T: Elem> std::ops::DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}
