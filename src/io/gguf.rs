//! GGUF files (llama.cpp's format): the header, metadata and tensor directory, the
//! dequantisation of the common ggml block types into f32, and the mapping of a
//! Llama-family GGUF to a Hugging Face `config.json` and HF-named, HF-shaped tensors.
//!
//! File layout (v2/v3, little-endian; v1 used 32-bit counts and is not supported):
//!
//! ```text
//! "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//! n_kv   x (string key | u32 value_type | value)
//! n_tensors x (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset)
//! padding to `general.alignment` (default 32) | tensor data (offsets are relative to here)
//! ```
//!
//! A string is `u64 len | bytes`; an array is `u32 item_type | u64 len | items`.
//! `ne[0]` is the fastest-varying axis, so a GGUF tensor of dims `[ne0, ne1]` is the
//! row-major (HF / numpy) array of shape `[ne1, ne0]` with the same bytes.
//!
//! Block layouts follow ggml (ggml-common.h / ggml-quants.c); the arithmetic follows the
//! reference numpy dequantisation of the `gguf` Python package operation by operation (no
//! fused multiply-add), so results are bit-identical to it (tests/fixtures/gguf_tiny).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::f16;
use serde_json::{json, Value};

use crate::config::{check_size, MAX_DIM, MAX_LAYERS};
use crate::error::{Error, Result};

pub use super::gguf_tokenizer::{tokenizer_from_gguf, GgufTokenizer};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

// ---------------------------------------------------------------------------------------
// ggml tensor types
// ---------------------------------------------------------------------------------------

