"""A tokenizer with the ``transformers`` API over the Rust core.

``Tokenizer`` holds a ``ferrotune._core.Tokenizer`` (``self._core``); this module
only normalises arguments. Encoding, padding, truncation, decoding, training and
saving happen in Rust, with the GIL released for batch work.

    tok = Tokenizer.from_pretrained("path/to/gpt2")
    tok.pad_token = tok.eos_token
    batch = tok(["hello", "a longer text"], padding=True, return_tensors="np")
    batch.input_ids.shape   # (2, T), int64

Chat models: ``tok.apply_chat_template(messages, add_generation_prompt=True)`` renders the
tokenizer's ``chat_template`` (from tokenizer_config.json, chat_template.jinja, or set by
assignment) as transformers does; see :mod:`ferrotune.chat`.
"""

from __future__ import annotations

import json
import operator
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional, Union

import numpy as np

from . import _core, hub
from ._core import DataError, InputError
from .io import atomic_directory

#: transformers' ``model_max_length`` for "no limit".
VERY_LARGE_INTEGER = int(1e30)

#: Feature names ``Tokenizer.pad`` pads (with the pad id, 0, -100, 0, 1).
PAD_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "special_tokens_mask")

_IGNORED_LOAD_KWARGS = frozenset({"use_fast", "trust_remote_code"})
_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_UNSET: Any = object()  # chat template not read from the core's config yet
_SETTING_KWARGS = frozenset(
    {"padding_side", "truncation_side", "model_max_length", "clean_up_tokenization_spaces"}
)
_SPECIAL_KINDS = ("bos", "eos", "unk", "pad")

TextInput = str
PathLike = Union[str, "os.PathLike[str]"]


class BatchEncoding(dict):  # type: ignore[type-arg]
    """The model inputs of a tokenizer call: a dict with attribute access
    (``batch.input_ids``), like transformers' ``BatchEncoding``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getstate__(self) -> dict[str, Any]:
        return dict(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state)

    @property
    def data(self) -> dict[str, Any]:
        return dict(self)


def _padding_strategy(padding: Union[bool, str, None]) -> str:
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding is None or padding == "do_not_pad":
        return "do_not_pad"
    if padding == "max_length":
        return "max_length"
    raise InputError(
        f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}"
    )


def _truncation_flag(truncation: Union[bool, str, None], max_length: Optional[int], padding: str) -> bool:
    if truncation is None:
        # transformers: a max_length without padding means truncation
        return max_length is not None and padding == "do_not_pad"
    if truncation is True or truncation in ("longest_first", "only_first"):
        return True
    if truncation is False or truncation == "do_not_truncate":
        return False
    raise InputError(
        f"truncation must be True, False, 'longest_first', 'only_first' or 'do_not_truncate', got {truncation!r}"
    )


def _return_np(return_tensors: Optional[str]) -> bool:
    if return_tensors is None:
        return False
    if return_tensors == "np":
        return True
    raise InputError(
        f"return_tensors={return_tensors!r} is not supported: ferrotune has no PyTorch or "
        "TensorFlow; use return_tensors='np' or None"
    )


def _opt_index(value: Optional[int], name: str) -> Optional[int]:
    if value is None:
        return None
    v = operator.index(value)
    if v < 0:
        raise InputError(f"{name} must be non-negative, got {v}")
    return v


def _ids_list(ids: Any) -> list[int]:
    """A flat list of ints from a list / tuple / 1-D array / single int."""
    if isinstance(ids, np.ndarray):
        if ids.ndim > 1:
            raise InputError(f"expected a 1-D sequence of token ids, got an array of shape {ids.shape}")
        if ids.dtype.kind not in "iub":
            raise InputError(f"token ids must be integers, got dtype {ids.dtype}")
        return [int(i) for i in ids.reshape(-1).tolist()]
    if isinstance(ids, (int, np.integer)):
        return [operator.index(ids)]
    return [operator.index(i) for i in ids]


def _rows(values: Any, name: str) -> list[list[int]]:
    """A list of int rows from a 2-D array or a sequence of sequences."""
    if isinstance(values, np.ndarray):
        if values.ndim != 2:
            raise InputError(f"{name} must be 2-D, got an array of shape {values.shape}")
        return values.tolist()  # type: ignore[no-any-return]
    return [_ids_list(r) for r in values]


def _token_str(value: Any, name: str) -> Optional[str]:
    if value is None:
        return None
    content = getattr(value, "content", value)  # transformers' AddedToken
    if not isinstance(content, str):
        raise InputError(f"{name} must be a str or None, got {type(value).__name__}")
    return content


class _HybridMethod:
    """A method callable on the class and on an instance: the function gets
    ``(cls, instance_or_None, ...)``."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, cls: type) -> Callable[..., Tokenizer]:
        func = self.func

        def bound(*args: Any, **kwargs: Any) -> Tokenizer:
            return func(cls, obj, *args, **kwargs)  # type: ignore[no-any-return]

        bound.__doc__ = func.__doc__
        bound.__name__ = func.__name__
        return bound


