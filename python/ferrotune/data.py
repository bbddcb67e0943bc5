"""Datasets and batches for causal-LM fine-tuning.

Accepted training/evaluation data (each row a dict):

- ``{"text": str}``: tokenized with the tokenizer (``processing_class``), truncated to
  ``max_length``, the tokenizer's EOS token appended (``add_eos_token=True``) so the model
  learns where a text ends; the loss covers every token.
- ``{"prompt": str, "completion": str}``: the loss covers the completion only (TRL's
  completion-only loss): the prompt positions get label ``-100``; the EOS token is appended
  to the completion.
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: a conversation, rendered with the
  tokenizer's chat template (``tokenizer.chat_template``; ``"tools"`` / ``"documents"`` keys
  of the example are passed to it) and truncated to ``max_length``; the loss covers the
  assistant turns only: each assistant reply and the template's end-of-turn token after it
  (ChatML's ``<|im_end|>``). Everything else (system, user and tool turns, the headers that
  open each turn) gets label ``-100``. No EOS is appended: the template's end-of-turn token
  is what ends a reply. How assistant tokens are found is explained in
  :mod:`ferrotune.chat` (``{% generation %}`` blocks when the template has them, otherwise
  prefix-by-prefix rendering, as TRL does).
- ``{"input_ids": [...], "attention_mask": [...] (optional), "labels": [...] (optional)}``:
  already tokenized; used as is (truncated to ``max_length``).

With a tokenizer, a plain string row ``s`` is read as ``{"text": s}`` (``text_field``).

A dataset may be a list of such dicts, a dict of columns (``{"text": [...]}``), a
``datasets.Dataset`` (when that package is installed; it is never required), or any
object with ``__len__`` and ``__getitem__`` returning dicts: these are *map-style* and are
read by index (:class:`IndexedDataset`), never copied.  Anything else that is iterable (a
generator, a ``datasets.IterableDataset``, a reader over a large file) is a *stream*
(:func:`is_iterable_dataset`): read row by row as it is iterated (:func:`iter_examples`),
never measured or indexed; :func:`pack_stream` packs such a stream as it flows.
:func:`load_jsonl` reads a JSON-lines file into a list of dicts.

:class:`DataCollatorForLanguageModeling` pads a list of examples into a batch (numpy
``int64`` arrays ``input_ids``, ``attention_mask``, ``labels``).  Labels are ``-100`` on
padding — decided from the attention mask, never from the token id, so an EOS token that
ends an example keeps its label even when the pad token *is* the EOS token (with
transformers' collator, which masks every ``pad_token_id``, such a model never learns to
stop).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._core import DataError, InputError

__all__ = [
    "IGNORE_INDEX",
    "load_jsonl",
    "as_examples",
    "is_iterable_dataset",
    "iter_examples",
    "IndexedDataset",
    "tokenize_example",
    "classification_example",
    "prepare_dataset",
    "pack_examples",
    "pack_stream",
    "DataCollatorForLanguageModeling",
    "DataCollatorWithPadding",
    "example_length",
    "prepare_classification_dataset",
]

IGNORE_INDEX = -100
"""Label value of a position that does not count in the loss."""

Feature = Dict[str, Any]


def load_jsonl(path: Union[str, os.PathLike], encoding: str = "utf-8") -> List[Dict[str, Any]]:
    """Read a JSON-lines file (one JSON object per line; blank lines skipped) into a list of dicts.

    Raises FileNotFoundError naming the path when it is missing, and
    :class:`ferrotune.DataError` naming the line when a line is not a JSON object.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, f"No such file or directory: {path}", path)
    rows: List[Dict[str, Any]] = []
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def is_iterable_dataset(dataset: Any) -> bool:
    """True for a stream: an iterable without ``__len__`` and ``__getitem__`` (a generator, a
    ``datasets.IterableDataset``, a file reader). A stream is read as it is iterated, never
    indexed or measured; a dict of columns, a list or a ``datasets.Dataset`` is map-style."""
    if isinstance(dataset, (Mapping, str, bytes)):
        return False
    return isinstance(dataset, Iterable) and not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"))


def _as_row(row: Any, index: int, text_field: Optional[str]) -> Dict[str, Any]:
    """One example as a dict: a plain string ``s`` becomes ``{text_field: s}`` when ``text_field`` is given."""
    if isinstance(row, str) and text_field is not None:
        return {text_field: row}
    if not isinstance(row, Mapping):
        raise DataError(
            f"example {index} is a {type(row).__name__}, expected a dict with 'text', 'prompt' + 'completion', "
            "'messages' or 'input_ids' (plain strings are read as 'text' when a tokenizer "
            "(processing_class) is given)"
        )
    return dict(row)


