//! Writing GGUF files: the format (the inverse of gguf.rs's parser, same layout) and the
//! export of a Hugging Face model (config.json, HF-named tensors, tokenizer) as llama.cpp's
//! `convert_hf_to_gguf.py` + `llama-quantize` would write it: architecture names and
//! metadata keys, tensor names (the inverse of `hf_name`), Q/K rows of "llama" permuted,
//! GPT-2's Conv1D weights transposed, 1-D tensors kept F32, and llama.cpp's choice of type
//! per tensor (below, `tensor_type`).

use std::path::Path;

use serde_json::Value;

use super::atomic::write_atomic;
use super::gguf::{gguf_name, is_gpt2_conv1d, permute_qk, transpose, GgmlType, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::gguf_tokenizer::tokenizer_to_gguf;
use super::quantize::quantize_into;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

// ---------------------------------------------------------------------------------------
// the file format
// ---------------------------------------------------------------------------------------

/// A GGUF file being assembled: metadata in order, then tensors (row-major f32 values and
/// the type each is stored as). Tensors are quantised into their place by `to_bytes`.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<f32>)>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// The file's type id of a value (an empty array is written as an array of strings).
fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_value(b: &mut Vec<u8>, v: &GgufValue) -> Result<()> {
    match v {
        GgufValue::U8(x) => b.push(*x),
        GgufValue::I8(x) => b.push(*x as u8),
        GgufValue::U16(x) => b.extend(x.to_le_bytes()),
        GgufValue::I16(x) => b.extend(x.to_le_bytes()),
        GgufValue::U32(x) => b.extend(x.to_le_bytes()),
        GgufValue::I32(x) => b.extend(x.to_le_bytes()),
        GgufValue::F32(x) => b.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => b.push(*x as u8),
        GgufValue::String(s) => put_str(b, s),
        GgufValue::U64(x) => b.extend(x.to_le_bytes()),
        GgufValue::I64(x) => b.extend(x.to_le_bytes()),
        GgufValue::F64(x) => b.extend(x.to_le_bytes()),
        GgufValue::Array(items) => {
            let item = items.first().map(type_id).unwrap_or(8);
            if items.iter().any(|x| type_id(x) != item) {
                return Err(Error::Input("a GGUF array must hold values of one type".into()));
            }
            b.extend(item.to_le_bytes());
            b.extend((items.len() as u64).to_le_bytes());
            for x in items {
                put_value(b, x)?;
            }
        }
    }
    Ok(())
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_metadata(&mut self, key: impl Into<String>, value: GgufValue) {
        self.metadata.push((key.into(), value));
    }

    /// Adds a tensor of row-major `shape`, to be stored as `ty` (its rows must be a whole
    /// number of `ty`'s blocks: `tensor_type` chooses types that are).
    pub fn add_tensor(&mut self, name: impl Into<String>, shape: Vec<usize>, ty: GgmlType, data: Vec<f32>) {
        self.tensors.push((name.into(), shape, ty, data));
    }

    /// The file's bytes: header, metadata, tensor directory, then each tensor quantised at
    /// its aligned offset.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_reporting(&mut |_, _| Ok(()))
    }

    /// `to_bytes`, calling `progress(values done, values in all)` after each tensor; an error
    /// it returns stops the export.
    pub fn to_bytes_reporting(&self, progress: &mut Progress<'_>) -> Result<Vec<u8>> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut b = GGUF_MAGIC.to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut b, k);
            b.extend(type_id(v).to_le_bytes());
            put_value(&mut b, v)?;
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut offset = 0usize;
        for (name, shape, ty, data) in &self.tensors {
            let (bs, ts) = ty.block_layout().expect("writable types have a block layout");
            let row = shape.last().copied().unwrap_or(1);
            if data.len() != shape.iter().product::<usize>() || !row.is_multiple_of(bs) {
                return Err(Error::Input(format!(
                    "tensor {name:?} of shape {shape:?} ({} values) cannot be stored as {}: rows must be whole blocks of {bs}",
                    data.len(),
                    ty.name()
                )));
            }
            put_str(&mut b, name);
            b.extend((shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                b.extend((*d as u64).to_le_bytes());
            }
            b.extend(ty.0.to_le_bytes());
            b.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() / bs * ts).div_ceil(align) * align;
        }
        let data_start = b.len().div_ceil(align) * align;
        b.resize(data_start + offset, 0);
        let (mut done, all) = (0u64, self.tensors.iter().map(|t| t.3.len() as u64).sum::<u64>());
        for ((name, _, ty, data), at) in self.tensors.iter().zip(offsets) {
            let (bs, ts) = ty.block_layout().expect("checked above");
            let out = &mut b[data_start + at..data_start + at + data.len() / bs * ts];
            quantize_into(*ty, data, out).map_err(|m| Error::Input(format!("tensor {name:?}: {m}")))?;
            done += data.len() as u64;
            progress(done, all)?;
        }
        Ok(b)
    }

    /// Writes the file atomically, reporting as `to_bytes_reporting`; returns its size in
    /// bytes.
    pub fn write(&self, path: &Path, progress: &mut Progress<'_>) -> Result<u64> {
        let bytes = self.to_bytes_reporting(progress)?;
        write_atomic(path, &bytes)?;
        Ok(bytes.len() as u64)
    }
}

