//! LayerNorm over the last dimension (GPT-2's ln_1, ln_2, ln_f).

use rayon::prelude::*;

use super::cpu::simd;
use super::{lane_sum, lane_sum_by, Real};

/// out (N, C) = (inp - mean) * rstd * w + b; saves mean (N) and rstd (N) for the backward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<F: Real>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    w: &[F],
    b: &[F],
    c: usize,
    eps: f64,
) {
    let eps = F::lit(eps);
    let cf = F::lit(c as f64);
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (m_out, s_out))| {
            simd(#[inline(always)] move || {
                let m = lane_sum(x) / cf;
                let v = lane_sum_by(x, |xi| (xi - m) * (xi - m)) / cf;
                let s = F::one() / (v + eps).sqrt();
                normalize_row(o, x, m, s, w, b);
                *m_out = m;
                *s_out = s;
            })
        });
}

#[inline(always)]
fn normalize_row<F: Real>(o: &mut [F], x: &[F], m: F, s: F, w: &[F], b: &[F]) {
    for i in 0..o.len() {
        o[i] = (x[i] - m) * s * w[i] + b[i];
    }
}

/// out (N, C) = the forward's output again, from its input and saved mean and rstd (bit for
/// bit: the backward recomputes it instead of keeping it).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_recompute<F: Real>(out: &mut [F], inp: &[F], mean: &[F], rstd: &[F], w: &[F], b: &[F], c: usize) {
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((o, x), (&m, &s))| simd(#[inline(always)] move || normalize_row(o, x, m, s, w, b)));
}

/// Backward of `layernorm_forward`:
///   dinp (N, C) += ...   (accumulates: it is the residual stream's gradient)
///   dw (C) += sum over rows of dout * xhat,  db (C) += sum over rows of dout  (None: frozen)
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<F: Real>(
    dinp: &mut [F],
    mut dw: Option<&mut [F]>,
    mut db: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    w: &[F],
    mean: &[F],
    rstd: &[F],
    c: usize,
) {
    let cf = F::lit(c as f64);
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|(((dx, dy), x), (&m, &s))| {
            simd(#[inline(always)] move || {
                // dnorm = dy * w; dx = s * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat))
                // both sums in the 16 lanes of lane_sum_by
                let (mut sum, mut sum_xhat) = ([F::zero(); 16], [F::zero(); 16]);
                let whole = c - c % 16;
                for ((d, wc), xc) in dy[..whole].chunks_exact(16).zip(w[..whole].chunks_exact(16)).zip(x[..whole].chunks_exact(16)) {
                    for j in 0..16 {
                        let dnorm = d[j] * wc[j];
                        sum[j] += dnorm;
                        sum_xhat[j] += dnorm * ((xc[j] - m) * s);
                    }
                }
                for i in whole..c {
                    let dnorm = dy[i] * w[i];
                    sum[i - whole] += dnorm;
                    sum_xhat[i - whole] += dnorm * ((x[i] - m) * s);
                }
                let dnorm_mean = lane_sum(&sum) / cf;
                let dnorm_xhat_mean = lane_sum(&sum_xhat) / cf;
                for i in 0..c {
                    let xhat = (x[i] - m) * s;
                    let dnorm = dy[i] * w[i];
                    dx[i] += s * (dnorm - dnorm_mean - xhat * dnorm_xhat_mean);
                }
            })
        });
    // column sums over the rows, vectorised along C
    simd(#[inline(always)] move || {
        if let Some(dw) = dw.as_deref_mut() {
            for ((dy, x), (&m, &s)) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(mean.iter().zip(rstd)) {
                for i in 0..c {
                    dw[i] += dy[i] * (x[i] - m) * s;
                }
            }
        }
        if let Some(db) = db.as_deref_mut() {
            for dy in dout.chunks_exact(c) {
                for i in 0..c {
                    db[i] += dy[i];
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;

    #[test]
    fn backward_matches_finite_differences() {
        let (n, c) = (5, 7);
        let (inp, w, b, proj) = (rand_vec(n * c, 1), rand_vec(c, 2), rand_vec(c, 3), rand_vec(n * c, 4));
        let fwd = |inp: &[f64], w: &[f64], b: &[f64]| {
            let (mut out, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut out, &mut m, &mut s, inp, w, b, c, 1e-5);
            (out, m, s)
        };
        let (_, m, s) = fwd(&inp, &w, &b);
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        layernorm_backward(&mut dinp, Some(&mut dw), Some(&mut db), &proj, &inp, &w, &m, &s, c);
        let loss = |i: &[f64], w: &[f64], b: &[f64]| project(&fwd(i, w, b).0, &proj);
        assert_close("dinp", &dinp, &numeric_grad(&inp, |x| loss(x, &w, &b)), 1e-7);
        assert_close("dw", &dw, &numeric_grad(&w, |x| loss(&inp, x, &b)), 1e-7);
        assert_close("db", &db, &numeric_grad(&b, |x| loss(&inp, &w, x)), 1e-7);
    }

    #[test]
    fn recompute_is_the_forward_bit_for_bit() {
        let (n, c) = (6, 37);
        let (inp, w, b) = (rand_vec(n * c, 5), rand_vec(c, 6), rand_vec(c, 7));
        let (mut out, mut m, mut s) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (inp, w, b) = (f(&inp), f(&w), f(&b));
        layernorm_forward(&mut out, &mut m, &mut s, &inp, &w, &b, c, 1e-5);
        let mut again = vec![9.0f32; n * c];
        layernorm_recompute(&mut again, &inp, &m, &s, &w, &b, c);
        assert_eq!(again, out);
    }

    #[test]
    fn normalises_rows() {
        let (n, c) = (3, 8);
        let inp = rand_vec(n * c, 9);
        let (mut out, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut m, &mut s, &inp, &[1.0; 8], &[0.0; 8], c, 0.0);
        for row in out.chunks(c) {
            let mean: f64 = row.iter().sum::<f64>() / c as f64;
            let var: f64 = row.iter().map(|x| x * x).sum::<f64>() / c as f64;
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-9);
        }
    }
}
