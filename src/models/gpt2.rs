//! GPT-2 (transformers' `GPT2LMHeadModel`): token + position embeddings, pre-LayerNorm
//! blocks of causal self-attention and a gelu_new MLP, a final LayerNorm and the lm_head
//! tied to the token embedding. Weights keep Hugging Face's names and Conv1D layout
//! (y = x @ W + b, W: (in, out)). The trunk, the head, checkpointing and decoding are
//! transformer.rs's; this file holds the block and the config mapping.
//!
//! Shapes: B = batch, T = time, C = n_embd, NH = n_head, HS = C / NH, V = vocab_size,
//! N = B * T, I = MLP width (4C).

use std::ops::Range;

use serde_json::Value;

use crate::config::Gpt2Config;
use crate::error::Result;
use crate::kernels::attention::{attention_backward, attention_cached_forward, attention_forward, AttnShape, ROW_STATS};
use crate::kernels::dropout::{dropout_apply, Dropout};
use crate::kernels::gelu::{gelu_backward, gelu_forward};
use crate::kernels::layernorm::{layernorm_backward, layernorm_forward, layernorm_recompute};
use crate::kernels::Real;
use crate::models::decode::{DecoderDims, KvCache, Scratch, Weights};
use crate::models::transformer::{Block, Ctx, Ends, Transformer, Trunk};
use crate::models::{add_inplace, held, linear::Linear, lora::Lora, lora::SiteActs, params::ParamTable, GradView, Init, Recycled};
use crate::rng::SplitMix64;

/// GPT-2: the shared decoder-only transformer with GPT-2's block.
pub type Gpt2<F> = Transformer<F, Gpt2Block>;

/// One block's parameters.
pub struct Gpt2Block {
    ln1_w: Range<usize>,
    ln1_b: Range<usize>,
    attn: Linear,   // c_attn (C, 3C)
    proj: Linear,   // attn.c_proj (C, C)
    ln2_w: Range<usize>,
    ln2_b: Range<usize>,
    fc: Linear,     // c_fc (C, I)
    fcproj: Linear, // mlp.c_proj (I, C)
}

/// LoRA slots of each block: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj.
const LORA_PER_LAYER: usize = 4;
const C_ATTN: usize = 0;
const ATTN_PROJ: usize = 1;
const C_FC: usize = 2;
const MLP_PROJ: usize = 3;

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
pub struct LayerActs<F> {
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

/// Scratch every block shares: the forward's LayerNorm and GELU outputs (the backward
/// recomputes them) and gradient buffers.
pub struct Work<F> {
    ln: Vec<F>,   // (N, C)
    gelu: Vec<F>, // (N, I)
    dtmp: Vec<F>, // (N, C)
    // (N, I) in a block's MLP part; in its attention part, which comes after, the same
    // memory holds datty (N, C) | dqkv (N, 3C)
    dfch: Vec<F>,
}

/// The attention score scale of layer l: 1/sqrt(HS) (scale_attn_weights), divided by l + 1
/// with scale_attn_by_inverse_layer_idx.
fn attn_scale(cfg: &Gpt2Config, l: usize) -> f64 {
    let base = if cfg.scale_attn_weights { 1.0 / ((cfg.n_embd / cfg.n_head) as f64).sqrt() } else { 1.0 };
    if cfg.scale_attn_by_inverse_layer_idx { base / (l + 1) as f64 } else { base }
}

impl<F: Real> Block<F> for Gpt2Block {
    type Config = Gpt2Config;
    type Acts = LayerActs<F>;
    type Work = Work<F>;
    const LORA_SLOTS: usize = LORA_PER_LAYER;

    fn trunk(cfg: &Gpt2Config) -> Trunk {
        Trunk {
            vocab: cfg.vocab_size,
            c: cfg.n_embd,
            layers: cfg.n_layer,
            max_positions: cfg.n_positions,
            embd_pdrop: cfg.embd_pdrop,
            pad_token_id: None,
            norm_eps: cfg.layer_norm_epsilon,
        }
    }

