//! LoRA adapters with PEFT's semantics: an adapted linear module computes
//!   out = base(x) + scale * (dropout(x) @ A^T) @ B^T,   A: (r, in), B: (out, r)
//! with scale = alpha / r (or alpha / sqrt(r) with rsLoRA). A starts like PEFT's
//! kaiming-uniform (U(-1/sqrt(in), 1/sqrt(in))), B at zero, so a new adapter is a no-op.
//! The base weights stay frozen (no gradient memory or work) and W + BA is never formed
//! while training; `merge` folds the adapters into the base weights.
//!
//! Each architecture numbers the linear modules it can adapt ("slots", see `LoraModule`);
//! its `Linear` modules (linear.rs) call `forward` / `backward` / `apply`. `attach_lora` and
//! `merge_lora` add adapters to a model and fold them back into it.
//!
//! Shapes: N = rows (B * T), IN / OUT = the module's input / output features, R = rank.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::kernels::dropout::Dropout;
use crate::kernels::matmul::{gemm, gemm_into, View};
use crate::kernels::Real;
use crate::models::{CausalLm, GradView, ModelState};
use crate::rng::SplitMix64;

/// PEFT's LoraConfig numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub use_rslora: bool,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Input("LoRA rank r must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Input(format!("lora_dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }
}

/// A linear module an architecture can adapt.
#[derive(Clone, Debug)]
pub struct LoraModule {
    /// transformers' module name, e.g. "transformer.h.0.attn.c_attn" or
    /// "model.layers.0.self_attn.q_proj".
    pub name: String,
    pub slot: usize,
    pub in_f: usize,
    pub out_f: usize,
    /// The base weight's range in the parameter buffer.
    pub weight: Range<usize>,
    /// Conv1D layout (in, out) as GPT-2 stores it, instead of nn.Linear's (out, in).
    pub conv1d: bool,
    /// Where the module's output columns sit in the buffer the architecture writes:
    /// columns out_col..out_col + out_f of rows out_rs elements apart.
    pub out_col: usize,
    pub out_rs: usize,
}

/// One adapted module: its module and the ranges of A (R, IN) and B (OUT, R).
#[derive(Clone, Debug)]
pub struct LoraSite {
    pub module: LoraModule,
    pub a: Range<usize>,
    pub b: Range<usize>,
}

/// What one adapter's forward saves for its backward. The architectures keep these with
/// the other activations of a layer (so gradient checkpointing recomputes them too).
#[derive(Default)]
pub struct SiteActs<F> {
    tmp: Vec<F>,           // (N, R) = dropout(x) @ A^T
    drop: Option<Dropout>, // over (N, IN), None without dropout
}

impl<F> SiteActs<F> {
    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.tmp.capacity() * std::mem::size_of::<F>()
    }
}

pub struct Lora {
    pub spec: LoraSpec,
    sites: Vec<Option<LoraSite>>, // by slot
}

impl Lora {
    /// Adds adapters to `modules` of a model: A and B become new trainable parameters
    /// (named "<module>.lora_A.weight" / "<module>.lora_B.weight") and every other
    /// parameter is frozen, as get_peft_model does.
    pub fn attach<F: Real>(state: &mut ModelState<F>, n_slots: usize, modules: Vec<LoraModule>, spec: LoraSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        if modules.is_empty() {
            return Err(Error::Input("no module to adapt".into()));
        }
        for i in 0..state.table.infos().len() {
            state.set_trainable(i, false);
        }
        let mut rng = SplitMix64::new(seed);
        let mut sites: Vec<Option<LoraSite>> = (0..n_slots).map(|_| None).collect();
        for m in modules {
            let bound = 1.0 / (m.in_f as f64).sqrt();
            let a_init: Vec<F> = (0..spec.r * m.in_f).map(|_| F::lit((2.0 * rng.next_f64() - 1.0) * bound)).collect();
            let a = state.add_param(format!("{}.lora_A.weight", m.name), &[spec.r, m.in_f], &a_init);
            let b = state.add_param(format!("{}.lora_B.weight", m.name), &[m.out_f, spec.r], &vec![F::zero(); m.out_f * spec.r]);
            let slot = m.slot;
            sites[slot] = Some(LoraSite { module: m, a, b });
        }
        Ok(Self { spec, sites })
    }

