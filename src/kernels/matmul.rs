//! Matrix multiplications through the `gemm` crate (candle's matmul engine), laid out so
//! that no transposed copy is ever made: transposes are expressed as strides.
//!
//! Two weight layouts, as the checkpoints store them: GPT-2's Conv1D, w: (C, OC), so
//! `out = inp @ w + bias` (`matmul_*`), and nn.Linear (Llama, Qwen2, Mistral), w: (OC, C),
//! so `out = inp @ w^T + bias` (`linear_*`). The tied lm_head uses the embedding (V, C)
//! transposed through strides. Large f32 products can run as bf16 products with f32 sums
//! (`set_bf16_products`, on CPUs with AVX512_BF16). With the avx2 tier forced on a CPU with
//! AVX-512 (FERROTUNE_CPU=avx2), f32 products run in our own AVX2 kernel (matmul_avx2.rs).

use std::sync::atomic::{AtomicBool, Ordering};

use gemm::Parallelism;

use super::matmul_avx2::{forced as avx2_forced, gemm_f32};
use super::matmul_bf16::{available as bf16_available, gemm_bf16};
use super::Real;

/// Whether large f32 products run as bf16 products (operands rounded to bf16, f32 sums):
/// mixed-precision training, PyTorch's `set_float32_matmul_precision("medium")`.
static BF16_PRODUCTS: AtomicBool = AtomicBool::new(false);

/// Products with a side shorter than this stay f32 (LoRA's rank-r products, tiny models).
const BF16_MIN_SIDE: usize = 16;

/// Lets (or stops) f32 products with every side >= 16 that are split across threads run in
/// bf16 (`matmul_bf16`). Returns false, changing nothing, when the CPU has no AVX512_BF16.
pub fn set_bf16_products(on: bool) -> bool {
    if on && !bf16_available() {
        return false;
    }
    BF16_PRODUCTS.store(on, Ordering::Relaxed);
    true
}

pub fn bf16_products() -> bool {
    BF16_PRODUCTS.load(Ordering::Relaxed)
}

/// What runs the f32 products now, for bug reports (`ferrotune.show_config()`).
pub fn engine() -> &'static str {
    if bf16_products() {
        "bf16 products (AVX512_BF16) for large products, the gemm crate for the rest"
    } else if avx2_forced() {
        "ferrotune's AVX2 kernel (the avx2 tier forced on an AVX-512 CPU)"
    } else {
        "the gemm crate"
    }
}

/// A row-major or strided matrix operand: element (i, j) is at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub struct View<F> {
    ptr: *const F,
    rs: isize,
    cs: isize,
}

impl<F> View<F> {
    /// A matrix whose rows are `rs` elements apart (e.g. a column block of a wider matrix).
    pub fn strided(data: &[F], rs: usize) -> Self {
        Self { ptr: data.as_ptr(), rs: rs as isize, cs: 1 }
    }
    /// The transpose of a matrix whose rows are `rs` elements apart.
    pub fn strided_t(data: &[F], rs: usize) -> Self {
        Self { ptr: data.as_ptr(), rs: 1, cs: rs as isize }
    }
    /// A (rows, cols) row-major matrix.
    pub fn rows(data: &[F], cols: usize) -> Self {
        Self { ptr: data.as_ptr(), rs: cols as isize, cs: 1 }
    }
    /// The transpose of a (rows, cols) row-major matrix, i.e. a (cols, rows) operand.
    pub fn t(data: &[F], cols: usize) -> Self {
        Self { ptr: data.as_ptr(), rs: 1, cs: cols as isize }
    }
    /// (pointer, row stride, column stride), for packing routines that read runs directly.
    pub(crate) fn raw(&self) -> (*const F, isize, isize) {
        (self.ptr, self.rs, self.cs)
    }
    /// The same view over f32 when F is f32.
    fn f32_view(self) -> Option<View<f32>>
    where
        F: 'static,
    {
        (std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>()).then_some(View { ptr: self.ptr as *const f32, rs: self.rs, cs: self.cs })
    }
}

// SAFETY: a View is a read-only window into a slice that outlives the product using it.
unsafe impl<F: Sync> Send for View<F> {}
unsafe impl<F: Sync> Sync for View<F> {}

/// dst (M, N) row-major `=` (or `+=` when `accumulate`) lhs (M, K) @ rhs (K, N).
pub fn gemm<F: Real>(dst: &mut [F], m: usize, n: usize, k: usize, lhs: View<F>, rhs: View<F>, accumulate: bool) {
    gemm_into(dst, n, m, n, k, lhs, rhs, accumulate, F::one());
}

