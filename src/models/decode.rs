//! Decoding over a key/value cache: the `Decoder` trait each architecture implements with
//! its inference forward, the cache it fills, the work buffers it uses, and the weights it
//! multiplies by (the f32 parameters or their bf16 copies). The decoding loop and the logits
//! processors that drive it are crate::generate.
//!
//! The inference forward reuses the training kernels (layernorm, matmul, gelu) and only swaps
//! attention for the cached variant.
//!
//! Shapes: B = batch, T = tokens fed in this call, S = cache capacity, C = hidden size,
//! NH = heads, NKV = key/value heads, HS = head size, QKV = (NH + 2 NKV) HS, A = NH HS,
//! V = vocab_size, I = MLP width, N = B * T.

use std::ops::Range;

use half::bf16;

use crate::error::Result;
use crate::kernels::matmul::{linear_forward, matmul_forward, with_bias};
use crate::kernels::matvec::{matmul_kn, matmul_nk, round_weight};
use crate::kernels::Real;

/// The sizes an architecture's inference forward needs buffers for.
#[derive(Clone, Copy, Debug)]
pub struct DecoderDims {
    pub layers: usize,
    pub nkv: usize,
    pub hs: usize,
    pub c: usize,
    pub qkv: usize,
    pub a: usize,
    /// Width of the MLP's first projection (I for GPT-2, 2I for gate | up).
    pub mlp_in: usize,
    /// Width of the MLP's activation (I).
    pub mlp_act: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

/// An architecture that can decode over a key/value cache.
pub trait Decoder<F: Real>: Sync {
    fn dims(&self) -> DecoderDims;

    /// The parameter buffer the inference forward reads.
    fn params(&self) -> &[F];

    /// Every weight matrix the inference forward multiplies by (what bf16 decoding rounds).
    fn matmul_weights(&self) -> Vec<MatmulWeight>;

    /// Inference forward of T new tokens per row over the cache. ids, positions, mask:
    /// (B, T). Writes the logits of every new position (B, T, V) into `logits` when
    /// `all_logits`, else only the last position of each row (B, V). Matmuls read `half`
    /// (bf16 copies of `matmul_weights`) when given, else the f32 parameters.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
}

/// A weight matrix of the inference forward: its range in the parameter buffer, its
/// output (N) and input (K) features, and whether it is stored (K, N) (HF Conv1D) rather
/// than (N, K) (nn.Linear, the lm_head).
#[derive(Clone, Debug)]
pub struct MatmulWeight {
    pub range: Range<usize>,
    pub n: usize,
    pub k: usize,
    pub conv1d: bool,
}

/// bf16 copies of the matmul weights, each rounded once and stored (N, K) row-major, for
/// decoding that reads half the bytes per token (kernels/matvec.rs).
pub struct HalfWeights {
    data: Vec<bf16>,
    /// (start of the parameter range, offset in `data`), sorted by start
    index: Vec<(usize, usize)>,
}

impl HalfWeights {
    pub fn new<F: Real>(params: &[F], weights: &[MatmulWeight]) -> Self {
        let mut weights = weights.to_vec();
        weights.sort_by_key(|w| w.range.start);
        weights.dedup_by_key(|w| w.range.start); // a tied lm_head is the embedding
        let mut index = Vec::with_capacity(weights.len());
        let mut data = vec![bf16::ZERO; weights.iter().map(|w| w.range.len()).sum()];
        let mut off = 0;
        for w in &weights {
            assert_eq!(w.range.len(), w.n * w.k, "matmul weight at {} is not ({}, {})", w.range.start, w.n, w.k);
            round_weight(&mut data[off..off + w.range.len()], &params[w.range.clone()], w.n, w.k, w.conv1d);
            index.push((w.range.start, off));
            off += w.range.len();
        }
        Self { data, index }
    }

    /// The (N, K) bf16 copy of the weight at `range`.
    fn get(&self, range: &Range<usize>) -> &[bf16] {
        let i = self.index.binary_search_by_key(&range.start, |e| e.0).expect("weight has no bf16 copy");
        &self.data[self.index[i].1..][..range.len()]
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<bf16>()
    }
}

/// The weights one inference forward multiplies by: the parameters, or their bf16 copies.
pub struct Weights<'a, F> {
    pub p: &'a [F],
    pub half: Option<&'a HalfWeights>,
}

