//! Reading and writing weights: safetensors (single and sharded), GGUF (llama.cpp: read,
//! and written with ggml's quantisers) and atomic file writes.

pub mod atomic;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gguf_write;
pub mod quantize;
pub mod safetensors;