class Tokenizer:
    """A Hugging Face tokenizer (``tokenizer.json``, or GPT-2's ``vocab.json`` +
    ``merges.txt``) with the ``transformers`` API: ``tok(texts, padding=True,
    return_tensors="np")``, ``decode``, ``pad``, ``save_pretrained``, ...

    Build one with ``Tokenizer.from_pretrained(path)`` or
    ``Tokenizer.train_new_from_iterator(texts, vocab_size)``.
    """

    model_input_names = ["input_ids", "attention_mask"]
    is_fast = True

    def __init__(self, core: _core.Tokenizer) -> None:
        if not isinstance(core, _core.Tokenizer):
            raise TypeError(
                "use Tokenizer.from_pretrained(path) or Tokenizer.train_new_from_iterator(texts, vocab_size)"
            )
        self._core = core
        self._chat_template: Any = _UNSET

    # ---- construction ----

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: PathLike,
        *,
        revision: Optional[str] = None,
        local_files_only: bool = False,
        cache_dir: Optional[PathLike] = None,
        **kwargs: Any,
    ) -> Tokenizer:
        """Loads a tokenizer directory (or a tokenizer.json file), or a Hub id (``"org/name"``)
        found in the Hugging Face cache at ``revision`` or downloaded (see
        :func:`ferrotune.hub.resolve`).

        Keyword arguments override the saved settings: ``padding_side``,
        ``truncation_side``, ``model_max_length``, ``clean_up_tokenization_spaces``,
        ``bos_token`` / ``eos_token`` / ``unk_token`` / ``pad_token``, ``chat_template``.
        ``use_fast`` and ``trust_remote_code`` are accepted and ignored.

        The chat template comes, as in transformers, from ``chat_template.jinja`` (plus
        ``additional_chat_templates/<name>.jinja``) when the directory has it, else from
        the ``chat_template`` key of tokenizer_config.json.

        A GGUF file (``from_pretrained("model.gguf")``, or transformers' spelling
        ``from_pretrained(directory, gguf_file="model.gguf")``) gives the byte-level BPE
        tokenizer its ``tokenizer.ggml.*`` metadata describes, built as transformers
        builds it, with the file's chat template.
        """
        name = pretrained_model_name_or_path
        hub_kwargs: dict[str, Any] = dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir)
        gguf_file = kwargs.pop("gguf_file", None)
        if gguf_file is None:
            path = hub.resolve(name, filenames=hub.TOKENIZER_FILES, required=hub.TOKENIZER_VOCABULARY, **hub_kwargs)
        else:
            path = hub.resolve_gguf(name, gguf_file, **hub_kwargs)
        if gguf_file is not None or (path.endswith(".gguf") and os.path.isfile(path)):
            tokenizer_json, config_json, _template = _core.load_gguf_tokenizer(path)
            core = _core.Tokenizer.from_state(tokenizer_json, config_json)
            core.name_or_path = path
            tok = cls(core)
        else:
            tok = cls(_core.Tokenizer.from_pretrained(path))
        template_dir = path if os.path.isdir(path) else None
        if template_dir is None and os.path.basename(path) == "tokenizer.json":
            template_dir = os.path.dirname(path) or "."
        if template_dir is not None:
            files = _read_template_files(template_dir)
            if files:
                tok._chat_template = files["default"] if set(files) == {"default"} else files
        for key, value in kwargs.items():
            if key in _IGNORED_LOAD_KWARGS:
                continue
            if key in _SETTING_KWARGS or key == "chat_template" or key in {f"{k}_token" for k in _SPECIAL_KINDS}:
                setattr(tok, key, value)
            else:
                raise TypeError(f"from_pretrained() got an unexpected keyword argument {key!r}")
        return tok

    @_HybridMethod
    def train_new_from_iterator(
        cls: type[Tokenizer],
        self: Optional[Tokenizer],
        text_iterator: Union[Iterable[str], Iterable[Sequence[str]]],
        vocab_size: int,
        length: Optional[int] = None,
        new_special_tokens: Optional[Sequence[str]] = None,
        *,
        min_frequency: int = 0,
        special_tokens: Optional[Sequence[str]] = None,
        model_max_length: Optional[int] = None,
    ) -> Tokenizer:
        """Trains a new BPE tokenizer on an iterable of texts (or of lists of texts).

        On the class, ``Tokenizer.train_new_from_iterator(texts, vocab_size)``
        makes a GPT-2-style byte-level BPE whose special tokens (default
        ``["<|endoftext|>"]``) come first; "<|endoftext|>" is bos, eos and unk.

        On an instance, the new tokenizer keeps this one's pipeline, settings and
        special tokens (plus ``new_special_tokens``), like transformers.
        ``length`` is accepted for compatibility and ignored.
        """
        del length
        texts: Any = [text_iterator] if isinstance(text_iterator, str) else text_iterator
        vocab_size = operator.index(vocab_size)
        min_frequency = operator.index(min_frequency)
        if vocab_size <= 0:
            raise InputError(f"vocab_size must be positive, got {vocab_size}")
        if min_frequency < 0:
            raise InputError(f"min_frequency must be non-negative, got {min_frequency}")
        if self is None:
            if new_special_tokens is not None:
                raise TypeError("new_special_tokens is for an instance; on the class pass special_tokens=")
            core = _core.Tokenizer.train_new_bpe(
                texts,
                vocab_size,
                min_frequency,
                None if special_tokens is None else [str(t) for t in special_tokens],
            )
            tok = cls(core)
            if model_max_length is not None:
                tok.model_max_length = model_max_length
            return tok
        if special_tokens is not None:
            raise TypeError("special_tokens is for the class method; on an instance pass new_special_tokens=")
        core = self._core.train_new_from_iterator(
            texts,
            vocab_size,
            min_frequency,
            None if new_special_tokens is None else [str(t) for t in new_special_tokens],
        )
        tok = cls(core)
        tok._chat_template = _copy_template(self.chat_template)
        if model_max_length is not None:
            tok.model_max_length = model_max_length
        return tok

    # ---- encoding ----

    def __call__(
        self,
        text: Union[str, Sequence[str]],
        padding: Union[bool, str] = False,
        truncation: Union[bool, str, None] = None,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: Optional[str] = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        return_offsets_mapping: bool = False,
    ) -> BatchEncoding:
        """Encodes one text or a batch.

        ``padding``: False / "do_not_pad", True / "longest", "max_length".
        ``truncation``: True cuts to ``max_length`` (or ``model_max_length``) on
        ``truncation_side``; None (default) truncates only when ``max_length`` is
        given without padding, as transformers does.
        ``return_tensors``: None gives lists (flat lists for a single str),
        "np" gives (B, T) int64 arrays.
        ``return_offsets_mapping``: also ``offset_mapping``, each token's (start, end)
        characters in its text ((0, 0) for special and padding tokens), from the
        ``tokenizers`` library; (B, T, 2) with "np".
        """
        single = isinstance(text, str)
        texts: list[str]
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = list(text)
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise InputError(f"text[{i}] must be a str, got {type(t).__name__}")
        else:
            raise InputError(f"text must be a str or a list of str, got {type(text).__name__}")
        pad = _padding_strategy(padding)
        trunc = _truncation_flag(truncation, max_length, pad)
        max_length = _opt_index(max_length, "max_length")
        pad_to_multiple_of = _opt_index(pad_to_multiple_of, "pad_to_multiple_of")
        if _return_np(return_tensors) and not return_offsets_mapping:
            ids, mask = self._core.encode_batch_np(
                texts, bool(add_special_tokens), pad, trunc, max_length, pad_to_multiple_of
            )
            out = BatchEncoding(input_ids=ids)
            if return_attention_mask:
                out["attention_mask"] = mask
            return out
        ids_l, mask_l, offsets = self._core.encode_batch(
            texts, bool(add_special_tokens), pad, trunc, max_length, pad_to_multiple_of, bool(return_offsets_mapping)
        )
        columns: dict[str, Any] = {"input_ids": ids_l}
        if return_attention_mask:
            columns["attention_mask"] = mask_l
        if offsets is not None:
            columns["offset_mapping"] = offsets
        if _return_np(return_tensors):  # with offsets: the list path, then arrays
            if len({len(r) for r in ids_l}) > 1:
                raise InputError("cannot make a rectangular array: sequences differ in length; use padding=True")
            b, t = len(ids_l), len(ids_l[0]) if ids_l else 0
            shapes = {"offset_mapping": (b, t, 2)}
            return BatchEncoding({k: np.asarray(v, dtype=np.int64).reshape(shapes.get(k, (b, t))) for k, v in columns.items()})
        return BatchEncoding({k: v[0] for k, v in columns.items()} if single else columns)

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        padding: Union[bool, str] = False,
        truncation: Union[bool, str, None] = None,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
    ) -> Any:
        """Token ids of one text (a list, or a (1, T) array with return_tensors="np")."""
        if not isinstance(text, str):
            raise InputError(f"encode() takes one str, got {type(text).__name__}; call the tokenizer for batches")
        return self(
            text,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            add_special_tokens=add_special_tokens,
            return_attention_mask=False,
        )["input_ids"]

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """The tokens of one text, as strings (GPT-2 shows a leading space as "Ġ")."""
        return self._core.tokenize(text, bool(add_special_tokens))

    def pad(
        self,
        encoded_inputs: Union[Sequence[Mapping[str, Any]], Mapping[str, Any]],
        padding: Union[bool, str] = True,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        return_attention_mask: Optional[bool] = None,
        return_tensors: Optional[str] = "np",
    ) -> BatchEncoding:
        """Pads a batch of features (what data collators call).

        ``encoded_inputs``: a list of feature dicts, or a dict of columns.
        Pads ``input_ids`` with the pad id, ``attention_mask`` with 0 (made from
        the lengths when missing), ``labels`` with -100, ``token_type_ids`` with 0
        and ``special_tokens_mask`` with 1, on ``padding_side``. Other features
        are passed through (as arrays when they convert cleanly).
        """
        if isinstance(encoded_inputs, Mapping):
            columns = {k: v for k, v in encoded_inputs.items()}
            ids = columns.get("input_ids")
            single = ids is not None and len(ids) > 0 and not isinstance(ids[0], (Sequence, np.ndarray))
            if isinstance(ids, np.ndarray):
                single = ids.ndim == 1
            if single:
                columns = {k: [v] for k, v in columns.items()}
        elif isinstance(encoded_inputs, Sequence) and not isinstance(encoded_inputs, str):
            single = False
            if len(encoded_inputs) == 0:
                raise DataError("pad() got an empty list of features")
            first = encoded_inputs[0]
            if not isinstance(first, Mapping):
                raise DataError(f"pad() expects feature dicts, got {type(first).__name__}")
            keys = list(first.keys())
            columns = {}
            for k in keys:
                col = []
                for i, f in enumerate(encoded_inputs):
                    if k not in f:
                        raise DataError(f"feature {i} has no {k!r} (feature 0 has)")
                    col.append(f[k])
                columns[k] = col
        else:
            raise DataError(f"pad() expects a list of feature dicts or a dict, got {type(encoded_inputs).__name__}")
        if "input_ids" not in columns:
            raise DataError(f"pad() needs an 'input_ids' feature, got {sorted(columns)}")

        return_np = _return_np(return_tensors)
        pad_cols = [(k, _rows(columns[k], k)) for k in columns if k in PAD_KEYS]
        padded = self._core.pad(
            pad_cols,
            _padding_strategy(padding),
            _opt_index(max_length, "max_length"),
            _opt_index(pad_to_multiple_of, "pad_to_multiple_of"),
            return_np,
        )
        if return_attention_mask is False:
            padded.pop("attention_mask", None)
        out = BatchEncoding()
        for k in list(columns) + [k for k in padded if k not in columns]:
            if k in padded:
                out[k] = padded[k]
            else:
                out[k] = columns[k]
                if return_np:
                    try:
                        arr = np.asarray(columns[k])
                        if arr.dtype != object:
                            out[k] = arr
                    except ValueError:
                        pass
        if single:
            for k in list(out):
                out[k] = out[k][0]
        return out

    # ---- decoding ----

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
    ) -> str:
        """Text of a sequence of ids (list, tuple, 1-D array or one int).
        An id outside the vocabulary (e.g. -100) raises InputError."""
        return self._core.decode(_ids_list(token_ids), bool(skip_special_tokens), clean_up_tokenization_spaces)

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
    ) -> list[str]:
        """``decode`` for each row of a 2-D array or list of sequences."""
        return self._core.decode_batch(
            _rows(sequences, "sequences"), bool(skip_special_tokens), clean_up_tokenization_spaces
        )

    # ---- vocabulary ----

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Any:
        """Id of a token (the unk id, or None, when it is unknown), or a list of them."""
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(t) for t in tokens]

    def _token_id(self, token: str) -> Optional[int]:
        i = self._core.token_to_id(token)
        return self.unk_token_id if i is None else i

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> Any:
        """Token of an id (None when out of range), or a list of them."""
        if isinstance(ids, (int, np.integer)):
            return self._core.id_to_token(operator.index(ids))
        tokens = [self._core.id_to_token(i) for i in _ids_list(ids)]
        if skip_special_tokens:
            special = set(self.all_special_tokens)
            tokens = [t for t in tokens if t not in special]
        return tokens

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._core.vocab_size

    def __len__(self) -> int:
        """Size of the vocabulary with added tokens (the model's embedding rows)."""
        return len(self._core)

    def get_vocab(self) -> dict[str, int]:
        """{token: id}, added tokens included."""
        return self._core.get_vocab(True)

    @property
    def added_tokens_decoder(self) -> dict[int, str]:
        """{id: token} of the added tokens."""
        return {i: content for i, content, _ in self._core.added_tokens()}

    def add_tokens(self, new_tokens: Union[str, Sequence[str]], special_tokens: bool = False) -> int:
        """Adds tokens to the vocabulary; returns how many were new
        (resize the model's embeddings to ``len(tokenizer)`` after)."""
        if isinstance(new_tokens, str):
            new_tokens = [new_tokens]
        return self._core.add_tokens([_token_str(t, "token") or "" for t in new_tokens], bool(special_tokens))

    def add_special_tokens(self, special_tokens_dict: Mapping[str, Any]) -> int:
        """Sets special tokens from ``{"pad_token": "[PAD]", "additional_special_tokens": [...]}``;
        returns how many tokens were new to the vocabulary."""
        added = 0
        for key, value in special_tokens_dict.items():
            if key == "additional_special_tokens":
                added += self._core.add_additional_special_tokens([_token_str(t, key) or "" for t in value])
            elif key in {f"{k}_token" for k in _SPECIAL_KINDS}:
                added += int(self._core.set_special_token(key[:3], _token_str(value, key)))
            else:
                raise InputError(
                    f"unknown special token key {key!r} (expected bos_token, eos_token, unk_token, "
                    "pad_token or additional_special_tokens)"
                )
        return added

    # ---- special tokens ----

    def _set_special(self, kind: str, value: Any) -> None:
        token = _token_str(value, f"{kind}_token")
        if self._core.set_special_token(kind, token):
            warnings.warn(
                f"{kind}_token {token!r} was not in the vocabulary: it was added with id "
                f"{self._core.token_to_id(token or '')}; resize the model's token embeddings to "
                f"len(tokenizer) = {len(self)}",
                stacklevel=3,
            )

    def _set_special_id(self, kind: str, value: Optional[int]) -> None:
        self._core.set_special_token_id(kind, None if value is None else operator.index(value))

    @property
    def bos_token(self) -> Optional[str]:
        return self._core.special_token("bos")

    @bos_token.setter
    def bos_token(self, value: Optional[str]) -> None:
        self._set_special("bos", value)

    @property
    def eos_token(self) -> Optional[str]:
        return self._core.special_token("eos")

    @eos_token.setter
    def eos_token(self, value: Optional[str]) -> None:
        self._set_special("eos", value)

    @property
    def unk_token(self) -> Optional[str]:
        return self._core.special_token("unk")

    @unk_token.setter
    def unk_token(self, value: Optional[str]) -> None:
        self._set_special("unk", value)

    @property
    def pad_token(self) -> Optional[str]:
        """None when unset; padding then raises TokenizerError.
        ``tok.pad_token = tok.eos_token`` is the usual choice for GPT-2."""
        return self._core.special_token("pad")

    @pad_token.setter
    def pad_token(self, value: Optional[str]) -> None:
        self._set_special("pad", value)

    @property
    def bos_token_id(self) -> Optional[int]:
        return self._core.special_token_id("bos")

    @bos_token_id.setter
    def bos_token_id(self, value: Optional[int]) -> None:
        self._set_special_id("bos", value)

    @property
    def eos_token_id(self) -> Optional[int]:
        return self._core.special_token_id("eos")

    @eos_token_id.setter
    def eos_token_id(self, value: Optional[int]) -> None:
        self._set_special_id("eos", value)

    @property
    def unk_token_id(self) -> Optional[int]:
        return self._core.special_token_id("unk")

    @unk_token_id.setter
    def unk_token_id(self, value: Optional[int]) -> None:
        self._set_special_id("unk", value)

    @property
    def pad_token_id(self) -> Optional[int]:
        return self._core.special_token_id("pad")

    @pad_token_id.setter
    def pad_token_id(self, value: Optional[int]) -> None:
        self._set_special_id("pad", value)

    @property
    def additional_special_tokens(self) -> list[str]:
        return self._core.additional_special_tokens

    @property
    def all_special_tokens(self) -> list[str]:
        """bos, eos, unk, pad and the additional special tokens, each once."""
        return self._core.all_special_tokens

    @property
    def all_special_ids(self) -> list[int]:
        return [i for i in (self._core.token_to_id(t) for t in self.all_special_tokens) if i is not None]

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """The special tokens that are set, by name."""
        out: dict[str, Any] = {}
        for kind in _SPECIAL_KINDS:
            t = self._core.special_token(kind)
            if t is not None:
                out[f"{kind}_token"] = t
        if self.additional_special_tokens:
            out["additional_special_tokens"] = self.additional_special_tokens
        return out

    # ---- settings ----

    @property
    def padding_side(self) -> str:
        """"right" (default) or "left" (for batched generation)."""
        return self._core.padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        self._core.padding_side = side

    @property
    def truncation_side(self) -> str:
        return self._core.truncation_side

    @truncation_side.setter
    def truncation_side(self, side: str) -> None:
        self._core.truncation_side = side

    @property
    def model_max_length(self) -> int:
        """The longest input the model takes; ``int(1e30)`` when there is no limit."""
        n = self._core.model_max_length
        return VERY_LARGE_INTEGER if n is None else n

    @model_max_length.setter
    def model_max_length(self, n: Optional[int]) -> None:
        if n is not None:
            n = operator.index(n)
            if n <= 0:
                raise InputError(f"model_max_length must be positive, got {n}")
        self._core.model_max_length = None if n is None or n >= 10**18 else n

    @property
    def clean_up_tokenization_spaces(self) -> bool:
        return self._core.clean_up_tokenization_spaces

    @clean_up_tokenization_spaces.setter
    def clean_up_tokenization_spaces(self, value: bool) -> None:
        self._core.clean_up_tokenization_spaces = bool(value)

    @property
    def name_or_path(self) -> str:
        return self._core.name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str) -> None:
        self._core.name_or_path = str(value)

    # ---- chat templates ----

    @property
    def chat_template(self) -> Optional[Union[str, dict[str, str]]]:
        """The Jinja chat template (a str), ``{name: template}`` for a tokenizer with several
        templates, or None. Assign a template string to set one."""
        if self._chat_template is _UNSET:
            from .chat import template_from_config

            config = json.loads(self._core.to_state()[1])
            self._chat_template = template_from_config(config.get("chat_template"))
        return self._chat_template  # type: ignore[no-any-return]

    @chat_template.setter
    def chat_template(self, value: Optional[Union[str, Mapping[str, str], Sequence[Mapping[str, str]]]]) -> None:
        from .chat import template_from_config

        self._chat_template = template_from_config(value)

    def get_chat_template(self, chat_template: Optional[str] = None, tools: Optional[Sequence[Any]] = None) -> str:
        """The template ``apply_chat_template`` uses: ``chat_template`` when given (a template,
        or the name of one of this tokenizer's templates), else the tokenizer's own (its
        ``"tool_use"`` template when tools are given and it has one, else ``"default"``).
        Raises TokenizerError when there is none."""
        from .chat import select_template

        return select_template(self.chat_template, chat_template, tools)

    def apply_chat_template(
        self,
        conversation: Any,
        tools: Optional[Sequence[Any]] = None,
        documents: Optional[Sequence[Any]] = None,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = False,
        continue_final_message: Union[bool, str] = False,
        tokenize: bool = True,
        sanitize_control_tokens: bool = False,
        padding: Union[bool, str] = False,
        truncation: Union[bool, str] = False,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
        return_dict: bool = True,
        return_assistant_tokens_mask: bool = False,
        tokenizer_kwargs: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """Renders a conversation (a list of ``{"role": ..., "content": ...}`` dicts) or a batch
        of them with the chat template, as transformers 5 does, and tokenizes it.

        Returns, as transformers 5: the text (a str, or a list for a batch) with
        ``tokenize=False``; a :class:`BatchEncoding` (``input_ids``, ``attention_mask``, and
        ``assistant_masks`` with ``return_assistant_tokens_mask=True``) by default; the ids
        alone with ``return_dict=False``. (transformers 4 defaulted to ``return_dict=False``.)

        ``add_generation_prompt`` appends the header that starts an assistant reply;
        ``continue_final_message`` (True, or the name of the field) leaves the last message
        open so the model continues it. ``tools`` (JSON schemas) and ``documents`` are passed
        to the template, as are the special tokens (``bos_token``, ...) and any other keyword
        argument. The text is tokenized without adding special tokens (templates write
        them); ``padding``, ``truncation``, ``max_length`` and ``return_tensors`` ("np") are
        as in ``__call__``, and ``tokenizer_kwargs`` go to it too.

        ``return_assistant_tokens_mask`` marks the tokens inside the template's
        ``{% generation %}`` blocks with 1; for a template without them it warns and returns
        zeros, like transformers (the training pipeline finds assistant tokens either way;
        see :mod:`ferrotune.chat`).

        Raises TokenizerError when there is no template, ChatTemplateError (a TokenizerError and
        a ``jinja2.TemplateError``) when the template fails or calls ``raise_exception``, and
        InputError for malformed conversations or incompatible arguments.
        """
        from .chat import apply_chat_template

        return apply_chat_template(
            self,
            conversation,
            tools=tools,
            documents=documents,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=tokenize,
            sanitize_control_tokens=sanitize_control_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            return_dict=return_dict,
            return_assistant_tokens_mask=return_assistant_tokens_mask,
            tokenizer_kwargs=tokenizer_kwargs,
            **kwargs,
        )

    # ---- saving ----

    def save_pretrained(self, save_directory: PathLike) -> tuple[str, ...]:
        """Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json
        (and vocab.json + merges.txt for BPE) into ``save_directory``, all at once (see
        :func:`ferrotune.io.atomic_directory`; other files in it are kept); returns the paths.

        A chat template is written as transformers 5 writes it: to ``chat_template.jinja``
        (other named templates to ``additional_chat_templates/<name>.jinja``), never as a
        tokenizer_config.json key."""
        with atomic_directory(save_directory) as directory:
            written = list(self._core.save_pretrained(directory))
            template = self.chat_template
            _drop_config_template(os.path.join(directory, _TOKENIZER_CONFIG_FILE))
            if isinstance(template, str):
                written.append(_write_text(os.path.join(directory, "chat_template.jinja"), template))
            elif isinstance(template, dict):
                for name, text in template.items():
                    if name == "default":
                        written.append(_write_text(os.path.join(directory, "chat_template.jinja"), text))
                        continue
                    folder = os.path.join(directory, "additional_chat_templates")
                    target = os.path.join(folder, f"{name}.jinja")
                    if os.path.dirname(os.path.abspath(target)) != os.path.abspath(folder):
                        raise InputError(f"invalid chat template name {name!r}")
                    os.makedirs(folder, exist_ok=True)
                    written.append(_write_text(target, text))
        saved = os.fspath(save_directory)
        return tuple(os.path.join(saved, os.path.relpath(p, directory)) for p in written)

    def to_str(self, pretty: bool = False) -> str:
        """The tokenizer.json text."""
        return self._core.to_str(pretty)

    # ---- python protocol ----

    def __getstate__(self) -> dict[str, Any]:
        return {"state": self._core.to_state(), "chat_template": self.chat_template}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._core = _core.Tokenizer.from_state(*state["state"])
        self._chat_template = state.get("chat_template", _UNSET)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"truncation_side={self.truncation_side!r}, special_tokens={self.special_tokens_map!r}, "
            f"added_tokens={len(self.added_tokens_decoder)})"
        )


