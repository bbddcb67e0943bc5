//! Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_ semantics).

use rayon::prelude::*;

use crate::kernels::Real;

/// The L2 norm of all gradients together.
pub fn grad_norm<F: Real>(grads: &[F]) -> f64 {
    grads.par_iter().map(|g| g.to_f64().unwrap().powi(2)).sum::<f64>().sqrt()
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
