//! The Llama family (transformers' `LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM`): token embeddings, pre-RMSNorm blocks of rotary grouped-query
//! attention (optional q/k/v bias, optional sliding window) and a SwiGLU MLP, a final
//! RMSNorm and an lm_head tied to the embedding or not. Weights keep transformers' names
//! and nn.Linear layout (y = x @ W^T, W: (out, in)).
//!
//! q_proj, k_proj, v_proj (and gate_proj, up_proj) sit next to each other in the flat
//! parameter buffer, so each group is one (out_total, C) matrix and one matmul.
//!
//! Shapes: B = batch, T = time, C = hidden_size, NH = heads, NKV = key/value heads,
//! HS = head_dim, QKV = (NH + 2 NKV) HS, A = NH HS, I = intermediate_size, V = vocab,
//! N = B * T.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::models::decode::{Decoder, DecoderDims, HalfWeights, KvCache, MatmulWeight, Scratch, Weights};
use crate::io::safetensors::RawTensor;
use crate::kernels::attention::{attention_backward, attention_cached_forward, attention_forward, AttnShape, ROW_STATS};
use crate::kernels::crossentropy::{LossStats, IGNORE_INDEX};
use crate::kernels::embedding::{embedding_backward, embedding_forward};
use crate::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward, rmsnorm_recompute};
use crate::kernels::rope::{rope_apply, rope_tables};
use crate::kernels::swiglu::{swiglu_backward, swiglu_forward};
use crate::kernels::Real;
use crate::models::head::{head_forward, head_loss_stats, logit_rows, loss_backward, take_lm_logits, SeqClsHead, SeqClsSpec};
use crate::models::linear::Linear;
use crate::models::lora::{Lora, LoraModule, SiteActs};
use crate::models::params::ParamTable;
use crate::models::{add_inplace, held, Batch, CausalLm, GradSink, GradView, Init, ModelState, Recycled};
use crate::rng::SplitMix64;

struct LayerParams {
    ln1: Range<usize>,
    qkv: Linear, // (QKV, C): q_proj | k_proj | v_proj, with biases (QKV) or without
    o: Linear,   // (C, A), with a bias (C) or without
    ln2: Range<usize>,
    gu: Linear,   // (2I, C): gate_proj | up_proj
    down: Linear, // (C, I)
}

impl LayerParams {
    fn linears(&self) -> [&Linear; 4] {
        [&self.qkv, &self.o, &self.gu, &self.down]
    }
}

struct Layout {
    embed: Range<usize>,
    layers: Vec<LayerParams>,
    norm: Range<usize>,
    /// The lm_head weight (V, C): its own parameter, or the embedding when tied.
    head: Range<usize>,
}

impl Layout {
    /// `lm`: whether the model ends in the language-model head (not a task head).
    fn new(cfg: &LlamaConfig, table: &mut ParamTable, lm: bool) -> Layout {
        let (v, c, i, hs) = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (q, kv) = (cfg.num_attention_heads * hs, cfg.num_key_value_heads * hs);
        let embed = table.push("model.embed_tokens.weight".into(), &[v, c]);
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let mut push = |n: &str, s: &[usize]| table.push(format!("model.layers.{l}.{n}"), s);
                let ln1 = push("input_layernorm.weight", &[c]);
                let qw = push("self_attn.q_proj.weight", &[q, c]);
                let kw = push("self_attn.k_proj.weight", &[kv, c]);
                let vw = push("self_attn.v_proj.weight", &[kv, c]);
                let qkv_bias_parts = cfg.qkv_bias.then(|| {
                    let qb = push("self_attn.q_proj.bias", &[q]);
                    let kb = push("self_attn.k_proj.bias", &[kv]);
                    let vb = push("self_attn.v_proj.bias", &[kv]);
                    [qb, kb, vb]
                });
                let [qb, kb, vb] = qkv_bias_parts.map_or([None, None, None], |bs| bs.map(Some));
                let o_w = push("self_attn.o_proj.weight", &[c, q]);
                let o_b = cfg.o_bias.then(|| push("self_attn.o_proj.bias", &[c]));
                let ln2 = push("post_attention_layernorm.weight", &[c]);
                let gw = push("mlp.gate_proj.weight", &[i, c]);
                let uw = push("mlp.up_proj.weight", &[i, c]);
                let down_w = push("mlp.down_proj.weight", &[c, i]);
                let module = |n: &str| format!("model.layers.{l}.{n}");
                let slot = |kind: usize| l * LORA_PER_LAYER + kind;
                let qkv = vec![(module("self_attn.q_proj"), qw, qb), (module("self_attn.k_proj"), kw, kb), (module("self_attn.v_proj"), vw, vb)];
                let gu = vec![(module("mlp.gate_proj"), gw, None), (module("mlp.up_proj"), uw, None)];
                LayerParams {
                    ln1,
                    qkv: Linear::fused(qkv, c, slot(Q), Q),
                    o: Linear::new(module("self_attn.o_proj"), o_w, o_b, false, q, c, slot(O), O),
                    ln2,
                    gu: Linear::fused(gu, c, slot(GATE), GATE),
                    down: Linear::new(module("mlp.down_proj"), down_w, None, false, i, c, slot(DOWN), DOWN),
                }
            })
            .collect();
        let norm = table.push("model.norm.weight".into(), &[c]);
        let head = if cfg.tie_word_embeddings || !lm { embed.clone() } else { table.push("lm_head.weight".into(), &[v, c]) };
        Layout { embed, layers, norm, head }
    }
}

