//! The tokenizer loader: a `tokenizer.json` text, then optionally a NUL byte and a
//! `tokenizer_config.json` text, then optionally another NUL byte and a text to encode.
//! `Tokenizer::from_state` is what `from_pretrained` does with those two files (the backend
//! from the JSON, then the config applied); then encode, batch-encode with padding and
//! truncation, and decode (out-of-range ids included).
#![no_main]

use libfuzzer_sys::fuzz_target;

use ferrotune::tokenizer::{EncodeOptions, Padding, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let Ok(json) = std::str::from_utf8(parts.next().unwrap_or_default()) else { return };
    let Ok(config) = std::str::from_utf8(parts.next().unwrap_or(b"{}")) else { return };
    let text = parts.next().map(String::from_utf8_lossy);
    let text = text.as_deref().unwrap_or("Hello, world! <|endoftext|> ünï 123\n");
    let Ok(t) = Tokenizer::from_state(json, config) else { return };
    let _ = t.tokenize(text, false);
    if let Ok(ids) = t.encode(text, true) {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let _ = t.decode(&ids, false, None);
        let _ = t.decode(&ids, true, Some(true));
    }
    let opts = EncodeOptions {
        add_special_tokens: true,
        padding: Padding::Longest,
        truncation: true,
        max_length: Some(7),
        pad_to_multiple_of: Some(4),
        offsets: true, // the char-offset encoding path too
    };
    if let Ok(batch) = t.encode_batch(&[text, "", "a"], &opts) {
        let _ = batch.to_rect();
    }
    let _ = t.decode(&[-1, 0, i64::MAX, t.vocab_size() as i64, i64::MIN], true, None);
    let _ = t.to_state();
});
