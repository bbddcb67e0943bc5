//! bf16 matrix products on AVX512_BF16 (`vdpbf16ps`), for mixed-precision training: the f32
//! operands are rounded to bf16 (round to nearest even) while they are packed, and products
//! are summed in f32 — the numerics of PyTorch's bf16 autocast for a matmul. Weights, their
//! gradients and the optimizer state stay f32; only the inputs of each product are rounded.
//!
//! `vdpbf16ps` adds, in each of 16 f32 lanes, the products of two bf16 pairs: a[2i] b[2i] +
//! a[2i+1] b[2i+1]. Both operands are therefore packed as pairs along K, one u32 per pair
//! (the even k in the low half):
//!   lhs (M, K) -> panels of MR rows:   apack[panel][k/2][row]   (broadcast one pair per row)
//!   rhs (K, N) -> tiles of NR columns: bpack[tile][k/2][col]    (4 vectors of 16 pairs)
//! and a 6 x 64 microkernel keeps 24 accumulators in registers. Both operands are packed once
//! per product (in parallel); each parallel task computes MC rows x NC columns of the output
//! in blocks of KC along K, so its (KC x NC) block of packed rhs stays in L2.
//!
//! Shapes: dst (M, N) = lhs (M, K) @ rhs (K, N); operands are strided `View`s, so transposed
//! operands cost no copy beyond the packing every product does anyway.

use std::cell::RefCell;

use rayon::prelude::*;

use super::cpu::{isa, simd, Isa};
use super::matmul::{settled_without_product, Operand, View};
use super::matvec::round;
use super::SyncPtr;

/// Rows of a microkernel tile.
const MR: usize = 6;
/// Columns of a microkernel tile (4 vectors of 16 lanes).
const NR: usize = 64;
/// Depth of a block of K (even: pairs never straddle blocks); a (KC, NR) block of packed rhs
/// is 32 KiB, inside L1.
const KC: usize = 256;
/// Output rows of a parallel task (32 tiles).
const MC: usize = 32 * MR;
/// Output columns of a parallel task (4 tiles).
const NC: usize = 4 * NR;

/// Whether this CPU has the bf16 dot-product instructions (and they are not disabled with
/// FERROTUNE_CPU=generic).
pub fn available() -> bool {
    matches!(isa(), Isa::Avx512 { bf16_dot: true })
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(round(lo).to_bits()) | (u32::from(round(hi).to_bits()) << 16)
}

/// dst (M, N), rows `dst_rs` apart, `=` (or `+=` when `accumulate`) scale * lhs (M, K) @
/// rhs (K, N) with both operands rounded to bf16 and f32 sums. Panics unless `available()`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(dst: &mut [f32], dst_rs: usize, m: usize, n: usize, k: usize, lhs: View<f32>, rhs: View<f32>, accumulate: bool, scale: f32) {
    assert!(available(), "gemm_bf16 needs AVX512_BF16");
    if settled_without_product(dst, dst_rs, m, n, k, accumulate, "gemm_bf16") {
        return;
    }
    // SAFETY (both): the views cover (M, K) and (K, N) (the callers' contract).
    PACKED.with(|packed| {
        let (apack, bpack) = &mut *packed.borrow_mut();
        unsafe {
            pack(apack, lhs.lhs_operand(), m, k, MR);
            pack(bpack, rhs.rhs_operand(), n, k, NR);
        }
        products(dst, dst_rs, m, n, k, apack, bpack, accumulate, scale);
    });
}

thread_local! {
    /// The packed operands of the calling thread's last product, kept so that the next one
    /// reuses the memory (no allocation, no page faults per product).
    static PACKED: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// dst blocks from packed operands, one parallel task per (MC, NC) block of dst.
#[allow(clippy::too_many_arguments)]
fn products(dst: &mut [f32], dst_rs: usize, m: usize, n: usize, k: usize, apack: &[u32], bpack: &[u32], accumulate: bool, scale: f32) {
    let kp = k.div_ceil(2);
    let dptr = SyncPtr(dst.as_mut_ptr());
    let nblocks = n.div_ceil(NC);
    (0..m.div_ceil(MC) * nblocks).into_par_iter().for_each(|task| {
        let (mb, nb) = (task / nblocks, task % nblocks);
        let (r_lo, r_hi) = (mb * MC, (mb * MC + MC).min(m));
        let (c_lo, c_hi) = (nb * NC, (nb * NC + NC).min(n));
        for k0 in (0..k).step_by(KC) {
            let kps = ((k0 + KC).min(k) - k0).div_ceil(2);
            // one (KC, NR) block of rhs stays in L1 while the MC rows of lhs stream from L2
            for c0 in (c_lo..c_hi).step_by(NR) {
                let b = &bpack[(c0 / NR * kp + k0 / 2) * NR..];
                for r0 in (r_lo..r_hi).step_by(MR) {
                    let a = &apack[(r0 / MR * kp + k0 / 2) * MR..];
                    let (rows, cols) = (MR.min(m - r0), NR.min(n - c0));
                    // SAFETY: AVX512_BF16 is present (asserted); a and b hold kps pairs of their
                    // MR rows / NR columns; the (rows, cols) block of dst at (r0, c0) lies in
                    // dst and only this task writes it (tasks own disjoint (MC, NC) blocks).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let d = dptr.slice_mut(r0 * dst_rs + c0, (rows - 1) * dst_rs + cols);
                        avx512::kernel(a, b, kps, d, dst_rs, rows, cols, accumulate || k0 > 0, scale);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = (a, b, kps, rows, cols, &dptr, dst_rs, accumulate, scale);
                        unreachable!("available() is false off x86-64");
                    }
                }
            }
        }
    });
}

