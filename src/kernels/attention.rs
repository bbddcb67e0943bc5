//! Causal multi-head self-attention with a key padding mask.
//!
//! qkv (B, T, 3C) holds q | k | v for each position, head h owning columns h*HS..(h+1)*HS of
//! each third (Hugging Face GPT-2's c_attn layout). Query t attends to keys s <= t whose
//! padding mask is 1.
//!
//! A query with no key to attend to (a left-padding position) does what transformers' eager
//! attention does: all its scores are the most negative float, so its softmax is uniform
//! over all T keys (future ones included), and torch's softmax backward at that point still
//! sends gradient to q and k. Matching this matters: with the usual shift, the last padding
//! position predicts the first real token, so it enters the loss.
//! Work is split across (batch, head) pairs, one thread per pair group.

use rayon::prelude::*;

use super::cpu::simd;
use super::matmul::{gemm_serial, View};
use super::{lane_dot, lane_sum, Real, SyncPtr};

/// Sizes of one attention call. Query head h reads key/value head h / (NH / NKV)
/// (grouped-query attention; NKV = NH is plain multi-head attention).
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hs: usize,
    /// Sliding window (Mistral): query t sees keys s with t - s < window.
    pub window: Option<usize>,
}

impl AttnShape {
    /// Multi-head attention over C channels (GPT-2).
    pub fn mha(b: usize, t: usize, c: usize, nh: usize) -> Self {
        Self { b, t, nh, nkv: nh, hs: c / nh, window: None }
    }
    /// Row length of the qkv buffer: q (NH*HS) | k (NKV*HS) | v (NKV*HS).
    pub fn qkv_width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hs
    }
    fn q_off(&self, h: usize) -> usize {
        h * self.hs
    }
    fn k_off(&self, h: usize) -> usize {
        (self.nh + h / (self.nh / self.nkv)) * self.hs
    }
    fn v_off(&self, h: usize) -> usize {
        (self.nh + self.nkv + h / (self.nh / self.nkv)) * self.hs
    }
    #[inline]
    fn allowed(&self, mask: Option<&[i64]>, b: usize, s: usize, tq: usize) -> bool {
        s <= tq && self.window.is_none_or(|w| tq - s < w) && mask.is_none_or(|m| m[b * self.t + s] != 0)
    }
}

/// Query rows per causal block of the forward (`attention_forward`).
const QUERY_BLOCK: usize = 64;

/// Copies a (T, HS) block into rows `rs` apart of a buffer shared between tasks.
///
/// # Safety
/// Rows `offset + i * rs .. + HS` must be written by no other task meanwhile.
unsafe fn scatter_rows<F: Real>(dst: SyncPtr<F>, offset: usize, rs: usize, block: &[F], hs: usize) {
    for (i, row) in block.chunks_exact(hs).enumerate() {
        dst.slice_mut(offset + i * rs, hs).copy_from_slice(row);
    }
}

