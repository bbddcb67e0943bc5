//! Tokenizer: a wrapper over the `tokenizers` crate with the settings that
//! `transformers` keeps next to `tokenizer.json` (special tokens, padding and
//! truncation sides, `model_max_length`).
//!
//! Loads `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt` (byte-level BPE),
//! reading `tokenizer_config.json` / `special_tokens_map.json` when present.
//! Batch encoding pads and truncates here, so a batch comes back rectangular;
//! `save_pretrained` writes the files `transformers` reads.
//!
//! Legend for batches: B = batch size, T = padded sequence length.

mod encode;
mod files;
mod options;
mod train;

pub use options::{clean_up_tokenization, pad_rows, rect_len, Batch, EncodeOptions, Padding, RectBatch, Side, SpecialToken};

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use tokenizers as tk;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
pub const ADDED_TOKENS_FILE: &str = "added_tokens.json";
pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";

/// GPT-2's one special token: beginning, end and unknown at once.
pub const GPT2_SPECIAL_TOKEN: &str = "<|endoftext|>";

/// `model_max_length` values at or above this mean "no limit" (transformers
/// writes `int(1e30)` when a tokenizer has none).
const UNBOUNDED_MAX_LENGTH: f64 = 1e18;

/// Keys of `tokenizer_config.json` that this struct owns; every other key is kept
/// as it was loaded and written back by `save_pretrained` (e.g. `chat_template`).
const MANAGED_CONFIG_KEYS: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "additional_special_tokens",
    "padding_side",
    "truncation_side",
    "model_max_length",
    "clean_up_tokenization_spaces",
    "added_tokens_decoder",
    "name_or_path",
];

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

// ---------------------------------------------------------------------------
// the tokenizer
// ---------------------------------------------------------------------------

/// A `tokenizers::Tokenizer` plus the `transformers` settings around it.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tk::Tokenizer,
    specials: [Option<String>; 4],
    additional_special_tokens: Vec<String>,
    padding_side: Side,
    truncation_side: Side,
    model_max_length: Option<usize>,
    clean_up_tokenization_spaces: bool,
    name_or_path: String,
    /// tokenizer_config.json keys this struct does not manage, written back on save
    config_extra: Map<String, Value>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name_or_path", &self.name_or_path)
            .field("vocab_size", &self.vocab_size())
            .field("len", &self.len())
            .field("specials", &self.specials)
            .field("padding_side", &self.padding_side)
            .field("truncation_side", &self.truncation_side)
            .field("model_max_length", &self.model_max_length)
            .finish()
    }
}

impl Tokenizer {
    pub(super) fn from_parts(inner: tk::Tokenizer, name_or_path: String) -> Self {
        let mut inner = inner;
        // Padding and truncation are applied per call (`encode_batch`), never by the backend.
        inner.with_padding(None);
        let _ = inner.with_truncation(None);
        Tokenizer {
            inner,
            specials: Default::default(),
            additional_special_tokens: vec![],
            padding_side: Side::Right,
            truncation_side: Side::Right,
            model_max_length: None,
            clean_up_tokenization_spaces: false,
            name_or_path,
            config_extra: Map::new(),
        }
    }

    /// Makes `token` exist: a token already in the vocabulary is left as it is
    /// (so its normal encoding does not change); a new one is added as a special
    /// token. Returns true when it was added.
    pub(super) fn ensure_special_token(&mut self, token: &str) -> Result<bool> {
        if self.inner.token_to_id(token).is_some() {
            return Ok(false);
        }
        self.inner
            .add_special_tokens([AddedToken::from(token.to_string(), true)])
            .map_err(tok_err)?;
        Ok(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id).ok().and_then(|u| self.inner.id_to_token(u))
    }