/// Packs a (len, K) operand into panels of `w` rows: out[panel][kk / 2][i % w] = the bf16
/// pair (kk, kk + 1) of row i, zero-padded past K. Contiguous runs (along K, or along
/// the rows) are read as slices so that the loops vectorise.
///
/// # Safety
/// Every (i < len, kk < K) element of `x` must be readable.
unsafe fn pack(out: &mut Vec<u32>, x: Operand<f32>, len: usize, k: usize, w: usize) {
    let kp = k.div_ceil(2);
    // padding rows of the last panel may keep an earlier product's values: they only reach
    // output rows (columns) past M (N), which are never stored
    out.resize(len.div_ceil(w) * kp * w, 0);
    out.par_chunks_mut(kp * w).enumerate().for_each(|(p, panel)| simd(#[inline(always)] move || {
        let (i0, rows) = (p * w, w.min(len - p * w));
        if x.sk == 1 {
            // each row is a contiguous run along K: round it into pairs, then scatter them
            let mut pairs = vec![0u32; kp];
            for i in 0..rows {
                let run = x.run(i0 + i, 0, k, true);
                for (d, pr) in pairs.iter_mut().zip(run.chunks_exact(2)) {
                    *d = pair(pr[0], pr[1]);
                }
                if k % 2 == 1 {
                    pairs[kp - 1] = pair(run[k - 1], 0.0);
                }
                for (j, &v) in pairs.iter().enumerate() {
                    panel[j * w + i] = v;
                }
            }
        } else if x.si == 1 {
            // each kk is a contiguous run along the rows: interleave two runs
            for j in 0..kp {
                let lo = x.run(i0, 2 * j, rows, false);
                let dst = &mut panel[j * w..j * w + rows];
                if 2 * j + 1 < k {
                    let hi = x.run(i0, 2 * j + 1, rows, false);
                    for ((d, &a), &b) in dst.iter_mut().zip(lo).zip(hi) {
                        *d = pair(a, b);
                    }
                } else {
                    for (d, &a) in dst.iter_mut().zip(lo) {
                        *d = pair(a, 0.0);
                    }
                }
            }
        } else {
            for j in 0..kp {
                for i in 0..rows {
                    let hi = if 2 * j + 1 < k { x.at(i0 + i, 2 * j + 1) } else { 0.0 };
                    panel[j * w + i] = pair(x.at(i0 + i, 2 * j), hi);
                }
            }
        }
    }));
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// dst (rows, cols) `=` or `+=` (add) scale * a @ b over `kps` pairs: a (kps, MR) and
    /// b (kps, NR) packed pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(a: &[u32], b: &[u32], kps: usize, dst: &mut [f32], dst_rs: usize, rows: usize, cols: usize, add: bool, scale: f32) {
        debug_assert!(a.len() >= kps * MR && b.len() >= kps * NR);
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for i in 0..kps {
            let bv: [__m512bh; 4] = std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(bp.add(i * NR + 16 * j) as *const _)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i * MR + r) as i32));
                for j in 0..4 {
                    acc_r[j] = _mm512_dpbf16_ps(acc_r[j], av, bv[j]);
                }
            }
        }
        let sc = _mm512_set1_ps(scale);
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            for (j, a) in acc_r.iter().enumerate() {
                if 16 * j >= cols {
                    break;
                }
                let left = cols - 16 * j;
                let mask: __mmask16 = if left >= 16 { 0xFFFF } else { (1u16 << left) - 1 };
                let p = dst.as_mut_ptr().add(r * dst_rs + 16 * j);
                let mut v = _mm512_mul_ps(*a, sc);
                if add {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p));
                }
                _mm512_mask_storeu_ps(p, mask, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn bf(x: f32) -> f64 {
        bf16::from_f32(x).to_f64()
    }

    /// Against f64 sums of the bf16-rounded operands, for row-major and transposed operands
    /// (both packing paths of each) and shapes that are not multiples of any block size.
    #[test]
    fn matches_rounded_f64_reference() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let mut rng = crate::rng::SplitMix64::new(5);
        for &(m, n, k) in &[(1, 1, 1), (7, 70, 3), (13, 300, 1100), (100, 65, 515), (2, 257, 64)] {
            let [a, b, at, bt] = crate::kernels::testing::gemm_operands(m, n, k, &mut rng);
            let lhs = [View::rows(&a, k), View::t(&at, m)];
            let rhs = [View::rows(&b, n), View::t(&bt, k)];
            for (li, ri, accumulate) in [(0, 0, false), (0, 1, true), (1, 0, true), (1, 1, false)] {
                let rs = n + 3;
                let mut dst = vec![1.0f32; m * rs];
                gemm_bf16(&mut dst, rs, m, n, k, lhs[li], rhs[ri], accumulate, 0.5);
                for i in 0..m {
                    for j in 0..n {
                        let want = f64::from(u8::from(accumulate)) + 0.5 * (0..k).map(|kk| bf(a[i * k + kk]) * bf(b[kk * n + j])).sum::<f64>();
                        let got = dst[i * rs + j] as f64;
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "({m},{n},{k}) layouts {li}{ri} [{i},{j}]: {got} vs {want}");
                    }
                    assert!(dst[i * rs + n..i * rs + rs].iter().all(|&x| x == 1.0), "wrote past column N");
                }
            }
        }
    }
}
