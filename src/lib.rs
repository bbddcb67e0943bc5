//! ferrotune: fine-tune Hugging Face causal language models on CPU from Python.
//!
//! The crate is usable from Rust (`cargo test --no-default-features` needs no
//! Python); the `python` feature adds the pyo3 bindings of `ferrotune._core`.

pub mod error;
pub mod tokenizer;

#[cfg(feature = "python")]
pub mod bindings;