/// Forward:
///   att (B, NH, T, T) = softmax(q k^T * scale) over allowed keys (0 elsewhere), saved for backward
///   out (B, T, NH*HS) = (att * drop) @ v, with `drop` (B, NH, T, T) the attention-dropout mask if any
/// Each (batch, head) task runs its two products through a single-threaded gemm.
pub fn attention_forward<F: Real>(
    out: &mut [F],
    att: &mut [F],
    qkv: &[F],
    mask: Option<&[i64]>,
    drop: Option<&[F]>,
    shape: AttnShape,
    scale: f64,
) {
    let AttnShape { t, nh, hs, .. } = shape;
    let (w, c) = (shape.qkv_width(), nh * hs);
    let scale = F::lit(scale);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    att.par_chunks_mut(t * t).enumerate().for_each(|(bh, att_bh)| simd(#[inline(always)] || {
        let (b, h) = (bh / nh, bh % nh);
        let base = b * t * w;
        let (q_all, k_all) = (&qkv[base + shape.q_off(h)..], &qkv[base + shape.k_off(h)..]);
        // causal blocks of query rows: block [q0, q1) sees keys < q1, so the (T, T) square is
        // computed only up to the diagonal blocks; a block with a query that sees no key at all
        // (left padding) takes all T keys, as that query spreads uniformly over all of them
        let blocks: Vec<(usize, usize, usize)> = (0..t)
            .step_by(QUERY_BLOCK)
            .map(|q0| {
                let q1 = (q0 + QUERY_BLOCK).min(t);
                let blind = (q0..q1).any(|tq| !(0..=tq).rev().any(|s| shape.allowed(mask, b, s, tq)));
                (q0, q1, if blind { t } else { q1 })
            })
            .collect();
        for &(q0, q1, kend) in &blocks {
            // scores (Q, K) = q (Q, HS) @ k^T (HS, K) * scale, rows q0..q1 of att
            let rows = &mut att_bh[q0 * t..q1 * t];
            gemm_serial(rows, t, q1 - q0, kend, hs, View::strided(&q_all[q0 * w..], w), View::strided_t(k_all, w), false, scale);
            for (i, row) in rows.chunks_exact_mut(t).enumerate() {
                let tq = q0 + i;
                row[kend..].fill(F::zero());
                let mut max = F::neg_infinity();
                for (s, x) in row[..kend].iter_mut().enumerate() {
                    if shape.allowed(mask, b, s, tq) {
                        max = max.max(*x);
                    } else {
                        *x = F::neg_infinity();
                    }
                }
                if max == F::neg_infinity() {
                    row.fill(F::one() / F::lit(t as f64));
                    continue;
                }
                let row = &mut row[..kend];
                for x in row.iter_mut() {
                    *x = (*x - max).vexp(); // exp(-inf) = 0 for the masked keys
                }
                let inv = F::one() / lane_sum(row);
                row.iter_mut().for_each(|x| *x *= inv);
            }
        }
        // y (T, HS) = (att * drop) (T, T) @ v (T, HS), block by block over the keys each sees
        let dropped: Vec<F>;
        let p = match drop {
            Some(d) => {
                dropped = att_bh.iter().zip(&d[bh * t * t..(bh + 1) * t * t]).map(|(&a, &m)| a * m).collect();
                &dropped[..]
            }
            None => &att_bh[..],
        };
        let mut y = vec![F::zero(); t * hs];
        let v_all = &qkv[base + shape.v_off(h)..];
        for &(q0, q1, kend) in &blocks {
            gemm_serial(&mut y[q0 * hs..], hs, q1 - q0, hs, kend, View::rows(&p[q0 * t..], t), View::strided(v_all, w), false, F::one());
        }
        // SAFETY: columns h*HS..(h+1)*HS of batch b's rows belong to this task only.
        unsafe { scatter_rows(out_ptr, b * t * c + h * hs, c, &y, hs) };
    }));
}

