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
use super::dropout::Dropout;
use super::{lane_dot, lane_sum, nan_max, Real, SyncPtr};

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

/// Query rows per causal block.
const QUERY_BLOCK: usize = 64;

/// Values saved per query row for the backward: (max score, 1 / sum of exp(score - max)).
/// A query that sees no key has max = -inf and 1 / T (uniform over all T keys).
pub const ROW_STATS: usize = 2;

/// Copies a (T, HS) block into rows `rs` apart of a buffer shared between tasks.
///
/// # Safety
/// Rows `offset + i * rs .. + HS` must be written by no other task meanwhile.
unsafe fn scatter_rows<F: Real>(dst: SyncPtr<F>, offset: usize, rs: usize, block: &[F], hs: usize) {
    for (i, row) in block.chunks_exact(hs).enumerate() {
        dst.slice_mut(offset + i * rs, hs).copy_from_slice(row);
    }
}

/// The causal query blocks (q0, q1, kend) of batch row b: block [q0, q1) sees keys < kend =
/// q1, so the (T, T) square is computed only up to the diagonal blocks; a block with a query
/// that sees no key at all (left padding) takes all T keys, as that query spreads uniformly
/// over all of them.
fn query_blocks(shape: &AttnShape, mask: Option<&[i64]>, b: usize) -> Vec<(usize, usize, usize)> {
    let t = shape.t;
    (0..t)
        .step_by(QUERY_BLOCK)
        .map(|q0| {
            let q1 = (q0 + QUERY_BLOCK).min(t);
            let blind = (q0..q1).any(|tq| !(0..=tq).rev().any(|s| shape.allowed(mask, b, s, tq)));
            (q0, q1, if blind { t } else { q1 })
        })
        .collect()
}

/// Scores of one query block: s (Q, K) = q (Q, HS) @ k^T (HS, K) * scale, with -inf at the
/// keys a query may not see. The forward and the backward both call this, so the backward's
/// recomputed probabilities are bit for bit the forward's.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block_scores<F: Real>(s: &mut [F], q: View<F>, k: View<F>, shape: &AttnShape, mask: Option<&[i64]>, b: usize, block: (usize, usize, usize), scale: F) {
    let (q0, q1, kend) = block;
    gemm_serial(s, kend, q1 - q0, kend, shape.hs, q, k, false, scale);
    for (i, row) in s.chunks_exact_mut(kend).enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            if !shape.allowed(mask, b, j, q0 + i) {
                *x = F::neg_infinity();
            }
        }
    }
}