/// Activations of one block, saved by the forward for the backward. What is cheap to
/// recompute is not kept: the RMSNorm outputs (from the block's input or res2 and the saved
/// rstd), SwiGLU's output (from gu) and the attention probabilities (from qkv and each row's
/// softmax statistics, block by block).
struct LayerActs<F> {
    ln1_rstd: Vec<F>,  // (N)
    qkv: Vec<F>,       // (N, QKV), q and k rotated
    att_stats: Vec<F>, // (B, NH, T, ROW_STATS)
    atty: Vec<F>,      // (N, A)
    res2: Vec<F>,      // (N, C) residual after attention
    ln2_rstd: Vec<F>,  // (N)
    gu: Vec<F>,        // (N, 2I)
    lora: Vec<SiteActs<F>>, // (LORA_PER_LAYER) what the block's adapters save
}

impl<F: Real> LayerActs<F> {
    fn new(cfg: &LlamaConfig, b: usize, t: usize, z: &mut Recycled<F>) -> Self {
        let (n, c, i, nh, hs) = (b * t, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim);
        let (a, qkv) = (nh * hs, (nh + 2 * cfg.num_key_value_heads) * hs);
        LayerActs {
            ln1_rstd: z.take(n),
            qkv: z.take(n * qkv),
            att_stats: z.take(b * nh * t * ROW_STATS),
            atty: z.take(n * a),
            res2: z.take(n * c),
            ln2_rstd: z.take(n),
            gu: z.take(n * 2 * i),
            lora: (0..LORA_PER_LAYER).map(|_| SiteActs::default()).collect(),
        }
    }

    /// Hands every buffer to `free` (the LoRA sites' small ones are dropped).
    fn recycle(self, free: &mut Vec<Vec<F>>) {
        let LayerActs { ln1_rstd, qkv, att_stats, atty, res2, ln2_rstd, gu, lora: _ } = self;
        free.extend([ln1_rstd, qkv, att_stats, atty, res2, ln2_rstd, gu]);
    }

    fn bytes(&self) -> usize {
        let bufs = [&self.ln1_rstd, &self.qkv, &self.att_stats, &self.atty, &self.res2, &self.ln2_rstd, &self.gu];
        held(&bufs) + self.lora.iter().map(SiteActs::bytes).sum::<usize>()
    }
}

/// All activations for one (B, T), plus the gradient scratch buffers of the backward.
/// Without gradient checkpointing every block keeps its own `LayerActs`. With it there is
/// one set: the forward overwrites it block after block, and the backward refills it right
/// before each block's backward by running that block's forward again, from the block's
/// input (kept in `res`) and the dropout generator's state as the block started (`rng_at`,
/// for LoRA dropout), so every dropout mask is drawn again identically.
struct Acts<F> {
    b: usize,
    t: usize,
    checkpointing: bool,
    ids: Vec<i64>,
    targets: Vec<i64>,
    positions: Vec<usize>, // (N)
    cos: Vec<F>,           // (T, HS/2)
    sin: Vec<F>,           // (T, HS/2)
    encoded: Vec<F>,       // (N, C)
    layers: Vec<LayerActs<F>>, // one per block, or the one set of gradient checkpointing
    res: Vec<Vec<F>>,          // L x (N, C) the residual stream after each block
    rng_at: Vec<u64>,          // (L) the dropout generator's state as each block starts
    lnf: Vec<F>,      // (N, C)
    lnf_rstd: Vec<F>, // (N)
    logits: Vec<F>,   // (N, V), turned into dlogits in place by the backward
    // forward scratch: the RMSNorm outputs and SwiGLU's (the backward recomputes them)
    ln: Vec<F>,  // (N, C)
    mlp: Vec<F>, // (N, I)
    // gradient scratch
    dres: Vec<F>,  // (N, C)
    dln: Vec<F>,   // (N, C)
    dh: Vec<F>,    // (N, I)
    // (N, 2I) in a block's MLP part; in its attention part, which comes after, the same
    // memory holds datty (N, A) | dqkv (N, QKV)
    dgu: Vec<F>,
}

