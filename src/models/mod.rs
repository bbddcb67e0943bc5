//! Model architectures, one file each, what they share (parameters, gradients, batches,
//! loading and saving weights), and the choice among them by `model_type`.

pub mod decode;
pub mod gpt2;
pub mod head;
pub mod llama;
pub mod lora;
pub mod params;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::config::{model_type, read_config_json, Gpt2Config, LlamaConfig};
use crate::error::{Error, Result};
use crate::io::atomic::{ensure_dir, write_atomic};
use crate::io::gguf::load_gguf;
use crate::io::safetensors::{f32_bytes, load_model_dir, save_file, OutTensor, RawTensor};
use crate::kernels::crossentropy::{LossStats, IGNORE_INDEX};
use crate::kernels::Real;
use crate::rng::SplitMix64;
use params::{two_mut, ParamTable};

/// The `model_type`s ferrotune can build.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2", "llama", "mistral", "qwen2"];

/// A batch of token ids (B, T), row-major, with an optional attention mask and labels.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub ids: &'a [i64],
    pub mask: Option<&'a [i64]>,
    pub labels: Option<&'a [i64]>,
    pub b: usize,
    pub t: usize,
}

impl Batch<'_> {
    /// Checks sizes, token ids, mask values and (unless a task head checks them itself,
    /// `token_labels` false) per-token labels against a vocabulary and a context.
    pub fn validate(&self, vocab: usize, max_positions: usize, token_labels: bool) -> Result<()> {
        let (b, t, v) = (self.b, self.t, vocab);
        if b == 0 || t == 0 {
            return Err(Error::Input(format!("empty batch: input_ids has shape ({b}, {t})")));
        }
        if self.ids.len() != b * t {
            return Err(Error::shape("input_ids", &[b, t], &[self.ids.len()]));
        }
        if t > max_positions {
            return Err(Error::Input(format!(
                "sequence length {t} exceeds the model's maximum of {max_positions} positions"
            )));
        }
        let check_ids = |what: &'static str, xs: &[i64], allow_ignore: bool| -> Result<()> {
            for (k, &id) in xs.iter().enumerate() {
                if (id < 0 || id as usize >= v) && !(allow_ignore && id == IGNORE_INDEX) {
                    return Err(Error::TokenOutOfRange { what, id, row: k / t, col: k % t, vocab: v });
                }
            }
            Ok(())
        };
        check_ids("token id", self.ids, false)?;
        if let Some(m) = self.mask {
            if m.len() != b * t {
                return Err(Error::Input(format!("attention_mask has {} elements but input_ids has shape ({b}, {t})", m.len())));
            }
            if let Some(k) = m.iter().position(|&x| x != 0 && x != 1) {
                return Err(Error::Input(format!("attention_mask must hold 0 or 1, got {} at [{}, {}]", m[k], k / t, k % t)));
            }
        }
        if let Some(l) = self.labels.filter(|_| token_labels) {
            if l.len() != b * t {
                return Err(Error::shape("labels", &[b, t], &[l.len()]));
            }
            check_ids("label", l, true)?;
        }
        Ok(())
    }

    /// Next-token targets (transformers' shift): targets[b, t] = labels[b, t + 1], -100 at
    /// the last position. Labels default to input_ids with -100 where the mask is 0.
    pub fn next_token_targets(&self, out: &mut [i64]) {
        let t = self.t;
        for k in 0..self.b * t {
            out[k] = if k % t + 1 == t {
                IGNORE_INDEX
            } else {
                match (self.labels, self.mask) {
                    (Some(l), _) => l[k + 1],
                    (None, Some(m)) if m[k + 1] == 0 => IGNORE_INDEX,
                    (None, _) => self.ids[k + 1],
                }
            };
        }
    }
}

