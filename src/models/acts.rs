//! Activation buffers shared by the architectures: their reuse across batch shapes, their
//! size, and the residual add.

use crate::kernels::Real;

/// The buffers of a set of activations that no longer fits the batch shape, handed to the
/// next set. Training on batches whose length varies (dynamic padding) would otherwise free
/// and map hundreds of MB at every step and pay for it in page faults and TLB shootdowns;
/// reused, the memory stays mapped and the model holds the largest shape it has seen.
pub struct Recycled<F> {
    free: Vec<Vec<F>>,
    /// The logits / loss-chunk buffer, which the head sizes itself.
    pub logits: Vec<F>,
}

impl<F> Default for Recycled<F> {
    fn default() -> Self {
        Recycled { free: Vec::new(), logits: Vec::new() }
    }
}

impl<F: Real> Recycled<F> {
    pub fn new(free: Vec<Vec<F>>, logits: Vec<F>) -> Self {
        Recycled { free, logits }
    }

    /// A zeroed buffer of `len` elements: the smallest free one that holds them, else the
    /// largest free one, grown, else a new one.
    pub fn take(&mut self, len: usize) -> Vec<F> {
        let cap = |i: &usize| self.free[*i].capacity();
        let fits = (0..self.free.len()).filter(|i| cap(i) >= len).min_by_key(cap);
        let mut v = match fits.or_else(|| (0..self.free.len()).max_by_key(cap)) {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        };
        v.clear();
        v.resize(len, F::zero());
        v
    }
}

/// Bytes held by buffers (their capacity, what the allocator gave them).
pub(crate) fn held<T>(bufs: &[&Vec<T>]) -> usize {
    bufs.iter().map(|v| v.capacity()).sum::<usize>() * std::mem::size_of::<T>()
}

pub(crate) fn add_inplace<F: Real>(dst: &mut [F], src: &[F]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_are_zeroed_and_reused() {
        let mut pool = Recycled::<f32>::new(vec![vec![7.0; 10], vec![5.0; 100], vec![3.0; 40]], Vec::new());
        let ptr40 = pool.free[2].as_ptr();
        let v = pool.take(30); // the smallest that holds 30: the 40
        assert_eq!((v.len(), v.as_ptr()), (30, ptr40));
        assert!(v.iter().all(|&x| x == 0.0));
        let w = pool.take(500); // none holds 500: the largest (100) grows
        assert!(w.len() == 500 && w.iter().all(|&x| x == 0.0) && pool.free.len() == 1);
        assert_eq!(pool.take(3).capacity(), 10);
        assert_eq!(pool.take(3).len(), 3); // nothing left: a new one
    }
}
