//! Model configurations that mirror Hugging Face `config.json` keys exactly. Keys we do
//! not interpret are kept (`extra`) so that a saved config round-trips.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

fn default_act() -> String {
    "gelu_new".into()
}
fn default_pdrop() -> f64 {
    0.1
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_init_range() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}
fn default_token() -> Option<i64> {
    Some(50256)
}

/// transformers' `GPT2Config`. The sizes have no default: a config without them is an error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_token")]
    pub bos_token_id: Option<i64>,
    #[serde(default = "default_token")]
    pub eos_token_id: Option<i64>,
    #[serde(default)]
    pub model_type: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

const GPT2_REQUIRED: [&str; 5] = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"];

impl Gpt2Config {
    pub fn from_value(v: Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| Error::Config("config must be a JSON object".into()))?;
        for key in GPT2_REQUIRED {
            if !obj.contains_key(key) {
                return Err(Error::Config(format!("gpt2 config is missing the key {key:?}")));
            }
        }
        let mut cfg: Gpt2Config =
            serde_json::from_value(v).map_err(|e| Error::Config(format!("invalid gpt2 config: {e}")))?;
        cfg.model_type = "gpt2".into();
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.vocab_size == 0 || self.n_positions == 0 || self.n_embd == 0 || self.n_layer == 0 || self.n_head == 0 {
            return bad("vocab_size, n_positions, n_embd, n_layer and n_head must all be positive".into());
        }
        if self.n_embd % self.n_head != 0 {
            return bad(format!("n_embd ({}) must be divisible by n_head ({})", self.n_embd, self.n_head));
        }
        if !matches!(self.activation_function.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
            return bad(format!(
                "activation_function {:?} is not supported (supported: gelu_new, gelu_pytorch_tanh)",
                self.activation_function
            ));
        }
        for (name, p) in [("resid_pdrop", self.resid_pdrop), ("embd_pdrop", self.embd_pdrop), ("attn_pdrop", self.attn_pdrop)] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if !self.tie_word_embeddings {
            return bad("gpt2 with an untied lm_head (tie_word_embeddings=false) is not supported".into());
        }
        Ok(())
    }

    /// Width of the MLP (n_inner, or 4 * n_embd).
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    pub fn to_value(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let obj = v.as_object_mut().expect("object");
        obj.insert("model_type".into(), "gpt2".into());
        obj.entry("architectures").or_insert_with(|| serde_json::json!(["GPT2LMHeadModel"]));
        v
    }
}

/// Reads `config.json` (a path to the file or to its directory) as a JSON value.
pub fn read_config_json(path: &Path) -> Result<Value> {
    let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { context: file.display().to_string(), source: e })
}

/// The `model_type` of a config value, required to pick an architecture.
pub fn model_type(v: &Value) -> Result<String> {
    v.get("model_type")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .ok_or_else(|| Error::Config("config has no \"model_type\" key".into()))
}
