//! Matrix products of the decoding path: a few rows of activations times large weight
//! matrices, bound by the memory bus (a decoding step reads every weight once per token).
//!
//! - `matmul_nk`: x (M, K) @ w^T with w (N, K) row-major, in f32 or bf16. Every output is a
//!   dot product over one contiguous weight row, and a parallel task streams whole rows.
//! - `matmul_kn`: x (M, K) @ w with w (K, N) row-major f32 (HF Conv1D): parallel tasks
//!   stream blocks of whole rows of w into partial sums, added in a fixed order.
//! - `round_weight`: bf16 copies of weights (round to nearest even, like
//!   `half::bf16::from_f32`), transposing Conv1D weights to (N, K) on the way, so that
//!   bf16 decoding reads half the bytes of f32. A bf16 weight widens to f32 exactly (a
//!   16-bit shift); activations are never rounded and products accumulate in f32.
//!
//! `matmul_nk` on f32 activations takes tiles written once over `Lanes` (kernels/lanes.rs)
//! and instantiated for AVX-512, AVX2 + FMA and NEON; f64 (tests) and the generic tier take
//! portable loops. The tiles prefetch the next rows in software: the row streams of a tile
//! are short (a few KB) and the hardware prefetcher does not pick them up; without it a core
//! reads ~10 GB/s instead of ~50. `matmul_kn` is a portable loop compiled per tier (`simd`).
//! Shapes: M = rows of x, K = input features, N = output features.

use half::bf16;
use rayon::prelude::*;

use super::cpu::{isa, simd, simd_on, Isa};
use super::lanes::Lanes;
use super::{Real, SyncPtr};

/// Output rows of W handled by one parallel task.
const ROWS_PER_TASK: usize = 64;

/// f32 -> bf16, round to nearest even (NaN stays NaN): `half::bf16::from_f32` written
/// branch-free so that the loops below vectorise.
#[inline(always)]
pub(crate) fn round(x: f32) -> bf16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    let nan = ((b >> 16) as u16) | 0x40;
    bf16::from_bits(if x.is_nan() { nan } else { rounded })
}

/// dst (N, K) = src rounded to bf16, where src is (N, K) row-major, or (K, N) row-major
/// when `transpose` (HF Conv1D weights).
pub fn round_weight<F: Real>(dst: &mut [bf16], src: &[F], n: usize, k: usize, transpose: bool) {
    assert!(
        dst.len() == n * k && src.len() == n * k,
        "round_weight: {} and {} elements for ({n}, {k})",
        dst.len(),
        src.len()
    );
    let f = |v: F| v.widen();
    dst.par_chunks_mut(k * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            let n0 = task * ROWS_PER_TASK;
            simd(#[inline(always)] move || if transpose {
                // blocks of 32 source rows: their cache lines stay in L1 while the task's output
                // rows are written 32 contiguous elements at a time
                const KB: usize = 32;
                let nrows = rows.len() / k;
                for kb in (0..k).step_by(KB) {
                    let ke = (kb + KB).min(k);
                    for i in 0..nrows {
                        for (kk, d) in (kb..ke).zip(&mut rows[i * k + kb..i * k + ke]) {
                            *d = round(f(src[kk * n + n0 + i]));
                        }
                    }
                }
            } else {
                for (d, &s) in rows.iter_mut().zip(&src[n0 * k..]) {
                    *d = round(f(s));
                }
            })
        });
}

/// A weight element the kernels read: f32, or bf16 widened to f32.
pub trait Weight: Copy + Send + Sync + 'static {
    /// The weight as f32 (exact for bf16 and f32).
    fn widen(self) -> f32;
    /// `left.min(V::LANES)` weights at p as f32 lanes (zeros after them).
    ///
    /// # Safety
    /// The CPU has V's features; those elements are readable.
    unsafe fn load<V: Lanes>(p: *const Self, left: usize) -> V;
}

impl Weight for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn load<V: Lanes>(p: *const f32, left: usize) -> V {
        V::load(p, left)
    }
}

impl Weight for f64 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    unsafe fn load<V: Lanes>(p: *const f64, left: usize) -> V {
        V::load_f64(p, left)
    }
}

impl Weight for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    unsafe fn load<V: Lanes>(p: *const bf16, left: usize) -> V {
        V::load_bf16(p, left)
    }
}

/// out (M, N) = x (M, K) @ w^T, w (N, K) row-major; `+=` when `accumulate`.
pub fn matmul_nk<F: Real, W: Weight>(out: &mut [F], x: &[F], w: &[W], m: usize, n: usize, k: usize, accumulate: bool) {
    matmul_nk_on(isa(), out, x, w, m, n, k, accumulate)
}

