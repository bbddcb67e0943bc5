//! GPT-2 (transformers' `GPT2LMHeadModel`): token + position embeddings, pre-LayerNorm
//! blocks of causal self-attention and a gelu_new MLP, a final LayerNorm and the lm_head
//! tied to the token embedding. Weights keep Hugging Face's names and Conv1D layout
//! (y = x @ W + b, W: (in, out)).
//!
//! Explicit forward and backward per layer (llm.c style): activations are kept in buffers
//! sized for one (B, T) and reused every step; every parameter's gradient is ours.
//!
//! Shapes: B = batch, T = time, C = n_embd, NH = n_head, HS = C / NH, V = vocab_size,
//! N = B * T, I = MLP width (4C).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::config::Gpt2Config;
use crate::error::Result;
use crate::io::safetensors::RawTensor;
use crate::error::Error;
use crate::models::decode::{Decoder, DecoderDims, HalfWeights, KvCache, MatmulWeight, Scratch, Weights};
use crate::kernels::attention::{attention_backward, attention_cached_forward, attention_forward, AttnShape, ROW_STATS};
use crate::kernels::crossentropy::{LossStats, IGNORE_INDEX};
use crate::kernels::dropout::{dropout_apply, Dropout};
use crate::kernels::embedding::{embedding_backward, embedding_forward};
use crate::kernels::gelu::{gelu_backward, gelu_forward};
use crate::kernels::layernorm::{layernorm_backward, layernorm_forward, layernorm_recompute};
use crate::kernels::Real;
use crate::models::head::{head_forward, head_loss_stats, logit_rows, loss_backward, take_lm_logits, SeqClsHead, SeqClsSpec};
use crate::models::linear::Linear;
use crate::models::lora::{Lora, LoraModule, SiteActs};
use crate::models::params::ParamTable;
use crate::models::{add_inplace, held, Batch, CausalLm, GradSink, GradView, Init, ModelState, Recycled};
use crate::rng::SplitMix64;

pub(crate) struct LayerParams {
    pub(crate) ln1_w: Range<usize>,
    pub(crate) ln1_b: Range<usize>,
    pub(crate) attn: Linear,   // c_attn (C, 3C)
    pub(crate) proj: Linear,   // attn.c_proj (C, C)
    pub(crate) ln2_w: Range<usize>,
    pub(crate) ln2_b: Range<usize>,
    pub(crate) fc: Linear,     // c_fc (C, I)
    pub(crate) fcproj: Linear, // mlp.c_proj (I, C)
}

impl LayerParams {
    fn linears(&self) -> [&Linear; 4] {
        [&self.attn, &self.proj, &self.fc, &self.fcproj]
    }
}

pub(crate) struct Layout {
    pub(crate) wte: Range<usize>,
    pub(crate) wpe: Range<usize>,
    pub(crate) layers: Vec<LayerParams>,
    pub(crate) lnf_w: Range<usize>,
    pub(crate) lnf_b: Range<usize>,
}

impl Layout {
    fn new(cfg: &Gpt2Config, table: &mut ParamTable) -> Layout {
        let (v, c, i, p) = (cfg.vocab_size, cfg.n_embd, cfg.inner(), cfg.n_positions);
        let wte = table.push("transformer.wte.weight".into(), &[v, c]);
        let wpe = table.push("transformer.wpe.weight".into(), &[p, c]);
        let layers = (0..cfg.n_layer)
            .map(|l| {
                let name = |n: &str| format!("transformer.h.{l}.{n}");
                LayerParams {
                    ln1_w: table.push(name("ln_1.weight"), &[c]),
                    ln1_b: table.push(name("ln_1.bias"), &[c]),
                    attn: conv1d(table, name("attn.c_attn"), c, 3 * c, l, C_ATTN),
                    proj: conv1d(table, name("attn.c_proj"), c, c, l, ATTN_PROJ),
                    ln2_w: table.push(name("ln_2.weight"), &[c]),
                    ln2_b: table.push(name("ln_2.bias"), &[c]),
                    fc: conv1d(table, name("mlp.c_fc"), c, i, l, C_FC),
                    fcproj: conv1d(table, name("mlp.c_proj"), i, c, l, MLP_PROJ),
                }
            })
            .collect();
        let lnf_w = table.push("transformer.ln_f.weight".into(), &[c]);
        let lnf_b = table.push("transformer.ln_f.bias".into(), &[c]);
        Layout { wte, wpe, layers, lnf_w, lnf_b }
    }
}

/// The Conv1D module `name` (weight (IN, OUT), bias (OUT)) of block l, whose LoRA slot is
/// the block's `kind`-th.
fn conv1d(table: &mut ParamTable, name: String, in_f: usize, out_f: usize, l: usize, kind: usize) -> Linear {
    let w = table.push(format!("{name}.weight"), &[in_f, out_f]);
    let b = table.push(format!("{name}.bias"), &[out_f]);
    Linear::new(name, w, Some(b), true, in_f, out_f, l * LORA_PER_LAYER + kind, kind)
}

