//! A Hugging Face `tokenizer.json` rebuilt from a GGUF's `tokenizer.ggml.*` metadata, as
//! transformers' GGUF tokenizer conversion builds it (`integrations/gguf`:
//! `byte_level_tokenizer`, `add_gguf_special_tokens`, `set_split_regex`, and the
//! `TokenizersBackend` post-processor), so ids match `AutoTokenizer.from_pretrained(dir,
//! gguf_file=...)`.
//!
//! Supported: `tokenizer.ggml.model == "gpt2"` (byte-level BPE: Llama 3, SmolLM, Qwen2,
//! ...). SentencePiece ("llama"), Unigram ("t5") and others are a clear error.
//!
//! `tokenizer_to_gguf` is the inverse: the metadata llama.cpp's `convert_hf_to_gguf.py`
//! writes for a byte-level BPE tokenizer, which `tokenizer_from_gguf` reads back.

use serde_json::{json, Map, Value};

use super::gguf::{GgufFile, GgufValue};
use crate::error::{Error, Result};

/// A tokenizer rebuilt from GGUF metadata.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// A `tokenizer.json` that `tokenizers::Tokenizer::from_str` loads.
    pub tokenizer_json: String,
    /// `tokenizer.chat_template`, when the file has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
    /// A `tokenizer_config.json` (special tokens, add_bos/eos_token, chat_template).
    pub tokenizer_config: Value,
}

impl GgufTokenizer {
    /// The ferrotune tokenizer (special tokens and chat template from `tokenizer_config`).
    pub fn to_tokenizer(&self) -> Result<crate::tokenizer::Tokenizer> {
        crate::tokenizer::Tokenizer::from_state(&self.tokenizer_json, &self.tokenizer_config.to_string())
    }
}

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_UNUSED: i64 = 5;

/// llama.cpp's pre-tokenizer names whose split regex `split_regex` knows, in the order a
/// regex found in a tokenizer.json is named by (the first name of each regex).
const PRE_NAMES: [&str; 5] = ["llama-bpe", "qwen2", "tekken", "qwen35", "gpt-4o"];