class IndexedDataset:
    """A map-style dataset read by index: ``view[i]`` reads ``dataset[i]`` (row ``i`` of each
    column for a dict of columns), makes it a dict (see :func:`as_examples`) and, with
    ``featurize``, returns ``featurize(row, i)`` (e.g. the tokenized example). Nothing is
    copied or kept, except the example lengths once :meth:`lengths` has been asked for."""

    def __init__(
        self,
        dataset: Any,
        text_field: Optional[str] = None,
        featurize: Optional[Callable[[Dict[str, Any], int], Feature]] = None,
    ) -> None:
        if isinstance(dataset, Mapping):
            sizes = {k: len(v) for k, v in dataset.items()}
            if len(set(sizes.values())) > 1:
                raise DataError(f"dataset columns have different lengths: {sizes}")
            self._n = next(iter(sizes.values()), 0)
        elif hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
            self._n = len(dataset)
        else:
            raise DataError(f"cannot index examples of a {type(dataset).__name__} (it has no __len__ and __getitem__)")
        self._dataset = dataset
        self._text_field = text_field
        self._featurize = featurize
        self._lengths: Optional[List[int]] = None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if not 0 <= i < self._n:
            raise IndexError(f"example {i} is out of range for a dataset of {self._n}")
        ds = self._dataset
        raw = {k: col[i] for k, col in ds.items()} if isinstance(ds, Mapping) else ds[i]
        row = _as_row(raw, i, self._text_field)
        return row if self._featurize is None else self._featurize(row, i)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return (self[i] for i in range(self._n))

    def lengths(self) -> List[int]:
        """The token count of every example (:func:`example_length`), computed once."""
        if self._lengths is None:
            self._lengths = [example_length(f) for f in self]
        return self._lengths