// ---------------------------------------------------------------------------------------
// what each tensor is stored as
// ---------------------------------------------------------------------------------------

/// The `quantization=` of an export: a llama.cpp file type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q6K,
    Q4KM,
}

impl Quantization {
    pub const NAMES: [(&'static str, Quantization); 7] = [
        ("f32", Self::F32),
        ("f16", Self::F16),
        ("bf16", Self::BF16),
        ("q8_0", Self::Q8_0),
        ("q4_0", Self::Q4_0),
        ("q6_k", Self::Q6K),
        ("q4_k_m", Self::Q4KM),
    ];

    pub fn parse(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        Self::NAMES.iter().find(|(n, _)| *n == lower).map(|(_, q)| *q).ok_or_else(|| {
            let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
            Error::Input(format!("unknown GGUF quantization {name:?} (supported: {})", names.join(", ")))
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, q)| *q == self).map(|(n, _)| *n).unwrap()
    }

    /// llama.cpp's `llama_ftype` id (`general.file_type`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
            Self::Q6K => 18,
            Self::BF16 => 32,
        }
    }

    /// The type most 2-D tensors get.
    fn base(self) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::BF16 => GgmlType::BF16,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q6K => GgmlType::Q6_K,
            Self::Q4KM => GgmlType::Q4_K,
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// one between.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type a tensor is stored as (`shape` row-major, llama.cpp names):
/// - 1-D tensors (norms, biases) and GPT-2's position embedding: F32;
/// - f32 / f16 / bf16: that type; q8_0: Q8_0 (convert_hf_to_gguf.py);
/// - q4_0, q6_k, q4_k_m: llama-quantize's mixture without an importance matrix: the output
///   projection (or the token embedding when it is tied) Q6_K, or Q8_0 when its rows are not
///   whole 256-blocks; for q4_k_m also attn_v / attn_qkv and ffn_down of the layers
///   `use_more_bits` picks Q6_K, the rest Q4_K;
/// - rows that are not whole blocks fall back as llama.cpp does: Q4_K -> Q5_0, Q6_K -> Q8_0
///   (llama-quantize), then anything -> F16 (convert_hf_to_gguf.py's Q8_0 fallback); F16 is
///   what a row of any length can be. Returns the type and whether it fell back.
pub fn tensor_type(q: Quantization, name: &str, shape: &[usize], n_layers: usize, tied: bool) -> (GgmlType, bool) {
    if shape.len() < 2 || name == "position_embd.weight" {
        return (GgmlType::F32, false);
    }
    let row = *shape.last().unwrap();
    let mut ty = q.base();
    let k_mixture = matches!(q, Quantization::Q4_0 | Quantization::Q6K | Quantization::Q4KM);
    let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
    if k_mixture && is_output {
        ty = if row.is_multiple_of(256) { GgmlType::Q6_K } else { GgmlType::Q8_0 };
    } else if q == Quantization::Q4KM {
        let layer = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse().ok());
        let sensitive = name.contains(".attn_v.weight") || name.contains(".attn_qkv.weight") || name.contains(".ffn_down.");
        if let (Some(i), true) = (layer, sensitive) {
            if use_more_bits(i, n_layers) {
                ty = GgmlType::Q6_K;
            }
        }
    }
    let fits = |t: GgmlType| row.is_multiple_of(t.block_layout().unwrap().0);
    if fits(ty) {
        return (ty, false);
    }
    let fallback = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    (if fits(fallback) { fallback } else { GgmlType::F16 }, true)
}

