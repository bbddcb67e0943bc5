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

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};
use tokenizers as tk;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Model, PostProcessor, TruncationDirection};

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

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
// small enums
// ---------------------------------------------------------------------------

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

    fn index(self) -> usize {
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

fn round_up(n: usize, multiple: Option<usize>) -> usize {
    match multiple {
        Some(m) if m > 1 => n.div_ceil(m).saturating_mul(m),
        _ => n,
    }
}

/// Bytes one padded position costs from here to the caller's arrays: the id and the mask
/// as u32 here, then as int64 in numpy.
const PADDED_POSITION_BYTES: u128 = 24;

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

// ---------------------------------------------------------------------------
// config files
// ---------------------------------------------------------------------------

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Tokenizer(format!("{}: invalid JSON: {e}", path.display())))
}

fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    match read_json(path)? {
        Value::Object(m) => Ok(m),
        _ => Err(Error::Tokenizer(format!("{}: expected a JSON object", path.display()))),
    }
}

/// A token entry of a config file: a string, an AddedToken dict
/// (`{"content": ..., ...}`) or null.
fn token_content(v: &Value, key: &str, file: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(m) => match m.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::Tokenizer(format!("{file}: {key} has no string \"content\""))),
        },
        _ => Err(Error::Tokenizer(format!(
            "{file}: {key} must be a string or an AddedToken dict, got {v}"
        ))),
    }
}

fn token_list(v: &Value, key: &str, file: &str) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(vec![]),
        Value::Array(items) => Ok(items
            .iter()
            .map(|it| token_content(it, key, file))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect()),
        _ => Err(Error::Tokenizer(format!("{file}: {key} must be a list"))),
    }
}

fn added_token_from_json(content: String, v: &Value) -> AddedToken {
    let flag = |k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
    let special = flag("special", false);
    AddedToken {
        content,
        single_word: flag("single_word", false),
        lstrip: flag("lstrip", false),
        rstrip: flag("rstrip", false),
        normalized: flag("normalized", !special),
        special,
    }
}

/// The settings `transformers` keeps in tokenizer_config.json and
/// special_tokens_map.json, merged (special_tokens_map wins, as in transformers).
#[derive(Debug, Default)]
struct ConfigFiles {
    config: Map<String, Value>,
    special_map: Map<String, Value>,
}

impl ConfigFiles {
    fn read(dir: Option<&Path>) -> Result<Self> {
        let mut out = ConfigFiles::default();
        if let Some(dir) = dir {
            let cfg = dir.join(TOKENIZER_CONFIG_FILE);
            if cfg.is_file() {
                out.config = read_json_object(&cfg)?;
            }
            let map = dir.join(SPECIAL_TOKENS_MAP_FILE);
            if map.is_file() {
                out.special_map = read_json_object(&map)?;
            }
        }
        Ok(out)
    }

    fn get(&self, key: &str) -> Option<(&Value, &'static str)> {
        self.special_map
            .get(key)
            .map(|v| (v, SPECIAL_TOKENS_MAP_FILE))
            .or_else(|| self.config.get(key).map(|v| (v, TOKENIZER_CONFIG_FILE)))
    }

    /// `None` when neither file names the token; `Some(None)` when one sets it to null.
    fn special(&self, kind: SpecialToken) -> Result<Option<Option<String>>> {
        self.get(kind.key())
            .map(|(v, file)| token_content(v, kind.key(), file))
            .transpose()
    }

