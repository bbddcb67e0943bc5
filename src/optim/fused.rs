//! The optimizer step fused into the backward ("optimizer in backward", as torchtune's
//! `optimizer_in_bwd`): the gradients of each transformer block go to one block-sized
//! window, folded into AdamW's moments as soon as that block's backward is done; only the
//! parameters outside the blocks (embeddings, final norm, untied head, adapters, task head)
//! keep a gradient until the end of the backward, when the rest of the step runs and every
//! parameter is updated from its moments. The model never holds a whole gradient: for
//! GPT-2 124M, 498 MB of gradients become 158 MB (the tied embedding's 154 MB and the rest)
//! plus one block's 28 MB, held in the memory of the loss's logits chunk, which the blocks'
//! backward does not need (`GradView::lend`).
//!
//! The result is `forward_backward` + `AdamW::step`, bit for bit. What it cannot do: clip
//! by the global gradient norm (the norm is known only once every block is folded) or
//! accumulate micro-batches (each call is one whole step).
//!
//! Gradient layout (`ModelState::grad_slots`): [outer prefix | block 0 | ... | block L-1 |
//! outer suffix]; the blocks' ranges are adjacent because each block's parameters are
//! contiguous in the parameter table and the blocks follow each other.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::kernels::crossentropy::LossStats;
use crate::kernels::Real;
use crate::models::params::two_mut;
use crate::models::{Batch, CausalLm, GradSink};
use crate::optim::adamw::AdamW;
use crate::optim::clip::sum_of_squares;

/// The layout and buffers of the fused step, kept from one step to the next.
pub struct FusedBackward<F> {
    /// Gradient-layout range of each block's trainable parameters (empty when frozen).
    blocks: Vec<Range<usize>>,
    /// The blocks cover [lo, hi) of the gradient layout.
    lo: usize,
    hi: usize,
    /// The gradients of the block whose backward runs (`current`), in memory the model lends
    /// (`GradView::lend`) or allocated here.
    window: Vec<F>,
    widest: usize,
    /// The gradients outside the blocks: [0, lo) then [hi, total).
    outer: Vec<F>,
    current: Option<usize>,
    /// This step's sum of squared gradients so far, and the first block whose gradients
    /// were not finite (not folded, nor any block after it).
    sumsq: f64,
    nonfinite: Option<usize>,
}

