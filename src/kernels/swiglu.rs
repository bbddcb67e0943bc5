//! SwiGLU (Llama's MLP activation): h = silu(gate) * up, silu(x) = x * sigmoid(x).
//! The input rows hold [gate (I) | up (I)] side by side (gate_proj and up_proj computed by
//! one matmul).

use rayon::prelude::*;

use super::cpu::simd;
use super::Real;

#[inline(always)]
fn sigmoid<F: Real>(x: F) -> F {
    F::one() / (F::one() + (-x).vexp())
}

/// out (N, I) = silu(gu[:, :I]) * gu[:, I:]   with gu (N, 2I)
pub fn swiglu_forward<F: Real>(out: &mut [F], gu: &[F], i: usize) {
    out.par_chunks_mut(i).zip(gu.par_chunks(2 * i)).for_each(|(o, row)| {
        let (g, u) = row.split_at(i);
        simd(#[inline(always)] move || {
            for k in 0..i {
                o[k] = g[k] * sigmoid(g[k]) * u[k];
            }
        });
    });
}

/// dgu (N, 2I) = [dout * up * silu'(gate) | dout * silu(gate)]   (overwritten)
pub fn swiglu_backward<F: Real>(dgu: &mut [F], dout: &[F], gu: &[F], i: usize) {
    dgu.par_chunks_mut(2 * i).zip(dout.par_chunks(i)).zip(gu.par_chunks(2 * i)).for_each(|((d, dy), row)| {
        let (g, u) = row.split_at(i);
        let (dg, du) = d.split_at_mut(i);
        simd(#[inline(always)] move || {
            for k in 0..i {
                let s = sigmoid(g[k]);
                let silu = g[k] * s;
                dg[k] = dy[k] * u[k] * s * (F::one() + g[k] * (F::one() - s));
                du[k] = dy[k] * silu;
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;

    #[test]
    fn backward_matches_finite_differences() {
        let (n, i) = (3, 5);
        let gu: Vec<f64> = rand_vec(n * 2 * i, 1).iter().map(|x| 3.0 * x).collect();
        let proj = rand_vec(n * i, 2);
        let mut dgu = vec![0.0; gu.len()];
        swiglu_backward(&mut dgu, &proj, &gu, i);
        let num = numeric_grad(&gu, |x| {
            let mut out = vec![0.0; n * i];
            swiglu_forward(&mut out, x, i);
            project(&out, &proj)
        });
        assert_close("dgu", &dgu, &num, 1e-7);
    }
}
