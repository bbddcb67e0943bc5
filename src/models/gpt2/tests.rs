use crate::models::{Batch, CausalLm};
use super::*;

fn tiny_config(pdrop: f64) -> Gpt2Config {
    Gpt2Config::from_value(serde_json::json!({
        "model_type": "gpt2", "vocab_size": 11, "n_positions": 8, "n_embd": 6, "n_layer": 2, "n_head": 2,
        "resid_pdrop": pdrop, "embd_pdrop": pdrop, "attn_pdrop": pdrop, "initializer_range": 0.3
    }))
    .unwrap()
}

/// The whole model's backward against central differences in f64, with padding on
/// both sides, for every parameter.
#[test]
fn model_gradients_match_finite_differences() {
    let mut m = Gpt2::<f64>::from_config(tiny_config(0.0), 3).unwrap();
    crate::models::testing::perturb(&mut m);
    let ids = [1i64, 5, 7, 2, 0, 3, 9, 4, 10, 6];
    let mask = [1i64, 1, 1, 1, 0, 0, 1, 1, 1, 1];
    // the fully masked query (row 1, t 0) follows torch's gradient, not the true
    // derivative (see kernels/attention.rs), so the token it predicts is not counted here
    let labels = [1i64, 5, 7, 2, -100, -100, -100, 4, 10, 6];
    let batch = Batch { ids: &ids, mask: Some(&mask), labels: Some(&labels), b: 2, t: 5 };
    crate::models::testing::assert_gradients_match(&mut m, &batch);
}

/// More rows than the loss backward takes at once (head.rs LOSS_ROWS = 256): the chunked
/// language-model loss against central differences of the full-logits loss.
#[test]
fn chunked_loss_gradients_match_finite_differences() {
    let mut m = Gpt2::<f64>::from_config(tiny_config(0.0), 4).unwrap();
    let (b, t) = (40, 7);
    let ids: Vec<i64> = (0..b * t).map(|i| (i * 5 % 11) as i64).collect();
    let labels: Vec<i64> = (0..b * t).map(|i| if i % 9 == 4 { -100 } else { (i * 3 % 11) as i64 }).collect();
    let batch = Batch { ids: &ids, mask: None, labels: Some(&labels), b, t };
    crate::models::testing::assert_gradients_match(&mut m, &batch);
}

#[test]
fn activations_of_changing_shapes_are_exact() {
    crate::models::testing::recycled_activations_are_exact(|| Gpt2::<f32>::from_config(tiny_config(0.0), 5).unwrap());
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let mut m = Gpt2::<f32>::from_config(tiny_config(0.1), 1).unwrap();
    let ids: Vec<i64> = (0..16).map(|i| (i * 7 % 11) as i64).collect();
    m.forward_backward(&Batch { ids: &ids, mask: None, labels: None, b: 2, t: 8 }, None).unwrap();
    let table = m.state().table.clone();
    let g = m.state_mut().grads_mut();
    for info in table.infos() {
        let gs = &g[info.range.clone()];
        assert!(gs.iter().all(|x| x.is_finite()), "{} has a non-finite gradient", info.name);
        assert!(gs.iter().any(|&x| x != 0.0), "{} has an all-zero gradient", info.name);
    }
}

#[test]
fn dropout_only_in_train_mode() {
    let mut m = Gpt2::<f32>::from_config(tiny_config(0.5), 1).unwrap();
    let ids = [1i64, 2, 3, 4];
    let batch = Batch { ids: &ids, mask: None, labels: None, b: 1, t: 4 };
    m.state_mut().training = false;
    m.forward(&batch).unwrap();
    let a = m.logits().to_vec();
    m.forward(&batch).unwrap();
    assert_eq!(a, m.logits(), "eval is deterministic");
    m.state_mut().training = true;
    m.forward(&batch).unwrap();
    assert_ne!(a, m.logits(), "train mode applies dropout");
}

/// Gradient checkpointing changes nothing but memory, with dropout everywhere, padding
/// and LoRA adapters with their own dropout: block activations take one block's room.
#[test]
fn checkpointing_gives_identical_gradients_in_one_block_of_memory() {
    let mut cfg = tiny_config(0.1);
    cfg.n_layer = 3;
    let (b, t, n, c, i, nh) = (2, 8, 16, 6, 24, 2);
    let ids: Vec<i64> = (0..16).map(|i| (i * 7 % 11) as i64).collect();
    let mask: Vec<i64> = (0..16).map(|k| i64::from(k != 8 && k != 9)).collect();
    let batch = Batch { ids: &ids, mask: Some(&mask), labels: None, b, t };
    let mut m = Gpt2::<f32>::from_config(cfg, 1).unwrap();
    let (full, ckpt) = crate::models::testing::checkpointing_is_exact(&mut m, &batch);
    // a block's buffers (dropout masks are drawn again from seeds): 5 (N, C), 1 (N, I),
    // 4 (N), the attention's (B, NH, T, 2) row statistics
    let block = 5 * n * c + n * i + 4 * n + b * nh * t * ROW_STATS;
    assert_eq!(full - ckpt, 2 * block * 4, "two of three blocks' activations are not kept");

    crate::models::testing::attach_lora_everywhere(&mut m);
    let (full, ckpt) = crate::models::testing::checkpointing_is_exact(&mut m, &batch);
    // and the adapters' 4 (N, R) products
    let lora = 4 * n * 2;
    assert_eq!(full - ckpt, 2 * (block + lora) * 4);
}

#[test]
fn checkpointing_gives_identical_gradients_with_a_classification_head() {
    let mut v = tiny_config(0.1).to_value();
    v["architectures"] = serde_json::json!(["GPT2ForSequenceClassification"]);
    v["num_labels"] = 3.into();
    v["pad_token_id"] = 0.into();
    let mut m = Gpt2::<f32>::from_config(Gpt2Config::from_value(v).unwrap(), 1).unwrap();
    let ids = [3i64, 5, 7, 2, 0, 0, 9, 4, 10, 6, 1, 0];
    let labels = [2i64, 0];
    let batch = Batch { ids: &ids, mask: None, labels: Some(&labels), b: 2, t: 6 };
    crate::models::testing::checkpointing_is_exact(&mut m, &batch);
}
