//! GELU, tanh approximation (`gelu_new` / `gelu_pytorch_tanh` in transformers):
//!   y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//! tanh(u) is computed as 1 - 2 / (exp(2u) + 1): one exp instead of libm's much slower tanh
//! (it saturates correctly to +-1 when exp overflows or underflows), with the vectorisable
//! exp of `Real::vexp`; the work is split in blocks whose inner loops vectorise.

use rayon::prelude::*;

use super::cpu::simd;
use super::Real;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const COEF: f64 = 0.044_715;
/// Elements per parallel task.
const BLOCK: usize = 16 * 1024;

#[inline(always)]
fn tanh<F: Real>(u: F) -> F {
    F::one() - (F::one() + F::one()) / ((u + u).vexp() + F::one())
}

/// out (N) = gelu(inp (N))
pub fn gelu_forward<F: Real>(out: &mut [F], inp: &[F]) {
    let (k, a, half) = (F::lit(SQRT_2_OVER_PI), F::lit(COEF), F::lit(0.5));
    out.par_chunks_mut(BLOCK).zip(inp.par_chunks(BLOCK)).for_each(|(out, inp)| {
        simd(#[inline(always)] move || {
            for (o, &x) in out.iter_mut().zip(inp) {
                let t = tanh(k * (x + a * x * x * x));
                *o = half * x * (F::one() + t);
            }
        })
    });
}

/// d (N) *= gelu'(inp (N)): the gradient of GELU's output becomes its input's, in place.
pub fn gelu_backward<F: Real>(d: &mut [F], inp: &[F]) {
    let (k, a, half, three) = (F::lit(SQRT_2_OVER_PI), F::lit(COEF), F::lit(0.5), F::lit(3.0));
    d.par_chunks_mut(BLOCK).zip(inp.par_chunks(BLOCK)).for_each(|(d, inp)| {
        simd(#[inline(always)] move || {
            for (g, &x) in d.iter_mut().zip(inp) {
                let t = tanh(k * (x + a * x * x * x));
                let dt = F::one() - t * t;
                let local = half * (F::one() + t) + half * x * dt * k * (F::one() + three * a * x * x);
                *g *= local;
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;

    #[test]
    fn backward_matches_finite_differences() {
        let n = 50;
        let inp: Vec<f64> = rand_vec(n, 1).iter().map(|x| 4.0 * x).collect();
        let proj = rand_vec(n, 2);
        let mut dinp = proj.clone();
        gelu_backward(&mut dinp, &inp);
        let num = numeric_grad(&inp, |x| {
            let mut out = vec![0.0; n];
            gelu_forward(&mut out, x);
            project(&out, &proj)
        });
        assert_close("dinp", &dinp, &num, 1e-7);
    }

    #[test]
    fn known_values() {
        let mut out = [0.0f64; 3];
        gelu_forward(&mut out, &[0.0, 1.0, -1.0]);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 0.841_191_990_607_477_6).abs() < 1e-12);
        assert!((out[2] + 0.158_808_009_392_522_4).abs() < 1e-12);
    }
}
