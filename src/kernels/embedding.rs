//! Token + position embeddings (GPT-2's wte and wpe).

use super::Real;

/// out (B, T, C) = wte[ids[b, t]] (+ wpe[t] when there are position embeddings)
pub fn embedding_forward<F: Real>(out: &mut [F], ids: &[i64], wte: &[F], wpe: Option<&[F]>, t: usize, c: usize) {
    for (row, (out_row, &id)) in out.chunks_exact_mut(c).zip(ids).enumerate() {
        out_row.copy_from_slice(&wte[id as usize * c..(id as usize + 1) * c]);
        if let Some(wpe) = wpe {
            let pos = row % t;
            for (o, p) in out_row.iter_mut().zip(&wpe[pos * c..(pos + 1) * c]) {
                *o += *p;
            }
        }
    }
}

/// dwte (V, C) += scatter of dout rows by token id; dwpe (maxT, C) += dout summed over batch
/// (None: frozen). Tokens equal to `padding_idx` add nothing to dwte (torch's
/// nn.Embedding(padding_idx=...)).
pub fn embedding_backward<F: Real>(
    mut dwte: Option<&mut [F]>,
    mut dwpe: Option<&mut [F]>,
    dout: &[F],
    ids: &[i64],
    padding_idx: Option<i64>,
    t: usize,
    c: usize,
) {
    for (row, (g, &id)) in dout.chunks_exact(c).zip(ids).enumerate() {
        if let Some(dwte) = dwte.as_deref_mut().filter(|_| Some(id) != padding_idx) {
            let id = id as usize;
            for i in 0..c {
                dwte[id * c + i] += g[i];
            }
        }
        if let Some(dwpe) = dwpe.as_deref_mut() {
            let pos = row % t;
            for i in 0..c {
                dwpe[pos * c + i] += g[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;

    #[test]
    fn backward_matches_finite_differences() {
        let (b, t, c, v) = (2, 3, 4, 5);
        let ids = [1i64, 4, 1, 0, 2, 1];
        let (wte, wpe, proj) = (rand_vec(v * c, 1), rand_vec(t * c, 2), rand_vec(b * t * c, 3));
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        embedding_backward(Some(&mut dwte), Some(&mut dwpe), &proj, &ids, None, t, c);
        let loss = |wte: &[f64], wpe: &[f64]| {
            let mut out = vec![0.0; b * t * c];
            embedding_forward(&mut out, &ids, wte, Some(wpe), t, c);
            project(&out, &proj)
        };
        assert_close("dwte", &dwte, &numeric_grad(&wte, |x| loss(x, &wpe)), 1e-7);
        assert_close("dwpe", &dwpe, &numeric_grad(&wpe, |x| loss(&wte, x)), 1e-7);
    }
}