// ---------------------------------------------------------------------------------------
// a Hugging Face model as llama.cpp names it
// ---------------------------------------------------------------------------------------

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// (llama.cpp name, type name) of every tensor, in file order.
    pub tensors: Vec<(String, String)>,
    pub bytes: u64,
    /// Things llama.cpp may not read as the model meant (fallback types, tokenizer caveats).
    pub warnings: Vec<String>,
}

/// The llama.cpp architecture of an HF `model_type`.
fn llama_cpp_arch(model_type: &str) -> Result<&'static str> {
    Ok(match model_type {
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        "gpt2" => "gpt2",
        other => {
            return Err(Error::Config(format!(
                "model_type {other:?} cannot be exported to GGUF (supported: llama, mistral, qwen2, gpt2)"
            )))
        }
    })
}

fn cfg_u(config: &Value, keys: &[&str]) -> Result<u64> {
    keys.iter()
        .find_map(|k| config[*k].as_u64())
        .ok_or_else(|| Error::Config(format!("config.json has no {} (a positive integer)", keys.join(" / "))))
}

fn cfg_f(config: &Value, key: &str, default: f64) -> f64 {
    config[key].as_f64().unwrap_or(default)
}

/// The `{arch}.*` and `general.*` metadata of an HF config, as convert_hf_to_gguf.py writes
/// them (the keys gguf.rs's `hf_config` reads back).
fn model_metadata(config: &Value, arch: &str, name: &str, q: Quantization, n_vocab: usize) -> Result<Vec<(String, GgufValue)>> {
    let k = |s: &str| format!("{arch}.{s}");
    let u32v = |v: u64| GgufValue::U32(v as u32);
    let mut md = vec![
        ("general.architecture".to_string(), GgufValue::String(arch.into())),
        ("general.name".to_string(), GgufValue::String(name.into())),
        ("general.file_type".to_string(), GgufValue::U32(q.file_type())),
        ("general.quantization_version".to_string(), GgufValue::U32(2)),
    ];
    if arch == "gpt2" {
        let act = config["activation_function"].as_str().unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu") {
            return Err(Error::Config(format!("GPT-2 activation_function {act:?} has no llama.cpp counterpart (it computes tanh-GELU)")));
        }
        let n_embd = cfg_u(config, &["n_embd"])?;
        md.extend([
            (k("context_length"), u32v(cfg_u(config, &["n_positions"])?)),
            (k("embedding_length"), u32v(n_embd)),
            (k("feed_forward_length"), u32v(config["n_inner"].as_u64().unwrap_or(4 * n_embd))),
            (k("block_count"), u32v(cfg_u(config, &["n_layer"])?)),
            (k("attention.head_count"), u32v(cfg_u(config, &["n_head"])?)),
            (k("attention.layer_norm_epsilon"), GgufValue::F32(cfg_f(config, "layer_norm_epsilon", 1e-5) as f32)),
            (k("vocab_size"), u32v(n_vocab as u64)),
        ]);
        return Ok(md);
    }
    let hidden = cfg_u(config, &["hidden_size"])?;
    let heads = cfg_u(config, &["num_attention_heads"])?;
    let head_dim = config["head_dim"].as_u64().unwrap_or(hidden / heads.max(1));
    let rope = if config["rope_parameters"].is_object() { &config["rope_parameters"] } else { &config["rope_scaling"] };
    let theta = rope["rope_theta"].as_f64().or_else(|| config["rope_theta"].as_f64()).unwrap_or(10000.0);
    md.extend([
        (k("context_length"), u32v(cfg_u(config, &["max_position_embeddings"])?)),
        (k("embedding_length"), u32v(hidden)),
        (k("block_count"), u32v(cfg_u(config, &["num_hidden_layers"])?)),
        (k("feed_forward_length"), u32v(cfg_u(config, &["intermediate_size"])?)),
        (k("attention.head_count"), u32v(heads)),
        (k("attention.head_count_kv"), u32v(config["num_key_value_heads"].as_u64().unwrap_or(heads))),
        (k("attention.layer_norm_rms_epsilon"), GgufValue::F32(cfg_f(config, "rms_norm_eps", 1e-6) as f32)),
        (k("rope.freq_base"), GgufValue::F32(theta as f32)),
        (k("rope.dimension_count"), u32v(head_dim)),
        (k("vocab_size"), u32v(n_vocab as u64)),
    ]);
    if head_dim * heads != hidden {
        md.push((k("attention.key_length"), u32v(head_dim)));
        md.push((k("attention.value_length"), u32v(head_dim)));
    }
    match rope["rope_type"].as_str().or_else(|| rope["type"].as_str()).unwrap_or("default") {
        "default" => {}
        t @ ("linear" | "yarn") => {
            md.push((k("rope.scaling.type"), GgufValue::String(t.into())));
            md.push((k("rope.scaling.factor"), GgufValue::F32(rope["factor"].as_f64().unwrap_or(1.0) as f32)));
            if let Some(n) = rope["original_max_position_embeddings"].as_u64() {
                md.push((k("rope.scaling.original_context_length"), u32v(n)));
            }
        }
        other => return Err(Error::Config(format!("GGUF export of rope_type {other:?} is not supported (supported: default, linear, yarn)"))),
    }
    Ok(md)
}