/// Activations of one block, saved by the forward for the backward. What is cheap to
/// recompute is not kept: the LayerNorm outputs (from the block's input or res2 and the saved
/// mean and rstd), GELU's output (from fch), the attention probabilities (from qkv and each
/// row's softmax statistics, block by block) and the dropout masks (from their seeds).
struct LayerActs<F> {
    ln1_mean: Vec<F>,  // (N)
    ln1_rstd: Vec<F>,  // (N)
    qkv: Vec<F>,       // (N, 3C)
    att_stats: Vec<F>, // (B, NH, T, ROW_STATS)
    atty: Vec<F>,      // (N, C)
    res2: Vec<F>,      // (N, C) residual after attention
    ln2_mean: Vec<F>,  // (N)
    ln2_rstd: Vec<F>,  // (N)
    fch: Vec<F>,       // (N, I) before GELU
    drops: BlockDropout,
    lora: Vec<SiteActs<F>>, // (LORA_PER_LAYER) what the block's adapters save
}

/// A block's dropout masks (None where inactive), drawn in this order.
#[derive(Default)]
struct BlockDropout {
    att: Option<Dropout>,  // over (B, NH, T, T)
    proj: Option<Dropout>, // over (N, C)
    fc: Option<Dropout>,   // over (N, C)
}

impl<F: Real> LayerActs<F> {
    fn new(cfg: &Gpt2Config, b: usize, t: usize, z: &mut Recycled<F>) -> Self {
        let (n, c, i, nh) = (b * t, cfg.n_embd, cfg.inner(), cfg.n_head);
        LayerActs {
            ln1_mean: z.take(n),
            ln1_rstd: z.take(n),
            qkv: z.take(n * 3 * c),
            att_stats: z.take(b * nh * t * ROW_STATS),
            atty: z.take(n * c),
            res2: z.take(n * c),
            ln2_mean: z.take(n),
            ln2_rstd: z.take(n),
            fch: z.take(n * i),
            drops: BlockDropout::default(),
            lora: (0..LORA_PER_LAYER).map(|_| SiteActs::default()).collect(),
        }
    }

    /// Hands every buffer to `free` (the LoRA sites' small ones are dropped).
    fn recycle(self, free: &mut Vec<Vec<F>>) {
        let LayerActs { ln1_mean, ln1_rstd, qkv, att_stats, atty, res2, ln2_mean, ln2_rstd, fch, drops: _, lora: _ } = self;
        free.extend([ln1_mean, ln1_rstd, qkv, att_stats, atty, res2, ln2_mean, ln2_rstd, fch]);
    }

    fn bytes(&self) -> usize {
        let bufs = [&self.ln1_mean, &self.ln1_rstd, &self.qkv, &self.att_stats, &self.atty, &self.res2, &self.ln2_mean, &self.ln2_rstd, &self.fch];
        held(&bufs) + self.lora.iter().map(SiteActs::bytes).sum::<usize>()
    }
}

/// All activations for one (B, T), plus the gradient scratch buffers of the backward.
/// Without gradient checkpointing every block keeps its own `LayerActs`. With it there is
/// one set: the forward overwrites it block after block, and the backward refills it right
/// before each block's backward by running that block's forward again, from the block's
/// input (kept in `res`) and the dropout generator's state as the block started (`rng_at`),
/// so every dropout mask is drawn again identically.
struct Acts<F> {
    b: usize,
    t: usize,
    checkpointing: bool,
    ids: Vec<i64>,          // (N)
    targets: Vec<i64>,      // (N) next-token labels, -100 where ignored
    encoded: Vec<F>,        // (N, C)
    embd_drop: Option<Dropout>,
    layers: Vec<LayerActs<F>>, // one per block, or the one set of gradient checkpointing
    res: Vec<Vec<F>>,          // L x (N, C) the residual stream after each block
    rng_at: Vec<u64>,          // (L) the dropout generator's state as each block starts
    lnf: Vec<F>,      // (N, C)
    lnf_mean: Vec<F>, // (N)
    lnf_rstd: Vec<F>, // (N)
    logits: Vec<F>,   // (N, V); the backward turns it into dlogits in place
    // forward scratch: the LayerNorm outputs and GELU's (the backward recomputes them)
    ln: Vec<F>,   // (N, C)
    gelu: Vec<F>, // (N, I)
    // gradient scratch
    dres: Vec<F>,  // (N, C) gradient of the residual stream
    dtmp: Vec<F>,  // (N, C)
    dln: Vec<F>,   // (N, C)
    // (N, I) in a block's MLP part; in its attention part, which comes after, the same
    // memory holds datty (N, C) | dqkv (N, 3C)
    dfch: Vec<F>,
}

impl<F: Real> Acts<F> {
    /// Activations for (B, T), in the buffers of `z` where they fit.
    fn new(cfg: &Gpt2Config, b: usize, t: usize, checkpointing: bool, z: &mut Recycled<F>) -> Self {
        let (n, c, i) = (b * t, cfg.n_embd, cfg.inner());
        let sets = if checkpointing { 1 } else { cfg.n_layer };
        Acts {
            b,
            t,
            checkpointing,
            ids: vec![0; n],
            targets: vec![IGNORE_INDEX; n],
            encoded: z.take(n * c),
            embd_drop: None,
            layers: (0..sets).map(|_| LayerActs::new(cfg, b, t, z)).collect(),
            res: (0..cfg.n_layer).map(|_| z.take(n * c)).collect(),
            rng_at: vec![0; cfg.n_layer],
            lnf: z.take(n * c),
            lnf_mean: z.take(n),
            lnf_rstd: z.take(n),
            // (N, V) by `forward`; (LOSS_ROWS, V) chunks by `forward_backward`: sized there
            logits: std::mem::take(&mut z.logits),
            ln: z.take(n * c),
            gelu: z.take(n * i),
            dres: z.take(n * c),
            dtmp: z.take(n * c),
            dln: z.take(n * c),
            dfch: z.take(n * i.max(4 * c)),
        }
    }

