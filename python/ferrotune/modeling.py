"""``ferrotune.Model``: a Hugging Face causal LM whose forward and backward run in Rust."""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _core, hub
from ._core import ConfigError, FerrotuneError, InputError
from .generation import GENERATION_CONFIG_NAME, GenerationConfig
from .generation import generate as _generate
from .progress import progress_bar

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = Any

# The Rust core's config.MAX_DIM (src/config.rs): the largest width, vocabulary or label count a
# config may ask for. Sizes that Python turns into dicts or arrays before the core sees them
# (num_labels, resize_token_embeddings) are bounded here, so a typo fails before it allocates.
MAX_DIM = 1 << 24


#: Parameters that are embedding tables (nn.Embedding in transformers) in every architecture.
_EMBEDDING_TABLES = ("wte.weight", "wpe.weight", "embed_tokens.weight")


def _non_finite(value: Any, key: str = "") -> Optional[Tuple[str, float]]:
    """(key, value) of the first NaN or infinity in a config (nested keys joined by dots), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite(v, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


def _config_json(config: Mapping[str, Any]) -> str:
    """A config dict as JSON for the Rust core. json.dumps would write NaN and Infinity, which
    are not JSON (the core would only say "expected value at line 1 column N"): raises
    :class:`ConfigError` naming the key instead."""
    try:
        return json.dumps(config, allow_nan=False)
    except ValueError:
        found = _non_finite(config)
        if found is None:
            raise
        raise ConfigError(f"config key {found[0]!r} is {found[1]!r}; config values must be finite numbers") from None


class ModelConfig:
    """A model's ``config.json`` with attribute access (like ``transformers.PretrainedConfig``)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        return cls(**dict(d))

    @classmethod
    def from_json_file(cls, path: PathLike) -> "ModelConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ModelConfig {self.to_json_string()}"


@dataclass
class CausalLMOutput:
    """What ``model(...)`` returns: ``loss`` (when labels were given) and (B, T, V) ``logits``."""

    loss: Optional[float]
    logits: Optional[np.ndarray]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def as_ids(name: str, x: ArrayLike, ndim_hint: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """``x`` as a C-contiguous (B, T) int64 array (a 1-D sequence becomes one row); only the
    type is converted here, the values are checked once, in Rust."""
    try:
        arr = np.asarray(x)
    except ValueError as e:
        raise ValueError(f"{name} must be a rectangular array of integers (ragged rows? pad them first)") from e
    if arr.dtype == object:
        raise ValueError(f"{name} must be a rectangular array of integers (ragged rows? pad them first)")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, seq_len) or (seq_len,), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _inputs(
    input_ids: ArrayLike,
    attention_mask: Optional[ArrayLike],
    labels: Optional[ArrayLike],
    row_labels: bool = False,
) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """Normalised (B, T) int64 arrays; labels (B, T), or (B,) one class per row for a model
    with a classification head (passed to Rust as (B, 1))."""
    ids = as_ids("input_ids", input_ids)
    mask = None if attention_mask is None else as_ids("attention_mask", attention_mask)
    lab = None
    if labels is not None:
        if row_labels:
            lab = np.ascontiguousarray(np.asarray(labels, dtype=np.int64).reshape(-1, 1))
        else:
            lab = as_ids("labels", labels)
    return ids, mask, lab


def training_call(
    model: "Model",
    core_fn: Any,
    input_ids: ArrayLike,
    labels: Optional[ArrayLike],
    attention_mask: Optional[ArrayLike],
    num_items_in_batch: Optional[int],
) -> Tuple[float, Tuple[Any, ...]]:
    """Calls a core training function (forward_backward, AdamW.backward_step) with normalised
    inputs: (the batch's mean loss, the core's results after (summed loss, counted tokens))."""
    ids, mask, lab = _inputs(input_ids, attention_mask, labels, model.num_labels is not None)
    n = None if num_items_in_batch is None else float(num_items_in_batch)
    loss_sum, count, *rest = core_fn(ids, mask, lab, n)
    return (loss_sum / count if count else float("nan")), tuple(rest)


