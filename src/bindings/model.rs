//! `ferrotune._core.CausalLM`: the Rust model (any supported architecture) behind
//! `ferrotune.Model`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray2, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::Error;
use crate::models::decode::HalfWeights;
use crate::kernels::crossentropy::crossentropy_rows;
use crate::models::lora::LoraSpec;
use crate::models::{attach_lora, from_config, from_pretrained, from_pretrained_as, merge_lora, Batch};
use crate::optim::clip::clip_grad_norm;

use super::convert::{f32_nd, ids_2d, to_numpy};
use super::detach;
use super::errors::{BusyError, PyFerrotuneErr, PyFtResult};

/// One call at a time: a call from a second thread while one runs (a forward during
/// `train()`, a save during a forward) gets BusyError instead of a half-updated model.
#[pyclass(name = "CausalLM", module = "ferrotune._core", frozen)]
pub struct PyModel {
    cell: Mutex<cell::ModelCell>,
}

/// The model, held for one call.
pub type ModelGuard<'a> = MutexGuard<'a, ModelCell>;
pub use cell::ModelCell;

mod cell {
    //! The model and what is derived from its weights, behind accessors: every mutable
    //! access drops the derived copies, so they can never be stale.

    use std::sync::{Arc, Mutex};

    use crate::models::decode::HalfWeights;
    use crate::models::BoxedModel;

    pub struct ModelCell {
        model: BoxedModel,
        /// bf16 copies of the weight matrices, made by the first bf16 generate call
        half: Mutex<Option<Arc<HalfWeights>>>,
    }

    impl ModelCell {
        pub fn new(model: BoxedModel) -> Self {
            Self { model, half: Mutex::new(None) }
        }
        pub fn into_py(self) -> super::PyModel {
            super::PyModel { cell: Mutex::new(self) }
        }
        pub fn model(&self) -> &BoxedModel {
            &self.model
        }
        pub fn model_mut(&mut self) -> &mut BoxedModel {
            *self.half.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
            &mut self.model
        }
        /// The bf16 copies, made now when there are none; None for a model that cannot decode.
        pub fn half_weights(&self) -> Option<Arc<HalfWeights>> {
            let d = self.model.as_decoder()?;
            let mut half = self.half.lock().unwrap_or_else(|e| e.into_inner());
            Some(half.get_or_insert_with(|| Arc::new(HalfWeights::new(d.params(), &d.matmul_weights()))).clone())
        }
    }
}

pub(crate) type Ids<'py> = PyReadonlyArray2<'py, i64>;

/// A batch from numpy arrays. Labels are (B, T) per token, or (B, 1) one class per row for a
/// model with a classification head (`row_labels`).
pub(crate) fn batch<'a>(ids: &'a Ids<'_>, mask: &'a Option<Ids<'_>>, labels: &'a Option<Ids<'_>>, row_labels: bool) -> PyFtResult<Batch<'a>> {
    let (ids, b, t) = ids_2d("input_ids", ids)?;
    let mask = match mask {
        Some(m) => Some(ids_2d("attention_mask", m)?),
        None => None,
    };
    let labels = match labels {
        Some(l) => Some(ids_2d("labels", l)?),
        None => None,
    };
    for (name, x) in [("attention_mask", &mask), ("labels", &labels)] {
        if let Some((_, xb, xt)) = x {
            let want = if name == "labels" && row_labels { (b, 1) } else { (b, t) };
            if (*xb, *xt) != want {
                return Err(Error::shape(name, &[want.0, want.1], &[*xb, *xt]).into());
            }
        }
    }
    Ok(Batch { ids, mask: mask.map(|m| m.0), labels: labels.map(|l| l.0), b, t })
}

impl PyModel {
    /// The model for this call, or BusyError while a call from another thread holds it.
    pub fn lock(&self) -> PyResult<ModelGuard<'_>> {
        match self.cell.try_lock() {
            Ok(guard) => Ok(guard),
            // a panic inside a call is caught and reported by `detach`; the model stays usable
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(BusyError::new_err(
                "the model is in use by a call from another thread (e.g. a forward, train() or save_pretrained still \
                 running); a ferrotune model runs one call at a time: wait for it to return, or give each thread its own model",
            )),
        }
    }
}

