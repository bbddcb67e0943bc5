//! `ferrotune._core.AdamW`: the fused Rust AdamW behind `ferrotune.AdamW`.

use numpy::PyReadonlyArrayDyn;
use pyo3::prelude::*;

use crate::error::Error;
use crate::optim::adamw::{AdamW, AdamWConfig};
use crate::optim::fused::FusedBackward;

use super::convert::{f32_nd, to_numpy};
use super::detach;
use super::errors::PyFerrotuneErr;
use super::model::{batch, Ids, ModelCell, PyModel};

#[pyclass(name = "AdamW", module = "ferrotune._core")]
pub struct PyAdamW {
    model: Py<PyModel>,
    inner: AdamW<f32>,
    /// The model's trainable set when this optimizer was built.
    grad_version: u64,
    /// Layout and buffers of `backward_step`, built on its first call.
    fused: Option<FusedBackward<f32>>,
}

fn err(e: Error) -> PyErr {
    PyFerrotuneErr::from(e).into()
}

impl PyAdamW {
    fn check_trainable_set(&self, model: &ModelCell) -> PyResult<()> {
        if model.model().state().grad_version() != self.grad_version {
            return Err(err(Error::Input(
                "the model's trainable parameters changed (freeze/unfreeze/adapters) since this optimizer was built; build a new one".into(),
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl PyAdamW {
    #[new]
    #[pyo3(signature = (model, lr, beta1, beta2, eps, weight_decay, no_decay))]
    fn new(
        model: Bound<'_, PyModel>,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        no_decay: Vec<String>,
    ) -> PyResult<Self> {
        let config = AdamWConfig { lr, beta1, beta2, eps, weight_decay };
        let m = model.get().lock()?;
        let state = m.model().state();
        let inner = AdamW::new(config, &state.table, &state.grad_slots(), &no_decay).map_err(err)?;
        let grad_version = state.grad_version();
        drop(m);
        Ok(Self { model: model.unbind(), inner, grad_version, fused: None })
    }

    fn step(&mut self, py: Python<'_>) -> PyResult<()> {
        let mut model = self.model.get().lock()?;
        self.check_trainable_set(&model)?;
        let (params, grads) = model.model_mut().state_mut().params_and_grads();
        let opt = &mut self.inner;
        detach(py, move || {
            opt.step(params, grads);
            Ok(())
        })
    }

    /// Forward, backward and one step with the step fused into the backward
    /// (optim::fused): (summed loss, counted tokens, gradient norm). `reduce_gradients(g)`,
    /// when given, is called (with the GIL) on each block's final gradients, then on those
    /// outside the blocks, before they are folded: a float32 array over the step's own
    /// buffer, to change in place (summed over processes) and valid only during the call. An
    /// exception it raises ends the call once the backward is done.
    #[pyo3(signature = (input_ids, attention_mask=None, labels=None, num_items_in_batch=None, reduce_gradients=None))]
    fn backward_step(
        &mut self,
        py: Python<'_>,
        input_ids: Ids<'_>,
        attention_mask: Option<Ids<'_>>,
        labels: Option<Ids<'_>>,
        num_items_in_batch: Option<f64>,
        reduce_gradients: Option<Py<PyAny>>,
    ) -> PyResult<(f64, usize, f64)> {
        let mut model = self.model.get().lock()?;
        self.check_trainable_set(&model)?;
        let batch = batch(&input_ids, &attention_mask, &labels, model.model().num_labels().is_some())?;
        if self.fused.is_none() {
            self.fused = Some(FusedBackward::new(model.model().as_ref()).map_err(err)?);
        }
        let fused = self.fused.as_mut().expect("built above");
        let (m, opt) = (model.model_mut().as_mut(), &mut self.inner);
        let mut raised: Option<PyErr> = None;
        let mut reduce = |g: &mut [f32]| {
            let Some(f) = &reduce_gradients else { return };
            if raised.is_none() {
                raised = Python::attach(|py| {
                    let view = numpy::ndarray::ArrayViewMut1::from(g);
                    // SAFETY: the array lives for this call; the callee is told not to keep it
                    let arr = unsafe { numpy::PyArray1::borrow_from_array(&view, py.None().into_bound(py)) };
                    f.call1(py, (arr,)).map(drop)
                })
                .err();
            }
        };
        let wanted = reduce_gradients.is_some();
        let r = detach(py, || {
            let hook = wanted.then_some(&mut reduce as &mut dyn FnMut(&mut [f32]));
            let (s, norm) = fused.step(m, opt, &batch, num_items_in_batch, hook)?;
            Ok((s.loss_sum, s.count, norm))
        });
        match raised {
            Some(e) => Err(e),
            None => r,
        }
    }

    #[getter]
    fn lr(&self) -> f64 {
        self.inner.config.lr
    }

    #[setter]
    fn set_lr(&mut self, lr: f64) -> PyResult<()> {
        if !(lr >= 0.0) {
            return Err(err(Error::Input(format!("invalid learning rate: {lr}"))));
        }
        self.inner.config.lr = lr;
        Ok(())
    }

    #[getter]
    fn step_count(&self) -> u64 {
        self.inner.step_count()
    }

    /// (step, [(name, exp_avg, exp_avg_sq)])
    fn moments<'py>(&self, py: Python<'py>) -> PyResult<(u64, Vec<(String, Bound<'py, PyAny>, Bound<'py, PyAny>)>)> {
        let model = self.model.get().lock()?;
        let state = model.model().state();
        let mut out = Vec::new();
        for slot in state.grad_slots() {
            let i = &state.table.infos()[slot.index];
            let m = to_numpy(py, self.inner.exp_avg[slot.grads.clone()].to_vec(), &i.shape)?;
            let v = to_numpy(py, self.inner.exp_avg_sq[slot.grads.clone()].to_vec(), &i.shape)?;
            out.push((i.name.clone(), m, v));
        }
        Ok((self.inner.step_count(), out))
    }

    /// Restores the step count and every parameter's moments (all must be given).
    fn load_moments(
        &mut self,
        step: u64,
        moments: Vec<(String, PyReadonlyArrayDyn<'_, f32>, PyReadonlyArrayDyn<'_, f32>)>,
    ) -> PyResult<()> {
        let model = self.model.get().lock()?;
        let state = model.model().state();
        let table = &state.table;
        let slots = state.grad_slots();
        let mut staged = Vec::new();
        for slot in &slots {
            let info = &table.infos()[slot.index];
            let Some((_, m, v)) = moments.iter().find(|(n, _, _)| n == &info.name) else {
                return Err(err(Error::MissingTensor { name: format!("exp_avg/exp_avg_sq of {}", info.name), path: None }));
            };
            let (m, ms) = f32_nd(&info.name, m)?;
            let (v, vs) = f32_nd(&info.name, v)?;
            if ms != info.shape || vs != info.shape {
                return Err(err(Error::shape(format!("optimizer state of {}", info.name), &info.shape, if ms != info.shape { &ms } else { &vs })));
            }
            staged.push((slot.grads.clone(), m, v));
        }
        let trainable = |n: &String| slots.iter().any(|s| &table.infos()[s.index].name == n);
        if let Some((name, _, _)) = moments.iter().find(|(n, _, _)| !trainable(n)) {
            return Err(err(Error::UnexpectedTensor(name.clone())));
        }
        for (r, m, v) in staged {
            self.inner.exp_avg[r.clone()].copy_from_slice(m);
            self.inner.exp_avg_sq[r].copy_from_slice(v);
        }
        self.inner.set_step_count(step);
        Ok(())
    }
}
