//! Matrix products with bfloat16 weights and float32 activations, for memory-bound
//! inference: a decoding step reads every weight once per token, so halving the weight bytes
//! nearly doubles the tokens/s the memory bus allows.
//!
//! Weights are rounded once (round to nearest even, `half::bf16::from_f32`) into (N, K)
//! row-major matrices (nn.Linear's layout; Conv1D weights are transposed while rounding), so
//! every output element is a dot product over one contiguous weight row and a parallel task
//! streams whole rows. Each weight widens to f32 exactly (a 16-bit shift) and products
//! accumulate in f32; the activations are never rounded.
//!
//! Shapes: M = rows of x, K = input features, N = output features.

use half::bf16;
use rayon::prelude::*;

use super::cpu::{isa, Isa};
use super::{Real, SyncPtr};

/// Output rows of W handled by one parallel task.
const ROWS_PER_TASK: usize = 64;

/// f32 -> bf16, round to nearest even (NaN stays NaN): `half::bf16::from_f32` written
/// branch-free so that the loops below vectorise.
#[inline(always)]
fn round(x: f32) -> bf16 {
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
    let f = |v: F| v.to_f32().unwrap_or(f32::NAN);
    dst.par_chunks_mut(k * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            let n0 = task * ROWS_PER_TASK;
            if transpose {
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
            }
        });
}

/// out (M, N) = x (M, K) @ w^T, w (N, K) bf16 row-major; `+=` when `accumulate`.
pub fn matmul_bf16<F: Real>(
    out: &mut [F],
    x: &[F],
    w: &[bf16],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    matmul_bf16_on(isa(), out, x, w, m, n, k, accumulate)
}

#[allow(clippy::too_many_arguments)]
fn matmul_bf16_on<F: Real>(
    isa: Isa,
    out: &mut [F],
    x: &[F],
    w: &[bf16],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    assert!(
        out.len() >= m * n && x.len() >= m * k && w.len() >= n * k,
        "matmul_bf16: buffers too small for ({m}, {k}) @ ({n}, {k})^T"
    );
    let dst = SyncPtr(out.as_mut_ptr());
    let tasks = n.div_ceil(ROWS_PER_TASK);
    (0..tasks).into_par_iter().for_each(|task| {
        let (o0, o1) = (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(n));
        // SAFETY: task writes only columns [o0, o1) of out, which no other task touches;
        // out holds M*N elements (asserted above).
        let out = unsafe { dst.slice_mut(0, m * n) };
        #[cfg(target_arch = "x86_64")]
        if let (Isa::Avx512 { .. }, Some(xf), Some(of)) = (isa, F::as_f32(x), F::as_f32_mut(out)) {
            // SAFETY: the CPU has AVX-512 F/BW/VL (checked by `isa`); bounds asserted above.
            unsafe { avx512::rows(of, xf, w, m, n, k, o0, o1, accumulate) };
            return;
        }
        generic_rows(out, x, w, m, n, k, o0, o1, accumulate);
    });
}

