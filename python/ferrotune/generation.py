"""Text generation: ``GenerationConfig`` (transformers' names, defaults and
``generation_config.json``), the ``generate`` loop driven from Python around the Rust KV-cached
decoder, and streamers (``TextStreamer``, ``TextIteratorStreamer``) that decode UTF-8
correctly across token boundaries.
"""

from __future__ import annotations

import abc

import copy
import json
import os
import secrets
import unicodedata
from queue import Queue
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _core
from ._core import InputError

PathLike = Union[str, "os.PathLike[str]"]

GENERATION_CONFIG_NAME = "generation_config.json"

# transformers' GenerationConfig._get_default_generation_params (values used when neither the
# call nor the model's generation config sets them)
_DEFAULTS: Dict[str, Any] = {
    "max_length": 20,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "num_return_sequences": 1,
}

# the fields ferrotune reads; any other key of a generation_config.json is kept and written back
_FIELDS = (
    "max_length",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "num_return_sequences",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "stop_strings",
)


class GenerationConfig:
    """How ``Model.generate`` decodes, with transformers' attribute names.

    Unset fields are ``None`` and take transformers' defaults at generation time (max_length
    20, greedy, temperature 1.0, top_k 50 and top_p 1.0 when sampling). Unknown keys of a
    ``generation_config.json`` are kept and written back unchanged.

    >>> cfg = GenerationConfig(max_new_tokens=32, do_sample=True, top_p=0.9)
    >>> cfg.save_pretrained("out")                     # out/generation_config.json
    >>> GenerationConfig.from_pretrained("out").top_p
    0.9
    """

    def __init__(self, **kwargs: Any) -> None:
        for name in _FIELDS:
            setattr(self, name, kwargs.pop(name, None))
        self._extra: Dict[str, Any] = dict(kwargs)
        self.validate()

    # ---- (de)serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GenerationConfig":
        return cls(**dict(d))

    @classmethod
    def from_pretrained(cls, path: PathLike, config_file_name: str = GENERATION_CONFIG_NAME) -> "GenerationConfig":
        """Reads ``generation_config.json`` from a directory (or the given JSON file)."""
        path = os.fspath(path)
        file = os.path.join(path, config_file_name) if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise FileNotFoundError(2, f"No such file or directory: {file}", file)
        with open(file, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_model_config(cls, config: Any) -> "GenerationConfig":
        """bos/eos/pad token ids from a model config (what transformers does without the file)."""
        d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        kw = {k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if d.get(k) is not None}
        return cls(_from_model_config=True, **kw)

    def to_dict(self) -> Dict[str, Any]:
        """The set fields (None ones left out, as transformers' to_diff_dict) plus unknown keys."""
        d = dict(self._extra)
        d.update({k: getattr(self, k) for k in _FIELDS if getattr(self, k) is not None})
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: PathLike, config_file_name: str = GENERATION_CONFIG_NAME) -> None:
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        self.validate()
        file = os.path.join(save_directory, config_file_name)
        tmp = file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        os.replace(tmp, file)

    def update(self, **kwargs: Any) -> Dict[str, Any]:
        """Sets the given known fields (None values are ignored); returns the unknown ones."""
        unused = {}
        for k, v in kwargs.items():
            if k in _FIELDS:
                if v is not None:
                    setattr(self, k, v)
            else:
                unused[k] = v
        self.validate()
        return unused

    def copy(self) -> "GenerationConfig":
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"GenerationConfig {self.to_json_string()}"

    # ---- checks ------------------------------------------------------------------------
    def validate(self) -> None:
        """Raises ValueError for values transformers rejects."""

        def bad(msg: str) -> None:
            raise ValueError(msg)

        if self.temperature is not None and not (float(self.temperature) >= 0.0):
            bad(f"`temperature` must be a non-negative float, got {self.temperature}")
        if self.top_p is not None and not (0.0 < float(self.top_p) <= 1.0):
            bad(f"`top_p` must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0):
            bad(f"`top_k` must be a non-negative integer, got {self.top_k}")
        if self.min_p is not None and not (0.0 <= float(self.min_p) <= 1.0):
            bad(f"`min_p` must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty is not None and not (float(self.repetition_penalty) > 0.0):
            bad(f"`repetition_penalty` must be a strictly positive float, got {self.repetition_penalty}")
        for name in ("max_new_tokens", "max_length", "num_return_sequences"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
                bad(f"`{name}` must be a positive integer, got {v}")

    def get(self, name: str) -> Any:
        """The field's value, or transformers' default when unset."""
        v = getattr(self, name)
        return _DEFAULTS.get(name) if v is None else v


# ----------------------------------------------------------------------------------------
# streamers (transformers' BaseStreamer protocol: put(token ids), end())
# ----------------------------------------------------------------------------------------


class BaseStreamer(abc.ABC):
    """What ``generate(streamer=...)`` calls: ``put`` with the prompt ids first, then with
    every step's new tokens, and ``end`` once generation stops."""

    @abc.abstractmethod
    def put(self, value: Any) -> None:
        """Receives token ids (the prompt first, then each step's new tokens)."""

    @abc.abstractmethod
    def end(self) -> None:
        """Called once when generation stops."""


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
        or 0x3000 <= cp <= 0x303F  # CJK punctuation
        or 0xFF00 <= cp <= 0xFFEF  # full-width forms
        or unicodedata.east_asian_width(ch) == "W"
    )


class TextStreamer(BaseStreamer):
    """Prints text as it is generated (transformers' ``TextStreamer``): whole words, or each
    CJK character as soon as it is complete. Text ending in an incomplete UTF-8 character
    (decoded as U+FFFD) is held back until the next token completes it.

    >>> model.generate(ids, max_new_tokens=50, streamer=TextStreamer(tok, skip_prompt=True))
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: List[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        arr = np.asarray(value)
        if arr.ndim > 1 and arr.shape[0] > 1:
            raise ValueError("TextStreamer only supports batch size 1")
        ids = [int(x) for x in arr.reshape(-1)]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.next_tokens_are_prompt = False
        self.token_cache.extend(ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            printable = text[self.print_len :]
            self.token_cache = []
            self.print_len = 0
        else:
            stable = text.rstrip("\ufffd")  # an incomplete character: wait for its next bytes
            if stable and _is_cjk(stable[-1]):
                printable = stable[self.print_len :]
            else:
                printable = stable[self.print_len : stable.rfind(" ") + 1]
            self.print_len += len(printable)
        if printable:
            self.on_finalized_text(printable)

    def end(self) -> None:
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable = text[self.print_len :]
            self.token_cache = []
            self.print_len = 0
        else:
            printable = ""
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """An iterator of text pieces, for generation running in another thread
    (transformers' ``TextIteratorStreamer``):

    >>> streamer = TextIteratorStreamer(tok, skip_prompt=True)
    >>> Thread(target=model.generate, args=(ids,), kwargs=dict(streamer=streamer)).start()
    >>> for piece in streamer: print(piece, end="")
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: Optional[float] = None, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: "Queue[Optional[str]]" = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration()
        return value  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------


def _eos_list(eos: Any) -> List[int]:
    if eos is None:
        return []
    if isinstance(eos, (int, np.integer)):
        return [int(eos)]
    return [int(e) for e in eos]


def _stop_list(stop_strings: Any) -> List[str]:
    if stop_strings is None:
        return []
    if isinstance(stop_strings, str):
        return [stop_strings]
    out = list(stop_strings)
    if not all(isinstance(s, str) and s for s in out):
        raise ValueError("stop_strings must be a non-empty string or a list of non-empty strings")
    return out


def generate(
    model: Any,
    input_ids: Any,
    attention_mask: Any = None,
    generation_config: Optional[GenerationConfig] = None,
    seed: Optional[int] = None,
    tokenizer: Any = None,
    streamer: Optional[BaseStreamer] = None,
    output_logits: bool = False,
    weights_dtype: str = "float32",
    **kwargs: Any,
) -> Any:
    """The body of ``Model.generate`` (see there)."""
    from .modeling import as_ids

    if weights_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"weights_dtype must be 'float32' or 'bfloat16', got {weights_dtype!r}")

    gc = (generation_config or getattr(model, "generation_config", None) or GenerationConfig()).copy()
    unused = gc.update(**kwargs)
    if unused:
        raise TypeError(f"generate() got unexpected arguments: {sorted(unused)}")

    ids = as_ids("input_ids", input_ids)
    mask = None if attention_mask is None else as_ids("attention_mask", attention_mask)
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape} but input_ids has shape {ids.shape}")
    b, t = ids.shape
    if gc.max_new_tokens is not None:
        max_new = int(gc.max_new_tokens)
    else:
        max_new = int(gc.get("max_length")) - t
        if max_new < 1:
            raise ValueError(
                f"the prompt has {t} tokens and max_length is {gc.get('max_length')}: nothing to generate; "
                "set max_new_tokens"
            )
    mc = model.config
    n_positions = getattr(mc, "n_positions", None) or getattr(mc, "max_position_embeddings", None) or (t + max_new)
    if t + max_new > n_positions:
        raise InputError(
            f"prompt length {t} + max_new_tokens {max_new} = {t + max_new} exceeds the model's context of "
            f"{n_positions} positions (n_positions); lower max_new_tokens to at most {max(n_positions - t, 0)}"
        )
    do_sample = bool(gc.get("do_sample"))
    num_return = int(gc.get("num_return_sequences"))
    if num_return > 1 and not do_sample:
        raise ValueError(
            f"num_return_sequences={num_return} needs do_sample=True: greedy decoding would return the same "
            "sequence every time"
        )
    temperature = float(gc.get("temperature"))
    if do_sample and temperature == 0.0:
        raise ValueError("temperature=0.0 with do_sample=True: use do_sample=False for greedy decoding")
    eos = _eos_list(gc.eos_token_id)
    pad = gc.pad_token_id
    if pad is None and eos:
        pad = eos[0]
    stops = _stop_list(gc.stop_strings)
    if stops and tokenizer is None:
        raise ValueError(
            "stop_strings need the model's tokenizer: pass tokenizer=... to generate() to decode the new tokens"
        )
    if streamer is not None and b * num_return > 1:
        raise ValueError("streaming supports a single sequence (batch size 1, num_return_sequences=1)")
    if num_return > 1:
        ids = np.repeat(ids, num_return, axis=0)
        mask = None if mask is None else np.repeat(mask, num_return, axis=0)
    if seed is None:
        seed = secrets.randbits(63)
    top_k = gc.get("top_k")
    gen = _core.Generation(
        model._core,
        np.ascontiguousarray(ids),
        None if mask is None else np.ascontiguousarray(mask),
        max_new,
        do_sample,
        temperature,
        None if top_k is None else int(top_k),
        float(gc.get("top_p")),
        None if gc.min_p is None else float(gc.min_p),
        float(gc.get("repetition_penalty")),
        eos,
        None if pad is None else int(pad),
        int(seed) & (2**64 - 1),
        bool(output_logits),
        weights_dtype == "bfloat16",
    )
    if streamer is None and not stops:
        gen.step(max_new)  # the whole loop in Rust, one call
    else:
        if streamer is not None:
            streamer.put(ids)
        new: List[List[int]] = [[] for _ in range(ids.shape[0])]
        while not gen.done:
            tokens = gen.step(1)
            if tokens.shape[1] == 0:
                break
            if streamer is not None:
                streamer.put(tokens[:, 0])
            if stops:
                live = gen.unfinished
                finished = [False] * len(new)
                for r, row in enumerate(new):
                    row.append(int(tokens[r, 0]))
                    if not live[r]:
                        continue
                    text = tokenizer.decode(row)
                    if any(s in text for s in stops):
                        finished[r] = True
                if any(finished):
                    gen.finish_rows(finished)
        if streamer is not None:
            streamer.end()
    out = gen.sequences()
    if output_logits:
        return out, gen.logits()
    return out


def process_logits(
    scores: Any,
    input_ids: Any,
    *,
    do_sample: bool = True,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    repetition_penalty: Optional[float] = None,
    prompt_ignore_length: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """transformers' logits processors, in generate's order (repetition penalty; with
    ``do_sample`` temperature, top-k, top-p, min-p), on (R, V) scores given each row's
    previous tokens (R, L). Returns the processed (R, V) float32 scores (-inf = filtered)."""
    s = np.ascontiguousarray(scores, dtype=np.float32)
    ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    ign = None if prompt_ignore_length is None else np.ascontiguousarray(prompt_ignore_length, dtype=np.int64)
    return _core.process_logits(s, ids, ign, do_sample, temperature, top_k, top_p, min_p, repetition_penalty)


__all__ = [
    "BaseStreamer",
    "GenerationConfig",
    "TextIteratorStreamer",
    "TextStreamer",
    "generate",
    "process_logits",
]

