//! `ferrotune._core.Tokenizer`: thin binding over `crate::tokenizer::Tokenizer`.
//! Argument normalisation lives in python/ferrotune/tokenizer.py; batch work
//! (encode, decode, train, save) runs with the GIL released, through `bindings::detach`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::ndarray::Array2;
use numpy::IntoPyArray;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyList, PyString, PyTuple};

use super::detach;
use super::errors::{PyFerrotuneErr, PyFtResult};
use crate::error::{Error, Result};
use crate::tokenizer::{EncodeOptions, Padding, Side, SpecialToken, Tokenizer};

/// Rows of ids or mask values, one per text.
type IdRows = Vec<Vec<u32>>;

fn ft<T>(r: Result<T>) -> PyResult<T> {
    r.map_err(|e| PyFerrotuneErr::from(e).into())
}

/// (B, T) int64 array from a row-major buffer.
fn array2<'py>(py: Python<'py>, rows: usize, cols: usize, data: Vec<i64>) -> PyResult<Bound<'py, PyAny>> {
    let arr = Array2::from_shape_vec((rows, cols), data)
        .map_err(|e| PyFerrotuneErr::from(Error::Input(e.to_string())))?;
    Ok(arr.into_pyarray(py).into_any())
}

/// Pulls texts from a Python iterable in chunks, taking the GIL only for that,
/// so the trainer can run with the GIL released. Items may be strings or
/// lists/tuples of strings (batches, as transformers' examples pass them).
struct PyTexts {
    iter: Py<PyIterator>,
    buf: VecDeque<String>,
    done: bool,
    err: Arc<Mutex<Option<PyErr>>>,
}

impl PyTexts {
    const CHUNK: usize = 256;