/// Called on gradients that are final, before they are folded: each block's, then those
/// outside the blocks (data-parallel training sums them over the processes there, in place).
pub type Reduce<'a, F> = &'a mut (dyn FnMut(&mut [F]) + 'a);

/// What the backward writes gradients into in fused mode.
struct Fused<'a, 'r, F: Real> {
    bufs: &'a mut FusedBackward<F>,
    opt: &'a mut AdamW<F>,
    reduce: &'a mut Option<Reduce<'r, F>>,
}

impl<F: Real> GradSink<F> for Fused<'_, '_, F> {
    fn slot(&mut self, g: Range<usize>) -> &mut [F] {
        self.bufs.slot(g)
    }

    fn pair(&mut self, a: Range<usize>, b: Range<usize>) -> (&mut [F], &mut [F]) {
        self.bufs.pair(a, b)
    }

    fn begin_block(&mut self, l: usize) {
        self.bufs.begin_block(l);
    }

    fn end_block(&mut self, l: usize) {
        self.bufs.end_block(l, self.opt, self.reduce);
    }

    fn lend(&mut self, buf: Vec<F>) {
        self.bufs.use_for_window(buf);
    }

    fn reclaim(&mut self) -> Vec<F> {
        self.bufs.take_window()
    }
}

impl<F: Real> FusedBackward<F> {
    /// The layout of `model`'s trainable parameters (as its optimizer was built for).
    pub fn new(model: &dyn CausalLm<F>) -> Result<Self> {
        let state = model.state();
        let total = state.trainable_total();
        let blocks = state.block_grad_ranges(&model.block_params())?;
        let used: Vec<&Range<usize>> = blocks.iter().filter(|r| !r.is_empty()).collect();
        let (lo, hi) = match (used.first(), used.last()) {
            (Some(a), Some(b)) => (a.start, b.end),
            _ => (0, 0),
        };
        let widest = blocks.iter().map(|r| r.len()).max().unwrap_or(0);
        Ok(Self { blocks, lo, hi, window: Vec::new(), widest, outer: vec![F::zero(); total - (hi - lo)], current: None, sumsq: 0.0, nonfinite: None })
    }

    /// Which buffer holds gradient-layout range g, and where: (in the window?, range).
    fn resolve(&self, g: Range<usize>) -> (bool, Range<usize>) {
        if g.end <= self.lo {
            (false, g)
        } else if g.start >= self.hi {
            (false, self.lo + g.start - self.hi..self.lo + g.end - self.hi)
        } else {
            let l = self.current.expect("a block's gradient written outside begin_block/end_block");
            let b = &self.blocks[l];
            assert!(b.start <= g.start && g.end <= b.end, "block {l}'s backward wrote the gradient of another block");
            (true, g.start - b.start..g.end - b.start)
        }
    }

    fn slot(&mut self, g: Range<usize>) -> &mut [F] {
        match self.resolve(g) {
            (true, r) => &mut self.window[r],
            (false, r) => &mut self.outer[r],
        }
    }

    fn pair(&mut self, a: Range<usize>, b: Range<usize>) -> (&mut [F], &mut [F]) {
        let ((wa, ra), (wb, rb)) = (self.resolve(a), self.resolve(b));
        assert_eq!(wa, wb, "a pair of gradients split between a block and the outer parameters");
        two_mut(if wa { &mut self.window } else { &mut self.outer }, ra, rb)
    }

    fn use_for_window(&mut self, mut buf: Vec<F>) {
        buf.clear();
        buf.resize(self.widest, F::zero());
        self.window = buf;
    }

    fn take_window(&mut self) -> Vec<F> {
        std::mem::take(&mut self.window)
    }

    fn begin_block(&mut self, l: usize) {
        if self.window.len() < self.widest {
            self.window = vec![F::zero(); self.widest];
        }
        self.current = Some(l);
    }

    /// Block l's gradients are final: reduced (when `reduce` is given), into the moments
    /// (when they and every block's before were finite), and the window is zero again.
    fn end_block(&mut self, l: usize, opt: &mut AdamW<F>, reduce: &mut Option<Reduce<'_, F>>) {
        let r = self.blocks[l].clone();
        let g = &mut self.window[..r.len()];
        if let Some(reduce) = reduce {
            reduce(g);
        }
        let ss = sum_of_squares(g);
        if !ss.is_finite() {
            self.nonfinite.get_or_insert(l);
        }
        if self.nonfinite.is_none() {
            self.sumsq += ss;
            opt.fold_range(r, g);
        }
        g.fill(F::zero());
        self.current = None;
    }

    /// Forward, backward and one AdamW step of `model`, the step fused into the backward:
    /// the loss statistics and the gradients' global L2 norm (what clip_grad_norm would
    /// report, up to the order of the sums). The model's own gradient buffer is released
    /// (its gradients read as zero afterwards).
    ///
    /// Non-finite gradients: the blocks folded before the first non-finite one keep their
    /// moments' update (it cannot be undone), nothing else is folded, no parameter changes,
    /// and the error says so. A non-finite loss (with finite gradients, as an infinite
    /// cross-entropy has) is refused the same way, after every block was folded.
    ///
    /// `reduce` sees every gradient once it is final and before it is folded (`Reduce`).
    pub fn step(
        &mut self,
        model: &mut dyn CausalLm<F>,
        opt: &mut AdamW<F>,
        batch: &Batch<'_>,
        num_items: Option<f64>,
        mut reduce: Option<Reduce<'_, F>>,
    ) -> Result<(LossStats, f64)> {
        model.state_mut().release_grads();
        self.outer.fill(F::zero());
        (self.sumsq, self.nonfinite) = (0.0, None);
        // the model fails (bad input) before its first block's backward, or not at all
        let stats = model.backward_with(batch, num_items, Some(&mut Fused { bufs: self, opt, reduce: &mut reduce }))?;
        if let Some(reduce) = &mut reduce {
            reduce(&mut self.outer);
        }
        let outer_ss = sum_of_squares(&self.outer);
        let last = self.blocks.len().saturating_sub(1);
        // the plain loop refuses a step with a non-finite loss or gradient norm (Trainer); here
        // the blocks' moments cannot be taken back, so the error says how far the step went
        let (what, folded) = match self.nonfinite {
            Some(l) => (format!("the gradients of block {l} are"), format!("blocks {}..={last}, folded before it,", l + 1)),
            None if !outer_ss.is_finite() => {
                ("the gradients outside the blocks (embeddings, final norm, heads, adapters) are".into(), "every block".into())
            }
            None if !stats.loss_sum.is_finite() => (format!("the loss ({}) is", stats.loss_sum), "every block".into()),
            None => (String::new(), String::new()),
        };
        if !what.is_empty() {
            return Err(Error::NonFinite(format!(
                "{what} not finite (NaN or inf): no parameter was updated, but the optimizer moments of {folded} took \
                 this step's gradients"
            )));
        }
        let (lo, hi, total) = (self.lo, self.hi, self.outer.len() + self.hi - self.lo);
        opt.fold_range(0..lo, &self.outer[..lo]);
        opt.fold_range(hi..total, &self.outer[lo..]);
        opt.update_from_moments(&mut model.state_mut().params);
        Ok((stats, (self.sumsq + outer_ss).sqrt()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::models::{from_config, BoxedModel};
    use crate::optim::adamw::AdamWConfig;

    /// Three fused steps against three of forward_backward + AdamW::step from the same
    /// model: losses, parameters and moments equal bit for bit; `prepare` freezes or adds
    /// adapters on both sides first.
    fn fused_is_step(config: serde_json::Value, prepare: impl Fn(&mut BoxedModel), checkpointing: bool) {
        let ids: Vec<i64> = (0..12).map(|i| (i * 5 % 13) as i64).collect();
        let mask: Vec<i64> = (0..12).map(|k| i64::from(k != 6)).collect();
        let batch = Batch { ids: &ids, mask: Some(&mask), labels: None, b: 2, t: 6 };
        let make = || {
            let mut m = from_config(config.clone(), 1).unwrap();
            prepare(&mut m);
            m.state_mut().checkpointing = checkpointing;
            m
        };
        let (mut a, mut b) = (make(), make());
        let cfg = AdamWConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let no_decay: Vec<String> = a.state().table.infos().iter().map(|i| i.name.clone()).filter(|n| n.ends_with("bias")).collect();
        let opt = |m: &BoxedModel| AdamW::new(cfg.clone(), &m.state().table, &m.state().grad_slots(), &no_decay).unwrap();
        let (mut oa, mut ob) = (opt(&a), opt(&b));
        let mut fused = FusedBackward::new(b.as_ref()).unwrap();
        for _ in 0..3 {
            a.state_mut().zero_grad();
            let la = a.forward_backward(&batch, None).unwrap();
            let (p, g) = a.state_mut().params_and_grads();
            oa.step(p, g);
            let (lb, norm) = fused.step(b.as_mut(), &mut ob, &batch, None, None).unwrap();
            assert_eq!(la.loss_sum, lb.loss_sum);
            let want = crate::optim::clip::grad_norm(a.state_mut().grads_mut());
            assert!((norm - want).abs() <= 1e-12 * want, "gradient norm {norm} vs {want}");
        }
        assert!(a.state().params == b.state().params, "parameters differ");
        assert!(oa.exp_avg == ob.exp_avg && oa.exp_avg_sq == ob.exp_avg_sq, "moments differ");
        assert_eq!(oa.step_count(), 3);
        assert_eq!(ob.step_count(), 3);
        assert!(b.state_mut().grads_mut().iter().all(|&x| x == 0.0), "no gradient kept");
    }

    fn gpt2() -> serde_json::Value {
        json!({"model_type": "gpt2", "vocab_size": 13, "n_positions": 8, "n_embd": 8, "n_layer": 3, "n_head": 2,
            "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1})
    }

    #[test]
    fn gpt2_with_dropout_and_padding() {
        fused_is_step(gpt2(), |_| {}, false);
        fused_is_step(gpt2(), |_| {}, true);
    }

    #[test]
    fn frozen_block_and_adapters() {
        // block 1 frozen: its range is empty and the others still follow each other
        fused_is_step(gpt2(), |m| {
            let frozen: Vec<usize> = (0..m.state().table.infos().len())
                .filter(|&i| m.state().table.infos()[i].name.starts_with("transformer.h.1."))
                .collect();
            frozen.into_iter().for_each(|i| m.state_mut().set_trainable(i, false));
        }, false);
        // LoRA: the base is frozen, every trainable parameter is outside the blocks
        fused_is_step(gpt2(), |m| {
            let names: Vec<String> = m.lora_modules().1.iter().map(|x| x.name.clone()).collect();
            let spec = crate::models::lora::LoraSpec { r: 2, alpha: 4.0, dropout: 0.1, use_rslora: false };
            crate::models::attach_lora(m.as_mut(), &names, spec, 2).unwrap();
            crate::models::testing::randomise_lora_b(m.as_mut());
        }, false);
    }

    #[test]
    fn qwen2_untied_head() {
        let cfg = json!({"model_type": "qwen2", "vocab_size": 13, "hidden_size": 8, "intermediate_size": 10,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": false});
        fused_is_step(cfg, |_| {}, false);
    }

    #[test]
    fn bad_input_fails_before_touching_the_step() {
        let mut m = from_config(gpt2(), 1).unwrap();
        let mut opt = AdamW::new(AdamWConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            &m.state().table, &m.state().grad_slots(), &[]).unwrap();
        let mut fused = FusedBackward::new(m.as_ref()).unwrap();
        let before = m.state().params.clone();
        let ids = [1i64, 99];
        let bad = Batch { ids: &ids, mask: None, labels: None, b: 1, t: 2 };
        assert!(fused.step(m.as_mut(), &mut opt, &bad, None, None).is_err());
        assert!(m.state().params == before);
        assert_eq!(opt.step_count(), 0);
        assert!(opt.exp_avg.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn non_finite_gradients_update_nothing() {
        let mut m = from_config(gpt2(), 1).unwrap();
        let mut opt = AdamW::new(AdamWConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            &m.state().table, &m.state().grad_slots(), &[]).unwrap();
        let mut fused = FusedBackward::new(m.as_ref()).unwrap();
        let at = m.block_params()[1].start;
        m.state_mut().params[at] = f32::INFINITY;
        let before: Vec<u32> = m.state().params.iter().map(|x| x.to_bits()).collect();
        let ids = [1i64, 2, 3, 4];
        let batch = Batch { ids: &ids, mask: None, labels: None, b: 1, t: 4 };
        let e = fused.step(m.as_mut(), &mut opt, &batch, None, None).unwrap_err().to_string();
        assert!(e.contains("not finite") && e.contains("no parameter was updated"), "{e}");
        assert_eq!(m.state().params.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), before);
        assert_eq!(opt.step_count(), 0);
    }
}
