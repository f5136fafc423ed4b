//! The GEMM the conv ops run on: strided matrix views over slices, and `matmul`, split
//! into row bands over threads when asked.

use super::*;

/// A row-major matrix view: element (i, j) at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<T> {
    pub(super) ptr: *const T,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

// SAFETY: a view is only read, and only while the slice it was made from is borrowed by
// the caller of `matmul` (which waits for every band before it returns).
unsafe impl<T: Sync> Send for Mat<T> {}
unsafe impl<T: Sync> Sync for Mat<T> {}

/// Row bands of a parallel [`matmul`] start at multiples of this (gemm's micro-kernels
/// are 16 or 24 rows × 4 or 6 columns for f32 at AVX2 width).
pub(super) const ROW_ALIGN: usize = 16;

impl<T> Mat<T> {
    /// `rows × cols` stored row by row.
    pub(super) fn rows(s: &[T], cols: usize) -> Mat<T> {
        Mat { ptr: s.as_ptr(), rs: cols as isize, cs: 1 }
    }
    /// The view from row `r` on.
    ///
    /// # Safety
    /// Row `r` must lie inside the view's matrix.
    pub(super) unsafe fn skip_rows(self, r: usize) -> Mat<T> {
        Mat { ptr: unsafe { self.ptr.offset(r as isize * self.rs) }, ..self }
    }
    /// The transpose of `cols × rows` stored row by row.
    pub(super) fn transposed(s: &[T], rows: usize) -> Mat<T> {
        Mat { ptr: s.as_ptr(), rs: 1, cs: rows as isize }
    }
}

/// `dst (m × n, row-major) (+)= a (m × k) · b (k × n)`.
///
/// The caller guarantees that `a` and `b` address m×k and k×n elements within their
/// slices and `dst` holds m·n elements.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul<T: Elem>(dst: &mut [T], accumulate: bool, m: usize, n: usize, k: usize, a: Mat<T>, b: Mat<T>, par: Parallelism) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if let Parallelism::Rayon(t) = par {
        // Bands of rows, one per thread, each a single-threaded GEMM: gemm's own split
        // scales poorly on the skinny products of small feature maps (F34's 4×4 layers:
        // 136 GFLOP/s at 2 threads against 185 for two independent GEMMs).
        let band = m.div_ceil(t).next_multiple_of(ROW_ALIGN);
        if t > 1 && band < m {
            dst[..m * n].par_chunks_mut(band * n).enumerate().for_each(|(i, d)| {
                // SAFETY: rows i·band.. of `a` lie inside the view of m rows.
                let a = unsafe { a.skip_rows(i * band) };
                matmul(d, accumulate, d.len() / n, n, k, a, b, Parallelism::None)
            });
            return;
        }
    }
    // SAFETY: the views address elements inside slices that live through the call (the
    // callers build them from slices of the sizes the shapes give), `dst` is m×n and
    // does not alias `a` or `b` (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}