/// Backward: dqkv (B, T, (NH + 2 NKV) HS) is overwritten with the gradients of q, k and v.
/// One task per (batch, key/value head): the query heads sharing a key/value head add into
/// the same dk and dv, so they run in the same task.
pub fn attention_backward<F: Real>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    att: &[F],
    drop: Option<&[F]>,
    shape: AttnShape,
    scale: f64,
) {
    let AttnShape { b: nb, t, nh, nkv, hs, .. } = shape;
    let (w, c, group) = (shape.qkv_width(), nh * hs, nh / nkv);
    let scale = F::lit(scale);
    let dptr = SyncPtr(dqkv.as_mut_ptr());
    (0..nb * nkv).into_par_iter().for_each(|bg| simd(#[inline(always)] || {
        let (b, g) = (bg / nkv, bg % nkv);
        let base = b * t * w;
        let (mut dk, mut dv, mut dq) = (vec![F::zero(); t * hs], vec![F::zero(); t * hs], vec![F::zero(); t * hs]);
        let (mut dp, mut pd) = (vec![F::zero(); t * t], Vec::new());
        for h in g * group..(g + 1) * group {
            let bh = b * nh + h;
            let a = &att[bh * t * t..(bh + 1) * t * t];
            let d = drop.map(|d| &d[bh * t * t..(bh + 1) * t * t]);
            let dy = View::strided(&dout[b * t * c + h * hs..], c);
            let v = View::strided_t(&qkv[base + shape.v_off(h)..], w);
            // d(att * drop) (T, T) = dy (T, HS) @ v^T;  dv += (att * drop)^T @ dy
            gemm_serial(&mut dp, t, t, t, hs, dy, v, false, F::one());
            let p = match d {
                Some(d) => {
                    pd.clear();
                    pd.extend(a.iter().zip(d).map(|(&x, &m)| x * m));
                    &pd[..]
                }
                None => a,
            };
            gemm_serial(&mut dv, hs, t, hs, t, View::t(p, t), dy, true, F::one());
            // softmax backward: dscores = att * (datt - sum(att * datt)) * scale
            for tq in 0..t {
                let (ar, dr) = (&a[tq * t..(tq + 1) * t], &mut dp[tq * t..(tq + 1) * t]);
                if let Some(d) = d {
                    dr.iter_mut().zip(&d[tq * t..(tq + 1) * t]).for_each(|(x, &m)| *x *= m);
                }
                let weighted = lane_dot(ar, dr);
                for (x, &p) in dr.iter_mut().zip(ar) {
                    *x = p * (*x - weighted) * scale;
                }
            }
            // dq (T, HS) = dscores @ k;  dk += dscores^T @ q
            gemm_serial(&mut dq, hs, t, hs, t, View::rows(&dp, t), View::strided(&qkv[base + shape.k_off(h)..], w), false, F::one());
            // SAFETY: the q columns of head h in batch b belong to this task only.
            unsafe { scatter_rows(dptr, base + shape.q_off(h), w, &dq, hs) };
            gemm_serial(&mut dk, hs, t, hs, t, View::t(&dp, t), View::strided(&qkv[base + shape.q_off(h)..], w), true, F::one());
        }
        // SAFETY: the k and v columns of kv head g in batch b belong to this task only.
        unsafe {
            scatter_rows(dptr, base + shape.k_off(g * group), w, &dk, hs);
            scatter_rows(dptr, base + shape.v_off(g * group), w, &dv, hs);
        }
    }));
}