impl<F: Real> Acts<F> {
    /// Activations for (B, T), in the buffers of `z` where they fit.
    fn new(cfg: &LlamaConfig, b: usize, t: usize, checkpointing: bool, z: &mut Recycled<F>) -> Self {
        let (n, c, i) = (b * t, cfg.hidden_size, cfg.intermediate_size);
        let (nh, hs) = (cfg.num_attention_heads, cfg.head_dim);
        let (a, qkv) = (nh * hs, (nh + 2 * cfg.num_key_value_heads) * hs);
        let (cos, sin) = rope_tables(&cfg.inv_freq(), t);
        let sets = if checkpointing { 1 } else { cfg.num_hidden_layers };
        Acts {
            b,
            t,
            checkpointing,
            ids: vec![0; n],
            targets: vec![IGNORE_INDEX; n],
            // transformers' plain forward: positions 0..T on every row, padded or not
            positions: (0..n).map(|k| k % t).collect(),
            cos,
            sin,
            encoded: z.take(n * c),
            layers: (0..sets).map(|_| LayerActs::new(cfg, b, t, z)).collect(),
            res: (0..cfg.num_hidden_layers).map(|_| z.take(n * c)).collect(),
            rng_at: vec![0; cfg.num_hidden_layers],
            lnf: z.take(n * c),
            lnf_rstd: z.take(n),
            // (N, V) by `forward`; (LOSS_ROWS, V) chunks by `forward_backward`: sized there
            logits: std::mem::take(&mut z.logits),
            ln: z.take(n * c),
            mlp: z.take(n * i),
            dres: z.take(n * c),
            dln: z.take(n * c),
            dh: z.take(n * i),
            dgu: z.take(n * (2 * i).max(a + qkv)),
        }
    }

    /// Every buffer, for the activations of the next batch shape.
    fn recycle(self) -> Recycled<F> {
        let Acts { encoded, layers, res, lnf, lnf_rstd, logits, ln, mlp, dres, dln, dh, dgu, .. } = self;
        let mut free = vec![encoded, lnf, lnf_rstd, ln, mlp, dres, dln, dh, dgu];
        free.extend(res);
        layers.into_iter().for_each(|la| la.recycle(&mut free));
        Recycled::new(free, logits)
    }

    /// Which set of `layers` block l uses.
    fn layer_slot(&self, l: usize) -> usize {
        if self.checkpointing { 0 } else { l }
    }

    fn bytes(&self) -> usize {
        let bufs = [&self.cos, &self.sin, &self.encoded, &self.lnf, &self.lnf_rstd, &self.logits];
        let scratch = [&self.ln, &self.mlp, &self.dres, &self.dln, &self.dh, &self.dgu];
        held(&bufs) + held(&scratch) + held(&[&self.ids, &self.targets]) + held(&[&self.positions]) + held(&[&self.rng_at])
            + self.layers.iter().map(LayerActs::bytes).sum::<usize>() + self.res.iter().map(|r| held(&[r])).sum::<usize>()
    }
}

/// The rotary tables and each row's position.
struct Rope<'a, F> {
    cos: &'a [F],
    sin: &'a [F],
    positions: &'a [usize],
}

