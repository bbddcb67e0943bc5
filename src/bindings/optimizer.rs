//! `ferrotune._core.AdamW`: the fused Rust AdamW behind `ferrotune.AdamW`.

use numpy::PyReadonlyArrayDyn;
use pyo3::prelude::*;

use crate::error::Error;
use crate::optim::adamw::{AdamW, AdamWConfig};

use super::convert::{f32_nd, to_numpy};
use super::detach;
use super::errors::PyFerrotuneErr;
use super::model::PyModel;

#[pyclass(name = "AdamW", module = "ferrotune._core")]
pub struct PyAdamW {
    model: Py<PyModel>,
    inner: AdamW<f32>,
}

fn err(e: Error) -> PyErr {
    PyFerrotuneErr::from(e).into()
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
        let inner = AdamW::new(config, &model.borrow().inner.state().table, &no_decay).map_err(err)?;
        Ok(Self { model: model.unbind(), inner })
    }

    fn step(&mut self, py: Python<'_>) -> PyResult<()> {
        let mut model = self.model.borrow_mut(py);
        let (params, grads) = model.inner.state_mut().params_and_grads();
        let opt = &mut self.inner;
        detach(py, move || {
            opt.step(params, grads);
            Ok(())
        })
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
        let model = self.model.borrow(py);
        let mut out = Vec::new();
        for i in model.inner.state().table.infos() {
            let m = to_numpy(py, self.inner.exp_avg[i.range.clone()].to_vec(), &i.shape)?;
            let v = to_numpy(py, self.inner.exp_avg_sq[i.range.clone()].to_vec(), &i.shape)?;
            out.push((i.name.clone(), m, v));
        }
        Ok((self.inner.step_count(), out))
    }

    /// Restores the step count and every parameter's moments (all must be given).
    fn load_moments(
        &mut self,
        py: Python<'_>,
        step: u64,
        moments: Vec<(String, PyReadonlyArrayDyn<'_, f32>, PyReadonlyArrayDyn<'_, f32>)>,
    ) -> PyResult<()> {
        let model = self.model.borrow(py);
        let table = &model.inner.state().table;
        let mut staged = Vec::new();
        for info in table.infos() {
            let Some((_, m, v)) = moments.iter().find(|(n, _, _)| n == &info.name) else {
                return Err(err(Error::MissingTensor { name: format!("exp_avg/exp_avg_sq of {}", info.name), path: None }));
            };
            let (m, ms) = f32_nd(&info.name, m)?;
            let (v, vs) = f32_nd(&info.name, v)?;
            if ms != info.shape || vs != info.shape {
                return Err(err(Error::shape(format!("optimizer state of {}", info.name), &info.shape, if ms != info.shape { &ms } else { &vs })));
            }
            staged.push((info.range.clone(), m, v));
        }
        if let Some((name, _, _)) = moments.iter().find(|(n, _, _)| table.get(n).is_none()) {
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