/// What every architecture holds besides its layout and activations: the parameter table,
/// the flat parameter buffer, which parameters are trainable, the gradients of those only
/// (frozen parameters get no gradient memory and no gradient work), the train/eval mode,
/// the dropout generator and whether gradient checkpointing is on.
pub struct ModelState<F: Real> {
    pub table: ParamTable,
    pub params: Vec<F>,
    trainable: Vec<bool>,
    grad_at: Vec<Option<usize>>, // per parameter: its offset in `grads`, None when frozen
    grads: Vec<F>,               // trainable parameters in table order; empty until needed
    grad_version: u64,           // bumped whenever the set of trainable parameters changes
    pub training: bool,
    pub rng: SplitMix64,
    /// Gradient checkpointing (transformers' `gradient_checkpointing_enable`): the forward
    /// keeps each block's input only, and the backward runs each block's forward again
    /// (same dropout masks) right before its backward. Same gradients, bit for bit; block
    /// activations take one block's memory instead of every block's, for a second forward of
    /// every block but the last.
    pub checkpointing: bool,
}

/// Where a trainable parameter's gradient lives.
#[derive(Clone, Debug)]
pub struct GradSlot {
    pub index: usize,
    pub params: Range<usize>,
    pub grads: Range<usize>,
}

impl<F: Real> ModelState<F> {
    /// The zeroed parameter buffer of `table`; a ConfigError that states the size when the
    /// parameters cannot be held in memory (a config's dimensions decide it).
    pub fn new(table: ParamTable) -> Result<Self> {
        let largest = table.infos().iter().max_by_key(|p| p.range.len());
        let params = crate::alloc::try_filled(table.total(), F::zero()).map_err(|why| {
            let (name, shape) = largest.map_or(("none", &[][..]), |p| (p.name.as_str(), &p.shape[..]));
            Error::Config(format!(
                "the model's {} parameters {why} (largest: {name} {shape:?}); check the config's sizes",
                table.total()
            ))
        })?;
        let n = table.infos().len();
        let mut s = Self {
            table,
            params,
            trainable: vec![true; n],
            grad_at: Vec::new(),
            grads: Vec::new(),
            grad_version: 0,
            training: true,
            rng: SplitMix64::new(0),
            checkpointing: false,
        };
        s.relayout_grads();
        Ok(s)
    }

    fn relayout_grads(&mut self) {
        let mut off = 0;
        self.grad_at = self
            .table
            .infos()
            .iter()
            .zip(&self.trainable)
            .map(|(info, &on)| {
                on.then(|| {
                    let at = off;
                    off += info.range.len();
                    at
                })
            })
            .collect();
        self.grads = Vec::new();
        self.grad_version += 1;
    }

    /// Freezes or unfreezes parameter `index`. Changing the trainable set drops the
    /// accumulated gradients (like building a new optimizer in torch, it is a new setup).
    pub fn set_trainable(&mut self, index: usize, on: bool) {
        if self.trainable[index] != on {
            self.trainable[index] = on;
            self.relayout_grads();
        }
    }

    pub fn trainable(&self) -> &[bool] {
        &self.trainable
    }

    /// Changes whenever the trainable set changes (an optimizer checks it).
    pub fn grad_version(&self) -> u64 {
        self.grad_version
    }

    /// The trainable parameters and where their gradients are.
    pub fn grad_slots(&self) -> Vec<GradSlot> {
        self.table
            .infos()
            .iter()
            .enumerate()
            .filter_map(|(index, info)| {
                self.grad_at[index].map(|g| GradSlot { index, params: info.range.clone(), grads: g..g + info.range.len() })
            })
            .collect()
    }

    /// Number of scalars in trainable parameters.
    pub fn trainable_total(&self) -> usize {
        self.grad_slots().iter().map(|s| s.grads.len()).sum()
    }

    /// The gradients of the trainable parameters (allocated on first use).
    pub fn grads_mut(&mut self) -> &mut Vec<F> {
        let n = self.trainable_total();
        if self.grads.len() != n {
            self.grads = vec![F::zero(); n];
        }
        &mut self.grads
    }

