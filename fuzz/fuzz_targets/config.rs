//! A `config.json`: bytes -> JSON -> `models::from_config`, which validates the config and
//! builds (allocates and initialises) the model it describes.
//!
//! Sizes are bounded by `config::MAX_DIM` / `MAX_LAYERS` and checked against the machine's
//! memory, so a valid config may still describe a model of several GB that takes seconds
//! to initialise; the fuzzer's -rss_limit_mb=2048 and per-input timeout would report that
//! as an out-of-memory/timeout although it is not a bug. So this target parses the config
//! first (the same `from_value` the build uses) and builds only models of at most
//! `MAX_PARAMS` parameters (an upper estimate); bigger valid configs exercise the parsing
//! and validation only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use ferrotune::config::{model_type, Gpt2Config, LlamaConfig};

const MAX_PARAMS: u128 = 4_000_000;

/// An upper estimate of the parameter count (u128: no overflow for any accepted size).
fn params(v: &Value) -> Option<u128> {
    let labels = v.get("num_labels").and_then(Value::as_u64).unwrap_or(2).max(
        v.get("id2label").and_then(Value::as_object).map_or(0, |m| m.len() as u64),
    ) as u128;
    Some(match model_type(v).ok()?.as_str() {
        "gpt2" => {
            let c = Gpt2Config::from_value(v.clone()).ok()?;
            let (e, inner) = (c.n_embd as u128, c.inner() as u128);
            (c.vocab_size as u128 + c.n_positions as u128 + labels) * e * 2
                + c.n_layer as u128 * (4 * e * e + 2 * e * inner + 10 * e + inner)
        }
        "llama" | "mistral" | "qwen2" => {
            let c = LlamaConfig::from_value(v.clone()).ok()?;
            let h = c.hidden_size as u128;
            let q = (c.num_attention_heads * c.head_dim) as u128;
            let kv = (c.num_key_value_heads * c.head_dim) as u128;
            (c.vocab_size as u128 + labels) * h * 2
                + c.num_hidden_layers as u128 * (2 * h * q + 2 * h * kv + 3 * h * c.intermediate_size as u128 + 2 * q + 2 * kv + 2 * h)
                + h
        }
        _ => 0,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    if params(&v).is_some_and(|n| n > MAX_PARAMS) {
        return;
    }
    let _ = ferrotune::models::from_config(v, 0);
});
