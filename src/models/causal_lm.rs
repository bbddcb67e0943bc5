//! The trait every architecture implements: forward, loss, backward (into the model's
//! gradients or a `GradSink`), LoRA slots, loading and saving.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::error::Result;
use crate::io::safetensors::RawTensor;
use crate::kernels::crossentropy::LossStats;
use crate::kernels::Real;
use crate::models::batch::Batch;
use crate::models::decode::Decoder;
use crate::models::grads::{GradSink, Watched};
use crate::models::lora::{base_param_count, Lora, LoraModule};
use crate::models::state::ModelState;

/// A causal language model whose forward and backward we own.
pub trait CausalLm<F: Real>: Send + Sync {
    fn state(&self) -> &ModelState<F>;
    fn state_mut(&mut self) -> &mut ModelState<F>;
    /// The config as transformers writes it in config.json.
    fn config_value(&self) -> Value;
    fn vocab_size(&self) -> usize;
    /// The KV-cached inference path of this architecture (decode.rs).
    fn as_decoder(&self) -> Option<&dyn Decoder<F>> {
        None
    }
    /// Full forward: fills the activations and the (B, T, V) logits.
    fn forward(&mut self, batch: &Batch<'_>) -> Result<()>;
    /// The logits of the last forward: (B, T, V), or (B, L) with a classification head.
    fn logits(&self) -> &[F];
    /// The logits of the last forward, moved out where they are the model's own (B, T, V)
    /// buffer (no copy of 100+ MB; the next forward allocates it again), else copied.
    fn take_logits(&mut self) -> Vec<F> {
        self.logits().to_vec()
    }
    /// L when the model has a sequence-classification head (labels are then one per row).
    fn num_labels(&self) -> Option<usize> {
        None
    }
    /// Loss statistics of the last forward (the logits are left intact).
    fn loss_stats(&self) -> LossStats;
    /// Bytes held by the activation buffers of the last forward (0 before the first):
    /// everything the backward reads, adapters' and head's included, and the gradient
    /// scratch of the backward. Parameters, gradients and optimizer state are not counted.
    fn activation_bytes(&self) -> usize;
    /// Forward, loss and backward; gradients are *added* to the gradient buffers. The
    /// gradient is that of (sum of token losses) / `num_items` (default: this batch's
    /// counted tokens), so micro-batches of one optimizer step weight every token equally.
    fn forward_backward(&mut self, batch: &Batch<'_>, num_items: Option<f64>) -> Result<LossStats> {
        self.backward_with(batch, num_items, None)
    }
    /// `forward_backward`, calling `done(l)` as soon as block l's gradients are final in the
    /// gradient buffer (`Watched`; blocks go from the last to the first).
    fn forward_backward_watched(&mut self, batch: &Batch<'_>, num_items: Option<f64>, done: &mut dyn FnMut(usize)) -> Result<LossStats> {
        let mut grads = self.state_mut().take_grads();
        let out = self.backward_with(batch, num_items, Some(&mut Watched::new(&mut grads, done)));
        self.state_mut().restore_grads(grads);
        out
    }
    /// `forward_backward`, the gradients going to `sink` when given (optim::fused). Input
    /// errors are found before the first block's backward.
    fn backward_with(&mut self, batch: &Batch<'_>, num_items: Option<f64>, sink: Option<&mut dyn GradSink<F>>) -> Result<LossStats>;
    /// The parameter-buffer range of each transformer block's parameters, in order.
    fn block_params(&self) -> Vec<Range<usize>>;

    /// The linear modules LoRA can adapt, and how many slots the architecture numbers.
    fn lora_modules(&self) -> (usize, Vec<LoraModule>);
    fn lora(&self) -> Option<&Lora>;
    fn set_lora(&mut self, lora: Option<Lora>);

    /// Copies checkpoint tensors (transformers' names) into the parameters.
    fn load_tensors(&mut self, tensors: BTreeMap<String, RawTensor>, source: &Path) -> Result<()>;

    /// Writes the base model (adapters are saved apart, in PEFT's format, by the caller).
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let n = base_param_count(self).unwrap_or(self.state().table.infos().len());
        self.state().save_pretrained(dir, &self.config_value(), n)
    }
}

pub type BoxedModel = Box<dyn CausalLm<f32>>;
