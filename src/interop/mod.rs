//! Bridges to other Rust ML libraries: a ferrotune model's parameters handed over under
//! Hugging Face names, and loaded back.

pub mod candle;
pub mod candle_configs;
