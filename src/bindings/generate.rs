//! `ferrotune._core.Generation`: one generate call in progress (KV cache, sequences, RNG),
//! stepped from Python so streamers and stop strings can look at every new token; and
//! `process_logits`, transformers' logits processors on a batch of score rows.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;

use crate::error::Error;
use crate::generate::{process_row, GenerateParams, Generation, ProcessorWork};
use crate::models::decode::Decoder;
use crate::models::Batch;

use super::convert::{ids_2d, to_numpy};
use super::detach;
use super::errors::PyFtResult;
use super::model::{ModelCell, PyModel};


/// The GPT-2 behind a model: the KV-cached path covers GPT-2 so far.
fn decoder(m: &ModelCell) -> PyFtResult<&dyn Decoder<f32>> {
    m.model().as_decoder().ok_or_else(|| {
        let arch = m.model().config_value().get("model_type").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        Error::Input(format!("generate() does not support {arch:?} models")).into()
    })
}

fn ids_numpy<'py>(py: Python<'py>, data: Vec<i64>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data).reshape(shape.to_vec())?.into_any())
}

#[pyclass(name = "Generation", module = "ferrotune._core")]
pub struct PyGeneration {
    model: Py<PyModel>,
    inner: Generation<f32>,
}

#[allow(clippy::too_many_arguments)]
#[pymethods]
impl PyGeneration {
    /// Validates the arguments, allocates the KV cache (prompt + max_new_tokens positions);
    /// with `bf16_weights`, decodes with the model's bf16 copies of its weight matrices.
    #[new]
    #[pyo3(signature = (model, input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_k, top_p,
                        min_p, repetition_penalty, eos_token_ids, pad_token_id, seed, output_logits=false, bf16_weights=false))]
    fn new(
        py: Python<'_>,
        model: Py<PyModel>,
        input_ids: PyReadonlyArray2<'_, i64>,
        attention_mask: Option<PyReadonlyArray2<'_, i64>>,
        max_new_tokens: usize,
        do_sample: bool,
        temperature: Option<f64>,
        top_k: Option<usize>,
        top_p: Option<f64>,
        min_p: Option<f64>,
        repetition_penalty: Option<f64>,
        eos_token_ids: Vec<i64>,
        pad_token_id: Option<i64>,
        seed: u64,
        output_logits: bool,
        bf16_weights: bool,
    ) -> PyResult<Self> {
        let (ids, b, t) = ids_2d("input_ids", &input_ids)?;
        let mask = match &attention_mask {
            Some(m) => {
                let (m, mb, mt) = ids_2d("attention_mask", m)?;
                if (mb, mt) != (b, t) {
                    return Err(super::errors::PyFerrotuneErr::from(Error::shape("attention_mask", &[b, t], &[mb, mt])).into());
                }
                Some(m)
            }
            None => None,
        };
        let params = GenerateParams {
            max_new_tokens,
            do_sample,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            eos_token_ids,
            pad_token_id,
            seed,
        };
        let guard = model.get().lock()?;
        let m = decoder(&guard)?;
        let batch = Batch { ids, mask, labels: None, b, t };
        let half = if bf16_weights { Some(guard.half_weights_detached(py)?) } else { None };
        let inner = detach(py, move || {
            let mut g = Generation::new(m, &batch, params, output_logits)?;
            if let Some(h) = half {
                g.use_half_weights(h);
            }
            Ok(g)
        })?;
        drop(guard);
        Ok(Self { model, inner })
    }

    /// Runs up to `max_steps` decoding steps (GIL released); returns the new tokens
    /// (B, steps done), steps done = 0 once generation is over.
    fn step<'py>(&mut self, py: Python<'py>, max_steps: usize) -> PyResult<Bound<'py, PyAny>> {
        let guard = self.model.get().lock()?;
        let m = decoder(&guard)?;
        let gen = &mut self.inner;
        let b = gen.batch_size();
        let (tokens, n) = detach(py, move || {
            let mut steps: Vec<Vec<i64>> = Vec::new();
            while steps.len() < max_steps {
                match gen.step(m)? {
                    Some(t) => steps.push(t),
                    None => break,
                }
            }
            let n = steps.len();
            let mut out = vec![0i64; b * n];
            for (j, s) in steps.iter().enumerate() {
                for r in 0..b {
                    out[r * n + j] = s[r];
                }
            }
            PyFtResult::Ok((out, n))
        })?;
        ids_numpy(py, tokens, &[b, n])
    }

    /// Marks rows finished (they get pad tokens from now on).
    fn finish_rows(&mut self, rows: Vec<bool>) -> PyResult<()> {
        if rows.len() != self.inner.batch_size() {
            return Err(super::errors::PyFerrotuneErr::from(Error::Input(format!(
                "finish_rows got {} flags for a batch of {}",
                rows.len(),
                self.inner.batch_size()
            )))
            .into());
        }
        self.inner.finish_rows(&rows);
        Ok(())
    }

    #[getter]
    fn done(&self) -> bool {
        self.inner.done()
    }

    #[getter]
    fn unfinished(&self) -> Vec<bool> {
        self.inner.unfinished().to_vec()
    }

    /// (B, len) int64: prompt + generated tokens so far.
    fn sequences<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        ids_numpy(py, self.inner.sequences(), &[self.inner.batch_size(), self.inner.len()])
    }

    /// (B, steps, V) float32 raw logits of every step (needs output_logits=True).
    fn logits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let h = self.inner.logits_history();
        let b = self.inner.batch_size();
        let v = self.model.get().lock()?.model().vocab_size();
        let steps = if b * v == 0 { 0 } else { h.len() / (b * v) };
        let mut out = vec![0f32; h.len()];
        for s in 0..steps {
            for r in 0..b {
                out[(r * steps + s) * v..][..v].copy_from_slice(&h[(s * b + r) * v..][..v]);
            }
        }
        to_numpy(py, out, &[b, steps, v])
    }
}