/// Split regexes by `tokenizer.ggml.pre`, as transformers' `GGUF_PRE_TOKENIZER_SPLITS`.
/// Pre-tokenizer types not listed keep GPT-2's ByteLevel regex (SmolLM's "smollm" among them).
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const GPT4O: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// GPT-2's byte -> printable character table (`bytes_to_unicode`).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(v) = file.get(key) else { return Ok(None) };
    let arr = v
        .as_array()
        .ok_or_else(|| Error::Tokenizer(format!("GGUF metadata {key} is not an array")))?;
    arr.iter()
        .map(|x| x.as_str().ok_or_else(|| Error::Tokenizer(format!("GGUF metadata {key} holds a non-string"))))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Builds the tokenizer described by a GGUF's metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<GgufTokenizer> {
    let model = file.get("tokenizer.ggml.model").and_then(|v| v.as_str()).ok_or_else(|| {
        Error::Tokenizer(format!("{} has no tokenizer (no tokenizer.ggml.model metadata)", file.path.display()))
    })?;
    if model != "gpt2" {
        let what = match model {
            "llama" => " (SentencePiece)",
            "t5" => " (Unigram)",
            _ => "",
        };
        return Err(Error::Tokenizer(format!(
            "{}: GGUF tokenizer model {model:?}{what} is not supported (supported: \"gpt2\", byte-level BPE)",
            file.path.display()
        )));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
    let merges = strings(file, "tokenizer.ggml.merges")?
        .ok_or_else(|| Error::Tokenizer("GGUF byte-level BPE tokenizer has no tokenizer.ggml.merges".into()))?;
    let token_type: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        Some(GgufValue::Array(a)) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        _ => vec![],
    };
    let pre = file.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");

    // Vocabulary: tokens in the byte alphabet as they are, others respelled byte by byte
    // (later duplicates win, as in the Python dict transformers builds).
    let table = bytes_to_unicode();
    let in_alphabet = |t: &str| t.chars().all(|c| table.contains(&c));
    let mut vocab = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) { t.to_string() } else { t.bytes().map(|b| table[b as usize]).collect() };
        vocab.insert(key, json!(id));
    }
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| Error::Tokenizer(format!("GGUF merge {m:?} is not two tokens separated by a space")))
        })
        .collect::<Result<_>>()?;

    let id_of = |key: &str| file.get(&format!("tokenizer.ggml.{key}")).and_then(|v| v.as_u64()).map(|v| v as usize);
    let token_of = |key: &str| id_of(key).and_then(|i| tokens.get(i)).map(|s| s.to_string());
    let bos_token = token_of("bos_token_id");
    let eos_token = token_of("eos_token_id");
    let unk_token = token_of("unknown_token_id");
    let pad_token = token_of("padding_token_id");
    let add_bos_token = file.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false) && bos_token.is_some();
    let add_eos_token = file.get("tokenizer.ggml.add_eos_token").and_then(|v| v.as_bool()).unwrap_or(false) && eos_token.is_some();

    // Added tokens: CONTROL tokens spelled in the byte alphabet are special; USER_DEFINED
    // ones present in the vocabulary are plain added tokens; the named special tokens
    // (bos/eos/unk/pad) are special too, as transformers adds them at init.
    let mut added: Vec<(usize, String, bool)> = vec![];
    let vocab_id = |t: &str| vocab.get(t).and_then(|v| v.as_u64()).map(|v| v as usize);
    for (i, (t, ty)) in tokens.iter().zip(&token_type).enumerate() {
        if *ty == TOKEN_CONTROL && in_alphabet(t) {
            added.push((vocab_id(t).unwrap_or(i), t.to_string(), true));
        }
    }
    for (i, (t, ty)) in tokens.iter().zip(&token_type).enumerate() {
        if *ty == TOKEN_USER_DEFINED && vocab.contains_key(*t) && !added.iter().any(|a| a.1 == *t) {
            added.push((vocab_id(t).unwrap_or(i), t.to_string(), false));
        }
    }
    for t in [&bos_token, &eos_token, &unk_token, &pad_token].into_iter().flatten() {
        if !added.iter().any(|a| &a.1 == t) {
            if let Some(id) = vocab_id(t) {
                added.push((id, t.clone(), true));
            }
        }
    }
    added.sort_by_key(|a| a.0);
    let added_tokens: Vec<Value> = added
        .iter()
        .map(|(id, content, special)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        })
        .collect();

    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre_tokenizer = match split_regex(pre) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
        None => byte_level(true),
    };

    // TemplateProcessing as TokenizersBackend.update_post_processor writes it.
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let sp = |tok: &str, type_id: u32| json!({"SpecialToken": {"id": tok, "type_id": type_id}});
    let mut single = vec![];
    let mut pair = vec![];
    let mut special_tokens = Map::new();
    if add_bos_token {
        let b = bos_token.as_deref().unwrap();
        single.push(sp(b, 0));
        pair.push(sp(b, 0));
        special_tokens.insert(b.into(), json!({"id": b, "ids": [id_of("bos_token_id")], "tokens": [b]}));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if add_eos_token {
        let e = eos_token.as_deref().unwrap();
        single.push(sp(e, 0));
        pair.push(sp(e, 0));
        special_tokens.insert(e.into(), json!({"id": e, "ids": [id_of("eos_token_id")], "tokens": [e]}));
    }
    if add_bos_token {
        pair.push(sp(bos_token.as_deref().unwrap(), 1));
    }
    pair.push(seq("B", 1));
    if add_eos_token {
        pair.push(sp(eos_token.as_deref().unwrap(), 1));
    }

    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let tokenizer_json =
        serde_json::to_string(&tok).map_err(|e| Error::Json { context: "GGUF tokenizer.json".into(), source: e })?;

    let chat_template = file.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
    let mut cfg = Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("bos_token".into(), json!(bos_token));
    cfg.insert("eos_token".into(), json!(eos_token));
    cfg.insert("unk_token".into(), json!(unk_token));
    cfg.insert("pad_token".into(), json!(pad_token));
    cfg.insert("add_bos_token".into(), json!(add_bos_token));
    cfg.insert("add_eos_token".into(), json!(add_eos_token));
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(t) = &chat_template {
        cfg.insert("chat_template".into(), json!(t));
    }
    Ok(GgufTokenizer {
        tokenizer_json,
        chat_template,
        bos_token,
        eos_token,
        unk_token,
        pad_token,
        add_bos_token,
        add_eos_token,
        tokenizer_config: Value::Object(cfg),
    })
}