#[allow(clippy::too_many_arguments)]
fn matmul_nk_on<F: Real, W: Weight>(isa: Isa, out: &mut [F], x: &[F], w: &[W], m: usize, n: usize, k: usize, accumulate: bool) {
    assert!(
        out.len() >= m * n && x.len() >= m * k && w.len() >= n * k,
        "matmul_nk: buffers too small for ({m}, {k}) @ ({n}, {k})^T"
    );
    let dst = SyncPtr(out.as_mut_ptr());
    (0..n.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(|task| {
        let (o0, o1) = (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(n));
        // SAFETY: the task writes only columns [o0, o1) of out, which no other task touches;
        // out holds M*N elements (asserted above).
        let out = unsafe { dst.slice_mut(0, m * n) };
        if let (Some(xf), Some(of)) = (F::as_f32(x), F::as_f32_mut(out)) {
            // SAFETY: bounds asserted above; `isa` is what the CPU has (or a lower tier).
            if unsafe { tiers::nk_cols(isa, of, xf, w, m, n, k, o0, o1, accumulate) } {
                return;
            }
        }
        // the portable loops (f64 tests, and the generic tier)
        simd(#[inline(always)] move || {
            for o in o0..o1 {
                let wr = &w[o * k..(o + 1) * k];
                for r in 0..m {
                    let s = dot(&x[r * k..(r + 1) * k], wr);
                    store(&mut out[r * n + o], s, accumulate);
                }
            }
        });
    });
}

/// out (M, N) = x (M, K) @ w, w (K, N) row-major; `+=` when `accumulate`.
pub fn matmul_kn<F: Real>(out: &mut [F], x: &[F], w: &[F], m: usize, n: usize, k: usize, accumulate: bool) {
    matmul_kn_on(isa(), out, x, w, m, n, k, accumulate)
}

/// Rows of w (K, N) one parallel task of `matmul_kn` reads: whole rows, front to back, so
/// that the hardware prefetcher streams them (column blocks walked row by row read a few
/// hundred bytes per row, a stride the prefetcher does not follow).
const KN_ROWS_PER_TASK: usize = 64;
/// Columns of the rows in use that stay in L1 while every row of x takes them.
const KN_COLS: usize = 256;

