//! RMSNorm over the last dimension (Llama's input_layernorm, post_attention_layernorm, norm),
//! and over each attention head of a row (Qwen3's q_norm, k_norm):
//!   out = w * x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps)

use rayon::prelude::*;

use super::cpu::simd;
use super::Real;

/// out (N, C) = w * inp * rstd; saves rstd (N) for the backward.
pub fn rmsnorm_forward<F: Real>(out: &mut [F], rstd: &mut [F], inp: &[F], w: &[F], c: usize, eps: f64) {
    let (eps, cf) = (F::lit(eps), F::lit(c as f64));
    out.par_chunks_mut(c).zip(inp.par_chunks(c)).zip(rstd.par_iter_mut()).for_each(|((o, x), r)| {
        simd(#[inline(always)] move || {
            let ms = x.iter().map(|&v| v * v).sum::<F>() / cf;
            let s = F::one() / (ms + eps).sqrt();
            normalize_row(o, x, s, w);
            *r = s;
        })
    });
}

#[inline(always)]
fn normalize_row<F: Real>(o: &mut [F], x: &[F], s: F, w: &[F]) {
    for i in 0..o.len() {
        o[i] = w[i] * (x[i] * s);
    }
}

/// out (N, C) = the forward's output again, from its input and saved rstd (bit for bit: the
/// backward recomputes it instead of keeping it).
pub fn rmsnorm_recompute<F: Real>(out: &mut [F], inp: &[F], rstd: &[F], w: &[F], c: usize) {
    out.par_chunks_mut(c).zip(inp.par_chunks(c)).zip(rstd.par_iter()).for_each(|((o, x), &s)| {
        simd(#[inline(always)] move || normalize_row(o, x, s, w))
    });
}

/// Backward of `rmsnorm_forward`:
///   dinp (N, C) += rstd * (w dout - x * rstd^2 * mean(w dout x))   (accumulates: residual stream)
///   dw (C) += sum over rows of dout * x * rstd   (None: frozen)
pub fn rmsnorm_backward<F: Real>(dinp: &mut [F], dw: Option<&mut [F]>, dout: &[F], inp: &[F], w: &[F], rstd: &[F], c: usize) {
    let cf = F::lit(c as f64);
    dinp.par_chunks_mut(c).zip(dout.par_chunks(c)).zip(inp.par_chunks(c)).zip(rstd.par_iter()).for_each(
        |(((dx, dy), x), &s)| {
            simd(#[inline(always)] move || {
                let dot = (0..c).map(|i| w[i] * dy[i] * x[i]).sum::<F>() / cf;
                for i in 0..c {
                    dx[i] += s * (w[i] * dy[i] - x[i] * s * s * dot);
                }
            })
        },
    );
    if let Some(dw) = dw {
        simd(#[inline(always)] move || {
            for ((dy, x), &s) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(rstd) {
                for i in 0..c {
                    dw[i] += dy[i] * x[i] * s;
                }
            }
        });
    }
}

/// Where the heads an RMSNorm normalises one by one sit in a row: heads h0..h0 + H of HS
/// columns each, in rows of W columns (the q or k part of a (N, QKV) projection).
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub h0: usize,
    pub h: usize,
    pub hs: usize,
    pub w: usize,
}

/// In place over x (N, W): every head of `at` becomes w (HS) * head * rstd. With `saved`,
/// keeps the heads' input (N, H, HS) and rstd (N, H) for the backward.
pub fn rmsnorm_heads_forward<F: Real>(x: &mut [F], mut saved: Option<(&mut [F], &mut [F])>, w: &[F], at: Heads, eps: f64) {
    let (eps, cf) = (F::lit(eps), F::lit(at.hs as f64));
    for (r, row) in x.chunks_exact_mut(at.w).enumerate() {
        for h in 0..at.h {
            let v = &mut row[(at.h0 + h) * at.hs..][..at.hs];
            let s = F::one() / (v.iter().map(|&a| a * a).sum::<F>() / cf + eps).sqrt();
            if let Some((inp, rstd)) = saved.as_mut() {
                inp[(r * at.h + h) * at.hs..][..at.hs].copy_from_slice(v);
                rstd[r * at.h + h] = s;
            }
            v.iter_mut().zip(w).for_each(|(o, &wi)| *o = wi * (*o * s));
        }
    }
}