    /// Whether slot has an adapter.
    pub fn adapts(&self, slot: usize) -> bool {
        self.sites[slot].is_some()
    }

    pub fn sites(&self) -> impl Iterator<Item = &LoraSite> {
        self.sites.iter().flatten()
    }

    /// Training forward of slot's adapter: out[:, cols] += scale * (dropout(x) @ A^T) @ B^T;
    /// `acts` gets what the backward needs.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<F: Real>(&self, slot: usize, acts: &mut SiteActs<F>, p: &[F], x: &[F], out: &mut [F], n: usize, train: bool, rng: &mut SplitMix64) {
        let Some(site) = &self.sites[slot] else { return };
        let (m, r) = (&site.module, self.spec.r);
        acts.tmp.resize(n * r, F::zero());
        acts.drop = Dropout::draw(self.spec.dropout, train, rng);
        if let Some(d) = &acts.drop {
            let mut xd = x[..n * m.in_f].to_vec();
            d.apply(&mut xd, 0);
            gemm(&mut acts.tmp, n, r, m.in_f, View::rows(&xd, m.in_f), View::t(&p[site.a.clone()], m.in_f), false);
        } else {
            gemm(&mut acts.tmp, n, r, m.in_f, View::rows(x, m.in_f), View::t(&p[site.a.clone()], m.in_f), false);
        }
        let scale = F::lit(self.spec.scale());
        gemm_into(&mut out[m.out_col..], m.out_rs, n, m.out_f, r, View::rows(&acts.tmp, r), View::t(&p[site.b.clone()], r), true, scale);
    }

    /// Inference forward (no dropout, nothing saved), for generation.
    pub fn apply<F: Real>(&self, slot: usize, p: &[F], x: &[F], out: &mut [F], n: usize) {
        let Some(site) = &self.sites[slot] else { return };
        let (m, r) = (&site.module, self.spec.r);
        let mut tmp = vec![F::zero(); n * r];
        gemm(&mut tmp, n, r, m.in_f, View::rows(x, m.in_f), View::t(&p[site.a.clone()], m.in_f), false);
        let scale = F::lit(self.spec.scale());
        gemm_into(&mut out[m.out_col..], m.out_rs, n, m.out_f, r, View::rows(&tmp, r), View::t(&p[site.b.clone()], r), true, scale);
    }

    /// Backward of slot's adapter, from what its forward saved in `acts`. `dout` is the
    /// gradient of the whole output buffer (the module's columns are read from it); adds to
    /// dA, dB and to dinp (N, IN).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<F: Real>(&self, slot: usize, acts: &SiteActs<F>, p: &[F], g: &mut GradView<'_, F>, x: &[F], dout: &[F], dinp: &mut [F], n: usize) {
        let Some(site) = &self.sites[slot] else { return };
        let (m, r) = (&site.module, self.spec.r);
        let scale = F::lit(self.spec.scale());
        let dcols = &dout[m.out_col..];
        // dtmp (N, R) = scale * dout @ B
        let mut dtmp = vec![F::zero(); n * r];
        gemm_into(&mut dtmp, r, n, r, m.out_f, View::strided(dcols, m.out_rs), View::rows(&p[site.b.clone()], r), false, scale);
        // dB (OUT, R) += scale * dout^T @ tmp
        if let Some(db) = g.get(&site.b) {
            gemm_into(db, r, m.out_f, r, n, View::strided_t(dcols, m.out_rs), View::rows(&acts.tmp, r), true, scale);
        }
        // dA (R, IN) += dtmp^T @ dropout(x);  dinp += (dtmp @ A) * mask
        if let Some(d) = &acts.drop {
            let mut xd = x[..n * m.in_f].to_vec();
            d.apply(&mut xd, 0);
            if let Some(da) = g.get(&site.a) {
                gemm(da, r, m.in_f, n, View::t(&dtmp, r), View::rows(&xd, m.in_f), true);
            }
            let mut dx = vec![F::zero(); n * m.in_f];
            gemm(&mut dx, n, m.in_f, r, View::rows(&dtmp, r), View::rows(&p[site.a.clone()], m.in_f), false);
            d.apply(&mut dx, 0);
            for (o, v) in dinp.iter_mut().zip(&dx) {
                *o += *v;
            }
        } else {
            if let Some(da) = g.get(&site.a) {
                gemm(da, r, m.in_f, n, View::t(&dtmp, r), View::rows(x, m.in_f), true);
            }
            gemm(dinp, n, m.in_f, r, View::rows(&dtmp, r), View::rows(&p[site.a.clone()], m.in_f), true);
        }
    }

    /// Folds every adapter into its base weight: W += scale * B @ A (transposed for Conv1D).
    pub fn merge<F: Real>(&self, params: &mut [F]) {
        let (r, scale) = (self.spec.r, F::lit(self.spec.scale()));
        for site in self.sites() {
            let m = &site.module;
            let (a, b) = (params[site.a.clone()].to_vec(), params[site.b.clone()].to_vec());
            let w = &mut params[m.weight.clone()];
            if m.conv1d {
                // W (IN, OUT) += scale * A^T @ B^T
                gemm_into(w, m.out_f, m.in_f, m.out_f, r, View::t(&a, m.in_f), View::t(&b, r), true, scale);
            } else {
                // W (OUT, IN) += scale * B @ A
                gemm_into(w, m.in_f, m.out_f, m.in_f, r, View::rows(&b, r), View::rows(&a, m.in_f), true, scale);
            }
        }
    }
}

