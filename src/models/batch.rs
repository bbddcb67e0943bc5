//! What a forward takes: a batch of token ids with its mask and labels, validated once
//! against the model's vocabulary and context, the next-token targets made from it, and the
//! loss gradient's scale that counts the tokens of a whole optimizer step.
//!
//! Shapes: B = batch, T = time.

use crate::error::{Error, Result};
use crate::kernels::crossentropy::IGNORE_INDEX;

/// A batch of token ids (B, T), row-major, with an optional attention mask and labels.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub ids: &'a [i64],
    pub mask: Option<&'a [i64]>,
    pub labels: Option<&'a [i64]>,
    pub b: usize,
    pub t: usize,
}

impl Batch<'_> {
    /// Checks sizes, token ids, mask values and (unless a task head checks them itself,
    /// `token_labels` false) per-token labels against a vocabulary and a context.
    pub fn validate(&self, vocab: usize, max_positions: usize, token_labels: bool) -> Result<()> {
        let (b, t, v) = (self.b, self.t, vocab);
        if b == 0 || t == 0 {
            return Err(Error::Input(format!("empty batch: input_ids has shape ({b}, {t})")));
        }
        if self.ids.len() != b * t {
            return Err(Error::shape("input_ids", &[b, t], &[self.ids.len()]));
        }
        if t > max_positions {
            return Err(Error::Input(format!(
                "sequence length {t} exceeds the model's maximum of {max_positions} positions"
            )));
        }
        check_ids("token id", self.ids, t, v, false)?;
        if let Some(m) = self.mask {
            if m.len() != b * t {
                return Err(Error::Input(format!("attention_mask has {} elements but input_ids has shape ({b}, {t})", m.len())));
            }
            if let Some(k) = m.iter().position(|&x| x != 0 && x != 1) {
                return Err(Error::Input(format!("attention_mask must hold 0 or 1, got {} at [{}, {}]", m[k], k / t, k % t)));
            }
        }
        if let Some(l) = self.labels.filter(|_| token_labels) {
            if l.len() != b * t {
                return Err(Error::shape("labels", &[b, t], &[l.len()]));
            }
            check_ids("label", l, t, v, true)?;
        }
        Ok(())
    }

    /// Next-token targets (transformers' shift): targets[b, t] = labels[b, t + 1], -100 at
    /// the last position. Labels default to input_ids with -100 where the mask is 0.
    pub fn next_token_targets(&self, out: &mut [i64]) {
        let t = self.t;
        for k in 0..self.b * t {
            out[k] = if k % t + 1 == t {
                IGNORE_INDEX
            } else {
                match (self.labels, self.mask) {
                    (Some(l), _) => l[k + 1],
                    (None, Some(m)) if m[k + 1] == 0 => IGNORE_INDEX,
                    (None, _) => self.ids[k + 1],
                }
            };
        }
    }
}

/// Checks that every id of `xs` (rows of T) is in [0, vocab), or -100 where `allow_ignore`;
/// the error names the first one that is not, by row and column.
pub(crate) fn check_ids(what: &'static str, xs: &[i64], t: usize, vocab: usize, allow_ignore: bool) -> Result<()> {
    for (k, &id) in xs.iter().enumerate() {
        if (id < 0 || id as usize >= vocab) && !(allow_ignore && id == IGNORE_INDEX) {
            return Err(Error::TokenOutOfRange { what, id, row: k / t, col: k % t, vocab });
        }
    }
    Ok(())
}

/// The scale of the loss gradient: 1 / (tokens counted in the whole optimizer step).
pub(crate) fn loss_scale(targets: &[i64], num_items: Option<f64>) -> Result<f64> {
    let counted = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
    if let Some(n) = num_items {
        if !(n.is_finite() && n > 0.0) {
            return Err(Error::Input(format!("num_items_in_batch must be a positive finite number, got {n}")));
        }
    }
    if counted == 0 {
        return Ok(0.0);
    }
    Ok(1.0 / num_items.unwrap_or(counted as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_batches() {
        let ids = [1i64, 11];
        let err = Batch { ids: &ids, mask: None, labels: None, b: 1, t: 2 }.validate(11, 8, true).unwrap_err();
        assert!(err.to_string().contains("11 at [0, 1]"), "{err}");
        let long = [0i64; 9];
        assert!(Batch { ids: &long, mask: None, labels: None, b: 1, t: 9 }.validate(11, 8, true).is_err());
        let mask = [1i64];
        assert!(Batch { ids: &[1, 2], mask: Some(&mask), labels: None, b: 1, t: 2 }.validate(11, 8, true).is_err());
    }

    #[test]
    fn num_items_must_be_positive_and_finite() {
        let targets = [3, IGNORE_INDEX, 5];
        assert_eq!(loss_scale(&targets, None).unwrap(), 0.5);
        assert_eq!(loss_scale(&targets, Some(8.0)).unwrap(), 0.125);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = loss_scale(&targets, Some(bad)).unwrap_err().to_string();
            assert!(e.contains("num_items_in_batch must be a positive finite number"), "{e}");
        }
        // checked even when the micro-batch counts no token
        assert!(loss_scale(&[IGNORE_INDEX], Some(f64::NAN)).is_err());
    }
}