def iter_examples(dataset: Any, text_field: Optional[str] = None) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(index, example dict)`` pairs of any dataset, one at a time: a stream is iterated (once),
    a map-style dataset read by index. Rows are made dicts as in :func:`as_examples`."""
    if dataset is None:
        raise DataError("no dataset was given")
    if is_iterable_dataset(dataset):
        return ((i, _as_row(row, i, text_field)) for i, row in enumerate(dataset))
    if isinstance(dataset, Mapping) or (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        return enumerate(IndexedDataset(dataset, text_field))
    raise DataError(f"cannot read examples from a {type(dataset).__name__}")


def as_examples(dataset: Any, text_field: Optional[str] = None) -> List[Dict[str, Any]]:
    """Turn a dataset (list of dicts, dict of columns, ``datasets.Dataset``, indexable, iterable)
    into a list of dicts. With ``text_field``, a plain string row ``s`` becomes ``{text_field: s}``;
    otherwise a row that is not a dict raises DataError naming the accepted keys."""
    return [row for _, row in iter_examples(dataset, text_field)]


def _encode(tokenizer: Any, text: str, add_special_tokens: bool = True) -> List[int]:
    try:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except TypeError:
        ids = tokenizer.encode(text)
    ids = getattr(ids, "ids", ids)
    return [int(i) for i in ids]


def _token_list(value: Any, name: str, index: Optional[int]) -> List[int]:
    where = "" if index is None else f"example {index}: "
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise DataError(f"{where}{name} must be a 1-D list of token ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"{where}{name} must contain integers, got dtype {arr.dtype}")
    return [int(x) for x in arr.tolist()]


def _eos_id(tokenizer: Any) -> Optional[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return None if eos is None else int(eos)


def tokenize_example(
    example: Mapping[str, Any],
    tokenizer: Any = None,
    max_length: Optional[int] = None,
    *,
    text_field: str = "text",
    add_eos_token: bool = True,
    label_key: str = "labels",
    index: Optional[int] = None,
) -> Feature:
    """Turn one example (see the module docs for the formats) into ``input_ids``/``attention_mask``
    (+ ``labels`` when some positions must not count), truncated to ``max_length``."""
    where = "" if index is None else f"example {index}: "
    if "input_ids" in example:
        ids = _token_list(example["input_ids"], "input_ids", index)
        mask = (
            _token_list(example["attention_mask"], "attention_mask", index)
            if example.get("attention_mask") is not None
            else [1] * len(ids)
        )
        if len(mask) != len(ids):
            raise DataError(f"{where}attention_mask has {len(mask)} entries but input_ids has {len(ids)}")
        feat: Feature = {"input_ids": ids, "attention_mask": mask}
        if example.get(label_key) is not None:
            labels = _token_list(example[label_key], label_key, index)
            if len(labels) != len(ids):
                raise DataError(f"{where}{label_key} has {len(labels)} entries but input_ids has {len(ids)}")
            feat["labels"] = labels
    elif "prompt" in example and "completion" in example:
        if tokenizer is None:
            raise DataError(f"{where}prompt/completion examples need a tokenizer (processing_class)")
        prompt, completion = example["prompt"], example["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DataError(f"{where}prompt and completion must be strings")
        p = _encode(tokenizer, prompt, add_special_tokens=True)
        c = _encode(tokenizer, completion, add_special_tokens=False)
        eos = _eos_id(tokenizer)
        if add_eos_token and eos is not None and (not c or c[-1] != eos):
            c = c + [eos]
        ids = p + c
        feat = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(p) + c}
    elif "messages" in example:
        feat = _chat_features(example, tokenizer, where)
    elif text_field in example:
        if tokenizer is None:
            raise DataError(f"{where}{text_field!r} examples need a tokenizer (processing_class)")
        text = example[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}{text_field!r} must be a string, got {type(text).__name__}")
        ids = _encode(tokenizer, text, add_special_tokens=True)
        eos = _eos_id(tokenizer)
        if add_eos_token and eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]  # cut off again below when the text is truncated: it did not end there
        feat = {"input_ids": ids, "attention_mask": [1] * len(ids)}
    else:
        raise DataError(
            f"{where}unrecognised example with keys {sorted(example)}: expected {text_field!r}, "
            "'prompt' + 'completion', 'messages', or 'input_ids'"
        )
    if max_length is not None and len(feat["input_ids"]) > max_length:
        feat = {k: v[:max_length] for k, v in feat.items()}
    if not feat["input_ids"]:
        raise DataError(f"{where}the example has no tokens")
    return feat


def _chat_features(example: Mapping[str, Any], tokenizer: Any, where: str) -> Feature:
    """input_ids / attention_mask / labels of a ``{"messages": [...]}`` example: labels only on
    assistant tokens (see :func:`ferrotune.chat.encode_chat_for_training`)."""
    from .chat import ChatTemplateError, encode_chat_for_training

    if tokenizer is None:
        raise DataError(f"{where}'messages' examples need a tokenizer with a chat template (processing_class)")
    messages = example["messages"]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}'messages' must be a non-empty list of {{'role', 'content'}} dicts")
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise DataError(f"{where}message {j} must be a dict with 'role' and 'content', got {type(m).__name__}")
        if not isinstance(m.get("role"), str):
            raise DataError(f"{where}message {j} has no 'role' (a str), keys {sorted(m)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}the conversation has no assistant message: nothing to train on")
    try:
        ids, mask = encode_chat_for_training(
            tokenizer,
            [dict(m) for m in messages],
            tools=example.get("tools"),
            documents=example.get("documents"),
            where=where,
        )
    except ChatTemplateError as e:
        raise ChatTemplateError(f"{where}{e}") from e
    except InputError as e:
        raise DataError(f"{where}{e}") from e
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def pack_examples(features: Sequence[Mapping[str, Any]], max_length: int, eos_token_id: Optional[int] = None) -> List[Feature]:
    """Concatenate examples (EOS-separated) and cut the stream into blocks of ``max_length`` tokens.

    Padding positions (attention_mask 0) are dropped first; each example keeps its labels
    (``-100`` prompt positions stay ``-100``); when an example does not already end with
    ``eos_token_id`` one is appended, with itself as label.  The last block may be shorter.
    Attention is not blocked between packed examples (the classic ``run_clm`` grouping).
    """
    return list(pack_stream(features, max_length, eos_token_id))


def pack_stream(
    features: Iterable[Mapping[str, Any]], max_length: int, eos_token_id: Optional[int] = None
) -> Iterator[Feature]:
    """:func:`pack_examples` as the examples flow: each block is yielded as soon as it is full,
    so only one block's worth of tokens (plus the example being read) is held."""
    if max_length < 2:
        raise DataError(f"packing needs max_length >= 2, got {max_length}")
    return _pack(features, max_length, eos_token_id)