impl cell::ModelCell {
    /// bf16 copies of the weights for decoding, made (GIL released) at the first call after
    /// the weights last changed.
    pub fn half_weights_detached(&self, py: Python<'_>) -> PyResult<Arc<HalfWeights>> {
        detach(py, move || {
            self.half_weights().ok_or_else(|| Error::Input("this model has no KV-cached decoder".into()).into())
        })
    }
}

#[pymethods]
impl PyModel {
    /// Loads a Hugging Face model directory (config.json + safetensors weights).
    #[staticmethod]
    fn from_pretrained(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = detach(py, move || Ok(from_pretrained(&path)?))?;
        Ok(cell::ModelCell::new(inner).into_py())
    }

    /// A freshly initialised model from a config.json string.
    /// Loads weights from a model directory or GGUF file into the model a config.json
    /// string describes (e.g. the backbone of a causal LM under a classification head).
    #[staticmethod]
    fn from_pretrained_with_config(py: Python<'_>, path: PathBuf, config_json: &str, seed: u64) -> PyResult<Self> {
        let value: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| PyErr::from(super::errors::PyFerrotuneErr::from(Error::Config(format!("invalid config JSON: {e}")))))?;
        let inner = detach(py, move || Ok(from_pretrained_as(&path, value, seed)?))?;
        Ok(cell::ModelCell::new(inner).into_py())
    }

    #[staticmethod]
    fn from_config(py: Python<'_>, config_json: &str, seed: u64) -> PyResult<Self> {
        let value: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| PyErr::from(super::errors::PyFerrotuneErr::from(Error::Config(format!("invalid config JSON: {e}")))))?;
        let inner = detach(py, move || Ok(from_config(value, seed)?))?;
        Ok(cell::ModelCell::new(inner).into_py())
    }

    /// L for a model with a sequence-classification head, else None.
    #[getter]
    fn num_labels(&self) -> PyResult<Option<usize>> {
        let cell = self.lock()?;
        Ok(cell.model().num_labels())
    }

    fn config_json(&self) -> PyResult<String> {
        let cell = self.lock()?;
        Ok(serde_json::to_string(&cell.model().config_value()).expect("config serialises"))
    }

    /// (loss or None, (B, T, V) float32 logits or None).
    #[pyo3(signature = (input_ids, attention_mask=None, labels=None, return_logits=true))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        input_ids: Ids<'py>,
        attention_mask: Option<Ids<'py>>,
        labels: Option<Ids<'py>>,
        return_logits: bool,
    ) -> PyResult<(Option<f64>, Option<Bound<'py, PyAny>>)> {
        let mut cell = self.lock()?;
        let batch = batch(&input_ids, &attention_mask, &labels, cell.model().num_labels().is_some())?;
        let has_labels = labels.is_some();
        let (b, t) = (batch.b, batch.t);
        let shape = match cell.model().num_labels() {
            Some(l) => vec![b, l],
            None => vec![b, t, cell.model().vocab_size()],
        };
        let model = cell.model_mut();
        let (loss, logits) = detach(py, move || {
            model.forward(&batch)?;
            let loss = has_labels.then(|| {
                let s = model.loss_stats();
                if s.count == 0 { f64::NAN } else { s.loss_sum / s.count as f64 }
            });
            Ok((loss, return_logits.then(|| model.take_logits())))
        })?;
        let logits = logits.map(|l| to_numpy(py, l, &shape)).transpose()?;
        Ok((loss, logits))
    }

    /// Forward only, nothing (B, T, V) returned: (summed loss, counted tokens, correct argmax).
    #[pyo3(signature = (input_ids, attention_mask=None, labels=None))]
    fn loss_stats(
        &self,
        py: Python<'_>,
        input_ids: Ids<'_>,
        attention_mask: Option<Ids<'_>>,
        labels: Option<Ids<'_>>,
    ) -> PyResult<(f64, usize, usize)> {
        let mut cell = self.lock()?;
        let batch = batch(&input_ids, &attention_mask, &labels, cell.model().num_labels().is_some())?;
        let model = cell.model_mut();
        detach(py, move || {
            model.forward(&batch)?;
            let s = model.loss_stats();
            Ok((s.loss_sum, s.count, s.correct))
        })
    }

    /// Forward only, per token: (loss (B, T) float64, argmax right (B, T) bool) against the
    /// next-token targets; 0 and false where nothing is counted (labels -100, the last
    /// position). Nothing (B, T, V) leaves the model.
    #[pyo3(signature = (input_ids, attention_mask=None, labels=None))]
    fn token_losses<'py>(
        &self,
        py: Python<'py>,
        input_ids: Ids<'py>,
        attention_mask: Option<Ids<'py>>,
        labels: Option<Ids<'py>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let mut cell = self.lock()?;
        if cell.model().num_labels().is_some() {
            let e = Error::Input("token_losses needs a language-model head; this model has a sequence-classification head".into());
            return Err(PyFerrotuneErr::from(e).into());
        }
        let batch = batch(&input_ids, &attention_mask, &labels, false)?;
        let (b, t, v) = (batch.b, batch.t, cell.model().vocab_size());
        let model = cell.model_mut();
        let rows = detach(py, move || {
            model.forward(&batch)?;
            let mut targets = vec![0i64; b * t];
            batch.next_token_targets(&mut targets);
            Ok(crossentropy_rows(model.logits(), &targets, v))
        })?;
        let loss = PyArray1::from_iter(py, rows.iter().map(|r| r.loss_sum)).reshape([b, t])?;
        let right = PyArray1::from_iter(py, rows.iter().map(|r| r.correct == 1)).reshape([b, t])?;
        Ok((loss.into_any(), right.into_any()))
    }

    /// Forward + backward, adding to the gradients: (summed loss, counted tokens).
    /// `on_block_done(l)` is called (with the GIL) as soon as block l's gradients are final
    /// in the gradient buffer (`grad_buffer`, ranges `block_grad_ranges`), the last block
    /// first; an exception it raises ends the call once the backward is done.
    #[pyo3(signature = (input_ids, attention_mask=None, labels=None, num_items_in_batch=None, on_block_done=None))]
    fn forward_backward(
        &self,
        py: Python<'_>,
        input_ids: Ids<'_>,
        attention_mask: Option<Ids<'_>>,
        labels: Option<Ids<'_>>,
        num_items_in_batch: Option<f64>,
        on_block_done: Option<Py<PyAny>>,
    ) -> PyResult<(f64, usize)> {
        let mut cell = self.lock()?;
        let batch = batch(&input_ids, &attention_mask, &labels, cell.model().num_labels().is_some())?;
        let model = cell.model_mut();
        let mut raised: Option<PyErr> = None;
        let r = detach(py, || {
            let s = match &on_block_done {
                None => model.forward_backward(&batch, num_items_in_batch)?,
                Some(hook) => model.forward_backward_watched(&batch, num_items_in_batch, &mut |l| {
                    if raised.is_none() {
                        raised = Python::attach(|py| hook.call1(py, (l,)).map(drop)).err();
                    }
                })?,
            };
            Ok((s.loss_sum, s.count))
        });
        match raised {
            Some(e) => Err(e),
            None => r,
        }
    }

    /// The gradient-layout range (start, end) of each block's trainable parameters, in block
    /// order ((0, 0) for a frozen block); the rest of the buffer (embeddings, final norm,
    /// heads, adapters) is outside every block.
    fn block_grad_ranges(&self) -> PyResult<Vec<(usize, usize)>> {
        let cell = self.lock()?;
        let m = cell.model();
        let blocks = m.state().block_grad_ranges(&m.block_params()).map_err(|e| PyErr::from(PyFerrotuneErr::from(e)))?;
        Ok(blocks.into_iter().map(|r| (r.start, r.end)).collect())
    }

    /// The gradient buffer itself (trainable parameters in storage order, `gradients()`'s
    /// layout), as a writable float32 array that shares its memory: for reducing it in place
    /// across processes. It stays valid until the trainable set changes (freeze, adapters)
    /// or a fused step (`AdamW.backward_step`) releases the gradients: take a new one per step.
    fn grad_buffer<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let mut cell = slf.get().lock()?;
        let grads = cell.model_mut().state_mut().grads_mut();
        let view = numpy::ndarray::ArrayViewMut1::from(&mut grads[..]);
        // SAFETY: the array keeps the model object alive (its base), and the buffer is not
        // reallocated while its length stays that of the trainable set (see the doc above)
        Ok(unsafe { PyArray1::borrow_from_array(&view, slf.clone().into_any()) })
    }

    fn zero_grad(&self) -> PyResult<()> {
        let mut cell = self.lock()?;
        cell.model_mut().state_mut().zero_grad();
        Ok(())
    }

    fn clip_grad_norm(&self, py: Python<'_>, max_norm: f64) -> PyResult<f64> {
        let mut cell = self.lock()?;
        let model = cell.model_mut();
        detach(py, move || {
            if !(max_norm >= 0.0) {
                return Err(Error::Input(format!("max_norm must be a number >= 0, got {max_norm}")).into());
            }
            Ok(clip_grad_norm(model.state_mut().grads_mut(), max_norm))
        })
    }

    /// [(name, shape)] of every parameter, in storage order.
    fn param_info(&self) -> PyResult<Vec<(String, Vec<usize>)>> {
        let cell = self.lock()?;
        Ok(cell.model().state().table.infos().iter().map(|i| (i.name.clone(), i.shape.clone())).collect())
    }

    #[pyo3(signature = (trainable_only=false))]
    fn num_parameters(&self, trainable_only: bool) -> PyResult<usize> {
        let cell = self.lock()?;
        let state = cell.model().state();
        Ok(if trainable_only { state.trainable_total() } else { state.table.total() })
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cell = self.lock()?;
        let d = PyDict::new(py);
        let state = cell.model().state();
        for i in state.table.infos() {
            d.set_item(&i.name, to_numpy(py, state.params[i.range.clone()].to_vec(), &i.shape)?)?;
        }
        Ok(d)
    }

    /// {name: gradient} of the trainable parameters.
    fn gradients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut cell = self.lock()?;
        let slots = cell.model().state().grad_slots();
        let infos = cell.model().state().table.infos().to_vec();
        let g = cell.model_mut().state_mut().grads_mut();
        let d = PyDict::new(py);
        for slot in slots {
            let i = &infos[slot.index];
            d.set_item(&i.name, to_numpy(py, g[slot.grads].to_vec(), &i.shape)?)?;
        }
        Ok(d)
    }

    /// Freezes (False) or unfreezes (True) the named parameters; unknown names are an error
    /// and nothing changes then.
    fn set_trainable(&self, names: Vec<String>, trainable: bool) -> PyResult<()> {
        let mut cell = self.lock()?;
        let table = &cell.model().state().table;
        let mut idx = Vec::with_capacity(names.len());
        for n in &names {
            let i = table.infos().iter().position(|p| &p.name == n);
            idx.push(i.ok_or_else(|| PyErr::from(super::errors::PyFerrotuneErr::from(Error::Input(format!("no parameter named {n:?}")))))?);
        }
        for i in idx {
            cell.model_mut().state_mut().set_trainable(i, trainable);
        }
        Ok(())
    }

    /// [(module name, in_features, out_features)] of the linear modules LoRA can adapt.
    fn lora_modules(&self) -> PyResult<Vec<(String, usize, usize)>> {
        let cell = self.lock()?;
        Ok(cell.model().lora_modules().1.into_iter().map(|m| (m.name, m.in_f, m.out_f)).collect())
    }

    /// Adds LoRA adapters to the named modules; every other parameter is frozen.
    fn add_lora(&self, modules: Vec<String>, r: usize, alpha: f64, dropout: f64, use_rslora: bool, seed: u64) -> PyResult<()> {
        let mut cell = self.lock()?;
        let spec = LoraSpec { r, alpha, dropout, use_rslora };
        attach_lora(cell.model_mut().as_mut(), &modules, spec, seed).map_err(|e| PyErr::from(super::errors::PyFerrotuneErr::from(e)))
    }

    /// Folds the adapters into the base weights and removes them.
    fn merge_lora(&self, py: Python<'_>) -> PyResult<()> {
        let mut cell = self.lock()?;
        let model = cell.model_mut();
        detach(py, move || Ok(merge_lora(model.as_mut())?))
    }

    /// (r, alpha, dropout, use_rslora, [adapted module names]) or None.
    #[allow(clippy::type_complexity)]
    fn lora_info(&self) -> PyResult<Option<(usize, f64, f64, bool, Vec<String>)>> {
        let cell = self.lock()?;
        Ok(cell.model().lora().map(|l| {
            let s = &l.spec;
            (s.r, s.alpha, s.dropout, s.use_rslora, l.sites().map(|x| x.module.name.clone()).collect())
        }))
    }

    /// Names of the trainable parameters, in storage order.
    fn trainable_names(&self) -> PyResult<Vec<String>> {
        let cell = self.lock()?;
        let state = cell.model().state();
        Ok(state.grad_slots().into_iter().map(|s| state.table.infos()[s.index].name.clone()).collect())
    }

    /// Copies float32 arrays into the named parameters (shapes checked; all-or-nothing).
    fn load_state_dict(&self, tensors: Vec<(String, PyReadonlyArrayDyn<'_, f32>)>, strict: bool) -> PyResult<()> {
        let mut cell = self.lock()?;
        let table = cell.model().state().table.clone();
        let mut updates = Vec::with_capacity(tensors.len());
        for (name, arr) in &tensors {
            let (data, shape) = f32_nd(name, arr)?;
            let info = table.get(name).ok_or_else(|| PyErr::from(super::errors::PyFerrotuneErr::from(Error::UnexpectedTensor(name.clone()))))?;
            if shape != info.shape {
                return Err(super::errors::PyFerrotuneErr::from(Error::shape(name.clone(), &info.shape, &shape)).into());
            }
            updates.push((info.range.clone(), data));
        }
        if strict {
            if let Some(missing) = table.infos().iter().find(|i| !tensors.iter().any(|(n, _)| n == &i.name)) {
                return Err(super::errors::PyFerrotuneErr::from(Error::MissingTensor { name: missing.name.clone(), path: None }).into());
            }
        }
        let params = &mut cell.model_mut().state_mut().params;
        for (range, data) in updates {
            params[range].copy_from_slice(data);
        }
        Ok(())
    }

    #[getter]
    fn training(&self) -> PyResult<bool> {
        let cell = self.lock()?;
        Ok(cell.model().state().training)
    }

    #[setter]
    fn set_training(&self, training: bool) -> PyResult<()> {
        let mut cell = self.lock()?;
        cell.model_mut().state_mut().training = training;
        Ok(())
    }

    /// Gradient checkpointing: the forward keeps each block's input only and the backward
    /// recomputes each block right before its backward (same gradients, less memory).
    #[getter]
    fn gradient_checkpointing(&self) -> PyResult<bool> {
        let cell = self.lock()?;
        Ok(cell.model().state().checkpointing)
    }

    #[setter]
    fn set_gradient_checkpointing(&self, on: bool) -> PyResult<()> {
        let mut cell = self.lock()?;
        cell.model_mut().state_mut().checkpointing = on;
        Ok(())
    }

    /// Bytes held by the activation buffers of the last forward (and the backward's scratch).
    fn activation_bytes(&self) -> PyResult<usize> {
        let cell = self.lock()?;
        Ok(cell.model().activation_bytes())
    }

    #[getter]
    fn rng_state(&self) -> PyResult<u64> {
        let cell = self.lock()?;
        Ok(cell.model().state().rng.state())
    }

    #[setter]
    fn set_rng_state(&self, state: u64) -> PyResult<()> {
        let mut cell = self.lock()?;
        cell.model_mut().state_mut().rng.set_state(state);
        Ok(())
    }

    fn save_pretrained(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let cell = self.lock()?;
        let model = cell.model();
        detach(py, move || Ok(model.save_pretrained(&path)?))
    }
}
