//! The configs of candle-transformers' `llama`, `qwen2` and `mistral` models for a ferrotune
//! model, so that they compute what it computes, or a ConfigError saying why they cannot.
//!
//! Where candle's models differ from transformers' (and so from ours):
//! - head size: `llama` and `qwen2` take it as hidden_size / num_attention_heads; a config
//!   whose `head_dim` differs is refused (`mistral` takes `head_dim`);
//! - biases: `llama` and `mistral` have none, `qwen2` has q/k/v biases and no o_proj bias;
//! - rope: `llama` does the default and llama3 frequencies, `qwen2` and `mistral` the default;
//! - sliding window: candle masks key j for query i when j + window < i (a window of
//!   window + 1 keys), transformers when i - j >= window: candle's window is ours minus one.
//!   `qwen2` applies its window to every layer whatever `use_sliding_window` says, so no
//!   window is a window as long as the position table. Both mask only a multi-token
//!   forward: KV-cached decoding one token at a time attends to the whole cache;
//! - tied embeddings: `mistral` always reads `lm_head.weight` (a tied model is refused);
//! - positions: cos/sin tables hold max_position_embeddings rows; a longer sequence fails.
//!
//! The models return the last position's logits only (llama: (B, V); qwen2, mistral:
//! (B, 1, V)), and their forwards have no backward through the fused norms: inference only.

use candle_nn::Activation;
use candle_transformers::models::{llama, mistral, qwen2};
use serde_json::Value;

use crate::config::{model_type, LlamaConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::models::CausalLm;

/// The model's config, when its `model_type` is the candle `family`'s.
fn config_of(model: &dyn CausalLm<f32>, family: &str) -> Result<LlamaConfig> {
    let v = model.config_value();
    let m = model_type(&v)?;
    if m != family {
        return Err(Error::Config(format!("candle-transformers' {family} model cannot run a {m} model")));
    }
    LlamaConfig::from_value(v)
}

fn refuse(family: &str, why: String) -> Error {
    Error::Config(format!("candle-transformers' {family} model {why}"))
}

/// The head size candle derives (hidden / heads) must be the model's.
fn check_derived_head_dim(c: &LlamaConfig, family: &str) -> Result<()> {
    let derived = c.hidden_size / c.num_attention_heads;
    if derived * c.num_attention_heads != c.hidden_size || derived != c.head_dim {
        return Err(refuse(
            family,
            format!(
                "takes the head size as hidden_size / num_attention_heads = {} / {}, not the config's head_dim {}",
                c.hidden_size, c.num_attention_heads, c.head_dim
            ),
        ));
    }
    Ok(())
}

fn check_default_rope(c: &LlamaConfig, family: &str) -> Result<()> {
    match c.rope_scaling {
        RopeScaling::Default => Ok(()),
        ref other => Err(refuse(family, format!("has default rope frequencies only, not {other:?}"))),
    }
}

fn check_biases(c: &LlamaConfig, family: &str, qkv: bool) -> Result<()> {
    if c.qkv_bias != qkv || c.o_bias {
        return Err(refuse(
            family,
            format!(
                "has {}q/k/v biases and no o_proj bias (the config has qkv bias {}, o_proj bias {})",
                if qkv { "" } else { "no " },
                c.qkv_bias,
                c.o_bias
            ),
        ));
    }
    Ok(())
}

/// The one window every layer has (None: full attention), in candle's convention (ours - 1).
fn candle_window(c: &LlamaConfig, family: &str) -> Result<Option<usize>> {
    let first = c.layer_windows.first().copied().flatten();
    if c.layer_windows.iter().any(|w| *w != first) {
        return Err(refuse(family, format!("has one attention window for all layers, not {:?}", c.layer_windows)));
    }
    Ok(first.map(|w| w - 1))
}

/// candle-transformers' `llama::Config` (flash attention off) for a llama model.
pub fn llama_config(model: &dyn CausalLm<f32>) -> Result<llama::Config> {
    const F: &str = "llama";
    let c = config_of(model, F)?;
    check_derived_head_dim(&c, F)?;
    check_biases(&c, F, false)?;
    if candle_window(&c, F)?.is_some() {
        return Err(refuse(F, "has no sliding window".into()));
    }
    let rope_scaling = match c.rope_scaling {
        RopeScaling::Default => None,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            Some(llama::Llama3RopeConfig {
                factor: factor as f32,
                low_freq_factor: low_freq_factor as f32,
                high_freq_factor: high_freq_factor as f32,
                original_max_position_embeddings: original_max_position_embeddings as usize,
                rope_type: llama::Llama3RopeType::Llama3,
            })
        }
        ref other => return Err(refuse(F, format!("has default and llama3 rope frequencies only, not {other:?}"))),
    };
    let eos_token_id = match &c.raw["eos_token_id"] {
        Value::Number(n) => n.as_u64().map(|id| llama::LlamaEosToks::Single(id as u32)),
        Value::Array(ids) => Some(llama::LlamaEosToks::Multiple(ids.iter().filter_map(|v| v.as_u64()).map(|id| id as u32).collect())),
        _ => None,
    };
    Ok(llama::Config {
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        vocab_size: c.vocab_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta as f32,
        bos_token_id: c.raw["bos_token_id"].as_u64().map(|id| id as u32),
        eos_token_id,
        rope_scaling,
        max_position_embeddings: c.max_position_embeddings,
        tie_word_embeddings: c.tie_word_embeddings,
    })
}

/// candle-transformers' `qwen2::Config` for a qwen2 model. Its lm_head is tied exactly when
/// the weights have no `lm_head.weight`, which is what `interop::candle::to_tensors` gives.
pub fn qwen2_config(model: &dyn CausalLm<f32>) -> Result<qwen2::Config> {
    const F: &str = "qwen2";
    let c = config_of(model, F)?;
    check_derived_head_dim(&c, F)?;
    check_biases(&c, F, true)?;
    check_default_rope(&c, F)?;
    let window = candle_window(&c, F)?;
    Ok(qwen2::Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        max_position_embeddings: c.max_position_embeddings,
        // a window as long as the position table masks nothing
        sliding_window: window.unwrap_or(c.max_position_embeddings),
        max_window_layers: c.raw["max_window_layers"].as_u64().map_or(c.num_hidden_layers, |n| n as usize),
        tie_word_embeddings: c.tie_word_embeddings,
        rope_theta: c.rope_theta,
        rms_norm_eps: c.rms_norm_eps,
        use_sliding_window: window.is_some(),
        hidden_act: Activation::Silu,
    })
}

/// candle-transformers' `mistral::Config` (flash attention off) for a mistral model.
pub fn mistral_config(model: &dyn CausalLm<f32>) -> Result<mistral::Config> {
    const F: &str = "mistral";
    let c = config_of(model, F)?;
    check_biases(&c, F, false)?;
    check_default_rope(&c, F)?;
    if c.tie_word_embeddings {
        return Err(refuse(
            F,
            "always reads its own lm_head.weight: for tied embeddings, insert model.embed_tokens.weight under that name too".into(),
        ));
    }
    Ok(mistral::Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        head_dim: Some(c.head_dim),
        num_key_value_heads: c.num_key_value_heads,
        hidden_act: Activation::Silu,
        max_position_embeddings: c.max_position_embeddings,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        sliding_window: candle_window(&c, F)?,
        use_flash_attn: false,
    })
}
