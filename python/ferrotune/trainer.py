"""``Trainer``: transformers' fine-tuning loop for ferrotune models, for notebooks.

    >>> args = TrainingArguments(output_dir="out", num_train_epochs=3, per_device_train_batch_size=2,
    ...                          save_steps=200, save_total_limit=2)
    >>> trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=val_rows,
    ...                   processing_class=tokenizer)
    >>> trainer.train()            # progress bar; Ctrl-C stops at a step boundary
    >>> trainer.evaluate()         # eval_loss, eval_perplexity, eval_accuracy, ...
    >>> trainer.save_model("out/final")

What a step does (one optimizer update):

1. take ``gradient_accumulation_steps`` micro-batches and count ``N``, the label tokens that
   count in the loss across all of them (``labels[:, 1:] != -100``: the shift of causal LM);
2. ``model.forward_backward(..., num_items_in_batch=N)`` for each micro-batch, so the
   accumulated gradient is that of the token-mean loss over the whole step — micro-batches
   with different padding give the same update as one big batch (transformers' 2024 fix);
3. clip the global gradient norm to ``max_grad_norm`` (the pre-clip norm is logged as
   ``grad_norm``), set the learning rate from the schedule, ``AdamW.step()``, zero the gradients.

With ``optimizer_in_backward=True`` steps 2 and 3 are one ``AdamW.backward_step`` (the update
fused into the backward; no clipping, one micro-batch per step).

The logged ``loss`` is, as in transformers, the mean of the step losses since the last log,
each step loss being the token-weighted mean over its micro-batches.

Data: a map-style dataset (a list, a ``datasets.Dataset``, anything with ``__len__`` and
``__getitem__``) is read by index and tokenized batch by batch, in an order shuffled per
epoch (a function of ``data_seed`` and the epoch).  A stream (an iterable without a length:
a generator, a ``datasets.IterableDataset``; see :func:`ferrotune.data.is_iterable_dataset`)
is trained as transformers does: ``max_steps`` must be set (there is no length to count
epochs by); rows are read, tokenized (and packed) only as the micro-batches of the next step
are pulled, so only that step's examples are in memory; the Trainer does not shuffle a stream
(shuffle it yourself: ``datasets.IterableDataset.shuffle(buffer_size=...)``; its
``set_epoch`` is called at each pass, so its order changes per pass); when the stream ends
before ``max_steps`` it is iterated again (a new epoch; a one-shot generator that yields
nothing the second time ends training with a warning, as in transformers).  Resuming a
stream consumes (reads, without training on them) the micro-batches the checkpoint's pass had
already used, so a stream that yields the same rows each time it is iterated (a re-iterable
object, a ``datasets.IterableDataset``) continues exactly.

Data-parallel (under ``mpiexec``/``srun``, see :mod:`ferrotune.distributed`): every rank runs
this loop on its shard of the data (``DistributedSampler``'s: one seeded order, rank-strided,
padded so every rank has the same steps; a stream's micro-batches of ``world_size`` times the
batch are split among the ranks). ``N`` in step 1 is summed over the ranks first, and the
gradients are summed over the ranks in place, each block's as soon as the last micro-batch's
backward is done with it (:class:`ferrotune.distributed.GradientReducer`), before clipping
and the update, which every rank then makes alike. Rank 0 alone logs, shows progress and
writes checkpoints and models; evaluation is sharded by batch and its sums and predictions
gathered once. A checkpoint holds every rank's dropout generator; resuming restores each.

Safety:

* A NaN/inf loss or gradient norm raises :class:`ferrotune.NonFiniteError` naming the step;
  that step is not applied (the model keeps the weights of the previous step) and no
  checkpoint is written, so the last good checkpoint stays as it was.
* Ctrl-C (KeyboardInterrupt): a step in progress is abandoned cleanly (its gradients are
  dropped, the dropout RNG is rewound; a step whose optimizer update already ran is
  completed), so the model holds the weights of the last complete step.  With
  ``save_on_interrupt=True`` (default) a checkpoint of that step is written, then the
  KeyboardInterrupt propagates (as in transformers, the cell stops).  ``trainer.train(
  resume_from_checkpoint=True)`` then continues exactly where the uninterrupted run would
  have been: same data order, learning rates, dropout masks, losses and final weights.
* Checkpoints are written into a temporary directory inside ``output_dir`` and renamed into
  place, so a crash or kill during a save never leaves a half-written ``checkpoint-*``;
  ``save_total_limit`` renames an old checkpoint away before deleting it, so a kill never
  leaves a half-deleted one. Resuming only ever picks a complete ``checkpoint-*``; damaged
  JSON files in it raise :class:`ferrotune.CheckpointError` naming the file and key.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from itertools import islice
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union, cast

import numpy as np

from ._core import CheckpointError, ConfigError, DataError, NonFiniteError
from .callbacks import (
    CallbackHandler,
    DefaultFlowCallback,
    ExportableState,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    default_progress_callback,
)
from . import checkpoint, distributed
from .checkpoint import (
    LOOP_STATE_NAME,
    PREFIX_CHECKPOINT_DIR,
    RNG_STATE_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
    get_last_checkpoint,
    write_json,
)
from .integrations import get_reporting_integration_callbacks
from .io import atomic_directory, remove_stale_temporaries
from .metrics import perplexity
from .data import (
    IGNORE_INDEX,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    IndexedDataset,
    classification_example,
    is_iterable_dataset,
    iter_examples,
    pack_stream,
    tokenize_example,
)
from .optimization import LRScheduler, get_scheduler
from .precision import bf16_products
from .training_args import TrainingArguments

__all__ = [
    "Trainer",
    "TrainOutput",
    "PredictionOutput",
    "PREFIX_CHECKPOINT_DIR",
    "get_last_checkpoint",
    "get_decay_parameter_names",
    "get_no_decay_parameter_names",
    "speed_metrics",
]

#: Data-parallel Ctrl-C: how long ranks wait for each other to agree and for rank 0's save.
_STOP_TIMEOUT_S = 120.0


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: Dict[str, float]


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Optional[Dict[str, float]]


# ----------------------------------------------------------------------------- helpers


_NO_DECAY_PATTERNS = [
    re.compile(p)
    for p in (
        r"bias",
        r"layernorm",
        r"rmsnorm",
        r"(?:^|\.)norm(?:$|\.)",
        r"_norm(?:$|\.)",
        r"(?:^|\.)ln_[^.]*\.",  # GPT-2's LayerNorm modules: ln_1, ln_2, ln_f
        r"(?:^|\.)(?:layer_norm|layernorm|norm)[^.]*\.",
    )
]


def get_no_decay_parameter_names(names: Sequence[str]) -> List[str]:
    """Parameters transformers' Trainer excludes from weight decay: biases and norm weights.

    transformers decides by module type (``nn.LayerNorm``) and by name pattern (``bias``,
    ``layernorm``, ``rmsnorm``, ``norm``); ferrotune has only the names, so the LayerNorm
    modules are recognised by their names too (GPT-2: ``ln_1``, ``ln_2``, ``ln_f``;
    Llama/Qwen2/Mistral/Qwen3: ``input_layernorm``, ``post_attention_layernorm``, ``norm``,
    Qwen3's ``q_norm``, ``k_norm``).
    """
    return [n for n in names if any(p.search(n.lower()) for p in _NO_DECAY_PATTERNS)]


def get_decay_parameter_names(names: Sequence[str]) -> List[str]:
    """The complement of :func:`get_no_decay_parameter_names`."""
    no = set(get_no_decay_parameter_names(names))
    return [n for n in names if n not in no]


def speed_metrics(
    split: str,
    start_time: float,
    num_samples: Optional[float] = None,
    num_steps: Optional[float] = None,
    num_tokens: Optional[float] = None,
) -> Dict[str, float]:
    """transformers' ``speed_metrics``: ``<split>_runtime`` and per-second rates."""
    runtime = time.time() - start_time
    result = {f"{split}_runtime": round(runtime, 4)}
    if runtime == 0:
        return result
    if num_samples is not None:
        result[f"{split}_samples_per_second"] = round(num_samples / runtime, 3)
    if num_steps is not None:
        result[f"{split}_steps_per_second"] = round(num_steps / runtime, 3)
    if num_tokens is not None:
        result[f"{split}_tokens_per_second"] = round(num_tokens / runtime, 3)
    return result


def _seed_to_rng_state(seed: int) -> int:
    """A well-mixed non-zero 64-bit RNG state from a seed (splitmix64)."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z = z ^ (z >> 31)
    return z or 1


def _length_grouped_indices(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> List[int]:
    """transformers' ``get_length_grouped_indices``: shuffle, cut into mega-batches of
    ``50 * batch_size`` (fewer for small sets), sort each by length (longest first), and put
    the longest example first so a memory problem shows up at once."""
    n = len(lengths)
    mega_batch_mult = min(n // (batch_size * 4), 50) or 1
    indices = rng.permutation(n).tolist()
    size = mega_batch_mult * batch_size
    megabatches = [indices[i : i + size] for i in range(0, n, size)]
    megabatches = [sorted(mb, key=lambda i: lengths[i], reverse=True) for mb in megabatches]
    maxima = [lengths[mb[0]] for mb in megabatches]
    max_idx = int(np.argmax(maxima))
    megabatches[0][0], megabatches[max_idx][0] = megabatches[max_idx][0], megabatches[0][0]
    return [i for mb in megabatches for i in mb]


def _chunks(items: Iterable[Any], size: int, drop_last: bool) -> Iterator[List[Any]]:
    """Consecutive lists of ``size`` items, the last shorter (or dropped with ``drop_last``)."""
    it = iter(items)
    while True:
        chunk = list(islice(it, size))
        if not chunk or (drop_last and len(chunk) < size):
            return
        yield chunk


def _flos_per_token(model: Any) -> int:
    """transformers' ``floating_point_ops`` per input position: 6 (forward + backward) times the
    parameters outside the embeddings."""
    return 6 * int(model.num_parameters(exclude_embeddings=True))


def _count_label_tokens(labels: np.ndarray) -> int:
    """Tokens that count in a causal-LM loss: labels[:, 1:] != -100 (label t+1 is predicted at t)."""
    return int(np.count_nonzero(labels[..., 1:] != IGNORE_INDEX))


def _pad_concat(arrays: List[np.ndarray], pad: int = IGNORE_INDEX) -> np.ndarray:
    """Concatenate along axis 0, padding axis 1 to the longest (transformers pads with -100)."""
    arrays = [np.asarray(a) for a in arrays]
    if not arrays:
        return np.zeros((0,))
    if arrays[0].ndim < 2 or all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    T = max(a.shape[1] for a in arrays)
    out = []
    for a in arrays:
        if a.shape[1] < T:
            width = [(0, 0)] * a.ndim
            width[1] = (0, T - a.shape[1])
            a = np.pad(a, width, constant_values=pad)
        out.append(a)
    return np.concatenate(out, axis=0)


class _DeferSigint:
    """Hold SIGINT (Ctrl-C) during a short critical section and deliver it afterwards, so an
    optimizer update and the bookkeeping that records it happen together or not at all."""

    def __init__(self) -> None:
        self.received = False
        self.installed = False
        self.old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = True

    def __enter__(self) -> "_DeferSigint":
        if threading.current_thread() is threading.main_thread():
            try:
                self.old = signal.getsignal(signal.SIGINT)
                signal.signal(signal.SIGINT, self._handler)
                self.installed = True
            except (ValueError, OSError, TypeError):
                self.installed = False
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.old)
        if self.received and exc_type is None:
            if callable(self.old):
                self.old(signal.SIGINT, None)
            elif self.old != signal.SIG_IGN:
                raise KeyboardInterrupt


# ----------------------------------------------------------------------------- Trainer


class Trainer:
    """transformers-style training loop (see the module docs).

    Args (as ``transformers.Trainer``):
        model: a ferrotune model (``ferrotune.Model``).
        args: :class:`TrainingArguments` (default: ``TrainingArguments()``, output in ``trainer_output``).
        data_collator: turns a list of tokenized examples into a batch; default
            :class:`~ferrotune.data.DataCollatorForLanguageModeling`.
        train_dataset, eval_dataset: see :mod:`ferrotune.data` for the accepted formats;
            ``eval_dataset`` may also be a dict of named datasets (metrics ``eval_<name>_loss``, ...).
            Either may be a stream (an iterable without a length; see the module docs): training
            on one needs ``args.max_steps > 0``; evaluating one reads it once, batch by batch.
        processing_class: the tokenizer (``tokenizer=`` is accepted as an alias); needed for
            ``text``/``prompt``+``completion`` examples; saved into checkpoints.
        compute_metrics: ``f(EvalPrediction) -> dict`` for extra evaluation metrics; it gets the
            (padded) logits, or what ``preprocess_logits_for_metrics(logits, labels)`` makes of
            them batch by batch (e.g. ``argmax``: memory then stays bounded), and the labels.
        callbacks: extra :class:`TrainerCallback` objects or classes.
        optimizers: ``(optimizer, lr_scheduler)``; either may be None (created from ``args``).
        preprocess_logits_for_metrics: see ``compute_metrics``.
    """

    def __init__(
        self,
        model: Any = None,
        args: Optional[TrainingArguments] = None,
        data_collator: Optional[Callable[[List[Dict[str, Any]]], Dict[str, Any]]] = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Optional[Callable[[], Any]] = None,
        compute_loss_func: Optional[Callable[..., Any]] = None,
        compute_metrics: Optional[Callable[[Any], Dict[str, float]]] = None,
        callbacks: Optional[List[Any]] = None,
        optimizers: Tuple[Any, Any] = (None, None),
        preprocess_logits_for_metrics: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
        *,
        tokenizer: Any = None,
    ) -> None:
        if model is None:
            raise ConfigError("Trainer needs a model")
        if model_init is not None:
            raise ConfigError("model_init is not supported; pass the model")
        if compute_loss_func is not None:
            raise ConfigError("compute_loss_func is not supported: the loss is the causal-LM cross-entropy")
        if processing_class is not None and tokenizer is not None and processing_class is not tokenizer:
            raise ConfigError("pass the tokenizer as processing_class or tokenizer, not both")
        if args is None:
            args = TrainingArguments()
        if not isinstance(args, TrainingArguments):
            raise ConfigError(f"args must be a ferrotune.TrainingArguments, got {type(args).__name__}")
        _check_stream_args(train_dataset, args)
        self.model = model
        self.args = args
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self._user_collator = data_collator is not None
        self.data_collator = data_collator if data_collator is not None else self._default_collator()
        self.optimizer, self.lr_scheduler = optimizers
        self._user_optimizer = self.optimizer is not None
        self._user_scheduler = self.lr_scheduler is not None

        report_to = cast(List[str], args.report_to)  # normalised to a list by TrainingArguments
        # data-parallel: rank 0 alone reports (TensorBoard, jsonl, ...) and shows progress
        reporting = get_reporting_integration_callbacks(report_to) if args.should_log else []
        all_callbacks: List[Any] = [DefaultFlowCallback, *reporting, *(callbacks or [])]
        if args.should_log:
            all_callbacks.append(default_progress_callback(args))
        self.callback_handler = CallbackHandler(
            all_callbacks, self.model, self.processing_class, self.optimizer, self.lr_scheduler
        )
        self.state = TrainerState()
        self.control = TrainerControl()
        self._features_cache: Dict[int, Tuple[Any, IndexedDataset]] = {}
        self._reset_loop_accumulators()
        self._last_saved_step: Optional[int] = None
        self._post: Optional[Dict[str, Any]] = None
        self._reducer: Optional[distributed.GradientReducer] = None
        self.is_in_train = False
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # ------------------------------------------------------------------ callbacks

    def add_callback(self, callback: Any) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: Any) -> Optional[TrainerCallback]:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: Any) -> None:
        self.callback_handler.remove_callback(callback)

    # ------------------------------------------------------------------ data

    def _max_length(self) -> Optional[int]:
        if self.args.max_length is not None:
            return self.args.max_length
        cfg = getattr(self.model, "config", None)
        for key in ("n_positions", "max_position_embeddings", "n_ctx"):
            v = getattr(cfg, key, None)
            if v is None and isinstance(cfg, dict):
                v = cfg.get(key)
            if v:
                return int(v)
        return None

    @property
    def _is_classifier(self) -> bool:
        """A sequence-classification model: one label per example, classification metrics."""
        return getattr(self.model, "num_labels", None) is not None

    def _default_collator(self) -> Any:
        if self._is_classifier:
            cfg_pad = getattr(getattr(self.model, "config", None), "pad_token_id", None)
            tok_pad = getattr(self.processing_class, "pad_token_id", None)
            return DataCollatorWithPadding(self.processing_class, pad_token_id=cfg_pad if cfg_pad is not None else tok_pad)
        pad_id = None if self.processing_class is not None else self._config_pad_id()
        return DataCollatorForLanguageModeling(
            self.processing_class, pad_token_id=pad_id, max_length=None, padding_side="right"
        )

    def _config_pad_id(self) -> Optional[int]:
        """The id to pad with when there is no tokenizer: the config's pad (else first eos) id,
        or None (the collator then pads with 0) when that id is not in the vocabulary. Padding
        has attention_mask 0 and label -100, so its id never changes the loss; it only must be
        a token the model has."""
        cfg = getattr(self.model, "config", None)
        pad_id = getattr(cfg, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(cfg, "eos_token_id", None)
        if isinstance(pad_id, (list, tuple)):
            pad_id = pad_id[0] if pad_id else None
        vocab_size = getattr(cfg, "vocab_size", None)
        if isinstance(pad_id, int) and isinstance(vocab_size, int) and not 0 <= pad_id < vocab_size:
            return None
        return pad_id

    def _featurize(self) -> Callable[[Dict[str, Any], int], Dict[str, Any]]:
        """The function that turns example ``i`` (a dict) into model inputs (tokenized, truncated)."""
        args, tok, max_length = self.args, self.processing_class, self._max_length()
        if self._is_classifier:
            return lambda row, i: classification_example(
                row, tok, max_length, text_field=args.dataset_text_field, index=i
            )
        label_key = args.label_names[0] if args.label_names else "labels"
        return lambda row, i: tokenize_example(
            row, tok, max_length, text_field=args.dataset_text_field, add_eos_token=args.add_eos_token,
            label_key=label_key, index=i,
        )

    def _packs(self) -> bool:
        return self.args.packing and not self._is_classifier

    def _feature_stream(self, rows: Iterable[Tuple[int, Dict[str, Any]]]) -> Iterator[Dict[str, Any]]:
        """Model inputs of ``(index, row)`` pairs, made one by one (packed when ``args.packing``)."""
        featurize = self._featurize()
        feats = (featurize(row, i) for i, row in rows)
        if not self._packs():
            return feats
        max_length = self._max_length()
        if max_length is None:
            raise DataError("packing needs max_length")
        return pack_stream(feats, max_length, getattr(self.processing_class, "eos_token_id", None))

    def _features(self, dataset: Any) -> IndexedDataset:
        """Model inputs of a map-style ``dataset``, read and tokenized on access (the view is
        cached per dataset object).  With ``args.packing`` the blocks depend on every example,
        so the dataset is tokenized and packed once and the blocks are kept."""
        key = id(dataset)
        hit = self._features_cache.get(key)
        if hit is not None and hit[0] is dataset:
            return hit[1]
        text_field = self.args.dataset_text_field if self.processing_class is not None else None
        if self._packs():
            feats = IndexedDataset(list(self._feature_stream(iter_examples(dataset, text_field))))
        else:
            feats = IndexedDataset(dataset, text_field, self._featurize())
        if len(feats) == 0:
            raise DataError("the dataset has no examples")
        self._features_cache[key] = (dataset, feats)
        return feats

    def _stream_batches(self, dataset: Any, batch_size: int, drop_last: bool, skip: int = 0) -> Iterator[List[Dict[str, Any]]]:
        """Micro-batches (lists of model inputs) of one pass over a stream, each read and tokenized
        when it is pulled; the first ``skip`` are consumed without being returned (resume)."""
        text_field = self.args.dataset_text_field if self.processing_class is not None else None
        rows = iter_examples(dataset, text_field)
        if not self._packs():  # skip raw rows: no tokenizing of what is skipped
            rows, skip = islice(rows, skip * batch_size, None), 0
        return islice(_chunks(self._feature_stream(rows), batch_size, drop_last), skip, None)

    def _collate(self, examples: List[Dict[str, Any]]) -> Dict[str, np.ndarray]:
        batch = self.data_collator(examples)
        out = {k: np.ascontiguousarray(np.asarray(v)) for k, v in dict(batch).items()}
        if "input_ids" not in out:
            raise DataError(f"the data collator returned no input_ids (keys {sorted(out)})")
        ids = out["input_ids"].astype(np.int64, copy=False)
        if ids.ndim == 1:
            ids = ids[None, :]
        out["input_ids"] = ids
        if out.get("attention_mask") is None:
            out["attention_mask"] = np.ones_like(ids)
        out["attention_mask"] = out["attention_mask"].astype(np.int64, copy=False).reshape(ids.shape)
        if self._is_classifier:
            if out.get("labels") is None:
                raise DataError("a classification batch needs labels (one per example)")
            out["labels"] = out["labels"].astype(np.int64, copy=False).reshape(ids.shape[0])
            return out
        if out.get("labels") is None:
            out["labels"] = np.where(out["attention_mask"] == 1, ids, IGNORE_INDEX).astype(np.int64)
        out["labels"] = out["labels"].astype(np.int64, copy=False).reshape(ids.shape)
        return out

    def _count_items(self, labels: np.ndarray) -> int:
        """What the loss averages over: label tokens after the shift, or labelled examples."""
        if self._is_classifier:
            return int(np.count_nonzero(labels != IGNORE_INDEX))
        return _count_label_tokens(labels)

    def _epoch_batches(self, feats: IndexedDataset, epoch: int) -> List[List[int]]:
        """The batches (lists of example indices) of ``epoch``: a pure function of
        (data_seed or seed, epoch), which makes resuming exact without replaying RNG draws."""
        args = self.args
        n = len(feats)
        bs = args.per_device_train_batch_size
        rng = self._data_rng(epoch)
        if args.group_by_length:
            order = _length_grouped_indices(feats.lengths(), bs * args.gradient_accumulation_steps * args.world_size, rng)
        else:
            order = rng.permutation(n).tolist()
        # data-parallel: the same order on every rank, each taking its DistributedSampler share
        order = distributed.shard(order)
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        if args.dataloader_drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        return batches

    def _data_seed(self) -> int:
        return int(self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    def _data_rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([abs(self._data_seed()), int(epoch)])

    def _num_batches(self, n: int) -> int:
        """Micro-batches per epoch of each rank, for ``n`` examples in all."""
        bs = self.args.per_device_train_batch_size
        n = math.ceil(n / self.args.world_size)  # a rank's shard (padded: every rank the same)
        return n // bs if self.args.dataloader_drop_last else math.ceil(n / bs)

    # ------------------------------------------------------------------ optimizer / schedule

    def get_decay_parameter_names(self, model: Any = None) -> List[str]:
        model = self.model if model is None else model
        return get_decay_parameter_names(list(model.parameter_names()))

    def create_optimizer(self) -> Any:
        if self.optimizer is None:
            from . import AdamW  # the package exports the Rust-backed optimizer

            names = list(self.model.parameter_names())
            self.optimizer = AdamW(
                self.model,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
                weight_decay=self.args.weight_decay,
                no_decay=get_no_decay_parameter_names(names),
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int) -> LRScheduler:
        if self.lr_scheduler is None:
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type,
                base_lr=self.args.learning_rate,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                **cast(Dict[str, Any], self.args.lr_scheduler_kwargs or {}),
            )
        return self.lr_scheduler

    def _lr_for_step(self, step: int) -> float:
        sched = self.lr_scheduler
        if callable(sched):
            return float(sched(step))
        raise ConfigError(f"the lr scheduler must be callable as sched(step) -> lr, got {type(sched).__name__}")

    # ------------------------------------------------------------------ training

    def _reset_loop_accumulators(self) -> None:
        self._tr_loss_sum = 0.0  # sum of step losses since the last log
        self._globalstep_last_logged = 0
        self._last_grad_norm: Optional[float] = None
        self._last_lr: Optional[float] = None
        self._call_loss_sum = 0.0  # sum of step losses in this train() call (train_loss)
        self._data_position = (0, 0)  # (epoch, micro-batches of it consumed) after the last step

    def train(self, resume_from_checkpoint: Union[None, bool, str, os.PathLike] = None) -> TrainOutput:
        """Train; returns ``TrainOutput(global_step, training_loss, metrics)``.

        ``resume_from_checkpoint``: True (the latest ``checkpoint-*`` in ``output_dir``) or a
        checkpoint directory; when None, ``args.resume_from_checkpoint`` is used.  Resuming
        restores the weights, AdamW moments, schedule position, trainer state, data position
        and dropout RNG, so the run continues exactly as if it had not stopped.

        Ctrl-C stops at a step boundary (see the module docs) and re-raises KeyboardInterrupt.
        ``training_loss`` is the mean step loss of the steps run in this call (as transformers).
        With ``args.bf16`` the whole run (its evaluations included) uses bf16 products
        (``ferrotune.precision``); the precision before the call is restored afterwards.
        """
        if self.args.bf16:
            with bf16_products():
                return self._train(resume_from_checkpoint)
        return self._train(resume_from_checkpoint)

    def _train(self, resume_from_checkpoint: Union[None, bool, str, os.PathLike]) -> TrainOutput:
        args = self.args
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        ckpt: Optional[str] = None
        if resume_from_checkpoint is True or (
            isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() == "latest"
        ):
            ckpt = get_last_checkpoint(args.output_dir)
            if ckpt is None:
                raise CheckpointError(f"no checkpoint-* directory found in output_dir {args.output_dir!r} to resume from")
        elif resume_from_checkpoint not in (None, False):
            ckpt = os.fspath(resume_from_checkpoint)  # type: ignore[arg-type]
            if not os.path.isdir(ckpt):
                raise FileNotFoundError(2, f"No such file or directory: {ckpt}", ckpt)

        if self.train_dataset is None:
            raise DataError("Trainer.train needs a train_dataset")
        if args.gradient_checkpointing:
            if not hasattr(self.model, "gradient_checkpointing_enable"):
                raise ConfigError(f"gradient_checkpointing=True, but {type(self.model).__name__} has no gradient_checkpointing_enable()")
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
        _check_stream_args(self.train_dataset, args)
        os.makedirs(args.output_dir, exist_ok=True)
        if args.should_save:
            self._remove_stale_tmp_dirs()
        ga = args.gradient_accumulation_steps
        streaming = is_iterable_dataset(self.train_dataset)
        feats: Optional[IndexedDataset] = None
        if streaming:
            # as transformers for a dataset without a length: max_steps bounds the run, one
            # "epoch" is max_steps updates unless the stream ends first
            upe = max_steps = args.max_steps
            num_train_epochs = sys.maxsize
        else:
            feats = self._features(self.train_dataset)
            len_dataloader = self._num_batches(len(feats))
            if len_dataloader == 0:
                raise DataError(
                    f"the training set ({len(feats)} examples) gives no batch of {args.per_device_train_batch_size} "
                    "with dataloader_drop_last=True"
                )
            upe = max(len_dataloader // ga + int(len_dataloader % ga > 0), 1)
            if args.max_steps > 0:
                max_steps = args.max_steps
                num_train_epochs = max_steps // upe + int(max_steps % upe > 0)
            else:
                max_steps = math.ceil(args.num_train_epochs * upe)
                num_train_epochs = math.ceil(args.num_train_epochs)

        self.is_in_train = True
        self.state = TrainerState()
        self.state.train_batch_size = args.per_device_train_batch_size
        self.state.compute_steps(args, max_steps)
        self.control = TrainerControl()
        self._reset_loop_accumulators()
        self._last_saved_step = None
        self._post = None
        if not self._user_optimizer:
            self.optimizer = None
        if not self._user_scheduler:
            self.lr_scheduler = None
        self.create_optimizer()
        if args.optimizer_in_backward and not hasattr(self.optimizer, "backward_step"):
            raise ConfigError(
                f"optimizer_in_backward=True needs ferrotune.AdamW (its backward_step), got {type(self.optimizer).__name__}"
            )
        self.create_scheduler(max_steps)
        self._flos_per_token = _flos_per_token(self.model)
        self.model.zero_grad()
        # data-parallel: the gradients are summed over the ranks during each step's last backward
        # (with optimizer_in_backward, inside the fused step: each block's before its update)
        overlapped = args.world_size > 1 and not args.optimizer_in_backward
        self._reducer = distributed.GradientReducer(self.model) if overlapped else None
        if hasattr(self.model, "set_rng_state"):
            # each rank its own dropout masks (rank 0's are those of a single process)
            self.model.set_rng_state(_seed_to_rng_state(args.seed + 1_000_003 * args.process_index))

        epochs_trained = 0
        steps_trained_in_current_epoch = 0
        loop_state: Dict[str, Any] = {}
        if ckpt is not None:
            loop_state = self._load_checkpoint(ckpt)
            epochs_trained = self.state.global_step // upe
            if not args.ignore_data_skip:
                steps_trained_in_current_epoch = self.state.global_step % upe
            if streaming:
                # where the stream stood; a checkpoint without it: transformers' guess (pass 0,
                # global_step * ga micro-batches in)
                pos = loop_state.get("data_position") or {"epoch": 0, "batches": self.state.global_step * ga}
                if not (isinstance(pos.get("epoch"), int) and isinstance(pos.get("batches"), int)):
                    raise CheckpointError(
                        f"{os.path.join(ckpt, LOOP_STATE_NAME)}: data_position must be "
                        f"{{'epoch': int, 'batches': int}}, got {pos!r}"
                    )
                epochs_trained = pos["epoch"]
                steps_trained_in_current_epoch = 0 if args.ignore_data_skip else pos["batches"]
                self._data_position = (epochs_trained, steps_trained_in_current_epoch)
            else:
                self._data_position = (epochs_trained, steps_trained_in_current_epoch * ga)
        self.state.max_steps = max_steps
        self.state.num_train_epochs = num_train_epochs
        self.state.compute_steps(args, max_steps)
        self.state.is_local_process_zero = args.local_process_index == 0
        self.state.is_world_process_zero = args.process_index == 0
        for attr in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, attr, getattr(self, attr))
        self.callback_handler.train_dataloader = None

        if hasattr(self.model, "train"):
            self.model.train()
        start_time = self._train_start_time = time.time()
        self._initial_global_step = self.state.global_step
        self._initial_tokens = self.state.num_input_tokens_seen
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        try:
            if loop_state.get("post"):
                # the checkpoint was written by an interrupt inside a step's (or epoch's) logging /
                # evaluation / saving: restore the control flags of that moment and finish it
                saved_control = (self.state.stateful_callbacks or {}).get("TrainerControl")
                if isinstance(saved_control, dict):
                    for k, v in saved_control.get("args", {}).items():
                        if hasattr(self.control, k):
                            setattr(self.control, k, bool(v))
                self._replay_post_processing(loop_state["post"], upe)
            if args.eval_on_start and ckpt is None:
                self._evaluate_and_track()
            if feats is None:
                self._train_stream(max_steps, epochs_trained, steps_trained_in_current_epoch)
            else:
                self._train_epochs(feats, upe, epochs_trained, num_train_epochs, steps_trained_in_current_epoch)
        except KeyboardInterrupt as exc:
            self._on_interrupt(exc)
            raise
        except BaseException as exc:
            self.is_in_train = False
            self.callback_handler.on_train_abort(args, self.state, self.control, error=exc)
            raise
        return self._finalize_training(start_time)

    def _train_epochs(
        self, feats: IndexedDataset, upe: int, first_epoch: int, num_train_epochs: int, skip_steps: int
    ) -> None:
        """The epochs of a map-style dataset; the first one resumes after ``skip_steps`` updates."""
        args, ga = self.args, self.args.gradient_accumulation_steps
        for epoch in range(first_epoch, num_train_epochs):
            if self.control.should_training_stop or self.state.global_step >= self.state.max_steps:
                break
            batches = self._epoch_batches(feats, epoch)
            self.callback_handler.train_dataloader = batches
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            skip = skip_steps if epoch == first_epoch else 0
            for update_step in range(skip, upe):
                group = batches[update_step * ga : (update_step + 1) * ga]
                if not group:
                    break
                examples = [[feats[i] for i in idx] for idx in group]
                self._training_step(examples, epoch, update_step * ga, len(batches))
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            self._end_epoch(epoch)
            if self.control.should_training_stop:
                break

    def _train_stream(self, max_steps: int, first_epoch: int, skip_batches: int) -> None:
        """Passes over a stream until ``max_steps`` updates; the first one resumes after
        ``skip_batches`` micro-batches (consumed, not trained on)."""
        args, ga = self.args, self.args.gradient_accumulation_steps
        # transformers' epoch fraction for a dataset without a length: micro-batches / (max_steps * ga)
        steps_in_epoch = max_steps * ga
        epoch, consumed = first_epoch, skip_batches
        while not self.control.should_training_stop and self.state.global_step < max_steps:
            set_epoch = getattr(self.train_dataset, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)  # a datasets.IterableDataset reshuffles per epoch
            # data-parallel: each micro-batch of the world is split among the ranks (as transformers'
            # IterableDatasetShard; a short last one is padded from its own start)
            global_batches = self._stream_batches(
                self.train_dataset, args.per_device_train_batch_size * args.world_size, args.dataloader_drop_last,
                skip=consumed,
            )
            batches = (distributed.shard(b) for b in global_batches)
            self.callback_handler.train_dataloader = self.train_dataset
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            empty_pass = consumed == 0
            while self.state.global_step < max_steps:
                # pull the step's micro-batches first: num_items_in_batch counts all of them
                group = list(islice(batches, ga))
                if not group:
                    break
                empty_pass = False
                self._training_step(group, epoch, consumed, steps_in_epoch)
                consumed += len(group)
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            if empty_pass:
                if self.state.global_step == 0:
                    raise DataError("the train_dataset stream yielded no examples (or no full batch with dataloader_drop_last)")
                warnings.warn(
                    f"the train_dataset stream yielded nothing when iterated again (a one-shot generator?): "
                    f"training stops at step {self.state.global_step} of max_steps={max_steps}"
                )
                self.control.should_training_stop = True
            self._end_epoch(epoch)
            epoch, consumed = epoch + 1, 0

    def _end_epoch(self, epoch: int) -> None:
        """``on_epoch_end``, then its logging/evaluation/saving (a checkpoint written here resumes
        at the start of the next epoch)."""
        self._data_position = (epoch + 1, 0)
        self._post = {"kind": "epoch", "flags_decided": False}
        self.control = self.callback_handler.on_epoch_end(self.args, self.state, self.control)
        self._post["flags_decided"] = True
        self._maybe_log_save_evaluate()
        self._post = None

    def _training_step(
        self,
        examples: List[List[Dict[str, Any]]],
        epoch: int,
        first_micro: int,
        steps_in_epoch: int,
    ) -> None:
        """One optimizer update over the micro-batches ``examples`` (micro-batches
        ``first_micro``, ... of ``epoch``), then logging/eval/saving."""
        args, model, state = self.args, self.model, self.state
        step_no = state.global_step + 1  # 1-based number of the step being computed
        self.control = self.callback_handler.on_step_begin(args, state, self.control)
        batches = [self._collate(ex) for ex in examples]
        counts = [self._count_items(b["labels"]) for b in batches]
        num_items = sum(counts)
        # every position of every micro-batch, padding included (as transformers' flos)
        positions = sum(int(b["input_ids"].size) for b in batches)
        if args.include_num_input_tokens_seen == "all":
            tokens = positions
        else:
            tokens = sum(int(np.count_nonzero(b["attention_mask"])) for b in batches)
        reducer, data_parallel = self._reducer, args.world_size > 1
        if data_parallel:
            # the loss is the mean over the tokens of all ranks' micro-batches
            num_items, tokens, positions = (int(x) for x in distributed.all_reduce_sum([num_items, tokens, positions]))
        rng0 = model.get_rng_state() if hasattr(model, "get_rng_state") else None
        applied = False
        committed = False
        step_loss = 0.0
        grad_norm: Optional[float] = None
        lr = 0.0

        def commit() -> None:
            nonlocal committed
            state.global_step += 1
            state.epoch = epoch + (first_micro + len(batches)) / steps_in_epoch
            state.num_input_tokens_seen += tokens
            state.total_flos += float(self._flos_per_token * positions)
            self._data_position = (epoch, first_micro + len(batches))
            self._tr_loss_sum += step_loss
            self._call_loss_sum += step_loss
            self._last_grad_norm = grad_norm
            self._last_lr = lr
            self._post = {"kind": "step", "flags_decided": False}
            committed = True

        try:
            if num_items == 0:
                warnings.warn(
                    f"step {step_no}: no label token counts in this step's batches (all -100); "
                    "its loss is 0 and its gradient is zero"
                )
            for i, (b, n_i) in enumerate(zip(batches, counts)):
                if n_i == 0 and not args.optimizer_in_backward:
                    continue  # contributes nothing to the loss or the gradient (nor to the reduction hook)
                try:
                    if args.optimizer_in_backward:
                        lr = self._lr_for_step(state.global_step)
                        self.optimizer.lr = lr
                        self.control = self.callback_handler.on_pre_optimizer_step(args, state, self.control)
                        # data-parallel: each block's update waits for the sum of its gradients
                        reduce = {"reduce_gradients": distributed.all_reduce_array} if data_parallel else {}
                        with _DeferSigint():
                            loss_i = self.optimizer.backward_step(
                                b["input_ids"],
                                labels=b["labels"],
                                attention_mask=b["attention_mask"],
                                num_items_in_batch=num_items,
                                **reduce,
                            )
                            applied = True
                        grad_norm = float(self.optimizer.grad_norm)
                        step_loss = float(loss_i) * (n_i / num_items) if n_i else 0.0
                        break
                    # data-parallel: the last micro-batch's backward starts each block's reduction
                    # as soon as the block is done (earlier ones only accumulate, as DDP's no_sync)
                    hook = {"on_block_done": reducer.begin()} if reducer is not None and i == len(batches) - 1 else {}
                    loss_i = model.forward_backward(
                        b["input_ids"],
                        labels=b["labels"],
                        attention_mask=b["attention_mask"],
                        num_items_in_batch=num_items,
                        **hook,
                    )
                except NonFiniteError as e:
                    raise NonFiniteError(
                        f"non-finite values at step {step_no} (epoch {epoch}, micro-batch {i + 1} of "
                        f"{len(batches)}): {e}. The step was not applied; the model keeps the weights of step "
                        f"{step_no - 1}."
                    ) from e
                loss_i = float(loss_i)
                if not math.isfinite(loss_i):
                    raise NonFiniteError(
                        f"the loss is {loss_i} at step {step_no} (epoch {epoch}, micro-batch {i + 1} of "
                        f"{len(batches)}). The step was not applied; the model keeps the weights of step "
                        f"{step_no - 1}{self._last_checkpoint_note()}."
                    )
                step_loss += loss_i * n_i / num_items
                if i < len(batches) - 1:
                    self.control = self.callback_handler.on_substep_end(args, state, self.control)
            if reducer is not None:
                reducer.finish()  # issues what the hook has not (all of it when no backward ran) and waits
            if data_parallel:
                step_loss = distributed.all_reduce_sum([step_loss])[0]
            if not args.optimizer_in_backward:
                max_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
                grad_norm = float(model.clip_grad_norm(max_norm))
                if not math.isfinite(grad_norm):
                    raise NonFiniteError(
                        f"the gradient norm is {grad_norm} at step {step_no} (loss {step_loss}). The step was not "
                        f"applied; the model keeps the weights of step {step_no - 1}{self._last_checkpoint_note()}."
                    )
                self.control = self.callback_handler.on_pre_optimizer_step(args, state, self.control)
                lr = self._lr_for_step(state.global_step)
                self.optimizer.lr = lr
                with _DeferSigint():
                    self.optimizer.step()
                    applied = True
            self.control = self.callback_handler.on_optimizer_step(args, state, self.control)
            model.zero_grad()
            with _DeferSigint():
                commit()
        except BaseException:
            model.zero_grad()
            if not applied:
                if rng0 is not None:
                    model.set_rng_state(rng0)
            elif not committed:
                commit()
            raise

        self.control = self.callback_handler.on_step_end(args, state, self.control)
        assert self._post is not None
        self._post["flags_decided"] = True
        self._maybe_log_save_evaluate()
        self._post = None

    def _last_checkpoint_note(self) -> str:
        last = get_last_checkpoint(self.args.output_dir)
        return f"; the last checkpoint ({last}) is intact" if last else ""

    def _replay_post_processing(self, post: Dict[str, Any], upe: int) -> None:
        """Finish the logging/evaluation/saving of the step (or epoch end) an interrupt cut short."""
        flow = DefaultFlowCallback()
        if post.get("kind") == "step":
            if not post.get("flags_decided"):
                self.control = flow.on_step_end(self.args, self.state, self.control) or self.control
            self._maybe_log_save_evaluate()
            end_of_epoch = self.state.global_step % upe == 0
            if end_of_epoch or self.control.should_training_stop or self.state.global_step >= self.state.max_steps:
                post = {"kind": "epoch", "flags_decided": False}
        if post.get("kind") == "epoch":
            if not post.get("flags_decided"):
                self.control = flow.on_epoch_end(self.args, self.state, self.control) or self.control
            self._maybe_log_save_evaluate()
        self._post = None

    def _maybe_log_save_evaluate(self) -> None:
        args, state = self.args, self.state
        if self.control.should_log and state.global_step > self._globalstep_last_logged:
            logs: Dict[str, Any] = {}
            logs["loss"] = self._tr_loss_sum / (state.global_step - self._globalstep_last_logged)
            if self._last_grad_norm is not None:
                logs["grad_norm"] = self._last_grad_norm
            if self._last_lr is not None:
                logs["learning_rate"] = self._last_lr
            self._tr_loss_sum = 0.0
            self._globalstep_last_logged = state.global_step
            self.log(logs, self._train_start_time)
        if self.control.should_evaluate:
            is_new_best = self._evaluate_and_track()
            if args.save_strategy == "best":
                self.control.should_save = is_new_best
        if self.control.should_save:
            self._save_checkpoint()
            self.control = self.callback_handler.on_save(args, state, self.control)

    def _evaluate_and_track(self) -> bool:
        metrics = self.evaluate()
        return self._determine_best_metric(metrics)

    def _determine_best_metric(self, metrics: Dict[str, float]) -> bool:
        args, state = self.args, self.state
        if args.metric_for_best_model is None:
            return False
        key = args.metric_for_best_model
        if not key.startswith("eval_"):
            key = f"eval_{key}"
        if key not in metrics:
            raise ConfigError(
                f"metric_for_best_model={args.metric_for_best_model!r} ({key}) is not among the evaluation "
                f"metrics {sorted(metrics)}"
            )
        value = float(metrics[key])
        if state.best_metric is None:
            better = not math.isnan(value)
        else:
            better = value > state.best_metric if args.greater_is_better else value < state.best_metric
        if better:
            state.best_metric = value
            if args.save_strategy in ("steps", "epoch", "best"):
                state.best_global_step = state.global_step
        return better

    def _finalize_training(self, start_time: float) -> TrainOutput:
        args, state = self.args, self.state
        steps = state.global_step - self._initial_global_step
        train_loss = self._call_loss_sum / max(steps, 0.001)
        # as transformers: samples of the whole schedule, scaled to the share of steps run in this call
        if args.max_steps > 0:
            total_samples = float(
                args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            )
        else:
            total_samples = len(self._features(self.train_dataset)) * float(args.num_train_epochs)
        num_samples = total_samples * steps / max(state.max_steps, 1)
        metrics = speed_metrics(
            "train",
            start_time,
            num_samples=num_samples,
            num_steps=steps,
            num_tokens=state.num_input_tokens_seen - self._initial_tokens,
        )
        metrics["total_flos"] = state.total_flos
        metrics["train_loss"] = train_loss
        self.is_in_train = False
        self.log(metrics)
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            if os.path.isdir(state.best_model_checkpoint):
                self._load_model_weights(state.best_model_checkpoint)
            else:
                warnings.warn(f"the best checkpoint {state.best_model_checkpoint} no longer exists; keeping the last weights")
        self.control = self.callback_handler.on_train_end(args, state, self.control)
        return TrainOutput(state.global_step, train_loss, metrics)

    def _on_interrupt(self, exc: BaseException) -> None:
        args, state = self.args, self.state
        self.is_in_train = False
        where = f"step {state.global_step}"
        saved = None
        needs_save = state.global_step > 0 and (self._last_saved_step != state.global_step or self._post is not None)
        rng_states: Optional[List[Optional[int]]] = None
        if args.world_size > 1:
            # mpiexec/srun pass Ctrl-C to every rank, each stopping at its own point: rank 0
            # saves its step with every rank's RNG state when all stopped after the same step
            rng = int(self.model.get_rng_state()) if hasattr(self.model, "get_rng_state") else 0
            rows = distributed.agree_on_stop([state.global_step, rng], timeout=_STOP_TIMEOUT_S)
            if rows is not None and len(set(rows[:, 0].tolist())) == 1:
                rng_states = [int(x) for x in rows[:, 1]]
            else:
                if args.should_save:
                    warnings.warn(
                        "the ranks stopped after different steps (or some did not stop): the interrupt checkpoint "
                        "holds rank 0's step, and resuming draws new dropout masks on the other ranks"
                    )
                rng_states = [rng] + [None] * (args.world_size - 1)
        if args.save_on_interrupt and not args.save_only_model and needs_save:
            try:
                saved = self._save_checkpoint(interrupt=True, rng_states=rng_states)
            except BaseException as save_exc:  # noqa: BLE001 - the interrupt must still propagate
                warnings.warn(f"could not save the interrupt checkpoint: {save_exc!r}")
        elif state.global_step > 0 and self._last_saved_step == state.global_step:
            saved = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        # no rank may end the job (MPI_Abort) before rank 0 has written the checkpoint
        distributed.barrier(timeout=_STOP_TIMEOUT_S, _comm=distributed.init().stop_comm)
        msg = f"Training interrupted after {where} (epoch {state.epoch:.3f}); the model holds the weights of {where}."
        if saved:
            msg += f" Checkpoint: {saved}. Continue with trainer.train(resume_from_checkpoint=True)."
        if args.should_log:
            print(msg)
        self.callback_handler.on_train_abort(args, state, self.control, error=exc)

    # ------------------------------------------------------------------ logging

    def log(self, logs: Dict[str, Any], start_time: Optional[float] = None) -> None:
        """Record ``logs`` (with ``epoch`` and ``step``) in ``state.log_history`` and call ``on_log``.
        When tokens are counted (``include_num_input_tokens_seen``) the logs carry the count and,
        given the training's ``start_time``, ``train_runtime``/``train_tokens_per_second`` so far
        (as transformers)."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen != "no":
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            if start_time is not None:
                tokens = self.state.num_input_tokens_seen - self._initial_tokens
                logs.update(speed_metrics("train", start_time, num_tokens=tokens))
        output = {**logs, "step": self.state.global_step}
        self.state.log_history.append(output)
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    # ------------------------------------------------------------------ evaluation

    def _is_dataset_dict(self, ds: Any) -> bool:
        if not isinstance(ds, dict) or not ds:
            return False
        for v in ds.values():
            if hasattr(v, "column_names"):
                continue
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
                continue
            return False
        return True

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: Optional[List[str]] = None,
        metric_key_prefix: str = "eval",
    ) -> Dict[str, float]:
        """Evaluate; returns ``<prefix>_loss`` (token-mean cross-entropy), ``<prefix>_perplexity``
        (``exp`` of it), ``<prefix>_accuracy`` (next-token argmax accuracy), runtime and
        throughput, and what ``compute_metrics`` returns (prefixed).

        The loss, perplexity and accuracy come from the model's forward-only statistics: no
        (N, T, V) logits are kept.  Logits are computed (batch by batch, reduced by
        ``preprocess_logits_for_metrics`` when given) only when ``compute_metrics`` is set.
        Note: transformers averages per-batch mean losses; ferrotune weights every label token
        equally, which does not depend on the batch size.
        """
        override = eval_dataset is not None
        ds = eval_dataset if override else self.eval_dataset
        if ds is None:
            raise DataError("Trainer.evaluate needs an eval_dataset")
        if self._is_dataset_dict(ds):
            metrics: Dict[str, float] = {}
            for name, sub in ds.items():
                metrics.update(self.evaluate(sub, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        start = time.time()
        want_preds = self.compute_metrics is not None and not self.args.prediction_loss_only
        metrics, _, _, n_samples, n_batches = self._evaluation_loop(ds, metric_key_prefix, want_preds)
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=n_samples, num_steps=n_batches))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(
        self,
        test_dataset: Any,
        ignore_keys: Optional[List[str]] = None,
        metric_key_prefix: str = "test",
    ) -> PredictionOutput:
        """Logits (or ``preprocess_logits_for_metrics`` of them) and labels of ``test_dataset``,
        padded with -100 to a common length, plus the metrics ``evaluate`` would report."""
        start = time.time()
        metrics, preds, labels, n_samples, n_batches = self._evaluation_loop(test_dataset, metric_key_prefix, True)
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=n_samples, num_steps=n_batches))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        return PredictionOutput(predictions=preds, label_ids=labels, metrics=metrics)

    def _evaluation_loop(
        self, dataset: Any, prefix: str, want_preds: bool
    ) -> Tuple[Dict[str, float], Any, Any, int, int]:
        bs = self.args.per_device_eval_batch_size
        world, rank = self.args.world_size, self.args.process_index
        batches: Iterable[List[Dict[str, Any]]]
        if is_iterable_dataset(dataset):
            batches = self._stream_batches(dataset, bs, drop_last=False)
            self.callback_handler.eval_dataloader = dataset
        else:
            feats = self._features(dataset)
            index_batches = [range(i, min(i + bs, len(feats))) for i in range(0, len(feats), bs)]
            self.callback_handler.eval_dataloader = index_batches
            # data-parallel: batch k goes to rank k % world (read only there)
            batches = ([feats[i] for i in idx] for idx in index_batches[rank::world])
        if world > 1 and is_iterable_dataset(dataset):
            batches = islice(batches, rank, None, world)
        n_samples = n_batches = 0
        model = self.model
        was_training = bool(getattr(model, "training", False))
        loss_sum = 0.0
        n_tokens = 0
        n_correct = 0
        preds: List[np.ndarray] = []
        labels_all: List[np.ndarray] = []
        if hasattr(model, "eval"):
            model.eval()
        classifier = self._is_classifier
        try:
            for examples in batches:
                n_samples += len(examples)
                n_batches += 1
                b = self._collate(examples)
                if classifier:
                    # (B, L) logits are small: keep them for the classification metrics
                    out = model(b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
                    n = self._count_items(b["labels"])
                    if n:
                        loss_sum += float(out.loss) * n
                    n_tokens += n
                    preds.append(np.asarray(out.logits))
                    labels_all.append(b["labels"])
                elif want_preds:
                    out = model(b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
                    logits = np.asarray(out.logits)
                    n = _count_label_tokens(b["labels"])
                    if n:
                        loss_sum += float(out.loss) * n
                        shifted = b["labels"][:, 1:]
                        hits = (np.argmax(logits[:, :-1, :], axis=-1) == shifted) & (shifted != IGNORE_INDEX)
                        n_correct += int(np.count_nonzero(hits))
                    n_tokens += n
                    p = logits
                    if self.preprocess_logits_for_metrics is not None:
                        p = np.asarray(self.preprocess_logits_for_metrics(logits, b["labels"]))
                    preds.append(p)
                    labels_all.append(b["labels"])
                    del out, logits
                else:
                    s, n, c = model.loss_stats(b["input_ids"], labels=b["labels"], attention_mask=b["attention_mask"])
                    loss_sum += float(s)
                    n_tokens += int(n)
                    n_correct += int(c)
                self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        finally:
            if hasattr(model, "train") and was_training:
                model.train()
        if world > 1:
            # the ranks' sums, and their batches' predictions back in dataset order (batch k from rank k % world)
            loss_sum, n_tokens, n_correct, n_samples, n_batches = distributed.all_reduce_sum(
                [loss_sum, n_tokens, n_correct, n_samples, n_batches]
            )
            n_tokens, n_correct, n_samples, n_batches = int(n_tokens), int(n_correct), int(n_samples), int(n_batches)
            if want_preds or classifier:
                per_rank = distributed.gather((preds, labels_all))
                preds = [per_rank[k % world][0][k // world] for k in range(n_batches)]
                labels_all = [per_rank[k % world][1][k // world] for k in range(n_batches)]
        if n_batches == 0:
            raise DataError("the evaluation stream yielded no examples")
        loss = loss_sum / n_tokens if n_tokens else float("nan")
        all_preds: Optional[np.ndarray]
        all_labels: Optional[np.ndarray]
        if classifier:
            from .metrics import classification_scores

            logits, labels = np.concatenate(preds), np.concatenate(labels_all)
            keep = labels != IGNORE_INDEX
            y_true, y_pred = labels[keep], np.argmax(logits[keep], axis=-1)
            all_preds, all_labels = logits, labels
            metrics: Dict[str, float] = {
                f"{prefix}_loss": loss,
                **{f"{prefix}_{k}": float(v) for k, v in classification_scores(y_true, y_pred).items()},
            }
        else:
            metrics = {
                f"{prefix}_loss": loss,
                f"{prefix}_perplexity": perplexity(loss),
                f"{prefix}_accuracy": n_correct / n_tokens if n_tokens else float("nan"),
            }
            all_preds = _pad_concat(preds) if want_preds else None
            all_labels = _pad_concat(labels_all) if want_preds else None
        if want_preds and self.compute_metrics is not None and not self.args.prediction_loss_only:
            from .metrics import EvalPrediction

            extra = self.compute_metrics(EvalPrediction(predictions=all_preds, label_ids=all_labels))
            for k, v in dict(extra or {}).items():
                key = k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"
                metrics[key] = v
        return metrics, all_preds, all_labels, n_samples, n_batches

    # ------------------------------------------------------------------ saving

    def save_model(self, output_dir: Optional[Union[str, os.PathLike]] = None) -> None:
        """Save the model (``config.json`` + ``model.safetensors``), the tokenizer and
        ``training_args.json``, all at once (see :func:`ferrotune.io.atomic_directory`: the
        directory holds its previous files or all the new ones; other files in it are kept).
        Data-parallel, only rank 0 writes (``args.should_save``; the ranks' weights are equal)."""
        if not self.args.should_save:
            return
        out = os.fspath(output_dir) if output_dir is not None else self.args.output_dir
        with atomic_directory(out) as tmp:
            self.model.save_pretrained(tmp)
            if self.processing_class is not None and hasattr(self.processing_class, "save_pretrained"):
                self.processing_class.save_pretrained(tmp)
            with open(os.path.join(tmp, TRAINING_ARGS_NAME), "w", encoding="utf-8") as f:
                f.write(self.args.to_json_string())

    def save_state(self) -> None:
        """Write ``trainer_state.json`` into ``output_dir`` (as transformers' ``save_state``; rank 0 only)."""
        if not self.args.should_save:
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        self.state.save_to_json(os.path.join(self.args.output_dir, TRAINER_STATE_NAME))

    def _remove_stale_tmp_dirs(self) -> None:
        """Removes what killed saves and rotations left in ``output_dir`` (hidden temporaries)."""
        remove_stale_temporaries(self.args.output_dir)

    def _save_checkpoint(self, interrupt: bool = False, rng_states: Optional[List[Optional[int]]] = None) -> str:
        """Write ``output_dir/checkpoint-<step>`` atomically (it replaces a checkpoint of the
        same step wholesale), then rotate. Data-parallel, every rank calls it: rank 0 writes
        (with every rank's dropout RNG state, ``rng_states`` when already gathered) while the
        others wait, so that all of them find the checkpoint once it returns."""
        args, state = self.args, self.state
        if rng_states is None:
            rng_states = self._gather_rng_states()
        run_dir = args.output_dir
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

        if state.best_global_step:
            best_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
            if state.best_global_step == state.global_step or os.path.exists(best_dir):
                state.best_model_checkpoint = best_dir
        self._store_callback_states()
        if args.should_save:
            with atomic_directory(final, keep_other_files=False) as tmp:
                self.save_model(tmp)
                if not args.save_only_model:
                    checkpoint.save_optimizer(self.optimizer, tmp)
                    self._save_scheduler(tmp)
                    self._save_rng_state(tmp, rng_states)
                    write_json(os.path.join(tmp, LOOP_STATE_NAME), self._loop_state(interrupt))
                state.save_to_json(os.path.join(tmp, TRAINER_STATE_NAME))
            checkpoint.rotate_checkpoints(run_dir, args.save_total_limit, state.best_model_checkpoint)
        if not interrupt:
            distributed.barrier()
        self._last_saved_step = state.global_step
        return final

    def _store_callback_states(self) -> None:
        states: Dict[str, Any] = {}
        for cb in self.callback_handler.callbacks + [self.control]:
            if isinstance(cb, ExportableState):
                name = cb.__class__.__name__
                s = cb.state()
                if name in states:
                    if not isinstance(states[name], list):
                        states[name] = [states[name]]
                    states[name].append(s)
                else:
                    states[name] = s
        self.state.stateful_callbacks = states

    def _loop_state(self, interrupt: bool) -> Dict[str, Any]:
        epoch, batches = self._data_position
        return {
            # where the data stood after the last step: a stream resumes from here
            "data_position": {"epoch": epoch, "batches": batches},
            "tr_loss_sum": self._tr_loss_sum,
            "globalstep_last_logged": self._globalstep_last_logged,
            "last_grad_norm": self._last_grad_norm,
            "last_learning_rate": self._last_lr,
            # logging/eval/saving that an interrupt cut short, finished on resume
            "post": dict(self._post) if (interrupt and self._post is not None) else None,
        }

    def _save_scheduler(self, out: str) -> None:
        sched = self.lr_scheduler
        d: Dict[str, Any] = sched.state_dict() if hasattr(sched, "state_dict") else {"name": repr(sched)}
        d = dict(d)
        d["last_step"] = self.state.global_step
        d["last_lr"] = self._last_lr
        write_json(os.path.join(out, SCHEDULER_NAME), d)

    def _gather_rng_states(self) -> List[Optional[int]]:
        """Every rank's dropout RNG state, by rank."""
        if not hasattr(self.model, "get_rng_state"):
            return [None]
        states = distributed.all_gather_u64([int(self.model.get_rng_state())])
        assert states is not None  # no timeout
        return [int(x) for x in states[:, 0]]

    def _save_rng_state(self, out: str, rng_states: List[Optional[int]]) -> None:
        epoch = self._data_position[0]
        d: Dict[str, Any] = {
            "model_rng_state": rng_states[0],
            "data_seed": self._data_seed(),
            "epoch": epoch,
            # the generator that orders this epoch's data (a function of data_seed and epoch)
            "numpy_generator": self._data_rng(epoch).bit_generator.state,
        }
        if len(rng_states) > 1:
            # data-parallel: every rank's dropout generator, by rank
            d["world_size"] = len(rng_states)
            d["model_rng_states"] = rng_states
        write_json(os.path.join(out, RNG_STATE_NAME), d)

    # ------------------------------------------------------------------ loading

    def _load_model_weights(self, ckpt: str) -> None:
        name = self.model.weights_name  # model.safetensors, or a PeftModel's adapter file
        if not os.path.isfile(os.path.join(ckpt, name)):
            raise CheckpointError(f"checkpoint {ckpt} has no {name}")
        self.model.load_weights(ckpt)

    def _load_checkpoint(self, ckpt: str) -> Dict[str, Any]:
        """Restore weights, optimizer, trainer state and RNG from ``ckpt``; returns its loop state."""
        checkpoint.check_resumable(ckpt, self.model.weights_name)
        checkpoint.warn_on_changed_args(ckpt, self.args.to_dict())
        self._load_model_weights(ckpt)
        self.optimizer.load_state_dict(checkpoint.load_optimizer_state(ckpt))

        self.state = TrainerState.load_from_json(os.path.join(ckpt, TRAINER_STATE_NAME))
        if self.state.best_model_checkpoint is not None and not os.path.isdir(self.state.best_model_checkpoint):
            warnings.warn(
                f"the best checkpoint {self.state.best_model_checkpoint} recorded in {ckpt} does not exist any more"
            )
            self.state.best_model_checkpoint = None
        if self.args.restore_callback_states_from_checkpoint:
            self._restore_callback_states()

        rng = checkpoint.read_rng_state(ckpt)
        if rng is not None:
            world, rank = self.args.world_size, self.args.process_index
            saved_world = int(rng.get("world_size") or 1)
            states = rng.get("model_rng_states") or [rng.get("model_rng_state")]
            if saved_world != world and self.args.should_log:
                warnings.warn(
                    f"{ckpt} was written by a run of {saved_world} process(es), this one has {world}: the weights, "
                    f"optimizer moments, schedule and step count are restored, but from here the run is not the one "
                    f"{saved_world} process(es) would have continued: a step now takes "
                    f"{self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * world} examples "
                    "instead, the data position within the epoch is counted in steps of the new size, and ranks without "
                    "a saved dropout generator start a fresh one"
                )
            if rank < len(states) and states[rank] is not None and hasattr(self.model, "set_rng_state"):
                self.model.set_rng_state(int(states[rank]))
            if rng.get("data_seed") is not None and int(rng["data_seed"]) != self._data_seed():
                warnings.warn(
                    f"the checkpoint was trained with data seed {rng['data_seed']} but this run uses "
                    f"{self._data_seed()}: the data order after resuming differs from the original run"
                )

        loop = checkpoint.read_loop_state(ckpt)
        if loop is not None:
            self._tr_loss_sum = float(loop.get("tr_loss_sum", 0.0))
            self._globalstep_last_logged = int(loop.get("globalstep_last_logged", self.state.global_step))
            self._last_grad_norm = loop.get("last_grad_norm")
            self._last_lr = loop.get("last_learning_rate")
        else:
            self._globalstep_last_logged = self.state.global_step
        self._last_saved_step = self.state.global_step
        return loop or {}

    def _restore_callback_states(self) -> None:
        saved = self.state.stateful_callbacks or {}
        for cb in self.callback_handler.callbacks:
            if not isinstance(cb, ExportableState):
                continue
            s = saved.get(cb.__class__.__name__)
            if isinstance(s, list):
                s = s[0] if s else None
            if isinstance(s, dict):
                for k, v in s.get("attributes", {}).items():
                    setattr(cb, k, v)


def _check_stream_args(train_dataset: Any, args: TrainingArguments) -> None:
    """A stream has no length: training on it needs ``max_steps`` and cannot group by length."""
    if not is_iterable_dataset(train_dataset):
        return
    if args.max_steps <= 0:
        raise ConfigError(
            f"the train_dataset is a stream (an iterable without __len__), so max_steps has to be set to a "
            f"positive number (got max_steps={args.max_steps}): the number of steps must be known in advance for "
            "the learning-rate schedule, and a stream has no epochs to count"
        )
    if args.group_by_length:
        raise ConfigError("group_by_length=True needs the lengths of all examples: a stream (train_dataset without __len__) has none")
