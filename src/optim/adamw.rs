//! AdamW with torch.optim.AdamW's numerics (decoupled weight decay, bias correction, eps
//! added outside the square root), fused into one in-place pass per parameter.
//! The order of floating-point operations follows torch's single-tensor implementation:
//!   p *= 1 - lr * wd
//!   m = lerp(m, g, 1 - beta1)                  (m + (1 - beta1) * (g - m))
//!   v = v * beta2 + (1 - beta2) * g * g
//!   p += -(lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::cpu::simd;
use crate::kernels::Real;
use crate::models::params::ParamTable;
use crate::models::GradSlot;

/// Elements per parallel task of the update.
const BLOCK: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(m));
        if !(self.lr >= 0.0) {
            return bad(format!("invalid learning rate: {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad(format!("betas must be in [0, 1), got ({}, {})", self.beta1, self.beta2));
        }
        if !(self.eps >= 0.0) {
            return bad(format!("invalid epsilon: {}", self.eps));
        }
        if !(self.weight_decay >= 0.0) {
            return bad(format!("invalid weight_decay: {}", self.weight_decay));
        }
        Ok(())
    }
}

/// One trainable parameter: its range in the parameter buffer, its range in the gradient
/// buffer (the moments use the same), and whether it decays.
struct Group {
    params: Range<usize>,
    grads: Range<usize>,
    decays: bool,
}

pub struct AdamW<F: Real> {
    pub config: AdamWConfig,
    step: u64,
    groups: Vec<Group>,
    /// Moments of the trainable parameters only, laid out like the gradients.
    pub exp_avg: Vec<F>,
    pub exp_avg_sq: Vec<F>,
}

impl<F: Real> AdamW<F> {
    /// Optimises the trainable parameters `slots`; every one decays unless its name is in
    /// `no_decay`.
    pub fn new(config: AdamWConfig, table: &ParamTable, slots: &[GradSlot], no_decay: &[String]) -> Result<Self> {
        config.validate()?;
        for name in no_decay {
            if table.get(name).is_none() {
                return Err(Error::Input(format!("no_decay names an unknown parameter {name:?}")));
            }
        }
        let groups = slots
            .iter()
            .map(|s| Group {
                params: s.params.clone(),
                grads: s.grads.clone(),
                decays: !no_decay.contains(&table.infos()[s.index].name),
            })
            .collect();
        let n = slots.iter().map(|s| s.grads.len()).sum();
        Ok(Self { config, step: 0, groups, exp_avg: vec![F::zero(); n], exp_avg_sq: vec![F::zero(); n] })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// One update of `params` from `grads` (laid out like the slots given to `new`).
    pub fn step(&mut self, params: &mut [F], grads: &[F]) {
        assert_eq!(grads.len(), self.exp_avg.len(), "optimizer built for another set of trainable parameters");
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let neg_step_size = F::lit(-(c.lr / bc1));
        let bc2_sqrt = F::lit(bc2.sqrt());
        let decay = F::lit(1.0 - c.lr * c.weight_decay);
        let (w1, b2, w2, eps) = (F::lit(1.0 - c.beta1), F::lit(c.beta2), F::lit(1.0 - c.beta2), F::lit(c.eps));
        for group in &self.groups {
            let decays = group.decays && c.weight_decay != 0.0;
            let g = group.grads.clone();
            let (ps, gs) = (&mut params[group.params.clone()], &grads[g.clone()]);
            let (ms, vs) = (&mut self.exp_avg[g.clone()], &mut self.exp_avg_sq[g]);
            ps.par_chunks_mut(BLOCK).zip(gs.par_chunks(BLOCK)).zip(ms.par_chunks_mut(BLOCK).zip(vs.par_chunks_mut(BLOCK))).for_each(
                |((ps, gs), (ms, vs))| {
                    simd(#[inline(always)] || {
                        for ((p, &g), (m, v)) in ps.iter_mut().zip(gs).zip(ms.iter_mut().zip(vs.iter_mut())) {
                            if decays {
                                *p *= decay;
                            }
                            *m = *m + w1 * (g - *m);
                            *v = *v * b2 + w2 * g * g;
                            let denom = v.sqrt() / bc2_sqrt + eps;
                            *p = *p + neg_step_size * (*m / denom);
                        }
                    })
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(table: &ParamTable) -> Vec<GradSlot> {
        table.infos().iter().enumerate().map(|(index, i)| GradSlot { index, params: i.range.clone(), grads: i.range.clone() }).collect()
    }

    /// Two steps by hand for one scalar parameter.
    #[test]
    fn matches_reference_formula() {
        let mut table = ParamTable::default();
        table.push("w".into(), &[1]);
        let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = AdamW::<f64>::new(cfg, &table, &slots(&table), &[]).unwrap();
        let mut p = vec![1.0f64];
        let (mut m, mut v, mut expected) = (0.0f64, 0.0f64, 1.0f64);
        for (step, g) in [(1, 0.5f64), (2, -0.25)] {
            opt.step(&mut p, &[g]);
            expected *= 1.0 - 0.1 * 0.01;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.999f64.powi(step));
            expected -= 0.1 / bc1 * m / ((v / bc2).sqrt() + 1e-8);
            assert!((p[0] - expected).abs() < 1e-12, "step {step}: {} vs {expected}", p[0]);
        }
    }

    #[test]
    fn no_decay_and_bad_names() {
        let mut table = ParamTable::default();
        table.push("a".into(), &[1]);
        table.push("b".into(), &[1]);
        let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.5 };
        let mut opt = AdamW::<f64>::new(cfg.clone(), &table, &slots(&table), &["b".into()]).unwrap();
        let mut p = vec![1.0, 1.0];
        opt.step(&mut p, &[0.0, 0.0]);
        assert_eq!(p, vec![0.95, 1.0]);
        assert!(AdamW::<f64>::new(cfg, &table, &slots(&table), &["c".into()]).is_err());
    }
}
