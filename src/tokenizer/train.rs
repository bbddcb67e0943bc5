//! Training a new byte-level BPE vocabulary, from scratch or keeping an existing pipeline.

use std::collections::HashSet;

use serde_json::{Map, Value};
use tokenizers as tk;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

use super::files::{added_token_from_json, gpt2_pipeline, uses_byte_level};
use super::*;

impl Tokenizer {
    /// A new GPT-2-style byte-level BPE trained on `texts`, with `special_tokens`
    /// (default `["<|endoftext|>"]`) first in the vocabulary; "<|endoftext|>",
    /// when among them, is bos, eos and unk.
    pub fn train_new_bpe<I, S>(
        texts: I,
        vocab_size: usize,
        min_frequency: u64,
        special_tokens: Option<Vec<String>>,
    ) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let special_tokens = special_tokens.unwrap_or_else(|| vec![GPT2_SPECIAL_TOKEN.to_string()]);
        let mut inner = gpt2_pipeline(BPE::default(), false);
        let trainer = bpe_trainer(vocab_size, min_frequency, &special_tokens, true, None, None)?;
        train(&mut inner, trainer, texts)?;
        let mut tok = Self::from_parts(inner, String::new());
        if special_tokens.iter().any(|t| t == GPT2_SPECIAL_TOKEN) {
            for kind in [SpecialToken::Bos, SpecialToken::Eos, SpecialToken::Unk] {
                tok.specials[kind.index()] = Some(GPT2_SPECIAL_TOKEN.to_string());
            }
        }
        tok.additional_special_tokens =
            special_tokens.into_iter().filter(|t| t != GPT2_SPECIAL_TOKEN).collect();
        tok.config_extra.insert("tokenizer_class".into(), Value::from("GPT2Tokenizer"));
        tok.config_extra.insert("add_prefix_space".into(), Value::from(false));
        Ok(tok)
    }

    /// A new tokenizer with this one's pipeline (normalizer, pre-tokenizer,
    /// post-processor, decoder), settings and special tokens, and a BPE model
    /// trained on `texts`. Special tokens come first in the new vocabulary.
    pub fn train_new_from_iterator<I, S>(
        &self,
        texts: I,
        vocab_size: usize,
        min_frequency: u64,
        new_special_tokens: &[String],
    ) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let ModelWrapper::BPE(old) = self.inner.get_model() else {
            return Err(Error::Tokenizer(
                "train_new_from_iterator supports BPE tokenizers only".into(),
            ));
        };
        let mut json: Value = serde_json::from_str(&self.inner.to_string(false).map_err(tok_err)?)
            .map_err(tok_err)?;
        let added: Vec<Value> = match json.get_mut("added_tokens").map(Value::take) {
            Some(Value::Array(a)) => a,
            _ => vec![],
        };
        json["added_tokens"] = Value::Array(vec![]);
        json["model"]["vocab"] = Value::Object(Map::new());
        json["model"]["merges"] = Value::Array(vec![]);
        let byte_level = uses_byte_level(&json["pre_tokenizer"]);
        let mut inner: tk::Tokenizer = serde_json::from_value(json).map_err(tok_err)?;

        // special tokens: the old special added tokens (in id order), the named
        // ones, the model's unk token, then the new ones; each once.
        let mut specials: Vec<String> = Vec::new();
        let mut normal: Vec<AddedToken> = Vec::new();
        let mut added_sorted: Vec<(u64, &Value)> =
            added.iter().map(|v| (v.get("id").and_then(Value::as_u64).unwrap_or(0), v)).collect();
        added_sorted.sort_by_key(|(id, _)| *id);
        for (_, v) in added_sorted {
            let Some(content) = v.get("content").and_then(Value::as_str) else { continue };
            let at = added_token_from_json(content.to_string(), v);
            if at.special {
                specials.push(content.to_string());
            } else {
                normal.push(at);
            }
        }
        specials.extend(self.specials.iter().flatten().cloned());
        specials.extend(self.additional_special_tokens.iter().cloned());
        specials.extend(old.get_unk_token().iter().cloned());
        specials.extend(new_special_tokens.iter().cloned());
        let mut seen = HashSet::new();
        specials.retain(|t| seen.insert(t.clone()));

        let trainer = bpe_trainer(
            vocab_size,
            min_frequency,
            &specials,
            byte_level,
            old.get_continuing_subword_prefix().clone(),
            old.end_of_word_suffix.clone(),
        )?;
        train(&mut inner, trainer, texts)?;
        if !normal.is_empty() {
            inner.add_tokens(normal).map_err(tok_err)?;
        }
        // post-processors that name special tokens by id get the new ids
        if let Some(pp) = inner.get_post_processor() {
            let mut pj = serde_json::to_value(pp).map_err(tok_err)?;
            remap_post_processor_ids(&mut pj, &inner)?;
            let pp: tk::PostProcessorWrapper = serde_json::from_value(pj).map_err(tok_err)?;
            inner.with_post_processor(Some(pp));
        }
        let mut tok = self.clone();
        tok.inner = inner;
        for t in new_special_tokens {
            if !tok.specials.iter().flatten().any(|s| s == t) && !tok.additional_special_tokens.contains(t) {
                tok.additional_special_tokens.push(t.clone());
            }
        }
        Ok(tok)
    }
}

