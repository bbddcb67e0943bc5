//! One error type for the whole crate, grouped by where the problem comes from
//! (like candle-core's error.rs). The Python bindings map each variant to one
//! exception class (src/bindings/errors.rs).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- files ----
    #[error("file not found: {}", .0.display())]
    FileNotFound(PathBuf),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- configuration ----
    #[error("config error: {0}")]
    Config(String),

    #[error("unsupported model_type {0:?} (supported: {1})")]
    UnsupportedModel(String, String),

    // ---- checkpoints / weights ----
    #[error("checkpoint error in {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    #[error("missing tensor {name:?}{}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    MissingTensor { name: String, path: Option<PathBuf> },

    #[error("unexpected tensor {0:?}")]
    UnexpectedTensor(String),

    // ---- shapes and inputs ----
    #[error("shape mismatch for {name}: expected {expected:?}, got {got:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("invalid input: {0}")]
    Input(String),

    #[error("{what} {id} at [{row}, {col}] is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange { what: &'static str, id: i64, row: usize, col: usize, vocab: usize },

    // ---- data, tokenizer, numerics ----
    #[error("data error: {0}")]
    Data(String),

    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    #[error("non-finite value: {0}")]
    NonFinite(String),

    #[error("json error in {context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    // ---- interop ----
    #[cfg(feature = "candle")]
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::FileNotFound(path)
        } else {
            Error::Io { path, source }
        }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }

    pub fn shape(name: impl Into<String>, expected: &[usize], got: &[usize]) -> Self {
        Error::Shape { name: name.into(), expected: expected.to_vec(), got: got.to_vec() }
    }
}
