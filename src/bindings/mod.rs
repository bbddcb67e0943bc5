//! pyo3 bindings: the only place that uses pyo3/numpy. One file per Python class.

pub mod errors;
pub mod tokenizer;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<tokenizer::PyTokenizer>()?;
    Ok(())
}