/// Adds LoRA adapters to the named modules (every other parameter is frozen).
pub fn attach_lora<F: Real>(model: &mut dyn CausalLm<F>, names: &[String], spec: LoraSpec, seed: u64) -> Result<()> {
    if model.lora().is_some() {
        return Err(Error::Input("the model already has LoRA adapters (merge_and_unload() first)".into()));
    }
    let (slots, all) = model.lora_modules();
    let mut chosen = Vec::with_capacity(names.len());
    for name in names {
        let m = all.iter().find(|m| &m.name == name).ok_or_else(|| {
            Error::Input(format!("{name:?} is not a linear module LoRA can adapt in this model"))
        })?;
        chosen.push(m.clone());
    }
    let lora = Lora::attach(model.state_mut(), slots, chosen, spec, seed)?;
    model.set_lora(Some(lora));
    Ok(())
}

/// Folds the adapters into the base weights and removes them; the model trains fully again.
pub fn merge_lora<F: Real>(model: &mut dyn CausalLm<F>) -> Result<()> {
    let keep = base_param_count(model).ok_or_else(|| Error::Input("the model has no LoRA adapters to merge".into()))?;
    let mut params = std::mem::take(&mut model.state_mut().params);
    model.lora().expect("adapters exist").merge(&mut params);
    let state = model.state_mut();
    state.params = params;
    state.truncate_params(keep);
    for i in 0..keep {
        state.set_trainable(i, true);
    }
    model.set_lora(None);
    Ok(())
}

