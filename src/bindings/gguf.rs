//! GGUF files from Python: metadata, tensor directory, and a whole Llama-family model
//! (HF config, HF-named f32 tensors, tokenizer) for the Python layer to build a model from;
//! and the export of a model with its tokenizer (`save_gguf`).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::error::Error;
use crate::io::gguf::{load_gguf as load_gguf_rs, tokenizer_from_gguf, GgufFile, GgufValue};
use crate::io::gguf_write::{export_gguf, Quantization};

use super::convert::to_numpy;
use super::detach;
use super::errors::PyFerrotuneErr;
use super::model::PyModel;
use super::tokenizer::PyTokenizer;

fn value_to_py<'py>(py: Python<'py>, v: &GgufValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        GgufValue::U8(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::I8(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::U16(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::I16(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::U32(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::I32(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::U64(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::I64(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::F32(x) => (*x as f64).into_pyobject(py)?.into_any(),
        GgufValue::F64(x) => x.into_pyobject(py)?.into_any(),
        GgufValue::Bool(x) => x.into_pyobject(py)?.to_owned().into_any(),
        GgufValue::String(s) => s.into_pyobject(py)?.into_any(),
        GgufValue::Array(a) => {
            let items = a.iter().map(|x| value_to_py(py, x)).collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
    })
}

fn open(py: Python<'_>, path: PathBuf) -> PyResult<GgufFile> {
    detach(py, move || Ok(GgufFile::open(&path)?))
}

/// A GGUF's metadata as {key: value} (ints, floats, bools, strings, lists), in file order.
#[pyfunction]
pub fn read_gguf_metadata(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let f = open(py, path)?;
    let d = PyDict::new(py);
    for (k, v) in &f.metadata {
        d.set_item(k, value_to_py(py, v)?)?;
    }
    Ok(d)
}

/// A GGUF's tensor directory: [(gguf name, ggml type name, row-major shape)].
#[pyfunction]
pub fn read_gguf_tensor_infos(py: Python<'_>, path: PathBuf) -> PyResult<Vec<(String, String, Vec<usize>)>> {
    let f = open(py, path)?;
    Ok(f.tensors.iter().map(|t| (t.name.clone(), t.ggml_type.name(), t.shape())).collect())
}

type GgufTokenizerParts = (String, String, Option<String>);

/// The tokenizer of a GGUF without reading its weights:
/// (tokenizer_json, tokenizer_config_json, chat_template).
#[pyfunction]
pub fn load_gguf_tokenizer(py: Python<'_>, path: PathBuf) -> PyResult<GgufTokenizerParts> {
    detach(py, move || {
        let f = GgufFile::open(&path)?;
        let t = tokenizer_from_gguf(&f)?;
        Ok((t.tokenizer_json, t.tokenizer_config.to_string(), t.chat_template))
    })
}

type GgufModelParts<'py> = (String, Vec<(String, Vec<usize>, Bound<'py, PyAny>)>, String, Option<String>, String);

/// A Llama-family GGUF as Hugging Face would have it:
/// (config_json, [(hf_name, shape, float32 array)], tokenizer_json, chat_template,
/// tokenizer_config_json). Q/K rows are in HF order; a tied lm_head is not listed.
#[pyfunction]
pub fn load_gguf(py: Python<'_>, path: PathBuf) -> PyResult<GgufModelParts<'_>> {
    let m = detach(py, move || Ok(load_gguf_rs(&path)?))?;
    let mut tensors = Vec::with_capacity(m.tensors.len());
    for (name, (shape, data)) in m.tensors {
        let arr = to_numpy(py, data, &shape)?;
        tensors.push((name, shape, arr));
    }
    let config = serde_json::to_string_pretty(&m.config)
        .map_err(|e| PyErr::from(PyFerrotuneErr::from(crate::error::Error::Json { context: "GGUF config".into(), source: e })))?;
    Ok((config, tensors, m.tokenizer.tokenizer_json, m.chat_template, m.tokenizer.tokenizer_config.to_string()))
}

/// Writes `model` (merged: a model with LoRA adapters is refused) and `tokenizer` to a GGUF
/// file at `path` (atomically) with `quantization` ("f32", "f16", "bf16", "q8_0", "q4_0",
/// "q6_k", "q4_k_m"); `progress(values stored, values in all)` is called after each tensor,
/// and an exception it raises (Ctrl-C) stops the export, writing nothing. Returns
/// ([(llama.cpp tensor name, ggml type)], file bytes, warnings).
#[pyfunction]
#[pyo3(signature = (model, path, quantization, tokenizer, chat_template, name, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn save_gguf(
    py: Python<'_>,
    model: &PyModel,
    path: PathBuf,
    quantization: &str,
    tokenizer: &PyTokenizer,
    chat_template: Option<String>,
    name: String,
    progress: Option<Py<PyAny>>,
) -> PyResult<(Vec<(String, String)>, u64, Vec<String>)> {
    let q = Quantization::parse(quantization).map_err(PyFerrotuneErr::from)?;
    let cell = model.lock()?;
    let m = cell.model();
    if m.lora().is_some() {
        return Err(PyFerrotuneErr::from(Error::Input(
            "the model has LoRA adapters: merge them into the weights first (model = peft_model.merge_and_unload()), then save_gguf".into(),
        ))
        .into());
    }
    let state = m.state();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        state.table.infos().iter().map(|i| (i.name.clone(), i.shape.clone(), state.params[i.range.clone()].to_vec())).collect();
    let config = m.config_value();
    let tok = &tokenizer.inner;
    let mut raised: Option<PyErr> = None;
    let mut report = |done: u64, all: u64| -> crate::error::Result<()> {
        let Some(f) = &progress else { return Ok(()) };
        Python::attach(|py| f.call1(py, (done, all)).map(drop)).map_err(|e| {
            raised = Some(e);
            Error::Input("the export was stopped by its progress callback".into())
        })
    };
    let r = detach(py, || Ok(export_gguf(&path, &config, tensors, tok, chat_template.as_deref(), &name, q, &mut report)?));
    match (r, raised) {
        (_, Some(e)) => Err(e),
        (r, None) => r.map(|r| (r.tensors, r.bytes, r.warnings)),
    }
}
