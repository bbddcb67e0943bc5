//! safetensors files from Python: tensors travel as (name, dtype, shape, bytes) and the
//! Python layer (ferrotune/io.py) wraps them in numpy arrays without copying twice.

use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use safetensors::Dtype;

use crate::error::Error;
use crate::io::safetensors::{load_file, save_file, OutTensor};

use super::detach;

fn dtype_name(d: Dtype) -> Option<&'static str> {
    Some(match d {
        Dtype::F64 => "float64",
        Dtype::F32 => "float32",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::I64 => "int64",
        Dtype::I32 => "int32",
        Dtype::I16 => "int16",
        Dtype::I8 => "int8",
        Dtype::U8 => "uint8",
        Dtype::BOOL => "bool",
        _ => return None,
    })
}

fn dtype_from_name(s: &str) -> Option<Dtype> {
    [Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64, Dtype::I32, Dtype::I16, Dtype::I8, Dtype::U8, Dtype::BOOL]
        .into_iter()
        .find(|d| dtype_name(*d) == Some(s))
}

type Loaded<'py> = (Vec<(String, &'static str, Vec<usize>, Bound<'py, PyBytes>)>, HashMap<String, String>);

/// Reads a safetensors file: ([(name, dtype, shape, bytes)], metadata).
#[pyfunction]
pub fn load_safetensors(py: Python<'_>, path: PathBuf) -> PyResult<Loaded<'_>> {
    let p = path.clone();
    let (tensors, meta) = detach(py, move || Ok(load_file(&p)?))?;
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype_name(t.dtype).ok_or_else(|| {
            PyErr::from(super::errors::PyFerrotuneErr::from(Error::checkpoint(
                &path,
                format!("tensor {name:?} has unsupported dtype {:?}", t.dtype),
            )))
        })?;
        out.push((name, dtype, t.shape, PyBytes::new(py, &t.data)));
    }
    Ok((out, meta))
}

/// Writes a safetensors file atomically from [(name, dtype, shape, bytes)].
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata=None))]
pub fn save_safetensors(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<(String, String, Vec<usize>, Vec<u8>)>,
    metadata: Option<HashMap<String, String>>,
) -> PyResult<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data) in &tensors {
        let d = dtype_from_name(dtype)
            .ok_or_else(|| PyErr::from(super::errors::PyFerrotuneErr::from(Error::Input(format!("tensor {name:?}: unsupported dtype {dtype}")))))?;
        views.push(OutTensor { name: name.clone(), dtype: d, shape: shape.clone(), data });
    }
    detach(py, || Ok(save_file(&path, &views, metadata)?))
}
