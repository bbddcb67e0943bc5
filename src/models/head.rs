//! What sits on the final hidden states: the language-model head (tied or untied) or a
//! sequence-classification head, and the loss backward of either.
//!
//! Sequence classification on top of a causal backbone (transformers'
//! `GPT2ForSequenceClassification`, `LlamaForSequenceClassification`): a bias-free linear
//! `score` (L, C) on the final hidden state of each row's last non-padding token, and the
//! cross-entropy over rows (single-label classification).
//!
//! The pooled position is transformers': the rightmost token whose id is not
//! `pad_token_id` (the attention mask is not used); without a pad token only a batch of one
//! row is accepted. Labels are one class per row, -100 for rows that do not count.
//!
//! Shapes: B = batch, T = time, C = hidden size, L = num_labels, N = B * T.

use std::ops::Range;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::kernels::crossentropy::{crossentropy_forward, crossentropy_forward_backward, LossStats};
use crate::kernels::hugepages;
use crate::kernels::matmul::{gemm, View};
use crate::kernels::Real;
use crate::models::{held, loss_scale, GradView};

/// What the config asks for on top of the backbone.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqClsSpec {
    pub num_labels: usize,
    pub pad_token_id: Option<i64>,
}

impl SeqClsSpec {
    /// A classification head when `architectures` names a `...ForSequenceClassification`.
    pub fn from_config(v: &Value) -> Result<Option<Self>> {
        let arch = v.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str).unwrap_or("");
        if !arch.ends_with("ForSequenceClassification") {
            return Ok(None);
        }
        let num_labels = v
            .get("num_labels")
            .and_then(Value::as_u64)
            .or_else(|| v.get("id2label").and_then(Value::as_object).map(|m| m.len() as u64))
            .unwrap_or(2) as usize;
        if num_labels < 2 {
            return Err(Error::Config(format!(
                "sequence classification needs num_labels >= 2 (regression with num_labels=1 is not supported), got {num_labels}"
            )));
        }
        if let Some(pt) = v.get("problem_type").and_then(Value::as_str) {
            if pt != "single_label_classification" {
                return Err(Error::Config(format!("problem_type {pt:?} is not supported (supported: single_label_classification)")));
            }
        }
        let pad_token_id = v.get("pad_token_id").and_then(Value::as_i64);
        Ok(Some(Self { num_labels, pad_token_id }))
    }
}

pub struct SeqClsHead<F> {
    pub spec: SeqClsSpec,
    /// score.weight (L, C)
    pub score: Range<usize>,
    pool: Vec<usize>,   // (B) row index into N of each row's pooled token
    pooled: Vec<F>,     // (B, C)
    logits: Vec<F>,     // (B, L), the backward turns it into dlogits in place
    targets: Vec<i64>,  // (B)
}

impl<F: Real> SeqClsHead<F> {
    pub fn new(spec: SeqClsSpec, score: Range<usize>) -> Self {
        Self { spec, score, pool: Vec::new(), pooled: Vec::new(), logits: Vec::new(), targets: Vec::new() }
    }

    /// Checks the row labels (B) of a batch.
    pub fn validate_labels(&self, labels: &[i64], b: usize) -> Result<()> {
        if labels.len() != b {
            return Err(Error::shape("labels", &[b], &[labels.len()]));
        }
        if let Some(k) = labels.iter().position(|&l| l != -100 && (l < 0 || l as usize >= self.spec.num_labels)) {
            return Err(Error::Input(format!(
                "label {} of row {k} is out of range for num_labels={}",
                labels[k], self.spec.num_labels
            )));
        }
        Ok(())
    }

    /// logits (B, L) = hidden[pooled rows] (B, C) @ score^T
    pub fn forward(&mut self, p: &[F], hidden: &[F], ids: &[i64], labels: Option<&[i64]>, b: usize, t: usize, c: usize) -> Result<()> {
        let l = self.spec.num_labels;
        self.pool.clear();
        for row in 0..b {
            let last = match self.spec.pad_token_id {
                Some(pad) => (0..t).rev().find(|&j| ids[row * t + j] != pad).unwrap_or(0),
                None if b == 1 => t - 1,
                None => {
                    return Err(Error::Config(
                        "cannot find the last token of each row without a pad_token_id in the config (needed for batches > 1)".into(),
                    ))
                }
            };
            self.pool.push(row * t + last);
        }
        self.pooled.resize(b * c, F::zero());
        for (row, &k) in self.pool.iter().enumerate() {
            self.pooled[row * c..(row + 1) * c].copy_from_slice(&hidden[k * c..(k + 1) * c]);
        }
        self.logits.resize(b * l, F::zero());
        gemm(&mut self.logits, b, l, c, View::rows(&self.pooled, c), View::t(&p[self.score.clone()], c), false);
        self.targets.clear();
        self.targets.extend_from_slice(labels.unwrap_or(&[]));
        Ok(())
    }

    pub fn logits(&self) -> &[F] {
        &self.logits
    }

    pub fn loss_stats(&self) -> LossStats {
        crossentropy_forward(&self.logits, &self.targets, self.spec.num_labels)
    }