def _mean_resized_rows(old: np.ndarray, added: int, rng: np.random.Generator) -> np.ndarray:
    """transformers' ``_init_added_embeddings_weights_with_mean``: ``added`` rows drawn from
    N(mean of the rows, 1e-9 * their covariance) when that matrix is positive definite (a
    Cholesky factorisation exists), else copies of the mean. Computed in float64."""
    w = old.astype(np.float64)
    mean = w.mean(axis=0)
    centered = w - mean
    covariance = centered.T @ centered / w.shape[0]
    try:
        chol = np.linalg.cholesky(1e-9 * covariance)
    except np.linalg.LinAlgError:
        return np.repeat(mean[None, :], added, axis=0)
    return mean + rng.standard_normal((added, w.shape[1])) @ chol.T


def _name_or_path(asked: PathLike, local: str) -> str:
    """What ``name_or_path`` says, as in transformers: the Hub id a model was loaded by, else
    its absolute local path."""
    return os.path.abspath(local) if os.path.exists(asked) else os.fspath(asked)


def _local_path(path: PathLike, gguf_file: Optional[PathLike], **hub_kwargs: Any) -> str:
    """The local directory (or GGUF file) a path or Hub id names; see :func:`hub.resolve`."""
    if gguf_file is not None:
        return hub.resolve_gguf(path, gguf_file, **hub_kwargs)
    return hub.resolve(path, required=hub.MODEL_WEIGHTS, **hub_kwargs)