/// transformers' logits processors on score rows (R, V) given each row's previous tokens
/// (R, L) and how many leading ones the repetition penalty ignores; returns (R, V).
#[pyfunction]
#[pyo3(signature = (scores, input_ids, ignore, do_sample, temperature=None, top_k=None, top_p=None, min_p=None, repetition_penalty=None))]
#[allow(clippy::too_many_arguments)]
pub fn process_logits<'py>(
    py: Python<'py>,
    scores: PyReadonlyArray2<'py, f32>,
    input_ids: PyReadonlyArray2<'py, i64>,
    ignore: Option<PyReadonlyArray1<'py, i64>>,
    do_sample: bool,
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let params = GenerateParams { do_sample, temperature, top_k, top_p, min_p, repetition_penalty, ..Default::default() };
    params.validate().map_err(|e| PyErr::from(super::errors::PyFerrotuneErr::from(e)))?;
    let arr = scores.as_array();
    let (r, v) = (arr.shape()[0], arr.shape()[1]);
    let mut out: Vec<f32> = arr.iter().copied().collect();
    let (ids, ir, l) = ids_2d("input_ids", &input_ids)?;
    if ir != r {
        return Err(super::errors::PyFerrotuneErr::from(Error::shape("input_ids rows", &[r], &[ir])).into());
    }
    let ignore: Vec<usize> = match &ignore {
        Some(a) => a.as_array().iter().map(|&x| x.max(0) as usize).collect(),
        None => vec![0; r],
    };
    let mut w = ProcessorWork::default();
    for row in 0..r {
        let prev = &ids[row * l + ignore[row].min(l)..(row + 1) * l];
        process_row(&mut out[row * v..(row + 1) * v], prev, &params, &mut w);
    }
    to_numpy(py, out, &[r, v])
}
