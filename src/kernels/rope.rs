//! Rotary position embeddings, Hugging Face's rotate_half convention: for each head of size
//! HS and i < HS/2, with angle theta = position * inv_freq[i],
//!   y[i]        = x[i] cos - x[i + HS/2] sin
//!   y[i + HS/2] = x[i + HS/2] cos + x[i] sin
//! The backward is the inverse rotation (sin -> -sin).

use rayon::prelude::*;

use super::cpu::simd;
use super::Real;

/// cos and sin tables (P, HS/2) for positions 0..P, computed in f32 as transformers does
/// (its rotary embedding always works in float32, also for a float64 model).
pub fn rope_tables<F: Real>(inv_freq: &[f32], positions: usize) -> (Vec<F>, Vec<F>) {
    let half = inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(positions * half), Vec::with_capacity(positions * half));
    for p in 0..positions {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(F::lit(angle.cos() as f64));
            sin.push(F::lit(angle.sin() as f64));
        }
    }
    (cos, sin)
}

/// Rotates, in place, the first `heads` heads of every row of x (N, W) (the q and k parts of
/// a qkv buffer); row n is at position positions[n]. `inverse` applies the backward.
#[allow(clippy::too_many_arguments)]
pub fn rope_apply<F: Real>(
    x: &mut [F],
    cos: &[F],
    sin: &[F],
    positions: &[usize],
    heads: usize,
    hs: usize,
    w: usize,
    inverse: bool,
) {
    let half = hs / 2;
    x.par_chunks_mut(w).zip(positions.par_iter()).for_each(|(row, &p)| {
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        simd(#[inline(always)] move || {
            for h in 0..heads {
                let head = &mut row[h * hs..(h + 1) * hs];
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    let si = if inverse { -s[i] } else { s[i] };
                    head[i] = a * c[i] + (-b) * si;
                    head[i + half] = b * c[i] + a * si;
                }
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
        let (n, heads, hs, w) = (4, 3, 4, 14);
        let inv_freq = [1.0f32, 0.1];
        let (cos, sin) = rope_tables::<f64>(&inv_freq, 8);
        let positions = [0usize, 3, 5, 7];
        let x = rand_vec(n * w, 1);
        let proj = rand_vec(n * w, 2);
        let mut dx = proj.clone();
        rope_apply(&mut dx, &cos, &sin, &positions, heads, hs, w, true);
        let num = numeric_grad(&x, |x| {
            let mut y = x.to_vec();
            rope_apply(&mut y, &cos, &sin, &positions, heads, hs, w, false);
            project(&y, &proj)
        });
        assert_close("dx", &dx, &num, 1e-7);
        // columns past the rotated heads pass through untouched
        let mut y = x.clone();
        rope_apply(&mut y, &cos, &sin, &positions, heads, hs, w, false);
        assert_eq!(&y[12..14], &x[12..14]);
    }

    #[test]
    fn position_zero_is_identity() {
        let (cos, sin) = rope_tables::<f64>(&[1.0, 0.5], 1);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope_apply(&mut x, &cos, &sin, &[0], 1, 4, 4, false);
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