    fn additional(&self) -> Result<Vec<String>> {
        match self.get("additional_special_tokens") {
            Some((v, file)) => token_list(v, "additional_special_tokens", file),
            None => Ok(vec![]),
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.config.get(key).and_then(Value::as_bool)
    }
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
    // ---- construction ----

    fn from_parts(inner: tk::Tokenizer, name_or_path: String) -> Self {
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

    /// Loads a tokenizer from a directory (`tokenizer.json`, or `vocab.json` +
    /// `merges.txt`, plus the config files when present) or from a `tokenizer.json` file.
    pub fn from_pretrained(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::FileNotFound(path.to_path_buf()));
        }
        let name = path.display().to_string();
        let (inner, config_dir, slow_files) = if path.is_file() {
            // a tokenizer.json file: its directory's config files belong to it
            let dir = (path.file_name() == Some(TOKENIZER_FILE.as_ref()))
                .then(|| path.parent().map(Path::to_path_buf))
                .flatten();
            (Self::read_tokenizer_json(path)?, dir, false)
        } else {
            let tj = path.join(TOKENIZER_FILE);
            let vocab = path.join(VOCAB_FILE);
            if tj.is_file() {
                (Self::read_tokenizer_json(&tj)?, Some(path.to_path_buf()), false)
            } else if vocab.is_file() {
                let files = ConfigFiles::read(Some(path))?;
                let inner = Self::read_vocab_merges(&vocab, &path.join(MERGES_FILE), &files)?;
                (inner, Some(path.to_path_buf()), true)
            } else {
                return Err(Error::FileNotFound(tj));
            }
        };
        let files = ConfigFiles::read(config_dir.as_deref())?;
        let mut tok = Self::from_parts(inner, name);
        if slow_files {
            tok.add_legacy_added_tokens(path, &files)?;
        }
        tok.apply_config(&files)?;
        Ok(tok)
    }

    fn read_tokenizer_json(path: &Path) -> Result<tk::Tokenizer> {
        let text = read_text(path)?;
        backend_from_str(&text)
            .map_err(|e| Error::Tokenizer(format!("{}: not a valid tokenizer file: {e}", path.display())))
    }

