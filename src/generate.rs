//! Text generation: transformers' logits processors and the decoding loop (greedy or
//! seeded sampling) with transformers' `generate` semantics, over the key/value cache and
//! inference forward of crate::models::decode.
//!
//! The cache is allocated once for prompt + max_new_tokens positions. The prompt goes
//! through one forward that fills the cache (a prefix all rows share goes through once);
//! every later step feeds one token per row and reuses the cached keys and values (no
//! recomputation of the prefix). In greedy decoding with a pad token, rows that finished
//! leave the batch.
//!
//! Left padding follows transformers' generate: position ids are cumsum(mask) - 1 (0 on
//! padding) and padded keys are never attended to.
//!
//! Shapes: B = batch, T = prompt length, V = vocab_size.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kernels::Real;
use crate::models::decode::{Decoder, HalfWeights, KvCache, Scratch};
use crate::models::Batch;
use crate::rng::SplitMix64;

// ---------------------------------------------------------------------------------------
// logits processors (transformers' generation/logits_process.py), one row of V scores
// ---------------------------------------------------------------------------------------

/// RepetitionPenaltyLogitsProcessor: every token that occurs in `prev` (once, however often
/// it occurs) gets score * penalty if its score is negative, score / penalty otherwise.
pub fn repetition_penalty(scores: &mut [f32], prev: &[i64], penalty: f32, seen: &mut Vec<bool>) {
    seen.clear();
    seen.resize(scores.len(), false);
    for &id in prev {
        let k = id as usize;
        if id >= 0 && k < scores.len() && !seen[k] {
            seen[k] = true;
            let s = scores[k];
            scores[k] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// TemperatureLogitsWarper: scores / temperature.
pub fn temperature(scores: &mut [f32], t: f32) {
    scores.iter_mut().for_each(|s| *s /= t);
}

/// TopKLogitsWarper: scores below the k-th largest become -inf (ties with it are kept).
pub fn top_k(scores: &mut [f32], k: usize, work: &mut Vec<f32>) {
    let k = k.min(scores.len());
    if k == 0 {
        return;
    }
    work.clear();
    work.extend_from_slice(scores);
    let (_, kth, _) = work.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    scores.iter_mut().filter(|s| **s < kth).for_each(|s| *s = f32::NEG_INFINITY);
}

/// Softmax in f32 (max-subtracted), into `out`.
fn softmax_into(scores: &[f32], out: &mut Vec<f32>) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    out.clear();
    out.extend(scores.iter().map(|&s| if s == f32::NEG_INFINITY { 0.0 } else { (s - max).exp() }));
    let sum: f32 = out.iter().sum();
    out.iter_mut().for_each(|p| *p /= sum);
}

/// TopPLogitsWarper: sorts ascending, removes the tokens whose cumulative probability is
/// <= 1 - top_p, always keeping the most likely token.
pub fn top_p(scores: &mut [f32], top_p: f32, order: &mut Vec<usize>, probs: &mut Vec<f32>) {
    order.clear();
    order.extend(0..scores.len());
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let sorted: Vec<f32> = order.iter().map(|&k| scores[k]).collect();
    softmax_into(&sorted, probs);
    let last = scores.len() - 1;
    let mut cum = 0.0f32;
    for (j, &k) in order.iter().enumerate() {
        cum += probs[j];
        if cum <= 1.0 - top_p && j < last {
            scores[k] = f32::NEG_INFINITY;
        }
    }
}

/// MinPLogitsWarper: tokens whose probability is below min_p * (top probability) become -inf;
/// the most likely token is always kept.
pub fn min_p(scores: &mut [f32], min_p: f32, probs: &mut Vec<f32>) {
    softmax_into(scores, probs);
    let (mut top, mut arg) = (f32::NEG_INFINITY, 0);
    for (k, &p) in probs.iter().enumerate() {
        if p > top {
            top = p;
            arg = k;
        }
    }
    let thr = min_p * top;
    for (k, s) in scores.iter_mut().enumerate() {
        if probs[k] < thr && k != arg {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// The knobs of one generate call (transformers' GenerationConfig names; `None` = off).
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub seed: u64,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            do_sample: false,
            temperature: None,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: None,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            seed: 0,
        }
    }
}

impl GenerateParams {
    /// Rejects values transformers rejects, with the same wording where it has one.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(m));
        if let Some(t) = self.temperature {
            if !t.is_finite() || t < 0.0 {
                return bad(format!("temperature must be a non-negative number, got {t}"));
            }
            if t == 0.0 && self.do_sample {
                return bad("temperature=0 with do_sample=True: use do_sample=False for greedy decoding".into());
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("min_p must be in [0, 1], got {p}"));
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r.is_finite()) {
                return bad(format!("repetition_penalty must be a positive number, got {r}"));
            }
        }
        Ok(())
    }

    fn warps(&self) -> bool {
        self.do_sample
    }
}