/// A ggml tensor type id as stored in the file (kept as the raw id so files with types we
/// cannot dequantise still parse; the error comes when such a tensor is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    /// The types `dequantize` supports.
    pub const SUPPORTED: [GgmlType; 10] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// ggml's name for the type ("Q4_K", ...), or "type N" for an id ggml does not define.
    pub fn name(self) -> String {
        const NAMES: [&str; 40] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
            "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0",
            "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
        ];
        NAMES.get(self.0 as usize).map(|s| s.to_string()).unwrap_or_else(|| format!("type {}", self.0))
    }

    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    /// (values per block, bytes per block) for the supported types.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
            _ => return None,
        })
    }

    fn supported_list() -> String {
        Self::SUPPORTED.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// metadata values
// ---------------------------------------------------------------------------------------

/// One metadata value, typed as in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Floats and integers as f64 (f32 values widen exactly, as Python does).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as JSON (numbers, bools, strings, nested arrays).
    pub fn to_json(&self) -> Value {
        match self {
            GgufValue::U8(v) => json!(v),
            GgufValue::I8(v) => json!(v),
            GgufValue::U16(v) => json!(v),
            GgufValue::I16(v) => json!(v),
            GgufValue::U32(v) => json!(v),
            GgufValue::I32(v) => json!(v),
            GgufValue::U64(v) => json!(v),
            GgufValue::I64(v) => json!(v),
            GgufValue::F32(v) => json!(*v as f64),
            GgufValue::F64(v) => json!(v),
            GgufValue::Bool(v) => json!(v),
            GgufValue::String(s) => json!(s),
            GgufValue::Array(a) => Value::Array(a.iter().map(|v| v.to_json()).collect()),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml dims, `ne[0]` fastest.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    pub fn numel(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// Row-major (HF / numpy) shape: the ggml dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Bytes of data, for the supported types.
    pub fn nbytes(&self) -> Option<usize> {
        let (bs, ts) = self.ggml_type.block_layout()?;
        let n = self.numel();
        n.is_multiple_of(bs).then_some(n / bs * ts)
    }
}

// ---------------------------------------------------------------------------------------
// the parser
// ---------------------------------------------------------------------------------------

enum Bytes {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. The tensor data stays in the memory-mapped file until a tensor is
/// dequantised.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
    bytes: Bytes,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Bytes the parsed metadata may still take in memory (each value costs its enum slot,
    /// plus its text for a string), so that a small file cannot ask for gigabytes.
    budget: usize,
}

/// Metadata may take in memory this much, plus METADATA_PER_FILE_BYTE per byte of the file:
/// a tokenizer's arrays (the largest metadata real files hold) take 3-4x their bytes on disk.
const METADATA_BASE: usize = 64 << 20;
const METADATA_PER_FILE_BYTE: usize = 8;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            format!("truncated file: needed {n} bytes at offset {} of {}", self.pos, self.buf.len())
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().unwrap())
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// A length/count that must fit in what is left of the file (`min_item` bytes each).
    fn len(&mut self, what: &str, min_item: usize) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item.max(1) as u64) > left {
            return Err(format!("{what} of {n} at offset {} runs past the end of the file", self.pos - 8));
        }
        Ok(n as usize)
    }
    /// Takes `bytes` from the memory budget of the parsed metadata.
    fn charge(&mut self, what: &str, bytes: usize) -> std::result::Result<(), String> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            format!(
                "{what} at offset {} would take {} in memory, more than a file of {} may ask for",
                self.pos,
                crate::alloc::human_bytes(bytes as u128),
                crate::alloc::human_bytes(self.buf.len() as u128)
            )
        })?;
        Ok(())
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.len("string length", 1)?;
        self.charge("a string", n)?;
        let b = self.take(n)?;
        // llama.cpp writes UTF-8; a stray invalid byte should not make the file unreadable.
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(self.arr::<1>()?[0]),
            1 => GgufValue::I8(self.arr::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.arr()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.arr()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.arr()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.arr()?)),
            7 => {
                let b = self.arr::<1>()?[0];
                if b > 1 {
                    return Err(format!("invalid bool byte {b} at offset {}", self.pos - 1));
                }
                GgufValue::Bool(b == 1)
            }
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth > 8 {
                    return Err("arrays nested more than 8 deep".into());
                }
                let item = self.u32()?;
                let n = self.len("array length", 1)?;
                self.charge(&format!("an array of {n} items"), n.saturating_mul(std::mem::size_of::<GgufValue>()))?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(item, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.arr()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.arr()?)),
            _ => return Err(format!("unknown metadata value type {ty} at offset {}", self.pos - 4)),
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file (memory-mapped).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; as with every mmap-based loader (safetensors,
        // llama.cpp), modifying the file while it is open is the caller's problem.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::parse(path, Bytes::Mmap(mmap))
    }

    /// Parses a GGUF held in memory (`path` is only used in messages).
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path.into(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let err = |msg: String| Error::checkpoint(&path, format!("not a valid GGUF file: {msg}"));
        let budget = METADATA_BASE.saturating_add(bytes.len().saturating_mul(METADATA_PER_FILE_BYTE));
        let mut c = Cursor { buf: &bytes, pos: 0, budget };
        let magic = c.take(4).map_err(|_| err("shorter than the 4-byte magic".into()))?;
        if magic != GGUF_MAGIC {
            return Err(err(format!("bad magic {magic:02x?} (expected \"GGUF\")")));
        }
        let version = c.u32().map_err(err)?;
        if version == 1 {
            return Err(Error::checkpoint(&path, "GGUF version 1 files are not supported (only v2 and v3); re-convert with a recent llama.cpp"));
        }
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(Error::checkpoint(&path, "big-endian GGUF files are not supported"));
        }
        if version != 2 && version != 3 {
            return Err(Error::checkpoint(&path, format!("unsupported GGUF version {version} (supported: 2, 3)")));
        }
        let n_tensors = c.len("tensor count", 8).map_err(err)?;
        let n_kv = c.len("metadata count", 8).map_err(err)?;
        let mut metadata = Vec::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string().map_err(err)?;
            let ty = c.u32().map_err(err)?;
            let v = c.value(ty, 0).map_err(|m| err(format!("metadata {key:?}: {m}")))?;
            metadata.push((key, v));
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string().map_err(err)?;
            let n_dims = c.u32().map_err(err)?;
            if n_dims > 4 {
                return Err(err(format!("tensor {name:?} has {n_dims} dims (ggml allows at most 4)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64().map_err(err)?);
            }
            // values must be countable and, as f32, addressable (numel() and nbytes() rely on it)
            let numel = dims.iter().try_fold(1u64, |p, &d| p.checked_mul(d)).filter(|&n| n <= isize::MAX as u64 / 4);
            if numel.is_none() {
                return Err(err(format!("tensor {name:?} has dims {dims:?}: more values than any memory can hold")));
            }
            let ggml_type = GgmlType(c.u32().map_err(err)?);
            let offset = c.u64().map_err(err)?;
            tensors.push(GgufTensorInfo { name, dims, ggml_type, offset });
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(err(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(err(format!("tensor {:?} offset {} is not a multiple of the alignment {alignment}", t.name, t.offset)));
            }
            if let Some(nb) = t.nbytes() {
                let end = data_offset.checked_add(t.offset).and_then(|start| start.checked_add(nb as u64));
                if end.is_none_or(|end| end > file_len) {
                    return Err(err(format!(
                        "tensor {:?} ({} bytes at data offset {}) runs past the end of the file ({file_len} bytes)",
                        t.name, nb, t.offset
                    )));
                }
            }
        }
        Ok(GgufFile { path, version, metadata, tensors, alignment, data_offset, bytes })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Metadata as a JSON object (key order: sorted).
    pub fn metadata_json(&self) -> Value {
        Value::Object(self.metadata.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(|v| v.as_str())
    }

    /// The raw bytes of a tensor; errors for types we cannot size (= cannot dequantise).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let nb = self.check_type(info)?;
        let start = (self.data_offset + info.offset) as usize;
        Ok(&self.bytes[start..start + nb])
    }

    fn check_type(&self, info: &GgufTensorInfo) -> Result<usize> {
        if !info.ggml_type.is_supported() {
            return Err(Error::checkpoint(
                &self.path,
                format!(
                    "tensor {:?} has ggml type {} (id {}), which ferrotune cannot dequantize (supported: {})",
                    info.name,
                    info.ggml_type.name(),
                    info.ggml_type.0,
                    GgmlType::supported_list()
                ),
            ));
        }
        info.nbytes().ok_or_else(|| {
            Error::checkpoint(
                &self.path,
                format!("tensor {:?}: {} values is not a whole number of {} blocks", info.name, info.numel(), info.ggml_type.name()),
            )
        })
    }

    /// Dequantises a tensor to f32 in row-major order of `info.shape()`.
    pub fn dequantize(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(info)?;
        let mut out = crate::alloc::try_filled(info.numel(), 0f32)
            .map_err(|why| Error::checkpoint(&self.path, format!("tensor {:?} {why}", info.name)))?;
        dequantize_into(info.ggml_type, bytes, &mut out).map_err(|m| Error::checkpoint(&self.path, format!("tensor {:?}: {m}", info.name)))?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// dequantisation
// ---------------------------------------------------------------------------------------

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantises `bytes` of type `ty` into `out` (its length is the number of values).
/// Large tensors are split across threads by block ranges.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
    let (bs, ts) = ty
        .block_layout()
        .ok_or_else(|| format!("ggml type {} cannot be dequantized (supported: {})", ty.name(), GgmlType::supported_list()))?;
    if !out.len().is_multiple_of(bs) || bytes.len() != out.len() / bs * ts {
        return Err(format!("{} bytes do not hold {} values of type {}", bytes.len(), out.len(), ty.name()));
    }
    let f: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => dq_f32,
        GgmlType::F16 => dq_f16,
        GgmlType::BF16 => dq_bf16,
        GgmlType::Q8_0 => dq_q8_0,
        GgmlType::Q4_0 => dq_q4_0,
        GgmlType::Q4_1 => dq_q4_1,
        GgmlType::Q5_0 => dq_q5_0,
        GgmlType::Q4_K => dq_q4_k,
        GgmlType::Q5_K => dq_q5_k,
        GgmlType::Q6_K => dq_q6_k,
        _ => unreachable!(),
    };
    // Chunks of whole blocks, ~64K values each.
    let blocks_per_chunk = (65536 / bs).max(1);
    use rayon::prelude::*;
    out.par_chunks_mut(blocks_per_chunk * bs)
        .zip(bytes.par_chunks(blocks_per_chunk * ts))
        .for_each(|(o, b)| f(b, o));
    Ok(())
}

fn dq_f32(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes(c.try_into().unwrap());
    }
}

fn dq_f16(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

fn dq_bf16(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

/// Q8_0: f16 d | i8 q[32];  y = q * d.
fn dq_q8_0(b: &[u8], out: &mut [f32]) {
    for (o, blk) in out.chunks_exact_mut(32).zip(b.chunks_exact(34)) {
        let d = f16_at(blk, 0);
        for (y, &q) in o.iter_mut().zip(&blk[2..34]) {
            *y = (q as i8) as f32 * d;
        }
    }
}

/// Q4_0: f16 d | u8 qs[16];  y[j] = d * ((qs[j] & 15) - 8), y[j+16] = d * ((qs[j] >> 4) - 8).
fn dq_q4_0(b: &[u8], out: &mut [f32]) {
    for (o, blk) in out.chunks_exact_mut(32).zip(b.chunks_exact(18)) {
        let d = f16_at(blk, 0);
        for j in 0..16 {
            let q = blk[2 + j];
            o[j] = d * ((q & 0x0F) as i32 - 8) as f32;
            o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1: f16 d | f16 m | u8 qs[16];  y = d * q + m (low nibbles first, then high).
fn dq_q4_1(b: &[u8], out: &mut [f32]) {
    for (o, blk) in out.chunks_exact_mut(32).zip(b.chunks_exact(20)) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        for j in 0..16 {
            let q = blk[4 + j];
            o[j] = d * (q & 0x0F) as f32 + m;
            o[j + 16] = d * (q >> 4) as f32 + m;
        }
    }
}

/// Q5_0: f16 d | u32 qh | u8 qs[16]; as Q4_0 with a fifth bit per value (bit j of qh for
/// value j) and levels centred on 16: y = d * (q - 16).
fn dq_q5_0(b: &[u8], out: &mut [f32]) {
    for (o, blk) in out.chunks_exact_mut(32).zip(b.chunks_exact(22)) {
        let d = f16_at(blk, 0);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        for j in 0..16 {
            let q = blk[6 + j];
            let lo = (q & 0x0F) as u32 | (((qh >> j) & 1) << 4);
            let hi = (q >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
            o[j] = d * (lo as i32 - 16) as f32;
            o[j + 16] = d * (hi as i32 - 16) as f32;
        }
    }
}

/// The 8 six-bit (scale, min) pairs packed in 12 bytes (ggml's get_scale_min_k4).
#[inline]
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Q4_K (256 values): f16 d | f16 dmin | u8 scales[12] | u8 qs[128]. Sub-block s (32 values)
/// uses the low (s even) or high (s odd) nibbles of qs[32*(s/2)..][..32];
/// y = (d * sc[s]) * q - (dmin * m[s]).
fn dq_q4_k(b: &[u8], out: &mut [f32]) {
    for (o, blk) in out.chunks_exact_mut(256).zip(b.chunks_exact(144)) {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let (sc, mn) = k_scale_min(&blk[4..16]);
        let qs = &blk[16..144];
        for s in 0..8 {
            let d1 = d * sc[s] as f32;
            let m1 = dmin * mn[s] as f32;
            let q = &qs[32 * (s / 2)..32 * (s / 2) + 32];
            let shift = 4 * (s % 2);
            for l in 0..32 {
                o[32 * s + l] = d1 * ((q[l] >> shift) & 0x0F) as f32 - m1;
            }
        }
    }
}

/// Q5_K (256 values): f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]; as Q4_K
/// with a fifth bit per value: bit s of qh[l] for sub-block s.
fn dq_q5_k(b: &[u8], out: &mut [f32]) {
    for (o, blk) in out.chunks_exact_mut(256).zip(b.chunks_exact(176)) {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let (sc, mn) = k_scale_min(&blk[4..16]);
        let qh = &blk[16..48];
        let qs = &blk[48..176];
        for s in 0..8 {
            let d1 = d * sc[s] as f32;
            let m1 = dmin * mn[s] as f32;
            let q = &qs[32 * (s / 2)..32 * (s / 2) + 32];
            let shift = 4 * (s % 2);
            for l in 0..32 {
                let v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> s) & 1) << 4);
                o[32 * s + l] = d1 * v as f32 - m1;
            }
        }
    }
}

/// Q6_K (256 values): u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d. Value
/// i = 128*h + 32*g + l (h < 2, g < 4, l < 32): low 4 bits from ql[64h + 32(g%2) + l]
/// (high nibble when g >= 2), high 2 bits from qh[32h + l] >> 2g; y = (d * sc[i/16]) * (q - 32).
fn dq_q6_k(b: &[u8], out: &mut [f32]) {
    for (o, blk) in out.chunks_exact_mut(256).zip(b.chunks_exact(210)) {
        let ql = &blk[0..128];
        let qh = &blk[128..192];
        let scales = &blk[192..208];
        let d = f16_at(blk, 208);
        for h in 0..2 {
            for g in 0..4 {
                for l in 0..32 {
                    let i = 128 * h + 32 * g + l;
                    let lo = (ql[64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0x0F;
                    let hi = (qh[32 * h + l] >> (2 * g)) & 0x03;
                    let q = ((lo | (hi << 4)) as i32 - 32) as f32;
                    let sc = d * (scales[i / 16] as i8) as f32;
                    o[i] = sc * q;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Llama-family GGUF -> Hugging Face config and tensors
// ---------------------------------------------------------------------------------------

/// The architectures `load_gguf` maps (`general.architecture`).
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "gpt2"];

/// HF name -> (HF shape, row-major f32 values).
pub type HfTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A GGUF model as Hugging Face would have it.
#[derive(Debug)]
pub struct GgufModel {
    /// An HF `config.json` as JSON.
    pub config: Value,
    /// HF name -> (HF shape, row-major f32 values). No `lm_head.weight` when embeddings are tied.
    pub tensors: HfTensors,
    pub tokenizer: GgufTokenizer,
    pub chat_template: Option<String>,
}

/// Reads `path` and builds the HF config, HF tensors and tokenizer. Errors name the
/// unsupported architecture, ggml type or tokenizer model when there is one.
pub fn load_gguf(path: impl AsRef<Path>) -> Result<GgufModel> {
    let file = GgufFile::open(path)?;
    let config = hf_config(&file)?;
    let tensors = hf_tensors(&file, &config)?;
    let tokenizer = tokenizer_from_gguf(&file)?;
    let chat_template = tokenizer.chat_template.clone();
    Ok(GgufModel { config, tensors, tokenizer, chat_template })
}

fn arch_of(file: &GgufFile) -> Result<String> {
    let arch = file
        .architecture()
        .ok_or_else(|| Error::checkpoint(&file.path, "GGUF has no general.architecture"))?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(Error::checkpoint(
            &file.path,
            format!(
                "GGUF architecture {arch:?} is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ));
    }
    Ok(arch.to_string())
}

/// The HF `config.json` for a Llama-family GGUF, from `{arch}.*` and `tokenizer.ggml.*`
/// metadata (the keys transformers' GGUF loader reads), plus the defaults it writes.
pub fn hf_config(file: &GgufFile) -> Result<Value> {
    let arch = arch_of(file)?;
    let key = |k: &str| format!("{arch}.{k}");
    // a size, in 1..=limit: the model is sized from these before any tensor is read
    let size = |k: &str, v: Option<&GgufValue>, limit: u64| -> Result<Option<u64>> {
        let Some(v) = v else { return Ok(None) };
        let n = v.as_u64().ok_or_else(|| Error::checkpoint(&file.path, format!("GGUF metadata {:?} is not an integer", key(k))))?;
        check_size(&key(k), n, limit).map_err(|m| Error::checkpoint(&file.path, format!("GGUF metadata {m}")))?;
        Ok(Some(n))
    };
    let opt_u = |k: &str| size(k, file.get(&key(k)), if k == "block_count" { MAX_LAYERS } else { MAX_DIM });
    let req_u = |k: &str| {
        opt_u(k)?.ok_or_else(|| Error::checkpoint(&file.path, format!("GGUF metadata {:?} is missing", key(k))))
    };
    let hidden = req_u("embedding_length")?;
    let n_heads = req_u("attention.head_count")?;
    let n_kv = opt_u("attention.head_count_kv")?.unwrap_or(n_heads);
    let has = |n: &str| file.tensors.iter().any(|t| t.name == n);
    let vocab = match opt_u("vocab_size")? {
        Some(v) => v,
        None => match file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(t) => t.len() as u64,
            None => file
                .tensor_info("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or_else(|| Error::checkpoint(&file.path, "cannot tell the vocabulary size"))?,
        },
    };
    let name = file.get("general.name").and_then(|v| v.as_str()).unwrap_or("");
    if arch == "gpt2" {
        let ff = req_u("feed_forward_length")?;
        let mut c = serde_json::Map::new();
        c.insert("architectures".into(), json!(["GPT2LMHeadModel"]));
        c.insert("model_type".into(), json!("gpt2"));
        c.insert("vocab_size".into(), json!(vocab));
        c.insert("n_embd".into(), json!(hidden));
        c.insert("n_head".into(), json!(n_heads));
        c.insert("n_layer".into(), json!(req_u("block_count")?));
        c.insert("n_positions".into(), json!(req_u("context_length")?));
        c.insert("n_inner".into(), if ff == 4 * hidden { Value::Null } else { json!(ff) });
        let eps = file.get(&key("attention.layer_norm_epsilon")).and_then(|v| v.as_f64()).unwrap_or(1e-5);
        c.insert("layer_norm_epsilon".into(), json!(eps));
        c.insert("activation_function".into(), json!("gelu_new"));
        for p in ["attn_pdrop", "embd_pdrop", "resid_pdrop"] {
            c.insert(p.into(), json!(0.0));
        }
        c.insert("tie_word_embeddings".into(), json!(!has("output.weight")));
        c.insert("initializer_range".into(), json!(0.02));
        c.insert("torch_dtype".into(), json!("float32"));
        return Ok(with_names(file, c, name));
    }
    // transformers: a "llama" GGUF whose name mentions mistral is a Mistral model.
    let model_type = if arch == "llama" && name.to_lowercase().contains("mistral") { "mistral".to_string() } else { arch.clone() };
    let architectures = match model_type.as_str() {
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let rope_theta = file.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10000.0);
    let eps = file.get(&key("attention.layer_norm_rms_epsilon")).and_then(|v| v.as_f64()).unwrap_or(1e-6);
    let mut c = serde_json::Map::new();
    c.insert("architectures".into(), json!([architectures]));
    c.insert("model_type".into(), json!(model_type));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("intermediate_size".into(), json!(req_u("feed_forward_length")?));
    c.insert("num_hidden_layers".into(), json!(req_u("block_count")?));
    c.insert("num_attention_heads".into(), json!(n_heads));
    c.insert("num_key_value_heads".into(), json!(n_kv));
    let head_dim = match opt_u("attention.key_length")? {
        Some(k) => k,
        None if arch == "llama" => opt_u("rope.dimension_count")?.unwrap_or(hidden / n_heads),
        None => hidden / n_heads,
    };
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(rope_theta));
    let mut rope = serde_json::Map::new();
    rope.insert("rope_theta".into(), json!(rope_theta));
    rope.insert("rope_type".into(), json!("default"));
    if let Some(t) = file.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
        if t != "none" {
            let mut s = serde_json::Map::new();
            s.insert("rope_type".into(), json!(t));
            if let Some(f) = file.get(&key("rope.scaling.factor")).and_then(|v| v.as_f64()) {
                s.insert("factor".into(), json!(f));
            }
            if let Some(o) = file.get(&key("rope.scaling.original_context_length")).and_then(|v| v.as_u64()) {
                s.insert("original_max_position_embeddings".into(), json!(o));
            }
            for (k, v) in &s {
                rope.insert(k.clone(), v.clone());
            }
            c.insert("rope_scaling".into(), Value::Object(s));
        }
    }
    c.insert("rope_parameters".into(), Value::Object(rope));
    if let Some(n) = opt_u("context_length")? {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    c.insert("tie_word_embeddings".into(), json!(!has("output.weight")));
    c.insert("attention_bias".into(), json!(has("blk.0.attn_q.bias")));
    c.insert("mlp_bias".into(), json!(false));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("initializer_range".into(), json!(0.02));
    c.insert("use_cache".into(), json!(true));
    c.insert("torch_dtype".into(), json!("float32"));
    Ok(with_names(file, c, name))
}

/// The config's special token ids (from `tokenizer.ggml.*`) and `_name_or_path`.
fn with_names(file: &GgufFile, mut c: serde_json::Map<String, Value>, name: &str) -> Value {
    for (gguf, hf) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
        ("unknown_token_id", "unk_token_id"),
    ] {
        if let Some(v) = file.get(&format!("tokenizer.ggml.{gguf}")).and_then(|v| v.as_u64()) {
            c.insert(hf.into(), json!(v));
        }
    }
    if !name.is_empty() {
        c.insert("_name_or_path".into(), json!(name));
    }
    Value::Object(c)
}

/// llama.cpp's module names beside Hugging Face's, per architecture: (global modules,
/// HF prefix of layer i, per-layer modules). A tensor is `{module}.{suffix}` (weight/bias)
/// globally, `blk.{i}.{module}.{suffix}` <-> `{prefix}.{i}.{module}.{suffix}` per layer.
type NameTable = (&'static [(&'static str, &'static str)], &'static str, &'static [(&'static str, &'static str)]);

fn name_table(arch: &str) -> NameTable {
    match arch {
        "gpt2" => (
            &[
                ("token_embd", "transformer.wte"),
                ("position_embd", "transformer.wpe"),
                ("output_norm", "transformer.ln_f"),
                ("output", "lm_head"),
            ],
            "transformer.h",
            &[
                ("attn_norm", "ln_1"),
                ("attn_qkv", "attn.c_attn"),
                ("attn_output", "attn.c_proj"),
                ("ffn_norm", "ln_2"),
                ("ffn_up", "mlp.c_fc"),
                ("ffn_down", "mlp.c_proj"),
            ],
        ),
        _ => (
            &[("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")],
            "model.layers",
            &[
                ("attn_norm", "input_layernorm"),
                ("ffn_norm", "post_attention_layernorm"),
                ("attn_q", "self_attn.q_proj"),
                ("attn_k", "self_attn.k_proj"),
                ("attn_v", "self_attn.v_proj"),
                ("attn_output", "self_attn.o_proj"),
                ("ffn_gate", "mlp.gate_proj"),
                ("ffn_up", "mlp.up_proj"),
                ("ffn_down", "mlp.down_proj"),
            ],
        ),
    }
}

/// Renames `name` from one column of the architecture's name table to the other
/// (`to_hf`: llama.cpp -> HF), or None when it has no counterpart.
fn rename(arch: &str, name: &str, to_hf: bool) -> Option<String> {
    let (global, prefix, layer) = name_table(arch);
    let pick = |pair: &(&'static str, &'static str)| if to_hf { (pair.0, pair.1) } else { (pair.1, pair.0) };
    let (module, suffix) = name.rsplit_once('.')?;
    if let Some((_, to)) = global.iter().map(pick).find(|(from, _)| *from == module) {
        return Some(format!("{to}.{suffix}"));
    }
    let (from_prefix, to_prefix) = if to_hf { ("blk", prefix) } else { (prefix, "blk") };
    let rest = module.strip_prefix(from_prefix)?.strip_prefix('.')?;
    let (i, module) = rest.split_once('.')?;
    i.parse::<usize>().ok()?;
    let (_, to) = layer.iter().map(pick).find(|(from, _)| *from == module)?;
    Some(format!("{to_prefix}.{i}.{to}.{suffix}"))
}

/// The HF name of a tensor of a Llama-family GGUF, or None for tensors HF models do not
/// have (`rope_freqs.weight`: llama.cpp's precomputed Llama 3 rope factors).
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    rename("llama", gguf, true)
}

/// The HF name of a GGUF tensor of architecture `arch` ("llama", "qwen2", "gpt2").
pub fn hf_name(arch: &str, gguf: &str) -> Option<String> {
    rename(arch, gguf, true)
}

/// llama.cpp's name of an HF tensor of architecture `arch` (the inverse of `hf_name`).
pub fn gguf_name(arch: &str, hf: &str) -> Option<String> {
    rename(arch, hf, false)
}

/// GPT-2's Conv1D weights are stored (in, out) by Hugging Face and (out, in) by llama.cpp.
pub fn is_gpt2_conv1d(gguf: &str) -> bool {
    gguf.ends_with(".weight") && [".attn_qkv.", ".attn_output.", ".ffn_up.", ".ffn_down."].iter().any(|m| gguf.contains(m))
}

/// Transposes a row-major (rows, cols) matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Undoes llama.cpp's rotary row permutation of a Q or K projection (weight or bias):
/// `rows` rows of `row_len` values, `n_head` heads of `rows / n_head` rows each. llama.cpp
/// stores, within each head, row `2*j + t` = HF row `t*half + j` (half = head_dim / 2);
/// this is transformers' `_reverse_permute_weights`:
/// `w.reshape(n_head, half, 2, ...).swapaxes(1, 2).reshape(w.shape)`.
pub fn unpermute_qk(data: &[f32], rows: usize, row_len: usize, n_head: usize) -> Vec<f32> {
    permute_rows(data, rows, row_len, n_head, false)
}

/// llama.cpp's forward permutation (for tests and for writing GGUF files).
pub fn permute_qk(data: &[f32], rows: usize, row_len: usize, n_head: usize) -> Vec<f32> {
    permute_rows(data, rows, row_len, n_head, true)
}

/// Within each head, row `2j + t` of llama.cpp's layout is row `t * half + j` of Hugging
/// Face's; `to_gguf` picks the direction.
fn permute_rows(data: &[f32], rows: usize, row_len: usize, n_head: usize, to_gguf: bool) -> Vec<f32> {
    assert_eq!(data.len(), rows * row_len);
    assert!(n_head > 0 && rows.is_multiple_of(2 * n_head), "{rows} rows do not split into {n_head} heads of even size");
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for t in 0..2 {
            for j in 0..half {
                let (hf, gg) = (h * hd + t * half + j, h * hd + 2 * j + t);
                let (dst, src) = if to_gguf { (gg, hf) } else { (hf, gg) };
                out[dst * row_len..(dst + 1) * row_len].copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// Every tensor of the file, dequantised, under its HF name and shape, with the Q/K rows
/// of a "llama" GGUF put back in HF order.
pub fn hf_tensors(file: &GgufFile, config: &Value) -> Result<HfTensors> {
    let arch = arch_of(file)?;
    let n_heads = config["num_attention_heads"].as_u64().unwrap_or(0) as usize;
    let n_kv = config["num_key_value_heads"].as_u64().unwrap_or(0) as usize;
    let mut out = BTreeMap::new();
    for info in &file.tensors {
        let Some(hf) = hf_name(&arch, &info.name) else {
            if info.name == "rope_freqs.weight" {
                continue;
            }
            return Err(Error::checkpoint(
                &file.path,
                format!("GGUF tensor {:?} has no Hugging Face {arch} counterpart", info.name),
            ));
        };
        let mut shape = info.shape();
        let mut data = file.dequantize(info)?;
        if arch == "gpt2" && is_gpt2_conv1d(&info.name) && shape.len() == 2 {
            data = transpose(&data, shape[0], shape[1]);
            shape.reverse();
        }
        if arch == "llama" && (info.name.contains(".attn_q.") || info.name.contains(".attn_k.")) {
            let heads = if info.name.contains(".attn_q.") { n_heads } else { n_kv };
            let rows = shape.first().copied().unwrap_or(0);
            if heads == 0 || rows == 0 || !rows.is_multiple_of(2 * heads) {
                return Err(Error::checkpoint(
                    &file.path,
                    format!("tensor {:?}: {rows} rows do not split into {heads} heads", info.name),
                ));
            }
            data = unpermute_qk(&data, rows, data.len() / rows, heads);
        }
        out.insert(hf, (shape, data));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a GGUF v3 file in memory.
    struct Writer {
        kv: Vec<u8>,
        n_kv: u64,
        ti: Vec<u8>,
        n_t: u64,
        data: Vec<u8>,
    }

    fn s(b: &mut Vec<u8>, x: &str) {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    }

    impl Writer {
        fn new() -> Self {
            Writer { kv: vec![], n_kv: 0, ti: vec![], n_t: 0, data: vec![] }
        }
        fn kv(&mut self, k: &str, ty: u32, val: &[u8]) {
            s(&mut self.kv, k);
            self.kv.extend(ty.to_le_bytes());
            self.kv.extend(val);
            self.n_kv += 1;
        }
        fn kv_str(&mut self, k: &str, v: &str) {
            let mut b = vec![];
            s(&mut b, v);
            self.kv(k, 8, &b);
        }
        fn kv_u32(&mut self, k: &str, v: u32) {
            self.kv(k, 4, &v.to_le_bytes());
        }
        fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, bytes: &[u8]) {
            while self.data.len() % 32 != 0 {
                self.data.push(0);
            }
            s(&mut self.ti, name);
            self.ti.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.ti.extend(d.to_le_bytes());
            }
            self.ti.extend(ty.to_le_bytes());
            self.ti.extend((self.data.len() as u64).to_le_bytes());
            self.data.extend(bytes);
            self.n_t += 1;
        }
        fn finish(self) -> Vec<u8> {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(self.n_t.to_le_bytes());
            b.extend(self.n_kv.to_le_bytes());
            b.extend(self.kv);
            b.extend(self.ti);
            while b.len() % 32 != 0 {
                b.push(0);
            }
            b.extend(self.data);
            b
        }
    }

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn header_and_metadata() {
        let mut w = Writer::new();
        w.kv_str("general.architecture", "llama");
        w.kv_u32("llama.block_count", 2);
        let mut arr = vec![];
        arr.extend(8u32.to_le_bytes());
        arr.extend(2u64.to_le_bytes());
        s(&mut arr, "a");
        s(&mut arr, "bé");
        w.kv("tok", 9, &arr);
        w.kv("flag", 7, &[1]);
        w.kv("x", 12, &1.5f64.to_le_bytes());
        let vals: Vec<u8> = [1.0f32, -2.0, 3.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        w.tensor("a", &[3], 0, &vals);
        let f = GgufFile::from_bytes("mem.gguf", w.finish()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.get("llama.block_count").unwrap().as_u64(), Some(2));
        assert_eq!(
            f.get("tok"),
            Some(&GgufValue::Array(vec![GgufValue::String("a".into()), GgufValue::String("bé".into())]))
        );
        assert_eq!(f.get("flag").unwrap().as_bool(), Some(true));
        assert_eq!(f.get("x").unwrap().as_f64(), Some(1.5));
        let t = f.tensor_info("a").unwrap();
        assert_eq!(f.dequantize(t).unwrap(), vec![1.0, -2.0, 3.5]);
        assert_eq!(f.data_offset % 32, 0);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let e = GgufFile::from_bytes("x.gguf", b"GGML\x03\0\0\0".to_vec()).unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
        let mut b = b"GGUF".to_vec();
        b.extend(1u32.to_le_bytes());
        let e = GgufFile::from_bytes("x.gguf", b).unwrap_err().to_string();
        assert!(e.contains("version 1"), "{e}");
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1000u64.to_le_bytes());
        let e = GgufFile::from_bytes("x.gguf", b).unwrap_err().to_string();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn hostile_sizes_are_refused_before_allocation() {
        // a tensor offset that wraps around to the start of the file
        let mut w = Writer::new();
        w.tensor("w", &[4], 0, &[0u8; 16]);
        let at = 24 + w.kv.len() + w.ti.len() - 8;
        let mut b = w.finish();
        let data_offset = GgufFile::from_bytes("ok.gguf", b.clone()).unwrap().data_offset;
        b[at..at + 8].copy_from_slice(&0u64.wrapping_sub(data_offset).to_le_bytes());
        let e = GgufFile::from_bytes("wrap.gguf", b).unwrap_err().to_string();
        assert!(e.contains("\"w\"") && e.contains("past the end"), "{e}");
        // dims whose product overflows
        let mut w = Writer::new();
        w.tensor("big", &[1 << 40, 1 << 40], 0, &[]);
        let e = GgufFile::from_bytes("dims.gguf", w.finish()).unwrap_err().to_string();
        assert!(e.contains("\"big\"") && e.contains("more values"), "{e}");
        // a byte array costs 32x its size in parsed values: refused by the metadata budget
        let n = 12 << 20;
        let mut arr = 0u32.to_le_bytes().to_vec();
        arr.extend((n as u64).to_le_bytes());
        arr.resize(arr.len() + n, 7);
        let mut w = Writer::new();
        w.kv("huge", 9, &arr);
        let e = GgufFile::from_bytes("arr.gguf", w.finish()).unwrap_err().to_string();
        assert!(e.contains("\"huge\"") && e.contains("more than a file of"), "{e}");
    }

    #[test]
    fn model_sizes_are_checked_with_their_gguf_key() {
        let config_error = |key: &str, value: u32| {
            let mut w = Writer::new();
            w.kv_str("general.architecture", "llama");
            for (k, v) in [("embedding_length", 64), ("attention.head_count", 4), ("feed_forward_length", 128), ("block_count", 2), ("vocab_size", 100)] {
                w.kv_u32(&format!("llama.{k}"), if k == key { value } else { v });
            }
            hf_config(&GgufFile::from_bytes("m.gguf", w.finish()).unwrap()).map(|_| ()).unwrap_err().to_string()
        };
        let e = config_error("attention.head_count", 0);
        assert!(e.contains("llama.attention.head_count must be a positive integer"), "{e}");
        let e = config_error("block_count", 1 << 30);
        assert!(e.contains("llama.block_count = 1073741824 is larger than"), "{e}");
        let e = config_error("embedding_length", u32::MAX);
        assert!(e.contains("llama.embedding_length"), "{e}");
    }

    #[test]
    fn unsupported_type_is_named() {
        let mut w = Writer::new();
        w.tensor("w", &[32], 7, &[0u8; 24]); // Q5_1
        let f = GgufFile::from_bytes("q.gguf", w.finish()).unwrap();
        let e = f.dequantize(&f.tensors[0]).unwrap_err().to_string();
        assert!(e.contains("Q5_1") && e.contains("\"w\"") && e.contains("Q4_K"), "{e}");
    }

    #[test]
    fn q8_0_q4_0_q4_1_blocks() {
        // Q8_0
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut o = vec![0f32; 32];
        dequantize_into(GgmlType::Q8_0, &b, &mut o).unwrap();
        assert_eq!(o[0], -8.0);
        assert_eq!(o[31], 7.5);
        // Q4_0: byte j holds value j (low) and j+16 (high)
        let mut b = h(2.0).to_vec();
        b.extend((0..16).map(|j| (j as u8) | (((15 - j) as u8) << 4)));
        dequantize_into(GgmlType::Q4_0, &b, &mut o).unwrap();
        assert_eq!(o[0], -16.0);
        assert_eq!(o[15], 14.0);
        assert_eq!(o[16], 14.0);
        assert_eq!(o[31], -16.0);
        // Q4_1
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16).map(|j| (j as u8) | (3 << 4)));
        dequantize_into(GgmlType::Q4_1, &b, &mut o).unwrap();
        assert_eq!(o[0], -1.0);
        assert_eq!(o[15], 2.75);
        assert_eq!(o[20], -0.25);
    }

    #[test]
    fn k_quant_blocks() {
        // Q4_K with scale index s -> sc = s + 1, min = 2s (6-bit packing of all 8 pairs).
        let sc: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 63];
        let mn: [u8; 8] = [0, 2, 4, 6, 8, 10, 12, 62];
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            packed[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
        }
        assert_eq!(k_scale_min(&packed), (sc, mn));
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        b.extend(packed);
        b.extend((0..128).map(|i| ((i % 16) as u8) | ((((i + 1) % 16) as u8) << 4)));
        let mut o = vec![0f32; 256];
        dequantize_into(GgmlType::Q4_K, &b, &mut o).unwrap();
        // sub-block 0: low nibbles of qs[0..32], sc 1, min 0
        assert_eq!(o[3], 3.0);
        // sub-block 1: high nibbles of qs[0..32], sc 2, min 2*0.5
        assert_eq!(o[32 + 3], 2.0 * 4.0 - 1.0);
        // sub-block 7: high nibbles of qs[96..128], sc 63, min 62*0.5
        assert_eq!(o[224 + 5], 63.0 * (((96 + 5 + 1) % 16) as f32) - 31.0);

        // Q5_K: same scales, qh bit s of byte l sets value 32s+l's fifth bit.
        let mut b = h(1.0).to_vec();
        b.extend(h(0.0));
        b.extend(packed);
        let qh: Vec<u8> = (0..32).map(|l| if l == 4 { 0b1000_0001 } else { 0 }).collect();
        b.extend(&qh);
        b.extend([0u8; 128]);
        dequantize_into(GgmlType::Q5_K, &b, &mut o).unwrap();
        assert_eq!(o[4], 16.0); // s=0, sc 1
        assert_eq!(o[224 + 4], 16.0 * 63.0); // s=7
        assert_eq!(o[5], 0.0);

        // Q6_K: one value per (h, g) with a recognisable code.
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        ql[64 + 32 + 1] = 0x5 << 4; // h=1, g=3, l=1: low bits 5 (high nibble of the second half)
        qh[32 + 1] = 0b10 << 6; // its high bits 2 -> q = 5 | 32 = 37 -> 37 - 32 = 5
        let mut scales = [1i8 as u8; 16];
        scales[(128 + 96 + 1) / 16] = (-3i8) as u8;
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend(scales);
        b.extend(h(0.5));
        dequantize_into(GgmlType::Q6_K, &b, &mut o).unwrap();
        assert_eq!(o[128 + 96 + 1], 0.5 * -3.0 * 5.0);
        assert_eq!(o[0], 0.5 * -32.0);
    }

    /// Found by fuzz/ (gguf target): a llama Q/K tensor with no dims (or a zero dim)
    /// indexed shape[0] / divided by 0 rows in hf_tensors.
    #[test]
    fn qk_tensors_without_rows_are_errors_not_panics() {
        for dims in [&[][..], &[4, 0][..]] {
            let mut w = Writer::new();
            w.kv_str("general.architecture", "llama");
            let nbytes = dims.iter().product::<u64>() as usize * 4;
            w.tensor("blk.0.attn_q.weight", dims, 0, &vec![0u8; nbytes]);
            let f = GgufFile::from_bytes("mem.gguf", w.finish()).unwrap();
            let config = serde_json::json!({"num_attention_heads": 2, "num_key_value_heads": 1});
            let e = hf_tensors(&f, &config).unwrap_err().to_string();
            assert!(e.contains("0 rows do not split into 2 heads"), "{dims:?}: {e}");
        }
    }

    #[test]
    fn permutation_round_trip() {
        // 2 heads of head_dim 4, rows of 3.
        let data: Vec<f32> = (0..24).map(|x| x as f32).collect();
        let p = permute_qk(&data, 8, 3, 2);
        assert_eq!(unpermute_qk(&p, 8, 3, 2), data);
        // HF row order within a head: [0 1 | 2 3] (two halves); llama.cpp interleaves: 0 2 1 3.
        let rows: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(permute_qk(&rows, 8, 1, 2), vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn tensor_names() {
        assert_eq!(hf_tensor_name("blk.12.attn_q.weight").unwrap(), "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(hf_tensor_name("blk.0.ffn_norm.weight").unwrap(), "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf_tensor_name("blk.3.attn_k.bias").unwrap(), "model.layers.3.self_attn.k_proj.bias");
        assert_eq!(hf_tensor_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
        assert_eq!(hf_tensor_name("blk.x.attn_q.weight"), None);
    }
}
