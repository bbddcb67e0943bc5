//! safetensors files: load (any float dtype converted to the model's, sharded checkpoints
//! through `model.safetensors.index.json`) and save (atomic).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::kernels::Real;

/// One tensor read from a file, in its stored dtype.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// A float32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        RawTensor { dtype: Dtype::F32, shape, data: f32_bytes(values) }
    }

    /// Converts a floating-point tensor to `F` (F64, F32, F16 and BF16 are accepted).
    pub fn to_real<F: Real>(&self, name: &str) -> Result<Vec<F>> {
        let d = &self.data;
        let out = match self.dtype {
            Dtype::F32 => d.chunks_exact(4).map(|b| F::lit(f32::from_le_bytes(b.try_into().unwrap()) as f64)).collect(),
            Dtype::F64 => d.chunks_exact(8).map(|b| F::lit(f64::from_le_bytes(b.try_into().unwrap()))).collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| F::lit(half::f16::from_le_bytes(b.try_into().unwrap()).to_f64()))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| F::lit(half::bf16::from_le_bytes(b.try_into().unwrap()).to_f64()))
                .collect(),
            other => return Err(Error::Input(format!("tensor {name:?} has dtype {other:?}, expected a float dtype"))),
        };
        Ok(out)
    }
}

/// Reads every tensor of one safetensors file, plus its metadata.
pub fn load_file(path: &Path) -> Result<(BTreeMap<String, RawTensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_bytes(path, &bytes)
}

/// The tensors and metadata of a safetensors file held in memory (`path` is only used in
/// messages); what `load_file` does after reading the file.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<(BTreeMap<String, RawTensor>, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file ({e})")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file ({e})")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = st
        .iter()
        .map(|(name, view)| {
            (name.to_string(), RawTensor { dtype: view.dtype(), shape: view.shape().to_vec(), data: view.data().to_vec() })
        })
        .collect();
    Ok((tensors, metadata))
}

/// A shard named by the index: a relative path inside the model directory. Unlike
/// transformers, ferrotune refuses `..` and absolute paths, so that a downloaded index cannot
/// make it read files outside the model.
fn shard_path<'a>(index: &Path, tensor: &str, shard: &'a serde_json::Value) -> Result<&'a str> {
    let bad = |why: &str| Error::checkpoint(index, format!("weight_map[{tensor:?}] = {shard}: {why}"));
    let s = shard.as_str().ok_or_else(|| bad("a shard must be a file name"))?;
    let inside = Path::new(s).components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if s.is_empty() || !inside {
        return Err(bad("shards must be files inside the model directory (no '..' or absolute paths)"));
    }
    Ok(s)
}

/// Loads the weights of a Hugging Face model directory: `model.safetensors`, or the shards
/// listed by `model.safetensors.index.json`.
pub fn load_model_dir(dir: &Path) -> Result<BTreeMap<String, RawTensor>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(load_file(&single)?.0);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Json { context: index.display().to_string(), source: e })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::checkpoint(&index, "no \"weight_map\" object"))?;
        let mut shards = Vec::with_capacity(map.len());
        for (name, shard) in map {
            shards.push(shard_path(&index, name, shard)?);
        }
        shards.sort_unstable();
        shards.dedup();
        let mut out = BTreeMap::new();
        for shard in shards {
            out.extend(load_file(&dir.join(shard))?.0);
        }
        for name in map.keys() {
            if !out.contains_key(name) {
                return Err(Error::MissingTensor { name: name.clone(), path: Some(index.clone()) });
            }
        }
        return Ok(out);
    }
    if dir.join("pytorch_model.bin").exists() {
        return Err(Error::checkpoint(
            dir,
            "only safetensors weights are supported; convert pytorch_model.bin with transformers' save_pretrained(safe_serialization=True)",
        ));
    }
    Err(Error::FileNotFound(single))
}

/// A tensor to write: name, shape, little-endian bytes and dtype.
pub struct OutTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

struct View<'a>(&'a OutTensor<'a>);

impl safetensors::View for View<'_> {
    fn dtype(&self) -> Dtype {
        self.0.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.0.data)
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

/// Serialises tensors to `path` atomically.
pub fn save_file(path: &Path, tensors: &[OutTensor<'_>], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let views = tensors.iter().map(|t| (t.name.clone(), View(t)));
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::checkpoint(PathBuf::from(path), format!("cannot serialise ({e})")))?;
    write_atomic(path, &bytes)
}

/// The little-endian bytes of an f32 slice.
pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}