/// Forward:
///   att (B, NH, T, T) = softmax(q k^T * scale) over allowed keys, never stored
///   out (B, T, NH*HS) = (att * drop) @ v, with `drop` the attention-dropout mask if any
///   stats (B, NH, T, ROW_STATS) = each query row's (max, 1 / sum), what the backward needs
///     to recompute att block by block (online-softmax style: no (T, T) matrix is kept)
/// One task per (batch, head), running its products through a single-threaded gemm over
/// causal blocks of QUERY_BLOCK query rows.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<F: Real>(
    out: &mut [F],
    stats: &mut [F],
    qkv: &[F],
    mask: Option<&[i64]>,
    drop: Option<&Dropout>,
    shape: AttnShape,
    scale: f64,
) {
    let AttnShape { t, nh, hs, .. } = shape;
    let (w, c) = (shape.qkv_width(), nh * hs);
    let scale = F::lit(scale);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    stats.par_chunks_mut(t * ROW_STATS).enumerate().for_each(|(bh, st)| simd(#[inline(always)] move || {
        let (b, h) = (bh / nh, bh % nh);
        let base = b * t * w;
        let (q_all, k_all, v_all) = (&qkv[base + shape.q_off(h)..], &qkv[base + shape.k_off(h)..], &qkv[base + shape.v_off(h)..]);
        let mut s = vec![F::zero(); QUERY_BLOCK * t];
        let mut y = vec![F::zero(); t * hs];
        for block in query_blocks(&shape, mask, b) {
            let (q0, q1, kend) = block;
            let s = &mut s[..(q1 - q0) * kend];
            block_scores(s, View::strided(&q_all[q0 * w..], w), View::strided_t(k_all, w), &shape, mask, b, block, scale);
            for (i, row) in s.chunks_exact_mut(kend).enumerate() {
                let tq = q0 + i;
                let max = row.iter().fold(F::neg_infinity(), |m, &x| nan_max(m, x));
                let inv = if max == F::neg_infinity() {
                    F::one() / F::lit(t as f64)
                } else {
                    row.iter_mut().for_each(|x| *x = (*x - max).vexp()); // exp(-inf) = 0 for the masked keys
                    F::one() / lane_sum(row)
                };
                probs_from_exp(row, max, inv);
                st[tq * ROW_STATS] = max;
                st[tq * ROW_STATS + 1] = inv;
                if let Some(d) = drop {
                    d.apply_row(row, (bh * t + tq) * t);
                }
            }
            // y (Q, HS) = (att * drop) (Q, K) @ v (K, HS)
            gemm_serial(&mut y[q0 * hs..], hs, q1 - q0, hs, kend, View::rows(s, kend), View::strided(v_all, w), false, F::one());
        }
        // SAFETY: columns h*HS..(h+1)*HS of batch b's rows belong to this task only.
        unsafe { scatter_rows(out_ptr, b * t * c + h * hs, c, &y, hs) };
    }));
}