/// Up to this many rows (a decoding step of a small batch), f32 products go through the
/// kernels of kernels/matvec.rs instead of the blocked GEMM, which they beat there by
/// streaming the weights once, unpacked, with prefetch (benchmarks/bench_evaluate.py decodes
/// SmolLM2-135M in batches of 16; RESULTS.md "Evaluation"). Conv1D (K, N) weights only up to
/// `SKINNY_ROWS_CONV1D` rows: larger batches were not measured there. They sum in f32, so
/// f64 models keep the GEMM.
const SKINNY_ROWS: usize = 16;
const SKINNY_ROWS_CONV1D: usize = 4;

impl<F: Real> Weights<'_, F> {
    /// out (N, OC) = inp (N, C) @ w^T + bias, w the nn.Linear (OC, C) parameter at `w`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(&self, out: &mut [F], inp: &[F], w: Range<usize>, bias: Option<&[F]>, n: usize, c: usize, oc: usize) {
        self.product(out, inp, w, bias, (n, c, oc), false)
    }

    /// out (N, OC) = inp (N, C) @ w + bias, w the parameter at `w` in Conv1D (C, OC) or
    /// nn.Linear (OC, C) layout. bf16 copies are (OC, C) whatever the parameter's layout;
    /// f32 products of a few rows stream the weights (kernels/matvec.rs), larger ones go
    /// through the GEMM.
    pub fn product(&self, out: &mut [F], inp: &[F], w: Range<usize>, bias: Option<&[F]>, (n, c, oc): (usize, usize, usize), conv1d: bool) {
        let inp = &inp[..n * c];
        let skinny = n <= if conv1d { SKINNY_ROWS_CONV1D } else { SKINNY_ROWS } && F::as_f32(inp).is_some();
        match (self.half, conv1d) {
            (Some(h), _) => with_bias(out, bias, n, oc, |out, acc| matmul_nk(out, inp, h.get(&w), n, oc, c, acc)),
            (None, true) if skinny => with_bias(out, bias, n, oc, |out, acc| matmul_kn(out, inp, &self.p[w], n, oc, c, acc)),
            (None, false) if skinny => with_bias(out, bias, n, oc, |out, acc| matmul_nk(out, inp, &self.p[w], n, oc, c, acc)),
            (None, true) => matmul_forward(out, inp, &self.p[w], bias, n, c, oc),
            (None, false) => linear_forward(out, inp, &self.p[w], bias, n, c, oc),
        }
    }
}

/// Keys and values of every layer, (B, NKV, S, HS) each, plus the key padding mask (B, S).
pub struct KvCache<F> {
    pub(crate) b: usize,
    nkv: usize,
    pub(crate) hs: usize,
    pub(crate) cap: usize,
    pub(crate) len: usize,
    pub(crate) k: Vec<Vec<F>>,
    pub(crate) v: Vec<Vec<F>>,
    pub(crate) key_mask: Vec<u8>,
}

impl<F: Real> KvCache<F> {
    pub fn new(d: &DecoderDims, b: usize, cap: usize) -> Self {
        let size = b * d.nkv * cap * d.hs;
        Self {
            b,
            nkv: d.nkv,
            hs: d.hs,
            cap,
            len: 0,
            k: (0..d.layers).map(|_| vec![F::zero(); size]).collect(),
            v: (0..d.layers).map(|_| vec![F::zero(); size]).collect(),
            key_mask: vec![0; b * cap],
        }
    }

    /// Records the padding mask of T new positions per row: mask (B, T).
    pub(crate) fn push_mask(&mut self, mask: &[i64], t: usize) {
        for row in 0..self.b {
            for j in 0..t {
                self.key_mask[row * self.cap + self.len + j] = u8::from(mask[row * t + j] != 0);
            }
        }
    }

