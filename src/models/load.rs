//! The choice of architecture by `model_type`, and models built from a config or loaded from
//! a checkpoint (a Hugging Face model directory or a GGUF file).

use std::path::Path;

use serde_json::Value;

use crate::config::{model_type, read_config_json, Gpt2Config, LlamaConfig};
use crate::error::{Error, Result};
use crate::io::gguf::load_gguf;
use crate::io::safetensors::{load_model_dir, RawTensor};
use crate::models::{gpt2, llama, BoxedModel};

/// The `model_type`s ferrotune can build.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2", "llama", "mistral", "qwen2", "qwen3"];

/// Builds the architecture a config.json value names: initialised with `init_seed`, or with
/// zero weights (to be loaded) when it is None.
fn build(config: Value, init_seed: Option<u64>) -> Result<BoxedModel> {
    Ok(match model_type(&config)?.as_str() {
        "gpt2" => {
            let c = Gpt2Config::from_value(config)?;
            Box::new(match init_seed {
                Some(seed) => gpt2::Gpt2::from_config(c, seed)?,
                None => gpt2::Gpt2::empty(c)?,
            })
        }
        "llama" | "mistral" | "qwen2" | "qwen3" => {
            let c = LlamaConfig::from_value(config)?;
            Box::new(match init_seed {
                Some(seed) => llama::Llama::from_config(c, seed)?,
                None => llama::Llama::empty(c)?,
            })
        }
        other => return Err(Error::UnsupportedModel(other.to_string(), SUPPORTED_MODEL_TYPES.join(", "))),
    })
}

/// Whether a checkpoint path is a GGUF file; otherwise it is a model directory, and any
/// other file is an error that says what is expected.
fn is_gguf(path: &Path) -> Result<bool> {
    if !path.exists() {
        return Err(Error::FileNotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        return Ok(false);
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        return Ok(true);
    }
    Err(Error::checkpoint(path, "this is a file; expected a model directory (config.json + model.safetensors) or a .gguf file"))
}

/// A fresh model with transformers' initialisation, from a config.json value.
pub fn from_config(config: Value, seed: u64) -> Result<BoxedModel> {
    build(config, Some(seed))
}

/// Loads weights into the model `config` describes (initialised with `seed` first, so that
/// parameters a checkpoint may lack, such as a new classification head, have transformers'
/// initialisation). The checkpoint is a model directory or a GGUF file.
pub fn from_pretrained_as(path: &Path, config: Value, seed: u64) -> Result<BoxedModel> {
    load(path, Some(config), Some(seed))
}

/// Loads a Hugging Face model directory (config.json + safetensors weights), or a GGUF
/// file (dequantised into trainable f32 weights with Hugging Face names and layout).
pub fn from_pretrained(path: &Path) -> Result<BoxedModel> {
    load(path, None, None)
}

/// Builds the model `config` describes (the checkpoint's own when None; a GGUF file holds
/// it with the tensors) and loads the checkpoint's weights into it.
fn load(path: &Path, config: Option<Value>, init_seed: Option<u64>) -> Result<BoxedModel> {
    let mut gguf = is_gguf(path)?.then(|| load_gguf(path)).transpose()?;
    let config = match (config, &mut gguf) {
        (Some(c), _) => c,
        (None, Some(g)) => std::mem::take(&mut g.config),
        (None, None) => read_config_json(path)?,
    };
    let mut model = build(config, init_seed)?;
    let tensors = match gguf {
        Some(g) => g.tensors.into_iter().map(|(name, (shape, values))| (name, RawTensor::from_f32(shape, &values))).collect(),
        None => load_model_dir(path)?,
    };
    model.load_tensors(tensors, path)?;
    Ok(model)
}