    pub fn params_and_grads(&mut self) -> (&mut [F], &mut [F]) {
        self.grads_mut();
        (&mut self.params, &mut self.grads)
    }

    /// Parameters to read and gradients to write, addressed by parameter range: into the
    /// model's gradient buffer, or into `sink` (the optimizer step fused into the backward).
    pub fn grad_view<'a>(&'a mut self, sink: Option<&'a mut (dyn GradSink<F> + '_)>) -> (&'a [F], GradView<'a, F>) {
        if sink.is_none() {
            self.grads_mut();
        }
        let sink = sink.map(|s| s as &mut dyn GradSink<F>);
        (&self.params, GradView { grads: &mut self.grads, table: &self.table, grad_at: &self.grad_at, sink, lent: Vec::new() })
    }

    /// Frees the gradient buffer (it is allocated, zeroed, on next use).
    pub fn release_grads(&mut self) {
        self.grads = Vec::new();
    }

    pub fn zero_grad(&mut self) {
        self.grads.fill(F::zero());
    }

    /// Appends a trainable parameter (an adapter) and returns its range.
    pub fn add_param(&mut self, name: String, shape: &[usize], values: &[F]) -> Range<usize> {
        let range = self.table.push(name, shape);
        assert_eq!(range.len(), values.len(), "values for {shape:?}");
        self.params.extend_from_slice(values);
        self.trainable.push(true);
        self.relayout_grads();
        range
    }

    /// Drops the parameters from index `keep` on (adapters appended by `add_param`).
    pub fn truncate_params(&mut self, keep: usize) {
        self.table.truncate(keep);
        self.params.truncate(self.table.total());
        self.trainable.truncate(keep);
        self.relayout_grads();
    }

    /// Copies checkpoint tensors into the parameters. `rename` maps a checkpoint name to
    /// ours, or None for tensors that are not parameters (buffers, a tied lm_head).
    /// Parameters named in `optional` may be absent (a new task head keeps its init).
    pub fn load_tensors(
        &mut self,
        tensors: BTreeMap<String, RawTensor>,
        source: &Path,
        arch: &str,
        optional: &[&str],
        rename: impl Fn(&str) -> Option<String>,
    ) -> Result<()> {
        let mut seen = vec![false; self.table.infos().len()];
        for (name, raw) in tensors {
            let Some(ours) = rename(&name) else { continue };
            let Some(idx) = self.table.infos().iter().position(|p| p.name == ours) else {
                return Err(Error::checkpoint(source, format!("unexpected tensor {name:?} for a {arch} model")));
            };
            let info = &self.table.infos()[idx];
            if raw.shape != info.shape {
                return Err(Error::shape(format!("{name} in {}", source.display()), &info.shape, &raw.shape));
            }
            raw.convert_into::<F>(&name, &mut self.params[info.range.clone()])?;
            seen[idx] = true;
        }
        let infos = self.table.infos();
        if let Some(idx) = seen.iter().enumerate().position(|(i, s)| !s && !optional.contains(&infos[i].name.as_str())) {
            return Err(Error::MissingTensor { name: self.table.infos()[idx].name.clone(), path: Some(source.to_path_buf()) });
        }
        Ok(())
    }

    /// Fills weights with N(0, std(name)), or a constant where `std` says so.
    pub fn init(&mut self, seed: u64, value: impl Fn(&str) -> Init) {
        let mut rng = SplitMix64::new(seed);
        for info in self.table.infos() {
            let dst = &mut self.params[info.range.clone()];
            match value(&info.name) {
                Init::Const(c) => dst.fill(F::lit(c)),
                Init::Normal(std) => dst.iter_mut().for_each(|x| *x = F::lit(rng.next_normal() * std)),
            }
        }
        self.rng = SplitMix64::new(seed ^ 0x5EED_D80F_0000_0001);
    }

    /// Writes `config.json` and the first `n` parameters to `model.safetensors` (f32,
    /// transformers' key names), each file atomically.
    pub fn save_pretrained(&self, dir: &Path, config: &Value, n: usize) -> Result<()> {
        ensure_dir(dir)?;
        let infos = &self.table.infos()[..n];
        let bytes: Vec<Vec<u8>> = infos
            .iter()
            .map(|i| f32_bytes(&self.params[i.range.clone()].iter().map(|x| x.to_f32().unwrap()).collect::<Vec<_>>()))
            .collect();
        let tensors: Vec<OutTensor<'_>> = infos
            .iter()
            .zip(&bytes)
            .map(|(i, b)| OutTensor { name: i.name.clone(), dtype: safetensors::Dtype::F32, shape: i.shape.clone(), data: b })
            .collect();
        let meta = [("format".to_string(), "pt".to_string())].into_iter().collect();
        save_file(&dir.join("model.safetensors"), &tensors, Some(meta))?;
        let text = serde_json::to_string_pretty(config).expect("config serialises");
        write_atomic(&dir.join("config.json"), text.as_bytes())
    }
}

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