/// The `tokenizer.ggml.*` metadata (and `tokenizer.chat_template`) of a byte-level BPE
/// tokenizer for a model of `n_vocab` embedding rows, as llama.cpp's converter writes it:
/// tokens in the byte alphabet, ids without a token filled with `[PAD{id}]` (type UNUSED),
/// added special tokens CONTROL, other added tokens USER_DEFINED; `add_bos_token` /
/// `add_eos_token` as `encode` adds them. Returns the metadata and warnings (a pre-tokenizer
/// llama.cpp has no name for is written as "default").
pub fn tokenizer_to_gguf(
    tok: &crate::tokenizer::Tokenizer,
    chat_template: Option<&str>,
    n_vocab: usize,
) -> Result<(Vec<(String, GgufValue)>, Vec<String>)> {
    use crate::tokenizer::SpecialToken;
    let json: Value = serde_json::from_str(&tok.to_tokenizer_json(false)?)
        .map_err(|e| Error::Json { context: "tokenizer.json".into(), source: e })?;
    let model = &json["model"];
    let byte_level = |v: &Value| v["type"] == "ByteLevel";
    let pre = &json["pre_tokenizer"];
    let pre_parts: Vec<&Value> = match pre["pretokenizers"].as_array() {
        Some(a) => a.iter().collect(),
        None => vec![pre],
    };
    if model["type"] != "BPE" || !(byte_level(&json["decoder"]) || pre_parts.iter().any(|p| byte_level(p))) {
        return Err(Error::Tokenizer(format!(
            "only byte-level BPE tokenizers can be embedded in a GGUF (this one is {} with decoder {})",
            model["type"], json["decoder"]["type"]
        )));
    }
    let mut tokens: Vec<Option<(String, i64)>> = vec![None; n_vocab];
    let mut put = |id: u64, text: &str, ty: i64| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::Tokenizer(format!(
                "token {text:?} has id {id}, beyond the model's {n_vocab} embedding rows (resize_token_embeddings first)"
            ))
        })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    for (text, id) in model["vocab"].as_object().into_iter().flatten() {
        put(id.as_u64().unwrap_or(u64::MAX), text, TOKEN_NORMAL)?;
    }
    for a in json["added_tokens"].as_array().into_iter().flatten() {
        let ty = if a["special"] == true { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
        put(a["id"].as_u64().unwrap_or(u64::MAX), a["content"].as_str().unwrap_or_default(), ty)?;
    }
    let (texts, types): (Vec<GgufValue>, Vec<GgufValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (text, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED));
            (GgufValue::String(text), GgufValue::I32(ty as i32))
        })
        .unzip();
    let merges: Vec<GgufValue> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::Array(p) => GgufValue::String(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or(""))),
            other => GgufValue::String(other.as_str().unwrap_or("").to_string()),
        })
        .collect();

    let mut warnings = vec![];
    let regex = pre_parts.iter().find(|p| p["type"] == "Split").and_then(|p| p["pattern"]["Regex"].as_str());
    let pre_name = match (regex, pre_parts.as_slice()) {
        (Some(r), _) => PRE_NAMES.iter().copied().find(|n| split_regex(n) == Some(r)),
        (None, [only]) if byte_level(only) && only["use_regex"] != false => Some("gpt-2"),
        (None, [digits, bl]) if digits["type"] == "Digits" && digits["individual_digits"] == true && byte_level(bl) => Some("smollm"),
        _ => None,
    };
    let pre_name = pre_name.unwrap_or_else(|| {
        warnings.push(format!(
            "the pre-tokenizer {} has no llama.cpp name: written as \"default\" (llama.cpp may split text differently)",
            serde_json::to_string(pre).unwrap_or_default()
        ));
        "default"
    });

    let mut md: Vec<(String, GgufValue)> = vec![
        ("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), GgufValue::String(pre_name.into())),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(texts)),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
    ];
    for (kind, key) in [
        (SpecialToken::Bos, "bos_token_id"),
        (SpecialToken::Eos, "eos_token_id"),
        (SpecialToken::Unk, "unknown_token_id"),
        (SpecialToken::Pad, "padding_token_id"),
    ] {
        if let Some(id) = tok.special_token_id(kind) {
            md.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
        }
    }
    let (with, without) = (tok.encode("a", true)?, tok.encode("a", false)?);
    let adds = |kind: SpecialToken, at: Option<&u32>| {
        with.len() > without.len() && tok.special_token_id(kind).is_some_and(|id| at == Some(&id))
    };
    md.push(("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(adds(SpecialToken::Bos, with.first()))));
    md.push(("tokenizer.ggml.add_eos_token".into(), GgufValue::Bool(adds(SpecialToken::Eos, with.last()))));
    if let Some(t) = chat_template {
        md.push(("tokenizer.chat_template".into(), GgufValue::String(t.to_string())));
    }
    Ok((md, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        let mut s: Vec<char> = t.to_vec();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 256);
    }

    #[test]
    fn split_regexes_compile() {
        for pre in ["llama3", "tekken", "qwen2", "qwen35", "gpt-4o"] {
            let j = json!({"type": "Split", "pattern": {"Regex": split_regex(pre).unwrap()}, "behavior": "Isolated", "invert": false});
            let _: tokenizers::PreTokenizerWrapper = serde_json::from_value(j).unwrap();
        }
        assert!(split_regex("smollm").is_none());
    }
}