/// dst (M, N), rows `dst_rs` elements apart, `=` (or `+=` when `accumulate`)
/// scale * lhs (M, K) @ rhs (K, N). With dst_rs > N this writes a column block of a wider
/// matrix (e.g. a LoRA update of the q part of a fused qkv output).
#[allow(clippy::too_many_arguments)]
pub fn gemm_into<F: Real>(
    dst: &mut [F],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: View<F>,
    rhs: View<F>,
    accumulate: bool,
    scale: F,
) {
    gemm_with(dst, dst_rs, m, n, k, lhs, rhs, accumulate, scale, Parallelism::Rayon(0));
}

/// `gemm_into` on the calling thread only, for callers that already split work across
/// threads (one attention head per task).
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial<F: Real>(
    dst: &mut [F],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: View<F>,
    rhs: View<F>,
    accumulate: bool,
    scale: F,
) {
    gemm_with(dst, dst_rs, m, n, k, lhs, rhs, accumulate, scale, Parallelism::None);
}

#[allow(clippy::too_many_arguments)]
fn gemm_with<F: Real>(
    dst: &mut [F],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: View<F>,
    rhs: View<F>,
    accumulate: bool,
    scale: F,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n, "gemm: dst too small");
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(F::zero());
            }
        }
        return;
    }
    if matches!(par, Parallelism::Rayon(_)) && m.min(n).min(k) >= BF16_MIN_SIDE && bf16_products() {
        if let (Some(lhs), Some(rhs)) = (lhs.f32_view(), rhs.f32_view()) {
            let d = F::as_f32_mut(dst).expect("F is f32");
            return gemm_bf16(d, dst_rs, m, n, k, lhs, rhs, accumulate, scale.to_f32().unwrap_or(f32::NAN));
        }
    }
    if avx2_forced() {
        if let (Some(l), Some(r)) = (lhs.f32_view(), rhs.f32_view()) {
            let d = F::as_f32_mut(dst).expect("F is f32");
            let parallel = matches!(par, Parallelism::Rayon(_));
            return gemm_f32(d, dst_rs, m, n, k, l, r, accumulate, scale.to_f32().unwrap_or(f32::NAN), parallel);
        }
    }
    // SAFETY: the callers pass views over slices holding at least the (M, K) and (K, N)
    // elements addressed by the strides; dst holds the (M, N) block (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            F::one(),
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// out (N, OC) = inp (N, C) @ w (C, OC) + bias (OC)
pub fn matmul_forward<F: Real>(out: &mut [F], inp: &[F], w: &[F], bias: Option<&[F]>, n: usize, c: usize, oc: usize) {
    debug_assert_eq!(w.len(), c * oc);
    affine(out, inp, View::rows(w, oc), bias, n, c, oc);
}

/// Backward of `matmul_forward`:
///   dinp (N, C)  = dout (N, OC) @ w^T      (overwritten)
///   dw   (C, OC) += inp^T @ dout            (skipped for a frozen weight: None)
///   dbias (OC)   += column sums of dout     (skipped when None)
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<F: Real>(
    dinp: &mut [F],
    dw: Option<&mut [F]>,
    dbias: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    w: &[F],
    n: usize,
    c: usize,
    oc: usize,
) {
    gemm(dinp, n, c, oc, View::rows(dout, oc), View::t(w, oc), false);
    if let Some(dw) = dw {
        gemm(dw, c, oc, n, View::t(inp, c), View::rows(dout, oc), true);
    }
    if let Some(db) = dbias {
        bias_backward(db, dout, oc, oc);
    }
}

/// PyTorch's nn.Linear layout, w: (OC, C):  out (N, OC) = inp (N, C) @ w^T + bias (OC)
pub fn linear_forward<F: Real>(out: &mut [F], inp: &[F], w: &[F], bias: Option<&[F]>, n: usize, c: usize, oc: usize) {
    debug_assert_eq!(w.len(), oc * c);
    affine(out, inp, View::t(w, c), bias, n, c, oc);
}

/// out (N, OC) = inp (N, C) @ w (C, OC, any layout) + bias.
fn affine<F: Real>(out: &mut [F], inp: &[F], w: View<F>, bias: Option<&[F]>, n: usize, c: usize, oc: usize) {
    debug_assert_eq!(inp.len(), n * c);
    with_bias(out, bias, n, oc, |out, acc| gemm(out, n, oc, c, View::rows(inp, c), w, acc));
}

/// out (N, OC) = bias in every row, then `product(out, accumulate)` adds onto it
/// (accumulate = whether there is a bias; the product overwrites otherwise).
pub fn with_bias<F: Real>(out: &mut [F], bias: Option<&[F]>, n: usize, oc: usize, product: impl FnOnce(&mut [F], bool)) {
    let out = &mut out[..n * oc];
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(oc) {
            row.copy_from_slice(b);
        }
    }
    product(out, bias.is_some());
}

