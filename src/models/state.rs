//! What every architecture holds besides its layout and activations: the parameters, which
//! of them train, their gradients, and how they are initialised, loaded and saved.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::atomic::{ensure_dir, write_atomic};
use crate::io::safetensors::{f32_bytes, save_file, OutTensor, RawTensor};
use crate::kernels::Real;
use crate::models::grads::{GradSink, GradView};
use crate::models::params::ParamTable;
use crate::rng::SplitMix64;

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
        (&self.params, GradView::new(&mut self.grads, &self.table, &self.grad_at, sink))
    }

    /// The gradient-layout range of each block's trainable parameters (empty when the block
    /// is frozen), given each block's parameter range (`CausalLm::block_params`). The layout
    /// is [outer prefix | block 0 | ... | block L-1 | outer suffix]: an error says which
    /// block breaks it.
    pub fn block_grad_ranges(&self, block_params: &[Range<usize>]) -> Result<Vec<Range<usize>>> {
        let slots = self.grad_slots();
        let mut blocks: Vec<Range<usize>> = Vec::with_capacity(block_params.len());
        for (l, params) in block_params.iter().enumerate() {
            let inside: Vec<_> = slots.iter().filter(|s| params.start <= s.params.start && s.params.end <= params.end).collect();
            let r = match (inside.first(), inside.last()) {
                (Some(a), Some(b)) => a.grads.start..b.grads.end,
                _ => 0..0,
            };
            if r.len() != inside.iter().map(|s| s.grads.len()).sum::<usize>() {
                return Err(Error::Input(format!("block {l}'s trainable parameters are not contiguous")));
            }
            blocks.push(r);
        }
        let used: Vec<&Range<usize>> = blocks.iter().filter(|r| !r.is_empty()).collect();
        if used.windows(2).any(|w| w[0].end != w[1].start) {
            return Err(Error::Input("the blocks' gradients do not follow each other".into()));
        }
        Ok(blocks)
    }

    /// Moves the gradient buffer (allocated, zeroed, when needed) out of the model, for a
    /// backward that writes it through a `GradSink` (`Watched`); `restore_grads` puts it back.
    pub fn take_grads(&mut self) -> Vec<F> {
        std::mem::take(self.grads_mut())
    }

    pub fn restore_grads(&mut self, grads: Vec<F>) {
        self.grads = grads;
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

/// How `ModelState::init` fills one parameter.
pub enum Init {
    Const(f64),
    Normal(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_larger_than_memory_is_a_config_error() {
        let mut table = ParamTable::default();
        table.push("wte".into(), &[1 << 40, 1 << 30]);
        let e = ModelState::<f32>::new(table).err().expect("refused").to_string();
        assert!(e.contains("more than this machine's") && e.contains("wte"), "{e}");
    }
}