/// Scratch of the processors (no allocation per step).
#[derive(Default)]
pub struct ProcessorWork {
    seen: Vec<bool>,
    work: Vec<f32>,
    order: Vec<usize>,
    probs: Vec<f32>,
}

/// Applies the processors in transformers' order: repetition penalty (always), then with
/// sampling temperature, top-k, top-p, min-p. `prev` are the tokens the penalty considers.
pub fn process_row(scores: &mut [f32], prev: &[i64], p: &GenerateParams, w: &mut ProcessorWork) {
    if let Some(r) = p.repetition_penalty {
        if r != 1.0 {
            repetition_penalty(scores, prev, r as f32, &mut w.seen);
        }
    }
    if !p.warps() {
        return;
    }
    if let Some(t) = p.temperature {
        if t != 1.0 {
            temperature(scores, t as f32);
        }
    }
    if let Some(k) = p.top_k {
        if k != 0 {
            top_k(scores, k, &mut w.work);
        }
    }
    if let Some(tp) = p.top_p {
        if tp < 1.0 {
            top_p(scores, tp as f32, &mut w.order, &mut w.probs);
        }
    }
    if let Some(mp) = p.min_p {
        min_p(scores, mp as f32, &mut w.probs);
    }
}

/// First index of the largest score (torch.argmax).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (k, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = k;
        }
    }
    best
}

/// Draws from softmax(scores) with one uniform number (inverse CDF, in f64).
pub fn sample(scores: &[f32], rng: &mut SplitMix64) -> usize {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = scores.iter().map(|&s| if s == f32::NEG_INFINITY { 0.0 } else { (s as f64 - max).exp() }).sum();
    let u = rng.next_f64() * total;
    let mut cum = 0.0;
    let mut last_ok = argmax(scores);
    for (k, &s) in scores.iter().enumerate() {
        if s == f32::NEG_INFINITY {
            continue;
        }
        cum += (s as f64 - max).exp();
        last_ok = k;
        if u < cum {
            return k;
        }
    }
    last_ok
}

// ---------------------------------------------------------------------------------------
// the decoding loop
// ---------------------------------------------------------------------------------------

/// Fewest prompt rows a shared prefix must spare before `Generation::prefill` computes it
/// once: below that, the extra one-row forward costs about what it saves.
const MIN_SHARED_ROWS: usize = 32;

/// One generate call in progress: owns the cache and the sequences; the model is passed to
/// every `step` so the caller keeps ownership of it.
pub struct Generation<F: Real> {
    params: GenerateParams,
    b: usize,
    prompt_len: usize,
    /// (B, prompt_len + max_new_tokens), filled up to `len`
    seqs: Vec<i64>,
    len: usize,
    /// next position id of each row
    next_pos: Vec<i64>,
    /// leading tokens the repetition penalty ignores (left padding), per row
    ignore: Vec<usize>,
    prompt_mask: Vec<i64>,
    unfinished: Vec<bool>,
    /// the batch row of each row of the cache: every row until rows finish, then the
    /// unfinished ones (`drops_finished_rows`)
    rows: Vec<usize>,
    cache: KvCache<F>,
    scratch: Scratch<F>,
    /// bf16 copies of the weights to decode with (`use_half_weights`)
    half: Option<Arc<HalfWeights>>,
    logits: Vec<F>,
    rng: SplitMix64,
    work: ProcessorWork,
    keep_logits: bool,
    /// raw logits of every step (steps, B, V) when keep_logits
    history: Vec<f32>,
}

