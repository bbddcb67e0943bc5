//! Reading and writing weights: safetensors (single and sharded), GGUF (llama.cpp) and
//! atomic file writes.

pub mod atomic;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod safetensors;
