//! RMSNorm over the last dimension (Llama's input_layernorm, post_attention_layernorm, norm):
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
}
