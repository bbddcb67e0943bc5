//! Encoding (batches padded and truncated here, so they come back rectangular) and decoding.

use tokenizers::{PostProcessor, TruncationDirection};

use crate::error::{Error, Result};

use super::options::{round_up, PADDED_POSITION_BYTES};
use super::*;

impl Tokenizer {
    pub(super) fn pad_id_or_err(&self) -> Result<u32> {
        self.special_token_id(SpecialToken::Pad).ok_or_else(|| {
            Error::Tokenizer(
                "Asking to pad but the tokenizer does not have a padding token. Please select a token \
                 to use as `pad_token` (`tokenizer.pad_token = tokenizer.eos_token`) or add a new pad \
                 token via `tokenizer.add_special_tokens({'pad_token': '[PAD]'})`."
                    .into(),
            )
        })
    }

    /// The length `rows` sequences are padded to, or `None` for no padding; an error when
    /// the padded batch cannot be held in memory.
    pub(super) fn padding_target(
        &self,
        padding: Padding,
        rows: usize,
        longest: usize,
        max_length: Option<usize>,
        multiple: Option<usize>,
    ) -> Result<Option<usize>> {
        let base = match padding {
            Padding::DoNotPad => return Ok(None),
            Padding::Longest => longest,
            Padding::MaxLength => max_length.or(self.model_max_length).ok_or_else(|| {
                Error::Input(
                    "padding='max_length' needs max_length (this tokenizer has no model_max_length)".into(),
                )
            })?,
        };
        let target = round_up(base, multiple);
        crate::alloc::check_bytes(rows as u128 * target as u128 * PADDED_POSITION_BYTES).map_err(|why| {
            Error::Input(format!("padding {rows} sequences to length {target} (max_length={max_length:?}, pad_to_multiple_of={multiple:?}) {why}"))
        })?;
        Ok(Some(target))
    }