impl Generation<f32> {
    /// Validates everything and allocates the cache for prompt + max_new_tokens positions.
    pub fn new(model: &dyn Decoder<f32>, batch: &Batch<'_>, params: GenerateParams, keep_logits: bool) -> Result<Self> {
        let d = model.dims();
        batch.validate(d.vocab, d.max_positions, true)?;
        params.validate()?;
        let (b, t) = (batch.b, batch.t);
        if params.max_new_tokens == 0 {
            return Err(Error::Input("max_new_tokens must be at least 1".into()));
        }
        let total = t + params.max_new_tokens;
        if total > d.max_positions {
            return Err(Error::Input(format!(
                "prompt length {t} + max_new_tokens {} = {total} exceeds the model's context of {} positions; \
                 lower max_new_tokens to at most {}",
                params.max_new_tokens,
                d.max_positions,
                d.max_positions.saturating_sub(t)
            )));
        }
        if let Some(&id) = params.eos_token_ids.iter().chain(params.pad_token_id.iter()).find(|&&id| id < 0 || id as usize >= d.vocab) {
            return Err(Error::Input(format!("eos/pad token id {id} is out of range for a vocabulary of {}", d.vocab)));
        }
        let mask: Vec<i64> = batch.mask.map_or_else(|| vec![1; b * t], <[i64]>::to_vec);
        let mut seqs = vec![0i64; b * total];
        for row in 0..b {
            seqs[row * total..row * total + t].copy_from_slice(&batch.ids[row * t..(row + 1) * t]);
        }
        let ignore = (0..b).map(|row| mask[row * t..(row + 1) * t].iter().position(|&m| m != 0).unwrap_or(0)).collect();
        let rng = SplitMix64::new(params.seed);
        Ok(Self {
            b,
            prompt_len: t,
            seqs,
            len: t,
            next_pos: vec![0; b],
            ignore,
            prompt_mask: mask,
            unfinished: vec![true; b],
            rows: (0..b).collect(),
            cache: KvCache::new(&d, b, total),
            scratch: Scratch::new(&d, b * t),
            half: None,
            logits: vec![0.0; b * d.vocab],
            rng,
            work: ProcessorWork::default(),
            keep_logits,
            history: Vec::new(),
            params,
        })
    }

    /// Decode with these bf16 copies of the model's weights (made by `HalfWeights::new` from
    /// the same model) instead of its f32 parameters; before the first step only.
    pub fn use_half_weights(&mut self, half: Arc<HalfWeights>) {
        assert!(self.cache.is_empty(), "use_half_weights after generation started");
        self.half = Some(half);
    }

    fn total(&self) -> usize {
        self.prompt_len + self.params.max_new_tokens
    }

    /// True when every row has finished or max_new_tokens tokens were generated.
    pub fn done(&self) -> bool {
        self.len >= self.total() || !self.unfinished.iter().any(|&u| u)
    }

