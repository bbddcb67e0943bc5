//! Reading and writing weights: safetensors (single and sharded) and atomic file writes.

pub mod atomic;
pub mod safetensors;
