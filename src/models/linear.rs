//! A linear module of a block, through which every product of the architectures goes: the
//! base product in the weight's layout, the LoRA branch of each adapted part and the routing
//! of their gradients, for the training forward, its backward and decoding. The architectures
//! name their modules once, in their layout; no call site numbers LoRA slots.
//!
//! A module may be several parameters whose outputs are concatenated (Llama's q | k | v and
//! gate | up, adjacent in the parameter buffer): one product for all, and one LoRA slot and
//! one weight gradient per part.
//!
//! Shapes: N = rows (B * T), IN / OUT = the module's input / output features (every part's).

use std::ops::Range;

use crate::kernels::matmul::{linear_backward_input, linear_backward_weight, linear_forward, matmul_backward, matmul_forward};
use crate::kernels::Real;
use crate::models::decode::{MatmulWeight, Weights};
use crate::models::grads::GradView;
use crate::models::lora::{Lora, LoraModule, SiteActs};
use crate::rng::SplitMix64;

/// One parameter of a module: its weight, its bias and its LoRA slot.
struct LinearPart {
    /// transformers' module name, e.g. "transformer.h.0.attn.c_attn" or
    /// "model.layers.0.self_attn.q_proj".
    name: String,
    w: Range<usize>,
    b: Option<Range<usize>>,
    slot: usize,
}

impl LinearPart {
    /// The gradients of the weight and the bias (None where frozen or absent).
    fn grads<'g, F: Real>(&self, g: &'g mut GradView<'_, F>) -> (Option<&'g mut [F]>, Option<&'g mut [F]>) {
        match &self.b {
            Some(b) => g.pair(&self.w, b),
            None => (g.get(&self.w), None),
        }
    }
}

/// out (N, OUT) = x (N, IN) @ W + b for a Conv1D weight (IN, OUT), x @ W^T + b for an
/// nn.Linear weight (OUT, IN), plus the LoRA branches of its parts.
pub struct Linear {
    /// The weight (and bias) of every part, which are adjacent in the parameter buffer.
    w: Range<usize>,
    b: Option<Range<usize>>,
    /// Conv1D layout (IN, OUT) as GPT-2 stores it, instead of nn.Linear's (OUT, IN).
    conv1d: bool,
    in_f: usize,
    out_f: usize,
    parts: Vec<LinearPart>,
    /// Index of the first part's adapter activations in the block's `SiteActs`.
    acts: usize,
}

impl Linear {
    /// A module of one parameter; its LoRA slot is `slot`, its adapter activations the
    /// block's `acts`-th.
    #[allow(clippy::too_many_arguments)]
    pub fn new(name: String, w: Range<usize>, b: Option<Range<usize>>, conv1d: bool, in_f: usize, out_f: usize, slot: usize, acts: usize) -> Self {
        let parts = vec![LinearPart { name, w: w.clone(), b: b.clone(), slot }];
        Linear { w, b, conv1d, in_f, out_f, parts, acts }
    }

    /// An nn.Linear module of adjacent parts (their weights, then their biases when every
    /// part has one), with slots and adapter activations numbered from `slot` and `acts`.
    pub fn fused(parts: Vec<(String, Range<usize>, Option<Range<usize>>)>, in_f: usize, slot: usize, acts: usize) -> Self {
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        let w = first.1.start..last.1.end;
        let b = first.2.as_ref().zip(last.2.as_ref()).map(|(f, l)| f.start..l.end);
        let out_f = w.len() / in_f;
        let parts = parts.into_iter().enumerate().map(|(k, (name, w, b))| LinearPart { name, w, b, slot: slot + k }).collect();
        Linear { w, b, conv1d: false, in_f, out_f, parts, acts }
    }

    /// Where the module's parameters end in the parameter buffer.
    pub fn end(&self) -> usize {
        self.b.as_ref().map_or(self.w.end, |b| b.end.max(self.w.end))
    }

    /// The first output column of `part`.
    fn col(&self, part: &LinearPart) -> usize {
        (part.w.start - self.w.start) / self.in_f
    }

