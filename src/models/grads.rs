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