    /// Every buffer, for the activations of the next batch shape.
    fn recycle(self) -> Recycled<F> {
        let Acts { encoded, layers, res, lnf, lnf_mean, lnf_rstd, logits, ln, gelu, dres, dtmp, dln, dfch, .. } = self;
        let mut free = vec![encoded, lnf, lnf_mean, lnf_rstd, ln, gelu, dres, dtmp, dln, dfch];
        free.extend(res);
        layers.into_iter().for_each(|la| la.recycle(&mut free));
        Recycled::new(free, logits)
    }

    /// Which set of `layers` block l uses.
    fn layer_slot(&self, l: usize) -> usize {
        if self.checkpointing { 0 } else { l }
    }

    fn bytes(&self) -> usize {
        let bufs = [&self.encoded, &self.lnf, &self.lnf_mean, &self.lnf_rstd, &self.logits];
        let scratch = [&self.ln, &self.gelu, &self.dres, &self.dtmp, &self.dln, &self.dfch];
        held(&bufs) + held(&scratch) + held(&[&self.ids, &self.targets]) + held(&[&self.rng_at])
            + self.layers.iter().map(LayerActs::bytes).sum::<usize>() + self.res.iter().map(|r| held(&[r])).sum::<usize>()
    }
}

/// One block's forward: `out` (N, C) = the residual stream after block l, from `inp` (N, C)
/// before it; `la` gets what the block's backward needs, `ln` (N, C) and `gelu` (N, I) are
/// scratch. The dropout masks are drawn from `rng` in a fixed order, so a second run from
/// the same generator state draws them again. Without `output` (checkpointing's second run,
/// which wants only `la`) the last projection, which only makes `out`, is skipped; `out` is
/// then left with garbage.
#[allow(clippy::too_many_arguments)]
fn block_forward<F: Real>(
    cfg: &Gpt2Config,
    lp: &LayerParams,
    p: &[F],
    lora: Option<&Lora>,
    la: &mut LayerActs<F>,
    (ln, gelu): (&mut [F], &mut [F]),
    inp: &[F],
    out: &mut [F],
    mask: Option<&[i64]>,
    shape: AttnShape,
    scale: f64,
    train: bool,
    output: bool,
    rng: &mut SplitMix64,
) {
    let (n, c) = (shape.b * shape.t, cfg.n_embd);
    layernorm_forward(ln, &mut la.ln1_mean, &mut la.ln1_rstd, inp, &p[lp.ln1_w.clone()], &p[lp.ln1_b.clone()], c, cfg.layer_norm_epsilon);
    lp.attn.forward(p, lora, &mut la.lora, ln, &mut la.qkv, n, train, rng, true);
    la.drops.att = Dropout::draw(cfg.attn_pdrop, train, rng);
    attention_forward(&mut la.atty, &mut la.att_stats, &la.qkv, mask, la.drops.att.as_ref(), shape, scale);
    // res2 = inp + dropout(atty @ Wproj + b)
    lp.proj.forward(p, lora, &mut la.lora, &la.atty, &mut la.res2, n, train, rng, true);
    la.drops.proj = Dropout::draw(cfg.resid_pdrop, train, rng);
    dropout_apply(&mut la.res2, la.drops.proj.as_ref(), 0);
    add_inplace(&mut la.res2, inp);

    layernorm_forward(ln, &mut la.ln2_mean, &mut la.ln2_rstd, &la.res2, &p[lp.ln2_w.clone()], &p[lp.ln2_b.clone()], c, cfg.layer_norm_epsilon);
    lp.fc.forward(p, lora, &mut la.lora, ln, &mut la.fch, n, train, rng, true);
    // out = res2 + dropout(gelu(fch) @ Wfcproj + b)
    if output || lp.fcproj.adapted(lora) {
        gelu_forward(gelu, &la.fch);
    }
    lp.fcproj.forward(p, lora, &mut la.lora, gelu, out, n, train, rng, output);
    la.drops.fc = Dropout::draw(cfg.resid_pdrop, train, rng);
    if output {
        dropout_apply(out, la.drops.fc.as_ref(), 0);
        add_inplace(out, &la.res2);
    }
}

