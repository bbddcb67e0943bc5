//! safetensors files: load (any float dtype converted to the model's, sharded checkpoints
//! through `model.safetensors.index.json`) and save (atomic).

use std::collections::{BTreeMap, HashMap};
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
#[cfg(target_os = "linux")]
use memmap2::UncheckedAdvice;
use safetensors::{Dtype, SafeTensors};

use super::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::kernels::Real;

/// One tensor read from a file, in its stored dtype.
#[derive(Debug)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: TensorBytes,
}

/// The bytes of a tensor: its own buffer, or its range of a memory-mapped file. A mapped
/// tensor gives its pages back to the kernel when dropped, so loading a model holds the
/// parameters plus the tensor being converted, not the whole file besides.
#[derive(Debug)]
pub enum TensorBytes {
    Owned(Vec<u8>),
    Mapped(Arc<Mmap>, Range<usize>),
}

impl Deref for TensorBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            TensorBytes::Owned(v) => v,
            TensorBytes::Mapped(map, range) => &map[range.clone()],
        }
    }
}

impl Drop for TensorBytes {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let TensorBytes::Mapped(map, range) = self {
            // only whole pages inside this tensor's range: no other tensor's bytes live there
            // SAFETY: sysconf has no preconditions
            let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize;
            let (start, end) = (range.start.div_ceil(page) * page, range.end / page * page);
            if start < end {
                // SAFETY: the map is a read-only private file mapping; these pages hold only
                // this tensor's bytes, and nothing borrows them once it is dropped. A later
                // read would fault them in again from the file.
                let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
    }
}

impl RawTensor {
    /// A float32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        RawTensor { dtype: Dtype::F32, shape, data: TensorBytes::Owned(f32_bytes(values)) }
    }

    /// Converts a floating-point tensor to `F` into `out` (F64, F32, F16 and BF16 are accepted;
    /// `out` holds as many elements as the tensor).
    pub fn convert_into<F: Real>(&self, name: &str, out: &mut [F]) -> Result<()> {
        let d: &[u8] = &self.data;
        match self.dtype {
            Dtype::F32 => fill(out, d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)),
            Dtype::F64 => fill(out, d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()))),
            Dtype::F16 => fill(out, d.chunks_exact(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f64())),
            Dtype::BF16 => fill(out, d.chunks_exact(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f64())),
            other => return Err(Error::Input(format!("tensor {name:?} has dtype {other:?}, expected a float dtype"))),
        }
        Ok(())
    }
}

fn fill<F: Real>(out: &mut [F], values: impl Iterator<Item = f64>) {
    for (o, v) in out.iter_mut().zip(values) {
        *o = F::lit(v);
    }
}

/// Reads every tensor of one safetensors file, plus its metadata. The file is memory-mapped:
/// each tensor refers to its bytes in the mapping, nothing is copied.
pub fn load_file(path: &Path) -> Result<(BTreeMap<String, RawTensor>, HashMap<String, String>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: a file changed by another process while mapped would change what we read; the
    // same holds for every mmap-based loader (safetensors' own, transformers'). Read-only.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let base = map.as_ptr() as usize;
    let (views, metadata) = parse(path, &map)?;
    let tensors = views
        .into_iter()
        .map(|(name, dtype, shape, bytes)| {
            let start = bytes.as_ptr() as usize - base;
            let data = TensorBytes::Mapped(Arc::clone(&map), start..start + bytes.len());
            (name, RawTensor { dtype, shape, data })
        })
        .collect();
    Ok((tensors, metadata))
}

/// The tensors and metadata of a safetensors file held in memory (`path` is only used in
/// messages), copied out of `bytes`.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<(BTreeMap<String, RawTensor>, HashMap<String, String>)> {
    let (views, metadata) = parse(path, bytes)?;
    let tensors = views
        .into_iter()
        .map(|(name, dtype, shape, b)| (name, RawTensor { dtype, shape, data: TensorBytes::Owned(b.to_vec()) }))
        .collect();
    Ok((tensors, metadata))
}

type View<'a> = (String, Dtype, Vec<usize>, &'a [u8]);

/// Each tensor's name, dtype, shape and bytes inside `bytes`, and the file's metadata.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Vec<View<'a>>, HashMap<String, String>)> {
    let invalid = |e: safetensors::SafeTensorError| Error::checkpoint(path, format!("not a valid safetensors file ({e})"));
    let st = SafeTensors::deserialize(bytes).map_err(invalid)?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let views = st.iter().map(|(name, v)| (name.to_string(), v.dtype(), v.shape().to_vec(), v.data())).collect();
    Ok((views, metadata))
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

struct OutView<'a>(&'a OutTensor<'a>);

impl safetensors::View for OutView<'_> {
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
    let views = tensors.iter().map(|t| (t.name.clone(), OutView(t)));
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::checkpoint(PathBuf::from(path), format!("cannot serialise ({e})")))?;
    write_atomic(path, &bytes)
}

/// The little-endian bytes of an f32 slice.
pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_tensors_read_back_after_their_neighbours_are_dropped() {
        // sizes that put tensor boundaries inside pages, and one tensor spanning several pages
        let sizes = [3usize, 5000, 1, 2049, 70];
        let values: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(k, &n)| (0..n).map(|i| (k * 10_000 + i) as f32 * 0.5).collect()).collect();
        let bytes: Vec<Vec<u8>> = values.iter().map(|v| f32_bytes(v)).collect();
        let out: Vec<OutTensor<'_>> = bytes
            .iter()
            .enumerate()
            .map(|(k, b)| OutTensor { name: format!("t{k}"), dtype: Dtype::F32, shape: vec![sizes[k]], data: b })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save_file(&path, &out, Some(HashMap::from([("format".to_string(), "pt".to_string())]))).unwrap();

        let (mut tensors, meta) = load_file(&path).unwrap();
        assert_eq!(meta["format"], "pt");
        assert!(tensors.values().all(|t| matches!(t.data, TensorBytes::Mapped(..))));
        // drop every other tensor first, then check the rest byte for byte
        for k in [1, 3] {
            drop(tensors.remove(&format!("t{k}")));
        }
        for k in [0, 2, 4] {
            let t = &tensors[&format!("t{k}")];
            let mut got = vec![0f32; sizes[k]];
            t.convert_into(&format!("t{k}"), &mut got).unwrap();
            assert_eq!(got, values[k]);
        }
        let (owned, _) = parse_bytes(&path, &std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(&*owned["t1"].data, &bytes[1][..]);
    }

    #[test]
    fn conversion_from_half_precision_and_refusal_of_integers() {
        let halfs: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        let t = RawTensor { dtype: Dtype::BF16, shape: vec![2], data: TensorBytes::Owned(halfs) };
        let mut out = [0f64; 2];
        t.convert_into("w", &mut out).unwrap();
        assert_eq!(out, [1.5, -2.0]);
        let ints = RawTensor { dtype: Dtype::I32, shape: vec![1], data: TensorBytes::Owned(vec![0; 4]) };
        let e = ints.convert_into("ids", &mut [0f32; 1]).unwrap_err().to_string();
        assert!(e.contains("\"ids\"") && e.contains("I32"), "{e}");
    }
}
