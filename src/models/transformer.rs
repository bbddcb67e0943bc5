//! The decoder-only transformer every family shares, written once: token (and learned
//! position) embeddings, a stack of blocks, a final norm and a head (the language-model
//! head, tied or not, or a sequence-classification head). It owns the parameters, the
//! activations, LoRA and gradient checkpointing, and runs the trunk loop, the checkpoint
//! recompute, the fused optimizer's per-block bracketing, the loss and the decoding forward.
//!
//! A family (gpt2.rs, llama.rs) provides only what differs: its `Block` (the parameters,
//! activations, forward, backward and decoding step of one transformer block) and its
//! config mapping. `Transformer<F, B>` is monomorphised per family: no dynamic dispatch
//! between the blocks' kernels.
//!
//! Shapes: B = batch, T = time, C = hidden size, V = vocab, N = B * T, L = blocks.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::safetensors::RawTensor;
use crate::kernels::crossentropy::{LossStats, IGNORE_INDEX};
use crate::kernels::dropout::{dropout_apply, Dropout};
use crate::kernels::embedding::{embedding_backward, embedding_forward};
use crate::kernels::layernorm::{layernorm_backward, layernorm_forward};
use crate::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::kernels::Real;
use crate::models::decode::{Decoder, DecoderDims, HalfWeights, KvCache, MatmulWeight, Scratch, Weights};
use crate::models::head::{head_forward, head_loss_stats, logit_rows, loss_backward, take_lm_logits, SeqClsHead, SeqClsSpec};
use crate::models::linear::Linear;
use crate::models::lora::{Lora, LoraModule};
use crate::models::params::ParamTable;
use crate::models::batch::check_ids;
use crate::models::{held, Batch, CausalLm, GradSink, GradView, Init, ModelState, Recycled};
use crate::rng::SplitMix64;

/// What the shared parts need of a family's config.
pub struct Trunk {
    pub vocab: usize,
    /// Hidden size C.
    pub c: usize,
    pub layers: usize,
    /// The longest sequence a training batch may have.
    pub max_positions: usize,
    /// Dropout on the embeddings (GPT-2's embd_pdrop; 0 where the family has none).
    pub embd_pdrop: f64,
    /// The embedding row that gets no gradient (nn.Embedding's padding_idx).
    pub pad_token_id: Option<i64>,
    /// Epsilon of the final norm.
    pub norm_eps: f64,
}

/// The parameters outside the blocks.
pub struct Ends {
    pub embed: Range<usize>, // (V, C)
    /// Learned position embeddings (max_positions, C), GPT-2's wpe.
    pub wpe: Option<Range<usize>>,
    /// The final norm's weight (C) and, for a LayerNorm, its bias (C); RMSNorm without.
    pub norm_w: Range<usize>,
    pub norm_b: Option<Range<usize>>,
    /// The lm_head weight (V, C): its own parameter, or the embedding when tied.
    pub head: Range<usize>,
}

/// What a block's forward and backward read besides its own state: the config, the
/// parameters, the adapters, the padding mask (B, T) and the batch shape.
pub struct Ctx<'a, F, C> {
    pub cfg: &'a C,
    pub p: &'a [F],
    pub lora: Option<&'a Lora>,
    pub mask: Option<&'a [i64]>,
    pub b: usize,
    pub t: usize,
    pub train: bool,
}

