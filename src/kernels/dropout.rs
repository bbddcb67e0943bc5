//! Inverted dropout (torch.nn.Dropout semantics): kept elements are scaled by 1 / (1 - p).
//! The mask stores the scale of each element (0 or 1 / (1 - p)) so the backward is one
//! multiply by the same mask.

use super::Real;
use crate::rng::SplitMix64;

/// mask (N) = 0 with probability p, else 1 / (1 - p)
pub fn dropout_mask<F: Real>(mask: &mut [F], p: f64, rng: &mut SplitMix64) {
    let keep = F::lit(1.0 / (1.0 - p));
    for m in mask.iter_mut() {
        *m = if rng.next_f64() < p { F::zero() } else { keep };
    }
}

/// x (N) *= mask (N): the forward on activations and the backward on their gradients.
pub fn dropout_apply<F: Real>(x: &mut [F], mask: &[F]) {
    for (v, m) in x.iter_mut().zip(mask) {
        *v *= *m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_expected_fraction_and_scales() {
        let mut rng = SplitMix64::new(1);
        let mut mask = vec![0.0f64; 100_000];
        dropout_mask(&mut mask, 0.1, &mut rng);
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / mask.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        assert!(mask.iter().all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-15));
        let mean: f64 = mask.iter().sum::<f64>() / mask.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "expected value preserved: {mean}");
    }
}
