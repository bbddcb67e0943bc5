//! The files around a tokenizer: reading tokenizer.json (or vocab.json + merges.txt) and the
//! transformers config files, checking them before the `tokenizers` crate sees them, writing them back.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};
use tokenizers as tk;
use tokenizers::models::bpe::BPE;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Model};

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

use super::*;

pub(super) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

pub(super) fn read_json(path: &Path) -> Result<Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Tokenizer(format!("{}: invalid JSON: {e}", path.display())))
}

pub(super) fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    match read_json(path)? {
        Value::Object(m) => Ok(m),
        _ => Err(Error::Tokenizer(format!("{}: expected a JSON object", path.display()))),
    }
}

/// A token entry of a config file: a string, an AddedToken dict
/// (`{"content": ..., ...}`) or null.
pub(super) fn token_content(v: &Value, key: &str, file: &str) -> Result<Option<String>> {
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

pub(super) fn token_list(v: &Value, key: &str, file: &str) -> Result<Vec<String>> {
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

pub(super) fn added_token_from_json(content: String, v: &Value) -> AddedToken {
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
pub(super) struct ConfigFiles {
    config: Map<String, Value>,
    special_map: Map<String, Value>,
}

impl ConfigFiles {
    pub(super) fn read(dir: Option<&Path>) -> Result<Self> {
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

    pub(super) fn get(&self, key: &str) -> Option<(&Value, &'static str)> {
        self.special_map
            .get(key)
            .map(|v| (v, SPECIAL_TOKENS_MAP_FILE))
            .or_else(|| self.config.get(key).map(|v| (v, TOKENIZER_CONFIG_FILE)))
    }

    /// `None` when neither file names the token; `Some(None)` when one sets it to null.
    pub(super) fn special(&self, kind: SpecialToken) -> Result<Option<Option<String>>> {
        self.get(kind.key())
            .map(|(v, file)| token_content(v, kind.key(), file))
            .transpose()
    }

    pub(super) fn additional(&self) -> Result<Vec<String>> {
        match self.get("additional_special_tokens") {
            Some((v, file)) => token_list(v, "additional_special_tokens", file),
            None => Ok(vec![]),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Option<bool> {
        self.config.get(key).and_then(Value::as_bool)
    }
}

impl Tokenizer {
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

    pub(super) fn read_tokenizer_json(path: &Path) -> Result<tk::Tokenizer> {
        let text = read_text(path)?;
        backend_from_str(&text)
            .map_err(|e| Error::Tokenizer(format!("{}: not a valid tokenizer file: {e}", path.display())))
    }

    /// GPT-2's slow-tokenizer files: the byte-level BPE pipeline around vocab.json + merges.txt.
    pub(super) fn read_vocab_merges(vocab: &Path, merges: &Path, files: &ConfigFiles) -> Result<tk::Tokenizer> {
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
    pub(super) fn add_legacy_added_tokens(&mut self, dir: &Path, files: &ConfigFiles) -> Result<()> {
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
    pub(super) fn apply_config(&mut self, files: &ConfigFiles) -> Result<()> {
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

/// `tokenizers::Tokenizer::from_str`, after the checks that keep tokenizers 0.23 from
/// panicking on a bad file (both found by fuzz/): it panics (`expect("Helper")` in its
/// decoder deserializer) when the JSON is malformed inside `"decoder"`, and (see
/// `check_bpe_merges`) on a merge whose token is longer than any in the vocabulary.
pub(super) fn backend_from_str(text: &str) -> std::result::Result<tk::Tokenizer, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    check_bpe_merges(&v["model"])?;
    tk::Tokenizer::from_str(text).map_err(|e| e.to_string())
}

/// tokenizers' BPE builder copies `a + b[prefix..]` of each merge into a buffer as long as the
/// longest vocabulary token and only then checks that the merged token is in the vocabulary;
/// a longer one panics. The same check, made first.
pub(super) fn check_bpe_merges(model: &Value) -> std::result::Result<(), String> {
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
pub(super) fn gpt2_pipeline(bpe: BPE, add_prefix_space: bool) -> tk::Tokenizer {
    let mut inner = tk::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    inner.with_decoder(Some(ByteLevel::new(add_prefix_space, true, true)));
    inner.with_post_processor(Some(ByteLevel::new(add_prefix_space, true, true)));
    inner
}

pub(super) fn uses_byte_level(pre_tokenizer: &Value) -> bool {
    match pre_tokenizer.get("type").and_then(Value::as_str) {
        Some("ByteLevel") => true,
        Some("Sequence") => pre_tokenizer
            .get("pretokenizers")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(uses_byte_level)),
        _ => false,
    }
}