/// One transformer block of a family, and the family's config mapping. The forward and
/// backward are a pair: what `forward` saves in `Acts`, `backward` reads.
pub trait Block<F: Real>: Sized + Send + Sync + 'static {
    type Config: Send + Sync;
    /// What one block's forward saves for its backward.
    type Acts: Send + Sync;
    /// What every block of one (B, T) shares: scratch buffers and per-position tables.
    type Work: Send + Sync;
    /// LoRA slots per block.
    const LORA_SLOTS: usize;

    // --- config mapping
    fn trunk(cfg: &Self::Config) -> Trunk;
    /// The config as transformers writes it in config.json.
    fn config_value(cfg: &Self::Config) -> Value;
    /// Every parameter, in checkpoint order: the ends and the blocks. `lm`: the model ends
    /// in the language-model head (else a classification head, pushed after).
    fn layout(cfg: &Self::Config, table: &mut ParamTable, lm: bool) -> Result<(Ends, Vec<Self>)>;
    /// transformers' initialisation of the parameter `name`.
    fn init(cfg: &Self::Config, name: &str) -> Init;
    /// Our name for a checkpoint tensor, or None for tensors that are not parameters;
    /// `skip_head`: the model has no lm_head parameter of its own.
    fn checkpoint_name(name: &str, skip_head: bool) -> Option<String>;
    fn decoder_dims(cfg: &Self::Config) -> DecoderDims;

    // --- the block
    /// Its linear modules (LoRA sites and decoding matmuls), in slot order.
    fn linears(&self) -> Vec<&Linear>;
    /// Its parameters' range in the parameter buffer.
    fn params(&self) -> Range<usize>;
    fn new_acts(cfg: &Self::Config, b: usize, t: usize, z: &mut Recycled<F>) -> Self::Acts;
    fn new_work(cfg: &Self::Config, b: usize, t: usize, z: &mut Recycled<F>) -> Self::Work;
    /// Hand their float buffers to `free`, for the activations of the next batch shape.
    fn recycle(acts: Self::Acts, free: &mut Vec<Vec<F>>);
    fn recycle_work(work: Self::Work, free: &mut Vec<Vec<F>>);
    /// Bytes their buffers hold.
    fn acts_bytes(acts: &Self::Acts) -> usize;
    fn work_bytes(work: &Self::Work) -> usize;

    /// `out` (N, C) = the residual stream after block `l`, from `inp` (N, C) before it;
    /// `acts` gets what the backward needs. Dropout masks are drawn from `rng` in a fixed
    /// order, so a second run from the same generator state draws them again. Without
    /// `output` (checkpointing's second run, which wants only `acts`) the last projection
    /// may be skipped, leaving garbage in `out`.
    #[allow(clippy::too_many_arguments)]
    fn forward(&self, x: &Ctx<'_, F, Self::Config>, l: usize, acts: &mut Self::Acts, work: &mut Self::Work, inp: &[F], out: &mut [F], output: bool, rng: &mut SplitMix64);
    /// The pair of `forward`: `dres` (N, C), the gradient of the residual stream after block
    /// `l`, becomes the gradient before it; the block's parameter gradients go to `g`. `inp`
    /// is the block's input, `dln` (N, C) gradient scratch.
    #[allow(clippy::too_many_arguments)]
    fn backward(&self, x: &Ctx<'_, F, Self::Config>, l: usize, acts: &Self::Acts, g: &mut GradView<'_, F>, work: &mut Self::Work, dln: &mut [F], inp: &[F], dres: &mut [F]);

    /// Readies `sc` for a cache of `cap` positions (rotary tables, once).
    fn decode_begin(_cfg: &Self::Config, _sc: &mut Scratch<F>, _cap: usize) {}
    /// Block `l` on the residual stream `sc.x` (N, C) of T new tokens per row at `pos` (N),
    /// appending their keys and values to the cache (whose `len` is the positions before).
    #[allow(clippy::too_many_arguments)]
    fn decode_step(&self, cfg: &Self::Config, l: usize, w: &Weights<'_, F>, lora: Option<&Lora>, cache: &mut KvCache<F>, sc: &mut Scratch<F>, pos: &[usize], t: usize);
}

/// The final norm's forward: LayerNorm when it has a bias (`mean` (N) filled), else RMSNorm.
#[allow(clippy::too_many_arguments)]
fn norm_forward<F: Real>(e: &Ends, p: &[F], out: &mut [F], mean: &mut [F], rstd: &mut [F], inp: &[F], c: usize, eps: f64) {
    let w = &p[e.norm_w.clone()];
    match &e.norm_b {
        Some(bias) => layernorm_forward(out, mean, rstd, inp, w, &p[bias.clone()], c, eps),
        None => rmsnorm_forward(out, rstd, inp, w, c, eps),
    }
}

/// All activations for one (B, T), plus the gradient buffers of the backward. Without
/// gradient checkpointing every block keeps its own `B::Acts`. With it there is one set:
/// the forward overwrites it block after block, and the backward refills it right before
/// each block's backward by running that block's forward again, from the block's input
/// (kept in `res`) and the dropout generator's state as the block started (`rng_at`), so
/// every dropout mask is drawn again identically.
struct Acts<F: Real, B: Block<F>> {
    b: usize,
    t: usize,
    checkpointing: bool,
    ids: Vec<i64>,     // (N)
    targets: Vec<i64>, // (N) next-token labels, -100 where ignored
    encoded: Vec<F>,   // (N, C)
    embd_drop: Option<Dropout>,
    layers: Vec<B::Acts>, // one per block, or the one set of gradient checkpointing
    res: Vec<Vec<F>>,     // L x (N, C) the residual stream after each block
    rng_at: Vec<u64>,     // (L) the dropout generator's state as each block starts
    lnf: Vec<F>,          // (N, C)
    lnf_mean: Vec<F>,     // (N), empty for an RMSNorm
    lnf_rstd: Vec<F>,     // (N)
    logits: Vec<F>,       // (N, V); the backward turns it into dlogits in place
    work: B::Work,
    dres: Vec<F>, // (N, C) gradient of the residual stream
    dln: Vec<F>,  // (N, C)
}

impl<F: Real, B: Block<F>> Acts<F, B> {
    /// Activations for (B, T), in the buffers of `z` where they fit.
    fn new(cfg: &B::Config, layernorm: bool, b: usize, t: usize, checkpointing: bool, z: &mut Recycled<F>) -> Self {
        let d = B::trunk(cfg);
        let (n, c) = (b * t, d.c);
        let sets = if checkpointing { 1 } else { d.layers };
        Acts {
            b,
            t,
            checkpointing,
            ids: vec![0; n],
            targets: vec![IGNORE_INDEX; n],
            encoded: z.take(n * c),
            embd_drop: None,
            layers: (0..sets).map(|_| B::new_acts(cfg, b, t, z)).collect(),
            res: (0..d.layers).map(|_| z.take(n * c)).collect(),
            rng_at: vec![0; d.layers],
            lnf: z.take(n * c),
            lnf_mean: if layernorm { z.take(n) } else { Vec::new() },
            lnf_rstd: z.take(n),
            // (N, V) by `forward`; (LOSS_ROWS, V) chunks by `forward_backward`: sized there
            logits: std::mem::take(&mut z.logits),
            work: B::new_work(cfg, b, t, z),
            dres: z.take(n * c),
            dln: z.take(n * c),
        }
    }

    /// Every buffer, for the activations of the next batch shape.
    fn recycle(self) -> Recycled<F> {
        let Acts { encoded, layers, res, lnf, lnf_mean, lnf_rstd, logits, work, dres, dln, .. } = self;
        let mut free = vec![encoded, lnf, lnf_mean, lnf_rstd, dres, dln];
        free.extend(res);
        layers.into_iter().for_each(|la| B::recycle(la, &mut free));
        B::recycle_work(work, &mut free);
        Recycled::new(free, logits)
    }

    /// Which set of `layers` block l uses.
    fn layer_slot(&self, l: usize) -> usize {
        if self.checkpointing { 0 } else { l }
    }

    fn bytes(&self) -> usize {
        let bufs = [&self.encoded, &self.lnf, &self.lnf_mean, &self.lnf_rstd, &self.logits, &self.dres, &self.dln];
        held(&bufs) + held(&[&self.ids, &self.targets]) + held(&[&self.rng_at]) + B::work_bytes(&self.work)
            + self.layers.iter().map(B::acts_bytes).sum::<usize>() + self.res.iter().map(|r| held(&[r])).sum::<usize>()
    }
}

/// A decoder-only language model of the family whose block is `B`.
pub struct Transformer<F: Real, B: Block<F>> {
    pub config: B::Config,
    lora: Option<Lora>,
    /// A sequence-classification head instead of the language-model head.
    cls: Option<SeqClsHead<F>>,
    pub(crate) state: ModelState<F>,
    ends: Ends,
    blocks: Vec<B>,
    acts: Option<Acts<F, B>>,
}

impl<F: Real, B: Block<F>> Transformer<F, B> {
    /// A model with zeroed weights (load or initialise them next).
    pub fn empty(config: B::Config) -> Result<Self> {
        let mut table = ParamTable::default();
        let spec = SeqClsSpec::from_config(&B::config_value(&config))?;
        let (ends, blocks) = B::layout(&config, &mut table, spec.is_none())?;
        let cls = spec.map(|spec| {
            let score = table.push("score.weight".into(), &[spec.num_labels, B::trunk(&config).c]);
            SeqClsHead::new(spec, score)
        });
        Ok(Self { config, lora: None, cls, state: ModelState::new(table)?, ends, blocks, acts: None })
    }

    /// A model with transformers' initialisation (see each family's `Block::init`).
    pub fn from_config(config: B::Config, seed: u64) -> Result<Self> {
        let mut m = Self::empty(config)?;
        let cfg = &m.config;
        m.state.init(seed, |name| B::init(cfg, name));
        Ok(m)
    }

    /// The forward up to the final norm (acts.lnf), without the head.
    fn trunk(&mut self, batch: &Batch<'_>) -> Result<()> {
        let d = B::trunk(&self.config);
        batch.validate(d.vocab, d.max_positions, self.cls.is_none())?;
        if let (Some(h), Some(l)) = (&self.cls, batch.labels) {
            h.validate_labels(l, batch.b)?;
        }
        let (b, t, ckpt) = (batch.b, batch.t, self.state.checkpointing);
        if !matches!(&self.acts, Some(a) if a.b == b && a.t == t && a.checkpointing == ckpt) {
            // another (B, T) reuses the buffers; switching checkpointing (other buffers) frees them
            let mut old = match self.acts.take() {
                Some(a) if a.checkpointing == ckpt => a.recycle(),
                _ => Recycled::default(),
            };
            self.acts = Some(Acts::new(&self.config, self.ends.norm_b.is_some(), b, t, ckpt, &mut old));
        }
        let acts = self.acts.as_mut().expect("allocated above");
        let (p, e, rng) = (&self.state.params, &self.ends, &mut self.state.rng);
        let x = Ctx { cfg: &self.config, p, lora: self.lora.as_ref(), mask: batch.mask, b, t, train: self.state.training };

        acts.ids.copy_from_slice(batch.ids);
        if self.cls.is_none() {
            batch.next_token_targets(&mut acts.targets);
        }
        embedding_forward(&mut acts.encoded, batch.ids, &p[e.embed.clone()], e.wpe.clone().map(|r| &p[r]), t, d.c);
        acts.embd_drop = Dropout::draw(d.embd_pdrop, x.train, rng);
        dropout_apply(&mut acts.encoded, acts.embd_drop.as_ref(), 0);

        for (l, blk) in self.blocks.iter().enumerate() {
            acts.rng_at[l] = rng.state();
            let k = acts.layer_slot(l);
            let (done, rest) = acts.res.split_at_mut(l);
            let inp = if l == 0 { &acts.encoded } else { &done[l - 1] };
            blk.forward(&x, l, &mut acts.layers[k], &mut acts.work, inp, &mut rest[0], true, rng);
        }

        let last = acts.res.last().unwrap_or(&acts.encoded);
        norm_forward(e, p, &mut acts.lnf, &mut acts.lnf_mean, &mut acts.lnf_rstd, last, d.c, d.norm_eps);
        Ok(())
    }
}

impl<F: Real, B: Block<F>> CausalLm<F> for Transformer<F, B> {
    fn state(&self) -> &ModelState<F> {
        &self.state
    }

    fn state_mut(&mut self) -> &mut ModelState<F> {
        &mut self.state
    }

    fn config_value(&self) -> Value {
        B::config_value(&self.config)
    }

    fn vocab_size(&self) -> usize {
        B::trunk(&self.config).vocab
    }

    fn as_decoder(&self) -> Option<&dyn Decoder<F>> {
        if self.cls.is_some() {
            None
        } else {
            Some(self)
        }
    }

    fn lora_modules(&self) -> (usize, Vec<LoraModule>) {
        let modules = self.blocks.iter().flat_map(B::linears).flat_map(Linear::lora_modules).collect();
        (self.blocks.len() * B::LORA_SLOTS, modules)
    }

    fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    fn set_lora(&mut self, lora: Option<Lora>) {
        self.lora = lora;
        self.acts = None; // they hold what the previous adapters saved
    }

    fn load_tensors(&mut self, tensors: BTreeMap<String, RawTensor>, source: &Path) -> Result<()> {
        // a classification head has no lm_head; on a causal-LM checkpoint it keeps its init
        let skip_head = self.ends.head == self.ends.embed || self.cls.is_some();
        let optional: &[&str] = if self.cls.is_some() { &["score.weight"] } else { &[] };
        let value = B::config_value(&self.config);
        let arch = value["model_type"].as_str().unwrap_or("model");
        self.state.load_tensors(tensors, source, arch, optional, |name| B::checkpoint_name(name, skip_head))
    }

    fn logits(&self) -> &[F] {
        let v = B::trunk(&self.config).vocab;
        match &self.cls {
            Some(h) => h.logits(),
            None => self.acts.as_ref().and_then(|a| a.logits.get(..a.b * a.t * v)).unwrap_or(&[]),
        }
    }

    fn take_logits(&mut self) -> Vec<F> {
        let v = B::trunk(&self.config).vocab;
        match (&self.cls, self.acts.as_mut()) {
            (None, Some(a)) => take_lm_logits(&mut a.logits, a.b * a.t * v),
            _ => self.logits().to_vec(),
        }
    }

    fn num_labels(&self) -> Option<usize> {
        self.cls.as_ref().map(|h| h.spec.num_labels)
    }

    fn forward(&mut self, batch: &Batch<'_>) -> Result<()> {
        self.trunk(batch)?;
        let d = B::trunk(&self.config);
        let acts = self.acts.as_mut().expect("trunk allocated activations");
        let dims = (batch.b, batch.t, d.c, d.vocab);
        head_forward(self.cls.as_mut(), &self.state.params, &self.ends.head, &acts.lnf, &mut acts.logits, batch.ids, batch.labels, dims)
    }

    fn loss_stats(&self) -> LossStats {
        let a = self.acts.as_ref().expect("forward before loss_stats");
        head_loss_stats(self.cls.as_ref(), &a.logits, &a.targets, B::trunk(&self.config).vocab)
    }

    fn activation_bytes(&self) -> usize {
        self.acts.as_ref().map_or(0, Acts::bytes) + self.cls.as_ref().map_or(0, SeqClsHead::bytes)
    }

    fn block_params(&self) -> Vec<Range<usize>> {
        self.blocks.iter().map(B::params).collect()
    }

    fn backward_with(&mut self, batch: &Batch<'_>, num_items: Option<f64>, sink: Option<&mut dyn GradSink<F>>) -> Result<LossStats> {
        self.trunk(batch)?;
        let d = B::trunk(&self.config);
        if let Some(h) = self.cls.as_mut() {
            let a = self.acts.as_ref().expect("trunk allocated activations");
            h.forward(&self.state.params, &a.lnf, batch.ids, batch.labels, batch.b, batch.t, d.c)?;
        }
        let acts = self.acts.as_mut().expect("forward allocated activations");
        let (b, t, c) = (acts.b, acts.t, d.c);
        let train = self.state.training;
        let (p, mut g) = self.state.grad_view(sink);
        let e = &self.ends;
        let x = Ctx { cfg: &self.config, p, lora: self.lora.as_ref(), mask: batch.mask, b, t, train };
        let (logits, targets) = (&mut acts.logits, &acts.targets);
        let stats = loss_backward(self.cls.as_mut(), p, &mut g, &e.head, logits, targets, num_items, &acts.lnf, &mut acts.dln, (b * t, c, d.vocab))?;
        g.lend(std::mem::take(&mut acts.logits)); // free until the next step's loss
        acts.dres.fill(F::zero());
        let last = acts.res.last().unwrap_or(&acts.encoded);
        let norm_w = &p[e.norm_w.clone()];
        match &e.norm_b {
            Some(bias) => {
                let (dw, db) = g.pair(&e.norm_w, bias);
                layernorm_backward(&mut acts.dres, dw, db, &acts.dln, last, norm_w, &acts.lnf_mean, &acts.lnf_rstd, c);
            }
            None => rmsnorm_backward(&mut acts.dres, g.get(&e.norm_w), &acts.dln, last, norm_w, &acts.lnf_rstd, c),
        }

        for (l, blk) in self.blocks.iter().enumerate().rev() {
            g.begin_block(l);
            let k = acts.layer_slot(l);
            let (done, rest) = acts.res.split_at_mut(l);
            let residual = if l == 0 { &acts.encoded } else { &done[l - 1] };
            let la = &mut acts.layers[k];
            // gradient checkpointing: the block's forward again, with the dropout generator as
            // it stood then (the last block's activations are still there from the forward),
            // without its last projection; it leaves garbage in the block's output, whose last
            // reader, block l + 1, is done
            if acts.checkpointing && l + 1 < self.blocks.len() {
                let mut rng = SplitMix64::new(acts.rng_at[l]);
                blk.forward(&x, l, la, &mut acts.work, residual, &mut rest[0], false, &mut rng);
            }
            blk.backward(&x, l, la, &mut g, &mut acts.work, &mut acts.dln, residual, &mut acts.dres);
            g.end_block(l);
        }

        acts.logits = g.reclaim();
        dropout_apply(&mut acts.dres, acts.embd_drop.as_ref(), 0);
        let (dwte, dwpe) = match &e.wpe {
            Some(wpe) => g.pair(&e.embed, wpe),
            None => (g.get(&e.embed), None),
        };
        embedding_backward(dwte, dwpe, &acts.dres, &acts.ids, d.pad_token_id, t, c);
        Ok(stats)
    }
}

/// The inference forward over a key/value cache (decode.rs).
impl<F: Real, B: Block<F>> Decoder<F> for Transformer<F, B> {
    fn dims(&self) -> DecoderDims {
        B::decoder_dims(&self.config)
    }

    fn params(&self) -> &[F] {
        &self.state.params
    }

    fn matmul_weights(&self) -> Vec<MatmulWeight> {
        let d = B::trunk(&self.config);
        let mut w: Vec<MatmulWeight> = self.blocks.iter().flat_map(B::linears).map(Linear::matmul_weight).collect();
        w.push(MatmulWeight { range: self.ends.head.clone(), n: d.vocab, k: d.c, conv1d: false });
        w
    }

    fn forward_cached(
        &self,
        half: Option<&HalfWeights>,
        cache: &mut KvCache<F>,
        sc: &mut Scratch<F>,
        ids: &[i64],
        positions: &[i64],
        mask: &[i64],
        t: usize,
        logits: &mut [F],
        all_logits: bool,
    ) -> Result<()> {
        let d = B::trunk(&self.config);
        let (b, c, v) = (cache.b, d.c, d.vocab);
        let n = b * t;
        let (past, cap) = (cache.len, cache.cap);
        if past + t > cap {
            return Err(Error::Input(format!("KV cache holds {cap} positions, {} requested", past + t)));
        }
        assert!(n <= sc.rows, "scratch sized for {} rows, {n} requested", sc.rows);
        check_ids("token id", &ids[..n], t, v, false)?;
        B::decode_begin(&self.config, sc, cap);
        let (p, e) = (&self.state.params, &self.ends);
        let (w, lora) = (Weights { p, half }, self.lora.as_ref());
        let embed = &p[e.embed.clone()];
        // x (N, C) = embed[id] (+ wpe[position])
        let mut pos = Vec::with_capacity(n);
        for (r, xr) in sc.x[..n * c].chunks_exact_mut(c).enumerate() {
            let ps = positions[r];
            xr.copy_from_slice(&embed[ids[r] as usize * c..][..c]);
            match &e.wpe {
                Some(_) if ps < 0 || ps as usize >= d.max_positions => {
                    let max = d.max_positions;
                    return Err(Error::Input(format!("position {ps} is past the model's maximum of {max} positions (n_positions)")));
                }
                None if ps < 0 || ps as usize >= cap => {
                    return Err(Error::Input(format!("position {ps} is outside the cache of {cap} positions")));
                }
                Some(wpe) => xr.iter_mut().zip(&p[wpe.clone()][ps as usize * c..][..c]).for_each(|(x, pe)| *x += *pe),
                None => {}
            }
            pos.push(ps as usize);
        }
        cache.push_mask(mask, t);
        for (l, blk) in self.blocks.iter().enumerate() {
            blk.decode_step(&self.config, l, &w, lora, cache, sc, &pos, t);
        }
        // the final norm and the lm_head, on every row or on the last one of each batch row
        let rows = logit_rows(&sc.x, &mut sc.tmp, b, t, c, all_logits);
        norm_forward(e, p, &mut sc.ln[..rows * c], &mut sc.mean[..rows], &mut sc.rstd[..rows], &sc.tmp[..rows * c], c, d.norm_eps);
        w.linear(logits, &sc.ln[..rows * c], e.head.clone(), None, rows, c, v);
        cache.len += t;
        Ok(())
    }
}