/// One block's backward, the pair of `block_forward`: from what that saved in `la` and from
/// the block's input `inp` (N, C), `dres` (N, C), the gradient of the residual stream after
/// block l, becomes the gradient before it, and the gradients of the block's parameters go
/// to `g`. `ln` (N, C) and `gelu` (N, I) are the forward's scratch, recomputed here; `dtmp`,
/// `dln` (N, C) and `dfch` (N, max(I, 4C)) are gradient scratch.
#[allow(clippy::too_many_arguments)]
fn block_backward<F: Real>(
    cfg: &Gpt2Config,
    lp: &LayerParams,
    p: &[F],
    lora: Option<&Lora>,
    la: &LayerActs<F>,
    g: &mut GradView<'_, F>,
    (ln, gelu): (&mut [F], &mut [F]),
    (dtmp, dln, dfch): (&mut [F], &mut [F], &mut [F]),
    inp: &[F],
    dres: &mut [F],
    mask: Option<&[i64]>,
    shape: AttnShape,
    scale: f64,
) {
    let (n, c) = (shape.b * shape.t, cfg.n_embd);
    // out = res2 + drop(gelu(fch) @ Wfcproj + b): the residual gradient passes through;
    // the branch gets it masked
    dtmp.copy_from_slice(dres);
    dropout_apply(dtmp, la.drops.fc.as_ref(), 0);
    gelu_forward(gelu, &la.fch);
    lp.fcproj.backward(p, lora, &la.lora, g, gelu, dtmp, dfch, n);
    gelu_backward(dfch, &la.fch);
    layernorm_recompute(ln, &la.res2, &la.ln2_mean, &la.ln2_rstd, &p[lp.ln2_w.clone()], &p[lp.ln2_b.clone()], c);
    lp.fc.backward(p, lora, &la.lora, g, ln, dfch, dln, n);
    {
        let (dw, db) = g.pair(&lp.ln2_w, &lp.ln2_b);
        layernorm_backward(dres, dw, db, dln, &la.res2, &p[lp.ln2_w.clone()], &la.ln2_mean, &la.ln2_rstd, c);
    }

    // res2 = inp + drop(atty @ Wproj + b)
    let (datty, dqkv) = dfch[..n * 4 * c].split_at_mut(n * c);
    dtmp.copy_from_slice(dres);
    dropout_apply(dtmp, la.drops.proj.as_ref(), 0);
    lp.proj.backward(p, lora, &la.lora, g, &la.atty, dtmp, datty, n);
    attention_backward(dqkv, datty, &la.qkv, &la.att_stats, mask, la.drops.att.as_ref(), shape, scale);
    layernorm_recompute(ln, inp, &la.ln1_mean, &la.ln1_rstd, &p[lp.ln1_w.clone()], &p[lp.ln1_b.clone()], c);
    lp.attn.backward(p, lora, &la.lora, g, ln, dqkv, dln, n);
    let (dw, db) = g.pair(&lp.ln1_w, &lp.ln1_b);
    layernorm_backward(dres, dw, db, dln, inp, &p[lp.ln1_w.clone()], &la.ln1_mean, &la.ln1_rstd, c);
}

/// LoRA slots of each block: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj.
const LORA_PER_LAYER: usize = 4;
const C_ATTN: usize = 0;
const ATTN_PROJ: usize = 1;
const C_FC: usize = 2;
const MLP_PROJ: usize = 3;

pub struct Gpt2<F: Real> {
    pub config: Gpt2Config,
    lora: Option<Lora>,
    /// A sequence-classification head instead of the language-model head.
    cls: Option<SeqClsHead<F>>,
    pub(crate) state: ModelState<F>,
    pub(crate) layout: Layout,
    acts: Option<Acts<F>>,
}

impl<F: Real> Gpt2<F> {
    /// The forward up to the final norm (acts.lnf), without the head.
    fn trunk(&mut self, batch: &Batch<'_>) -> Result<()> {
        batch.validate(self.config.vocab_size, self.config.n_positions, self.cls.is_none())?;
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
            self.acts = Some(Acts::new(&self.config, b, t, ckpt, &mut old));
        }
        let scales = self.attn_scales();
        let cfg = &self.config;
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let acts = self.acts.as_mut().expect("allocated above");
        let (p, lay, rng) = (&self.state.params, &self.layout, &mut self.state.rng);
        let lora = self.lora.as_ref();
        let train = self.state.training;

        acts.ids.copy_from_slice(batch.ids);
        if self.cls.is_none() {
            batch.next_token_targets(&mut acts.targets);
        }

        embedding_forward(&mut acts.encoded, batch.ids, &p[lay.wte.clone()], Some(&p[lay.wpe.clone()]), t, c);
        acts.embd_drop = Dropout::draw(cfg.embd_pdrop, train, rng);
        dropout_apply(&mut acts.encoded, acts.embd_drop.as_ref(), 0);

        let shape = AttnShape::mha(b, t, c, nh);
        for (l, lp) in lay.layers.iter().enumerate() {
            acts.rng_at[l] = rng.state();
            let k = acts.layer_slot(l);
            let (done, rest) = acts.res.split_at_mut(l);
            let inp = if l == 0 { &acts.encoded } else { &done[l - 1] };
            let scratch = (&mut acts.ln[..], &mut acts.gelu[..]);
            block_forward(cfg, lp, p, lora, &mut acts.layers[k], scratch, inp, &mut rest[0], batch.mask, shape, scales[l], train, true, rng);
        }

