//! Run-time CPU-feature dispatch for our own SIMD kernels. One build runs on any x86-64:
//! the AVX-512 and AVX2 paths are compiled with `#[target_feature]` and taken only when the
//! CPU has the features; everything else takes the portable path. On aarch64 NEON is part of
//! the baseline: the portable loops vectorise 4 floats wide, and the intrinsics kernels
//! (kernels/lanes.rs) have a NEON tier.
//!
//! `FERROTUNE_CPU=generic` (or `avx2`) in the environment forces that tier, or the best one
//! the CPU has below it (read once, at the first kernel call), so that every tier can be
//! tested on one machine.

use std::sync::OnceLock;

/// The instruction set our kernels use on this CPU, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F + BW + VL (and AVX512_BF16 when `bf16_dot` is true).
    Avx512 {
        bf16_dot: bool,
    },
    /// AVX2 + FMA + F16C (Intel since Haswell, AMD since Zen): 8 floats wide.
    Avx2,
    /// aarch64's Advanced SIMD: 4 floats wide.
    Neon,
    Generic,
}

pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        match std::env::var("FERROTUNE_CPU").map(|v| v.to_ascii_lowercase()).as_deref() {
            Ok("generic") => Isa::Generic,
            Ok("avx2") if matches!(best, Isa::Avx512 { .. }) => Isa::Avx2,
            _ => best,
        }
    })
}

/// Every tier this CPU runs, best first: what the tests check against each other.
pub fn available() -> Vec<Isa> {
    match detect() {
        best @ Isa::Avx512 { .. } => vec![best, Isa::Avx2, Isa::Generic],
        Isa::Avx2 => vec![Isa::Avx2, Isa::Generic],
        Isa::Neon => vec![Isa::Neon, Isa::Generic],
        Isa::Generic => vec![Isa::Generic],
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
        Isa::Avx512 {
            bf16_dot: has!("avx512bf16"),
        }
    } else if has!("avx2") && has!("fma") && has!("f16c") {
        Isa::Avx2
    } else {
        Isa::Generic
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Isa {
    if std::arch::is_aarch64_feature_detected!("neon") {
        Isa::Neon
    } else {
        Isa::Generic
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Isa {
    Isa::Generic
}

/// A short name of the dispatched instruction set, for benchmarks and bug reports.
pub fn isa_name() -> &'static str {
    match isa() {
        Isa::Avx512 { bf16_dot: true } => "avx512+bf16",
        Isa::Avx512 { bf16_dot: false } => "avx512",
        Isa::Avx2 => "avx2",
        Isa::Neon => "neon",
        Isa::Generic => "generic",
    }
}

/// Runs `f` compiled for the dispatched tier: AVX-512 (+ FMA) or AVX2 + FMA + F16C when the
/// CPU has them, else as built (baseline x86-64; on aarch64 the baseline has NEON). `f` is inlined into a function with those
/// target features, so the loops in it vectorise 16 (AVX-512) or 8 (AVX2) floats wide; call
/// it inside each parallel task, around the inner loops, with an `#[inline(always)]` closure
/// (a large closure is otherwise left out of line, baseline).
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: `isa()` is a tier this CPU runs
    unsafe { simd_on(isa(), f) }
}

/// `simd` compiled for a given tier, so that tests can check every tier in one process.
///
/// # Safety
/// The CPU must run `isa` (one of `available()`).
#[inline(always)]
pub(crate) unsafe fn simd_on<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 { .. } => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has these features (the caller's contract).
            return unsafe { wide(f) };
        }
        Isa::Avx2 => {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has these features (the caller's contract).
            return unsafe { wide(f) };
        }
        Isa::Neon | Isa::Generic => {}
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_tier_is_detected() {
        let tiers = available();
        assert_eq!(tiers.last(), Some(&Isa::Generic));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(tiers[0], Isa::Neon, "NEON is part of every aarch64 CPU");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            assert!(tiers.contains(&Isa::Avx2), "{tiers:?}");
        }
    }
}