# ---- chat template files ----


def _copy_template(template: Any) -> Any:
    return dict(template) if isinstance(template, dict) else template


def _read_template_files(directory: str) -> dict[str, str]:
    """{"default": chat_template.jinja, name: additional_chat_templates/<name>.jinja} of a directory."""
    out: dict[str, str] = {}
    main = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(main):
        with open(main, encoding="utf-8") as f:
            out["default"] = f.read()
    extra = os.path.join(directory, "additional_chat_templates")
    if os.path.isdir(extra):
        for name in sorted(os.listdir(extra)):
            if name.endswith(".jinja") and os.path.isfile(os.path.join(extra, name)):
                with open(os.path.join(extra, name), encoding="utf-8") as f:
                    out[name[: -len(".jinja")]] = f.read()
    return out


def _write_text(path: str, text: str) -> str:
    """Writes ``text`` to a temporary file next to ``path``, then renames it."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        # mkstemp creates 0600 files; give the saved file the umask's usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _drop_config_template(config_path: str) -> None:
    """Removes a ``chat_template`` key (kept from a loaded tokenizer_config.json) from the
    config the core wrote: transformers 5 keeps templates in .jinja files only."""
    if not os.path.isfile(config_path):
        return
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict) or "chat_template" not in config:
        return
    del config["chat_template"]
    _write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False))