        let last = acts.res.last().unwrap_or(&acts.encoded);
        layernorm_forward(&mut acts.lnf, &mut acts.lnf_mean, &mut acts.lnf_rstd, last, &p[lay.lnf_w.clone()], &p[lay.lnf_b.clone()], c, cfg.layer_norm_epsilon);
        Ok(())
    }

    /// A model with zeroed weights (load or initialise them next).
    pub fn empty(config: Gpt2Config) -> Result<Self> {
        config.validate()?;
        let mut table = ParamTable::default();
        let layout = Layout::new(&config, &mut table);
        let cls = SeqClsSpec::from_config(&config.to_value())?.map(|spec| {
            let score = table.push("score.weight".into(), &[spec.num_labels, config.n_embd]);
            SeqClsHead::new(spec, score)
        });
        Ok(Self { config, lora: None, cls, state: ModelState::new(table)?, layout, acts: None })
    }

    /// transformers' initialisation: N(0, initializer_range) for weights and embeddings,
    /// scaled by 1/sqrt(2 n_layer) for the residual projections (c_proj), zero biases,
    /// LayerNorm weight 1 and bias 0.
    pub fn from_config(config: Gpt2Config, seed: u64) -> Result<Self> {
        let mut m = Self::empty(config)?;
        let std = m.config.initializer_range;
        let proj_std = std / (2.0 * m.config.n_layer as f64).sqrt();
        m.state.init(seed, |name| {
            if name.contains(".ln_") {
                Init::Const(if name.ends_with(".weight") { 1.0 } else { 0.0 })
            } else if name.ends_with(".bias") {
                Init::Const(0.0)
            } else if name.ends_with("c_proj.weight") {
                Init::Normal(proj_std)
            } else {
                Init::Normal(std)
            }
        });
        Ok(m)
    }

    /// The attention score scale of each layer: 1/sqrt(HS) (scale_attn_weights), divided by
    /// layer + 1 with scale_attn_by_inverse_layer_idx.
    pub(crate) fn attn_scales(&self) -> Vec<f64> {
        let cfg = &self.config;
        let base = if cfg.scale_attn_weights { 1.0 / ((cfg.n_embd / cfg.n_head) as f64).sqrt() } else { 1.0 };
        (0..cfg.n_layer)
            .map(|l| if cfg.scale_attn_by_inverse_layer_idx { base / (l + 1) as f64 } else { base })
            .collect()
    }
}

impl<F: Real> CausalLm<F> for Gpt2<F> {
    fn state(&self) -> &ModelState<F> {
        &self.state
    }

    fn state_mut(&mut self) -> &mut ModelState<F> {
        &mut self.state
    }

    fn config_value(&self) -> Value {
        self.config.to_value()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn as_decoder(&self) -> Option<&dyn Decoder<F>> {
        if self.cls.is_some() {
            None
        } else {
            Some(self)
        }
    }

    fn lora_modules(&self) -> (usize, Vec<LoraModule>) {
        let modules = self.layout.layers.iter().flat_map(LayerParams::linears).flat_map(Linear::lora_modules).collect();
        (self.config.n_layer * LORA_PER_LAYER, modules)
    }

    fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    fn set_lora(&mut self, lora: Option<Lora>) {
        self.lora = lora;
        self.acts = None; // they hold what the previous adapters saved
    }

    /// Checkpoint names with or without the `transformer.` prefix; the tied `lm_head.weight`
    /// and the causal-mask buffers of old checkpoints (`attn.bias`, `attn.masked_bias`) are
    /// not parameters.
    fn load_tensors(&mut self, tensors: BTreeMap<String, RawTensor>, source: &Path) -> Result<()> {
        // a classification head on a causal-LM checkpoint keeps its initialisation
        let optional: &[&str] = if self.cls.is_some() { &["score.weight"] } else { &[] };
        self.state.load_tensors(tensors, source, "gpt2", optional, |name| {
            if name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
                None
            } else if name.starts_with("transformer.") || name == "score.weight" {
                Some(name.to_string())
            } else {
                Some(format!("transformer.{name}"))
            }
        })
    }

    fn logits(&self) -> &[F] {
        match &self.cls {
            Some(h) => h.logits(),
            None => self.acts.as_ref().and_then(|a| a.logits.get(..a.b * a.t * self.config.vocab_size)).unwrap_or(&[]),
        }
    }

    fn take_logits(&mut self) -> Vec<F> {
        match (&self.cls, self.acts.as_mut()) {
            (None, Some(a)) => take_lm_logits(&mut a.logits, a.b * a.t * self.config.vocab_size),
            _ => self.logits().to_vec(),
        }
    }

    fn num_labels(&self) -> Option<usize> {
        self.cls.as_ref().map(|h| h.spec.num_labels)
    }

    fn forward(&mut self, batch: &Batch<'_>) -> Result<()> {
        self.trunk(batch)?;
        let acts = self.acts.as_mut().expect("trunk allocated activations");
        let dims = (batch.b, batch.t, self.config.n_embd, self.config.vocab_size);
        head_forward(self.cls.as_mut(), &self.state.params, &self.layout.wte, &acts.lnf, &mut acts.logits, batch.ids, batch.labels, dims)
    }

    fn loss_stats(&self) -> LossStats {
        let a = self.acts.as_ref().expect("forward before loss_stats");
        head_loss_stats(self.cls.as_ref(), &a.logits, &a.targets, self.config.vocab_size)
    }

    fn activation_bytes(&self) -> usize {
        self.acts.as_ref().map_or(0, Acts::bytes) + self.cls.as_ref().map_or(0, SeqClsHead::bytes)
    }