    /// GPT-2's slow-tokenizer files: the byte-level BPE pipeline around vocab.json + merges.txt.
    fn read_vocab_merges(vocab: &Path, merges: &Path, files: &ConfigFiles) -> Result<tk::Tokenizer> {
        let vocab_map: HashMap<String, u32> = serde_json::from_value(read_json(vocab)?)
            .map_err(|e| Error::Tokenizer(format!("{}: expected {{token: id}}: {e}", vocab.display())))?;
        if !merges.is_file() {
            return Err(Error::FileNotFound(merges.to_path_buf()));
        }
        let text = read_text(merges)?;
        let mut merge_list = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merge_list.push((a.to_string(), b.to_string())),
                _ => {
                    return Err(Error::Tokenizer(format!(
                        "{}: line {} is not a merge \"a b\": {line:?}",
                        merges.display(),
                        i + 1
                    )))
                }
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab_map.into_iter().collect::<tk::models::bpe::Vocab>(), merge_list)
            .build()
            .map_err(|e| Error::Tokenizer(format!("{} + {}: {e}", vocab.display(), merges.display())))?;
        let add_prefix_space = files.bool("add_prefix_space").unwrap_or(false);
        let mut inner = gpt2_pipeline(bpe, add_prefix_space);
        // transformers' GPT2 converter: add_bos_token puts bos in front of every sequence.
        if files.bool("add_bos_token") == Some(true) {
            if let Some(Some(bos)) = files.special(SpecialToken::Bos)? {
                let id = inner.token_to_id(&bos).ok_or_else(|| {
                    Error::Tokenizer(format!("add_bos_token is set but bos_token {bos:?} is not in {}", vocab.display()))
                })?;
                let mut builder = tk::processors::template::TemplateProcessing::builder();
                builder.try_single(format!("{bos}:0 $A:0")).map_err(tok_err)?;
                builder.try_pair(format!("{bos}:0 $A:0 {bos}:1 $B:1")).map_err(tok_err)?;
                builder.special_tokens(vec![(bos.clone(), id)]);
                let template = builder.build().map_err(tok_err)?;
                inner.with_post_processor(Some(template));
            }
        }
        Ok(inner)
    }

    /// Added tokens of a slow-tokenizer directory (added_tokens_decoder in the
    /// config, or the older added_tokens.json), checked to land on their saved ids.
    fn add_legacy_added_tokens(&mut self, dir: &Path, files: &ConfigFiles) -> Result<()> {
        let mut entries: Vec<(u32, AddedToken)> = Vec::new();
        if let Some(Value::Object(dec)) = files.config.get("added_tokens_decoder") {
            for (id, v) in dec {
                let id: u32 = id.parse().map_err(|_| {
                    Error::Tokenizer(format!("{TOKENIZER_CONFIG_FILE}: added_tokens_decoder key {id:?} is not an id"))
                })?;
                let content = token_content(v, "added_tokens_decoder", TOKENIZER_CONFIG_FILE)?
                    .ok_or_else(|| Error::Tokenizer(format!("{TOKENIZER_CONFIG_FILE}: added token {id} has no content")))?;
                entries.push((id, added_token_from_json(content, v)));
            }
        } else {
            let path = dir.join(ADDED_TOKENS_FILE);
            if path.is_file() {
                let map: HashMap<String, u32> = serde_json::from_value(read_json(&path)?)
                    .map_err(|e| Error::Tokenizer(format!("{}: expected {{token: id}}: {e}", path.display())))?;
                entries.extend(map.into_iter().map(|(t, id)| (id, AddedToken::from(t, false))));
            }
        }
        entries.sort_by_key(|(id, _)| *id);
        for (id, token) in entries {
            let content = token.content.clone();
            if token.special {
                self.inner.add_special_tokens([token]).map_err(tok_err)?;
            } else {
                self.inner.add_tokens([token]).map_err(tok_err)?;
            }
            let got = self.inner.token_to_id(&content);
            if got != Some(id) {
                return Err(Error::Tokenizer(format!(
                    "added token {content:?} should have id {id} but got {got:?}: \
                     vocab.json and the added tokens do not match"
                )));
            }
        }
        Ok(())
    }

    /// Reads the special tokens and settings, and registers the special tokens
    /// the backend does not know yet.
    fn apply_config(&mut self, files: &ConfigFiles) -> Result<()> {
        let eot_exists = self.inner.token_to_id(GPT2_SPECIAL_TOKEN).is_some();
        for kind in SpecialToken::ALL {
            let value = match files.special(kind)? {
                Some(v) => v,
                // GPT-2's defaults when nothing names the token.
                None if kind != SpecialToken::Pad && eot_exists => Some(GPT2_SPECIAL_TOKEN.to_string()),
                None => None,
            };
            self.specials[kind.index()] = value;
        }
        self.additional_special_tokens = files.additional()?;
        if let Some(v) = files.config.get("padding_side").and_then(Value::as_str) {
            self.padding_side = Side::parse(v, "padding_side")?;
        }
        if let Some(v) = files.config.get("truncation_side").and_then(Value::as_str) {
            self.truncation_side = Side::parse(v, "truncation_side")?;
        }
        self.model_max_length = match files.config.get("model_max_length") {
            Some(v) => match v.as_f64() {
                Some(x) if x >= UNBOUNDED_MAX_LENGTH => None,
                Some(x) if x >= 1.0 => Some(v.as_u64().unwrap_or(x as u64) as usize),
                None if v.is_null() => None,
                _ => {
                    return Err(Error::Tokenizer(format!(
                        "{TOKENIZER_CONFIG_FILE}: model_max_length must be a positive number, got {v}"
                    )))
                }
            },
            None => None,
        };
        self.clean_up_tokenization_spaces = files.bool("clean_up_tokenization_spaces").unwrap_or(false);
        if let Some(Value::String(n)) = files.config.get("name_or_path") {
            if self.name_or_path.is_empty() {
                self.name_or_path = n.clone();
            }
        }
        self.config_extra = files
            .config
            .iter()
            .filter(|(k, _)| !MANAGED_CONFIG_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let wanted: Vec<String> = self
            .specials
            .iter()
            .flatten()
            .chain(self.additional_special_tokens.iter())
            .cloned()
            .collect();
        // As transformers does on load: every configured special token is an added
        // special token, so it is never split and `skip_special_tokens` drops it.
        let added: Vec<AddedToken> = wanted
            .into_iter()
            .filter(|t| !self.inner.get_added_vocabulary().get_vocab().contains_key(t))
            .map(|t| AddedToken::from(t, true))
            .collect();
        if !added.is_empty() {
            self.inner.add_special_tokens(added).map_err(tok_err)?;
        }
        Ok(())
    }

    /// Makes `token` exist: a token already in the vocabulary is left as it is
    /// (so its normal encoding does not change); a new one is added as a special
    /// token. Returns true when it was added.
    fn ensure_special_token(&mut self, token: &str) -> Result<bool> {
        if self.inner.token_to_id(token).is_some() {
            return Ok(false);
        }
        self.inner
            .add_special_tokens([AddedToken::from(token.to_string(), true)])
            .map_err(tok_err)?;
        Ok(true)
    }

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

    // ---- encoding ----

    fn pad_id_or_err(&self) -> Result<u32> {
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
    fn padding_target(
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

    // ---- decoding ----

    /// The ids as u32, or an error naming the first one that is no token
    /// (`row` is the sequence's index in a batch).
    fn check_ids(&self, ids: &[i64], row: usize) -> Result<Vec<u32>> {
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

    fn finish_decode(&self, text: String, clean_up: Option<bool>) -> String {
        if clean_up.unwrap_or(self.clean_up_tokenization_spaces) {
            clean_up_tokenization(&text)
        } else {
            text
        }
    }

    // ---- vocabulary ----

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

    // ---- settings ----

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

    // ---- saving ----

    /// tokenizer_config.json as transformers writes it (keys sorted), including
    /// the keys loaded from the original config that this struct does not manage.
    pub fn config_json(&self) -> Value {
        let mut cfg = self.config_extra.clone();
        let mut decoder = Map::new();
        for (id, t) in self.added_tokens() {
            decoder.insert(
                id.to_string(),
                serde_json::json!({
                    "content": t.content,
                    "lstrip": t.lstrip,
                    "normalized": t.normalized,
                    "rstrip": t.rstrip,
                    "single_word": t.single_word,
                    "special": t.special,
                }),
            );
        }
        cfg.insert("added_tokens_decoder".into(), Value::Object(decoder));
        for kind in SpecialToken::ALL {
            cfg.insert(kind.key().into(), self.special_token(kind).map(Value::from).unwrap_or(Value::Null));
        }
        if !self.additional_special_tokens.is_empty() {
            cfg.insert("additional_special_tokens".into(), Value::from(self.additional_special_tokens.clone()));
        }
        cfg.insert("padding_side".into(), Value::from(self.padding_side.as_str()));
        cfg.insert("truncation_side".into(), Value::from(self.truncation_side.as_str()));
        if let Some(n) = self.model_max_length {
            cfg.insert("model_max_length".into(), Value::from(n as u64));
        }
        cfg.insert("clean_up_tokenization_spaces".into(), Value::from(self.clean_up_tokenization_spaces));
        Value::Object(cfg)
    }

    /// special_tokens_map.json: the special tokens that are set.
    pub fn special_tokens_map_json(&self) -> Value {
        let mut m = Map::new();
        for kind in SpecialToken::ALL {
            if let Some(t) = self.special_token(kind) {
                m.insert(kind.key().into(), Value::from(t));
            }
        }
        if !self.additional_special_tokens.is_empty() {
            m.insert("additional_special_tokens".into(), Value::from(self.additional_special_tokens.clone()));
        }
        Value::Object(m)
    }

    /// The backend's tokenizer.json text.
    pub fn to_tokenizer_json(&self, pretty: bool) -> Result<String> {
        self.inner.to_string(pretty).map_err(tok_err)
    }

    /// Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json, and
    /// vocab.json + merges.txt for a BPE model, each to a temporary name first and
    /// then renamed. Returns the written paths.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let pretty = |v: &Value| serde_json::to_string_pretty(v).map_err(tok_err);
        let mut written = Vec::new();
        let files = [
            (TOKENIZER_CONFIG_FILE, pretty(&self.config_json())?),
            (SPECIAL_TOKENS_MAP_FILE, pretty(&self.special_tokens_map_json())?),
            (TOKENIZER_FILE, self.to_tokenizer_json(true)?),
        ];
        for (name, text) in files {
            let path = dir.join(name);
            write_atomic(&path, text.as_bytes())?;
            written.push(path);
        }
        if let ModelWrapper::BPE(bpe) = self.inner.get_model() {
            let prefix = format!(".tmp-{}", std::process::id());
            let tmp_files = bpe.save(dir, Some(&prefix)).map_err(|e| {
                Error::Tokenizer(format!("cannot write vocab.json/merges.txt in {}: {e}", dir.display()))
            })?;
            for tmp in tmp_files {
                let name = tmp
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(&format!("{prefix}-")))
                    .map(str::to_string)
                    .ok_or_else(|| Error::Tokenizer(format!("unexpected model file {}", tmp.display())))?;
                let dest = dir.join(name);
                // the crate wrote it: flushed to disk here, then renamed, as write_atomic does
                fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
                fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
                written.push(dest);
            }
        }
        Ok(written)
    }

    /// (tokenizer.json, tokenizer_config.json) texts, for pickling.
    pub fn to_state(&self) -> Result<(String, String)> {
        let mut cfg = self.config_json();
        cfg["name_or_path"] = Value::from(self.name_or_path.clone());
        Ok((self.to_tokenizer_json(false)?, cfg.to_string()))
    }

    /// Inverse of `to_state`.
    pub fn from_state(tokenizer_json: &str, config_json: &str) -> Result<Self> {
        let inner = backend_from_str(tokenizer_json).map_err(tok_err)?;
        let config = match serde_json::from_str(config_json).map_err(tok_err)? {
            Value::Object(m) => m,
            _ => return Err(Error::Tokenizer("tokenizer state: config is not an object".into())),
        };
        let mut tok = Self::from_parts(inner, String::new());
        tok.apply_config(&ConfigFiles { config, special_map: Map::new() })?;
        Ok(tok)
    }
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// `tokenizers::Tokenizer::from_str`, after the checks that keep tokenizers 0.23 from
/// panicking on a bad file (both found by fuzz/): it panics (`expect("Helper")` in its
/// decoder deserializer) when the JSON is malformed inside `"decoder"`, and (see
/// `check_bpe_merges`) on a merge whose token is longer than any in the vocabulary.
fn backend_from_str(text: &str) -> std::result::Result<tk::Tokenizer, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    check_bpe_merges(&v["model"])?;
    tk::Tokenizer::from_str(text).map_err(|e| e.to_string())
}

/// tokenizers' BPE builder copies `a + b[prefix..]` of each merge into a buffer as long as the
/// longest vocabulary token and only then checks that the merged token is in the vocabulary;
/// a longer one panics. The same check, made first.
fn check_bpe_merges(model: &Value) -> std::result::Result<(), String> {
    let (Some(vocab), Some(merges)) = (model["vocab"].as_object(), model["merges"].as_array()) else { return Ok(()) };
    if model.get("type").is_some_and(|t| t != "BPE") {
        return Ok(());
    }
    let prefix = model["continuing_subword_prefix"].as_str().map_or(0, str::len);
    for m in merges {
        let (a, b) = match m {
            Value::String(line) if !line.starts_with("#version") => match line.split(' ').collect::<Vec<_>>()[..] {
                [a, b] => (a, b),
                _ => continue, // tokenizers' own error
            },
            Value::Array(pair) => match (pair.first().and_then(Value::as_str), pair.get(1).and_then(Value::as_str)) {
                (Some(a), Some(b)) if pair.len() == 2 => (a, b),
                _ => continue,
            },
            _ => continue,
        };
        let merged = b.as_bytes().get(prefix..).map(|rest| [a.as_bytes(), rest].concat());
        if !merged.and_then(|m| String::from_utf8(m).ok()).is_some_and(|m| vocab.contains_key(&m)) {
            return Err(format!("merge ({a:?}, {b:?}) makes a token that is not in the vocabulary"));
        }
    }
    Ok(())
}

/// GPT-2's pipeline around a BPE model: byte-level pre-tokenizer, decoder and
/// post-processor (trim_offsets), as in GPT-2's tokenizer.json.
fn gpt2_pipeline(bpe: BPE, add_prefix_space: bool) -> tk::Tokenizer {
    let mut inner = tk::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    inner.with_decoder(Some(ByteLevel::new(add_prefix_space, true, true)));
    inner.with_post_processor(Some(ByteLevel::new(add_prefix_space, true, true)));
    inner
}

fn uses_byte_level(pre_tokenizer: &Value) -> bool {
    match pre_tokenizer.get("type").and_then(Value::as_str) {
        Some("ByteLevel") => true,
        Some("Sequence") => pre_tokenizer
            .get("pretokenizers")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(uses_byte_level)),
        _ => false,
    }
}

fn bpe_trainer(
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

fn train<I, S>(inner: &mut tk::Tokenizer, mut trainer: TrainerWrapper, texts: I) -> Result<()>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    inner.train(&mut trainer, texts).map_err(|e| Error::Tokenizer(format!("training failed: {e}")))?;
    Ok(())
}

/// Post-processors that name special tokens by id (Template, Bert, Roberta,
/// Sequence of those) get the ids of `inner`.
fn remap_post_processor_ids(pp: &mut Value, inner: &tk::Tokenizer) -> Result<()> {
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

#[cfg(test)]
mod tests {
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
