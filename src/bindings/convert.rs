//! numpy <-> Rust buffers. Inputs must be C-contiguous (the Python layer makes them so);
//! `as_slice` alone would also accept Fortran order and read it in the wrong order.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::Error;

use super::errors::PyFtResult;

/// A (B, T) int64 array as a row-major slice.
pub fn ids_2d<'a>(name: &str, a: &'a PyReadonlyArray2<'_, i64>) -> PyFtResult<(&'a [i64], usize, usize)> {
    if !a.is_c_contiguous() {
        return Err(Error::Input(format!("{name} must be a C-contiguous int64 array")).into());
    }
    let shape = a.shape();
    let s = a.as_slice().map_err(|e| Error::Input(format!("{name}: {e}")))?;
    Ok((s, shape[0], shape[1]))
}

/// A float32 array of any rank as a row-major slice plus its shape.
pub fn f32_nd<'a>(name: &str, a: &'a PyReadonlyArrayDyn<'_, f32>) -> PyFtResult<(&'a [f32], Vec<usize>)> {
    if !a.is_c_contiguous() {
        return Err(Error::Input(format!("{name} must be a C-contiguous float32 array")).into());
    }
    let s = a.as_slice().map_err(|e| Error::Input(format!("{name}: {e}")))?;
    Ok((s, a.shape().to_vec()))
}

/// An owned f32 buffer as a numpy array of the given shape.
pub fn to_numpy<'py>(py: Python<'py>, data: Vec<f32>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data).reshape(shape.to_vec())?.into_any())
}
