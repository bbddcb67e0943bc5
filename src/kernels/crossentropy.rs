//! Softmax cross-entropy over the vocabulary, from logits.
//! `targets[n]` is the class of row n, or -100 (IGNORE_INDEX) for rows that do not count.

use rayon::prelude::*;

use super::cpu::simd;
use super::{lane_sum, lane_sum_by, Real};

pub const IGNORE_INDEX: i64 = -100;

/// Per-batch totals: summed loss (f64), rows counted, rows whose argmax equals the target.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossStats {
    pub loss_sum: f64,
    pub count: usize,
    pub correct: usize,
}

impl std::ops::Add for LossStats {
    type Output = LossStats;
    fn add(self, o: LossStats) -> LossStats {
        LossStats { loss_sum: self.loss_sum + o.loss_sum, count: self.count + o.count, correct: self.correct + o.correct }
    }
}

/// Sums per-row statistics in row order, so totals are bit-identical from run to run.
fn sum_in_order(rows: Vec<LossStats>) -> LossStats {
    rows.into_iter().fold(LossStats::default(), |a, b| a + b)
}

/// Max and argmax of one row.
fn row_max<F: Real>(row: &[F]) -> (F, usize) {
    let (mut max, mut arg) = (F::neg_infinity(), 0);
    for (i, &x) in row.iter().enumerate() {
        if x > max {
            max = x;
            arg = i;
        }
    }
    (max, arg)
}

/// Loss statistics of logits (N, V) against targets (N); logits are not modified.
pub fn crossentropy_forward<F: Real>(logits: &[F], targets: &[i64], v: usize) -> LossStats {
    sum_in_order(crossentropy_rows(logits, targets, v))
}

/// The statistics of each row (N): loss, 1 if counted, 1 if its argmax is the target.
pub fn crossentropy_rows<F: Real>(logits: &[F], targets: &[i64], v: usize) -> Vec<LossStats> {
    logits
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            if t == IGNORE_INDEX {
                return LossStats::default();
            }
            simd(#[inline(always)] move || {
                let (max, arg) = row_max(row);
                let lse = max + lane_sum_by(row, |x| (x - max).vexp()).ln();
                let loss = (lse - row[t as usize]).to_f64().unwrap();
                LossStats { loss_sum: loss, count: 1, correct: (arg == t as usize) as usize }
            })
        })
        .collect()
}

/// Fused forward + backward, in place: logits (N, V) become dlogits = scale * (softmax - onehot)
/// (zero on ignored rows). With scale = 1 / (number of counted tokens of the whole optimizer
/// step) the gradient is that of the token-weighted mean loss.
pub fn crossentropy_forward_backward<F: Real>(logits: &mut [F], targets: &[i64], v: usize, scale: f64) -> LossStats {
    let scale = F::lit(scale);
    let rows = logits
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            if t == IGNORE_INDEX {
                row.fill(F::zero());
                return LossStats::default();
            }
            let t = t as usize;
            simd(#[inline(always)] move || {
                let (max, arg) = row_max(row);
                let target = row[t];
                // one exp per logit: e = exp(x - max) in place, then scale * e / sum(e)
                for x in row.iter_mut() {
                    *x = (*x - max).vexp();
                }
                let sum = lane_sum(row);
                let loss = (max + sum.ln() - target).to_f64().unwrap();
                let k = scale / sum;
                for x in row.iter_mut() {
                    *x *= k;
                }
                row[t] -= scale;
                LossStats { loss_sum: loss, count: 1, correct: (arg == t) as usize }
            })
        })
        .collect();
    sum_in_order(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;

    #[test]
    fn backward_matches_finite_differences() {
        let (n, v) = (4, 6);
        let logits: Vec<f64> = rand_vec(n * v, 1).iter().map(|x| 3.0 * x).collect();
        let targets = [2i64, IGNORE_INDEX, 0, 5];
        let mut grad = logits.clone();
        let st = crossentropy_forward_backward(&mut grad, &targets, v, 1.0 / 3.0);
        assert_eq!(st.count, 3);
        let mean_loss = |l: &[f64]| crossentropy_forward(l, &targets, v).loss_sum / 3.0;
        assert!((st.loss_sum / 3.0 - mean_loss(&logits)).abs() < 1e-12);
        assert_close("dlogits", &grad, &numeric_grad(&logits, mean_loss), 1e-7);
        assert!(grad[v..2 * v].iter().all(|&g| g == 0.0), "ignored row has no gradient");
    }

    #[test]
    fn uniform_logits_give_log_v() {
        let st = crossentropy_forward(&[0.0f64; 8], &[3, 1], 4);
        assert!((st.loss_sum / 2.0 - (4.0f64).ln()).abs() < 1e-12);
    }

    #[test]
    fn rows_add_up_to_the_totals() {
        let (n, v) = (5, 7);
        let logits: Vec<f64> = rand_vec(n * v, 3).iter().map(|x| 4.0 * x).collect();
        let targets = [6i64, IGNORE_INDEX, 0, 3, IGNORE_INDEX];
        let rows = crossentropy_rows(&logits, &targets, v);
        assert_eq!(rows.len(), n);
        assert_eq!(rows[1], LossStats::default());
        assert_eq!(sum_in_order(rows.clone()), crossentropy_forward(&logits, &targets, v));
        let row3 = &logits[3 * v..4 * v];
        let lse = row3.iter().map(|x| x.exp()).sum::<f64>().ln();
        assert!((rows[3].loss_sum - (lse - row3[3])).abs() < 1e-12);
    }
}
