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
pub mod hugepages;
pub mod lanes;
pub mod layernorm;
pub mod matmul;
pub mod matmul_avx2;
pub mod matmul_bf16;
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
    /// e^x in a form loops can vectorise: for f32 a branch-free polynomial (`exp_f32`, within
    /// 2 ulp of the true value); for f64 std's exp, so finite-difference tests stay exact.
    fn vexp(self) -> Self;
    /// The slice as f32 when Self is f32 (SIMD kernels written for f32 only).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}
impl Real for f32 {
    #[inline(always)]
    fn vexp(self) -> f32 {
        exp_f32(self)
    }
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
}
impl Real for f64 {
    #[inline(always)]
    fn vexp(self) -> f64 {
        self.exp()
    }
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
}

/// The larger of `m` and `x`, NaN if either is NaN (`Float::max` drops a NaN, which would make
/// a row of NaN scores look like a row that sees no key).
#[inline(always)]
pub fn nan_max<F: Real>(m: F, x: F) -> F {
    if x > m || x.is_nan() {
        x
    } else {
        m
    }
}

/// e^x for f32 without branches or libm calls (Cephes' expf polynomial): x = n ln2 + r with
/// |r| <= ln2 / 2, e^r by a degree-7 polynomial, 2^n applied as two exponent-field scalings
/// so that overflow gives inf, deep underflow 0 (with subnormals in between), NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-104.0, 89.0); // NaN stays NaN
    let t = xc * LOG2E + SHIFT;
    let n = t - SHIFT;
    let ni = t.to_bits() as i32 - SHIFT.to_bits() as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
    let e = p * r * r + r + 1.0;
    let (n1, n2) = (ni >> 1, ni - (ni >> 1));
    e * f32::from_bits(((n1 + 127) as u32) << 23) * f32::from_bits(((n2 + 127) as u32) << 23)
}

/// Sum of f(x) over xs in 16 interleaved partial sums: a fixed order (the same result on
/// every run) that vectorises, unlike a serial float sum.
#[inline(always)]
pub fn lane_sum_by<F: Real>(xs: &[F], f: impl Fn(F) -> F) -> F {
    let mut acc = [F::zero(); 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..16 {
            acc[j] += f(c[j]);
        }
    }
    for (j, &x) in tail.iter().enumerate() {
        acc[j] += f(x);
    }
    acc.iter().fold(F::zero(), |a, &b| a + b)
}

#[inline(always)]
pub fn lane_sum<F: Real>(xs: &[F]) -> F {
    lane_sum_by(xs, |x| x)
}

/// Dot product in the lane order of `lane_sum_by`.
#[inline(always)]
pub fn lane_dot<F: Real>(a: &[F], b: &[F]) -> F {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [F::zero(); 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    for (j, (&x, &y)) in ta.iter().zip(tb).enumerate() {
        acc[j] += x * y;
    }
    acc.iter().fold(F::zero(), |s, &v| s + v)
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
mod tests {
    #[test]
    fn exp_f32_within_2_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -103.0 + 191.7 * i as f32 / 2e6;
            let (got, want) = (super::exp_f32(x) as f64, (x as f64).exp());
            if want > f32::MIN_POSITIVE as f64 && want < f32::MAX as f64 {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 2.0 * f32::EPSILON as f64, "max relative error {worst:e}");
        assert_eq!(super::exp_f32(0.0), 1.0);
        assert_eq!(super::exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp_f32(-200.0), 0.0);
        assert_eq!(super::exp_f32(89.0), f32::INFINITY);
        assert_eq!(super::exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(super::exp_f32(f32::NAN).is_nan());
        assert!(super::exp_f32(-100.0) > 0.0, "subnormal results are kept");
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