    /// The parts as LoRA adapts them.
    pub fn lora_modules(&self) -> impl Iterator<Item = LoraModule> + '_ {
        self.parts.iter().map(|part| LoraModule {
            name: part.name.clone(),
            slot: part.slot,
            in_f: self.in_f,
            out_f: part.w.len() / self.in_f,
            weight: part.w.clone(),
            conv1d: self.conv1d,
            out_col: self.col(part),
            out_rs: self.out_f,
        })
    }

    /// The weight as decoding multiplies by it (one product for every part).
    pub fn matmul_weight(&self) -> MatmulWeight {
        MatmulWeight { range: self.w.clone(), n: self.out_f, k: self.in_f, conv1d: self.conv1d }
    }

    /// Whether a part has an adapter.
    pub fn adapted(&self, lora: Option<&Lora>) -> bool {
        lora.is_some_and(|lo| self.parts.iter().any(|part| lo.adapts(part.slot)))
    }

    /// out (N, OUT) = x (N, IN) @ W + b, then each adapted part's LoRA branch added to its
    /// columns, which saves in `acts` (the block's) what the backward needs and draws its
    /// dropout mask from `rng`, part after part. Without `product` (checkpointing's second
    /// run, which wants only `acts`) the base product is skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<F: Real>(
        &self,
        p: &[F],
        lora: Option<&Lora>,
        acts: &mut [SiteActs<F>],
        x: &[F],
        out: &mut [F],
        n: usize,
        train: bool,
        rng: &mut SplitMix64,
        product: bool,
    ) {
        if product {
            let (w, bias) = (&p[self.w.clone()], self.b.clone().map(|r| &p[r]));
            if self.conv1d {
                matmul_forward(out, x, w, bias, n, self.in_f, self.out_f);
            } else {
                linear_forward(out, x, w, bias, n, self.in_f, self.out_f);
            }
        }
        if let Some(lo) = lora {
            for (k, part) in self.parts.iter().enumerate() {
                lo.forward(part.slot, &mut acts[self.acts + k], p, x, out, n, train, rng);
            }
        }
    }

    /// Backward of `forward`: dinp (N, IN) is overwritten with dout (N, OUT) @ W^T plus the
    /// adapters' share; the gradients of the trainable weights, biases and adapters are
    /// added to.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<F: Real>(
        &self,
        p: &[F],
        lora: Option<&Lora>,
        acts: &[SiteActs<F>],
        g: &mut GradView<'_, F>,
        x: &[F],
        dout: &[F],
        dinp: &mut [F],
        n: usize,
    ) {
        let w = &p[self.w.clone()];
        if self.conv1d {
            let [part] = &self.parts[..] else { panic!("a Conv1D module is one parameter") };
            let (dw, db) = part.grads(g);
            matmul_backward(dinp, dw, db, dout, x, w, n, self.in_f, self.out_f);
        } else {
            linear_backward_input(dinp, dout, w, n, self.in_f, self.out_f);
            for part in &self.parts {
                let col = self.col(part);
                let (dw, db) = part.grads(g);
                linear_backward_weight(dw, db, &dout[col..], self.out_f, x, n, self.in_f, part.w.len() / self.in_f);
            }
        }
        if let Some(lo) = lora {
            for (k, part) in self.parts.iter().enumerate() {
                lo.backward(part.slot, &acts[self.acts + k], p, g, x, dout, dinp, n);
            }
        }
    }

    /// Decoding's forward: out (N, OUT) = x (N, IN) @ W + b through `w` (the parameters or
    /// their bf16 copies), plus the adapters (no dropout, nothing saved).
    pub fn decode<F: Real>(&self, w: &Weights<'_, F>, lora: Option<&Lora>, x: &[F], out: &mut [F], n: usize) {
        let bias = self.b.clone().map(|r| &w.p[r]);
        w.product(out, x, self.w.clone(), bias, (n, self.in_f, self.out_f), self.conv1d);
        if let Some(lo) = lora {
            for part in &self.parts {
                lo.apply(part.slot, w.p, x, out, n);
            }
        }
    }
}