    fn config_value(cfg: &Gpt2Config) -> Value {
        cfg.to_value()
    }

    /// The lm_head is always the token embedding.
    fn layout(cfg: &Gpt2Config, table: &mut ParamTable, _lm: bool) -> Result<(Ends, Vec<Self>)> {
        cfg.validate()?;
        let (v, c, i, p) = (cfg.vocab_size, cfg.n_embd, cfg.inner(), cfg.n_positions);
        let wte = table.push("transformer.wte.weight".into(), &[v, c]);
        let wpe = table.push("transformer.wpe.weight".into(), &[p, c]);
        let blocks = (0..cfg.n_layer)
            .map(|l| {
                let name = |n: &str| format!("transformer.h.{l}.{n}");
                Gpt2Block {
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
        let norm_w = table.push("transformer.ln_f.weight".into(), &[c]);
        let norm_b = Some(table.push("transformer.ln_f.bias".into(), &[c]));
        Ok((Ends { head: wte.clone(), embed: wte, wpe: Some(wpe), norm_w, norm_b }, blocks))
    }

    /// transformers' initialisation: N(0, initializer_range) for weights and embeddings,
    /// scaled by 1/sqrt(2 n_layer) for the residual projections (c_proj), zero biases,
    /// LayerNorm weight 1 and bias 0.
    fn init(cfg: &Gpt2Config, name: &str) -> Init {
        let std = cfg.initializer_range;
        if name.contains(".ln_") {
            Init::Const(if name.ends_with(".weight") { 1.0 } else { 0.0 })
        } else if name.ends_with(".bias") {
            Init::Const(0.0)
        } else if name.ends_with("c_proj.weight") {
            Init::Normal(std / (2.0 * cfg.n_layer as f64).sqrt())
        } else {
            Init::Normal(std)
        }
    }

    /// Checkpoint names with or without the `transformer.` prefix; the tied `lm_head.weight`
    /// and the causal-mask buffers of old checkpoints (`attn.bias`, `attn.masked_bias`) are
    /// not parameters.
    fn checkpoint_name(name: &str, _skip_head: bool) -> Option<String> {
        if name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
            None
        } else if name.starts_with("transformer.") || name == "score.weight" {
            Some(name.to_string())
        } else {
            Some(format!("transformer.{name}"))
        }
    }

    fn decoder_dims(cfg: &Gpt2Config) -> DecoderDims {
        let c = cfg.n_embd;
        DecoderDims {
            layers: cfg.n_layer,
            nkv: cfg.n_head,
            hs: c / cfg.n_head,
            c,
            qkv: 3 * c,
            a: c,
            mlp_in: cfg.inner(),
            mlp_act: cfg.inner(),
            vocab: cfg.vocab_size,
            max_positions: cfg.n_positions,
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        vec![&self.attn, &self.proj, &self.fc, &self.fcproj]
    }

    fn params(&self) -> Range<usize> {
        self.ln1_w.start..self.fcproj.end()
    }

    fn new_acts(cfg: &Gpt2Config, b: usize, t: usize, z: &mut Recycled<F>) -> LayerActs<F> {
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

    fn new_work(cfg: &Gpt2Config, b: usize, t: usize, z: &mut Recycled<F>) -> Work<F> {
        let (n, c, i) = (b * t, cfg.n_embd, cfg.inner());
        Work { ln: z.take(n * c), gelu: z.take(n * i), dtmp: z.take(n * c), dfch: z.take(n * i.max(4 * c)) }
    }

    /// The LoRA sites' small buffers are dropped.
    fn recycle(acts: LayerActs<F>, free: &mut Vec<Vec<F>>) {
        let LayerActs { ln1_mean, ln1_rstd, qkv, att_stats, atty, res2, ln2_mean, ln2_rstd, fch, drops: _, lora: _ } = acts;
        free.extend([ln1_mean, ln1_rstd, qkv, att_stats, atty, res2, ln2_mean, ln2_rstd, fch]);
    }

    fn recycle_work(w: Work<F>, free: &mut Vec<Vec<F>>) {
        free.extend([w.ln, w.gelu, w.dtmp, w.dfch]);
    }

    fn acts_bytes(a: &LayerActs<F>) -> usize {
        let bufs = [&a.ln1_mean, &a.ln1_rstd, &a.qkv, &a.att_stats, &a.atty, &a.res2, &a.ln2_mean, &a.ln2_rstd, &a.fch];
        held(&bufs) + a.lora.iter().map(SiteActs::bytes).sum::<usize>()
    }

    fn work_bytes(w: &Work<F>) -> usize {
        held(&[&w.ln, &w.gelu, &w.dtmp, &w.dfch])
    }

    fn forward(&self, x: &Ctx<'_, F, Gpt2Config>, l: usize, la: &mut LayerActs<F>, w: &mut Work<F>, inp: &[F], out: &mut [F], output: bool, rng: &mut SplitMix64) {
        let (cfg, p, lora, train) = (x.cfg, x.p, x.lora, x.train);
        let (n, c, eps) = (x.b * x.t, cfg.n_embd, cfg.layer_norm_epsilon);
        let shape = AttnShape::mha(x.b, x.t, c, cfg.n_head);
        let ln = &mut w.ln[..];
        layernorm_forward(ln, &mut la.ln1_mean, &mut la.ln1_rstd, inp, &p[self.ln1_w.clone()], &p[self.ln1_b.clone()], c, eps);
        self.attn.forward(p, lora, &mut la.lora, ln, &mut la.qkv, n, train, rng, true);
        la.drops.att = Dropout::draw(cfg.attn_pdrop, train, rng);
        attention_forward(&mut la.atty, &mut la.att_stats, &la.qkv, x.mask, la.drops.att.as_ref(), shape, attn_scale(cfg, l));
        // res2 = inp + dropout(atty @ Wproj + b)
        self.proj.forward(p, lora, &mut la.lora, &la.atty, &mut la.res2, n, train, rng, true);
        la.drops.proj = Dropout::draw(cfg.resid_pdrop, train, rng);
        dropout_apply(&mut la.res2, la.drops.proj.as_ref(), 0);
        add_inplace(&mut la.res2, inp);

        layernorm_forward(ln, &mut la.ln2_mean, &mut la.ln2_rstd, &la.res2, &p[self.ln2_w.clone()], &p[self.ln2_b.clone()], c, eps);
        self.fc.forward(p, lora, &mut la.lora, ln, &mut la.fch, n, train, rng, true);
        // out = res2 + dropout(gelu(fch) @ Wfcproj + b)
        if output || self.fcproj.adapted(lora) {
            gelu_forward(&mut w.gelu, &la.fch);
        }
        self.fcproj.forward(p, lora, &mut la.lora, &w.gelu, out, n, train, rng, output);
        la.drops.fc = Dropout::draw(cfg.resid_pdrop, train, rng);
        if output {
            dropout_apply(out, la.drops.fc.as_ref(), 0);
            add_inplace(out, &la.res2);
        }
    }

    fn decode_step(&self, cfg: &Gpt2Config, l: usize, w: &Weights<'_, F>, lora: Option<&Lora>, cache: &mut KvCache<F>, sc: &mut Scratch<F>, _pos: &[usize], t: usize) {
        let (b, c, i, eps, p) = (cache.b, cfg.n_embd, cfg.inner(), cfg.layer_norm_epsilon, w.p);
        let n = b * t;
        let shape = AttnShape::mha(b, t, c, cfg.n_head);
        let (x, ln) = (&mut sc.x[..n * c], &mut sc.ln[..n * c]);
        layernorm_forward(ln, &mut sc.mean[..n], &mut sc.rstd[..n], x, &p[self.ln1_w.clone()], &p[self.ln1_b.clone()], c, eps);
        self.attn.decode(w, lora, ln, &mut sc.qkv, n);
        // append this call's keys and values: qkv (B, T, 3C) -> cache (B, NH, S, HS)
        cache.append(l, &sc.qkv, t, 3 * c, c, 2 * c);
        let atty = &mut sc.atty[..n * c];
        attention_cached_forward(atty, &sc.qkv[..n * 3 * c], &cache.k[l], &cache.v[l], &cache.key_mask, shape, cache.len, cache.cap, attn_scale(cfg, l));
        self.proj.decode(w, lora, atty, &mut sc.tmp, n);
        add_inplace(x, &sc.tmp[..n * c]);
        layernorm_forward(ln, &mut sc.mean[..n], &mut sc.rstd[..n], x, &p[self.ln2_w.clone()], &p[self.ln2_b.clone()], c, eps);
        self.fc.decode(w, lora, ln, &mut sc.fch, n);
        gelu_forward(&mut sc.fchg[..n * i], &sc.fch[..n * i]);
        self.fcproj.decode(w, lora, &sc.fchg[..n * i], &mut sc.tmp, n);
        add_inplace(x, &sc.tmp[..n * c]);
    }

    fn backward(&self, x: &Ctx<'_, F, Gpt2Config>, l: usize, la: &LayerActs<F>, g: &mut GradView<'_, F>, w: &mut Work<F>, dln: &mut [F], inp: &[F], dres: &mut [F]) {
        let (cfg, p, lora) = (x.cfg, x.p, x.lora);
        let (n, c) = (x.b * x.t, cfg.n_embd);
        let Work { ln, gelu, dtmp, dfch } = w;
        // out = res2 + drop(gelu(fch) @ Wfcproj + b): the residual gradient passes through;
        // the branch gets it masked
        dtmp.copy_from_slice(dres);
        dropout_apply(dtmp, la.drops.fc.as_ref(), 0);
        gelu_forward(gelu, &la.fch);
        self.fcproj.backward(p, lora, &la.lora, g, gelu, dtmp, dfch, n);
        gelu_backward(dfch, &la.fch);
        layernorm_recompute(ln, &la.res2, &la.ln2_mean, &la.ln2_rstd, &p[self.ln2_w.clone()], &p[self.ln2_b.clone()], c);
        self.fc.backward(p, lora, &la.lora, g, ln, dfch, dln, n);
        let (dw, db) = g.pair(&self.ln2_w, &self.ln2_b);
        layernorm_backward(dres, dw, db, dln, &la.res2, &p[self.ln2_w.clone()], &la.ln2_mean, &la.ln2_rstd, c);

        // res2 = inp + drop(atty @ Wproj + b)
        let (datty, dqkv) = dfch[..n * 4 * c].split_at_mut(n * c);
        dtmp.copy_from_slice(dres);
        dropout_apply(dtmp, la.drops.proj.as_ref(), 0);
        self.proj.backward(p, lora, &la.lora, g, &la.atty, dtmp, datty, n);
        let shape = AttnShape::mha(x.b, x.t, c, cfg.n_head);
        attention_backward(dqkv, datty, &la.qkv, &la.att_stats, x.mask, la.drops.att.as_ref(), shape, attn_scale(cfg, l));
        layernorm_recompute(ln, inp, &la.ln1_mean, &la.ln1_rstd, &p[self.ln1_w.clone()], &p[self.ln1_b.clone()], c);
        self.attn.backward(p, lora, &la.lora, g, ln, dqkv, dln, n);
        let (dw, db) = g.pair(&self.ln1_w, &self.ln1_b);
        layernorm_backward(dres, dw, db, dln, inp, &p[self.ln1_w.clone()], &la.ln1_mean, &la.ln1_rstd, c);
    }
}

#[cfg(test)]
mod tests;
