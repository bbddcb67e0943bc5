//! Run-time CPU-feature dispatch for our own SIMD kernels. One build runs on any x86-64:
//! the AVX-512 paths are compiled with `#[target_feature]` and taken only when the CPU has
//! the features; everything else takes the portable path.
//!
//! `FERROTUNE_CPU=generic` in the environment forces the portable path (read once, at the
//! first kernel call), so that both paths can be tested on one machine.

use std::sync::OnceLock;

/// The instruction set our kernels use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F + BW + VL (and AVX512_BF16 when `bf16_dot` is true).
    Avx512 {
        bf16_dot: bool,
    },
    Generic,
}

pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        if std::env::var("FERROTUNE_CPU").is_ok_and(|v| v.eq_ignore_ascii_case("generic")) {
            return Isa::Generic;
        }
        detect()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
        Isa::Avx512 {
            bf16_dot: has!("avx512bf16"),
        }
    } else {
        Isa::Generic
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Generic
}

/// A short name of the dispatched instruction set, for benchmarks and bug reports.
pub fn isa_name() -> &'static str {
    match isa() {
        Isa::Avx512 { bf16_dot: true } => "avx512+bf16",
        Isa::Avx512 { bf16_dot: false } => "avx512",
        Isa::Generic => "generic",
    }
}

/// Runs `f` compiled for AVX-512 (+ FMA) when the CPU has it, else as built (baseline
/// x86-64). `f` is inlined into a function with those target features, so the loops in it
/// vectorise 16 floats wide; call it inside each parallel task, around the inner loops, with
/// an `#[inline(always)]` closure (a large closure is otherwise left out of line, baseline).
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if let Isa::Avx512 { .. } = isa() {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has these features (checked by `isa`).
        return unsafe { wide(f) };
    }
    f()
}
