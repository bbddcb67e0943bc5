//! Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_ semantics).

use rayon::prelude::*;

use crate::kernels::cpu::simd;
use crate::kernels::Real;

/// The L2 norm of all gradients together.
pub fn grad_norm<F: Real>(grads: &[F]) -> f64 {
    sum_of_squares(grads).sqrt()
}

/// The sum of the squared gradients, in f64. Fixed-size chunks, each summed in 8 lanes,
/// added in order keep the result bit-identical from run to run (resumed runs must equal
/// uninterrupted ones).
pub fn sum_of_squares<F: Real>(grads: &[F]) -> f64 {
    let partial: Vec<f64> = grads
        .par_chunks(1 << 14)
        .map(|c| simd(#[inline(always)] move || {
            let mut lanes = [0.0f64; 8];
            for part in c.chunks(8) {
                for (l, g) in lanes.iter_mut().zip(part) {
                    let x = g.to_f64().unwrap_or(f64::NAN);
                    *l += x * x;
                }
            }
            lanes.iter().sum::<f64>()
        }))
        .collect();
    partial.iter().sum::<f64>()
}

/// Scales gradients by max_norm / (norm + 1e-6) when that is below 1; returns the norm
/// before clipping (NaN or inf when a gradient is not finite).
pub fn clip_grad_norm<F: Real>(grads: &mut [F], max_norm: f64) -> f64 {
    let norm = grad_norm(grads);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = F::lit(coef);
        grads.par_iter_mut().for_each(|g| *g *= c);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_to_max_norm() {
        let mut g = vec![3.0f64, 4.0];
        let n = clip_grad_norm(&mut g, 1.0);
        assert_eq!(n, 5.0);
        assert!((grad_norm(&g) - 1.0).abs() < 1e-6);
        let mut small = vec![0.3f64, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }
}