    fn block_params(&self) -> Vec<Range<usize>> {
        self.layout.layers.iter().map(|lp| lp.ln1_w.start..lp.fcproj.end()).collect()
    }

    fn backward_with(&mut self, batch: &Batch<'_>, num_items: Option<f64>, sink: Option<&mut dyn GradSink<F>>) -> Result<LossStats> {
        self.trunk(batch)?;
        if let Some(h) = self.cls.as_mut() {
            let a = self.acts.as_ref().expect("trunk allocated activations");
            h.forward(&self.state.params, &a.lnf, batch.ids, batch.labels, batch.b, batch.t, self.config.n_embd)?;
        }
        let scales = self.attn_scales();
        let cfg = &self.config;
        let acts = self.acts.as_mut().expect("forward allocated activations");
        let (b, t) = (acts.b, acts.t);
        let (n, c, nh, v) = (b * t, cfg.n_embd, cfg.n_head, cfg.vocab_size);
        let train = self.state.training;
        let (p, mut g) = self.state.grad_view(sink);
        let lora = self.lora.as_ref();
        let lay = &self.layout;
        let (logits, targets) = (&mut acts.logits, &acts.targets);
        let stats = loss_backward(self.cls.as_mut(), p, &mut g, &lay.wte, logits, targets, num_items, &acts.lnf, &mut acts.dln, (n, c, v))?;
        g.lend(std::mem::take(&mut acts.logits)); // free until the next step's loss
        acts.dres.fill(F::zero());
        {
            let last = acts.res.last().unwrap_or(&acts.encoded);
            let (dw, db) = g.pair(&lay.lnf_w, &lay.lnf_b);
            layernorm_backward(&mut acts.dres, dw, db, &acts.dln, last, &p[lay.lnf_w.clone()], &acts.lnf_mean, &acts.lnf_rstd, c);
        }

        let shape = AttnShape::mha(b, t, c, nh);
        for l in (0..cfg.n_layer).rev() {
            let lp = &lay.layers[l];
            g.begin_block(l);
            let k = acts.layer_slot(l);
            let (done, rest) = acts.res.split_at_mut(l);
            let residual = if l == 0 { &acts.encoded } else { &done[l - 1] };
            let la = &mut acts.layers[k];
            // gradient checkpointing: the block's forward again, with the dropout generator as
            // it stood then (the last block's activations are still there from the forward),
            // without its last projection; it leaves garbage in the block's output, whose last
            // reader, block l + 1, is done
            if acts.checkpointing && l + 1 < cfg.n_layer {
                let mut rng = SplitMix64::new(acts.rng_at[l]);
                let scratch = (&mut acts.ln[..], &mut acts.gelu[..]);
                block_forward(cfg, lp, p, lora, la, scratch, residual, &mut rest[0], batch.mask, shape, scales[l], train, false, &mut rng);
            }
            let scratch = (&mut acts.ln[..], &mut acts.gelu[..]);
            let dscratch = (&mut acts.dtmp[..], &mut acts.dln[..], &mut acts.dfch[..]);
            block_backward(cfg, lp, p, lora, la, &mut g, scratch, dscratch, residual, &mut acts.dres, batch.mask, shape, scales[l]);
            g.end_block(l);
        }

        acts.logits = g.reclaim();
        dropout_apply(&mut acts.dres, acts.embd_drop.as_ref(), 0);
        let (dwte, dwpe) = g.pair(&lay.wte, &lay.wpe);
        embedding_backward(dwte, dwpe, &acts.dres, &acts.ids, None, t, c);
        Ok(stats)
    }
}

/// The inference forward over a key/value cache (decode.rs).
impl<F: Real> Decoder<F> for Gpt2<F> {
    fn dims(&self) -> DecoderDims {
        let cfg = &self.config;
        DecoderDims {
            layers: cfg.n_layer,
            nkv: cfg.n_head,
            hs: cfg.n_embd / cfg.n_head,
            c: cfg.n_embd,
            qkv: 3 * cfg.n_embd,
            a: cfg.n_embd,
            mlp_in: cfg.inner(),
            mlp_act: cfg.inner(),
            vocab: cfg.vocab_size,
            max_positions: cfg.n_positions,
        }
    }

    fn params(&self) -> &[F] {
        &self.state.params
    }

