//! The Llama family (transformers' `LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM`, `Qwen3ForCausalLM`): token embeddings, pre-RMSNorm blocks of rotary
//! grouped-query attention (optional q/k/v bias, optional sliding window, optional RMSNorm
//! of each query and key head before RoPE) and a SwiGLU MLP, a final
//! RMSNorm and an lm_head tied to the embedding or not. Weights keep transformers' names
//! and nn.Linear layout (y = x @ W^T, W: (out, in)). The trunk, the head, checkpointing and
//! decoding are transformer.rs's; this file holds the block and the config mapping.
//!
//! q_proj, k_proj, v_proj (and gate_proj, up_proj) sit next to each other in the flat
//! parameter buffer, so each group is one (out_total, C) matrix and one matmul.
//!
//! Shapes: B = batch, T = time, C = hidden_size, NH = heads, NKV = key/value heads,
//! HS = head_dim, QKV = (NH + 2 NKV) HS, A = NH HS, I = intermediate_size, V = vocab,
//! N = B * T.

use std::ops::Range;

use serde_json::Value;

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::kernels::attention::{attention_backward, attention_cached_forward, attention_forward, AttnShape, ROW_STATS};
use crate::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward, rmsnorm_heads_backward, rmsnorm_heads_forward, rmsnorm_recompute, Heads};
use crate::kernels::{rope::{rope_apply, rope_tables}, swiglu::{swiglu_backward, swiglu_forward}, Real};
use crate::models::decode::{DecoderDims, KvCache, Scratch, Weights};
use crate::models::linear::Linear;
use crate::models::lora::{Lora, SiteActs};
use crate::models::params::ParamTable;
use crate::models::transformer::{Block, Ctx, Ends, Transformer, Trunk};
use crate::models::{add_inplace, held, GradView, Init, Recycled};
use crate::rng::SplitMix64;

/// Llama, Mistral, Qwen2, Qwen3: the shared decoder-only transformer with the Llama block.
pub type Llama<F> = Transformer<F, LlamaBlock>;

/// One block's parameters.
pub struct LlamaBlock {
    ln1: Range<usize>,
    qkv: Linear, // (QKV, C): q_proj | k_proj | v_proj, with biases (QKV) or without
    o: Linear,   // (C, A), with a bias (C) or without
    qk_norm: Option<(Range<usize>, Range<usize>)>, // Qwen3's q_norm, k_norm (HS) each
    ln2: Range<usize>,
    gu: Linear,   // (2I, C): gate_proj | up_proj
    down: Linear, // (C, I)
}

/// LoRA slots of each block: q, k, v, o, gate, up, down projections.
const LORA_PER_LAYER: usize = 7;
const Q: usize = 0;
const O: usize = 3;
const GATE: usize = 4;
const DOWN: usize = 6;

/// Activations of one block, saved by the forward for the backward. What is cheap to
/// recompute is not kept: the RMSNorm outputs (from the block's input or res2 and the saved
/// rstd), SwiGLU's output (from gu) and the attention probabilities (from qkv and each row's
/// softmax statistics, block by block).
pub struct LayerActs<F> {
    ln1_rstd: Vec<F>,  // (N)
    qkv: Vec<F>,       // (N, QKV), q and k rotated
    att_stats: Vec<F>, // (B, NH, T, ROW_STATS)
    atty: Vec<F>,      // (N, A)
    res2: Vec<F>,      // (N, C) residual after attention
    ln2_rstd: Vec<F>,  // (N)
    gu: Vec<F>,        // (N, 2I)
    qk_in: Vec<F>,     // (N, NH + NKV, HS) q and k heads before their norm; empty without
    qk_rstd: Vec<F>,   // (N, NH + NKV)
    lora: Vec<SiteActs<F>>, // (LORA_PER_LAYER) what the block's adapters save
}