    fn fill(&mut self, py: Python<'_>) -> PyResult<()> {
        let mut it = self.iter.bind(py).clone();
        while self.buf.len() < Self::CHUNK {
            let Some(item) = it.next() else {
                self.done = true;
                return Ok(());
            };
            let item = item?;
            if let Ok(s) = item.cast::<PyString>() {
                self.buf.push_back(s.to_cow()?.into_owned());
            } else if item.is_instance_of::<PyList>() || item.is_instance_of::<PyTuple>() {
                for x in item.try_iter()? {
                    let x = x?;
                    let s = x.cast::<PyString>().map_err(|_| {
                        PyTypeError::new_err(format!(
                            "training texts must be str or lists of str, got a list holding {}",
                            x.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                        ))
                    })?;
                    self.buf.push_back(s.to_cow()?.into_owned());
                }
            } else {
                return Err(PyTypeError::new_err(format!(
                    "training texts must be str or lists of str, got {}",
                    item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

impl Iterator for PyTexts {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.buf.is_empty() && !self.done {
            Python::attach(|py| {
                if let Err(e) = self.fill(py) {
                    self.done = true;
                    *self.err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            });
        }
        self.buf.pop_front()
    }
}

/// Runs `train` on the texts of `texts` with the GIL released; a Python error
/// raised by the iterable wins over whatever training made of the partial corpus.
fn train_from_py<F>(py: Python<'_>, texts: &Bound<'_, PyAny>, train: F) -> PyResult<Tokenizer>
where
    F: FnOnce(PyTexts) -> Result<Tokenizer> + Send,
{
    let err = Arc::new(Mutex::new(None));
    let source = PyTexts { iter: texts.try_iter()?.unbind(), buf: VecDeque::new(), done: false, err: err.clone() };
    let result = detach(py, move || Ok(train(source)?));
    if let Some(e) = err.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    result
}

fn special_kind(kind: &str) -> PyResult<SpecialToken> {
    ft(kind.parse())
}

#[pyclass(name = "Tokenizer", module = "ferrotune._core")]
pub struct PyTokenizer {
    pub inner: Tokenizer,
}

impl PyTokenizer {
    fn options(
        add_special_tokens: bool,
        padding: &str,
        truncation: bool,
        max_length: Option<usize>,
        pad_to_multiple_of: Option<usize>,
        offsets: bool,
    ) -> PyResult<EncodeOptions> {
        Ok(EncodeOptions {
            add_special_tokens,
            padding: ft(padding.parse::<Padding>())?,
            truncation,
            max_length,
            pad_to_multiple_of,
            offsets,
        })
    }
}

#[pymethods]
impl PyTokenizer {
    /// Loads tokenizer.json (or vocab.json + merges.txt) and the config files.
    #[staticmethod]
    fn from_pretrained(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = detach(py, || Ok(Tokenizer::from_pretrained(&path)?))?;
        Ok(PyTokenizer { inner })
    }

    /// A new GPT-2-style byte-level BPE trained on an iterable of texts.
    #[staticmethod]
    #[pyo3(signature = (texts, vocab_size, min_frequency=0, special_tokens=None))]
    fn train_new_bpe(
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        vocab_size: usize,
        min_frequency: u64,
        special_tokens: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let inner = train_from_py(py, texts, move |src| {
            Tokenizer::train_new_bpe(src, vocab_size, min_frequency, special_tokens)
        })?;
        Ok(PyTokenizer { inner })
    }

    /// A new tokenizer with this one's pipeline and special tokens, retrained.
    #[pyo3(signature = (texts, vocab_size, min_frequency=0, new_special_tokens=None))]
    fn train_new_from_iterator(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        vocab_size: usize,
        min_frequency: u64,
        new_special_tokens: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let this = &self.inner;
        let new = new_special_tokens.unwrap_or_default();
        let inner = train_from_py(py, texts, move |src| {
            this.train_new_from_iterator(src, vocab_size, min_frequency, &new)
        })?;
        Ok(PyTokenizer { inner })
    }

    /// Pickle support: (tokenizer.json text, tokenizer_config.json text).
    fn to_state(&self) -> PyFtResult<(String, String)> {
        Ok(self.inner.to_state()?)
    }

    #[staticmethod]
    fn from_state(tokenizer_json: &str, config_json: &str) -> PyFtResult<Self> {
        Ok(PyTokenizer { inner: Tokenizer::from_state(tokenizer_json, config_json)? })
    }

    /// The backend's tokenizer.json text.
    #[pyo3(signature = (pretty=false))]
    fn to_str(&self, pretty: bool) -> PyFtResult<String> {
        Ok(self.inner.to_tokenizer_json(pretty)?)
    }

    // ---- encoding ----

    /// (input_ids, attention_mask, offsets) as lists of lists (rows differ in length when not
    /// padded); offsets, each token's (start, end) characters, only with `return_offsets`.
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    #[pyo3(signature = (texts, add_special_tokens=true, padding="do_not_pad", truncation=false, max_length=None, pad_to_multiple_of=None, return_offsets=false))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
        padding: &str,
        truncation: bool,
        max_length: Option<usize>,
        pad_to_multiple_of: Option<usize>,
        return_offsets: bool,
    ) -> PyResult<(IdRows, IdRows, Option<Vec<Vec<(usize, usize)>>>)> {
        let opts = Self::options(add_special_tokens, padding, truncation, max_length, pad_to_multiple_of, return_offsets)?;
        let batch = detach(py, || Ok(self.inner.encode_batch(&texts, &opts)?))?;
        Ok((batch.input_ids, batch.attention_mask, return_offsets.then_some(batch.offsets)))
    }

    /// (input_ids, attention_mask) as (B, T) int64 arrays; rows must come out equal in length.
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    #[pyo3(signature = (texts, add_special_tokens=true, padding="do_not_pad", truncation=false, max_length=None, pad_to_multiple_of=None))]
    fn encode_batch_np<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        add_special_tokens: bool,
        padding: &str,
        truncation: bool,
        max_length: Option<usize>,
        pad_to_multiple_of: Option<usize>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let opts = Self::options(add_special_tokens, padding, truncation, max_length, pad_to_multiple_of, false)?;
        let rect = detach(py, || Ok(self.inner.encode_batch(&texts, &opts)?.to_rect()?))?;
        Ok((
            array2(py, rect.batch, rect.seq_len, rect.input_ids)?,
            array2(py, rect.batch, rect.seq_len, rect.attention_mask)?,
        ))
    }

    #[pyo3(signature = (text, add_special_tokens=true))]
    fn encode(&self, text: &str, add_special_tokens: bool) -> PyFtResult<Vec<u32>> {
        Ok(self.inner.encode(text, add_special_tokens)?)
    }

    #[pyo3(signature = (text, add_special_tokens=false))]
    fn tokenize(&self, text: &str, add_special_tokens: bool) -> PyFtResult<Vec<String>> {
        Ok(self.inner.tokenize(text, add_special_tokens)?)
    }

    /// Pads feature columns (input_ids with the pad id, attention_mask 0,
    /// labels -100, ...); returns {name: (B, T) int64 array} or {name: rows}.
    #[pyo3(signature = (columns, padding="longest", max_length=None, pad_to_multiple_of=None, return_np=true))]
    fn pad<'py>(
        &self,
        py: Python<'py>,
        columns: Vec<(String, Vec<Vec<i64>>)>,
        padding: &str,
        max_length: Option<usize>,
        pad_to_multiple_of: Option<usize>,
        return_np: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let padding = ft(padding.parse::<Padding>())?;
        let cols = ft(self.inner.pad_columns(columns, padding, max_length, pad_to_multiple_of))?;
        let out = PyDict::new(py);
        for (name, rows) in cols {
            if return_np {
                let t = ft(crate::tokenizer::rect_len(rows.iter().map(Vec::len)))?;
                let b = rows.len();
                out.set_item(&name, array2(py, b, t, rows.into_iter().flatten().collect())?)?;
            } else {
                out.set_item(&name, rows)?;
            }
        }
        Ok(out)
    }

    // ---- decoding ----

    #[pyo3(signature = (ids, skip_special_tokens=false, clean_up_tokenization_spaces=None))]
    fn decode(
        &self,
        ids: Vec<i64>,
        skip_special_tokens: bool,
        clean_up_tokenization_spaces: Option<bool>,
    ) -> PyFtResult<String> {
        Ok(self.inner.decode(&ids, skip_special_tokens, clean_up_tokenization_spaces)?)
    }

    #[pyo3(signature = (sequences, skip_special_tokens=false, clean_up_tokenization_spaces=None))]
    fn decode_batch(
        &self,
        py: Python<'_>,
        sequences: Vec<Vec<i64>>,
        skip_special_tokens: bool,
        clean_up_tokenization_spaces: Option<bool>,
    ) -> PyResult<Vec<String>> {
        detach(py, || {
            Ok(self.inner.decode_batch(&sequences, skip_special_tokens, clean_up_tokenization_spaces)?)
        })
    }

    // ---- vocabulary ----

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: i64) -> Option<String> {
        self.inner.id_to_token(id)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[pyo3(signature = (with_added_tokens=true))]
    fn get_vocab(&self, with_added_tokens: bool) -> HashMap<String, u32> {
        self.inner.get_vocab(with_added_tokens)
    }

    /// [(id, content, special)] of the added tokens, by id.
    fn added_tokens(&self) -> Vec<(u32, String, bool)> {
        self.inner.added_tokens().into_iter().map(|(id, t)| (id, t.content, t.special)).collect()
    }

    /// Adds tokens; returns how many were new.
    #[pyo3(signature = (tokens, special=false))]
    fn add_tokens(&mut self, tokens: Vec<String>, special: bool) -> PyFtResult<usize> {
        Ok(self.inner.add_tokens(&tokens, special)?)
    }

    /// Adds to additional_special_tokens; returns how many were new to the vocabulary.
    fn add_additional_special_tokens(&mut self, tokens: Vec<String>) -> PyFtResult<usize> {
        Ok(self.inner.add_additional_special_tokens(&tokens)?)
    }

    // ---- special tokens ----

    /// kind: "bos", "eos", "unk" or "pad".
    fn special_token(&self, kind: &str) -> PyResult<Option<String>> {
        Ok(self.inner.special_token(special_kind(kind)?).map(str::to_string))
    }

    fn special_token_id(&self, kind: &str) -> PyResult<Option<u32>> {
        Ok(self.inner.special_token_id(special_kind(kind)?))
    }

    /// Returns True when the token was new and got added to the vocabulary.
    #[pyo3(signature = (kind, token))]
    fn set_special_token(&mut self, kind: &str, token: Option<String>) -> PyResult<bool> {
        let kind = special_kind(kind)?;
        ft(self.inner.set_special_token(kind, token))
    }

    #[pyo3(signature = (kind, id))]
    fn set_special_token_id(&mut self, kind: &str, id: Option<i64>) -> PyResult<()> {
        let kind = special_kind(kind)?;
        ft(self.inner.set_special_token_id(kind, id))
    }

    #[getter]
    fn additional_special_tokens(&self) -> Vec<String> {
        self.inner.additional_special_tokens().to_vec()
    }

    #[getter]
    fn all_special_tokens(&self) -> Vec<String> {
        self.inner.all_special_tokens()
    }

    // ---- settings ----

    #[getter]
    fn get_padding_side(&self) -> &'static str {
        self.inner.padding_side().as_str()
    }

    #[setter]
    fn set_padding_side(&mut self, side: &str) -> PyFtResult<()> {
        self.inner.set_padding_side(Side::parse(side, "padding_side")?);
        Ok(())
    }

    #[getter]
    fn get_truncation_side(&self) -> &'static str {
        self.inner.truncation_side().as_str()
    }

    #[setter]
    fn set_truncation_side(&mut self, side: &str) -> PyFtResult<()> {
        self.inner.set_truncation_side(Side::parse(side, "truncation_side")?);
        Ok(())
    }

    /// None means no limit.
    #[getter]
    fn get_model_max_length(&self) -> Option<usize> {
        self.inner.model_max_length()
    }

    #[setter]
    fn set_model_max_length(&mut self, n: Option<usize>) {
        self.inner.set_model_max_length(n)
    }

    #[getter]
    fn get_clean_up_tokenization_spaces(&self) -> bool {
        self.inner.clean_up_tokenization_spaces()
    }

    #[setter]
    fn set_clean_up_tokenization_spaces(&mut self, v: bool) {
        self.inner.set_clean_up_tokenization_spaces(v)
    }

    #[getter]
    fn get_name_or_path(&self) -> String {
        self.inner.name_or_path().to_string()
    }

    #[setter]
    fn set_name_or_path(&mut self, name: String) {
        self.inner.set_name_or_path(name)
    }

    #[getter]
    fn tokenizer_class(&self) -> Option<String> {
        self.inner.tokenizer_class().map(str::to_string)
    }

    // ---- saving ----

    /// Writes the tokenizer files into `directory`; returns their paths.
    fn save_pretrained(&self, py: Python<'_>, directory: PathBuf) -> PyResult<Vec<String>> {
        let paths = detach(py, || Ok(self.inner.save_pretrained(&directory)?))?;
        Ok(paths.into_iter().map(|p| p.display().to_string()).collect())
    }
}