impl<F: Real> GradView<'_, F> {
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

/// How `ModelState::init` fills one parameter.
pub enum Init {
    Const(f64),
    Normal(f64),
}

/// The buffers of a set of activations that no longer fits the batch shape, handed to the
/// next set. Training on batches whose length varies (dynamic padding) would otherwise free
/// and map hundreds of MB at every step and pay for it in page faults and TLB shootdowns;
/// reused, the memory stays mapped and the model holds the largest shape it has seen.
pub(crate) struct Recycled<F> {
    free: Vec<Vec<F>>,
    /// The logits / loss-chunk buffer, which the head sizes itself.
    pub logits: Vec<F>,
}

impl<F> Default for Recycled<F> {
    fn default() -> Self {
        Recycled { free: Vec::new(), logits: Vec::new() }
    }
}

impl<F: Real> Recycled<F> {
    pub fn new(free: Vec<Vec<F>>, logits: Vec<F>) -> Self {
        Recycled { free, logits }
    }

    /// A zeroed buffer of `len` elements: the smallest free one that holds them, else the
    /// largest free one, grown, else a new one.
    pub fn take(&mut self, len: usize) -> Vec<F> {
        let cap = |i: &usize| self.free[*i].capacity();
        let fits = (0..self.free.len()).filter(|i| cap(i) >= len).min_by_key(cap);
        let mut v = match fits.or_else(|| (0..self.free.len()).max_by_key(cap)) {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        };
        v.clear();
        v.resize(len, F::zero());
        v
    }
}

/// Bytes held by buffers (their capacity, what the allocator gave them).
pub(crate) fn held<T>(bufs: &[&Vec<T>]) -> usize {
    bufs.iter().map(|v| v.capacity()).sum::<usize>() * std::mem::size_of::<T>()
}