/// One block's forward: `out` (N, C) = the residual stream after block l, from `inp` (N, C)
/// before it; `la` gets what the block's backward needs, `ln` (N, C) and `mlp` (N, I) are
/// scratch. LoRA's dropout masks are drawn from `rng` in a fixed order, so a second run from
/// the same generator state draws them again. Without `output` (checkpointing's second run,
/// which wants only `la`) the down projection, which only makes `out`, is skipped; `out` is
/// then left with garbage.
#[allow(clippy::too_many_arguments)]
fn block_forward<F: Real>(
    cfg: &LlamaConfig,
    lp: &LayerParams,
    p: &[F],
    lora: Option<&Lora>,
    la: &mut LayerActs<F>,
    (ln, mlp): (&mut [F], &mut [F]),
    inp: &[F],
    out: &mut [F],
    mask: Option<&[i64]>,
    shape: AttnShape,
    rope: &Rope<'_, F>,
    train: bool,
    output: bool,
    rng: &mut SplitMix64,
) {
    let (n, c, i, hs, eps) = (shape.b * shape.t, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.rms_norm_eps);
    let (qkv, rot_heads) = (shape.qkv_width(), shape.nh + shape.nkv);
    let scale = 1.0 / (hs as f64).sqrt();
    rmsnorm_forward(ln, &mut la.ln1_rstd, inp, &p[lp.ln1.clone()], c, eps);
    lp.qkv.forward(p, lora, &mut la.lora, ln, &mut la.qkv, n, train, rng, true);
    rope_apply(&mut la.qkv, rope.cos, rope.sin, rope.positions, rot_heads, hs, qkv, false);
    attention_forward(&mut la.atty, &mut la.att_stats, &la.qkv, mask, None, shape, scale);
    // res2 = inp + o_proj(atty)
    lp.o.forward(p, lora, &mut la.lora, &la.atty, &mut la.res2, n, train, rng, true);
    add_inplace(&mut la.res2, inp);

    rmsnorm_forward(ln, &mut la.ln2_rstd, &la.res2, &p[lp.ln2.clone()], c, eps);
    lp.gu.forward(p, lora, &mut la.lora, ln, &mut la.gu, n, train, rng, true);
    // out = res2 + down_proj(h)
    if output || lp.down.adapted(lora) {
        swiglu_forward(mlp, &la.gu, i);
    }
    lp.down.forward(p, lora, &mut la.lora, mlp, out, n, train, rng, output);
    if output {
        add_inplace(out, &la.res2);
    }
}