    /// Encodes a batch: special tokens, truncation to `max_length` (or
    /// `model_max_length`) on `truncation_side`, padding on `padding_side`.
    /// Runs on all cores.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S], opts: &EncodeOptions) -> Result<Batch> {
        if opts.pad_to_multiple_of == Some(0) {
            return Err(Error::Input("pad_to_multiple_of must be positive".into()));
        }
        let pad_id = match opts.padding {
            Padding::DoNotPad => None,
            _ => Some(self.pad_id_or_err()?),
        };
        let trunc_len = if opts.truncation { opts.max_length.or(self.model_max_length) } else { None };
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        // offsets cost a little: the fast path skips them
        let encode = |inputs: Vec<&str>, add_special_tokens: bool| {
            if opts.offsets {
                self.inner.encode_batch_char_offsets(inputs, add_special_tokens)
            } else {
                self.inner.encode_batch_fast(inputs, add_special_tokens)
            }
            .map_err(tok_err)
        };
        let encodings = match trunc_len {
            None => encode(inputs, opts.add_special_tokens)?,
            Some(max_len) => {
                let processor = self.inner.get_post_processor();
                let n_added = match (opts.add_special_tokens, processor) {
                    (true, Some(p)) => p.added_tokens(false),
                    _ => 0,
                };
                if max_len < n_added {
                    return Err(Error::Input(format!(
                        "max_length={max_len} leaves no room: {n_added} special tokens are added"
                    )));
                }
                let direction = match self.truncation_side {
                    Side::Left => TruncationDirection::Left,
                    Side::Right => TruncationDirection::Right,
                };
                let raw = encode(inputs, false)?;
                raw.into_iter()
                    .map(|mut enc| {
                        enc.truncate(max_len - n_added, 0, direction);
                        enc.set_overflowing(vec![]);
                        match (opts.add_special_tokens, processor) {
                            (true, Some(p)) => p.process(enc, None, true).map_err(tok_err),
                            _ => Ok(enc),
                        }
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let mut input_ids: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
        let mut attention_mask: Vec<Vec<u32>> = input_ids.iter().map(|r| vec![1u32; r.len()]).collect();
        let mut offsets: Vec<Vec<(usize, usize)>> =
            if opts.offsets { encodings.iter().map(|e| e.get_offsets().to_vec()).collect() } else { vec![] };
        let longest = input_ids.iter().map(Vec::len).max().unwrap_or(0);
        if let Some(target) =
            self.padding_target(opts.padding, input_ids.len(), longest, opts.max_length, opts.pad_to_multiple_of)?
        {
            let pad_id = pad_id.expect("pad id checked above");
            pad_rows(&mut input_ids, target, pad_id, self.padding_side);
            pad_rows(&mut attention_mask, target, 0, self.padding_side);
            pad_rows(&mut offsets, target, (0, 0), self.padding_side);
        }
        Ok(Batch { input_ids, attention_mask, offsets })
    }

    /// Ids of one text, no padding or truncation.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.inner.encode_fast(text, add_special_tokens).map_err(tok_err)?.get_ids().to_vec())
    }

    /// The tokens (as strings) of one text.
    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<String>> {
        // `encode_fast` leaves the token strings empty; `encode` fills them.
        Ok(self.inner.encode(text, add_special_tokens).map_err(tok_err)?.get_tokens().to_vec())
    }

    /// Pads named columns of a batch of features (data-collator work):
    /// `input_ids` with the pad id, `attention_mask` with 0 (created from the
    /// input_ids lengths when absent), `labels` with -100, `token_type_ids` with 0,
    /// `special_tokens_mask` with 1. Other column names are an error.
    pub fn pad_columns(
        &self,
        mut columns: Vec<(String, Vec<Vec<i64>>)>,
        padding: Padding,
        max_length: Option<usize>,
        pad_to_multiple_of: Option<usize>,
    ) -> Result<Vec<(String, Vec<Vec<i64>>)>> {
        if pad_to_multiple_of == Some(0) {
            return Err(Error::Input("pad_to_multiple_of must be positive".into()));
        }
        let find = |cols: &[(String, Vec<Vec<i64>>)], name: &str| cols.iter().position(|(n, _)| n == name);
        let n_rows = columns.first().map(|(_, r)| r.len()).unwrap_or(0);
        for (name, rows) in &columns {
            if rows.len() != n_rows {
                return Err(Error::Data(format!(
                    "feature column {name:?} has {} rows but {:?} has {n_rows}",
                    rows.len(),
                    columns[0].0
                )));
            }
        }
        if let Some(i) = find(&columns, "input_ids") {
            match find(&columns, "attention_mask") {
                None => {
                    let mask = columns[i].1.iter().map(|r| vec![1i64; r.len()]).collect();
                    columns.push(("attention_mask".into(), mask));
                }
                Some(j) => {
                    for (k, (a, b)) in columns[i].1.iter().zip(&columns[j].1).enumerate() {
                        if a.len() != b.len() {
                            return Err(Error::Data(format!(
                                "feature {k}: attention_mask has {} entries but input_ids has {}",
                                b.len(),
                                a.len()
                            )));
                        }
                    }
                }
            }
        }
        let longest = columns.iter().flat_map(|(_, rows)| rows.iter().map(Vec::len)).max().unwrap_or(0);
        let Some(target) = self.padding_target(padding, n_rows, longest, max_length, pad_to_multiple_of)? else {
            return Ok(columns);
        };
        for (name, rows) in columns.iter_mut() {
            let value = match name.as_str() {
                "input_ids" => self.pad_id_or_err()? as i64,
                "attention_mask" | "token_type_ids" => 0,
                "labels" => -100,
                "special_tokens_mask" => 1,
                other => return Err(Error::Input(format!("don't know how to pad feature {other:?}"))),
            };
            if let Some(r) = rows.iter().find(|r| r.len() > target) {
                return Err(Error::Input(format!(
                    "a {name} sequence of length {} is longer than max_length={target}; truncate it first",
                    r.len()
                )));
            }
            pad_rows(rows, target, value, self.padding_side);
        }
        Ok(columns)
    }

    /// The ids as u32, or an error naming the first one that is no token
    /// (`row` is the sequence's index in a batch).
    pub(super) fn check_ids(&self, ids: &[i64], row: usize) -> Result<Vec<u32>> {
        ids.iter()
            .enumerate()
            .map(|(col, &id)| {
                u32::try_from(id).ok().filter(|&u| self.inner.id_to_token(u).is_some()).ok_or(
                    Error::TokenOutOfRange { what: "token id", id, row, col, vocab: self.len() },
                )
            })
            .collect()
    }

    /// Text of `ids`; an id that names no token is an error.
    /// `clean_up` overrides `clean_up_tokenization_spaces`.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool, clean_up: Option<bool>) -> Result<String> {
        let ids = self.check_ids(ids, 0)?;
        let text = self.inner.decode(&ids, skip_special_tokens).map_err(tok_err)?;
        Ok(self.finish_decode(text, clean_up))
    }

    /// `decode` over many sequences, on all cores.
    pub fn decode_batch(
        &self,
        seqs: &[Vec<i64>],
        skip_special_tokens: bool,
        clean_up: Option<bool>,
    ) -> Result<Vec<String>> {
        let checked =
            seqs.iter().enumerate().map(|(row, s)| self.check_ids(s, row)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u32]> = checked.iter().map(Vec::as_slice).collect();
        let texts = self.inner.decode_batch(&refs, skip_special_tokens).map_err(tok_err)?;
        Ok(texts.into_iter().map(|t| self.finish_decode(t, clean_up)).collect())
    }

    pub(super) fn finish_decode(&self, text: String, clean_up: Option<bool>) -> String {
        if clean_up.unwrap_or(self.clean_up_tokenization_spaces) {
            clean_up_tokenization(&text)
        } else {
            text
        }
    }
}