/// Inference attention over a key/value cache (no backward: generation only).
///
/// kc, vc (B, NKV, S, HS): cached keys/values; positions `past..past + T` must already hold
/// this call's keys and values. key_mask (B, S): 1 where a key may be attended to.
/// qkv (B, T, (NH + 2 NKV) HS) gives the queries; out (B, T, NH*HS). Query i (absolute index
/// past + i) attends to keys s <= past + i with key_mask 1 (and inside the sliding window if
/// any); a query with no such key is uniform over all past + T keys, as in `attention_forward`.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached_forward<F: Real>(
    out: &mut [F],
    qkv: &[F],
    kc: &[F],
    vc: &[F],
    key_mask: &[u8],
    shape: AttnShape,
    past: usize,
    cap: usize,
    scale: f64,
) {
    let AttnShape { b: nb, t, nh, nkv, hs, window } = shape;
    let (w, c, group) = (shape.qkv_width(), nh * hs, nh / nkv);
    let total = past + t;
    let scale = F::lit(scale);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..nb * nh).into_par_iter().for_each(|bh| simd(#[inline(always)] || {
        let (b, h) = (bh / nh, bh % nh);
        let kvh = b * nkv + h / group;
        let kb = &kc[kvh * cap * hs..(kvh * cap + total) * hs];
        let vb = &vc[kvh * cap * hs..(kvh * cap + total) * hs];
        let km = &key_mask[b * cap..b * cap + total];
        let mut row = vec![F::zero(); total];
        for i in 0..t {
            let tq = past + i;
            let q = &qkv[(b * t + i) * w + shape.q_off(h)..][..hs];
            let mut max = F::neg_infinity();
            for s in 0..=tq {
                row[s] = if km[s] != 0 && window.is_none_or(|wd| tq - s < wd) {
                    let x = lane_dot(q, &kb[s * hs..(s + 1) * hs]) * scale;
                    max = max.max(x);
                    x
                } else {
                    F::neg_infinity()
                };
            }
            let n_keys = if max == F::neg_infinity() {
                row.fill(F::one() / F::lit(total as f64));
                total
            } else {
                for x in row[..=tq].iter_mut() {
                    *x = (*x - max).vexp(); // exp(-inf) = 0 for the masked keys
                }
                let inv = F::one() / lane_sum(&row[..=tq]);
                row[..=tq].iter_mut().for_each(|x| *x *= inv);
                tq + 1
            };
            // SAFETY: (b, i, h) addresses a HS-slice of `out` owned by this (b, h) task only.
            let y = unsafe { out_ptr.slice_mut((b * t + i) * c + h * hs, hs) };
            y.fill(F::zero());
            for (s, &a) in row[..n_keys].iter().enumerate() {
                if a != F::zero() {
                    for (yi, &vi) in y.iter_mut().zip(&vb[s * hs..(s + 1) * hs]) {
                        *yi += a * vi;
                    }
                }
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;

    /// Finite differences; `skip_rows` are (b, t) query rows whose output is left out of the
    /// loss (fully masked rows, whose torch-compatible gradient is not the true derivative).
    fn check(mask: Option<&[i64]>, drop: Option<&[f64]>, skip_rows: &[(usize, usize)]) {
        check_shape(AttnShape::mha(2, 5, 6, 2), mask, drop, skip_rows);
    }

    fn check_shape(shape: AttnShape, mask: Option<&[i64]>, drop: Option<&[f64]>, skip_rows: &[(usize, usize)]) {
        let (b, t, nh) = (shape.b, shape.t, shape.nh);
        let c = nh * shape.hs;
        let qkv = rand_vec(b * t * shape.qkv_width(), 1);
        let mut proj = rand_vec(b * t * c, 2);
        for &(rb, rt) in skip_rows {
            proj[(rb * t + rt) * c..(rb * t + rt + 1) * c].fill(0.0);
        }
        let scale = 1.0 / (shape.hs as f64).sqrt();
        let fwd = |qkv: &[f64]| {
            let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
            attention_forward(&mut out, &mut att, qkv, mask, drop, shape, scale);
            (out, att)
        };
        let (_, att) = fwd(&qkv);
        let mut dqkv = vec![0.0; qkv.len()];
        attention_backward(&mut dqkv, &proj, &qkv, &att, drop, shape, scale);
        let num = numeric_grad(&qkv, |x| project(&fwd(x).0, &proj));
        assert_close("dqkv", &dqkv, &num, 1e-7);
    }

    #[test]
    fn backward_matches_finite_differences() {
        check(None, None, &[]);
    }

    #[test]
    fn backward_with_padding_both_sides() {
        // row 0 right-padded, row 1 left-padded (its first query attends to nothing)
        check(Some(&[1, 1, 1, 0, 0, 0, 0, 1, 1, 1]), None, &[(1, 0), (1, 1)]);
    }

    #[test]
    fn backward_with_dropout_mask() {
        let d: Vec<f64> = rand_vec(2 * 2 * 5 * 5, 5).iter().map(|&x| if x < -0.3 { 0.0 } else { 1.0 / 0.65 }).collect();
        check(Some(&[1, 1, 1, 1, 0, 0, 1, 1, 1, 1]), Some(&d), &[(1, 0)]);
    }

    #[test]
    fn grouped_query_attention_with_sliding_window() {
        let shape = AttnShape { b: 2, t: 6, nh: 4, nkv: 2, hs: 3, window: Some(3) };
        check_shape(shape, Some(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]), None, &[]);
        let mha = AttnShape { window: None, nkv: 4, ..shape };
        check_shape(mha, None, None, &[]);
    }

    /// Against the formula, over more query rows than one causal block (QUERY_BLOCK): no mask,
    /// left padding longer than a block (queries that see nothing), right padding, a sliding
    /// window with GQA; the att buffer starts full of garbage, as a reused one is.
    #[test]
    fn blocked_forward_matches_the_formula() {
        let t = 150;
        let left: Vec<i64> = (0..2 * t).map(|i| i64::from(i < t || i - t >= 70)).collect();
        let right: Vec<i64> = (0..2 * t).map(|i| i64::from(i % t < 120)).collect();
        let cases = [
            (AttnShape::mha(2, t, 6, 2), None),
            (AttnShape::mha(2, t, 6, 2), Some(&left[..])),
            (AttnShape::mha(2, t, 6, 2), Some(&right[..])),
            (AttnShape { b: 2, t, nh: 4, nkv: 2, hs: 3, window: Some(40) }, Some(&left[..])),
        ];
        for (shape, mask) in cases {
            let (b, nh, hs) = (shape.b, shape.nh, shape.hs);
            let (w, c) = (shape.qkv_width(), nh * hs);
            let qkv = rand_vec(b * t * w, 7);
            let (mut out, mut att) = (vec![0.0; b * t * c], vec![7.0; b * nh * t * t]);
            attention_forward(&mut out, &mut att, &qkv, mask, None, shape, 0.3);
            for bb in 0..b {
                for h in 0..nh {
                    for tq in 0..t {
                        let q = &qkv[(bb * t + tq) * w + shape.q_off(h)..][..hs];
                        let allowed: Vec<usize> = (0..t).filter(|&s| shape.allowed(mask, bb, s, tq)).collect();
                        let mut p = vec![0.0; t];
                        if allowed.is_empty() {
                            p.fill(1.0 / t as f64);
                        } else {
                            let score = |s: usize| 0.3 * (0..hs).map(|j| q[j] * qkv[(bb * t + s) * w + shape.k_off(h) + j]).sum::<f64>();
                            let max = allowed.iter().map(|&s| score(s)).fold(f64::NEG_INFINITY, f64::max);
                            let z: f64 = allowed.iter().map(|&s| (score(s) - max).exp()).sum();
                            for &s in &allowed {
                                p[s] = (score(s) - max).exp() / z;
                            }
                        }
                        assert_close("att row", &att[((bb * nh + h) * t + tq) * t..][..t], &p, 1e-12);
                        let y: Vec<f64> = (0..hs).map(|j| (0..t).map(|s| p[s] * qkv[(bb * t + s) * w + shape.v_off(h) + j]).sum()).collect();
                        assert_close("out row", &out[(bb * t + tq) * c + h * hs..][..hs], &y, 1e-12);
                    }
                }
            }
        }
    }

    #[test]
    fn sliding_window_limits_keys() {
        let shape = AttnShape { b: 1, t: 5, nh: 1, nkv: 1, hs: 2, window: Some(2) };
        let qkv = rand_vec(5 * 6, 4);
        let (mut out, mut att) = (vec![0.0; 10], vec![0.0; 25]);
        attention_forward(&mut out, &mut att, &qkv, None, None, shape, 1.0);
        for tq in 0..5 {
            for s in 0..5 {
                let visible = s <= tq && tq - s < 2;
                assert_eq!(att[tq * 5 + s] != 0.0, visible, "query {tq} key {s}");
            }
        }
    }

    #[test]
    fn rows_are_causal_distributions() {
        let shape = AttnShape::mha(1, 4, 4, 1);
        let qkv = rand_vec(4 * 12, 3);
        let (mut out, mut att) = (vec![0.0; 16], vec![0.0; 16]);
        attention_forward(&mut out, &mut att, &qkv, Some(&[0, 1, 1, 1]), None, shape, 0.5);
        assert!(att[0..4].iter().all(|&a| a == 0.25), "fully masked query row is uniform over all keys");
        let v_mean: Vec<f64> = (0..4).map(|j| (0..4).map(|s| qkv[s * 12 + 8 + j]).sum::<f64>() / 4.0).collect();
        assert_close("uniform row output", &out[0..4], &v_mean, 1e-12);
        for tq in 1..4 {
            let row = &att[tq * 4..tq * 4 + 4];
            assert_eq!(row[0], 0.0, "padding key masked");
            assert!(row[tq + 1..].iter().all(|&a| a == 0.0), "future keys masked");
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
}