    fn matmul_weights(&self) -> Vec<MatmulWeight> {
        let (c, v) = (self.config.n_embd, self.config.vocab_size);
        let mut w: Vec<MatmulWeight> = self.layout.layers.iter().flat_map(LayerParams::linears).map(Linear::matmul_weight).collect();
        w.push(MatmulWeight { range: self.layout.wte.clone(), n: v, k: c, conv1d: false });
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
        let cfg = &self.config;
        let (b, c, i, nh, v) = (cache.b, cfg.n_embd, cfg.inner(), cfg.n_head, cfg.vocab_size);
        let n = b * t;
        let (past, cap) = (cache.len, cache.cap);
        if past + t > cap {
            return Err(Error::Input(format!("KV cache holds {cap} positions, {} requested", past + t)));
        }
        assert!(n <= sc.rows, "scratch sized for {} rows, {n} requested", sc.rows);
        let (p, lay) = (&self.state.params, &self.layout);
        let (w, lora) = (Weights { p, half }, self.lora.as_ref());
        let (wte, wpe) = (&p[lay.wte.clone()], &p[lay.wpe.clone()]);
        // x (N, C) = wte[id] + wpe[position]
        for (r, xr) in sc.x[..n * c].chunks_exact_mut(c).enumerate() {
            let (id, pos) = (ids[r], positions[r]);
            if id < 0 || id as usize >= v {
                return Err(Error::TokenOutOfRange { what: "token id", id, row: r / t, col: r % t, vocab: v });
            }
            if pos < 0 || pos as usize >= cfg.n_positions {
                return Err(Error::Input(format!(
                    "position {pos} is past the model's maximum of {} positions (n_positions)",
                    cfg.n_positions
                )));
            }
            let (tok, pe) = (&wte[id as usize * c..][..c], &wpe[pos as usize * c..][..c]);
            for k in 0..c {
                xr[k] = tok[k] + pe[k];
            }
        }
        cache.push_mask(mask, t);
        let scales = self.attn_scales();
        let eps = cfg.layer_norm_epsilon;
        let shape = AttnShape::mha(b, t, c, nh);
        for (l, lp) in lay.layers.iter().enumerate() {
            layernorm_forward(&mut sc.ln[..n * c], &mut sc.mean[..n], &mut sc.rstd[..n], &sc.x[..n * c], &p[lp.ln1_w.clone()], &p[lp.ln1_b.clone()], c, eps);
            lp.attn.decode(&w, lora, &sc.ln[..n * c], &mut sc.qkv, n);
            // append this call's keys and values: qkv (B, T, 3C) -> cache (B, NH, S, HS)
            cache.append(l, &sc.qkv, t, 3 * c, c, 2 * c);
            attention_cached_forward(&mut sc.atty[..n * c], &sc.qkv[..n * 3 * c], &cache.k[l], &cache.v[l], &cache.key_mask, shape, past, cap, scales[l]);
            lp.proj.decode(&w, lora, &sc.atty[..n * c], &mut sc.tmp, n);
            add_inplace(&mut sc.x[..n * c], &sc.tmp[..n * c]);
            layernorm_forward(&mut sc.ln[..n * c], &mut sc.mean[..n], &mut sc.rstd[..n], &sc.x[..n * c], &p[lp.ln2_w.clone()], &p[lp.ln2_b.clone()], c, eps);
            lp.fc.decode(&w, lora, &sc.ln[..n * c], &mut sc.fch, n);
            gelu_forward(&mut sc.fchg[..n * i], &sc.fch[..n * i]);
            lp.fcproj.decode(&w, lora, &sc.fchg[..n * i], &mut sc.tmp, n);
            add_inplace(&mut sc.x[..n * c], &sc.tmp[..n * c]);
        }
        // final LayerNorm and the tied lm_head, on every row or on the last one of each batch row
        let rows = logit_rows(&sc.x, &mut sc.tmp, b, t, c, all_logits);
        layernorm_forward(&mut sc.ln[..rows * c], &mut sc.mean[..rows], &mut sc.rstd[..rows], &sc.tmp[..rows * c], &p[lay.lnf_w.clone()], &p[lay.lnf_b.clone()], c, eps);
        w.linear(logits, &sc.ln[..rows * c], lay.wte.clone(), None, rows, c, v);
        cache.len += t;
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config(pdrop: f64) -> Gpt2Config {
        Gpt2Config::from_value(serde_json::json!({
            "model_type": "gpt2", "vocab_size": 11, "n_positions": 8, "n_embd": 6, "n_layer": 2, "n_head": 2,
            "resid_pdrop": pdrop, "embd_pdrop": pdrop, "attn_pdrop": pdrop, "initializer_range": 0.3
        }))
        .unwrap()
    }

    /// The whole model's backward against central differences in f64, with padding on
    /// both sides, for every parameter.
    #[test]
    fn model_gradients_match_finite_differences() {
        let mut m = Gpt2::<f64>::from_config(tiny_config(0.0), 3).unwrap();
        // biases and LN params away from their init so every path is exercised
        let mut r = SplitMix64::new(9);
        for x in m.state_mut().params.iter_mut() {
            *x += 0.1 * (r.next_f64() - 0.5);
        }
        let ids = [1i64, 5, 7, 2, 0, 3, 9, 4, 10, 6];
        let mask = [1i64, 1, 1, 1, 0, 0, 1, 1, 1, 1];
        // the fully masked query (row 1, t 0) follows torch's gradient, not the true
        // derivative (see kernels/attention.rs), so the token it predicts is not counted here
        let labels = [1i64, 5, 7, 2, -100, -100, -100, 4, 10, 6];
        let batch = Batch { ids: &ids, mask: Some(&mask), labels: Some(&labels), b: 2, t: 5 };
        let (worst, scale) = crate::models::testing::gradient_error(&mut m, &batch);
        assert!(worst < 1e-7 * scale.max(1.0), "max abs error {worst:e} (grad scale {scale:e})");
    }

    /// More rows than the loss backward takes at once (head.rs LOSS_ROWS = 256): the chunked
    /// language-model loss against central differences of the full-logits loss.
    #[test]
    fn chunked_loss_gradients_match_finite_differences() {
        let mut m = Gpt2::<f64>::from_config(tiny_config(0.0), 4).unwrap();
        let (b, t) = (40, 7);
        let ids: Vec<i64> = (0..b * t).map(|i| (i * 5 % 11) as i64).collect();
        let labels: Vec<i64> = (0..b * t).map(|i| if i % 9 == 4 { -100 } else { (i * 3 % 11) as i64 }).collect();
        let batch = Batch { ids: &ids, mask: None, labels: Some(&labels), b, t };
        let (worst, scale) = crate::models::testing::gradient_error(&mut m, &batch);
        assert!(worst < 1e-7 * scale.max(1.0), "max abs error {worst:e} (grad scale {scale:e})");
    }

    #[test]
    fn activations_of_changing_shapes_are_exact() {
        crate::models::testing::recycled_activations_are_exact(|| Gpt2::<f32>::from_config(tiny_config(0.0), 5).unwrap());
    }

    #[test]
    fn every_parameter_gets_a_finite_nonzero_gradient() {
        let mut m = Gpt2::<f32>::from_config(tiny_config(0.1), 1).unwrap();
        let ids: Vec<i64> = (0..16).map(|i| (i * 7 % 11) as i64).collect();
        m.forward_backward(&Batch { ids: &ids, mask: None, labels: None, b: 2, t: 8 }, None).unwrap();
        let table = m.state().table.clone();
        let g = m.state_mut().grads_mut();
        for info in table.infos() {
            let gs = &g[info.range.clone()];
            assert!(gs.iter().all(|x| x.is_finite()), "{} has a non-finite gradient", info.name);
            assert!(gs.iter().any(|&x| x != 0.0), "{} has an all-zero gradient", info.name);
        }
    }

    #[test]
    fn dropout_only_in_train_mode() {
        let mut m = Gpt2::<f32>::from_config(tiny_config(0.5), 1).unwrap();
        let ids = [1i64, 2, 3, 4];
        let batch = Batch { ids: &ids, mask: None, labels: None, b: 1, t: 4 };
        m.state_mut().training = false;
        m.forward(&batch).unwrap();
        let a = m.logits().to_vec();
        m.forward(&batch).unwrap();
        assert_eq!(a, m.logits(), "eval is deterministic");
        m.state_mut().training = true;
        m.forward(&batch).unwrap();
        assert_ne!(a, m.logits(), "train mode applies dropout");
    }

    /// Gradient checkpointing changes nothing but memory, with dropout everywhere, padding
    /// and LoRA adapters with their own dropout: block activations take one block's room.
    #[test]
    fn checkpointing_gives_identical_gradients_in_one_block_of_memory() {
        let mut cfg = tiny_config(0.1);
        cfg.n_layer = 3;
        let (b, t, n, c, i, nh) = (2, 8, 16, 6, 24, 2);
        let ids: Vec<i64> = (0..16).map(|i| (i * 7 % 11) as i64).collect();
        let mask: Vec<i64> = (0..16).map(|k| i64::from(k != 8 && k != 9)).collect();
        let batch = Batch { ids: &ids, mask: Some(&mask), labels: None, b, t };
        let mut m = Gpt2::<f32>::from_config(cfg, 1).unwrap();
        let (full, ckpt) = crate::models::testing::checkpointing_is_exact(&mut m, &batch);
        // a block's buffers (dropout masks are drawn again from seeds): 5 (N, C), 1 (N, I),
        // 4 (N), the attention's (B, NH, T, 2) row statistics
        let block = 5 * n * c + n * i + 4 * n + b * nh * t * ROW_STATS;
        assert_eq!(full - ckpt, 2 * block * 4, "two of three blocks' activations are not kept");

        crate::models::testing::attach_lora_everywhere(&mut m);
        let (full, ckpt) = crate::models::testing::checkpointing_is_exact(&mut m, &batch);
        // and the adapters' 4 (N, R) products
        let lora = 4 * n * 2;
        assert_eq!(full - ckpt, 2 * (block + lora) * 4);
    }

    #[test]
    fn checkpointing_gives_identical_gradients_with_a_classification_head() {
        let mut v = tiny_config(0.1).to_value();
        v["architectures"] = serde_json::json!(["GPT2ForSequenceClassification"]);
        v["num_labels"] = 3.into();
        v["pad_token_id"] = 0.into();
        let mut m = Gpt2::<f32>::from_config(Gpt2Config::from_value(v).unwrap(), 1).unwrap();
        let ids = [3i64, 5, 7, 2, 0, 0, 9, 4, 10, 6, 1, 0];
        let labels = [2i64, 0];
        let batch = Batch { ids: &ids, mask: None, labels: Some(&labels), b: 2, t: 6 };
        crate::models::testing::checkpointing_is_exact(&mut m, &batch);
    }

    #[test]
    fn rejects_bad_batches() {
        let ids = [1i64, 11];
        let err = Batch { ids: &ids, mask: None, labels: None, b: 1, t: 2 }.validate(11, 8, true).unwrap_err();
        assert!(err.to_string().contains("11 at [0, 1]"), "{err}");
        let long = [0i64; 9];
        assert!(Batch { ids: &long, mask: None, labels: None, b: 1, t: 9 }.validate(11, 8, true).is_err());
        let mask = [1i64];
        assert!(Batch { ids: &[1, 2], mask: Some(&mask), labels: None, b: 1, t: 2 }.validate(11, 8, true).is_err());
    }
}