pub(crate) fn add_inplace<F: Real>(dst: &mut [F], src: &[F]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

/// A causal language model whose forward and backward we own.
pub trait CausalLm<F: Real>: Send + Sync {
    fn state(&self) -> &ModelState<F>;
    fn state_mut(&mut self) -> &mut ModelState<F>;
    /// The config as transformers writes it in config.json.
    fn config_value(&self) -> Value;
    fn vocab_size(&self) -> usize;
    /// The KV-cached inference path of this architecture (decode.rs).
    fn as_decoder(&self) -> Option<&dyn decode::Decoder<F>> {
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
    /// `forward_backward`, the gradients going to `sink` when given (optim::fused). Input
    /// errors are found before the first block's backward.
    fn backward_with(&mut self, batch: &Batch<'_>, num_items: Option<f64>, sink: Option<&mut dyn GradSink<F>>) -> Result<LossStats>;
    /// The parameter-buffer range of each transformer block's parameters, in order.
    fn block_params(&self) -> Vec<Range<usize>>;

    /// The linear modules LoRA can adapt, and how many slots the architecture numbers.
    fn lora_modules(&self) -> (usize, Vec<lora::LoraModule>);
    fn lora(&self) -> Option<&lora::Lora>;
    fn set_lora(&mut self, lora: Option<lora::Lora>);

    /// Copies checkpoint tensors (transformers' names) into the parameters.
    fn load_tensors(&mut self, tensors: BTreeMap<String, RawTensor>, source: &Path) -> Result<()>;

    /// Writes the base model (adapters are saved apart, in PEFT's format, by the caller).
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let n = base_param_count(self).unwrap_or(self.state().table.infos().len());
        self.state().save_pretrained(dir, &self.config_value(), n)
    }
}

/// The scale of the loss gradient: 1 / (tokens counted in the whole optimizer step).
pub(crate) fn loss_scale(targets: &[i64], num_items: Option<f64>) -> Result<f64> {
    let counted = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
    if let Some(n) = num_items {
        if !(n.is_finite() && n > 0.0) {
            return Err(Error::Input(format!("num_items_in_batch must be a positive finite number, got {n}")));
        }
    }
    if counted == 0 {
        return Ok(0.0);
    }
    Ok(1.0 / num_items.unwrap_or(counted as f64))
}

pub type BoxedModel = Box<dyn CausalLm<f32>>;

/// Adds LoRA adapters to the named modules (every other parameter is frozen).
pub fn attach_lora<F: Real>(model: &mut dyn CausalLm<F>, names: &[String], spec: lora::LoraSpec, seed: u64) -> Result<()> {
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
    let lora = lora::Lora::attach(model.state_mut(), slots, chosen, spec, seed)?;
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
fn base_param_count<F: Real, M: CausalLm<F> + ?Sized>(model: &M) -> Option<usize> {
    let first = model.lora()?.sites().map(|s| s.a.start).min()?;
    model.state().table.infos().iter().position(|i| i.range.start == first)
}

/// Builds the architecture a config.json value names: initialised with `init_seed`, or with
/// zero weights (to be loaded) when it is None.
fn build(config: Value, init_seed: Option<u64>) -> Result<BoxedModel> {
    Ok(match model_type(&config)?.as_str() {
        "gpt2" => {
            let c = Gpt2Config::from_value(config)?;
            Box::new(match init_seed {
                Some(seed) => gpt2::Gpt2::from_config(c, seed)?,
                None => gpt2::Gpt2::empty(c)?,
            })
        }
        "llama" | "mistral" | "qwen2" => {
            let c = LlamaConfig::from_value(config)?;
            Box::new(match init_seed {
                Some(seed) => llama::Llama::from_config(c, seed)?,
                None => llama::Llama::empty(c)?,
            })
        }
        other => return Err(Error::UnsupportedModel(other.to_string(), SUPPORTED_MODEL_TYPES.join(", "))),
    })
}

/// Whether a checkpoint path is a GGUF file; otherwise it is a model directory, and any
/// other file is an error that says what is expected.
fn is_gguf(path: &Path) -> Result<bool> {
    if !path.exists() {
        return Err(Error::FileNotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        return Ok(false);
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        return Ok(true);
    }
    Err(Error::checkpoint(path, "this is a file; expected a model directory (config.json + model.safetensors) or a .gguf file"))
}

/// A fresh model with transformers' initialisation, from a config.json value.
pub fn from_config(config: Value, seed: u64) -> Result<BoxedModel> {
    build(config, Some(seed))
}

/// Loads weights into the model `config` describes (initialised with `seed` first, so that
/// parameters a checkpoint may lack, such as a new classification head, have transformers'
/// initialisation). The checkpoint is a model directory or a GGUF file.
pub fn from_pretrained_as(path: &Path, config: Value, seed: u64) -> Result<BoxedModel> {
    let gguf = is_gguf(path)?;
    let mut model = build(config, Some(seed))?;
    if gguf {
        let gguf = load_gguf(path)?;
        let tensors = gguf.tensors.into_iter().map(|(name, (shape, values))| (name, RawTensor::from_f32(shape, &values))).collect();
        model.load_tensors(tensors, path)?;
    } else {
        model.load_tensors(load_model_dir(path)?, path)?;
    }
    Ok(model)
}

/// Loads a Hugging Face model directory (config.json + safetensors weights), or a GGUF
/// file (dequantised into trainable f32 weights with Hugging Face names and layout).
pub fn from_pretrained(path: &Path) -> Result<BoxedModel> {
    if is_gguf(path)? {
        let gguf = load_gguf(path)?;
        let mut model = build(gguf.config, None)?;
        let tensors = gguf.tensors.into_iter().map(|(name, (shape, values))| (name, RawTensor::from_f32(shape, &values))).collect();
        model.load_tensors(tensors, path)?;
        return Ok(model);
    }
    let mut model = build(read_config_json(path)?, None)?;
    model.load_tensors(load_model_dir(path)?, path)?;
    Ok(model)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::{Batch, CausalLm};

    /// LoRA (r 2, dropout 0.1) on every module the architecture has, with random B matrices.
    pub fn attach_lora_everywhere<M: CausalLm<f32>>(m: &mut M) {
        let names: Vec<String> = m.lora_modules().1.iter().map(|x| x.name.clone()).collect();
        let spec = super::lora::LoraSpec { r: 2, alpha: 4.0, dropout: 0.1, use_rslora: false };
        super::attach_lora(m, &names, spec, 2).unwrap();
        randomise_lora_b(m);
    }

    /// Random values for the LoRA B matrices (zero at first, which would hide the adapters).
    pub fn randomise_lora_b<M: CausalLm<f32> + ?Sized>(m: &mut M) {
        let mut r = crate::rng::SplitMix64::new(4);
        for info in m.state().table.infos().to_vec() {
            if info.name.ends_with("lora_B.weight") {
                m.state_mut().params[info.range].iter_mut().for_each(|x| *x = r.next_f64() as f32 - 0.5);
            }
        }
    }

    /// Two accumulating forward_backward calls with gradient checkpointing off, then on, from
    /// the same dropout generator state: losses, gradients and the generator's state after
    /// must be equal bit for bit. Returns the activation bytes (off, on).
    pub fn checkpointing_is_exact<M: CausalLm<f32>>(m: &mut M, batch: &Batch<'_>) -> (usize, usize) {
        let start = m.state().rng.state();
        let run = |m: &mut M, on: bool| {
            m.state_mut().checkpointing = on;
            m.state_mut().rng.set_state(start);
            m.state_mut().zero_grad();
            let losses: Vec<f64> = (0..2).map(|_| m.forward_backward(batch, None).unwrap().loss_sum).collect();
            (losses, m.state_mut().grads_mut().clone(), m.state().rng.state(), m.activation_bytes())
        };
        let (loss, grads, rng, bytes) = run(m, false);
        let (ck_loss, ck_grads, ck_rng, ck_bytes) = run(m, true);
        assert_eq!(loss, ck_loss);
        assert!(grads == ck_grads, "gradients differ with checkpointing");
        assert!(grads.iter().any(|&x| x != 0.0));
        assert_eq!(rng, ck_rng);
        (bytes, ck_bytes)
    }

    /// Batches of changing shapes (B, T) through one model, whose activations reuse the
    /// buffers of the previous shape, give bit for bit the losses, gradients and logits of a
    /// fresh model (same weights) given only that batch; a smaller shape keeps the buffers.
    pub fn recycled_activations_are_exact<M: CausalLm<f32>>(make: impl Fn() -> M) {
        let mut m = make();
        let shapes = [(2usize, 6usize), (1, 3), (3, 5), (2, 6), (1, 1)];
        for (step, &(b, t)) in shapes.iter().enumerate() {
            let ids: Vec<i64> = (0..b * t).map(|i| ((i * 7 + step) % 11) as i64).collect();
            let batch = Batch { ids: &ids, mask: None, labels: None, b, t };
            let mut fresh = make();
            let run = |m: &mut M| {
                m.state_mut().zero_grad();
                let loss = m.forward_backward(&batch, None).unwrap().loss_sum;
                m.forward(&batch).unwrap();
                (loss, m.state_mut().grads_mut().clone(), m.logits().to_vec())
            };
            let (held, got) = (m.activation_bytes(), run(&mut m));
            assert!(got == run(&mut fresh), "step {step}, shape ({b}, {t}): differs from a fresh model");
            if step > 0 && b * t < shapes[step - 1].0 * shapes[step - 1].1 {
                // all float buffers kept (the small index buffers and rotary tables are resized)
                let now = m.activation_bytes();
                assert!(10 * now >= 9 * held, "step {step}: {now} bytes after a smaller shape, {held} before");
            }
        }
    }

    /// One backward, then central differences in f64 for every trainable parameter:
    /// returns (max |analytic - numeric|, max |analytic|).
    pub fn gradient_error<M: CausalLm<f64>>(m: &mut M, batch: &Batch<'_>) -> (f64, f64) {
        m.state_mut().zero_grad();
        m.forward_backward(batch, None).unwrap();
        let analytic = m.state_mut().grads_mut().clone();
        let h = 1e-6;
        let mut worst = 0.0f64;
        for slot in m.state().grad_slots() {
            for (k, pi) in slot.params.clone().enumerate() {
                let orig = m.state().params[pi];
                let loss_at = |x: f64, m: &mut M| {
                    m.state_mut().params[pi] = x;
                    m.forward(batch).unwrap();
                    let s = m.loss_stats();
                    s.loss_sum / s.count as f64
                };
                let num = (loss_at(orig + h, m) - loss_at(orig - h, m)) / (2.0 * h);
                m.state_mut().params[pi] = orig;
                worst = worst.max((num - analytic[slot.grads.start + k]).abs());
            }
        }
        (worst, analytic.iter().fold(0.0f64, |a, b| a.max(b.abs())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_items_must_be_positive_and_finite() {
        let targets = [3, IGNORE_INDEX, 5];
        assert_eq!(loss_scale(&targets, None).unwrap(), 0.5);
        assert_eq!(loss_scale(&targets, Some(8.0)).unwrap(), 0.125);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = loss_scale(&targets, Some(bad)).unwrap_err().to_string();
            assert!(e.contains("num_items_in_batch must be a positive finite number"), "{e}");
        }
        // checked even when the micro-batch counts no token
        assert!(loss_scale(&[IGNORE_INDEX], Some(f64::NAN)).is_err());
    }

    #[test]
    fn recycled_buffers_are_zeroed_and_reused() {
        let mut pool = Recycled::<f32>::new(vec![vec![7.0; 10], vec![5.0; 100], vec![3.0; 40]], Vec::new());
        let ptr40 = pool.free[2].as_ptr();
        let v = pool.take(30); // the smallest that holds 30: the 40
        assert_eq!((v.len(), v.as_ptr()), (30, ptr40));
        assert!(v.iter().all(|&x| x == 0.0));
        let w = pool.take(500); // none holds 500: the largest (100) grows
        assert!(w.len() == 500 && w.iter().all(|&x| x == 0.0) && pool.free.len() == 1);
        assert_eq!(pool.take(3).capacity(), 10);
        assert_eq!(pool.take(3).len(), 3); // nothing left: a new one
    }

    #[test]
    fn a_model_larger_than_memory_is_a_config_error() {
        let mut table = ParamTable::default();
        table.push("wte".into(), &[1 << 40, 1 << 30]);
        let e = ModelState::<f32>::new(table).err().expect("refused").to_string();
        assert!(e.contains("more than this machine's") && e.contains("wte"), "{e}");
    }
}