def _pack(features: Iterable[Mapping[str, Any]], max_length: int, eos_token_id: Optional[int]) -> Iterator[Feature]:
    ids: List[int] = []
    labels: List[int] = []
    for f in features:
        f_ids = list(f["input_ids"])
        mask = list(f.get("attention_mask") or [1] * len(f_ids))
        f_labels = list(f["labels"]) if f.get("labels") is not None else list(f_ids)
        keep = [i for i, m in enumerate(mask) if m]
        f_ids = [f_ids[i] for i in keep]
        f_labels = [f_labels[i] for i in keep]
        if eos_token_id is not None and (not f_ids or f_ids[-1] != eos_token_id):
            f_ids.append(eos_token_id)
            f_labels.append(eos_token_id)
        ids += f_ids
        labels += f_labels
        while len(ids) >= max_length:
            yield {"input_ids": ids[:max_length], "attention_mask": [1] * max_length, "labels": labels[:max_length]}
            del ids[:max_length], labels[:max_length]
    if ids:
        yield {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def prepare_dataset(
    dataset: Any,
    tokenizer: Any = None,
    max_length: Optional[int] = None,
    *,
    text_field: str = "text",
    add_eos_token: bool = True,
    packing: bool = False,
    label_key: str = "labels",
) -> List[Feature]:
    """Tokenize every example of ``dataset`` (see the module docs), optionally packing them."""
    feats = [
        tokenize_example(
            r, tokenizer, max_length, text_field=text_field, add_eos_token=add_eos_token, label_key=label_key, index=i
        )
        for i, r in iter_examples(dataset, text_field if tokenizer is not None else None)
    ]
    if packing:
        if max_length is None:
            raise DataError("packing needs max_length")
        feats = pack_examples(feats, max_length, _eos_id(tokenizer) if tokenizer is not None else None)
    return feats


def example_length(feature: Mapping[str, Any]) -> int:
    """Number of tokens of an example (for ``group_by_length``)."""
    return len(feature["input_ids"])


def _check_not_empty(features: Sequence[Mapping[str, Any]]) -> None:
    """The collators' check: a batch needs at least one example."""
    if len(features) == 0:
        raise DataError("cannot collate an empty list of examples")


class DataCollatorForLanguageModeling:
    """Pad examples into a causal-LM batch, like transformers' collator with ``mlm=False``.

    Args:
        tokenizer: supplies ``pad_token_id`` (else ``eos_token_id``) and ``padding_side``; optional.
        mlm: must be False (masked-LM training is not supported).
        pad_to_multiple_of: round the padded length up to a multiple of this.
        return_tensors: only ``"np"``.
        pad_token_id: overrides the tokenizer's pad id (the value does not change the loss:
            padding has attention_mask 0 and label -100).
        max_length: truncate longer examples to this many tokens.
        padding_side: ``"right"`` (default) or ``"left"``; None uses the tokenizer's.

    ``collator(features)`` takes a list of dicts with ``input_ids`` and optionally
    ``attention_mask`` and ``labels`` and returns ``int64`` arrays ``input_ids``,
    ``attention_mask``, ``labels`` of shape (B, T).  An example without ``labels`` gets
    ``labels = input_ids`` where its attention mask is 1 and ``-100`` elsewhere, so a final
    EOS keeps its label even when the pad token is the EOS token.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        mlm: bool = False,
        mlm_probability: float = 0.15,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: str = "np",
        *,
        pad_token_id: Optional[int] = None,
        max_length: Optional[int] = None,
        padding_side: Optional[str] = "right",
    ) -> None:
        if mlm:
            from ._core import ConfigError

            raise ConfigError("masked language modeling (mlm=True) is not supported: ferrotune trains causal LMs")
        if return_tensors != "np":
            from ._core import ConfigError

            raise ConfigError(f"return_tensors={return_tensors!r} is not supported; use 'np'")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise DataError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.tokenizer = tokenizer
        self.mlm = False
        self.mlm_probability = mlm_probability
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors
        self.max_length = max_length
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
            if pad_token_id is None:
                pad_token_id = getattr(tokenizer, "eos_token_id", None)
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0
        if padding_side is None:
            padding_side = getattr(tokenizer, "padding_side", "right") if tokenizer is not None else "right"
        if padding_side not in ("right", "left"):
            raise DataError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.padding_side = padding_side

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Dict[str, np.ndarray]:
        _check_not_empty(features)
        rows = []
        for i, f in enumerate(features):
            if "input_ids" not in f:
                raise DataError(
                    f"example {i} has no input_ids (keys {sorted(f)}); tokenize it first or let the Trainer do it"
                )
            ids = _token_list(f["input_ids"], "input_ids", i)
            mask = (
                _token_list(f["attention_mask"], "attention_mask", i)
                if f.get("attention_mask") is not None
                else [1] * len(ids)
            )
            if f.get("labels") is not None:
                labels = _token_list(f["labels"], "labels", i)
            else:
                labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
            if not (len(ids) == len(mask) == len(labels)):
                raise DataError(
                    f"example {i}: input_ids, attention_mask and labels have lengths "
                    f"{len(ids)}, {len(mask)}, {len(labels)}"
                )
            if self.max_length is not None and len(ids) > self.max_length:
                ids, mask, labels = ids[: self.max_length], mask[: self.max_length], labels[: self.max_length]
            rows.append((ids, mask, labels))
        T = max(len(r[0]) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            T = ((T + m - 1) // m) * m
        B = len(rows)
        input_ids = np.full((B, T), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((B, T), dtype=np.int64)
        labels_arr = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
        for b, (ids, mask, labels) in enumerate(rows):
            n = len(ids)
            sl = slice(0, n) if self.padding_side == "right" else slice(T - n, T)
            input_ids[b, sl] = ids
            attention_mask[b, sl] = mask
            labels_arr[b, sl] = labels
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels_arr}


def classification_example(
    example: Mapping[str, Any],
    tokenizer: Any = None,
    max_length: Optional[int] = None,
    *,
    text_field: str = "text",
    index: Optional[int] = None,
) -> Feature:
    """One example for a sequence-classification model: ``input_ids`` (or ``text_field``,
    tokenized with ``tokenizer``, truncated to ``max_length``) and its class in ``label`` or
    ``labels`` (an int; -100 to ignore)."""
    where = "the example" if index is None else f"example {index}"
    label = example.get("labels", example.get("label"))
    if label is None or isinstance(label, (list, tuple)) or not float(label).is_integer():
        raise DataError(f"{where}: a classification example needs an integer 'label' (got {label!r})")
    if "input_ids" in example:
        ids = [int(x) for x in example["input_ids"]]
    elif text_field in example:
        if tokenizer is None:
            raise DataError(f"{where} has {text_field!r} but no tokenizer (processing_class) was given")
        ids = list(tokenizer(example[text_field], truncation=max_length is not None, max_length=max_length)["input_ids"])
    else:
        raise DataError(f"{where} has neither 'input_ids' nor {text_field!r}")
    if max_length is not None:
        ids = ids[:max_length]
    if not ids:
        raise DataError(f"{where} is empty")
    return {"input_ids": ids, "labels": int(label)}


def prepare_classification_dataset(
    dataset: Any, tokenizer: Any = None, max_length: Optional[int] = None, *, text_field: str = "text"
) -> List[Feature]:
    """:func:`classification_example` of every example of ``dataset``."""
    return [
        classification_example(r, tokenizer, max_length, text_field=text_field, index=i)
        for i, r in iter_examples(dataset, text_field if tokenizer is not None else None)
    ]


class DataCollatorWithPadding:
    """Pads classification examples: ``input_ids``/``attention_mask`` (B, T) int64 padded
    with ``pad_token_id`` on ``padding_side``, and ``labels`` (B,) one class per example."""

    def __init__(self, tokenizer: Any = None, *, pad_token_id: Optional[int] = None, padding_side: Optional[str] = "right") -> None:
        pad = pad_token_id if pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            from ._core import ConfigError

            raise ConfigError("padding classification examples needs a pad_token_id (tokenizer.pad_token or the model config)")
        self.pad_token_id = int(pad)
        self.padding_side = padding_side or getattr(tokenizer, "padding_side", "right")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Dict[str, np.ndarray]:
        _check_not_empty(features)
        longest = max(len(f["input_ids"]) for f in features)
        ids = np.full((len(features), longest), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(features), longest), dtype=np.int64)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            cols = slice(longest - n, longest) if self.padding_side == "left" else slice(0, n)
            ids[row, cols] = f["input_ids"]
            mask[row, cols] = 1
        labels = np.array([int(f["labels"]) for f in features], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