/// Called with (values stored, values in all) as an export goes; an error stops it.
pub type Progress<'a> = dyn FnMut(u64, u64) -> Result<()> + 'a;

/// Writes `tensors` (HF names, row-major shapes, f32 values) of a model with HF `config`
/// and `tokenizer` to a GGUF file at `path` (atomically), calling `progress` after each
/// tensor is quantised. `name` is `general.name`.
#[allow(clippy::too_many_arguments)]
pub fn export_gguf(
    path: &Path,
    config: &Value,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    tokenizer: &Tokenizer,
    chat_template: Option<&str>,
    name: &str,
    q: Quantization,
    progress: &mut Progress<'_>,
) -> Result<ExportReport> {
    let model_type = config["model_type"].as_str().unwrap_or("");
    let arch = llama_cpp_arch(model_type)?;
    // transformers (and gguf.rs) read a "llama" GGUF named "...mistral..." as Mistral.
    let name = match (model_type, name) {
        (_, "") => model_type.to_string(),
        ("mistral", n) if !n.to_lowercase().contains("mistral") => format!("{n} (mistral)"),
        (_, n) => n.to_string(),
    };
    let embed = if arch == "gpt2" { "transformer.wte.weight" } else { "model.embed_tokens.weight" };
    let n_vocab = tensors
        .iter()
        .find(|(n, _, _)| n == embed)
        .map(|(_, s, _)| s[0])
        .ok_or_else(|| Error::Config(format!("the model has no {embed}")))?;
    let tied = !tensors.iter().any(|(n, _, _)| n == "lm_head.weight");
    let n_layers = cfg_u(config, &["num_hidden_layers", "n_layer"])? as usize;
    let heads = cfg_u(config, &["num_attention_heads", "n_head"])? as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().map(|v| v as usize).unwrap_or(heads);

    let mut w = GgufWriter::new();
    for (k, v) in model_metadata(config, arch, &name, q, n_vocab)? {
        w.add_metadata(k, v);
    }
    let (tok_md, mut warnings) = tokenizer_to_gguf(tokenizer, chat_template, n_vocab)?;
    if let Some(window) = config["sliding_window"].as_u64() {
        warnings.push(format!(
            "llama.cpp's {arch} architecture has no sliding window: attention over more than {window} tokens will differ from this model's"
        ));
    }
    for (k, v) in tok_md {
        w.add_metadata(k, v);
    }
    let mut written = Vec::with_capacity(tensors.len());
    let mut fallbacks: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (hf, mut shape, mut data) in tensors {
        let gguf = gguf_name(arch, &hf)
            .ok_or_else(|| Error::Config(format!("parameter {hf:?} has no llama.cpp {arch} counterpart: it cannot be exported to GGUF")))?;
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::Input(format!("parameter {hf:?} holds a non-finite value ({}) at flat index {i}", data[i])));
        }
        if arch == "llama" && (gguf.contains(".attn_q.") || gguf.contains(".attn_k.")) {
            let h = if gguf.contains(".attn_q.") { heads } else { kv_heads };
            let rows = shape[0];
            data = permute_qk(&data, rows, data.len() / rows, h);
        }
        if arch == "gpt2" && is_gpt2_conv1d(&gguf) && shape.len() == 2 {
            data = transpose(&data, shape[0], shape[1]);
            shape.reverse();
        }
        let (ty, fell_back) = tensor_type(q, &gguf, &shape, n_layers, tied);
        if fell_back {
            fallbacks.entry(ty.name()).or_default().push(gguf.clone());
        }
        written.push((gguf.clone(), ty.name()));
        w.add_tensor(gguf, shape, ty, data);
    }
    for (ty, names) in fallbacks {
        warnings.push(format!(
            "{} tensors have rows that are not whole blocks of the type {} picks for them: stored as {ty}, as llama.cpp does: {}",
            names.len(),
            q.name(),
            names.join(", ")
        ));
    }
    let bytes = w.write(path, progress)?;
    Ok(ExportReport { tensors: written, bytes, warnings })
}

