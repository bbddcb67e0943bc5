//! One SIMD register of f32 lanes, per dispatch tier, for the kernels written with
//! intrinsics (kernels/matvec.rs): AVX-512 (16 lanes, masked tails), AVX2 + FMA (8 lanes) and
//! NEON (4 lanes). A kernel is written once, generic over `Lanes`, as `#[inline(always)]`
//! functions, and instantiated inside a `#[target_feature]` entry point per tier.
//!
//! Every method is `unsafe`: the CPU must have the tier's features (cpu::isa checked them),
//! and `p` must be readable (writable for `store`) for `left.min(LANES)` elements.

/// A register of `LANES` f32 values. Safety of every method: the module's (above).
#[allow(clippy::missing_safety_doc)]
pub trait Lanes: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    /// `left.min(LANES)` values from p, zeros in the other lanes.
    unsafe fn load(p: *const f32, left: usize) -> Self;
    /// `left.min(LANES)` bf16 values from p, widened to f32 (exact: a 16-bit shift).
    unsafe fn load_bf16(p: *const half::bf16, left: usize) -> Self;
    /// `left.min(LANES)` f64 values from p, rounded to f32.
    unsafe fn load_f64(p: *const f64, left: usize) -> Self;
    /// Writes the first `left.min(LANES)` lanes to p.
    unsafe fn store(self, p: *mut f32, left: usize);
    /// a * b + self, fused.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    /// The sum of the lanes.
    unsafe fn sum(self) -> f32;
    /// Asks for the cache line at p (any address: nothing is read).
    unsafe fn prefetch(p: *const u8);
}

/// Loads `left < LANES` elements through a zeroed stack copy: the tails of tiers without
/// masked loads.
#[inline(always)]
unsafe fn tail<T: Copy, const L: usize>(p: *const T, left: usize, widen: impl Fn(T) -> f32) -> [f32; L] {
    let mut buf = [0.0f32; L];
    for (i, b) in buf.iter_mut().enumerate().take(left) {
        *b = widen(*p.add(i));
    }
    buf
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{tail, Lanes};

    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    #[inline(always)]
    fn mask16(left: usize) -> __mmask16 {
        if left >= 16 {
            0xFFFF
        } else {
            (1u16 << left) - 1
        }
    }

    impl Lanes for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Self(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, left: usize) -> Self {
            Self(_mm512_maskz_loadu_ps(mask16(left), p))
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const half::bf16, left: usize) -> Self {
            let h = _mm256_maskz_loadu_epi16(mask16(left), p as *const i16);
            Self(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))))
        }
        #[inline(always)]
        unsafe fn load_f64(p: *const f64, left: usize) -> Self {
            let mask = mask16(left);
            let lo = _mm512_cvtpd_ps(_mm512_maskz_loadu_pd(mask as u8, p));
            let hi = _mm512_cvtpd_ps(_mm512_maskz_loadu_pd((mask >> 8) as u8, p.add(8)));
            Self(_mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, left: usize) {
            _mm512_mask_storeu_ps(p, mask16(left), self.0)
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Self(_mm512_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Self(_mm512_add_ps(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            _mm512_reduce_add_ps(self.0)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx2(__m256);

    impl Lanes for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Self(_mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, left: usize) -> Self {
            if left >= 8 {
                Self(_mm256_loadu_ps(p))
            } else {
                Self(_mm256_loadu_ps(tail::<f32, 8>(p, left, |v| v).as_ptr()))
            }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const half::bf16, left: usize) -> Self {
            if left >= 8 {
                let h = _mm_loadu_si128(p as *const __m128i);
                Self(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h))))
            } else {
                Self(_mm256_loadu_ps(tail::<half::bf16, 8>(p, left, |v| v.to_f32()).as_ptr()))
            }
        }
        #[inline(always)]
        unsafe fn load_f64(p: *const f64, left: usize) -> Self {
            if left >= 8 {
                let (lo, hi) = (_mm256_cvtpd_ps(_mm256_loadu_pd(p)), _mm256_cvtpd_ps(_mm256_loadu_pd(p.add(4))));
                Self(_mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi))
            } else {
                Self(_mm256_loadu_ps(tail::<f64, 8>(p, left, |v| v as f32).as_ptr()))
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, left: usize) {
            if left >= 8 {
                _mm256_storeu_ps(p, self.0)
            } else {
                let mut buf = [0.0f32; 8];
                _mm256_storeu_ps(buf.as_mut_ptr(), self.0);
                std::ptr::copy_nonoverlapping(buf.as_ptr(), p, left);
            }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Self(_mm256_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Self(_mm256_add_ps(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::{tail, Lanes};

    #[derive(Clone, Copy)]
    pub struct Neon(float32x4_t);

    impl Lanes for Neon {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Self(vdupq_n_f32(0.0))
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Self(vdupq_n_f32(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, left: usize) -> Self {
            if left >= 4 {
                Self(vld1q_f32(p))
            } else {
                Self(vld1q_f32(tail::<f32, 4>(p, left, |v| v).as_ptr()))
            }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const half::bf16, left: usize) -> Self {
            if left >= 4 {
                Self(vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16))))
            } else {
                Self(vld1q_f32(tail::<half::bf16, 4>(p, left, |v| v.to_f32()).as_ptr()))
            }
        }
        #[inline(always)]
        unsafe fn load_f64(p: *const f64, left: usize) -> Self {
            if left >= 4 {
                Self(vcvt_high_f32_f64(vcvt_f32_f64(vld1q_f64(p)), vld1q_f64(p.add(2))))
            } else {
                Self(vld1q_f32(tail::<f64, 4>(p, left, |v| v as f32).as_ptr()))
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, left: usize) {
            if left >= 4 {
                vst1q_f32(p, self.0)
            } else {
                let mut buf = [0.0f32; 4];
                vst1q_f32(buf.as_mut_ptr(), self.0);
                std::ptr::copy_nonoverlapping(buf.as_ptr(), p, left);
            }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Self(vfmaq_f32(self.0, a.0, b.0))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Self(vaddq_f32(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            vaddvq_f32(self.0)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            // PRFM never faults, whatever the address
            std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
        }
    }
}
