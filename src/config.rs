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

/// The largest width, vocabulary, context or head count a config may ask for: far above any
/// released model (Llama 4's 10M-token context included), low enough that a typo or a
/// hostile file is refused before anything is sized from it.
pub const MAX_DIM: u64 = 1 << 24;
/// The most layers a config may ask for.
pub const MAX_LAYERS: u64 = 1 << 12;

/// Ok when `value` is a size in 1..=limit; otherwise a message that names `key`.
pub fn check_size(key: &str, value: u64, limit: u64) -> std::result::Result<(), String> {
    if value == 0 {
        return Err(format!("{key} must be a positive integer, got 0"));
    }
    if value > limit {
        return Err(format!("{key} = {value} is larger than any model ferrotune can hold (at most {limit})"));
    }
    Ok(())
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
        if !v.is_object() {
            return Err(Error::Config("config must be a JSON object".into()));
        }
        for key in GPT2_REQUIRED {
            req_usize(&v, key, "gpt2")?;
        }
        if get(&v, "n_inner").is_some() {
            req_usize(&v, "n_inner", "gpt2")?;
        }
        let mut cfg: Gpt2Config =
            serde_json::from_value(v).map_err(|e| Error::Config(format!("invalid gpt2 config: {e}")))?;
        cfg.model_type = "gpt2".into();
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let sizes = [
            ("vocab_size", self.vocab_size, MAX_DIM),
            ("n_positions", self.n_positions, MAX_DIM),
            ("n_embd", self.n_embd, MAX_DIM),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_head", self.n_head, MAX_DIM),
            ("n_inner", self.n_inner.unwrap_or(1), MAX_DIM),
        ];
        for (key, value, limit) in sizes {
            check_size(key, value as u64, limit).map_err(|m| Error::Config(format!("gpt2 config: {m}")))?;
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
        positive(self.layer_norm_epsilon, "layer_norm_epsilon")?;
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
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json { context: file.display().to_string(), source: e })?;
    if !v.is_object() {
        return Err(Error::Config(format!("{} must hold a JSON object, got {v}", file.display())));
    }
    Ok(v)
}

/// The `model_type` of a config value, required to pick an architecture.
pub fn model_type(v: &Value) -> Result<String> {
    v.get("model_type")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .ok_or_else(|| Error::Config("config has no \"model_type\" key".into()))
}

/// Rotary embedding variants (transformers' `rope_parameters`, or `rope_theta` +
/// `rope_scaling` in configs written before transformers 5).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    Linear { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// transformers' `LlamaConfig`, also serving `mistral`, `qwen2` and `qwen3` configs. The parsed fields
/// are what the model needs; `raw` keeps the whole config.json so it round-trips.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Bias on q_proj, k_proj, v_proj (qwen2 always; llama/mistral with attention_bias).
    pub qkv_bias: bool,
    /// Bias on o_proj (llama/mistral/qwen3 with attention_bias).
    pub o_bias: bool,
    /// RMSNorm of each query and key head before RoPE (qwen3's q_norm, k_norm).
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    /// The embedding row transformers gives no gradient (nn.Embedding's padding_idx).
    pub pad_token_id: Option<i64>,
    /// Sliding attention window of each layer (Mistral; Qwen2's sliding layers).
    pub layer_windows: Vec<Option<usize>>,
    pub initializer_range: f64,
    pub raw: Value,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

/// A required size, in 1..=MAX_DIM (1..=MAX_LAYERS for num_hidden_layers).
fn req_usize(v: &Value, key: &str, arch: &str) -> Result<usize> {
    let x = get(v, key).ok_or_else(|| Error::Config(format!("{arch} config is missing the key {key:?}")))?;
    let n = x.as_u64().ok_or_else(|| Error::Config(format!("{arch} config: {key} must be a positive integer, got {x}")))?;
    let limit = if key == "num_hidden_layers" { MAX_LAYERS } else { MAX_DIM };
    check_size(key, n, limit).map_err(|m| Error::Config(format!("{arch} config: {m}")))?;
    Ok(n as usize)
}

/// A parameter that must be a finite number > 0 (a rope_theta of 0 makes inv_freq infinite
/// and every rotated query and key NaN; a norm epsilon <= 0 can divide by zero).
fn positive(value: f64, key: &str) -> Result<f64> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::Config(format!("{key} must be a finite number > 0, got {value}")));
    }
    Ok(value)
}

