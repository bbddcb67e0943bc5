//! Inverted dropout (torch.nn.Dropout semantics): kept elements are scaled by 1 / (1 - p).
//!
//! Masks are never stored. Element i of a mask is a pure function of the mask's seed and i
//! (the SplitMix64 stream at position i, `rng::mix`), so the backward draws the same mask
//! again from the seed, at any offset and on any thread, and gradient checkpointing's
//! second forward does too. A (B, NH, T, T) attention-dropout mask costs 16 bytes.

use rayon::prelude::*;

use super::cpu::simd;
use super::Real;
use crate::rng::{mix, SplitMix64, GAMMA};

/// Elements per parallel task of `apply`.
const BLOCK: usize = 16 * 1024;

/// One dropout mask: element i is 0 with probability p, else 1 / (1 - p).
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    seed: u64,
    /// Element i is dropped when its 64-bit draw is below this (p * 2^64).
    threshold: u64,
    keep_scale: f64,
}

impl Dropout {
    /// A fresh mask (one draw from `rng`) when `active` and p > 0; None (the identity) else.
    pub fn draw(p: f64, active: bool, rng: &mut SplitMix64) -> Option<Self> {
        (active && p > 0.0).then(|| Self::new(p, rng.next_u64()))
    }

    /// The mask of `seed` for rate p in [0, 1).
    pub fn new(p: f64, seed: u64) -> Self {
        debug_assert!((0.0..1.0).contains(&p), "dropout rate {p}");
        // p * 2^64 as an integer; p < 1 keeps it below 2^64
        let threshold = (p * 18_446_744_073_709_551_616.0) as u64;
        Self { seed, threshold, keep_scale: 1.0 / (1.0 - p) }
    }

    /// Whether element i of the mask is kept.
    #[inline(always)]
    pub fn keeps(&self, i: usize) -> bool {
        mix(self.seed.wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GAMMA))) >= self.threshold
    }

    /// The value of a kept element, 1 / (1 - p).
    pub fn scale<F: Real>(&self) -> F {
        F::lit(self.keep_scale)
    }

    /// x[j] *= mask[offset + j]: the forward on activations, the backward on their gradients.
    pub fn apply<F: Real>(&self, x: &mut [F], offset: usize) {
        x.par_chunks_mut(BLOCK).enumerate().for_each(|(k, xs)| simd(#[inline(always)] move || self.apply_row(xs, offset + k * BLOCK)));
    }

    /// `apply` on the calling thread, for short rows inside a parallel task.
    #[inline(always)]
    pub fn apply_row<F: Real>(&self, x: &mut [F], offset: usize) {
        let keep = self.scale::<F>();
        for (j, v) in x.iter_mut().enumerate() {
            *v = if self.keeps(offset + j) { *v * keep } else { F::zero() };
        }
    }
}

/// `Dropout::apply` when there is a mask; nothing without one.
pub fn dropout_apply<F: Real>(x: &mut [F], mask: Option<&Dropout>, offset: usize) {
    if let Some(d) = mask {
        d.apply(x, offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_expected_fraction_and_scales() {
        let d = Dropout::new(0.1, 1);
        let mut x = vec![1.0f64; 100_000];
        d.apply(&mut x, 0);
        let kept = x.iter().filter(|&&m| m != 0.0).count() as f64 / x.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        assert!(x.iter().all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-15));
        let mean: f64 = x.iter().sum::<f64>() / x.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "expected value preserved: {mean}");
    }

    /// The mask of a slice at an offset is that part of the whole mask, whatever the blocks
    /// of the parallel loop; another seed gives another mask.
    #[test]
    fn mask_is_a_function_of_seed_and_index() {
        let n = 3 * BLOCK + 17;
        let d = Dropout::new(0.3, 42);
        let mut whole = vec![1.0f32; n];
        d.apply(&mut whole, 0);
        for (start, len) in [(0, 5), (BLOCK - 3, 10), (2 * BLOCK + 100, BLOCK + 17 - 100)] {
            let mut part = vec![1.0f32; len];
            d.apply(&mut part, start);
            assert_eq!(part, whole[start..start + len], "offset {start}");
            assert!((0..len).all(|j| d.keeps(start + j) == (whole[start + j] != 0.0)));
        }
        let mut other = vec![1.0f32; n];
        Dropout::new(0.3, 43).apply(&mut other, 0);
        assert_ne!(other, whole);
    }

    #[test]
    fn draw_is_none_when_inactive() {
        let mut rng = SplitMix64::new(5);
        assert!(Dropout::draw(0.1, false, &mut rng).is_none());
        assert!(Dropout::draw(0.0, true, &mut rng).is_none());
        assert_eq!(rng.state(), 5, "no draw without a mask");
        assert!(Dropout::draw(0.1, true, &mut rng).is_some());
    }
}