class Model:
    """A causal language model (GPT-2, Llama, Mistral, Qwen2, Qwen3) with the transformers API.

    >>> model = Model.from_pretrained("path/to/gpt2")
    >>> out = model(input_ids, attention_mask=mask, labels=input_ids)
    >>> out.loss, out.logits.shape          # (B, T, V)
    """

    def __init__(self, core: "_core.CausalLM", generation_config: Optional[GenerationConfig] = None, name_or_path: str = "") -> None:
        self._core = core
        self.generation_config = generation_config or GenerationConfig.from_model_config(self.config)
        #: Where the weights were loaded from: the Hub id, or an absolute local path ("" for a
        #: new model), as transformers' ``model.name_or_path``; adapters name it as their base.
        self.name_or_path = name_or_path

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        gguf_file: Optional[PathLike] = None,
        *,
        revision: Optional[str] = None,
        local_files_only: bool = False,
        cache_dir: Optional[PathLike] = None,
    ) -> "Model":
        """Loads a Hugging Face directory (``config.json`` + ``model.safetensors`` or shards),
        or a GGUF file: ``from_pretrained("model.gguf")`` or transformers' spelling
        ``from_pretrained(directory, gguf_file="model.gguf")``; GGUF weights (F32, F16, BF16,
        Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) are dequantised into trainable float32.
        ``path`` may be a Hub id (``"org/name"``), found in the Hugging Face cache at
        ``revision`` or downloaded (see :func:`ferrotune.hub.resolve`)."""
        asked, path = path, _local_path(path, gguf_file, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir)
        if not os.path.exists(path):
            raise FileNotFoundError(2, f"No such file or directory: {path}", path)
        gen_config = None
        if os.path.isdir(path):
            gen_file = os.path.join(path, GENERATION_CONFIG_NAME)
            gen_config = GenerationConfig.from_pretrained(gen_file) if os.path.isfile(gen_file) else None
        return cls(_core.CausalLM.from_pretrained(path), gen_config, _name_or_path(asked, path))

    @classmethod
    def from_config(cls, config: Union[ModelConfig, Mapping[str, Any]], seed: int = 0) -> "Model":
        """A new model with transformers' random initialisation, seeded."""
        if not isinstance(config, (ModelConfig, Mapping)):
            raise ConfigError(f"config must be a dict or a ModelConfig, got {type(config).__name__} {config!r}")
        d = config.to_dict() if isinstance(config, ModelConfig) else dict(config)
        return cls(_core.CausalLM.from_config(_config_json(d), int(seed)))

    @classmethod
    def for_sequence_classification(
        cls,
        path: PathLike,
        num_labels: Optional[int] = None,
        id2label: Optional[Mapping[int, str]] = None,
        label2id: Optional[Mapping[str, int]] = None,
        pad_token_id: Optional[int] = None,
        gguf_file: Optional[PathLike] = None,
        seed: int = 0,
        *,
        revision: Optional[str] = None,
        local_files_only: bool = False,
        cache_dir: Optional[PathLike] = None,
    ) -> "Model":
        """transformers' ``AutoModelForSequenceClassification.from_pretrained``: the backbone
        of a causal LM (or a saved classifier) with a bias-free ``score`` head (num_labels,
        hidden) on the last non-padding token of each row. A new head is initialised like
        transformers (N(0, initializer_range), seeded). ``pad_token_id`` (from the argument
        or the config) finds the last token; without one only batches of one row work.
        ``path``, ``revision``, ``local_files_only``, ``cache_dir``: as in :meth:`from_pretrained`."""
        asked, path = path, _local_path(path, gguf_file, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir)
        if not os.path.exists(path):
            raise FileNotFoundError(2, f"No such file or directory: {path}", path)
        if os.path.isdir(path):
            config = ModelConfig.from_json_file(os.path.join(path, "config.json")).to_dict()
        else:  # a GGUF file: its config comes from the loaded model
            config = cls.from_pretrained(path).config.to_dict()
        arch = {"gpt2": "GPT2", "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}.get(config.get("model_type", ""))
        if arch is None:
            raise ConfigError(f"no sequence-classification head for model_type {config.get('model_type')!r}")
        if id2label is not None:
            id2label = {int(k): str(v) for k, v in dict(id2label).items()}
            if num_labels is None:
                num_labels = len(id2label)
        if num_labels is None:
            num_labels = config.get("num_labels") or 2
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or not 1 <= num_labels <= MAX_DIM:
            raise ConfigError(f"num_labels must be an integer in [1, {MAX_DIM}], got {num_labels!r}")
        num_labels = int(num_labels)
        if id2label is None:
            id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()} or {i: f"LABEL_{i}" for i in range(num_labels)}
        if len(id2label) != num_labels:
            raise ConfigError(f"id2label has {len(id2label)} entries for num_labels={num_labels}")
        config.update(
            architectures=[f"{arch}ForSequenceClassification"],
            num_labels=num_labels,
            id2label={str(k): v for k, v in id2label.items()},
            label2id=dict(label2id) if label2id is not None else {v: k for k, v in id2label.items()},
        )
        if pad_token_id is not None:
            config["pad_token_id"] = int(pad_token_id)
        core = _core.CausalLM.from_pretrained_with_config(path, _config_json(config), int(seed))
        return cls(core, name_or_path=_name_or_path(asked, path))

    @property
    def num_labels(self) -> Optional[int]:
        """The number of classes of a sequence-classification model, else None."""
        return self._core.num_labels

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(json.loads(self._core.config_json()))

    # ---- forward / backward ---------------------------------------------------------
    def __call__(
        self, input_ids: ArrayLike, attention_mask: Optional[ArrayLike] = None, labels: Optional[ArrayLike] = None
    ) -> CausalLMOutput:
        """Full forward. ``loss`` is the mean next-token cross-entropy over labels != -100
        (label t+1 is predicted at position t, as in transformers)."""
        ids, mask, lab = _inputs(input_ids, attention_mask, labels, self.num_labels is not None)
        loss, logits = self._core.forward(ids, mask, lab, True)
        return CausalLMOutput(loss=loss, logits=logits)

    forward = __call__

    def forward_backward(
        self,
        input_ids: ArrayLike,
        labels: Optional[ArrayLike] = None,
        attention_mask: Optional[ArrayLike] = None,
        num_items_in_batch: Optional[int] = None,
        on_block_done: Optional[Callable[[int], object]] = None,
    ) -> float:
        """Forward + backward; gradients are added to the model's gradient buffers.

        Returns this batch's mean loss. The gradient is that of (sum of token losses) /
        ``num_items_in_batch`` — pass the number of counted tokens of all micro-batches of
        one optimizer step so every token weighs the same (default: this batch's count).
        Without labels, ``input_ids`` are the labels (-100 where ``attention_mask`` is 0).
        ``on_block_done(l)`` is called as soon as transformer block ``l``'s gradients are final
        (the last block first): :class:`ferrotune.distributed.GradientReducer` starts reducing
        them there while the backward goes on.
        """
        fn = self._core.forward_backward
        if on_block_done is not None:
            fn = functools.partial(fn, on_block_done=on_block_done)
        loss, _ = training_call(self, fn, input_ids, labels, attention_mask, num_items_in_batch)
        return loss

    def loss_stats(
        self, input_ids: ArrayLike, labels: Optional[ArrayLike] = None, attention_mask: Optional[ArrayLike] = None
    ) -> Tuple[float, int, int]:
        """Forward only, without returning logits: (summed loss, counted tokens, tokens whose
        argmax prediction is right). For evaluation loss, perplexity and token accuracy."""
        ids, mask, lab = _inputs(input_ids, attention_mask, labels, self.num_labels is not None)
        return self._core.loss_stats(ids, mask, lab)

    def token_losses(
        self, input_ids: ArrayLike, labels: Optional[ArrayLike] = None, attention_mask: Optional[ArrayLike] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Forward only, per token: ``(loss, right)``, both ``(B, T)``. ``loss[b, t]`` is the
        cross-entropy (nats) of predicting ``labels[b, t + 1]`` (labels default to the input ids,
        -100 where the mask is 0) and ``right[b, t]`` whether that was the argmax; 0 and False
        where nothing is counted. The (B, T, V) logits never leave the model: for per-sequence
        log-likelihoods (``-loss.sum(axis=1)``) and perplexity over long data."""
        ids, mask, lab = _inputs(input_ids, attention_mask, labels, False)
        return self._core.token_losses(ids, mask, lab)

    # ---- gradients ------------------------------------------------------------------
    def zero_grad(self) -> None:
        self._core.zero_grad()

    def gradients(self) -> Dict[str, np.ndarray]:
        """{trainable parameter name: gradient} (copies)."""
        return self._core.gradients()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scales gradients so their global L2 norm is at most ``max_norm``
        (torch.nn.utils.clip_grad_norm_); returns the norm before clipping."""
        return self._core.clip_grad_norm(float(max_norm))

    def check_gradient_flow(self) -> None:
        """Raises if any parameter's gradient is all zero or not finite (call after a backward)."""
        bad = []
        for name, g in self.gradients().items():
            if not np.all(np.isfinite(g)):
                bad.append(f"{name}: non-finite")
            elif not np.any(g):
                bad.append(f"{name}: all zero")
        if bad:
            raise FerrotuneError("gradient flow check failed: " + "; ".join(bad))

    # ---- parameters -----------------------------------------------------------------
    def parameter_names(self) -> List[str]:
        return [name for name, _ in self._core.param_info()]

    def named_parameter_shapes(self) -> Iterator[Tuple[str, Tuple[int, ...]]]:
        for name, shape in self._core.param_info():
            yield name, tuple(shape)

    def num_parameters(self, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of scalars in all parameters, or in the trainable ones; as transformers,
        ``exclude_embeddings`` leaves out the token and position embedding tables."""
        if not exclude_embeddings:
            return self._core.num_parameters(bool(trainable_only))
        trainable = self.requires_grad() if trainable_only else None
        return sum(
            math.prod(shape)
            for name, shape in self.named_parameter_shapes()
            if not name.endswith(_EMBEDDING_TABLES) and (trainable is None or trainable[name])
        )

    def _match(self, patterns: Union[str, Iterable[str]]) -> List[str]:
        """Parameter names equal to a given name, or matching a given regex (re.search)."""
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        names = self.parameter_names()
        out = []
        for pat in pats:
            if pat in names:
                hits = [pat]
            else:
                rx = re.compile(pat)
                hits = [n for n in names if rx.search(n)]
            if not hits:
                raise InputError(f"no parameter name equals or matches {pat!r}")
            out.extend(hits)
        return sorted(set(out), key=names.index)

    def freeze(self, patterns: Union[str, Iterable[str], None] = None) -> List[str]:
        """Stops training the parameters named by ``patterns`` (names or regexes; all when
        None). Frozen parameters get no gradient memory, no gradient work and no optimizer
        state. Returns the names frozen. Build the optimizer after freezing."""
        names = self.parameter_names() if patterns is None else self._match(patterns)
        self._core.set_trainable(names, False)
        return names

    def unfreeze(self, patterns: Union[str, Iterable[str], None] = None) -> List[str]:
        """Makes the parameters named by ``patterns`` (all when None) trainable again."""
        names = self.parameter_names() if patterns is None else self._match(patterns)
        self._core.set_trainable(names, True)
        return names

    def requires_grad(self) -> Dict[str, bool]:
        """{parameter name: trainable?}, like torch's ``p.requires_grad``."""
        trainable = set(self._core.trainable_names())
        return {n: n in trainable for n in self.parameter_names()}

    def trainable_parameter_names(self) -> List[str]:
        return self._core.trainable_names()

    def state_dict(self) -> Dict[str, np.ndarray]:
        """{parameter name: float32 array} (copies), transformers' names."""
        return self._core.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike], strict: bool = True) -> None:
        """Copies arrays into the parameters; shapes are checked and nothing changes on error."""
        tensors = []
        for k, v in state_dict.items():
            try:
                tensors.append((str(k), np.ascontiguousarray(v, dtype=np.float32)))
            except (TypeError, ValueError) as e:
                raise InputError(f"state_dict[{str(k)!r}] is not an array of numbers ({type(v).__name__}: {e})") from None
        self._core.load_state_dict(tensors, bool(strict))

    # ---- vocabulary -------------------------------------------------------------------------
    def _vocab_parameters(self) -> List[str]:
        """Names of the parameters with one row per token: the input embedding, then an
        untied ``lm_head`` (tied models have none: the output projection is the embedding)."""
        names = self.parameter_names()
        emb = [n for n in names if n.endswith(("wte.weight", "embed_tokens.weight"))]
        if len(emb) != 1:
            raise FerrotuneError(f"cannot find the token embedding among the parameters: {names[:8]} ...")
        return emb + [n for n in names if n == "lm_head.weight"]

    def resize_token_embeddings(
        self,
        new_num_tokens: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        mean_resizing: bool = True,
        seed: int = 0,
    ) -> int:
        """Resizes the token embedding (and an untied ``lm_head``) to ``new_num_tokens`` rows,
        like transformers' ``resize_token_embeddings``; returns the new number of rows.

        Typically ``model.resize_token_embeddings(len(tokenizer))`` after
        ``tokenizer.add_tokens(...)`` / ``add_special_tokens(...)``. Rows are added or removed
        at the end; the kept rows are unchanged bit for bit; ``config.vocab_size`` is updated.
        ``pad_to_multiple_of`` rounds the size up (alone, it pads the current size).

        New rows, as in transformers: with ``mean_resizing`` (the default) each is drawn from a
        normal distribution with the old rows' mean and 1e-9 times their covariance when that
        matrix is positive definite, else set to the mean (the added tokens then barely change
        the next-token distribution); otherwise from N(0, ``config.initializer_range``). An
        untied ``lm_head`` gets the same treatment from its own rows. The draw uses numpy's
        generator seeded with ``seed``: reproducible, but it cannot equal torch's draw (the
        mean and covariance are the same; the samples differ from the mean by ~1e-5).

        Training state carries over: frozen parameters stay frozen, train/eval mode, gradient
        checkpointing and the dropout generator's state are kept. Build the optimizer (or Trainer) after resizing.
        With LoRA, resize first (PEFT's order), then ``get_peft_model`` with the embedding in
        ``modules_to_save`` (``["wte"]`` for GPT-2, ``["embed_tokens", "lm_head"]`` for an
        untied Llama) so the new rows train and are saved in the adapter file. While it runs, the old
        weights, a copy and the new model coexist (about 3x the weights' memory).
        """
        if self._core.lora_info() is not None:
            raise InputError(
                "resize_token_embeddings on a model with LoRA adapters: resize the base model first, then "
                "call get_peft_model with the embedding in modules_to_save (as with PEFT)"
            )
        emb_name, *head = self._vocab_parameters()
        shapes = dict(self.named_parameter_shapes())
        old_num, dim = shapes[emb_name]
        if pad_to_multiple_of is not None:
            if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
                raise InputError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of!r}")
            if new_num_tokens is None:
                new_num_tokens = old_num
            new_num_tokens = -(-int(new_num_tokens) // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens is None:
            return old_num
        if isinstance(new_num_tokens, bool) or int(new_num_tokens) != new_num_tokens or new_num_tokens < 1:
            raise InputError(f"new_num_tokens must be a positive integer, got {new_num_tokens!r}")
        if new_num_tokens > MAX_DIM:
            raise InputError(f"new_num_tokens must be at most {MAX_DIM} (the largest vocab_size), got {new_num_tokens!r}")
        new_num = int(new_num_tokens)
        if new_num == old_num:
            return old_num

        rng = np.random.default_rng(seed)
        config = json.loads(self._core.config_json())
        std = float(config.get("initializer_range", 0.02))
        state = self.state_dict()
        for name in [emb_name, *head]:
            old = state[name]
            if new_num < old_num:
                state[name] = np.ascontiguousarray(old[:new_num])
                continue
            added = new_num - old_num
            if mean_resizing:
                rows = _mean_resized_rows(old, added, rng)
            else:
                rows = rng.normal(0.0, std, size=(added, dim))
            state[name] = np.concatenate([old, rows.astype(old.dtype)], axis=0)

        config["vocab_size"] = new_num
        frozen = [n for n, trainable in self.requires_grad().items() if not trainable]
        core = type(self._core).from_config(_config_json(config), int(seed))
        core.load_state_dict([(k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()], True)
        if frozen:
            core.set_trainable(frozen, False)
        core.training = self._core.training
        core.rng_state = self._core.rng_state
        core.gradient_checkpointing = self._core.gradient_checkpointing
        self._core = core
        self._vocab_resized = True
        return new_num

    # ---- modes and state ----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Model":
        """Dropout on (like torch's module.train())."""
        self._core.training = bool(mode)
        return self

    def eval(self) -> "Model":
        """Dropout off."""
        return self.train(False)

    @property
    def training(self) -> bool:
        return self._core.training

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[Mapping[str, Any]] = None) -> None:
        """Gradient checkpointing (activation recomputation), as in transformers: the forward
        keeps only each block's input, and the backward runs each block's forward again (with
        the same dropout masks) right before that block's backward. Gradients are the same
        bit for bit; the per-block activations (attention probabilities, MLP hidden states,
        ...) take one block's memory instead of every block's (see ``activation_bytes``), at
        the cost of running every block but the last forward twice per training step.
        ``gradient_checkpointing_kwargs`` is accepted for compatibility (``use_reentrant`` is a
        torch detail that changes nothing here). ``resize_token_embeddings`` keeps the setting."""
        if gradient_checkpointing_kwargs is not None and not isinstance(gradient_checkpointing_kwargs, Mapping):
            raise InputError(f"gradient_checkpointing_kwargs must be a dict or None, got {gradient_checkpointing_kwargs!r}")
        self._core.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keeps every block's activations again (the default)."""
        self._core.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self._core.gradient_checkpointing

    def activation_bytes(self) -> int:
        """Bytes held by the activation buffers of the last forward (0 before the first): what
        the backward reads, adapters' and the classification head's included, plus the
        backward's gradient scratch. Parameters, gradients and optimizer state are not counted.
        The buffers are kept between steps and reallocated when the batch shape changes or
        gradient checkpointing is switched."""
        return self._core.activation_bytes()

    def get_rng_state(self) -> int:
        """The dropout random generator's state (save it to resume a run exactly)."""
        return self._core.rng_state

    def set_rng_state(self, state: int) -> None:
        if isinstance(state, bool) or not isinstance(state, (int, np.integer)) or not 0 <= state < 1 << 64:
            raise InputError(f"rng state must be an integer in [0, 2**64), got {state!r}")
        self._core.rng_state = int(state)

    def save_pretrained(self, save_directory: PathLike) -> None:
        """Writes ``config.json``, ``model.safetensors`` and ``generation_config.json`` that
        transformers loads, all at once: the directory holds either its previous files or
        all the new ones, never a mix, even when the process is killed or a write fails
        (see :func:`ferrotune.io.atomic_directory`; other files in it are kept)."""
        from .io import atomic_directory

        with atomic_directory(save_directory) as out:
            self._core.save_pretrained(out)
            self.generation_config.save_pretrained(out)

    def save_gguf(self, path: PathLike, quantization: str = "f32", tokenizer: Optional[Any] = None, progress: bool = False) -> None:
        """Writes the model and its tokenizer to one GGUF file for llama.cpp / Ollama / LM
        Studio (atomically), as llama.cpp's ``convert_hf_to_gguf.py`` (+ ``llama-quantize``)
        would: ``quantization`` is "f32", "f16", "bf16", "q8_0", "q4_0", "q6_k" or "q4_k_m"
        (llama.cpp's mixture: see ``src/io/gguf_write.rs``); norms and biases stay float32.
        ``tokenizer`` (a byte-level BPE :class:`ferrotune.Tokenizer`) and its chat template
        are embedded. A model with LoRA adapters must be merged first
        (``merge_and_unload()``). Tensors whose rows do not fit the type's blocks fall back
        as llama.cpp does, with a warning. ``progress=True`` shows a bar over the parameters
        quantised; Ctrl-C stops the export and leaves no file. ``Model.from_pretrained(path)``
        reads it back."""
        import warnings

        from .tokenizer import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise InputError(
                "save_gguf needs the model's tokenizer (tokenizer=ferrotune.Tokenizer...): a GGUF file embeds it, "
                f"and llama.cpp cannot run one without; got {type(tokenizer).__name__}"
            )
        template = tokenizer.chat_template
        if isinstance(template, Mapping):
            template = template.get("default")
        name = os.path.basename(os.fspath(self.name_or_path).rstrip("/\\"))
        bar = progress_bar(self.num_parameters(), "Exporting", unit="param", disable=not progress)
        with bar:

            def report(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            _, _, notes = _core.save_gguf(self._core, os.fspath(path), str(quantization), tokenizer._core, template, name, report)
        for note in notes:
            warnings.warn(note, stacklevel=2)

    #: The weights file ``save_pretrained`` writes (checkpoints resume from it).
    weights_name = "model.safetensors"

    def load_weights(self, directory: PathLike) -> None:
        """Loads the weights ``save_pretrained`` wrote into this model (shapes checked)."""
        from .io import load_safetensors

        path = os.path.join(os.fspath(directory), self.weights_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(2, f"No such file or directory: {path}", path)
        self.load_state_dict(load_safetensors(path))

    # ---- generation -----------------------------------------------------------------------
    def generate(
        self,
        input_ids: ArrayLike,
        attention_mask: Optional[ArrayLike] = None,
        max_new_tokens: Optional[int] = None,
        do_sample: Optional[bool] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        eos_token_id: Optional[Union[int, List[int]]] = None,
        pad_token_id: Optional[int] = None,
        num_return_sequences: Optional[int] = None,
        seed: Optional[int] = None,
        stop_strings: Optional[Union[str, List[str]]] = None,
        tokenizer: Any = None,
        streamer: Any = None,
        generation_config: Optional[GenerationConfig] = None,
        max_length: Optional[int] = None,
        weights_dtype: str = "float32",
    ) -> np.ndarray:
        """Generates continuations like transformers' ``generate``; returns int64 token ids
        (batch * num_return_sequences, prompt + new), prompt included.

        Decoding runs in Rust with a KV cache allocated once for prompt + max_new_tokens
        positions: one forward over the prompt, then one token per step. Batched prompts must
        be left-padded (``attention_mask`` 0 on the padding); positions follow transformers
        (cumsum of the mask). Arguments not given come from ``generation_config`` (default:
        the model's, read from ``generation_config.json``), then transformers' defaults
        (max_length 20, greedy; when sampling temperature 1.0, top_k 50, top_p 1.0).

        - greedy (``do_sample=False``) or sampling with ``seed`` (reproducible; random when None)
        - processors in transformers' order: repetition_penalty, then temperature, top_k, top_p,
          min_p (sampling only)
        - ``eos_token_id`` (int or list) ends a row; finished rows get ``pad_token_id``
          (default: the first eos); generation stops when every row is finished
        - ``stop_strings`` (with ``tokenizer``) end a row once its new text contains one
        - ``streamer``: a ``TextStreamer`` / ``TextIteratorStreamer`` (batch size 1)
        - ``weights_dtype="bfloat16"``: decode with bf16 copies of the weight matrices (rounded
          once per call, round-to-nearest-even; activations and sums stay float32). Decoding
          reads every weight once per token, so this nearly doubles tokens/s on a CPU; logits
          move by the rounding (~0.4% of a weight), so greedy text can differ from float32's.
        """
        return _generate(
            self,
            input_ids,
            attention_mask=attention_mask,
            generation_config=generation_config,
            seed=seed,
            tokenizer=tokenizer,
            streamer=streamer,
            max_new_tokens=max_new_tokens,
            max_length=max_length,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            num_return_sequences=num_return_sequences,
            stop_strings=stop_strings,
            weights_dtype=weights_dtype,
        )

    def __repr__(self) -> str:
        d = self.config.to_dict()
        if d.get("model_type") == "gpt2":
            shape = f"{d.get('n_layer')} layers, n_embd={d.get('n_embd')}, n_head={d.get('n_head')}"
        else:  # the Llama family's config.json names
            shape = (
                f"{d.get('num_hidden_layers')} layers, hidden_size={d.get('hidden_size')}, "
                f"heads={d.get('num_attention_heads')}/{d.get('num_key_value_heads', d.get('num_attention_heads'))} (q/kv)"
            )
        return f"Model({d.get('model_type')}: {shape}, vocab_size={d.get('vocab_size')}, {self.num_parameters():,} parameters)"