    /// Loss backward: dhidden (N, C) is overwritten (zero except the pooled rows);
    /// dscore += dlogits^T @ pooled. `scale` is 1 / (rows counted in the optimizer step).
    pub fn backward(&mut self, p: &[F], g: &mut GradView<'_, F>, dhidden: &mut [F], c: usize, scale: f64) -> LossStats {
        let (l, b) = (self.spec.num_labels, self.pool.len());
        let stats = crossentropy_forward_backward(&mut self.logits, &self.targets, l, scale);
        if let Some(ds) = g.get(&self.score) {
            gemm(ds, l, c, b, View::t(&self.logits, l), View::rows(&self.pooled, c), true);
        }
        let mut dpooled = vec![F::zero(); b * c];
        gemm(&mut dpooled, b, c, l, View::rows(&self.logits, l), View::rows(&p[self.score.clone()], c), false);
        dhidden.fill(F::zero());
        for (row, &k) in self.pool.iter().enumerate() {
            dhidden[k * c..(k + 1) * c].copy_from_slice(&dpooled[row * c..(row + 1) * c]);
        }
        stats
    }

    pub fn targets(&self) -> &[i64] {
        &self.targets
    }

    /// Bytes held by what the forward saved.
    pub fn bytes(&self) -> usize {
        held(&[&self.pool]) + held(&[&self.pooled, &self.logits]) + held(&[&self.targets])
    }
}

/// Rows of language-model logits the loss backward holds at once: (LOSS_ROWS, V) instead of
/// (N, V) (51 MB instead of 206 MB for GPT-2 at 1,024 tokens).
const LOSS_ROWS: usize = 256;

/// The loss backward of whichever head a model has, from its final hidden states (N, C):
/// dhidden (N, C) is overwritten. The classification head uses what its forward saved. The
/// language-model head starts from the hidden states and takes LOSS_ROWS rows at a time, so
/// that the (N, V) logits never exist: logits (R, V) = hidden @ head^T into `buf`, the
/// cross-entropy forward + backward in place (dlogits), dhidden rows = dlogits @ head,
/// dhead += dlogits^T @ hidden rows. `buf` is left empty (no logits to read afterwards).
#[allow(clippy::too_many_arguments)]
pub fn loss_backward<F: Real>(
    cls: Option<&mut SeqClsHead<F>>,
    p: &[F],
    g: &mut GradView<'_, F>,
    head: &Range<usize>,
    buf: &mut Vec<F>,
    targets: &[i64],
    num_items: Option<f64>,
    hidden: &[F],
    dhidden: &mut [F],
    (n, c, v): (usize, usize, usize),
) -> Result<LossStats> {
    if let Some(h) = cls {
        let scale = loss_scale(h.targets(), num_items)?;
        return Ok(h.backward(p, g, dhidden, c, scale));
    }
    let scale = loss_scale(targets, num_items)?;
    let w = &p[head.clone()];
    let mut stats = LossStats::default();
    for r0 in (0..n).step_by(LOSS_ROWS) {
        let r = LOSS_ROWS.min(n - r0);
        buf.resize(r * v, F::zero());
        let (x, dx) = (&hidden[r0 * c..(r0 + r) * c], &mut dhidden[r0 * c..(r0 + r) * c]);
        gemm(buf, r, v, c, View::rows(x, c), View::t(w, c), false);
        stats = stats + crossentropy_forward_backward(buf, &targets[r0..r0 + r], v, scale);
        gemm(dx, r, c, v, View::rows(buf, v), View::rows(w, c), false);
        if let Some(dhead) = g.get(head) {
            gemm(dhead, v, c, r, View::t(buf, v), View::rows(x, c), true);
        }
    }
    buf.clear();
    Ok(stats)
}

/// `CausalLm::take_logits` for the language-model head: the (N, V) logits `head_forward`
/// left in `buf`, moved out.
pub fn take_lm_logits<F>(buf: &mut Vec<F>, len: usize) -> Vec<F> {
    let mut v = std::mem::take(buf);
    v.truncate(len);
    v
}

/// The forward of whichever head a model has, on its final hidden states (N, C): the
/// (N, V) language-model logits through `head` (V, C) into `logits` (sized here), or the
/// classification head.
#[allow(clippy::too_many_arguments)]
pub fn head_forward<F: Real>(
    cls: Option<&mut SeqClsHead<F>>,
    p: &[F],
    head: &Range<usize>,
    hidden: &[F],
    logits: &mut Vec<F>,
    ids: &[i64],
    labels: Option<&[i64]>,
    (b, t, c, v): (usize, usize, usize, usize),
) -> Result<()> {
    match cls {
        Some(h) => h.forward(p, hidden, ids, labels, b, t, c),
        None => {
            if logits.capacity() < b * t * v {
                *logits = Vec::new(); // the old buffer goes before the new one comes
                *logits = hugepages::zeroed(b * t * v);
            }
            logits.resize(b * t * v, F::zero());
            gemm(logits, b * t, v, c, View::rows(hidden, c), View::t(&p[head.clone()], c), false);
            Ok(())
        }
    }
}

/// Loss statistics of the last forward of whichever head a model has.
pub fn head_loss_stats<F: Real>(cls: Option<&SeqClsHead<F>>, logits: &[F], targets: &[i64], v: usize) -> LossStats {
    match cls {
        Some(h) => h.loss_stats(),
        None => crossentropy_forward(logits, targets, v),
    }
}

/// Copies the rows a decoding step needs logits for into `out`: all N rows of x (N, C), or
/// the last position of each of the B rows. Returns how many rows were copied.
pub fn logit_rows<F: Real>(x: &[F], out: &mut [F], b: usize, t: usize, c: usize, all: bool) -> usize {
    let rows = if all { b * t } else { b };
    if all || t == 1 {
        out[..rows * c].copy_from_slice(&x[..rows * c]);
    } else {
        for row in 0..b {
            let src = (row * t + t - 1) * c;
            out[row * c..(row + 1) * c].copy_from_slice(&x[src..src + c]);
        }
    }
    rows
}
