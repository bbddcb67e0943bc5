//! The backward's gradients, addressed by parameter range: the model's own gradient buffer,
//! or a `GradSink` that takes them instead (the optimizer step fused into the backward).

use std::ops::Range;

use crate::kernels::Real;
use crate::models::params::{two_mut, ParamTable};

/// What takes the backward's gradients instead of the model's gradient buffer: the optimizer
/// step fused into the backward (optim::fused) implements it, so that the models do not
/// depend on the optimizer. Ranges are in the gradient layout (`ModelState::grad_slots`).
pub trait GradSink<F: Real> {
    /// The gradient at layout range `g`.
    fn slot(&mut self, g: Range<usize>) -> &mut [F];
    /// The gradients at two disjoint layout ranges.
    fn pair(&mut self, a: Range<usize>, b: Range<usize>) -> (&mut [F], &mut [F]);
    /// Block l's backward starts.
    fn begin_block(&mut self, l: usize);
    /// Block l's backward is done: its parameters' gradients are final.
    fn end_block(&mut self, l: usize);
    /// Memory the backward does not need during the blocks (`GradView::lend`).
    fn lend(&mut self, buf: Vec<F>);
    fn reclaim(&mut self) -> Vec<F>;
}

/// The gradient buffers seen through parameter ranges: `get` gives the gradient of the
/// parameter whose range in the parameter buffer is `r`, or None when it is frozen. The
/// architectures bracket each block's backward by `begin_block`/`end_block`, where a
/// `GradSink` (the fused optimizer step) takes the block's finished gradients.
pub struct GradView<'a, F: Real> {
    grads: &'a mut [F],
    table: &'a ParamTable,
    grad_at: &'a [Option<usize>],
    sink: Option<&'a mut dyn GradSink<F>>,
    lent: Vec<F>,
}

impl<'a, F: Real> GradView<'a, F> {
    /// `grads` laid out by `grad_at` (per parameter of `table`: its offset, None when
    /// frozen), unless `sink` takes the gradients.
    pub(super) fn new(grads: &'a mut [F], table: &'a ParamTable, grad_at: &'a [Option<usize>], sink: Option<&'a mut dyn GradSink<F>>) -> Self {
        GradView { grads, table, grad_at, sink, lent: Vec::new() }
    }

    fn locate(&self, r: &Range<usize>) -> Option<Range<usize>> {
        let idx = self
            .table
            .infos()
            .binary_search_by_key(&r.start, |i| i.range.start)
            .unwrap_or_else(|_| panic!("no parameter starts at {}", r.start));
        assert_eq!(self.table.infos()[idx].range.end, r.end, "range {r:?} is not one parameter");
        self.grad_at[idx].map(|g| g..g + r.len())
    }

    fn slot(&mut self, g: Range<usize>) -> &mut [F] {
        match &mut self.sink {
            Some(s) => s.slot(g),
            None => &mut self.grads[g],
        }
    }

    pub fn get(&mut self, r: &Range<usize>) -> Option<&mut [F]> {
        self.locate(r).map(|g| self.slot(g))
    }

    /// The gradients of two different parameters at once.
    pub fn pair(&mut self, a: &Range<usize>, b: &Range<usize>) -> (Option<&mut [F]>, Option<&mut [F]>) {
        match (self.locate(a), self.locate(b)) {
            (Some(ga), Some(gb)) => {
                let (x, y) = match &mut self.sink {
                    Some(s) => s.pair(ga, gb),
                    None => two_mut(self.grads, ga, gb),
                };
                (Some(x), Some(y))
            }
            (Some(ga), None) => (Some(self.slot(ga)), None),
            (None, Some(gb)) => (None, Some(self.slot(gb))),
            (None, None) => (None, None),
        }
    }

    /// Block l's backward starts.
    pub fn begin_block(&mut self, l: usize) {
        if let Some(s) = &mut self.sink {
            s.begin_block(l);
        }
    }

    /// Block l's backward is done: its parameters' gradients are final.
    pub fn end_block(&mut self, l: usize) {
        if let Some(s) = &mut self.sink {
            s.end_block(l);
        }
    }

    /// Lends a buffer the backward no longer needs during the blocks (the loss backward's
    /// logits chunk) to hold the fused step's block gradients; `reclaim` gives it back.
    pub fn lend(&mut self, buf: Vec<F>) {
        match &mut self.sink {
            Some(s) => s.lend(buf),
            None => self.lent = buf,
        }
    }

    pub fn reclaim(&mut self) -> Vec<F> {
        match &mut self.sink {
            Some(s) => s.reclaim(),
            None => std::mem::take(&mut self.lent),
        }
    }
}