/// The number of base parameters before the adapters, when there are adapters.
pub(crate) fn base_param_count<F: Real, M: CausalLm<F> + ?Sized>(model: &M) -> Option<usize> {
    let first = model.lora()?.sites().map(|s| s.a.start).min()?;
    model.state().table.infos().iter().position(|i| i.range.start == first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Gpt2Config, LlamaConfig};
    use crate::models::gpt2::Gpt2;
    use crate::models::llama::Llama;
    use crate::models::Batch;

    fn gpt2() -> Gpt2<f64> {
        let cfg = Gpt2Config::from_value(serde_json::json!({
            "model_type": "gpt2", "vocab_size": 11, "n_positions": 8, "n_embd": 6, "n_layer": 2, "n_head": 2,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.3
        }))
        .unwrap();
        Gpt2::from_config(cfg, 1).unwrap()
    }

    fn llama() -> Llama<f64> {
        let cfg = LlamaConfig::from_value(serde_json::json!({
            "model_type": "qwen2", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 10,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 16, "initializer_range": 0.3, "tie_word_embeddings": true
        }))
        .unwrap();
        Llama::from_config(cfg, 1).unwrap()
    }

    /// Attaches adapters to every module with random B (a no-op otherwise), then checks
    /// every adapter gradient against central differences, and that base weights get none.
    fn check<M: CausalLm<f64>>(mut m: M) {
        let names: Vec<String> = m.lora_modules().1.iter().map(|x| x.name.clone()).collect();
        let spec = LoraSpec { r: 2, alpha: 3.0, dropout: 0.0, use_rslora: false };
        attach_lora(&mut m, &names, spec, 5).unwrap();
        let base = m.state().table.infos().len() - 2 * names.len();
        let mut rng = SplitMix64::new(3);
        for info in m.state().table.infos()[base..].to_vec() {
            for x in &mut m.state_mut().params[info.range.clone()] {
                *x = rng.next_f64() - 0.5;
            }
        }
        let slots = m.state().grad_slots();
        assert_eq!(slots.len(), 2 * names.len(), "only adapters train");
        let ids = [1i64, 5, 7, 2, 0, 3, 9, 4, 10, 6];
        let batch = Batch { ids: &ids, mask: None, labels: None, b: 2, t: 5 };
        let (worst, _) = crate::models::testing::gradient_error(&mut m, &batch);
        assert!(worst < 1e-7, "max abs error {worst:e}");

        // merging gives the same logits and a plain model again
        m.state_mut().training = false;
        m.forward(&batch).unwrap();
        let adapted = m.logits().to_vec();
        merge_lora(&mut m).unwrap();
        assert!(m.lora().is_none());
        assert_eq!(m.state().table.infos().len(), base);
        assert_eq!(m.state().grad_slots().len(), base, "everything trains after merging");
        m.forward(&batch).unwrap();
        let err = adapted.iter().zip(m.logits()).fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(err < 1e-12, "merged logits differ by {err:e}");
    }

    #[test]
    fn gpt2_adapters_match_finite_differences_and_merge() {
        check(gpt2());
    }

    #[test]
    fn llama_adapters_match_finite_differences_and_merge() {
        check(llama());
    }

    #[test]
    fn new_adapter_is_a_no_op_and_unknown_modules_fail() {
        let mut m = gpt2();
        let ids = [1i64, 2, 3, 4];
        let batch = Batch { ids: &ids, mask: None, labels: None, b: 1, t: 4 };
        m.forward(&batch).unwrap();
        let before = m.logits().to_vec();
        let spec = LoraSpec { r: 4, alpha: 8.0, dropout: 0.1, use_rslora: true };
        assert!(attach_lora(&mut m, &["transformer.h.0.mlp.nope".into()], spec.clone(), 1).is_err());
        attach_lora(&mut m, &["transformer.h.0.attn.c_attn".into()], spec.clone(), 1).unwrap();
        m.state_mut().training = false;
        m.forward(&batch).unwrap();
        assert_eq!(before, m.logits(), "B = 0 at first");
        assert!(attach_lora(&mut m, &["transformer.h.1.attn.c_attn".into()], spec, 1).is_err(), "one adapter set at a time");
    }
}
