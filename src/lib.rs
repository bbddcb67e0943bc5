//! ferrotune: fine-tune Hugging Face causal language models on CPU, with forward and
//! backward passes we own. The `python` feature adds the pyo3 bindings (`ferrotune._core`);
//! the `candle` feature, `interop`: models as candle tensors and candle-transformers configs.

pub mod alloc;
pub mod config;
pub mod error;
pub mod generate;
#[cfg(feature = "candle")]
pub mod interop;
pub mod io;
pub mod kernels;
pub mod models;
pub mod optim;
pub mod rng;
pub mod tokenizer;

#[cfg(feature = "python")]
pub mod bindings;