    pub fn batch_size(&self) -> usize {
        self.b
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn unfinished(&self) -> &[bool] {
        &self.unfinished
    }
    /// Raw logits of every step so far (steps, B, V), when requested.
    pub fn logits_history(&self) -> &[f32] {
        &self.history
    }

    /// The sequences so far (B, len), prompt included.
    pub fn sequences(&self) -> Vec<i64> {
        let total = self.total();
        (0..self.b).flat_map(|r| self.seqs[r * total..r * total + self.len].iter().copied()).collect()
    }

    /// Marks rows as finished (e.g. a stop string matched): they get pad tokens from now on.
    pub fn finish_rows(&mut self, rows: &[bool]) {
        for (u, &f) in self.unfinished.iter_mut().zip(rows) {
            if f {
                *u = false;
            }
        }
    }

    /// Whether finished rows leave the batch: they only ever get the pad token then, so
    /// computing them is waste. Not when sampling (every row draws from the generator, as
    /// transformers' does), nor when every step's logits are kept (B, V).
    fn drops_finished_rows(&self) -> bool {
        self.params.pad_token_id.is_some() && !self.params.do_sample && !self.keep_logits
    }

    /// Prompt tokens every row starts with after its left padding, when computing them once
    /// for all rows spares at least `MIN_SHARED_ROWS` rows of the prompt's forward (a system
    /// prompt, a chat template's header, few-shot examples); 0 for one row, for padding other
    /// than on the left, or for too short a prefix. The last token of a row is never shared:
    /// every row's logits come from its own tokens.
    fn shared_prefix(&self) -> usize {
        let (b, t, total) = (self.b, self.prompt_len, self.total());
        if b < 2 {
            return 0;
        }
        let first = &self.seqs[self.ignore[0]..t];
        let mut shared = t;
        for row in 0..b {
            let (mask, start) = (&self.prompt_mask[row * t..(row + 1) * t], self.ignore[row]);
            if mask.iter().enumerate().any(|(j, &m)| (m != 0) != (j >= start)) {
                return 0;
            }
            let tokens = &self.seqs[row * total + start..row * total + t];
            let common = first.iter().zip(tokens).take_while(|(x, y)| x == y).count();
            shared = shared.min(common).min(tokens.len() - 1);
        }
        if (b - 1) * shared >= MIN_SHARED_ROWS {
            shared
        } else {
            0
        }
    }

    /// The first forward, over the whole prompt. Its shared prefix (`shared_prefix`) goes
    /// through the model once, in a one-row cache copied into every row's first positions;
    /// the rest of each row follows at its own positions (left padding moves after the
    /// prefix, still masked). Keys are attended in the same order, so the logits are those of
    /// the whole prompt's forward.
    fn prefill(&mut self, model: &dyn Decoder<f32>) -> Result<()> {
        let (b, t, total) = (self.b, self.prompt_len, self.total());
        let shared = self.shared_prefix();
        if shared > 0 {
            let d = model.dims();
            let start = self.ignore[0];
            let pos: Vec<i64> = (0..shared as i64).collect();
            let (mut prefix, mut sc) = (KvCache::new(&d, 1, shared), Scratch::new(&d, shared));
            let ids = &self.seqs[start..start + shared];
            model.forward_cached(self.half.as_deref(), &mut prefix, &mut sc, ids, &pos, &vec![1; shared], shared, &mut self.logits, false)?;
            self.cache.start_with(&prefix);
        }
        // (B, T - shared) ids, position ids cumsum(mask) - 1 (0 on padding), mask
        let n = b * (t - shared);
        let (mut ids, mut pos, mut mask) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for row in 0..b {
            let skip = self.ignore[row]..self.ignore[row] + shared;
            let (mut cum, mut last) = (0i64, 0i64);
            for j in 0..t {
                let m = self.prompt_mask[row * t + j];
                cum += i64::from(m != 0);
                last = if m != 0 { cum - 1 } else { 0 };
                if !skip.contains(&j) {
                    ids.push(self.seqs[row * total + j]);
                    pos.push(last);
                    mask.push(m);
                }
            }
            self.next_pos[row] = if cum == 0 { 0 } else { last } + 1;
        }
        model.forward_cached(self.half.as_deref(), &mut self.cache, &mut self.scratch, &ids, &pos, &mask, t - shared, &mut self.logits, false)
    }

    /// One decoding step: a forward (the whole prompt on the first call, then the last
    /// token), the processors, the choice of each row's token. Returns the B new tokens, or
    /// None when generation is done.
    pub fn step(&mut self, model: &dyn Decoder<f32>) -> Result<Option<Vec<i64>>> {
        if self.done() {
            return Ok(None);
        }
        let (b, total, v) = (self.b, self.total(), model.dims().vocab);
        if self.cache.is_empty() {
            self.prefill(model)?;
        } else {
            if self.drops_finished_rows() && self.rows.iter().any(|&r| !self.unfinished[r]) {
                let keep: Vec<bool> = self.rows.iter().map(|&r| self.unfinished[r]).collect();
                self.cache.retain_rows(&keep);
                self.rows.retain(|&r| self.unfinished[r]);
            }
            let ids: Vec<i64> = self.rows.iter().map(|&r| self.seqs[r * total + self.len - 1]).collect();
            let pos: Vec<i64> = self.rows.iter().map(|&r| self.next_pos[r]).collect();
            for &r in &self.rows {
                self.next_pos[r] += 1;
            }
            let ones = vec![1i64; self.rows.len()];
            model.forward_cached(self.half.as_deref(), &mut self.cache, &mut self.scratch, &ids, &pos, &ones, 1, &mut self.logits, false)?;
        }
        if self.keep_logits {
            self.history.extend_from_slice(&self.logits[..b * v]);
        }
        // rows no longer decoded have finished: they get the pad token (drops_finished_rows)
        let mut next = vec![self.params.pad_token_id.unwrap_or(0); b];
        for (i, &row) in self.rows.iter().enumerate() {
            let scores = &mut self.logits[i * v..(i + 1) * v];
            let prev = &self.seqs[row * total + self.ignore[row]..row * total + self.len];
            process_row(scores, prev, &self.params, &mut self.work);
            let tok = if self.params.do_sample { sample(scores, &mut self.rng) } else { argmax(scores) } as i64;
            next[row] = match (self.unfinished[row], self.params.pad_token_id) {
                (false, Some(pad)) => pad,
                _ => tok,
            };
        }
        for row in 0..b {
            self.seqs[row * total + self.len] = next[row];
            if self.params.eos_token_ids.contains(&next[row]) {
                self.unfinished[row] = false;
            }
        }
        self.len += 1;
        Ok(Some(next))
    }

    /// Runs until done; returns the (B, len) sequences.
    pub fn run(&mut self, model: &dyn Decoder<f32>) -> Result<Vec<i64>> {
        while self.step(model)?.is_some() {}
        Ok(self.sequences())
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;
    use crate::config::{Gpt2Config, LlamaConfig};
    use crate::models::gpt2::Gpt2;
    use crate::models::llama::Llama;
    use crate::models::CausalLm;

    fn tiny(n_positions: usize) -> Gpt2<f32> {
        let cfg = Gpt2Config::from_value(serde_json::json!({
            "model_type": "gpt2", "vocab_size": 23, "n_positions": n_positions, "n_embd": 12, "n_layer": 2, "n_head": 3,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.5
        }))
        .unwrap();
        let mut m = Gpt2::<f32>::from_config(cfg, 7).unwrap();
        m.state.training = false;
        m
    }

    fn tiny_llama(extra: serde_json::Value) -> Llama<f32> {
        let mut v = serde_json::json!({
            "model_type": "llama", "vocab_size": 23, "hidden_size": 12, "intermediate_size": 20,
            "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 4,
            "max_position_embeddings": 32, "initializer_range": 0.3, "tie_word_embeddings": true
        });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Llama::<f32>::from_config(LlamaConfig::from_value(v).unwrap(), 7).unwrap()
    }

    /// Prefill of k tokens then one token at a time gives the full forward's logits at every
    /// position (no padding: both use positions 0..T). With `half`, the parameters are first
    /// rounded to bf16 values, so the bf16 copies hold exactly the weights of the f32 forward.
    fn check_cached_logits<M: CausalLm<f32> + Decoder<f32>>(m: &mut M, half: bool) {
        let (b, t, v) = (2, 9, 23);
        if half {
            for x in m.state_mut().params.iter_mut() {
                *x = bf16::from_f32(*x).to_f32();
            }
        }
        let hw = half.then(|| HalfWeights::new(m.params(), &m.matmul_weights()));
        let ids: Vec<i64> = (0..b * t).map(|k| ((k * 7 + 3) % v) as i64).collect();
        m.forward(&Batch { ids: &ids, mask: None, labels: None, b, t }).unwrap();
        let full = m.logits().to_vec();
        for prefill in [1, 4, t] {
            let mut cache = KvCache::<f32>::new(&m.dims(), b, t);
            let mut sc = Scratch::new(&m.dims(), b * t);
            let mut got = vec![0.0f32; b * t * v];
            let take = |row_from: usize, n: usize| -> Vec<i64> {
                (0..b).flat_map(|r| ids[r * t + row_from..r * t + row_from + n].iter().copied()).collect()
            };
            let pos = |from: usize, n: usize| -> Vec<i64> { (0..b).flat_map(|_| (from..from + n).map(|p| p as i64)).collect() };
            let mut out = vec![0.0f32; b * prefill * v];
            m.forward_cached(hw.as_ref(), &mut cache, &mut sc, &take(0, prefill), &pos(0, prefill), &vec![1; b * prefill], prefill, &mut out, true).unwrap();
            for r in 0..b {
                for j in 0..prefill {
                    got[(r * t + j) * v..][..v].copy_from_slice(&out[(r * prefill + j) * v..][..v]);
                }
            }
            for j in prefill..t {
                let mut out = vec![0.0f32; b * v];
                m.forward_cached(hw.as_ref(), &mut cache, &mut sc, &take(j, 1), &pos(j, 1), &[1, 1], 1, &mut out, false).unwrap();
                for r in 0..b {
                    got[(r * t + j) * v..][..v].copy_from_slice(&out[r * v..][..v]);
                }
            }
            let err = got.iter().zip(&full).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(err < 1e-5, "prefill {prefill}: max abs error {err}");
        }
    }

    #[test]
    fn cached_logits_match_full_forward() {
        for half in [false, true] {
            check_cached_logits(&mut tiny(16), half);
            check_cached_logits(&mut tiny_llama(serde_json::json!({})), half);
            check_cached_logits(&mut tiny_llama(serde_json::json!({"tie_word_embeddings": false})), half);
            check_cached_logits(&mut tiny_llama(serde_json::json!({"model_type": "qwen2"})), half);
            check_cached_logits(&mut tiny_llama(serde_json::json!({"model_type": "mistral", "sliding_window": 3})), half);
        }
    }

    /// A left-padded row generates what the same prompt without padding generates.
    #[test]
    fn left_padding_is_invisible() {
        let m = tiny(32);
        let p = GenerateParams { max_new_tokens: 6, ..Default::default() };
        let prompt = [5i64, 9, 2, 17];
        let solo = Generation::new(&m, &Batch { ids: &prompt, mask: None, labels: None, b: 1, t: 4 }, p.clone(), false)
            .unwrap()
            .run(&m)
            .unwrap();
        let ids = [0i64, 0, 5, 9, 2, 17, 1, 2, 3, 4, 5, 6];
        let mask = [0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let both = Generation::new(&m, &Batch { ids: &ids, mask: Some(&mask), labels: None, b: 2, t: 6 }, p, false)
            .unwrap()
            .run(&m)
            .unwrap();
        assert_eq!(&both[2..12], &solo[..], "padded row {both:?} vs alone {solo:?}");
    }

    /// Rows sharing a prefix (computed once, `Generation::prefill`) generate what each row
    /// generates alone, with the same logits at every step, left padding or not.
    fn check_shared_prefix<M: Decoder<f32>>(m: &M, v: usize) {
        let prefix: Vec<i64> = (0..16).map(|k| (k * 5 + 1) % v as i64).collect();
        let tails: [&[i64]; 3] = [&[3, 4, 5], &[7], &[2, 2]];
        let t = prefix.len() + 3;
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for tail in tails {
            let pad = 3 - tail.len();
            ids.extend(std::iter::repeat(0).take(pad).chain(prefix.iter().copied()).chain(tail.iter().copied()));
            mask.extend(std::iter::repeat(0).take(pad).chain(std::iter::repeat(1).take(t - pad)));
        }
        let p = GenerateParams { max_new_tokens: 5, ..Default::default() };
        let mut batch = Generation::new(m, &Batch { ids: &ids, mask: Some(&mask), labels: None, b: 3, t }, p.clone(), true).unwrap();
        assert_eq!(batch.shared_prefix(), 16);
        let seqs = batch.run(m).unwrap();
        let steps = batch.len() - t;
        for (row, tail) in tails.iter().enumerate() {
            let alone: Vec<i64> = prefix.iter().chain(tail.iter()).copied().collect();
            let mut solo = Generation::new(m, &Batch { ids: &alone, mask: None, labels: None, b: 1, t: alone.len() }, p.clone(), true).unwrap();
            let out = solo.run(m).unwrap();
            let pad = 3 - tail.len();
            assert_eq!(&seqs[row * (t + steps) + pad..(row + 1) * (t + steps)], &out[..], "row {row}");
            for s in 0..steps {
                let (x, y) = (&batch.logits_history()[(s * 3 + row) * v..][..v], &solo.logits_history()[s * v..][..v]);
                let err = x.iter().zip(y).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(err < 1e-5, "row {row} step {s}: max abs error {err}");
            }
        }
        // right padding: no sharing, as before
        let right: Vec<i64> = mask.iter().rev().copied().collect();
        let g = Generation::new(m, &Batch { ids: &ids, mask: Some(&right), labels: None, b: 3, t }, p, false).unwrap();
        assert_eq!(g.shared_prefix(), 0);
    }

    #[test]
    fn shared_prefix_is_invisible() {
        check_shared_prefix(&tiny(32), 23);
        check_shared_prefix(&tiny_llama(serde_json::json!({})), 23);
    }

    /// Rows that finish leave the batch (greedy, pad set): the sequences are those of a run
    /// that decodes every row to the end (keeping the logits keeps every row).
    #[test]
    fn finished_rows_leave_the_batch() {
        let m = tiny_llama(serde_json::json!({}));
        let ids: Vec<i64> = (0..4 * 5).map(|k| (k * 7 + 2) % 23).collect();
        let batch = Batch { ids: &ids, mask: None, labels: None, b: 4, t: 5 };
        let free = Generation::new(&m, &batch, GenerateParams { max_new_tokens: 12, ..Default::default() }, false).unwrap().run(&m).unwrap();
        // the token row 0 generates second ends rows at different steps
        let p = GenerateParams { max_new_tokens: 12, eos_token_ids: vec![free[6]], pad_token_id: Some(0), ..Default::default() };
        let mut dropping = Generation::new(&m, &batch, p.clone(), false).unwrap();
        let out = dropping.run(&m).unwrap();
        let full = Generation::new(&m, &batch, p, true).unwrap().run(&m).unwrap();
        assert_eq!(out, full);
        let finished = dropping.unfinished().iter().filter(|&&u| !u).count();
        assert!(finished >= 1 && dropping.cache.b < 4, "{finished} rows finished, {} rows decoded at the end", dropping.cache.b);
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let m = tiny(32);
        let ids = [1i64, 2, 3];
        let run = |seed| {
            let p = GenerateParams { max_new_tokens: 20, do_sample: true, seed, ..Default::default() };
            Generation::new(&m, &Batch { ids: &ids, mask: None, labels: None, b: 1, t: 3 }, p, false).unwrap().run(&m).unwrap()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn eos_then_pad() {
        let m = tiny(32);
        let ids = [1i64, 2, 3];
        let greedy = Generation::new(&m, &Batch { ids: &ids, mask: None, labels: None, b: 1, t: 3 }, GenerateParams { max_new_tokens: 5, ..Default::default() }, false)
            .unwrap()
            .run(&m)
            .unwrap();
        let first = greedy[3];
        let p = GenerateParams { max_new_tokens: 5, eos_token_ids: vec![first], pad_token_id: Some(0), ..Default::default() };
        let out = Generation::new(&m, &Batch { ids: &ids, mask: None, labels: None, b: 1, t: 3 }, p, false).unwrap().run(&m).unwrap();
        assert_eq!(out, vec![1, 2, 3, first], "stops right after eos");
    }

    #[test]
    fn rejects_bad_arguments() {
        let m = tiny(8);
        let ids = [1i64, 2, 3];
        let batch = Batch { ids: &ids, mask: None, labels: None, b: 1, t: 3 };
        let err = |p: GenerateParams| Generation::new(&m, &batch, p, false).err().expect("rejected").to_string();
        assert!(err(GenerateParams { max_new_tokens: 6, ..Default::default() }).contains("at most 5"));
        assert!(err(GenerateParams { max_new_tokens: 2, top_p: Some(0.0), ..Default::default() }).contains("top_p"));
        assert!(err(GenerateParams { max_new_tokens: 2, top_p: Some(1.5), ..Default::default() }).contains("top_p"));
        assert!(err(GenerateParams { max_new_tokens: 2, temperature: Some(-1.0), ..Default::default() }).contains("temperature"));
    }

    #[test]
    fn processors_basic() {
        let mut s = vec![1.0f32, -2.0, 3.0, 0.5];
        repetition_penalty(&mut s, &[0, 1, 1], 2.0, &mut Vec::new());
        assert_eq!(s, vec![0.5, -4.0, 3.0, 0.5]);
        let mut s = vec![1.0f32, 4.0, 3.0, 3.0];
        top_k(&mut s, 2, &mut Vec::new());
        assert_eq!(s, vec![f32::NEG_INFINITY, 4.0, 3.0, 3.0], "ties with the k-th are kept");
        let mut s = vec![0.0f32, 10.0, 0.0];
        top_p(&mut s, 0.5, &mut Vec::new(), &mut Vec::new());
        assert_eq!(s, vec![f32::NEG_INFINITY, 10.0, f32::NEG_INFINITY]);
    }
}