/// Backward of `rmsnorm_heads_forward`, in place: the heads of `at` in dx (N, W) hold the
/// gradient of the output and get that of the input; dw (HS) += sum of dout * x * rstd.
pub fn rmsnorm_heads_backward<F: Real>(dx: &mut [F], mut dw: Option<&mut [F]>, inp: &[F], rstd: &[F], w: &[F], at: Heads) {
    let cf = F::lit(at.hs as f64);
    for (r, row) in dx.chunks_exact_mut(at.w).enumerate() {
        for h in 0..at.h {
            let dy = &mut row[(at.h0 + h) * at.hs..][..at.hs];
            let (x, s) = (&inp[(r * at.h + h) * at.hs..][..at.hs], rstd[r * at.h + h]);
            let dot = (0..at.hs).map(|i| w[i] * dy[i] * x[i]).sum::<F>() / cf;
            if let Some(dw) = dw.as_deref_mut() {
                (0..at.hs).for_each(|i| dw[i] += dy[i] * x[i] * s);
            }
            (0..at.hs).for_each(|i| dy[i] = s * (w[i] * dy[i] - x[i] * s * s * dot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;

    #[test]
    fn backward_matches_finite_differences() {
        let (n, c) = (4, 7);
        let (inp, w, proj) = (rand_vec(n * c, 1), rand_vec(c, 2), rand_vec(n * c, 3));
        let fwd = |inp: &[f64], w: &[f64]| {
            let (mut out, mut r) = (vec![0.0; n * c], vec![0.0; n]);
            rmsnorm_forward(&mut out, &mut r, inp, w, c, 1e-6);
            (out, r)
        };
        let (_, r) = fwd(&inp, &w);
        let (mut dinp, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
        rmsnorm_backward(&mut dinp, Some(&mut dw), &proj, &inp, &w, &r, c);
        assert_close("dinp", &dinp, &numeric_grad(&inp, |x| project(&fwd(x, &w).0, &proj)), 1e-7);
        assert_close("dw", &dw, &numeric_grad(&w, |x| project(&fwd(&inp, x).0, &proj)), 1e-7);
        let mut again = vec![9.0; n * c];
        rmsnorm_recompute(&mut again, &inp, &r, &w, c);
        assert_eq!(again, fwd(&inp, &w).0, "recompute is the forward bit for bit");
    }

    #[test]
    fn heads_backward_matches_finite_differences() {
        // rows of 2 heads + 3 heads of 4, normalising the 3 from head 2 on
        let (n, at) = (3, Heads { h0: 2, h: 3, hs: 4, w: 20 });
        let (inp, w, proj) = (rand_vec(n * at.w, 1), rand_vec(at.hs, 2), rand_vec(n * at.w, 3));
        let fwd = |inp: &[f64], w: &[f64]| {
            let (mut out, mut saved, mut r) = (inp.to_vec(), vec![0.0; n * at.h * at.hs], vec![0.0; n * at.h]);
            rmsnorm_heads_forward(&mut out, Some((&mut saved, &mut r)), w, at, 1e-6);
            (out, saved, r)
        };
        let (_, saved, r) = fwd(&inp, &w);
        let (mut dx, mut dw) = (proj.clone(), vec![0.0; at.hs]);
        rmsnorm_heads_backward(&mut dx, Some(&mut dw), &saved, &r, &w, at);
        // the columns outside the heads pass their gradient through unchanged
        assert_close("dinp", &dx, &numeric_grad(&inp, |x| project(&fwd(x, &w).0, &proj)), 1e-7);
        assert_close("dw", &dw, &numeric_grad(&w, |x| project(&fwd(&inp, x).0, &proj)), 1e-7);
    }
}