thread_local! {
    /// The tasks' partial sums of the calling thread's last `matmul_kn`, kept for the next.
    static KN_PARTIAL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn matmul_kn_on<F: Real>(isa: Isa, out: &mut [F], x: &[F], w: &[F], m: usize, n: usize, k: usize, accumulate: bool) {
    assert!(
        out.len() >= m * n && x.len() >= m * k && w.len() >= n * k,
        "matmul_kn: buffers too small for ({m}, {k}) @ ({k}, {n})"
    );
    // isa() in use, a tier from cpu::available() in the tests (checked off the hot path only)
    debug_assert!(crate::kernels::cpu::available().contains(&isa), "matmul_kn: this CPU does not run {isa:?}");
    let tasks = k.div_ceil(KN_ROWS_PER_TASK);
    KN_PARTIAL.with(|partial| {
        let mut partial = partial.borrow_mut();
        // (tasks, M, N): task t's sums over rows [t * KN_ROWS_PER_TASK, ...) of w
        partial.clear();
        partial.resize(tasks * m * n, 0.0);
        partial.par_chunks_mut(m * n).enumerate().for_each(|(t, part)| {
            let (k0, k1) = (t * KN_ROWS_PER_TASK, ((t + 1) * KN_ROWS_PER_TASK).min(k));
            // SAFETY: the CPU runs `isa`: `isa()`, or one of `available()` in the tests
            unsafe { simd_on(isa, #[inline(always)] || kn_rows(part, x, w, m, n, k, k0, k1)) }
        });
        // the tasks' sums added in task order: the same result on any number of threads
        let partial = &partial[..];
        out[..m * n].par_chunks_mut(KN_COLS).enumerate().for_each(|(c, o)| {
            let i0 = c * KN_COLS;
            for (j, d) in o.iter_mut().enumerate() {
                let s = (0..tasks).map(|t| partial[t * m * n + i0 + j]).fold(0.0f32, |a, b| a + b);
                store(d, s, accumulate);
            }
        });
    });
}

/// part (M, N) = x[:, k0..k1] @ w[k0..k1, :], w (K, N): four rows of w at a time, each
/// row's columns in blocks of KN_COLS that every row of x uses while they are in L1.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn kn_rows<F: Real>(part: &mut [f32], x: &[F], w: &[F], m: usize, n: usize, k: usize, k0: usize, k1: usize) {
    let mut kk = k0;
    while kk < k1 {
        let rows = (k1 - kk).min(4);
        for c0 in (0..n).step_by(KN_COLS) {
            let c1 = (c0 + KN_COLS).min(n);
            let wr = |i: usize| &w[(kk + i) * n + c0..(kk + i) * n + c1];
            for r in 0..m {
                let xr = |i: usize| x[r * k + kk + i].widen();
                let p = &mut part[r * n + c0..r * n + c1];
                if rows == 4 {
                    let (x0, x1, x2, x3) = (xr(0), xr(1), xr(2), xr(3));
                    for ((((d, a), b), c), e) in p.iter_mut().zip(wr(0)).zip(wr(1)).zip(wr(2)).zip(wr(3)) {
                        *d += x0 * a.widen() + x1 * b.widen() + x2 * c.widen() + x3 * e.widen();
                    }
                } else {
                    for i in 0..rows {
                        let xi = xr(i);
                        for (d, a) in p.iter_mut().zip(wr(i)) {
                            *d += xi * a.widen();
                        }
                    }
                }
            }
        }
        kk += rows;
    }
}

/// f32 dot product of an activation row and a weight row, 8 partial sums.
fn dot<F: Real, W: Weight>(x: &[F], w: &[W]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
    let (xt, wt) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for j in 0..8 {
            acc[j] += xs[j].widen() * ws[j].widen();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (xv, wv) in xt.iter().zip(wt) {
        s += xv.widen() * wv.widen();
    }
    s
}

#[inline(always)]
fn store<F: Real>(d: &mut F, s: f32, accumulate: bool) {
    let s = F::from_f32(s).unwrap_or_else(F::nan);
    *d = if accumulate { *d + s } else { s };
}

/// out[r0..r0+MR, o..o+OR] = MR x OR dot products of length K over `V`-wide accumulators,
/// reduced at the end.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nk_tile<V: Lanes, W: Weight, const MR: usize, const OR: usize>(
    out: &mut [f32],
    x: &[f32],
    w: &[W],
    n: usize,
    k: usize,
    r0: usize,
    o: usize,
    accumulate: bool,
) {
    let mut acc = [[V::zero(); OR]; MR];
    let (xp, wp) = (x.as_ptr().add(r0 * k), w.as_ptr().add(o * k));
    let mut kk = 0;
    while kk < k {
        let left = k - kk;
        let mut wv = [V::zero(); OR];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = W::load::<V>(wp.add(j * k + kk), left);
            // the same place in the next tile's rows (a prefetch past the end is harmless),
            // once: the first rows of x stream the weights, later ones find them in L1
            if r0 == 0 {
                V::prefetch(wp.wrapping_add((OR + j) * k + kk) as *const u8);
            }
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let xv = V::load(xp.add(r * k + kk), left);
            for j in 0..OR {
                acc_r[j] = acc_r[j].fma(xv, wv[j]);
            }
        }
        kk += V::LANES;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (j, a) in acc_r.iter().enumerate() {
            let s = a.sum();
            let d = &mut out[(r0 + r) * n + o + j];
            *d = if accumulate { *d + s } else { s };
        }
    }
}

/// Columns [o0, o1) of out (M, N) = x (M, K) @ w^T, w (N, K), in MR x OR tiles: all rows of x
/// for each OR weight rows, so those stay in L1 while a batch's rows go by.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nk_cols<V: Lanes, W: Weight, const MR: usize, const OR: usize>(
    out: &mut [f32],
    x: &[f32],
    w: &[W],
    m: usize,
    n: usize,
    k: usize,
    o0: usize,
    o1: usize,
    acc: bool,
) {
    let mut o = o0;
    while o < o1 {
        let wide = o1 - o >= OR;
        let mut r = 0;
        while r < m {
            let full = m - r >= MR;
            match (full, wide) {
                (true, true) => nk_tile::<V, W, MR, OR>(out, x, w, n, k, r, o, acc),
                (true, false) => nk_tile::<V, W, MR, 1>(out, x, w, n, k, r, o, acc),
                (false, true) => nk_tile::<V, W, 1, OR>(out, x, w, n, k, r, o, acc),
                (false, false) => nk_tile::<V, W, 1, 1>(out, x, w, n, k, r, o, acc),
            }
            r += if full { MR } else { 1 };
        }
        o += if wide { OR } else { 1 };
    }
}

/// The tiles instantiated per tier, each inside a function compiled with the tier's features.
/// Tile sizes keep accumulators + weight registers + x within the register file (32 zmm,
/// 16 ymm, 32 NEON q registers).
mod tiers {
    use super::{nk_cols as nk, Isa, Weight};
    #[cfg(target_arch = "aarch64")]
    use crate::kernels::lanes::Neon;
    #[cfg(target_arch = "x86_64")]
    use crate::kernels::lanes::{Avx2, Avx512};

