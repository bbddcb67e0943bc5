use super::*;
use crate::models::Batch;

fn config(extra: Value) -> LlamaConfig {
    let mut v = serde_json::json!({
        "model_type": "llama", "vocab_size": 13, "hidden_size": 8, "intermediate_size": 10,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 16, "initializer_range": 0.3, "tie_word_embeddings": true
    });
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    LlamaConfig::from_value(v).unwrap()
}

/// Every parameter's gradient against central differences in f64.
fn check_gradients(cfg: LlamaConfig) {
    let mut m = Llama::<f64>::from_config(cfg, 3).unwrap();
    crate::models::testing::perturb(&mut m);
    let ids = [1i64, 5, 7, 2, 0, 3, 9, 4, 12, 6, 11, 8];
    let mask = [1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1];
    let batch = Batch { ids: &ids, mask: Some(&mask), labels: None, b: 2, t: 6 };
    crate::models::testing::assert_gradients_match(&mut m, &batch);
}

#[test]
fn activations_of_changing_shapes_are_exact() {
    crate::models::testing::recycled_activations_are_exact(|| Llama::<f32>::from_config(config(serde_json::json!({})), 5).unwrap());
}

#[test]
fn gqa_tied_gradients_match_finite_differences() {
    check_gradients(config(serde_json::json!({})));
}

#[test]
fn qwen2_bias_untied_gradients_match_finite_differences() {
    check_gradients(config(serde_json::json!({"model_type": "qwen2", "tie_word_embeddings": false})));
}

/// Qwen3: q/k RMSNorm per head, head_dim (6) other than hidden / heads (2), biases on all
/// four attention projections.
#[test]
fn qwen3_qk_norm_gradients_match_finite_differences() {
    check_gradients(config(serde_json::json!({"model_type": "qwen3", "head_dim": 6, "attention_bias": true, "tie_word_embeddings": false})));
}

#[test]
fn mistral_window_llama3_rope_gradients_match_finite_differences() {
    check_gradients(config(serde_json::json!({
        "model_type": "mistral", "sliding_window": 3, "attention_bias": true,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 4}
    })));
}

/// Gradient checkpointing changes nothing but memory: grouped-query attention, a sliding
/// window, padding, and LoRA adapters with dropout; block activations take one block's room.
#[test]
fn checkpointing_gives_identical_gradients_in_one_block_of_memory() {
    let cfg = config(serde_json::json!({"model_type": "mistral", "sliding_window": 3, "num_hidden_layers": 3}));
    let (b, t, n, c, i, nh, qkv) = (2, 6, 12, 8, 10, 4, 16);
    let mut m = Llama::<f32>::from_config(cfg, 1).unwrap();
    let ids = [1i64, 5, 7, 2, 0, 3, 9, 4, 12, 6, 11, 8];
    let mask = [1i64, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
    let batch = Batch { ids: &ids, mask: Some(&mask), labels: None, b, t };
    let (full, ckpt) = crate::models::testing::checkpointing_is_exact(&mut m, &batch);
    // a block's buffers: 2 (N, C) (A = C here), 1 (N, QKV), 2 (N, I), 2 (N), the attention's
    // (B, NH, T, 2) row statistics
    let block = 2 * n * c + n * qkv + 2 * n * i + 2 * n + b * nh * t * ROW_STATS;
    assert_eq!(full - ckpt, 2 * block * 4, "two of three blocks' activations are not kept");

    crate::models::testing::attach_lora_everywhere(&mut m);
    let (full, ckpt) = crate::models::testing::checkpointing_is_exact(&mut m, &batch);
    // and the adapters' 7 (N, R) products (their dropout masks are drawn again from seeds)
    let lora = 7 * n * 2;
    assert_eq!(full - ckpt, 2 * (block + lora) * 4);
}

/// Qwen3's per-head norms keep what they save through the checkpoint recompute.
#[test]
fn qwen3_checkpointing_gives_identical_gradients() {
    let cfg = config(serde_json::json!({"model_type": "qwen3", "head_dim": 6, "num_hidden_layers": 3}));
    let mut m = Llama::<f32>::from_config(cfg, 1).unwrap();
    crate::models::testing::attach_lora_everywhere(&mut m);
    let ids = [1i64, 5, 7, 2, 0, 3, 9, 4, 12, 6, 11, 8];
    let batch = Batch { ids: &ids, mask: None, labels: None, b: 2, t: 6 };
    crate::models::testing::checkpointing_is_exact(&mut m, &batch);
}

#[test]
fn rejects_unsupported_configs() {
    let base = serde_json::json!({"model_type": "llama", "vocab_size": 13, "hidden_size": 8, "intermediate_size": 10,
        "num_hidden_layers": 1, "num_attention_heads": 4});
    let with = |k: &str, v: Value| {
        let mut x = base.clone();
        x[k] = v;
        LlamaConfig::from_value(x).unwrap_err().to_string()
    };
    assert!(with("hidden_act", "gelu".into()).contains("hidden_act"));
    assert!(with("num_key_value_heads", 3.into()).contains("multiple"));
    assert!(with("rope_parameters", serde_json::json!({"rope_type": "yarn", "factor": 2.0})).contains("yarn"));
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("hidden_size");
    assert!(LlamaConfig::from_value(missing).unwrap_err().to_string().contains("hidden_size"));
}