pub(super) fn bpe_trainer(
    vocab_size: usize,
    min_frequency: u64,
    special_tokens: &[String],
    byte_level: bool,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
) -> Result<TrainerWrapper> {
    let alphabet = ByteLevel::alphabet();
    if byte_level && vocab_size < alphabet.len() + special_tokens.len() {
        return Err(Error::Input(format!(
            "vocab_size={vocab_size} is smaller than the byte-level alphabet ({}) plus {} special tokens",
            alphabet.len(),
            special_tokens.len()
        )));
    }
    if let Err(m) = crate::config::check_size("vocab_size", vocab_size as u64, crate::config::MAX_DIM) {
        return Err(Error::Input(m));
    }
    let mut b = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(special_tokens.iter().map(|t| AddedToken::from(t.clone(), true)).collect());
    if byte_level {
        b = b.initial_alphabet(alphabet.into_iter().collect());
    }
    if let Some(p) = continuing_subword_prefix {
        b = b.continuing_subword_prefix(p);
    }
    if let Some(s) = end_of_word_suffix {
        b = b.end_of_word_suffix(s);
    }
    Ok(TrainerWrapper::BpeTrainer(b.build()))
}

pub(super) fn train<I, S>(inner: &mut tk::Tokenizer, mut trainer: TrainerWrapper, texts: I) -> Result<()>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    inner.train(&mut trainer, texts).map_err(|e| Error::Tokenizer(format!("training failed: {e}")))?;
    Ok(())
}

/// Post-processors that name special tokens by id (Template, Bert, Roberta,
/// Sequence of those) get the ids of `inner`.
pub(super) fn remap_post_processor_ids(pp: &mut Value, inner: &tk::Tokenizer) -> Result<()> {
    let id_of = |t: &str| {
        inner.token_to_id(t).ok_or_else(|| {
            Error::Tokenizer(format!("post-processor token {t:?} is not in the new vocabulary"))
        })
    };
    match pp.get("type").and_then(Value::as_str) {
        Some("TemplateProcessing") => {
            if let Some(Value::Object(specials)) = pp.get_mut("special_tokens") {
                for st in specials.values_mut() {
                    let tokens: Vec<String> = st
                        .get("tokens")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    let ids = tokens.iter().map(|t| id_of(t)).collect::<Result<Vec<u32>>>()?;
                    st["ids"] = Value::from(ids);
                }
            }
        }
        Some("BertProcessing") | Some("RobertaProcessing") => {
            for key in ["sep", "cls"] {
                if let Some(Value::Array(pair)) = pp.get_mut(key) {
                    if let Some(t) = pair.first().and_then(Value::as_str).map(str::to_string) {
                        pair[1] = Value::from(id_of(&t)?);
                    }
                }
            }
        }
        Some("Sequence") => {
            if let Some(Value::Array(items)) = pp.get_mut("processors") {
                for it in items {
                    remap_post_processor_ids(it, inner)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}