#[cfg(test)]
mod tests {
    use super::super::gguf::GgufFile;
    use super::*;

    #[test]
    fn writer_round_trips_through_the_parser() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", GgufValue::String("llama".into()));
        w.add_metadata("n", GgufValue::U32(7));
        w.add_metadata("list", GgufValue::Array(vec![GgufValue::String("a".into()), GgufValue::String("b c".into())]));
        w.add_metadata("eps", GgufValue::F32(1e-5));
        w.add_metadata("flag", GgufValue::Bool(true));
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 7.0 - 3.0).collect();
        w.add_tensor("a", vec![2, 32], GgmlType::Q8_0, x.clone());
        w.add_tensor("b", vec![3], GgmlType::F32, vec![1.0, 2.0, 3.0]);
        w.add_tensor("c", vec![2, 32], GgmlType::BF16, x.clone());
        let f = GgufFile::from_bytes("mem.gguf", w.to_bytes().unwrap()).unwrap();
        assert_eq!(f.get("n"), Some(&GgufValue::U32(7)));
        assert_eq!(f.get("list"), Some(&GgufValue::Array(vec![GgufValue::String("a".into()), GgufValue::String("b c".into())])));
        assert_eq!(f.get("eps"), Some(&GgufValue::F32(1e-5)));
        assert_eq!(f.get("flag"), Some(&GgufValue::Bool(true)));
        let a = f.tensor_info("a").unwrap();
        assert_eq!((a.shape(), a.ggml_type), (vec![2, 32], GgmlType::Q8_0));
        let y = f.dequantize(a).unwrap();
        assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 0.57 * 6.0 / 127.0));
        assert_eq!(f.dequantize(f.tensor_info("b").unwrap()).unwrap(), vec![1.0, 2.0, 3.0]);
        assert!(f.tensors.iter().all(|t| t.offset % 32 == 0));
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_refused() {
        let mut w = GgufWriter::new();
        w.add_tensor("odd", vec![2, 48], GgmlType::Q4_K, vec![0.0; 96]);
        let e = w.to_bytes().unwrap_err().to_string();
        assert!(e.contains("\"odd\"") && e.contains("Q4_K") && e.contains("256"), "{e}");
    }

    #[test]
    fn llama_cpp_mixture_rule() {
        use Quantization::*;
        let t = |q, name: &str, shape: &[usize]| tensor_type(q, name, shape, 30, true);
        // 1-D and position embeddings stay F32
        assert_eq!(t(Q8_0, "blk.0.attn_norm.weight", &[576]), (GgmlType::F32, false));
        assert_eq!(t(Q4KM, "position_embd.weight", &[1024, 768]), (GgmlType::F32, false));
        // q8_0: odd rows -> F16 (convert_hf_to_gguf.py)
        assert_eq!(t(Q8_0, "blk.0.attn_q.weight", &[64, 64]), (GgmlType::Q8_0, false));
        assert_eq!(t(Q8_0, "blk.0.attn_q.weight", &[64, 50]), (GgmlType::F16, true));
        // tied embedding = the output: Q6_K, or Q8_0 when rows are not 256-blocks
        assert_eq!(t(Q4KM, "token_embd.weight", &[49152, 512]), (GgmlType::Q6_K, false));
        assert_eq!(t(Q4KM, "token_embd.weight", &[49152, 576]), (GgmlType::Q8_0, false));
        assert_eq!(t(Q4_0, "token_embd.weight", &[49152, 576]), (GgmlType::Q8_0, false));
        assert_eq!(tensor_type(Q4KM, "token_embd.weight", &[100, 512], 30, false), (GgmlType::Q4_K, false));
        // attn_v / ffn_down of use_more_bits layers (30 layers: 0-2, 26-29, 5, 8, ...)
        let more: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(more, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        assert_eq!(t(Q4KM, "blk.5.attn_v.weight", &[256, 512]), (GgmlType::Q6_K, false));
        assert_eq!(t(Q4KM, "blk.6.attn_v.weight", &[256, 512]), (GgmlType::Q4_K, false));
        assert_eq!(t(Q4KM, "blk.6.ffn_down.weight", &[512, 1536]), (GgmlType::Q4_K, false));
        assert_eq!(t(Q4KM, "blk.0.ffn_down.weight", &[576, 1536]), (GgmlType::Q6_K, false));
        // fallbacks: Q4_K -> Q5_0, Q6_K -> Q8_0, then F16
        assert_eq!(t(Q4KM, "blk.6.attn_q.weight", &[576, 576]), (GgmlType::Q5_0, true));
        assert_eq!(t(Q4KM, "blk.0.attn_v.weight", &[192, 576]), (GgmlType::Q8_0, true));
        assert_eq!(t(Q6K, "blk.0.attn_q.weight", &[48, 48]), (GgmlType::F16, true));
    }

    #[test]
    fn quantization_names() {
        assert_eq!(Quantization::parse("Q4_K_M").unwrap(), Quantization::Q4KM);
        let e = Quantization::parse("q3_k").unwrap_err().to_string();
        assert!(e.contains("q3_k") && e.contains("q4_k_m"), "{e}");
    }
}