/// What every block of one (B, T) shares: the rotary tables, each row's position, the
/// forward's RMSNorm and SwiGLU outputs (the backward recomputes them) and gradient scratch.
pub struct Work<F> {
    positions: Vec<usize>, // (N)
    cos: Vec<F>,           // (T, HS/2)
    sin: Vec<F>,           // (T, HS/2)
    ln: Vec<F>,            // (N, C)
    mlp: Vec<F>,           // (N, I)
    dh: Vec<F>,            // (N, I)
    // (N, 2I) in a block's MLP part; in its attention part, which comes after, the same
    // memory holds datty (N, A) | dqkv (N, QKV)
    dgu: Vec<F>,
}

fn attn_shape(cfg: &LlamaConfig, b: usize, t: usize, l: usize) -> AttnShape {
    let (nh, nkv, hs, window) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.layer_windows[l]);
    AttnShape { b, t, nh, nkv, hs, window }
}

/// Where the q heads and the k heads sit in a (N, QKV) row.
fn q_k_heads(s: &AttnShape) -> [Heads; 2] {
    let w = s.qkv_width();
    [Heads { h0: 0, h: s.nh, hs: s.hs, w }, Heads { h0: s.nh, h: s.nkv, hs: s.hs, w }]
}

impl LlamaBlock {
    /// Qwen3's RMSNorm of each query and key head, in place on qkv (N, QKV); `saved` gets
    /// the heads' input and rstd for the backward.
    fn qk_norm_forward<F: Real>(&self, p: &[F], qkv: &mut [F], saved: Option<(&mut [F], &mut [F])>, shape: &AttnShape, eps: f64) {
        let Some((qn, kn)) = &self.qk_norm else { return };
        let ([q, k], n) = (q_k_heads(shape), shape.b * shape.t);
        let (qs, ks) = match saved {
            Some((inp, rstd)) => {
                let ((qi, ki), (qr, kr)) = (inp.split_at_mut(n * q.h * q.hs), rstd.split_at_mut(n * q.h));
                (Some((qi, qr)), Some((ki, kr)))
            }
            None => (None, None),
        };
        rmsnorm_heads_forward(qkv, qs, &p[qn.clone()], q, eps);
        rmsnorm_heads_forward(qkv, ks, &p[kn.clone()], k, eps);
    }
}

impl<F: Real> Block<F> for LlamaBlock {
    type Config = LlamaConfig;
    type Acts = LayerActs<F>;
    type Work = Work<F>;
    const LORA_SLOTS: usize = LORA_PER_LAYER;

    fn trunk(cfg: &LlamaConfig) -> Trunk {
        Trunk {
            vocab: cfg.vocab_size,
            c: cfg.hidden_size,
            layers: cfg.num_hidden_layers,
            max_positions: cfg.max_position_embeddings,
            embd_pdrop: 0.0,
            pad_token_id: cfg.pad_token_id,
            norm_eps: cfg.rms_norm_eps,
        }
    }

    fn config_value(cfg: &LlamaConfig) -> Value {
        cfg.to_value()
    }