    /// Copies this call's keys and values of `layer` from qkv (B, T, QKV) into the cache;
    /// k starts at column `k_off`, v at `v_off`.
    pub(crate) fn append(&mut self, layer: usize, qkv: &[F], t: usize, width: usize, k_off: usize, v_off: usize) {
        let (nkv, hs, cap, past) = (self.nkv, self.hs, self.cap, self.len);
        let (kc, vc) = (&mut self.k[layer], &mut self.v[layer]);
        for row in 0..self.b {
            for j in 0..t {
                let src = &qkv[(row * t + j) * width..][..width];
                for h in 0..nkv {
                    let dst = ((row * nkv + h) * cap + past + j) * hs;
                    kc[dst..dst + hs].copy_from_slice(&src[k_off + h * hs..][..hs]);
                    vc[dst..dst + hs].copy_from_slice(&src[v_off + h * hs..][..hs]);
                }
            }
        }
    }
    /// Starts every row with the keys and values of `prefix`, a one-row cache: positions
    /// 0..P of each row (P = prefix.len) hold the prefix's and are attended to. Empty caches
    /// only.
    pub(crate) fn start_with(&mut self, prefix: &KvCache<F>) {
        let (p, nkv, hs, cap) = (prefix.len, self.nkv, self.hs, self.cap);
        assert!(self.is_empty() && prefix.b == 1 && prefix.nkv == nkv && prefix.hs == hs && p <= cap);
        let layers = self.k.iter_mut().zip(&prefix.k).chain(self.v.iter_mut().zip(&prefix.v));
        for (dst, src) in layers {
            for row in 0..self.b {
                for h in 0..nkv {
                    dst[(row * nkv + h) * cap * hs..][..p * hs].copy_from_slice(&src[h * prefix.cap * hs..][..p * hs]);
                }
            }
        }
        for row in 0..self.b {
            self.key_mask[row * cap..row * cap + p].fill(1);
        }
        self.len = p;
    }

    /// Keeps the rows flagged in `keep` (one flag per row), in order, and drops the others:
    /// decoding goes on for the kept rows only.
    pub(crate) fn retain_rows(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.b, "retain_rows: one flag per row");
        let (cap, row) = (self.cap, self.nkv * self.cap * self.hs);
        let mut to = 0;
        for from in (0..self.b).filter(|&r| keep[r]) {
            if to != from {
                for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
                    buf.copy_within(from * row..(from + 1) * row, to * row);
                }
                self.key_mask.copy_within(from * cap..(from + 1) * cap, to * cap);
            }
            to += 1;
        }
        self.b = to;
    }

    /// Number of positions filled.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Bytes held by the cache (keys + values of every layer).
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.b * self.nkv * self.cap * self.hs * std::mem::size_of::<F>()
    }
}

/// Work buffers of the inference forward, sized for the largest call (the prompt).
pub struct Scratch<F> {
    pub(crate) rows: usize,
    pub(crate) x: Vec<F>,    // (N, C) residual stream
    pub(crate) ln: Vec<F>,   // (N, C)
    pub(crate) qkv: Vec<F>,  // (N, QKV)
    pub(crate) atty: Vec<F>, // (N, A)
    pub(crate) tmp: Vec<F>,  // (N, C)
    pub(crate) fch: Vec<F>,  // (N, mlp_in)
    pub(crate) fchg: Vec<F>, // (N, mlp_act)
    pub(crate) mean: Vec<F>, // (N)
    pub(crate) rstd: Vec<F>, // (N)
    /// Rotary tables (S, HS/2) for the cache's positions, filled by architectures with RoPE.
    pub(crate) cos: Vec<F>,
    pub(crate) sin: Vec<F>,
}

impl<F: Real> Scratch<F> {
    pub fn new(d: &DecoderDims, rows: usize) -> Self {
        let z = |n: usize| vec![F::zero(); n];
        Self {
            rows,
            x: z(rows * d.c),
            ln: z(rows * d.c),
            qkv: z(rows * d.qkv),
            atty: z(rows * d.a),
            tmp: z(rows * d.c),
            fch: z(rows * d.mlp_in),
            fchg: z(rows * d.mlp_act),
            mean: z(rows),
            rstd: z(rows),
            cos: Vec::new(),
            sin: Vec::new(),
        }
    }
}