/// Columns [o0, o1) of out, portable code.
#[allow(clippy::too_many_arguments)]
fn generic_rows<F: Real>(
    out: &mut [F],
    x: &[F],
    w: &[bf16],
    m: usize,
    n: usize,
    k: usize,
    o0: usize,
    o1: usize,
    accumulate: bool,
) {
    let mut wrow = vec![0.0f32; k];
    for o in o0..o1 {
        for (d, s) in wrow.iter_mut().zip(&w[o * k..(o + 1) * k]) {
            *d = s.to_f32();
        }
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            let mut acc = [0.0f32; 8];
            let (xc, wc) = (xr.chunks_exact(8), wrow.chunks_exact(8));
            let (xt, wt) = (xc.remainder(), wc.remainder());
            for (xs, ws) in xc.zip(wc) {
                for j in 0..8 {
                    acc[j] += xs[j].to_f32().unwrap_or(f32::NAN) * ws[j];
                }
            }
            let mut s: f32 = acc.iter().sum();
            for (xv, wv) in xt.iter().zip(wt) {
                s += xv.to_f32().unwrap_or(f32::NAN) * wv;
            }
            let s = F::from_f32(s).unwrap();
            let d = &mut out[r * n + o];
            *d = if accumulate { *d + s } else { s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::bf16;

    /// 16 bf16 at p (fewer when `mask` clears lanes) widened to f32.
    #[inline(always)]
    unsafe fn load_w(p: *const bf16, mask: __mmask16) -> __m512 {
        let h = _mm256_maskz_loadu_epi16(mask, p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    /// out[r, o..o+OR] for r in r0..r0+MR: MR x OR dot products of length K, each over
    /// 16-lane f32 accumulators reduced at the end.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const OR: usize>(
        out: &mut [f32],
        x: &[f32],
        w: &[bf16],
        n: usize,
        k: usize,
        r0: usize,
        o: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); OR]; MR];
        let (xp, wp) = (x.as_ptr().add(r0 * k), w.as_ptr().add(o * k));
        let mut kk = 0;
        while kk < k {
            let mask: __mmask16 = if k - kk >= 16 {
                0xFFFF
            } else {
                (1u16 << (k - kk)) - 1
            };
            let mut wv = [_mm512_setzero_ps(); OR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = load_w(wp.add(j * k + kk), mask);
                // rows are short streams the hardware prefetcher does not pick up: fetch the
                // same place of the next tile's rows (prefetches past the end are harmless)
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add((OR + j) * k + kk) as *const i8);
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, xp.add(r * k + kk));
                for j in 0..OR {
                    acc_r[j] = _mm512_fmadd_ps(xv, wv[j], acc_r[j]);
                }
            }
            kk += 16;
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (j, a) in acc_r.iter().enumerate() {
                let s = _mm512_reduce_add_ps(*a);
                let d = &mut out[(r0 + r) * n + o + j];
                *d = if accumulate { *d + s } else { s };
            }
        }
    }

    /// Columns [o0, o1) of out (M, N) = x (M, K) @ w^T.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows(
        out: &mut [f32],
        x: &[f32],
        w: &[bf16],
        m: usize,
        n: usize,
        k: usize,
        o0: usize,
        o1: usize,
        acc: bool,
    ) {
        const MR: usize = 4;
        const OR: usize = 4;
        let mut r = 0;
        while r < m {
            let full = m - r >= MR;
            let mut o = o0;
            while o < o1 {
                let wide = o1 - o >= OR;
                match (full, wide) {
                    (true, true) => tile::<MR, OR>(out, x, w, n, k, r, o, acc),
                    (true, false) => tile::<MR, 1>(out, x, w, n, k, r, o, acc),
                    (false, true) => tile::<1, OR>(out, x, w, n, k, r, o, acc),
                    (false, false) => tile::<1, 1>(out, x, w, n, k, r, o, acc),
                }
                o += if wide { OR } else { 1 };
            }
            r += if full { MR } else { 1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[bf16], m: usize, n: usize, k: usize) -> Vec<f64> {
        (0..m * n)
            .map(|i| {
                (0..k)
                    .map(|kk| x[i / n * k + kk] as f64 * w[i % n * k + kk].to_f64())
                    .sum()
            })
            .collect()
    }

    #[test]
    fn matches_f64_reference_on_ragged_shapes() {
        let mut rng = crate::rng::SplitMix64::new(7);
        // every tile kind and K tails, M and N not multiples of the tile sizes
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 67, 37),
            (3, 5, 16),
            (5, 130, 33),
            (9, 131, 100),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let wf: Vec<f32> = (0..n * k).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let mut w = vec![bf16::ZERO; n * k];
            round_weight(&mut w, &wf, n, k, false);
            let want = naive(&x, &w, m, n, k);
            for (isa, accumulate) in [
                (isa(), false),
                (isa(), true),
                (Isa::Generic, false),
                (Isa::Generic, true),
            ] {
                let mut out = vec![1.0f32; m * n];
                matmul_bf16_on(isa, &mut out, &x, &w, m, n, k, accumulate);
                for (i, (&o, &r)) in out.iter().zip(&want).enumerate() {
                    let r = r + f64::from(u8::from(accumulate));
                    assert!(
                        (o as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "{isa:?} ({m},{n},{k}) [{i}]: {o} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn rounding_equals_half() {
        let mut rng = crate::rng::SplitMix64::new(3);
        let specials = [
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let xs = specials
            .into_iter()
            .chain((0..10_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
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
