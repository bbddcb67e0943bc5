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
        let (fold, update) = self.begin_step();
        for group in &self.groups {
            let decays = group.decays && self.config.weight_decay != 0.0;
            let g = group.grads.clone();
            let (ps, gs) = (&mut params[group.params.clone()], &grads[g.clone()]);
            let (ms, vs) = (&mut self.exp_avg[g.clone()], &mut self.exp_avg_sq[g]);
            ps.par_chunks_mut(BLOCK).zip(gs.par_chunks(BLOCK)).zip(ms.par_chunks_mut(BLOCK).zip(vs.par_chunks_mut(BLOCK))).for_each(
                |((ps, gs), (ms, vs))| {
                    // `move`: the constants are the closure's own copies, which the stores
                    // cannot alias, so the loop vectorises (through references it stayed scalar)
                    simd(#[inline(always)] move || {
                        for ((p, &g), (m, v)) in ps.iter_mut().zip(gs).zip(ms.iter_mut().zip(vs.iter_mut())) {
                            fold.apply(m, v, g);
                            update.apply(p, *m, *v, decays);
                        }
                    })
                },
            );
        }
    }

    /// Counts one more step and gives its two halves: folding a gradient into the moments
    /// (needs no parameter) and updating a parameter from its moments.
    fn begin_step(&mut self) -> (Fold<F>, Update<F>) {
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let update = Update {
            neg_step_size: F::lit(-(c.lr / bc1)),
            bc2_sqrt: F::lit(bc2.sqrt()),
            decay: F::lit(1.0 - c.lr * c.weight_decay),
            eps: F::lit(c.eps),
        };
        (self.fold(), update)
    }

    fn fold(&self) -> Fold<F> {
        let c = &self.config;
        Fold { w1: F::lit(1.0 - c.beta1), b2: F::lit(c.beta2), w2: F::lit(1.0 - c.beta2) }
    }

    /// The step fused into the backward, first half: folds the gradients `g` of the
    /// gradient-layout range `r` into the moments (`optim::fused`).
    pub fn fold_range(&mut self, r: Range<usize>, g: &[F]) {
        let fold = self.fold();
        let (ms, vs) = (&mut self.exp_avg[r.clone()], &mut self.exp_avg_sq[r]);
        ms.par_chunks_mut(BLOCK).zip(vs.par_chunks_mut(BLOCK)).zip(g.par_chunks(BLOCK)).for_each(|((ms, vs), gs)| {
            simd(#[inline(always)] move || {
                for ((m, v), &g) in ms.iter_mut().zip(vs.iter_mut()).zip(gs) {
                    fold.apply(m, v, g);
                }
            })
        });
    }

    /// The step fused into the backward, second half: every parameter from its moments, once
    /// all gradients are folded (`fold_range`). `step` = `fold_range` over all + this, bit
    /// for bit.
    pub fn update_from_moments(&mut self, params: &mut [F]) {
        let (_, update) = self.begin_step();
        for group in &self.groups {
            let decays = group.decays && self.config.weight_decay != 0.0;
            let g = group.grads.clone();
            let ps = &mut params[group.params.clone()];
            let (ms, vs) = (&self.exp_avg[g.clone()], &self.exp_avg_sq[g]);
            ps.par_chunks_mut(BLOCK).zip(ms.par_chunks(BLOCK).zip(vs.par_chunks(BLOCK))).for_each(|(ps, (ms, vs))| {
                simd(#[inline(always)] move || {
                    for (p, (&m, &v)) in ps.iter_mut().zip(ms.iter().zip(vs)) {
                        update.apply(p, m, v, decays);
                    }
                })
            });
        }
    }
}

/// m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) * g * g
#[derive(Clone, Copy)]
struct Fold<F> {
    w1: F,
    b2: F,
    w2: F,
}

impl<F: Real> Fold<F> {
    #[inline(always)]
    fn apply(&self, m: &mut F, v: &mut F, g: F) {
        *m = *m + self.w1 * (g - *m);
        *v = *v * self.b2 + self.w2 * g * g;
    }
}

/// p *= 1 - lr * wd (when it decays);  p += -(lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
#[derive(Clone, Copy)]
struct Update<F> {
    neg_step_size: F,
    bc2_sqrt: F,
    decay: F,
    eps: F,
}

impl<F: Real> Update<F> {
    #[inline(always)]
    fn apply(&self, p: &mut F, m: F, v: F, decays: bool) {
        if decays {
            *p *= self.decay;
        }
        let denom = v.sqrt() / self.bc2_sqrt + self.eps;
        *p = *p + self.neg_step_size * (m / denom);
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

    /// Folding the gradients range by range, then updating from the moments, is `step`.
    #[test]
    fn fold_then_update_is_step() {
        let mut table = ParamTable::default();
        table.push("a".into(), &[3]);
        table.push("b".into(), &[40_000]);
        let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.5 };
        let mut one = AdamW::<f32>::new(cfg.clone(), &table, &slots(&table), &["a".into()]).unwrap();
        let mut two = AdamW::<f32>::new(cfg, &table, &slots(&table), &["a".into()]).unwrap();
        let mut rng = crate::rng::SplitMix64::new(3);
        let mut p1: Vec<f32> = (0..40_003).map(|_| rng.next_f64() as f32).collect();
        let mut p2 = p1.clone();
        for _ in 0..3 {
            let g: Vec<f32> = (0..40_003).map(|_| rng.next_f64() as f32 - 0.5).collect();
            one.step(&mut p1, &g);
            two.fold_range(0..10, &g[..10]);
            two.fold_range(10..40_003, &g[10..]);
            two.update_from_moments(&mut p2);
        }
        assert_eq!(p1, p2);
        assert_eq!(one.exp_avg_sq, two.exp_avg_sq);
        assert_eq!(one.step_count(), two.step_count());
    }
}
