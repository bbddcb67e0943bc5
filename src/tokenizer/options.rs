//! Encoding options and batches: padding and truncation sides, special-token kinds, the
//! padding of rows. Legend: B = batch size, T = padded sequence length.

use std::str::FromStr;

use crate::error::{Error, Result};

/// Which end of a sequence padding or truncation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }

    /// Parses "left" / "right"; `what` names the setting in the error message.
    pub fn parse(s: &str, what: &str) -> Result<Self> {
        match s {
            "left" => Ok(Side::Left),
            "right" => Ok(Side::Right),
            _ => Err(Error::Input(format!("{what} must be 'left' or 'right', got {s:?}"))),
        }
    }
}

/// The four named special tokens of a `transformers` tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialToken {
    Bos,
    Eos,
    Unk,
    Pad,
}

impl SpecialToken {
    pub const ALL: [SpecialToken; 4] =
        [SpecialToken::Bos, SpecialToken::Eos, SpecialToken::Unk, SpecialToken::Pad];

    /// The config key, e.g. "bos_token".
    pub fn key(self) -> &'static str {
        match self {
            SpecialToken::Bos => "bos_token",
            SpecialToken::Eos => "eos_token",
            SpecialToken::Unk => "unk_token",
            SpecialToken::Pad => "pad_token",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for SpecialToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim_end_matches("_token") {
            "bos" => Ok(SpecialToken::Bos),
            "eos" => Ok(SpecialToken::Eos),
            "unk" => Ok(SpecialToken::Unk),
            "pad" => Ok(SpecialToken::Pad),
            _ => Err(Error::Input(format!(
                "unknown special token {s:?} (expected bos, eos, unk or pad)"
            ))),
        }
    }
}

/// How a batch is padded (transformers' `PaddingStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    #[default]
    DoNotPad,
    /// to the longest sequence of the batch
    Longest,
    /// to `max_length` (or `model_max_length`)
    MaxLength,
}

impl FromStr for Padding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "do_not_pad" => Ok(Padding::DoNotPad),
            "longest" => Ok(Padding::Longest),
            "max_length" => Ok(Padding::MaxLength),
            _ => Err(Error::Input(format!(
                "padding must be 'longest', 'max_length' or 'do_not_pad', got {s:?}"
            ))),
        }
    }
}

/// Options of one batch encoding call.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    pub add_special_tokens: bool,
    pub padding: Padding,
    pub truncation: bool,
    /// truncation / `Padding::MaxLength` length; `None` falls back to `model_max_length`
    pub max_length: Option<usize>,
    pub pad_to_multiple_of: Option<usize>,
    /// also return each token's (start, end) character offsets in its text
    pub offsets: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            add_special_tokens: true,
            padding: Padding::DoNotPad,
            truncation: false,
            max_length: None,
            pad_to_multiple_of: None,
            offsets: false,
        }
    }
}

/// An encoded batch: one row per text, padded as asked (rows may differ in
/// length when no padding was asked for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    /// (start, end) character offsets of every token, (0, 0) for special and padding
    /// tokens, as the `tokenizers` library computes them; empty unless asked for
    pub offsets: Vec<Vec<(usize, usize)>>,
}

/// A batch as two row-major (B, T) i64 arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RectBatch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
}

impl Batch {
    /// The batch as (B, T) arrays; an error when the rows differ in length.
    pub fn to_rect(&self) -> Result<RectBatch> {
        let seq_len = rect_len(self.input_ids.iter().map(Vec::len))?;
        let flat = |rows: &[Vec<u32>]| rows.iter().flatten().map(|&v| v as i64).collect();
        Ok(RectBatch {
            batch: self.input_ids.len(),
            seq_len,
            input_ids: flat(&self.input_ids),
            attention_mask: self.attention_mask.iter().flatten().map(|&v| v as i64).collect(),
        })
    }
}

/// The common length of rows, or an error naming the spread.
pub fn rect_len(lens: impl Iterator<Item = usize>) -> Result<usize> {
    let lens: Vec<usize> = lens.collect();
    let (lo, hi) = (lens.iter().min().copied(), lens.iter().max().copied());
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo != hi => Err(Error::Input(format!(
            "cannot make a rectangular array: sequences have lengths from {lo} to {hi}; \
             use padding=True (and truncation=True for a length cap)"
        ))),
        (_, hi) => Ok(hi.unwrap_or(0)),
    }
}

/// Pads every row to `target` with `value` on `side`; longer rows are left as they are.
pub fn pad_rows<T: Copy>(rows: &mut [Vec<T>], target: usize, value: T, side: Side) {
    for row in rows.iter_mut() {
        let n = row.len();
        if n >= target {
            continue;
        }
        match side {
            Side::Right => row.resize(target, value),
            Side::Left => {
                let mut padded = Vec::with_capacity(target);
                padded.resize(target - n, value);
                padded.extend_from_slice(row);
                *row = padded;
            }
        }
    }
}

pub(super) fn round_up(n: usize, multiple: Option<usize>) -> usize {
    match multiple {
        Some(m) if m > 1 => n.div_ceil(m).saturating_mul(m),
        _ => n,
    }
}

/// Bytes one padded position costs from here to the caller's arrays: the id and the mask
/// as u32 here, then as int64 in numpy.
pub(super) const PADDED_POSITION_BYTES: u128 = 24;

/// transformers' `clean_up_tokenization`: removes spaces before punctuation and
/// English contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
