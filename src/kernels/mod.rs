//! CPU kernels of the training path. Every op is a forward/backward pair that we own
//! (llm.c style): the forward saves what the backward needs, the backward *accumulates*
//! into parameter gradients (`+=`, so micro-batches add up) and writes or accumulates
//! input gradients as each function documents.
//!
//! Shape legend for every file in this module:
//!   B = batch, T = time (sequence length), C = channels, NH = heads, HS = head size (C / NH),
//!   V = vocabulary size, N = B * T rows, OC = output channels.
//!
//! The kernels are generic over `Real` (f32 and f64) so that every backward can be checked
//! against finite differences in f64 (tests at the bottom of each file).

pub mod attention;
pub mod cpu;
pub mod crossentropy;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod matvec;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use num_traits::{Float, FromPrimitive, NumAssign};

/// The float types our kernels run in.
pub trait Real:
    Float + FromPrimitive + NumAssign + Default + Send + Sync + std::fmt::Debug + std::iter::Sum + matvec::Weight + 'static
{
    #[inline(always)]
    fn lit(x: f64) -> Self {
        Self::from_f64(x).unwrap()
    }
    /// The slice as f32 when Self is f32 (SIMD kernels written for f32 only).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}
impl Real for f32 {
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
}
impl Real for f64 {
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
}

/// A raw pointer that may cross threads. Used only where parallel workers write provably
/// disjoint parts of one buffer (e.g. one attention head each).
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<F>(pub *mut F);
unsafe impl<F> Send for SyncPtr<F> {}
unsafe impl<F> Sync for SyncPtr<F> {}

impl<F> SyncPtr<F> {
    /// # Safety
    /// `[offset, offset + len)` must be in bounds and written by no other thread meanwhile.
    #[inline(always)]
    pub unsafe fn slice_mut<'a>(self, offset: usize, len: usize) -> &'a mut [F] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Finite-difference gradient checking in f64.

    /// Deterministic pseudo-random values in [-1, 1).
    pub fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| 2.0 * rng.next_f64() - 1.0).collect()
    }

    /// Central differences of the scalar `loss` with respect to every element of `x`.
    pub fn numeric_grad(x: &[f64], mut loss: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
        let h = 1e-6;
        let mut xp = x.to_vec();
        (0..x.len())
            .map(|i| {
                let orig = xp[i];
                xp[i] = orig + h;
                let lp = loss(&xp);
                xp[i] = orig - h;
                let lm = loss(&xp);
                xp[i] = orig;
                (lp - lm) / (2.0 * h)
            })
            .collect()
    }

    /// Asserts max |a - b| <= tol * max(1, max |b|).
    pub fn assert_close(name: &str, analytic: &[f64], numeric: &[f64], tol: f64) {
        assert_eq!(analytic.len(), numeric.len(), "{name}: length");
        let scale = numeric.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = analytic.iter().zip(numeric).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= tol * scale, "{name}: max abs error {err:e} > {tol:e} * {scale}");
    }

    /// A fixed random projection turns an output tensor into a scalar loss; its gradient
    /// with respect to the output is the projection itself.
    pub fn project(out: &[f64], proj: &[f64]) -> f64 {
        out.iter().zip(proj).map(|(a, b)| a * b).sum()
    }
}