    /// Size of the base vocabulary, without added tokens (transformers' `vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(false)
    }

    /// Size with added tokens (transformers' `len(tokenizer)`).
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get_vocab(&self, with_added_tokens: bool) -> HashMap<String, u32> {
        self.inner.get_vocab(with_added_tokens)
    }

    /// Added tokens as (id, token), by id.
    pub fn added_tokens(&self) -> Vec<(u32, AddedToken)> {
        let mut v: Vec<(u32, AddedToken)> = self.inner.get_added_tokens_decoder().into_iter().collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Adds tokens (special or not); returns how many were new.
    pub fn add_tokens(&mut self, tokens: &[String], special: bool) -> Result<usize> {
        let tokens = tokens.iter().map(|t| AddedToken::from(t.clone(), special));
        if special {
            self.inner.add_special_tokens(tokens).map_err(tok_err)
        } else {
            self.inner.add_tokens(tokens).map_err(tok_err)
        }
    }

    /// The backend, for callers that need more (chat templates, offsets).
    pub fn backend(&self) -> &tk::Tokenizer {
        &self.inner
    }

    pub fn special_token(&self, kind: SpecialToken) -> Option<&str> {
        self.specials[kind.index()].as_deref()
    }

    pub fn special_token_id(&self, kind: SpecialToken) -> Option<u32> {
        self.special_token(kind).and_then(|t| self.inner.token_to_id(t))
    }

    /// Sets a special token; a token not in the vocabulary is added as a new
    /// special token (returns true then: the model's embeddings need resizing).
    pub fn set_special_token(&mut self, kind: SpecialToken, token: Option<String>) -> Result<bool> {
        let added = match &token {
            Some(t) if t.is_empty() => {
                return Err(Error::Input(format!("{} cannot be an empty string", kind.key())))
            }
            Some(t) => self.ensure_special_token(t)?,
            None => false,
        };
        self.specials[kind.index()] = token;
        Ok(added)
    }

    /// Sets a special token by id.
    pub fn set_special_token_id(&mut self, kind: SpecialToken, id: Option<i64>) -> Result<()> {
        let token = match id {
            None => None,
            Some(id) => Some(self.id_to_token(id).ok_or(Error::TokenOutOfRange {
                what: kind.key(),
                id,
                row: 0,
                col: 0,
                vocab: self.len(),
            })?),
        };
        self.specials[kind.index()] = token;
        Ok(())
    }

    pub fn additional_special_tokens(&self) -> &[String] {
        &self.additional_special_tokens
    }

    /// Adds tokens to `additional_special_tokens` (and to the vocabulary when new);
    /// returns how many were new to the vocabulary.
    pub fn add_additional_special_tokens(&mut self, tokens: &[String]) -> Result<usize> {
        let mut n = 0;
        for t in tokens {
            n += self.ensure_special_token(t)? as usize;
            if !self.additional_special_tokens.contains(t) {
                self.additional_special_tokens.push(t.clone());
            }
        }
        Ok(n)
    }

    /// bos, eos, unk, pad, then the additional special tokens; each once.
    pub fn all_special_tokens(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.specials
            .iter()
            .flatten()
            .chain(self.additional_special_tokens.iter())
            .filter(|t| seen.insert(t.as_str()))
            .cloned()
            .collect()
    }

    pub fn padding_side(&self) -> Side {
        self.padding_side
    }

    pub fn set_padding_side(&mut self, side: Side) {
        self.padding_side = side;
    }

    pub fn truncation_side(&self) -> Side {
        self.truncation_side
    }

    pub fn set_truncation_side(&mut self, side: Side) {
        self.truncation_side = side;
    }

    /// `None` means no limit.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    pub fn set_model_max_length(&mut self, n: Option<usize>) {
        self.model_max_length = n;
    }

    pub fn clean_up_tokenization_spaces(&self) -> bool {
        self.clean_up_tokenization_spaces
    }

    pub fn set_clean_up_tokenization_spaces(&mut self, v: bool) {
        self.clean_up_tokenization_spaces = v;
    }

    pub fn name_or_path(&self) -> &str {
        &self.name_or_path
    }

    pub fn set_name_or_path(&mut self, name: String) {
        self.name_or_path = name;
    }

    /// The `tokenizer_class` transformers would use, if known.
    pub fn tokenizer_class(&self) -> Option<&str> {
        self.config_extra.get("tokenizer_class").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// Found by fuzz/ (tokenizer target): JSON cut inside "decoder" made tokenizers panic.
    #[test]
    fn malformed_decoder_json_is_an_error_not_a_panic() {
        for text in [r#"{"decoder": {"type": "ByteLevel"#, r#"{"decoder": {"type": "ByteLevel", "x": [1,]}, "model": {}}"#] {
            let e = Tokenizer::from_state(text, "{}").unwrap_err().to_string();
            assert!(e.contains("not JSON"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, r#"{"version": "1.0", "decoder": {"type": "#).unwrap();
        let e = Tokenizer::from_pretrained(&path).unwrap_err().to_string();
        assert!(e.contains("not a valid tokenizer file: not JSON"), "{e}");
    }

    /// Found by fuzz/ (tokenizer target): a merge longer than every vocabulary token made
    /// tokenizers' BPE builder index past its buffer.
    #[test]
    fn bpe_merge_outside_the_vocabulary_is_an_error_not_a_panic() {
        let bpe = |merges: Value, prefix: Value| {
            serde_json::json!({"model": {"type": "BPE", "vocab": {"ab": 0, "cd": 1, "a": 2, "b": 3, "##b": 4, "ab#": 5},
                "merges": merges, "continuing_subword_prefix": prefix}})
            .to_string()
        };
        use serde_json::json;
        for (merges, prefix) in [(json!([["ab", "cd"]]), json!(null)), (json!(["ab cd"]), json!(null)), (json!([["a", "b"]]), json!("###"))] {
            let e = Tokenizer::from_state(&bpe(merges.clone(), prefix), "{}").unwrap_err().to_string();
            assert!(e.contains("not in the vocabulary"), "{merges}: {e}");
        }
        // valid merges still load
        assert!(Tokenizer::from_state(&bpe(json!([["a", "b"]]), json!(null)), "{}").is_ok());
        assert!(Tokenizer::from_state(&bpe(json!(["a ##b"]), json!("##")), "{}").is_ok());
    }

    const CORPUS: &[&str] = &[
        "Hello world! The quick brown fox jumps over the lazy dog.",
        "def f(x):\n    return x * 2  # comment\n",
        "你好，世界。今天天气很好。",
        "emoji 🎉🚀 and more 🎉",
        "    leading spaces and\ttabs\n\nnewlines",
    ];

    fn trained(vocab_size: usize) -> Tokenizer {
        let texts = CORPUS.iter().cycle().take(200);
        Tokenizer::train_new_bpe(texts, vocab_size, 2, None).unwrap()
    }

    #[test]
    fn train_roundtrip_and_specials() {
        let tok = trained(400);
        assert!(tok.len() <= 400 && tok.len() > 257, "len {}", tok.len());
        assert_eq!(tok.token_to_id(GPT2_SPECIAL_TOKEN), Some(0));
        for kind in [SpecialToken::Bos, SpecialToken::Eos, SpecialToken::Unk] {
            assert_eq!(tok.special_token_id(kind), Some(0));
        }
        assert_eq!(tok.special_token(SpecialToken::Pad), None);
        for text in CORPUS.iter().chain(["unseen: Ω≈ç√ 🦀 日本語".to_string().as_str()].iter()) {
            let ids = tok.encode(text, true).unwrap();
            let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            assert_eq!(tok.decode(&ids64, false, None).unwrap(), *text);
        }
        let tokens = tok.tokenize("Hello world", false).unwrap();
        assert_eq!(tokens.concat(), "HelloĠworld");
        // merges were learnt: a frequent word is fewer tokens than bytes
        assert!(tok.encode("Hello world", false).unwrap().len() < "Hello world".len());
    }

    #[test]
    fn special_token_is_one_id_and_skipped() {
        let tok = trained(300);
        let ids = tok.encode("hi<|endoftext|>", true).unwrap();
        assert_eq!(*ids.last().unwrap(), 0);
        let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        assert_eq!(tok.decode(&ids64, true, None).unwrap(), "hi");
        assert_eq!(tok.decode(&ids64, false, None).unwrap(), "hi<|endoftext|>");
    }

    #[test]
    fn padding_and_truncation_sides() {
        let mut tok = trained(300);
        let texts = ["a", "Hello world! The quick"];
        let opts = EncodeOptions { padding: Padding::Longest, ..Default::default() };
        assert!(matches!(tok.encode_batch(&texts, &opts), Err(Error::Tokenizer(_))));
        tok.set_special_token(SpecialToken::Pad, Some(GPT2_SPECIAL_TOKEN.into())).unwrap();
        let full = tok.encode("Hello world! The quick", true).unwrap();
        let b = tok.encode_batch(&texts, &opts).unwrap();
        let t = full.len();
        assert_eq!(b.input_ids[1], full);
        assert_eq!(b.input_ids[0].len(), t);
        assert_eq!(b.attention_mask[0].iter().sum::<u32>(), 1);
        assert_eq!(b.attention_mask[0][0], 1);
        assert_eq!(b.input_ids[0][1], 0);

        tok.set_padding_side(Side::Left);
        let b = tok.encode_batch(&texts, &opts).unwrap();
        assert_eq!(*b.attention_mask[0].last().unwrap(), 1);
        assert_eq!(b.attention_mask[0][0], 0);

        let opts = EncodeOptions { truncation: true, max_length: Some(3), ..Default::default() };
        let b = tok.encode_batch(&texts, &opts).unwrap();
        assert_eq!(b.input_ids[1], full[..3]);
        tok.set_truncation_side(Side::Left);
        let b = tok.encode_batch(&texts, &opts).unwrap();
        assert_eq!(b.input_ids[1], full[t - 3..]);

        let opts = EncodeOptions {
            padding: Padding::MaxLength,
            truncation: true,
            max_length: Some(6),
            pad_to_multiple_of: Some(4),
            ..Default::default()
        };
        let r = tok.encode_batch(&texts, &opts).unwrap().to_rect().unwrap();
        assert_eq!((r.batch, r.seq_len), (2, 8));
        // no padding: ragged rows cannot become an array
        let b = tok.encode_batch(&texts, &EncodeOptions::default()).unwrap();
        assert!(matches!(b.to_rect(), Err(Error::Input(_))));
    }

    #[test]
    fn pad_columns_labels_and_mask() {
        let mut tok = trained(300);
        tok.set_special_token(SpecialToken::Pad, Some(GPT2_SPECIAL_TOKEN.into())).unwrap();
        let cols = vec![
            ("input_ids".to_string(), vec![vec![5, 6, 7], vec![8]]),
            ("labels".to_string(), vec![vec![5, 6, 7], vec![8]]),
        ];
        let out = tok.pad_columns(cols.clone(), Padding::Longest, None, None).unwrap();
        let get = |n: &str| out.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("input_ids"), vec![vec![5, 6, 7], vec![8, 0, 0]]);
        assert_eq!(get("labels"), vec![vec![5, 6, 7], vec![8, -100, -100]]);
        assert_eq!(get("attention_mask"), vec![vec![1, 1, 1], vec![1, 0, 0]]);
        tok.set_padding_side(Side::Left);
        let out = tok.pad_columns(cols, Padding::MaxLength, Some(4), None).unwrap();
        let get = |n: &str| out.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("labels"), vec![vec![-100, 5, 6, 7], vec![-100, -100, -100, 8]]);
        assert_eq!(get("attention_mask")[1], vec![0, 0, 0, 1]);
    }

    #[test]
    fn decode_rejects_bad_ids() {
        let tok = trained(300);
        let n = tok.len() as i64;
        assert!(matches!(
            tok.decode(&[1, n], false, None),
            Err(Error::TokenOutOfRange { col: 1, .. })
        ));
        assert!(matches!(tok.decode(&[-100], false, None), Err(Error::TokenOutOfRange { .. })));
    }

    #[test]
    fn save_and_reload_all_ways() {
        let mut tok = trained(350);
        tok.set_special_token(SpecialToken::Pad, Some(GPT2_SPECIAL_TOKEN.into())).unwrap();
        tok.set_padding_side(Side::Left);
        tok.set_model_max_length(Some(64));
        let dir = tempfile::tempdir().unwrap();
        let files = tok.save_pretrained(dir.path()).unwrap();
        let names: HashSet<String> =
            files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for n in [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, VOCAB_FILE, MERGES_FILE] {
            assert!(names.contains(n), "{n} not written");
        }
        // no temporary files left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 5);
        let text = "Hello world! 你好 🎉 def f(x):";
        let want = tok.encode(text, true).unwrap();
        let back = Tokenizer::from_pretrained(dir.path()).unwrap();
        assert_eq!(back.encode(text, true).unwrap(), want);
        assert_eq!(back.padding_side(), Side::Left);
        assert_eq!(back.model_max_length(), Some(64));
        assert_eq!(back.special_token(SpecialToken::Pad), Some(GPT2_SPECIAL_TOKEN));

        // slow files only
        let slow = tempfile::tempdir().unwrap();
        for n in [VOCAB_FILE, MERGES_FILE] {
            fs::copy(dir.path().join(n), slow.path().join(n)).unwrap();
        }
        let back = Tokenizer::from_pretrained(slow.path()).unwrap();
        assert_eq!(back.encode(text, true).unwrap(), want);
        assert_eq!(back.special_token(SpecialToken::Eos), Some(GPT2_SPECIAL_TOKEN));
        assert_eq!(back.special_token(SpecialToken::Pad), None);
        // the GPT-2 default special token is one token, as in the tokenizer.json load
        assert_eq!(back.encode("a<|endoftext|>", true).unwrap(), tok.encode("a<|endoftext|>", true).unwrap());
        assert_eq!(back.len(), tok.len());

        // the tokenizer.json file itself
        let back = Tokenizer::from_pretrained(dir.path().join(TOKENIZER_FILE)).unwrap();
        assert_eq!(back.padding_side(), Side::Left);

        // pickling state
        let (a, b) = tok.to_state().unwrap();
        let back = Tokenizer::from_state(&a, &b).unwrap();
        assert_eq!(back.encode(text, true).unwrap(), want);
        assert_eq!(back.padding_side(), Side::Left);
    }

    #[test]
    fn load_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(Tokenizer::from_pretrained(&missing), Err(Error::FileNotFound(p)) if p == missing));
        // an empty directory: tokenizer.json is what is missing
        assert!(matches!(Tokenizer::from_pretrained(dir.path()), Err(Error::FileNotFound(p)) if p.ends_with(TOKENIZER_FILE)));
        fs::write(dir.path().join(TOKENIZER_FILE), "{not json").unwrap();
        let err = Tokenizer::from_pretrained(dir.path()).unwrap_err();
        assert!(matches!(&err, Error::Tokenizer(m) if m.contains(TOKENIZER_FILE)), "{err}");
        fs::remove_file(dir.path().join(TOKENIZER_FILE)).unwrap();
        fs::write(dir.path().join(VOCAB_FILE), "{\"a\": 0}").unwrap();
        assert!(matches!(Tokenizer::from_pretrained(dir.path()), Err(Error::FileNotFound(p)) if p.ends_with(MERGES_FILE)));
    }

    #[test]
    fn retrain_keeps_pipeline_and_specials() {
        let mut tok = trained(320);
        tok.set_special_token(SpecialToken::Pad, Some("<pad>".into())).unwrap();
        let new = tok
            .train_new_from_iterator(CORPUS.iter().cycle().take(50), 300, 1, &["<sep>".to_string()])
            .unwrap();
        assert_eq!(new.token_to_id(GPT2_SPECIAL_TOKEN), Some(0));
        assert_eq!(new.token_to_id("<pad>"), Some(1));
        assert_eq!(new.token_to_id("<sep>"), Some(2));
        assert_eq!(new.special_token(SpecialToken::Pad), Some("<pad>"));
        assert_eq!(new.additional_special_tokens(), ["<sep>".to_string()]);
        let text = "你好 🎉 x";
        let ids: Vec<i64> = new.encode(text, true).unwrap().iter().map(|&i| i as i64).collect();
        assert_eq!(new.decode(&ids, false, None).unwrap(), text);
    }

    #[test]
    fn parse_settings() {
        assert_eq!(Side::parse("left", "padding_side").unwrap(), Side::Left);
        assert!(matches!(Side::parse("up", "padding_side"), Err(Error::Input(m)) if m.contains("padding_side")));
        assert_eq!("pad_token".parse::<SpecialToken>().unwrap(), SpecialToken::Pad);
        assert_eq!("longest".parse::<Padding>().unwrap(), Padding::Longest);
        assert!("sideways".parse::<Padding>().is_err());
        assert_eq!(clean_up_tokenization("a , b . isn 't"), "a, b. isn 't");
        assert_eq!(clean_up_tokenization("do n't"), "don't");
    }
}