/// The model's gradient buffer (taken out of the model for one backward) as a `GradSink` that
/// calls `done(l)` as soon as block l's gradients are final: data-parallel training
/// (ferrotune.distributed) starts reducing them there while the earlier blocks' backward
/// runs. Nothing writes a block's gradients after its `end_block`: a block's backward writes
/// its own parameters' gradients only (optim::fused asserts it), and the tied embedding's
/// gradient, written before and after the blocks, is outside every block.
pub struct Watched<'a, F> {
    grads: &'a mut [F],
    done: &'a mut dyn FnMut(usize),
    lent: Vec<F>,
}

impl<'a, F: Real> Watched<'a, F> {
    pub fn new(grads: &'a mut [F], done: &'a mut dyn FnMut(usize)) -> Self {
        Watched { grads, done, lent: Vec::new() }
    }
}

impl<F: Real> GradSink<F> for Watched<'_, F> {
    fn slot(&mut self, g: Range<usize>) -> &mut [F] {
        &mut self.grads[g]
    }

    fn pair(&mut self, a: Range<usize>, b: Range<usize>) -> (&mut [F], &mut [F]) {
        two_mut(self.grads, a, b)
    }

    fn begin_block(&mut self, _l: usize) {}

    fn end_block(&mut self, l: usize) {
        (self.done)(l);
    }

    fn lend(&mut self, buf: Vec<F>) {
        self.lent = buf;
    }

    fn reclaim(&mut self) -> Vec<F> {
        std::mem::take(&mut self.lent)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::models::{from_config, Batch, BoxedModel};

    /// The gradient buffer as a sink that copies each block's gradients at its end_block.
    struct Snapshots {
        grads: Vec<f32>,
        blocks: Vec<Range<usize>>,
        seen: Vec<(usize, Vec<f32>)>,
        lent: Vec<f32>,
    }

    impl GradSink<f32> for Snapshots {
        fn slot(&mut self, g: Range<usize>) -> &mut [f32] {
            &mut self.grads[g]
        }
        fn pair(&mut self, a: Range<usize>, b: Range<usize>) -> (&mut [f32], &mut [f32]) {
            two_mut(&mut self.grads, a, b)
        }
        fn begin_block(&mut self, _l: usize) {}
        fn end_block(&mut self, l: usize) {
            self.seen.push((l, self.grads[self.blocks[l].clone()].to_vec()));
        }
        fn lend(&mut self, buf: Vec<f32>) {
            self.lent = buf;
        }
        fn reclaim(&mut self) -> Vec<f32> {
            std::mem::take(&mut self.lent)
        }
    }

    /// What data-parallel training relies on to reduce a block's gradients while the backward
    /// goes on: after block l's end_block nothing writes its gradients again (tied embedding,
    /// dropout, padding and gradient checkpointing included), the blocks end from the last to
    /// the first, and `forward_backward_watched` gives `forward_backward`'s gradients.
    #[test]
    fn block_gradients_are_final_at_end_block() {
        let gpt2 = json!({"model_type": "gpt2", "vocab_size": 13, "n_positions": 8, "n_embd": 8, "n_layer": 3,
            "n_head": 2, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1});
        let qwen2 = json!({"model_type": "qwen2", "vocab_size": 13, "hidden_size": 8, "intermediate_size": 10,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": false});
        let ids: Vec<i64> = (0..12).map(|i| (i * 5 % 13) as i64).collect();
        let mask: Vec<i64> = (0..12).map(|k| i64::from(k != 6)).collect();
        let batch = Batch { ids: &ids, mask: Some(&mask), labels: None, b: 2, t: 6 };
        for (config, checkpointing) in [(gpt2.clone(), false), (gpt2, true), (qwen2, false)] {
            let make = || -> BoxedModel {
                let mut m = from_config(config.clone(), 1).unwrap();
                m.state_mut().checkpointing = checkpointing;
                m
            };
            let mut m = make();
            let blocks = m.state().block_grad_ranges(&m.block_params()).unwrap();
            let n = m.state().trainable_total();
            let mut sink = Snapshots { grads: vec![0.0; n], blocks: blocks.clone(), seen: Vec::new(), lent: Vec::new() };
            m.backward_with(&batch, None, Some(&mut sink)).unwrap();
            let order: Vec<usize> = sink.seen.iter().map(|(l, _)| *l).collect();
            assert_eq!(order, (0..blocks.len()).rev().collect::<Vec<_>>());
            for (l, at_end) in &sink.seen {
                assert!(at_end == &sink.grads[blocks[*l].clone()], "block {l}'s gradients changed after its end_block");
                assert!(at_end.iter().any(|&x| x != 0.0));
            }

            let (mut a, mut b) = (make(), make());
            a.forward_backward(&batch, None).unwrap();
            let mut done = Vec::new();
            b.forward_backward_watched(&batch, None, &mut |l| done.push(l)).unwrap();
            assert_eq!(done, order);
            assert!(a.state_mut().grads_mut() == b.state_mut().grads_mut(), "watched gradients differ");
            assert!(sink.grads == *a.state_mut().grads_mut(), "the sink's gradients differ");
        }
    }
}