    fn layout(cfg: &LlamaConfig, table: &mut ParamTable, lm: bool) -> Result<(Ends, Vec<Self>)> {
        let (v, c, i, hs) = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (q, kv) = (cfg.num_attention_heads * hs, cfg.num_key_value_heads * hs);
        let embed = table.push("model.embed_tokens.weight".into(), &[v, c]);
        let blocks = (0..cfg.num_hidden_layers)
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
                let qk_norm = cfg.qk_norm.then(|| (push("self_attn.q_norm.weight", &[hs]), push("self_attn.k_norm.weight", &[hs])));
                let ln2 = push("post_attention_layernorm.weight", &[c]);
                let gw = push("mlp.gate_proj.weight", &[i, c]);
                let uw = push("mlp.up_proj.weight", &[i, c]);
                let down_w = push("mlp.down_proj.weight", &[c, i]);
                let module = |n: &str| format!("model.layers.{l}.{n}");
                let slot = |kind: usize| l * LORA_PER_LAYER + kind;
                let qkv = vec![(module("self_attn.q_proj"), qw, qb), (module("self_attn.k_proj"), kw, kb), (module("self_attn.v_proj"), vw, vb)];
                let gu = vec![(module("mlp.gate_proj"), gw, None), (module("mlp.up_proj"), uw, None)];
                LlamaBlock {
                    ln1,
                    qkv: Linear::fused(qkv, c, slot(Q), Q),
                    o: Linear::new(module("self_attn.o_proj"), o_w, o_b, false, q, c, slot(O), O),
                    qk_norm,
                    ln2,
                    gu: Linear::fused(gu, c, slot(GATE), GATE),
                    down: Linear::new(module("mlp.down_proj"), down_w, None, false, i, c, slot(DOWN), DOWN),
                }
            })
            .collect();
        let norm_w = table.push("model.norm.weight".into(), &[c]);
        let head = if cfg.tie_word_embeddings || !lm { embed.clone() } else { table.push("lm_head.weight".into(), &[v, c]) };
        Ok((Ends { embed, wpe: None, norm_w, norm_b: None, head }, blocks))
    }

    /// transformers' initialisation: N(0, initializer_range) for linear weights and the
    /// embedding, zero biases, RMSNorm weights 1.
    fn init(cfg: &LlamaConfig, name: &str) -> Init {
        if name.ends_with("norm.weight") {
            Init::Const(1.0)
        } else if name.ends_with(".bias") {
            Init::Const(0.0)
        } else {
            Init::Normal(cfg.initializer_range)
        }
    }

    /// A tied `lm_head.weight` in the checkpoint is the embedding again; rotary `inv_freq`
    /// buffers of old checkpoints are not parameters.
    fn checkpoint_name(name: &str, skip_head: bool) -> Option<String> {
        let skip = (skip_head && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq");
        (!skip).then(|| name.to_string())
    }

    fn decoder_dims(cfg: &LlamaConfig) -> DecoderDims {
        let (nh, nkv, hs) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        DecoderDims {
            layers: cfg.num_hidden_layers,
            nkv,
            hs,
            c: cfg.hidden_size,
            qkv: (nh + 2 * nkv) * hs,
            a: nh * hs,
            mlp_in: 2 * cfg.intermediate_size,
            mlp_act: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings,
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        vec![&self.qkv, &self.o, &self.gu, &self.down]
    }

    fn params(&self) -> Range<usize> {
        self.ln1.start..self.down.end()
    }

    fn new_acts(cfg: &LlamaConfig, b: usize, t: usize, z: &mut Recycled<F>) -> LayerActs<F> {
        let (n, c, i, nh, hs) = (b * t, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim);
        let (a, qk, qkv) = (nh * hs, nh + cfg.num_key_value_heads, (nh + 2 * cfg.num_key_value_heads) * hs);
        let norms = |len: usize, z: &mut Recycled<F>| if cfg.qk_norm { z.take(len) } else { Vec::new() };
        LayerActs {
            ln1_rstd: z.take(n),
            qkv: z.take(n * qkv),
            att_stats: z.take(b * nh * t * ROW_STATS),
            atty: z.take(n * a),
            res2: z.take(n * c),
            ln2_rstd: z.take(n),
            gu: z.take(n * 2 * i),
            qk_in: norms(n * qk * hs, z),
            qk_rstd: norms(n * qk, z),
            lora: (0..LORA_PER_LAYER).map(|_| SiteActs::default()).collect(),
        }
    }

    fn new_work(cfg: &LlamaConfig, b: usize, t: usize, z: &mut Recycled<F>) -> Work<F> {
        let (n, c, i) = (b * t, cfg.hidden_size, cfg.intermediate_size);
        let (nh, hs) = (cfg.num_attention_heads, cfg.head_dim);
        let (a, qkv) = (nh * hs, (nh + 2 * cfg.num_key_value_heads) * hs);
        let (cos, sin) = rope_tables(&cfg.inv_freq(), t);
        Work {
            // transformers' plain forward: positions 0..T on every row, padded or not
            positions: (0..n).map(|k| k % t).collect(),
            cos,
            sin,
            ln: z.take(n * c),
            mlp: z.take(n * i),
            dh: z.take(n * i),
            dgu: z.take(n * (2 * i).max(a + qkv)),
        }
    }

    /// The LoRA sites' small buffers are dropped.
    fn recycle(acts: LayerActs<F>, free: &mut Vec<Vec<F>>) {
        let LayerActs { ln1_rstd, qkv, att_stats, atty, res2, ln2_rstd, gu, qk_in, qk_rstd, lora: _ } = acts;
        free.extend([ln1_rstd, qkv, att_stats, atty, res2, ln2_rstd, gu, qk_in, qk_rstd]);
    }

    fn recycle_work(w: Work<F>, free: &mut Vec<Vec<F>>) {
        free.extend([w.ln, w.mlp, w.dh, w.dgu]);
    }

    fn acts_bytes(a: &LayerActs<F>) -> usize {
        let bufs = [&a.ln1_rstd, &a.qkv, &a.att_stats, &a.atty, &a.res2, &a.ln2_rstd, &a.gu, &a.qk_in, &a.qk_rstd];
        held(&bufs) + a.lora.iter().map(SiteActs::bytes).sum::<usize>()
    }

    fn work_bytes(w: &Work<F>) -> usize {
        held(&[&w.cos, &w.sin, &w.ln, &w.mlp, &w.dh, &w.dgu]) + held(&[&w.positions])
    }

    fn forward(&self, x: &Ctx<'_, F, LlamaConfig>, l: usize, la: &mut LayerActs<F>, w: &mut Work<F>, inp: &[F], out: &mut [F], output: bool, rng: &mut SplitMix64) {
        let (cfg, p, lora, train) = (x.cfg, x.p, x.lora, x.train);
        let (n, c, i, hs, eps) = (x.b * x.t, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.rms_norm_eps);
        let shape = attn_shape(cfg, x.b, x.t, l);
        let (qkv, rot_heads) = (shape.qkv_width(), shape.nh + shape.nkv);
        let ln = &mut w.ln[..];
        rmsnorm_forward(ln, &mut la.ln1_rstd, inp, &p[self.ln1.clone()], c, eps);
        self.qkv.forward(p, lora, &mut la.lora, ln, &mut la.qkv, n, train, rng, true);
        self.qk_norm_forward(p, &mut la.qkv, Some((&mut la.qk_in, &mut la.qk_rstd)), &shape, eps);
        rope_apply(&mut la.qkv, &w.cos, &w.sin, &w.positions, rot_heads, hs, qkv, false);
        attention_forward(&mut la.atty, &mut la.att_stats, &la.qkv, x.mask, None, shape, 1.0 / (hs as f64).sqrt());
        // res2 = inp + o_proj(atty)
        self.o.forward(p, lora, &mut la.lora, &la.atty, &mut la.res2, n, train, rng, true);
        add_inplace(&mut la.res2, inp);

        rmsnorm_forward(ln, &mut la.ln2_rstd, &la.res2, &p[self.ln2.clone()], c, eps);
        self.gu.forward(p, lora, &mut la.lora, ln, &mut la.gu, n, train, rng, true);
        // out = res2 + down_proj(h)
        if output || self.down.adapted(lora) {
            swiglu_forward(&mut w.mlp, &la.gu, i);
        }
        self.down.forward(p, lora, &mut la.lora, &w.mlp, out, n, train, rng, output);
        if output {
            add_inplace(out, &la.res2);
        }
    }

    fn backward(&self, x: &Ctx<'_, F, LlamaConfig>, l: usize, la: &LayerActs<F>, g: &mut GradView<'_, F>, w: &mut Work<F>, dln: &mut [F], inp: &[F], dres: &mut [F]) {
        let (cfg, p, lora) = (x.cfg, x.p, x.lora);
        let (n, c, i, hs) = (x.b * x.t, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let shape = attn_shape(cfg, x.b, x.t, l);
        let (a, qkv, rot_heads) = (shape.nh * hs, shape.qkv_width(), shape.nh + shape.nkv);
        let Work { positions, cos, sin, ln, mlp, dh, dgu } = w;
        // out = res2 + down_proj(swiglu(gate_up_proj(rmsnorm(res2))))
        swiglu_forward(mlp, &la.gu, i);
        self.down.backward(p, lora, &la.lora, g, mlp, dres, dh, n);
        swiglu_backward(dgu, dh, &la.gu, i);
        rmsnorm_recompute(ln, &la.res2, &la.ln2_rstd, &p[self.ln2.clone()], c);
        self.gu.backward(p, lora, &la.lora, g, ln, dgu, dln, n);
        rmsnorm_backward(dres, g.get(&self.ln2), dln, &la.res2, &p[self.ln2.clone()], &la.ln2_rstd, c);

        // res2 = inp + o_proj(attention(rope(qkv_proj(rmsnorm(inp)))))
        let (datty, dqkv) = dgu[..n * (a + qkv)].split_at_mut(n * a);
        self.o.backward(p, lora, &la.lora, g, &la.atty, dres, datty, n);
        attention_backward(dqkv, datty, &la.qkv, &la.att_stats, x.mask, None, shape, 1.0 / (hs as f64).sqrt());
        rope_apply(dqkv, cos, sin, positions, rot_heads, hs, qkv, true);
        if let Some((qn, kn)) = &self.qk_norm {
            let [q, k] = q_k_heads(&shape);
            let (qi, ki) = la.qk_in.split_at(n * q.h * hs);
            let (qr, kr) = la.qk_rstd.split_at(n * q.h);
            rmsnorm_heads_backward(dqkv, g.get(qn), qi, qr, &p[qn.clone()], q);
            rmsnorm_heads_backward(dqkv, g.get(kn), ki, kr, &p[kn.clone()], k);
        }
        rmsnorm_recompute(ln, inp, &la.ln1_rstd, &p[self.ln1.clone()], c);
        self.qkv.backward(p, lora, &la.lora, g, ln, dqkv, dln, n);
        rmsnorm_backward(dres, g.get(&self.ln1), dln, inp, &p[self.ln1.clone()], &la.ln1_rstd, c);
    }

    fn decode_begin(cfg: &LlamaConfig, sc: &mut Scratch<F>, cap: usize) {
        if sc.cos.is_empty() {
            (sc.cos, sc.sin) = rope_tables(&cfg.inv_freq(), cap);
        }
    }

    fn decode_step(&self, cfg: &LlamaConfig, l: usize, w: &Weights<'_, F>, lora: Option<&Lora>, cache: &mut KvCache<F>, sc: &mut Scratch<F>, pos: &[usize], t: usize) {
        let (b, c, i, eps, p) = (cache.b, cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps, w.p);
        let shape = attn_shape(cfg, b, t, l);
        let (n, hs, qkv) = (b * t, shape.hs, shape.qkv_width());
        let a = shape.nh * hs;
        let (x, ln) = (&mut sc.x[..n * c], &mut sc.ln[..n * c]);
        rmsnorm_forward(ln, &mut sc.rstd[..n], x, &p[self.ln1.clone()], c, eps);
        self.qkv.decode(w, lora, ln, &mut sc.qkv, n);
        self.qk_norm_forward(p, &mut sc.qkv[..n * qkv], None, &shape, eps);
        rope_apply(&mut sc.qkv[..n * qkv], &sc.cos, &sc.sin, pos, shape.nh + shape.nkv, hs, qkv, false);
        cache.append(l, &sc.qkv, t, qkv, a, a + shape.nkv * hs);
        let atty = &mut sc.atty[..n * a];
        attention_cached_forward(atty, &sc.qkv[..n * qkv], &cache.k[l], &cache.v[l], &cache.key_mask, shape, cache.len, cache.cap, 1.0 / (hs as f64).sqrt());
        self.o.decode(w, lora, atty, &mut sc.tmp, n);
        add_inplace(x, &sc.tmp[..n * c]);
        rmsnorm_forward(ln, &mut sc.rstd[..n], x, &p[self.ln2.clone()], c, eps);
        self.gu.decode(w, lora, ln, &mut sc.fch, n);
        swiglu_forward(&mut sc.fchg[..n * i], &sc.fch[..n * 2 * i], i);
        self.down.decode(w, lora, &sc.fchg[..n * i], &mut sc.tmp, n);
        add_inplace(x, &sc.tmp[..n * c]);
    }
}

#[cfg(test)]
mod tests;
