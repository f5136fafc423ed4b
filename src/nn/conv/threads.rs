//! How the conv ops use rayon's threads: how many samples a block of the batch holds,
//! and whether a GEMM runs on one thread or many.

use super::*;

/// [`Geom::block`] for `n` samples of `cols` GEMM columns each, over `threads` threads.
pub(super) fn block_len(n: usize, cols: usize, threads: usize) -> usize {
    let (n, t, p) = (n.max(1), threads.max(1), cols.max(1));
    let bs = MIN_COLUMNS.div_ceil(p).clamp(1, n);
    if t == 1 {
        return bs;
    }
    let full = n / bs;
    if full >= t {
        n.div_ceil(full - full % t)
    } else if n >= t && n.div_ceil(t) * p >= MIN_SPLIT_COLUMNS {
        n.div_ceil(t)
    } else {
        bs
    }
}

/// Elements per task of the element-wise loops split over threads.
pub(super) const CHUNK: usize = 1 << 15;

/// See [`Geom::block`].
pub(super) const MIN_COLUMNS: usize = 256;
/// See [`Geom::block`].
pub(super) const MIN_SPLIT_COLUMNS: usize = 32;

pub(super) fn parallelism(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// The threads of the rayon pool the op runs in (the global one: `RAYON_NUM_THREADS`, or
/// one per logical CPU).
pub(super) fn threads() -> usize {
    rayon::current_num_threads()
}
