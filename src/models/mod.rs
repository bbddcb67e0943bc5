//! Model architectures, one file each, and the choice among them by `model_type`.

pub mod gpt2;
pub mod params;

use crate::error::{Error, Result};

/// The `model_type`s ferrotune can build.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2"];

/// Fails with a clear error for a `model_type` we cannot build.
pub fn check_model_type(model_type: &str) -> Result<()> {
    if SUPPORTED_MODEL_TYPES.contains(&model_type) {
        Ok(())
    } else {
        Err(Error::UnsupportedModel(model_type.to_string(), SUPPORTED_MODEL_TYPES.join(", ")))
    }
}
