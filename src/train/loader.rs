//! Batches of an epoch, prepared on worker threads while the model trains.
//!
//! In: a [`Dataset`] (images kept as bytes), an order of its images (the epoch's
//! permutation, [`super::data::epoch_order`]) and a batch size. Out: the batches, in that
//! order, each normalized to [−1, 1] ([`Dataset::batch`]), handed to a callback.
//!
//! Invariants: the sequence of batches does not depend on [`Prefetch`] — batch `k` is
//! `ds.batch(&order[k·b..(k+1)·b])` whichever thread makes it, and the callback sees
//! batch `k` before batch `k + 1` — so a run is the same with or without prefetch, and a
//! resumed run stays exact. Worker `w` of `W` makes batches `w, w + W, …` and hands them
//! over a bounded channel (`std::sync::mpsc::sync_channel(depth)`), so at most
//! `W·(depth + 1)` batches exist ahead of the one training. When the callback fails (an
//! error, a non-finite loss), the receivers are dropped, every blocked `send` fails, the
//! workers return, and they are joined before [`for_each_batch`] returns: no thread
//! outlives an epoch.

use super::data::Dataset;
use std::sync::mpsc;

/// One batch: (N, C, H, W) f32 values in row-major order, and N labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// How batches are prepared: by `workers` threads (0: on the caller's thread, when they
/// are needed), each at most `depth` batches ahead in its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefetch {
    pub workers: usize,
    pub depth: usize,
}

impl Prefetch {
    /// No threads: each batch is made when the loop asks for it.
    pub const OFF: Prefetch = Prefetch { workers: 0, depth: 0 };
}

impl Default for Prefetch {
    /// One worker, two batches ahead: normalizing a batch costs far less than a training
    /// step, so one thread keeps up, and the queue absorbs jitter.
    fn default() -> Prefetch {
        Prefetch { workers: 1, depth: 2 }
    }
}

/// Calls `f(step, batch)` for the batches of `order` (chunks of `batch_size`, the last
/// one possibly shorter), `step` counting from 0, in order. Stops at the first error of
/// `f` and returns it, after the workers have stopped.
pub fn for_each_batch<E>(
    ds: &Dataset,
    order: &[usize],
    batch_size: usize,
    prefetch: Prefetch,
    mut f: impl FnMut(usize, Batch) -> Result<(), E>,
) -> Result<(), E> {
    let make = |idx: &[usize]| {
        let (x, y) = ds.batch(idx);
        Batch { x, y }
    };
    let chunks: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
    let workers = prefetch.workers.min(chunks.len());
    if workers == 0 {
        for (k, idx) in chunks.iter().enumerate() {
            f(k, make(idx))?;
        }
        return Ok(());
    }
    std::thread::scope(|s| {
        let chunks = &chunks;
        let make = &make;
        let receivers: Vec<mpsc::Receiver<Batch>> = (0..workers)
            .map(|w| {
                let (tx, rx) = mpsc::sync_channel(prefetch.depth);
                std::thread::Builder::new()
                    .name(format!("cnnc-batches-{w}"))
                    .spawn_scoped(s, move || {
                        for idx in chunks.iter().skip(w).step_by(workers) {
                            if tx.send(make(idx)).is_err() {
                                return; // the loop stopped: nobody wants more batches
                            }
                        }
                    })
                    .expect("a batch thread starts");
                rx
            })
            .collect();
        for k in 0..chunks.len() {
            // A receive fails only if its worker panicked; the scope then re-raises the
            // panic when it joins the worker.
            let Ok(batch) = receivers[k % workers].recv() else { break };
            f(k, batch)?;
        }
        Ok(())
    })
}
