//! Python exception classes and the one mapping from `crate::error::Error`
//! (one variant per arm, like polars' error.rs).

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError};
use pyo3::prelude::*;

use crate::error::Error;

create_exception!(ferrotune, FerrotuneError, PyException, "Base class of every ferrotune error.");
create_exception!(ferrotune, ConfigError, FerrotuneError, "A model or training configuration is invalid.");
create_exception!(ferrotune, CheckpointError, FerrotuneError, "A checkpoint or weights file is missing pieces, corrupt or inconsistent.");
create_exception!(ferrotune, ShapeError, FerrotuneError, "A tensor or input has the wrong shape.");
create_exception!(ferrotune, InputError, FerrotuneError, "An argument or input value is invalid.");
create_exception!(ferrotune, DataError, FerrotuneError, "A dataset or batch cannot be used.");
create_exception!(ferrotune, TokenizerError, FerrotuneError, "A tokenizer cannot be loaded, trained or used.");
create_exception!(ferrotune, NonFiniteError, FerrotuneError, "A loss or gradient became NaN or infinite.");
create_exception!(ferrotune, BusyError, FerrotuneError, "A model was called from a second thread while a call into it was still running.");

pub struct PyFerrotuneErr(Error);

impl From<Error> for PyFerrotuneErr {
    fn from(e: Error) -> Self {
        PyFerrotuneErr(e)
    }
}

impl From<PyFerrotuneErr> for PyErr {
    fn from(e: PyFerrotuneErr) -> PyErr {
        let msg = e.0.to_string();
        match e.0 {
            Error::FileNotFound(path) => PyFileNotFoundError::new_err((
                2i32,
                format!("No such file or directory: {}", path.display()),
                path.display().to_string(),
            )),
            Error::Io { .. } => PyOSError::new_err(msg),
            Error::Config(_) | Error::UnsupportedModel(..) => ConfigError::new_err(msg),
            Error::Checkpoint { .. } | Error::MissingTensor { .. } | Error::UnexpectedTensor(_) => {
                CheckpointError::new_err(msg)
            }
            Error::Shape { .. } => ShapeError::new_err(msg),
            Error::Input(_) | Error::TokenOutOfRange { .. } => InputError::new_err(msg),
            Error::Data(_) => DataError::new_err(msg),
            Error::Tokenizer(_) => TokenizerError::new_err(msg),
            Error::NonFinite(_) => NonFiniteError::new_err(msg),
            Error::Json { .. } => ConfigError::new_err(msg),
            #[cfg(feature = "candle")]
            Error::Candle(_) => FerrotuneError::new_err(msg),
        }
    }
}

/// `?`-friendly result type for binding functions.
pub type PyFtResult<T> = std::result::Result<T, PyFerrotuneErr>;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FerrotuneError", py.get_type::<FerrotuneError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    Ok(())
}