/// One block's backward, the pair of `block_forward`: from what that saved in `la` and from
/// the block's input `inp` (N, C), `dres` (N, C), the gradient of the residual stream after
/// block l, becomes the gradient before it, and the gradients of the block's parameters go
/// to `g`. `ln` (N, C) and `mlp` (N, I) are the forward's scratch, recomputed here; `dln`
/// (N, C), `dh` (N, I) and `dgu` (N, max(2I, A + QKV)) are gradient scratch.
#[allow(clippy::too_many_arguments)]
fn block_backward<F: Real>(
    cfg: &LlamaConfig,
    lp: &LayerParams,
    p: &[F],
    lora: Option<&Lora>,
    la: &LayerActs<F>,
    g: &mut GradView<'_, F>,
    (ln, mlp): (&mut [F], &mut [F]),
    (dln, dh, dgu): (&mut [F], &mut [F], &mut [F]),
    inp: &[F],
    dres: &mut [F],
    mask: Option<&[i64]>,
    shape: AttnShape,
    rope: &Rope<'_, F>,
) {
    let (n, c, i, hs) = (shape.b * shape.t, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (a, qkv, rot_heads) = (shape.nh * hs, shape.qkv_width(), shape.nh + shape.nkv);
    let scale = 1.0 / (hs as f64).sqrt();
    // out = res2 + down_proj(swiglu(gate_up_proj(rmsnorm(res2))))
    swiglu_forward(mlp, &la.gu, i);
    lp.down.backward(p, lora, &la.lora, g, mlp, dres, dh, n);
    swiglu_backward(dgu, dh, &la.gu, i);
    rmsnorm_recompute(ln, &la.res2, &la.ln2_rstd, &p[lp.ln2.clone()], c);
    lp.gu.backward(p, lora, &la.lora, g, ln, dgu, dln, n);
    rmsnorm_backward(dres, g.get(&lp.ln2), dln, &la.res2, &p[lp.ln2.clone()], &la.ln2_rstd, c);

    // res2 = inp + o_proj(attention(rope(qkv_proj(rmsnorm(inp)))))
    let (datty, dqkv) = dgu[..n * (a + qkv)].split_at_mut(n * a);
    lp.o.backward(p, lora, &la.lora, g, &la.atty, dres, datty, n);
    attention_backward(dqkv, datty, &la.qkv, &la.att_stats, mask, None, shape, scale);
    rope_apply(dqkv, rope.cos, rope.sin, rope.positions, rot_heads, hs, qkv, true);
    rmsnorm_recompute(ln, inp, &la.ln1_rstd, &p[lp.ln1.clone()], c);
    lp.qkv.backward(p, lora, &la.lora, g, ln, dqkv, dln, n);
    rmsnorm_backward(dres, g.get(&lp.ln1), dln, inp, &p[lp.ln1.clone()], &la.ln1_rstd, c);
}

/// LoRA slots of each block: q, k, v, o, gate, up, down projections.
const LORA_PER_LAYER: usize = 7;
const Q: usize = 0;
const O: usize = 3;
const GATE: usize = 4;
const DOWN: usize = 6;

pub struct Llama<F: Real> {
    pub config: LlamaConfig,
    lora: Option<Lora>,
    /// A sequence-classification head instead of the language-model head.
    cls: Option<SeqClsHead<F>>,
    state: ModelState<F>,
    layout: Layout,
    acts: Option<Acts<F>>,
}

impl<F: Real> Llama<F> {
    /// The forward up to the final norm (acts.lnf), without the head.
    fn trunk(&mut self, batch: &Batch<'_>) -> Result<()> {
        batch.validate(self.config.vocab_size, self.config.max_position_embeddings, self.cls.is_none())?;
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
        let shapes: Vec<AttnShape> = (0..self.config.num_hidden_layers).map(|l| self.attn_shape(b, t, l)).collect();
        let cfg = &self.config;
        let (c, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let acts = self.acts.as_mut().expect("allocated above");
        let (p, lay, rng) = (&self.state.params, &self.layout, &mut self.state.rng);
        let train = self.state.training;
        let lora = self.lora.as_ref();

        acts.ids.copy_from_slice(batch.ids);
        if self.cls.is_none() {
            batch.next_token_targets(&mut acts.targets);
        }
        embedding_forward(&mut acts.encoded, batch.ids, &p[lay.embed.clone()], None, t, c);

        let rope = Rope { cos: &acts.cos, sin: &acts.sin, positions: &acts.positions };
        for (l, lp) in lay.layers.iter().enumerate() {
            acts.rng_at[l] = rng.state();
            let k = acts.layer_slot(l);
            let (done, rest) = acts.res.split_at_mut(l);
            let inp = if l == 0 { &acts.encoded } else { &done[l - 1] };
            let scratch = (&mut acts.ln[..], &mut acts.mlp[..]);
            block_forward(cfg, lp, p, lora, &mut acts.layers[k], scratch, inp, &mut rest[0], batch.mask, shapes[l], &rope, train, true, rng);
        }

        let last = acts.res.last().unwrap_or(&acts.encoded);
        rmsnorm_forward(&mut acts.lnf, &mut acts.lnf_rstd, last, &p[lay.norm.clone()], c, eps);
        Ok(())
    }

    /// A model with zeroed weights (load or initialise them next).
    pub fn empty(config: LlamaConfig) -> Result<Self> {
        let mut table = ParamTable::default();
        let spec = SeqClsSpec::from_config(&config.raw)?;
        let layout = Layout::new(&config, &mut table, spec.is_none());
        let cls = spec.map(|spec| {
            let score = table.push("score.weight".into(), &[spec.num_labels, config.hidden_size]);
            SeqClsHead::new(spec, score)
        });
        Ok(Self { config, lora: None, cls, state: ModelState::new(table)?, layout, acts: None })
    }

    /// transformers' initialisation: N(0, initializer_range) for linear weights and the
    /// embedding, zero biases, RMSNorm weights 1.
    pub fn from_config(config: LlamaConfig, seed: u64) -> Result<Self> {
        let mut m = Self::empty(config)?;
        let std = m.config.initializer_range;
        m.state.init(seed, |name| {
            if name.ends_with("norm.weight") {
                Init::Const(1.0)
            } else if name.ends_with(".bias") {
                Init::Const(0.0)
            } else {
                Init::Normal(std)
            }
        });
        Ok(m)
    }

    fn attn_shape(&self, b: usize, t: usize, layer: usize) -> AttnShape {
        let c = &self.config;
        AttnShape {
            b,
            t,
            nh: c.num_attention_heads,
            nkv: c.num_key_value_heads,
            hs: c.head_dim,
            window: c.layer_windows[layer],
        }
    }
}

impl<F: Real> CausalLm<F> for Llama<F> {
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

    /// A tied `lm_head.weight` in the checkpoint is the embedding again; rotary `inv_freq`
    /// buffers of old checkpoints are not parameters.
    fn load_tensors(&mut self, tensors: BTreeMap<String, RawTensor>, source: &Path) -> Result<()> {
        // a classification head has no lm_head; on a causal-LM checkpoint it keeps its init
        let skip_head = self.config.tie_word_embeddings || self.cls.is_some();
        let optional: &[&str] = if self.cls.is_some() { &["score.weight"] } else { &[] };
        let arch = self.config.model_type.clone();
        self.state.load_tensors(tensors, source, &arch, optional, |name: &str| {
            if (skip_head && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq") {
                None
            } else {
                Some(name.to_string())
            }
        })
    }

    fn as_decoder(&self) -> Option<&dyn Decoder<F>> {
        if self.cls.is_some() {
            None
        } else {
            Some(self)
        }
    }

    fn num_labels(&self) -> Option<usize> {
        self.cls.as_ref().map(|h| h.spec.num_labels)
    }

    fn lora_modules(&self) -> (usize, Vec<LoraModule>) {
        let modules = self.layout.layers.iter().flat_map(LayerParams::linears).flat_map(Linear::lora_modules).collect();
        (self.config.num_hidden_layers * LORA_PER_LAYER, modules)
    }

    fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    fn set_lora(&mut self, lora: Option<Lora>) {
        self.lora = lora;
        self.acts = None; // they hold what the previous adapters saved
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

    fn forward(&mut self, batch: &Batch<'_>) -> Result<()> {
        self.trunk(batch)?;
        let acts = self.acts.as_mut().expect("trunk allocated activations");
        let dims = (batch.b, batch.t, self.config.hidden_size, self.config.vocab_size);
        head_forward(self.cls.as_mut(), &self.state.params, &self.layout.head, &acts.lnf, &mut acts.logits, batch.ids, batch.labels, dims)
    }

    fn loss_stats(&self) -> LossStats {
        let a = self.acts.as_ref().expect("forward before loss_stats");
        head_loss_stats(self.cls.as_ref(), &a.logits, &a.targets, self.config.vocab_size)
    }

    fn activation_bytes(&self) -> usize {
        self.acts.as_ref().map_or(0, Acts::bytes) + self.cls.as_ref().map_or(0, SeqClsHead::bytes)
    }

    fn block_params(&self) -> Vec<Range<usize>> {
        self.layout.layers.iter().map(|lp| lp.ln1.start..lp.down.end()).collect()
    }

    fn backward_with(&mut self, batch: &Batch<'_>, num_items: Option<f64>, sink: Option<&mut dyn GradSink<F>>) -> Result<LossStats> {
        self.trunk(batch)?;
        if let Some(h) = self.cls.as_mut() {
            let a = self.acts.as_ref().expect("trunk allocated activations");
            h.forward(&self.state.params, &a.lnf, batch.ids, batch.labels, batch.b, batch.t, self.config.hidden_size)?;
        }
        let (b, t) = (batch.b, batch.t);
        let shapes: Vec<AttnShape> = (0..self.config.num_hidden_layers).map(|l| self.attn_shape(b, t, l)).collect();
        let cfg = &self.config;
        let (n, c, v) = (b * t, cfg.hidden_size, cfg.vocab_size);
        let acts = self.acts.as_mut().expect("forward allocated activations");
        let train = self.state.training;
        let (p, mut g) = self.state.grad_view(sink);
        let lora = self.lora.as_ref();
        let lay = &self.layout;
        let (logits, targets) = (&mut acts.logits, &acts.targets);
        let stats = loss_backward(self.cls.as_mut(), p, &mut g, &lay.head, logits, targets, num_items, &acts.lnf, &mut acts.dln, (n, c, v))?;
        g.lend(std::mem::take(&mut acts.logits)); // free until the next step's loss
        acts.dres.fill(F::zero());
        let last = acts.res.last().unwrap_or(&acts.encoded);
        rmsnorm_backward(&mut acts.dres, g.get(&lay.norm), &acts.dln, last, &p[lay.norm.clone()], &acts.lnf_rstd, c);

        let rope = Rope { cos: &acts.cos, sin: &acts.sin, positions: &acts.positions };
        for l in (0..cfg.num_hidden_layers).rev() {
            let lp = &lay.layers[l];
            g.begin_block(l);
            let k = acts.layer_slot(l);
            let (done, rest) = acts.res.split_at_mut(l);
            let residual = if l == 0 { &acts.encoded } else { &done[l - 1] };
            let la = &mut acts.layers[k];
            // gradient checkpointing: the block's forward again, with the dropout generator as
            // it stood then (the last block's activations are still there from the forward),
            // without its down projection; it leaves garbage in the block's output, whose last
            // reader, block l + 1, is done
            if acts.checkpointing && l + 1 < cfg.num_hidden_layers {
                let mut rng = SplitMix64::new(acts.rng_at[l]);
                let scratch = (&mut acts.ln[..], &mut acts.mlp[..]);
                block_forward(cfg, lp, p, lora, la, scratch, residual, &mut rest[0], batch.mask, shapes[l], &rope, train, false, &mut rng);
            }
            let scratch = (&mut acts.ln[..], &mut acts.mlp[..]);
            let dscratch = (&mut acts.dln[..], &mut acts.dh[..], &mut acts.dgu[..]);
            block_backward(cfg, lp, p, lora, la, &mut g, scratch, dscratch, residual, &mut acts.dres, batch.mask, shapes[l], &rope);
            g.end_block(l);
        }

        acts.logits = g.reclaim();
        // nn.Embedding(padding_idx=pad_token_id): the padding row gets no gradient
        embedding_backward(g.get(&lay.embed), None, &acts.dres, &acts.ids, cfg.pad_token_id, t, c);
        Ok(stats)
    }
}

/// The inference forward over a key/value cache (decode.rs).
impl<F: Real> Decoder<F> for Llama<F> {
    fn dims(&self) -> DecoderDims {
        let c = &self.config;
        let (nh, nkv, hs) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        DecoderDims {
            layers: c.num_hidden_layers,
            nkv,
            hs,
            c: c.hidden_size,
            qkv: (nh + 2 * nkv) * hs,
            a: nh * hs,
            mlp_in: 2 * c.intermediate_size,
            mlp_act: c.intermediate_size,
            vocab: c.vocab_size,
            max_positions: c.max_position_embeddings,
        }
    }

    fn params(&self) -> &[F] {
        &self.state.params
    }

    fn matmul_weights(&self) -> Vec<MatmulWeight> {
        let d = self.dims();
        let mut w: Vec<MatmulWeight> = self.layout.layers.iter().flat_map(LayerParams::linears).map(Linear::matmul_weight).collect();
        w.push(MatmulWeight { range: self.layout.head.clone(), n: d.vocab, k: d.c, conv1d: false });
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
        let d = self.dims();
        let cfg = &self.config;
        let (b, c, i, v, hs, nh) = (cache.b, d.c, d.mlp_act, d.vocab, d.hs, cfg.num_attention_heads);
        let (n, qkv, a, eps) = (b * t, d.qkv, d.a, cfg.rms_norm_eps);
        let (past, cap) = (cache.len, cache.cap);
        if past + t > cap {
            return Err(Error::Input(format!("KV cache holds {cap} positions, {} requested", past + t)));
        }
        assert!(n <= sc.rows, "scratch sized for {} rows, {n} requested", sc.rows);
        if sc.cos.is_empty() {
            (sc.cos, sc.sin) = rope_tables(&cfg.inv_freq(), cap);
        }
        let (p, lay) = (&self.state.params, &self.layout);
        let (w, lora) = (Weights { p, half }, self.lora.as_ref());
        let embed = &p[lay.embed.clone()];
        let mut pos = Vec::with_capacity(n);
        for (r, xr) in sc.x[..n * c].chunks_exact_mut(c).enumerate() {
            let (id, ps) = (ids[r], positions[r]);
            if id < 0 || id as usize >= v {
                return Err(Error::TokenOutOfRange { what: "token id", id, row: r / t, col: r % t, vocab: v });
            }
            if ps < 0 || ps as usize >= cap {
                return Err(Error::Input(format!("position {ps} is outside the cache of {cap} positions")));
            }
            xr.copy_from_slice(&embed[id as usize * c..][..c]);
            pos.push(ps as usize);
        }
        cache.push_mask(mask, t);
        let scale = 1.0 / (hs as f64).sqrt();
        for (l, lp) in lay.layers.iter().enumerate() {
            rmsnorm_forward(&mut sc.ln[..n * c], &mut sc.rstd[..n], &sc.x[..n * c], &p[lp.ln1.clone()], c, eps);
            lp.qkv.decode(&w, lora, &sc.ln[..n * c], &mut sc.qkv, n);
            rope_apply(&mut sc.qkv[..n * qkv], &sc.cos, &sc.sin, &pos, nh + cfg.num_key_value_heads, hs, qkv, false);
            cache.append(l, &sc.qkv, t, qkv, a, a + d.nkv * hs);
            let shape = self.attn_shape(b, t, l);
            attention_cached_forward(&mut sc.atty[..n * a], &sc.qkv[..n * qkv], &cache.k[l], &cache.v[l], &cache.key_mask, shape, past, cap, scale);
            lp.o.decode(&w, lora, &sc.atty[..n * a], &mut sc.tmp, n);
            add_inplace(&mut sc.x[..n * c], &sc.tmp[..n * c]);
            rmsnorm_forward(&mut sc.ln[..n * c], &mut sc.rstd[..n], &sc.x[..n * c], &p[lp.ln2.clone()], c, eps);
            lp.gu.decode(&w, lora, &sc.ln[..n * c], &mut sc.fch, n);
            swiglu_forward(&mut sc.fchg[..n * i], &sc.fch[..n * 2 * i], i);
            lp.down.decode(&w, lora, &sc.fchg[..n * i], &mut sc.tmp, n);
            add_inplace(&mut sc.x[..n * c], &sc.tmp[..n * c]);
        }
        // final RMSNorm and lm_head, on every row or on the last one of each batch row
        let rows = logit_rows(&sc.x, &mut sc.tmp, b, t, c, all_logits);
        rmsnorm_forward(&mut sc.ln[..rows * c], &mut sc.rstd[..rows], &sc.tmp[..rows * c], &p[lay.norm.clone()], c, eps);
        w.linear(logits, &sc.ln[..rows * c], lay.head.clone(), None, rows, c, v);
        cache.len += t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Value) -> LlamaConfig {
        let mut v = serde_json::json!({
            "model_type": "llama", "vocab_size": 13, "hidden_size": 8, "intermediate_size": 10,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 16, "initializer_range": 0.3, "tie_word_embeddings": true
        });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        LlamaConfig::from_value(v).unwrap()
    }

    /// Every parameter's gradient against central differences in f64.
    fn check_gradients(cfg: LlamaConfig) {
        let mut m = Llama::<f64>::from_config(cfg, 3).unwrap();
        let mut r = SplitMix64::new(9);
        for x in m.state_mut().params.iter_mut() {
            *x += 0.1 * (r.next_f64() - 0.5);
        }
        let ids = [1i64, 5, 7, 2, 0, 3, 9, 4, 12, 6, 11, 8];
        let mask = [1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1];
        let batch = Batch { ids: &ids, mask: Some(&mask), labels: None, b: 2, t: 6 };
        let (worst, scale) = crate::models::testing::gradient_error(&mut m, &batch);
        assert!(worst < 1e-7 * scale.max(1.0), "max abs error {worst:e} (grad scale {scale:e})");
    }

    #[test]
    fn activations_of_changing_shapes_are_exact() {
        crate::models::testing::recycled_activations_are_exact(|| Llama::<f32>::from_config(config(serde_json::json!({})), 5).unwrap());
    }

    #[test]
    fn gqa_tied_gradients_match_finite_differences() {
        check_gradients(config(serde_json::json!({})));
    }

    #[test]
    fn qwen2_bias_untied_gradients_match_finite_differences() {
        check_gradients(config(serde_json::json!({"model_type": "qwen2", "tie_word_embeddings": false})));
    }

    #[test]
    fn mistral_window_llama3_rope_gradients_match_finite_differences() {
        check_gradients(config(serde_json::json!({
            "model_type": "mistral", "sliding_window": 3, "attention_bias": true,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 4}
        })));
    }

    /// Gradient checkpointing changes nothing but memory: grouped-query attention, a sliding
    /// window, padding, and LoRA adapters with dropout; block activations take one block's room.
    #[test]
    fn checkpointing_gives_identical_gradients_in_one_block_of_memory() {
        let cfg = config(serde_json::json!({"model_type": "mistral", "sliding_window": 3, "num_hidden_layers": 3}));
        let (b, t, n, c, i, nh, qkv) = (2, 6, 12, 8, 10, 4, 16);
        let mut m = Llama::<f32>::from_config(cfg, 1).unwrap();
        let ids = [1i64, 5, 7, 2, 0, 3, 9, 4, 12, 6, 11, 8];
        let mask = [1i64, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
        let batch = Batch { ids: &ids, mask: Some(&mask), labels: None, b, t };
        let (full, ckpt) = crate::models::testing::checkpointing_is_exact(&mut m, &batch);
        // a block's buffers: 2 (N, C) (A = C here), 1 (N, QKV), 2 (N, I), 2 (N), the attention's
        // (B, NH, T, 2) row statistics
        let block = 2 * n * c + n * qkv + 2 * n * i + 2 * n + b * nh * t * ROW_STATS;
        assert_eq!(full - ckpt, 2 * block * 4, "two of three blocks' activations are not kept");

        crate::models::testing::attach_lora_everywhere(&mut m);
        let (full, ckpt) = crate::models::testing::checkpointing_is_exact(&mut m, &batch);
        // and the adapters' 7 (N, R) products (their dropout masks are drawn again from seeds)
        let lora = 7 * n * 2;
        assert_eq!(full - ckpt, 2 * (block + lora) * 4);
    }

    #[test]
    fn rejects_unsupported_configs() {
        let base = serde_json::json!({"model_type": "llama", "vocab_size": 13, "hidden_size": 8, "intermediate_size": 10,
            "num_hidden_layers": 1, "num_attention_heads": 4});
        let with = |k: &str, v: Value| {
            let mut x = base.clone();
            x[k] = v;
            LlamaConfig::from_value(x).unwrap_err().to_string()
        };
        assert!(with("hidden_act", "gelu".into()).contains("hidden_act"));
        assert!(with("num_key_value_heads", 3.into()).contains("multiple"));
        assert!(with("rope_parameters", serde_json::json!({"rope_type": "yarn", "factor": 2.0})).contains("yarn"));
        let mut missing = base.clone();
        missing.as_object_mut().unwrap().remove("hidden_size");
        assert!(LlamaConfig::from_value(missing).unwrap_err().to_string().contains("hidden_size"));
    }
}