    /// Columns [o0, o1) of `matmul_nk` on the tier's intrinsics; false (nothing done) on the
    /// generic tier.
    ///
    /// # Safety
    /// out, x and w hold (M, N), (M, K) and (N, K) elements; `isa` is `cpu::isa()` or below.
    #[allow(clippy::too_many_arguments, unused_variables)]
    pub(super) unsafe fn nk_cols<W: Weight>(isa: Isa, out: &mut [f32], x: &[f32], w: &[W], m: usize, n: usize, k: usize, o0: usize, o1: usize, acc: bool) -> bool {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 { .. } => nk_avx512(out, x, w, m, n, k, o0, o1, acc),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => nk_avx2(out, x, w, m, n, k, o0, o1, acc),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => nk_neon(out, x, w, m, n, k, o0, o1, acc),
            _ => return false,
        }
        true
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn nk_avx512<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], m: usize, n: usize, k: usize, o0: usize, o1: usize, acc: bool) {
        nk::<Avx512, W, 4, 4>(out, x, w, m, n, k, o0, o1, acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn nk_avx2<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], m: usize, n: usize, k: usize, o0: usize, o1: usize, acc: bool) {
        nk::<Avx2, W, 2, 4>(out, x, w, m, n, k, o0, o1, acc)
    }

    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "neon")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn nk_neon<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], m: usize, n: usize, k: usize, o0: usize, o1: usize, acc: bool) {
        nk::<Neon, W, 4, 4>(out, x, w, m, n, k, o0, o1, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, rng: &mut crate::rng::SplitMix64) -> Vec<f32> {
        (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect()
    }

    /// Checks out = init (+)= x @ w (via `run`) against f64 sums of `w_at(o, kk)`.
    fn check(name: &str, m: usize, n: usize, k: usize, x: &[f32], w_at: impl Fn(usize, usize) -> f64, run: impl Fn(Isa, &mut [f32], bool)) {
        for (isa, accumulate) in crate::kernels::cpu::available().into_iter().flat_map(|isa| [(isa, false), (isa, true)]) {
            let mut out = vec![1.0f32; m * n];
            run(isa, &mut out, accumulate);
            for (i, &o) in out.iter().enumerate() {
                let (r, c) = (i / n, i % n);
                let want = f64::from(u8::from(accumulate)) + (0..k).map(|kk| x[r * k + kk] as f64 * w_at(c, kk)).sum::<f64>();
                assert!((o as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{name} {isa:?} ({m},{n},{k}) [{i}]: {o} vs {want}");
            }
        }
    }

    /// Every tile kind, K tails, M and N not multiples of the tile sizes.
    const SHAPES: [(usize, usize, usize); 6] = [(1, 1, 1), (1, 67, 37), (3, 5, 16), (5, 130, 33), (9, 131, 100), (2, 64, 20)];

    #[test]
    fn nk_matches_f64_reference() {
        let mut rng = crate::rng::SplitMix64::new(7);
        for &(m, n, k) in &SHAPES {
            let (x, wf) = (rand(m * k, &mut rng), rand(n * k, &mut rng));
            let mut wh = vec![bf16::ZERO; n * k];
            round_weight(&mut wh, &wf, n, k, false);
            check("bf16", m, n, k, &x, |o, kk| wh[o * k + kk].to_f64(), |isa, out, acc| matmul_nk_on(isa, out, &x, &wh, m, n, k, acc));
            check("f32", m, n, k, &x, |o, kk| wf[o * k + kk] as f64, |isa, out, acc| matmul_nk_on(isa, out, &x, &wf, m, n, k, acc));
        }
    }

    #[test]
    fn kn_matches_f64_reference() {
        let mut rng = crate::rng::SplitMix64::new(8);
        for &(m, n, k) in &SHAPES {
            let (x, w) = (rand(m * k, &mut rng), rand(k * n, &mut rng)); // w (K, N)
            check("kn", m, n, k, &x, |o, kk| w[kk * n + o] as f64, |isa, out, acc| matmul_kn_on(isa, out, &x, &w, m, n, k, acc));
        }
    }

    #[test]
    fn rounding_equals_half() {
        let mut rng = crate::rng::SplitMix64::new(3);
        let specials = [0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        let xs = specials.into_iter().chain((0..10_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
        for x in xs {
            let (a, b) = (round(x), bf16::from_f32(x));
            assert!(a == b || (a.is_nan() && b.is_nan()), "{x:e}: {a} vs {b}");
        }
    }

    #[test]
    fn transposed_rounding_equals_rounding_the_transpose() {
        let (n, k) = (70, 37);
        let src: Vec<f32> = (0..n * k).map(|i| i as f32 * 0.37 - 20.0).collect(); // (K, N)
        let mut t = vec![bf16::ZERO; n * k];
        round_weight(&mut t, &src, n, k, true);
        for o in 0..n {
            for kk in 0..k {
                assert_eq!(t[o * k + kk], bf16::from_f32(src[kk * n + o]));
            }
        }
    }
}
