//! `ferrotune._core.CausalLM`: the Rust model (any supported architecture) behind
//! `ferrotune.Model`.

use std::path::PathBuf;

use numpy::{PyReadonlyArray2, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::Error;
use crate::models::lora::LoraSpec;
use crate::models::{attach_lora, from_config, from_pretrained, from_pretrained_as, merge_lora, Batch, BoxedModel};
use crate::optim::clip::clip_grad_norm;

use super::convert::{f32_nd, ids_2d, to_numpy};
use super::detach;
use super::errors::PyFtResult;

#[pyclass(name = "CausalLM", module = "ferrotune._core")]
pub struct PyModel {
    pub inner: BoxedModel,
}

type Ids<'py> = PyReadonlyArray2<'py, i64>;

/// A batch from numpy arrays. Labels are (B, T) per token, or (B, 1) one class per row for a
/// model with a classification head (`row_labels`).
fn batch<'a>(ids: &'a Ids<'_>, mask: &'a Option<Ids<'_>>, labels: &'a Option<Ids<'_>>, row_labels: bool) -> PyFtResult<Batch<'a>> {
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

#[pymethods]
impl PyModel {
    /// Loads a Hugging Face model directory (config.json + safetensors weights).
    #[staticmethod]
    fn from_pretrained(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = detach(py, move || Ok(from_pretrained(&path)?))?;
        Ok(Self { inner })
    }

    /// A freshly initialised model from a config.json string.
    /// Loads weights from a model directory or GGUF file into the model a config.json
    /// string describes (e.g. the backbone of a causal LM under a classification head).
    #[staticmethod]
    fn from_pretrained_with_config(py: Python<'_>, path: PathBuf, config_json: &str, seed: u64) -> PyResult<Self> {
        let value: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| PyErr::from(super::errors::PyFerrotuneErr::from(Error::Config(format!("invalid config JSON: {e}")))))?;
        let inner = detach(py, move || Ok(from_pretrained_as(&path, value, seed)?))?;
        Ok(Self { inner })
    }

    #[staticmethod]
    fn from_config(py: Python<'_>, config_json: &str, seed: u64) -> PyResult<Self> {
        let value: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| PyErr::from(super::errors::PyFerrotuneErr::from(Error::Config(format!("invalid config JSON: {e}")))))?;
        let inner = detach(py, move || Ok(from_config(value, seed)?))?;
        Ok(Self { inner })
    }

    /// L for a model with a sequence-classification head, else None.
    #[getter]
    fn num_labels(&self) -> Option<usize> {
        self.inner.num_labels()
    }

    fn config_json(&self) -> String {
        serde_json::to_string(&self.inner.config_value()).expect("config serialises")
    }

    /// (loss or None, (B, T, V) float32 logits or None).
    #[pyo3(signature = (input_ids, attention_mask=None, labels=None, return_logits=true))]
    fn forward<'py>(
        &mut self,
        py: Python<'py>,
        input_ids: Ids<'py>,
        attention_mask: Option<Ids<'py>>,
        labels: Option<Ids<'py>>,
        return_logits: bool,
    ) -> PyResult<(Option<f64>, Option<Bound<'py, PyAny>>)> {
        let batch = batch(&input_ids, &attention_mask, &labels, self.inner.num_labels().is_some())?;
        let has_labels = labels.is_some();
        let (b, t) = (batch.b, batch.t);
        let shape = match self.inner.num_labels() {
            Some(l) => vec![b, l],
            None => vec![b, t, self.inner.vocab_size()],
        };
        let model = &mut self.inner;
        let (loss, logits) = detach(py, move || {
            model.forward(&batch)?;
            let loss = has_labels.then(|| {
                let s = model.loss_stats();
                if s.count == 0 { f64::NAN } else { s.loss_sum / s.count as f64 }
            });
            Ok((loss, return_logits.then(|| model.logits().to_vec())))
        })?;
        let logits = logits.map(|l| to_numpy(py, l, &shape)).transpose()?;
        Ok((loss, logits))
    }

    /// Forward only, nothing (B, T, V) returned: (summed loss, counted tokens, correct argmax).
    #[pyo3(signature = (input_ids, attention_mask=None, labels=None))]
    fn loss_stats(
        &mut self,
        py: Python<'_>,
        input_ids: Ids<'_>,
        attention_mask: Option<Ids<'_>>,
        labels: Option<Ids<'_>>,
    ) -> PyResult<(f64, usize, usize)> {
        let batch = batch(&input_ids, &attention_mask, &labels, self.inner.num_labels().is_some())?;
        let model = &mut self.inner;
        detach(py, move || {
            model.forward(&batch)?;
            let s = model.loss_stats();
            Ok((s.loss_sum, s.count, s.correct))
        })
    }

    /// Forward + backward, adding to the gradients: (summed loss, counted tokens).
    #[pyo3(signature = (input_ids, attention_mask=None, labels=None, num_items_in_batch=None))]
    fn forward_backward(
        &mut self,
        py: Python<'_>,
        input_ids: Ids<'_>,
        attention_mask: Option<Ids<'_>>,
        labels: Option<Ids<'_>>,
        num_items_in_batch: Option<f64>,
    ) -> PyResult<(f64, usize)> {
        let batch = batch(&input_ids, &attention_mask, &labels, self.inner.num_labels().is_some())?;
        let model = &mut self.inner;
        detach(py, move || {
            let s = model.forward_backward(&batch, num_items_in_batch)?;
            Ok((s.loss_sum, s.count))
        })
    }

    fn zero_grad(&mut self) {
        self.inner.state_mut().zero_grad();
    }

    fn clip_grad_norm(&mut self, py: Python<'_>, max_norm: f64) -> PyResult<f64> {
        let model = &mut self.inner;
        detach(py, move || Ok(clip_grad_norm(model.state_mut().grads_mut(), max_norm)))
    }

    /// [(name, shape)] of every parameter, in storage order.
    fn param_info(&self) -> Vec<(String, Vec<usize>)> {
        self.inner.state().table.infos().iter().map(|i| (i.name.clone(), i.shape.clone())).collect()
    }

    #[pyo3(signature = (trainable_only=false))]
    fn num_parameters(&self, trainable_only: bool) -> usize {
        let state = self.inner.state();
        if trainable_only { state.trainable_total() } else { state.table.total() }
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let state = self.inner.state();
        for i in state.table.infos() {
            d.set_item(&i.name, to_numpy(py, state.params[i.range.clone()].to_vec(), &i.shape)?)?;
        }
        Ok(d)
    }

    /// {name: gradient} of the trainable parameters.
    fn gradients<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let slots = self.inner.state().grad_slots();
        let infos = self.inner.state().table.infos().to_vec();
        let g = self.inner.state_mut().grads_mut();
        let d = PyDict::new(py);
        for slot in slots {
            let i = &infos[slot.index];
            d.set_item(&i.name, to_numpy(py, g[slot.grads].to_vec(), &i.shape)?)?;
        }
        Ok(d)
    }

    /// Freezes (False) or unfreezes (True) the named parameters; unknown names are an error
    /// and nothing changes then.
    fn set_trainable(&mut self, names: Vec<String>, trainable: bool) -> PyResult<()> {
        let table = &self.inner.state().table;
        let mut idx = Vec::with_capacity(names.len());
        for n in &names {
            let i = table.infos().iter().position(|p| &p.name == n);
            idx.push(i.ok_or_else(|| PyErr::from(super::errors::PyFerrotuneErr::from(Error::Input(format!("no parameter named {n:?}")))))?);
        }
        for i in idx {
            self.inner.state_mut().set_trainable(i, trainable);
        }
        Ok(())
    }

    /// [(module name, in_features, out_features)] of the linear modules LoRA can adapt.
    fn lora_modules(&self) -> Vec<(String, usize, usize)> {
        self.inner.lora_modules().1.into_iter().map(|m| (m.name, m.in_f, m.out_f)).collect()
    }

    /// Adds LoRA adapters to the named modules; every other parameter is frozen.
    fn add_lora(&mut self, modules: Vec<String>, r: usize, alpha: f64, dropout: f64, use_rslora: bool, seed: u64) -> PyResult<()> {
        let spec = LoraSpec { r, alpha, dropout, use_rslora };
        attach_lora(self.inner.as_mut(), &modules, spec, seed).map_err(|e| PyErr::from(super::errors::PyFerrotuneErr::from(e)))
    }

    /// Folds the adapters into the base weights and removes them.
    fn merge_lora(&mut self, py: Python<'_>) -> PyResult<()> {
        let model = &mut self.inner;
        detach(py, move || Ok(merge_lora(model.as_mut())?))
    }

    /// (r, alpha, dropout, use_rslora, [adapted module names]) or None.
    #[allow(clippy::type_complexity)]
    fn lora_info(&self) -> Option<(usize, f64, f64, bool, Vec<String>)> {
        self.inner.lora().map(|l| {
            let s = &l.spec;
            (s.r, s.alpha, s.dropout, s.use_rslora, l.sites().map(|x| x.module.name.clone()).collect())
        })
    }

    /// Names of the trainable parameters, in storage order.
    fn trainable_names(&self) -> Vec<String> {
        let state = self.inner.state();
        state.grad_slots().into_iter().map(|s| state.table.infos()[s.index].name.clone()).collect()
    }

    /// Copies float32 arrays into the named parameters (shapes checked; all-or-nothing).
    fn load_state_dict(&mut self, tensors: Vec<(String, PyReadonlyArrayDyn<'_, f32>)>, strict: bool) -> PyResult<()> {
        let table = self.inner.state().table.clone();
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
        let params = &mut self.inner.state_mut().params;
        for (range, data) in updates {
            params[range].copy_from_slice(data);
        }
        Ok(())
    }

    #[getter]
    fn training(&self) -> bool {
        self.inner.state().training
    }

    #[setter]
    fn set_training(&mut self, training: bool) {
        self.inner.state_mut().training = training;
    }

    #[getter]
    fn rng_state(&self) -> u64 {
        self.inner.state().rng.state()
    }

    #[setter]
    fn set_rng_state(&mut self, state: u64) {
        self.inner.state_mut().rng.set_state(state);
    }

    fn save_pretrained(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let model = &self.inner;
        detach(py, move || Ok(model.save_pretrained(&path)?))
    }
}