/// Input gradient of `linear_forward`: dinp (N, C) = dout (N, OC) @ w   (overwritten)
pub fn linear_backward_input<F: Real>(dinp: &mut [F], dout: &[F], w: &[F], n: usize, c: usize, oc: usize) {
    gemm(dinp, n, c, oc, View::rows(dout, oc), View::rows(w, c), false);
}

/// Weight gradient of `linear_forward` for OC output columns that start at dout[0] in rows
/// `rs` apart (one part of a fused projection such as q | k | v):
///   dw (OC, C) += dout^T @ inp,   dbias (OC) += column sums of dout
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_weight<F: Real>(
    dw: Option<&mut [F]>,
    dbias: Option<&mut [F]>,
    dout: &[F],
    rs: usize,
    inp: &[F],
    n: usize,
    c: usize,
    oc: usize,
) {
    if let Some(dw) = dw {
        gemm(dw, oc, c, n, View::strided_t(dout, rs), View::rows(inp, c), true);
    }
    if let Some(db) = dbias {
        bias_backward(db, dout, oc, rs);
    }
}

/// dbias (OC) += sum over N rows of dout, rows `rs` elements apart
pub fn bias_backward<F: Real>(dbias: &mut [F], dout: &[F], oc: usize, rs: usize) {
    for row in dout.chunks(rs) {
        for (d, g) in dbias.iter_mut().zip(&row[..oc]) {
            *d += *g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;

    fn naive(inp: &[f64], w: &[f64], b: &[f64], n: usize, c: usize, oc: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * oc];
        for i in 0..n {
            for o in 0..oc {
                out[i * oc + o] = b[o] + (0..c).map(|k| inp[i * c + k] * w[k * oc + o]).sum::<f64>();
            }
        }
        out
    }

    #[test]
    fn forward_matches_naive() {
        let (n, c, oc) = (7, 5, 9);
        let (inp, w, b) = (rand_vec(n * c, 1), rand_vec(c * oc, 2), rand_vec(oc, 3));
        let mut out = vec![0.0; n * oc];
        matmul_forward(&mut out, &inp, &w, Some(&b), n, c, oc);
        assert_close("out", &out, &naive(&inp, &w, &b, n, c, oc), 1e-12);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, c, oc) = (6, 4, 5);
        let (inp, w, b, proj) = (rand_vec(n * c, 1), rand_vec(c * oc, 2), rand_vec(oc, 3), rand_vec(n * oc, 4));
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c * oc], vec![0.0; oc]);
        matmul_backward(&mut dinp, Some(&mut dw), Some(&mut db), &proj, &inp, &w, n, c, oc);
        let loss = |inp: &[f64], w: &[f64], b: &[f64]| {
            let mut out = vec![0.0; n * oc];
            matmul_forward(&mut out, inp, w, Some(b), n, c, oc);
            project(&out, &proj)
        };
        assert_close("dinp", &dinp, &numeric_grad(&inp, |x| loss(x, &w, &b)), 1e-7);
        assert_close("dw", &dw, &numeric_grad(&w, |x| loss(&inp, x, &b)), 1e-7);
        assert_close("db", &db, &numeric_grad(&b, |x| loss(&inp, &w, x)), 1e-7);
    }

    #[test]
    fn linear_backward_matches_finite_differences() {
        let (n, c, oc) = (5, 4, 3);
        let (inp, w, b, proj) = (rand_vec(n * c, 1), rand_vec(oc * c, 2), rand_vec(oc, 3), rand_vec(n * oc, 4));
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
        linear_backward_input(&mut dinp, &proj, &w, n, c, oc);
        // the weight gradient in two column blocks, as for a fused projection
        let (w1, w2) = dw.split_at_mut(2 * c);
        let (b1, b2) = db.split_at_mut(2);
        linear_backward_weight(Some(w1), Some(b1), &proj, oc, &inp, n, c, 2);
        linear_backward_weight(Some(w2), Some(b2), &proj[2..], oc, &inp, n, c, oc - 2);
        let loss = |inp: &[f64], w: &[f64], b: &[f64]| {
            let mut out = vec![0.0; n * oc];
            linear_forward(&mut out, inp, w, Some(b), n, c, oc);
            project(&out, &proj)
        };
        assert_close("dinp", &dinp, &numeric_grad(&inp, |x| loss(x, &w, &b)), 1e-7);
        assert_close("dw", &dw, &numeric_grad(&w, |x| loss(&inp, x, &b)), 1e-7);
        assert_close("db", &db, &numeric_grad(&b, |x| loss(&inp, &w, x)), 1e-7);
    }

    #[test]
    fn transposed_view() {
        // (2, 3) @ (3, 2)^T-of-(2,3)
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0f64; 4];
        gemm(&mut out, 2, 2, 3, View::rows(&a, 3), View::t(&a, 3), false);
        assert_eq!(out, [14.0, 32.0, 32.0, 77.0]);
    }
}