fn opt_f64(v: &Value, key: &str) -> Option<f64> {
    get(v, key).and_then(Value::as_f64)
}

impl LlamaConfig {
    pub fn from_value(v: Value) -> Result<Self> {
        let arch = model_type(&v)?;
        let a = arch.as_str();
        let hidden_size = req_usize(&v, "hidden_size", a)?;
        let heads = req_usize(&v, "num_attention_heads", a)?;
        let kv_heads = get(&v, "num_key_value_heads").map_or(Ok(heads), |_| req_usize(&v, "num_key_value_heads", a))?;
        let layers = req_usize(&v, "num_hidden_layers", a)?;
        // Qwen3Config's head_dim defaults to 128, not hidden_size / heads
        let default_head_dim = if a == "qwen3" { 128 } else { hidden_size / heads };
        let head_dim = get(&v, "head_dim").map_or(Ok(default_head_dim), |_| req_usize(&v, "head_dim", a))?;
        if heads % kv_heads != 0 {
            return Err(Error::Config(format!("num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")));
        }
        if head_dim % 2 != 0 {
            return Err(Error::Config(format!("head_dim must be even for rotary embeddings, got {head_dim}")));
        }
        let act = get(&v, "hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(Error::Config(format!("hidden_act {act:?} is not supported (supported: silu)")));
        }
        if get(&v, "mlp_bias").and_then(Value::as_bool).unwrap_or(false) {
            return Err(Error::Config("mlp_bias=true is not supported".into()));
        }
        if opt_f64(&v, "attention_dropout").unwrap_or(0.0) != 0.0 {
            return Err(Error::Config("attention_dropout > 0 is not supported for llama-family models".into()));
        }
        // rope: transformers 5 writes rope_parameters; older configs rope_theta + rope_scaling
        let rope = get(&v, "rope_parameters").or_else(|| get(&v, "rope_scaling"));
        let rope_theta = rope
            .and_then(|r| opt_f64(r, "rope_theta"))
            .or_else(|| opt_f64(&v, "rope_theta"))
            .unwrap_or(10000.0);
        positive(rope_theta, "rope_theta")?;
        let rope_type = rope
            .and_then(|r| get(r, "rope_type").or_else(|| get(r, "type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let factor = || {
            rope.and_then(|r| opt_f64(r, "factor"))
                .ok_or_else(|| Error::Config(format!("rope type {rope_type:?} needs a \"factor\"")))
                .and_then(|f| positive(f, "rope scaling factor"))
        };
        let rope_scaling = match rope_type {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "llama3" => {
                let r = rope.expect("a rope type comes from a rope dict");
                let need = |k: &str| {
                    opt_f64(r, k)
                        .ok_or_else(|| Error::Config(format!("llama3 rope scaling needs {k:?}")))
                        .and_then(|x| positive(x, k))
                };
                RopeScaling::Llama3 {
                    factor: factor()?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_max_position_embeddings: need("original_max_position_embeddings")?,
                }
            }
            other => return Err(Error::Config(format!("rope type {other:?} is not supported (supported: default, linear, llama3)"))),
        };
        let attention_bias = get(&v, "attention_bias").and_then(Value::as_bool).unwrap_or(false);
        let window = match get(&v, "sliding_window") {
            None => None,
            Some(w) => Some(w.as_u64().filter(|&w| w > 0).map(|w| w as usize).ok_or_else(|| {
                Error::Config(format!("{a} config: sliding_window must be a positive integer or null, got {w}"))
            })?),
        };
        let layer_windows = match get(&v, "layer_types").and_then(Value::as_array) {
            Some(types) => {
                if types.len() != layers {
                    return Err(Error::Config(format!("layer_types has {} entries for {layers} layers", types.len())));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(None),
                        Some("sliding_attention") => {
                            window.map(Some).ok_or_else(|| Error::Config("sliding_attention layers need sliding_window".into()))
                        }
                        _ => Err(Error::Config(format!("unsupported layer type {t}"))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None if a == "mistral" => vec![window; layers],
            None if (a == "qwen2" || a == "qwen3") && get(&v, "use_sliding_window").and_then(Value::as_bool).unwrap_or(false) => {
                return Err(Error::Config(format!("{a} use_sliding_window without layer_types is not supported")))
            }
            None => vec![None; layers],
        };
        Ok(Self {
            vocab_size: req_usize(&v, "vocab_size", a)?,
            intermediate_size: req_usize(&v, "intermediate_size", a)?,
            max_position_embeddings: get(&v, "max_position_embeddings").map_or(Ok(2048), |_| req_usize(&v, "max_position_embeddings", a))?,
            rms_norm_eps: positive(opt_f64(&v, "rms_norm_eps").unwrap_or(1e-6), "rms_norm_eps")?,
            initializer_range: opt_f64(&v, "initializer_range").unwrap_or(0.02),
            tie_word_embeddings: get(&v, "tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            pad_token_id: get(&v, "pad_token_id").and_then(Value::as_i64),
            qkv_bias: a == "qwen2" || attention_bias,
            o_bias: a != "qwen2" && attention_bias,
            qk_norm: a == "qwen3",
            model_type: arch,
            hidden_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rope_theta,
            rope_scaling,
            layer_windows,
            raw: v,
        })
    }

    /// inv_freq (HS/2) in float32, as transformers computes it (rope init functions).
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base = self.rope_theta as f32;
        let inv: Vec<f32> = (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect();
        match self.rope_scaling {
            RopeScaling::Default => inv,
            RopeScaling::Linear { factor } => inv.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (factor, low, high, old) =
                    (factor as f32, low_freq_factor as f32, high_freq_factor as f32, original_max_position_embeddings as f32);
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                inv.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let smooth = (old / wavelen - low) / (high - low);
                        let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium { smoothed } else { scaled }
                    })
                    .collect()
            }
        }
    }

    pub fn to_value(&self) -> Value {
        let mut v = self.raw.clone();
        let arch = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        v.as_object_mut().expect("config is an object").entry("architectures").or_insert_with(|| serde_json::json!([arch]));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gpt2(key: &str, value: Value) -> Result<Gpt2Config> {
        let mut v = json!({"model_type": "gpt2", "vocab_size": 10, "n_positions": 8, "n_embd": 4, "n_layer": 1, "n_head": 2});
        v[key] = value;
        Gpt2Config::from_value(v)
    }

    fn llama(key: &str, value: Value) -> Result<LlamaConfig> {
        let mut v = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 4, "intermediate_size": 8,
                           "num_hidden_layers": 1, "num_attention_heads": 2});
        v[key] = value;
        LlamaConfig::from_value(v)
    }

    #[test]
    fn sizes_are_bounded_and_named() {
        for (key, value) in [("vocab_size", json!(1e12 as u64)), ("n_layer", json!(1_000_000_000)), ("n_positions", json!(1e15 as u64)), ("n_inner", json!(1u64 << 62))] {
            let e = gpt2(key, value).unwrap_err().to_string();
            assert!(e.contains(&format!("{key} = ")) && e.contains("larger than any model"), "{e}");
        }
        assert!(gpt2("n_head", json!(0)).unwrap_err().to_string().contains("n_head must be a positive integer"));
        for key in ["intermediate_size", "num_hidden_layers", "vocab_size", "head_dim"] {
            let e = llama(key, json!(1u64 << 40)).unwrap_err().to_string();
            assert!(e.contains(&format!("{key} = 1099511627776")), "{e}");
        }
        assert!(gpt2("n_layer", json!(4096)).is_ok());
        for bad in [json!("32"), json!(-32)] {
            let e = gpt2("n_embd", bad).unwrap_err().to_string();
            assert!(e.contains("n_embd must be a positive integer"), "{e}");
        }
    }

    #[test]
    fn norm_epsilons_must_be_positive() {
        let e = gpt2("layer_norm_epsilon", json!(-1.0)).unwrap_err().to_string();
        assert!(e.contains("layer_norm_epsilon must be a finite number > 0"), "{e}");
        let e = llama("rms_norm_eps", json!(0.0)).unwrap_err().to_string();
        assert!(e.contains("rms_norm_eps must be a finite number > 0"), "{e}");
    }

    #[test]
    fn rope_parameters_must_be_positive() {
        let e = llama("rope_theta", json!(0.0)).unwrap_err().to_string();
        assert!(e.contains("rope_theta must be a finite number > 0, got 0"), "{e}");
        let e = llama("rope_scaling", json!({"rope_type": "linear", "factor": 0.0})).unwrap_err().to_string();
        assert!(e.contains("rope scaling factor must be"), "{e}");
        let e = llama("sliding_window", json!(0)).unwrap_err().to_string();
        assert!(e.contains("sliding_window must be a positive integer"), "{e}");
    }
}