/// A row of exp(score - max) becomes probabilities: times 1 / sum, or uniform (1 / T in
/// `inv`) when the query sees no key (max = -inf).
#[inline(always)]
fn probs_from_exp<F: Real>(row: &mut [F], max: F, inv: F) {
    if max == F::neg_infinity() {
        row.fill(inv);
    } else {
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Backward: dqkv (B, T, (NH + 2 NKV) HS) is overwritten with the gradients of q, k and v,
/// from the forward's `stats`; each causal block recomputes its scores and probabilities
/// (the forward's, bit for bit) and its dropout mask. One task per (batch, key/value head):
/// the query heads sharing a key/value head add into the same dk and dv.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<F: Real>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    stats: &[F],
    mask: Option<&[i64]>,
    drop: Option<&Dropout>,
    shape: AttnShape,
    scale: f64,
) {
    let AttnShape { b: nb, t, nh, nkv, hs, .. } = shape;
    let (w, c, group) = (shape.qkv_width(), nh * hs, nh / nkv);
    let scale = F::lit(scale);
    let dptr = SyncPtr(dqkv.as_mut_ptr());
    (0..nb * nkv).into_par_iter().for_each(|bg| simd(#[inline(always)] move || {
        let (b, g) = (bg / nkv, bg % nkv);
        let base = b * t * w;
        let blocks = query_blocks(&shape, mask, b);
        let (mut dk, mut dv) = (vec![F::zero(); t * hs], vec![F::zero(); t * hs]);
        let (mut p, mut dp, mut dq) = (vec![F::zero(); QUERY_BLOCK * t], vec![F::zero(); QUERY_BLOCK * t], vec![F::zero(); QUERY_BLOCK * hs]);
        let (k_all, v_all) = (&qkv[base + shape.k_off(g * group)..], &qkv[base + shape.v_off(g * group)..]);
        for h in g * group..(g + 1) * group {
            let bh = b * nh + h;
            let q_all = &qkv[base + shape.q_off(h)..];
            let st = &stats[bh * t * ROW_STATS..(bh + 1) * t * ROW_STATS];
            for &block in &blocks {
                let (q0, q1, kend) = block;
                let (p, dp) = (&mut p[..(q1 - q0) * kend], &mut dp[..(q1 - q0) * kend]);
                let q = View::strided(&q_all[q0 * w..], w);
                let dy = View::strided(&dout[(b * t + q0) * c + h * hs..], c);
                // att (Q, K), as the forward had it
                block_scores(p, q, View::strided_t(k_all, w), &shape, mask, b, block, scale);
                for (i, row) in p.chunks_exact_mut(kend).enumerate() {
                    let (max, inv) = (st[(q0 + i) * ROW_STATS], st[(q0 + i) * ROW_STATS + 1]);
                    if max != F::neg_infinity() {
                        row.iter_mut().for_each(|x| *x = (*x - max).vexp());
                    }
                    probs_from_exp(row, max, inv);
                }
                // datt (Q, K) = (dy (Q, HS) @ v^T (HS, K)) * drop
                gemm_serial(dp, kend, q1 - q0, kend, hs, dy, View::strided_t(v_all, w), false, F::one());
                for (i, (pr, dr)) in p.chunks_exact_mut(kend).zip(dp.chunks_exact_mut(kend)).enumerate() {
                    let offset = (bh * t + q0 + i) * t;
                    if let Some(d) = drop {
                        d.apply_row(dr, offset);
                    }
                    // softmax backward: dscores = att * (datt - sum(att * datt)) * scale
                    let weighted = lane_dot(pr, dr);
                    for (x, &a) in dr.iter_mut().zip(pr.iter()) {
                        *x = a * (*x - weighted) * scale;
                    }
                    if let Some(d) = drop {
                        d.apply_row(pr, offset);
                    }
                }
                // dv (K, HS) += (att * drop)^T @ dy;  dk += dscores^T @ q;  dq (Q, HS) = dscores @ k
                gemm_serial(&mut dv, hs, kend, hs, q1 - q0, View::t(p, kend), dy, true, F::one());
                gemm_serial(&mut dk, hs, kend, hs, q1 - q0, View::t(dp, kend), q, true, F::one());
                let dq = &mut dq[..(q1 - q0) * hs];
                gemm_serial(dq, hs, q1 - q0, hs, kend, View::rows(dp, kend), View::strided(k_all, w), false, F::one());
                // SAFETY: the q columns of head h in batch b belong to this task only.
                unsafe { scatter_rows(dptr, base + q0 * w + shape.q_off(h), w, dq, hs) };
            }
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
    (0..nb * nh).into_par_iter().for_each(|bh| simd(#[inline(always)] move || {
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
                    max = nan_max(max, x);
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

    fn forward(qkv: &[f64], mask: Option<&[i64]>, drop: Option<&Dropout>, shape: AttnShape, scale: f64) -> (Vec<f64>, Vec<f64>) {
        let (b, t, nh) = (shape.b, shape.t, shape.nh);
        // reused buffers hold garbage: the forward must overwrite all of them
        let (mut out, mut stats) = (vec![7.0; b * t * nh * shape.hs], vec![7.0; b * nh * t * ROW_STATS]);
        attention_forward(&mut out, &mut stats, qkv, mask, drop, shape, scale);
        (out, stats)
    }

    /// Finite differences; `skip_rows` are (b, t) query rows whose output is left out of the
    /// loss (fully masked rows, whose torch-compatible gradient is not the true derivative).
    fn check(mask: Option<&[i64]>, drop: Option<&Dropout>, skip_rows: &[(usize, usize)]) {
        check_shape(AttnShape::mha(2, 5, 6, 2), mask, drop, skip_rows);
    }

    fn check_shape(shape: AttnShape, mask: Option<&[i64]>, drop: Option<&Dropout>, skip_rows: &[(usize, usize)]) {
        let (b, t, nh) = (shape.b, shape.t, shape.nh);
        let c = nh * shape.hs;
        let qkv = rand_vec(b * t * shape.qkv_width(), 1);
        let mut proj = rand_vec(b * t * c, 2);
        for &(rb, rt) in skip_rows {
            proj[(rb * t + rt) * c..(rb * t + rt + 1) * c].fill(0.0);
        }
        let scale = 1.0 / (shape.hs as f64).sqrt();
        let (_, stats) = forward(&qkv, mask, drop, shape, scale);
        let mut dqkv = vec![7.0; qkv.len()];
        attention_backward(&mut dqkv, &proj, &qkv, &stats, mask, drop, shape, scale);
        let num = numeric_grad(&qkv, |x| project(&forward(x, mask, drop, shape, scale).0, &proj));
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
        check(Some(&[1, 1, 1, 1, 0, 0, 1, 1, 1, 1]), Some(&Dropout::new(0.35, 5)), &[(1, 0)]);
    }

    #[test]
    fn grouped_query_attention_with_sliding_window() {
        let shape = AttnShape { b: 2, t: 6, nh: 4, nkv: 2, hs: 3, window: Some(3) };
        check_shape(shape, Some(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]), None, &[]);
        let mha = AttnShape { window: None, nkv: 4, ..shape };
        check_shape(mha, None, None, &[]);
    }

    /// Over several causal blocks (T = 150 > 2 QUERY_BLOCK), with left padding longer than a
    /// block (a block whose queries see nothing takes all T keys), GQA, a sliding window and
    /// dropout: the gradient against central differences along random directions, where
    /// every coordinate moves at once (one per-coordinate check would take 2 * 2,700 forwards).
    #[test]
    fn blocked_backward_matches_directional_derivatives() {
        let t = 150;
        let left: Vec<i64> = (0..2 * t).map(|i| i64::from(i < t || i - t >= 70)).collect();
        let cases = [
            (AttnShape::mha(2, t, 6, 2), None, None),
            (AttnShape { b: 2, t, nh: 4, nkv: 2, hs: 3, window: Some(40) }, Some(&left[..]), Some(Dropout::new(0.2, 9))),
        ];
        for (shape, mask, drop) in cases {
            let (b, c) = (shape.b, shape.nh * shape.hs);
            let qkv = rand_vec(b * t * shape.qkv_width(), 1);
            let mut proj = rand_vec(b * t * c, 2);
            if mask.is_some() {
                proj[t * c..(t + 70) * c].fill(0.0); // row 1's queries that see nothing
            }
            let loss = |x: &[f64]| project(&forward(x, mask, drop.as_ref(), shape, 0.4).0, &proj);
            let (_, stats) = forward(&qkv, mask, drop.as_ref(), shape, 0.4);
            let mut dqkv = vec![0.0; qkv.len()];
            attention_backward(&mut dqkv, &proj, &qkv, &stats, mask, drop.as_ref(), shape, 0.4);
            for seed in 0..3 {
                let dir = rand_vec(qkv.len(), 100 + seed);
                let h = 1e-6;
                let at = |sign: f64| loss(&qkv.iter().zip(&dir).map(|(x, d)| x + sign * h * d).collect::<Vec<_>>());
                let num = (at(1.0) - at(-1.0)) / (2.0 * h);
                let ana: f64 = dqkv.iter().zip(&dir).map(|(g, d)| g * d).sum();
                assert!((ana - num).abs() <= 1e-7 * num.abs().max(1.0), "direction {seed}: {ana} vs {num}");
            }
        }
    }

    /// Against the formula, over more query rows than one causal block (QUERY_BLOCK): no mask,
    /// left padding longer than a block (queries that see nothing), right padding, a sliding
    /// window with GQA; outputs and the saved (max, 1 / sum) of every row.
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
            let (out, stats) = forward(&qkv, mask, None, shape, 0.3);
            for bb in 0..b {
                for h in 0..nh {
                    for tq in 0..t {
                        let q = &qkv[(bb * t + tq) * w + shape.q_off(h)..][..hs];
                        let allowed: Vec<usize> = (0..t).filter(|&s| shape.allowed(mask, bb, s, tq)).collect();
                        let mut p = vec![0.0; t];
                        let st = &stats[((bb * nh + h) * t + tq) * ROW_STATS..][..ROW_STATS];
                        if allowed.is_empty() {
                            p.fill(1.0 / t as f64);
                            assert_eq!(st, [f64::NEG_INFINITY, 1.0 / t as f64]);
                        } else {
                            let score = |s: usize| 0.3 * (0..hs).map(|j| q[j] * qkv[(bb * t + s) * w + shape.k_off(h) + j]).sum::<f64>();
                            let max = allowed.iter().map(|&s| score(s)).fold(f64::NEG_INFINITY, f64::max);
                            let z: f64 = allowed.iter().map(|&s| (score(s) - max).exp()).sum();
                            for &s in &allowed {
                                p[s] = (score(s) - max).exp() / z;
                            }
                            assert_close("row stats", st, &[max, 1.0 / z], 1e-12);
                        }
                        let y: Vec<f64> = (0..hs).map(|j| (0..t).map(|s| p[s] * qkv[(bb * t + s) * w + shape.v_off(h) + j]).sum()).collect();
                        assert_close("out row", &out[(bb * t + tq) * c + h * hs..][..hs], &y, 1e-12);
                    }
                }
            }
        }
    }

    /// A key outside a query's sliding window, or in the future, does not reach its output.
    #[test]
    fn sliding_window_limits_keys() {
        let shape = AttnShape { b: 1, t: 5, nh: 1, nkv: 1, hs: 2, window: Some(2) };
        let qkv = rand_vec(5 * 6, 4);
        let (out, _) = forward(&qkv, None, None, shape, 1.0);
        for s in 0..5 {
            let mut moved = qkv.clone();
            moved[s * 6 + 2] += 1.0; // key s
            moved[s * 6 + 4] += 1.0; // value s
            let (out2, _) = forward(&moved, None, None, shape, 1.0);
            for tq in 0..5 {
                let visible = s <= tq && tq - s < 2;
                assert_eq!(out[tq * 2..tq * 2 + 2] != out2[tq * 2..tq * 2 + 2], visible, "query {tq} key {s}");
            }
        }
    }

    #[test]
    fn fully_masked_query_is_uniform_over_all_keys() {
        let shape = AttnShape::mha(1, 4, 4, 1);
        let qkv = rand_vec(4 * 12, 3);
        let (out, stats) = forward(&qkv, Some(&[0, 1, 1, 1]), None, shape, 0.5);
        assert_eq!(stats[..2], [f64::NEG_INFINITY, 0.25]);
        let v_mean: Vec<f64> = (0..4).map(|j| (0..4).map(|s| qkv[s * 12 + 8 + j]).sum::<f64>() / 4.0).collect();
        assert_close("uniform row output", &out[0..4], &v_mean, 1e-12);
        // query 1 sees only key 1 (key 0 is padding): its output is v_1
        assert_close("one visible key", &out[4..8], &qkv[12 + 8..12 + 12], 1e-12);
    }

    #[test]
    fn nan_scores_propagate_and_never_reach_future_keys() {
        // a NaN query of query 0 (head 0): its row is NaN, not "sees no key" (uniform over
        // all keys, future ones included); the other queries are untouched
        let shape = AttnShape::mha(1, 4, 4, 1);
        let mut qkv = rand_vec(4 * 12, 3);
        qkv[0] = f64::NAN;
        let (out, stats) = forward(&qkv, None, None, shape, 0.5);
        assert!(stats[0].is_nan(), "row max {}", stats[0]);
        assert!(out[0..4].iter().all(|x| x.is_nan()), "{:?}", &out[0..4]);
        let clean = forward(&rand_vec(4 * 12, 3), None, None, shape, 0.5).0;
        assert_eq!(out[4..], clean[4..]);
        // a NaN key poisons the queries that see it (1..4), not query 0
        let mut qkv = rand_vec(4 * 12, 3);
        qkv[12 + 4] = f64::NAN;
        let (out, _) = forward(&qkv, None, None, shape, 0.5);
        assert_eq!(out[0..4], clean[0..4]);
        assert!(out[4..].iter().all(|x| x.is_nan()));
    }
}
