"""``ferrotune.evaluate``: score a model on a data set, one call per task.

Tasks and what a row holds:

- ``"generation"``: ``prompt`` (str) or ``messages`` (a chat, rendered with the tokenizer's
  chat template and the assistant prompt) and ``reference`` (str or list of str). Greedy
  decoding (or what the generation options say) in batches with left padding and the KV
  cache. Metrics: ``exact_match`` and ``f1`` (SQuAD-style token overlap) on normalised text
  (:func:`ferrotune.metrics.normalize_text`), ``chrf`` and ``bleu`` from sacrebleu.
- ``"classification"``: ``text`` (or ``prompt`` / ``messages``) and ``label`` (class index or
  name). A model with a sequence-classification head predicts the argmax of its logits;
  a language model given ``label_words`` picks the word with the highest log-likelihood
  after the text. Metrics: :func:`ferrotune.metrics.classification_scores` (what the
  Trainer reports too) and the confusion matrix in ``details``.
- ``"multiple_choice"``: ``prompt``, ``choices`` (list of str) and ``label`` (index of the
  right choice). Each choice is scored by its log-likelihood after the prompt, as
  lm-evaluation-harness does (``delimiter`` between them, default ``" "``): ``accuracy``
  takes the largest sum, ``accuracy_norm`` the largest sum per byte of the choice.
- ``"perplexity"``: ``text`` (or ``messages``: a whole chat, rendered). Token-weighted mean next-token loss and its exponential;
  texts longer than the context are cut into consecutive windows. Only per-token losses
  leave the model, never (N, V) logits.

Data is a list of dicts, a ``datasets.Dataset`` (or any iterable of dicts) or a JSONL path.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._core import DataError, InputError
from .metrics import classification_scores, confusion_matrix, exact_match, perplexity, token_f1
from .progress import progress_bar

__all__ = ["evaluate", "EvalResult", "generation_scores", "TASKS", "LOWER_IS_BETTER"]

TASKS = ("generation", "classification", "multiple_choice", "perplexity")

#: Metrics (and per-example scores) where a smaller value is better.
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})

#: The per-example score ``EvalResult.worst`` ranks by when no metric is named.
_MAIN_SCORE = {"generation": "chrf", "classification": "correct", "multiple_choice": "correct", "perplexity": "loss"}

_EVAL_EXTRA = "pip install 'ferrotune[eval]'"

#: Opens the progress bar (tqdm) of a pass over this many batches.
Progress = Callable[[int], Any]


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    ``metrics``: the data set's scores (floats). ``records``: one dict per example, in data
    order, with ``index``, ``input``, ``prediction``, ``reference`` and ``scores`` (that
    example's own scores). ``details``: non-scalar results (confusion matrix, label names,
    the number of examples, seconds taken).
    """

    task: str
    metrics: Dict[str, float]
    records: List[Dict[str, Any]]
    details: Dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(f"no metric {name!r}; this {self.task} result has {sorted(self.metrics)}") from None

    def to_json(self, path: Optional[Union[str, os.PathLike]] = None, indent: Optional[int] = 2) -> str:
        """The whole result as JSON (also written to ``path`` when given)."""
        text = json.dumps(
            {"task": self.task, "metrics": self.metrics, "details": self.details, "records": self.records},
            indent=indent,
            ensure_ascii=False,
            default=_json_default,
        )
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def worst(self, n: int = 5, metric: Optional[str] = None) -> List[Dict[str, Any]]:
        """The ``n`` records with the worst per-example ``metric`` (the lowest, or the highest
        for a loss); by default the task's main score (generation: chrF, classification and
        multiple choice: correct, perplexity: loss). Ties keep data order."""
        metric = metric or _MAIN_SCORE[self.task]
        scored = [r for r in self.records if metric in r["scores"]]
        if self.records and not scored:
            raise KeyError(f"no per-example score {metric!r}; records have {sorted(self.records[0]['scores'])}")
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        return sorted(scored, key=lambda r: sign * r["scores"][metric])[: max(int(n), 0)]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        return f"EvalResult(task={self.task!r}, n={len(self.records)}, {shown})"


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------- data


def _rows(data: Any, limit: Optional[int], seed: int) -> List[Tuple[int, Mapping[str, Any]]]:
    """(index in data, row) pairs; a seeded random subset of ``limit`` rows, in data order."""
    if isinstance(data, (str, os.PathLike)):
        from .data import load_jsonl

        data = load_jsonl(data)
    if isinstance(data, Mapping):
        raise DataError("data must be rows (a list of dicts, a datasets.Dataset or a JSONL path), not one dict")
    rows = list(data)
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise DataError(f"row {i} is a {type(r).__name__}, not a dict")
    pairs = list(enumerate(rows))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InputError(f"limit must be a non-negative integer, got {limit!r}")
        if limit < len(pairs):
            keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False))
            pairs = [pairs[int(i)] for i in keep]
    return pairs


def _field(row: Mapping[str, Any], index: int, names: Sequence[str]) -> Tuple[str, Any]:
    for name in names:
        if name in row:
            return name, row[name]
    raise DataError(f"row {index} has none of the keys {list(names)} (it has {sorted(row)})")


def _prompt_text(tokenizer: Any, row: Mapping[str, Any], index: int, names: Sequence[str] = ("prompt", "messages")) -> str:
    """A row's input as the text the model continues: a prompt as is, a chat rendered with the
    tokenizer's template and the assistant prompt."""
    name, value = _field(row, index, names)
    if name == "messages":
        return str(tokenizer.apply_chat_template(value, add_generation_prompt=True, tokenize=False))
    if not isinstance(value, str):
        raise DataError(f"row {index}: {name!r} must be a string, got {type(value).__name__}")
    return value


def _encode(tokenizer: Any, text: str, chat: bool) -> List[int]:
    # a rendered chat template already holds its special tokens
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=not chat)]


def _context(model: Any) -> int:
    c = model.config
    return int(getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None) or 2**31)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(B, T) ids and attention mask of sequences padded to the longest."""
    t = max(len(s) for s in seqs)
    ids = np.full((len(seqs), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), t), dtype=np.int64)
    for r, s in enumerate(seqs):
        lo = t - len(s) if left else 0
        ids[r, lo : lo + len(s)] = s
        mask[r, lo : lo + len(s)] = 1
    return ids, mask


def _pad_id(tokenizer: Any) -> int:
    for pid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if pid is not None:
            return int(pid)
    return 0  # masked out wherever it is used


def _batches(order: Sequence[int], batch_size: int) -> List[List[int]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def _by_length(lengths: Sequence[int]) -> List[int]:
    """Indices longest first (stable), so a batch holds sequences of similar length."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


# --------------------------------------------------------------------------- generation


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError:
        raise ImportError(f"chrF and BLEU are computed by sacrebleu: {_EVAL_EXTRA}") from None
    return sacrebleu


def _reference_list(ref: Any, index: int) -> List[str]:
    refs = [ref] if isinstance(ref, str) else list(ref) if isinstance(ref, (list, tuple)) else None
    if not refs or not all(isinstance(r, str) for r in refs):
        raise DataError(f"row {index}: 'reference' must be a string or a non-empty list of strings, got {ref!r}")
    return refs


def generation_scores(predictions: Sequence[str], references: Sequence[Union[str, Sequence[str]]]) -> Tuple[Dict[str, float], List[Dict[str, float]]]:
    """Corpus scores and per-example scores of generated texts against their references.

    ``exact_match`` and ``f1`` (SQuAD-style token overlap) compare normalised text
    (:func:`ferrotune.metrics.normalize_text`) and take the best reference; ``chrf`` and
    ``bleu`` are sacrebleu's corpus ``CHRF()`` and ``BLEU()`` (defaults), with every
    reference of an example used. Exact match and F1 are fractions (0-1), chrF and BLEU
    0-100 as sacrebleu reports them.
    """
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions but {len(references)} references")
    refs = [_reference_list(r, i) for i, r in enumerate(references)]
    sacrebleu = _sacrebleu()
    per: List[Dict[str, float]] = []
    chrf = sacrebleu.metrics.CHRF()
    for pred, rs in zip(predictions, refs):
        per.append(
            {
                "exact_match": float(any(exact_match(pred, r, sep=None) for r in rs)),
                "f1": max(token_f1(pred, r) for r in rs),
                "chrf": float(chrf.sentence_score(pred, rs).score),
            }
        )
    n = len(per)
    metrics: Dict[str, float] = {
        "exact_match": sum(p["exact_match"] for p in per) / n if n else float("nan"),
        "f1": sum(p["f1"] for p in per) / n if n else float("nan"),
    }
    # sacrebleu takes reference *streams*: stream k holds every example's k-th reference.
    # An example with fewer references repeats its last one, which changes no score (chrF
    # keeps the best reference, BLEU clips by the largest count and the closest length).
    width = max((len(r) for r in refs), default=1)
    streams = [[r[min(k, len(r) - 1)] for r in refs] for k in range(width)]
    metrics["chrf"] = float(sacrebleu.metrics.CHRF().corpus_score(list(predictions), streams).score) if n else float("nan")
    metrics["bleu"] = float(sacrebleu.metrics.BLEU().corpus_score(list(predictions), streams).score) if n else float("nan")
    return metrics, per


def _generate_texts(
    model: Any, tokenizer: Any, prompts: Sequence[str], chats: Sequence[bool], batch_size: int, bar: Any, gen: Dict[str, Any]
) -> List[str]:
    """The decoded continuation of each prompt, batched longest first with left padding."""
    encoded = [_encode(tokenizer, p, c) for p, c in zip(prompts, chats)]
    eos = gen.get("eos_token_id", getattr(model.generation_config, "eos_token_id", None))
    stops = set([eos] if isinstance(eos, int) else eos or [])
    out: List[str] = [""] * len(prompts)
    for batch in _batches(_by_length([len(e) for e in encoded]), batch_size):
        ids, mask = _pad([encoded[i] for i in batch], _pad_id(tokenizer), left=True)
        seqs = model.generate(ids, attention_mask=mask, tokenizer=tokenizer, **gen)
        for r, i in enumerate(batch):
            new: List[int] = []
            for tok in seqs[r, ids.shape[1] :].tolist():
                if tok in stops:
                    break
                new.append(int(tok))
            out[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
        bar.update(1)
    return out


def _evaluate_generation(model: Any, tokenizer: Any, rows: Sequence[Tuple[int, Mapping[str, Any]]], batch_size: int, progress: Progress, **options: Any) -> EvalResult:
    gen = {"max_new_tokens": 32, "do_sample": False, **options}
    prompts = [_prompt_text(tokenizer, r, i) for i, r in rows]
    chats = ["prompt" not in r for _, r in rows]
    refs = [_field(r, i, ("reference",))[1] for i, r in rows]
    for (i, _), ref in zip(rows, refs):
        _reference_list(ref, i)  # bad references fail before decoding
    with progress(math.ceil(len(rows) / batch_size)) as bar:
        predictions = _generate_texts(model, tokenizer, prompts, chats, batch_size, bar, gen)
    metrics, per = generation_scores(predictions, refs)
    records = [
        {"index": i, "input": p, "prediction": pred, "reference": ref, "scores": s}
        for (i, _), p, pred, ref, s in zip(rows, prompts, predictions, refs, per)
    ]
    return EvalResult("generation", metrics, records)


# --------------------------------------------------------------------------- log-likelihood scoring


def _loglik(model: Any, pairs: Sequence[Tuple[List[int], List[int]]], batch_size: int, bar: Any) -> List[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) pair.

    Context and continuation are concatenated, cut on the left to the model's context,
    right-padded, and only the continuation's tokens are counted (labels -100 elsewhere).
    """
    n_ctx = _context(model)
    seqs, labels = [], []
    for k, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise InputError(f"choice {k} encodes to no token")
        if len(cont) >= n_ctx:
            raise InputError(f"choice {k} has {len(cont)} tokens; the model's context is {n_ctx}")
        s = (ctx + cont)[-n_ctx:]
        seqs.append(s)
        labels.append([-100] * (len(s) - len(cont)) + cont)
    out = [0.0] * len(pairs)
    for batch in _batches(_by_length([len(s) for s in seqs]), batch_size):
        ids, mask = _pad([seqs[i] for i in batch], 0, left=False)
        lab, _ = _pad([labels[i] for i in batch], -100, left=False)
        loss, _ = model.token_losses(ids, labels=lab, attention_mask=mask)
        for r, i in enumerate(batch):
            out[i] = -float(loss[r].sum())
        bar.update(1)
    return out


def _choose(model: Any, tokenizer: Any, contexts: Sequence[Tuple[str, bool]], choices: Sequence[Sequence[str]], delimiter: str, batch_size: int, progress: Progress) -> Tuple[List[List[float]], List[int], List[int]]:
    """Log-likelihood of each choice after its context; the argmax, and the argmax per byte."""
    pairs: List[Tuple[List[int], List[int]]] = []
    for (text, chat), opts in zip(contexts, choices):
        ctx = _encode(tokenizer, text, chat)
        for c in opts:
            pairs.append((ctx, [int(t) for t in tokenizer.encode(delimiter + c, add_special_tokens=False)]))
    with progress(math.ceil(len(pairs) / batch_size)) as bar:
        flat = _loglik(model, pairs, batch_size, bar)
    scores, best, best_norm, k = [], [], [], 0
    for opts in choices:
        s = flat[k : k + len(opts)]
        k += len(opts)
        scores.append(s)
        best.append(int(np.argmax(s)))
        best_norm.append(int(np.argmax([v / max(len((delimiter + c).encode("utf-8")), 1) for v, c in zip(s, opts)])))
    return scores, best, best_norm


def _evaluate_multiple_choice(model: Any, tokenizer: Any, rows: Sequence[Tuple[int, Mapping[str, Any]]], batch_size: int, progress: Progress, delimiter: str = " ") -> EvalResult:
    contexts, choices, labels = [], [], []
    for i, r in rows:
        contexts.append((_prompt_text(tokenizer, r, i), "prompt" not in r))
        opts = _field(r, i, ("choices",))[1]
        if not isinstance(opts, (list, tuple)) or len(opts) < 2 or not all(isinstance(c, str) for c in opts):
            raise DataError(f"row {i}: 'choices' must be a list of at least two strings, got {opts!r}")
        choices.append(list(opts))
        label = _field(r, i, ("label",))[1]
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(opts):
            raise DataError(f"row {i}: 'label' must be the index of the right choice (0..{len(opts) - 1}), got {label!r}")
        labels.append(int(label))
    scores, best, best_norm = _choose(model, tokenizer, contexts, choices, delimiter, batch_size, progress)
    records = []
    for (i, _), (text, _), opts, s, b, bn, y in zip(rows, contexts, choices, scores, best, best_norm, labels):
        records.append(
            {
                "index": i,
                "input": text,
                "prediction": b,
                "reference": y,
                "choices": opts,
                "logliks": s,
                "scores": {"correct": float(b == y), "correct_norm": float(bn == y)},
            }
        )
    n = len(records)
    metrics = {
        "accuracy": sum(r["scores"]["correct"] for r in records) / n if n else float("nan"),
        "accuracy_norm": sum(r["scores"]["correct_norm"] for r in records) / n if n else float("nan"),
    }
    return EvalResult("multiple_choice", metrics, records)


# --------------------------------------------------------------------------- classification


def _label_index(label: Any, names: Sequence[str], index: int) -> int:
    if isinstance(label, str):
        if label not in names:
            raise DataError(f"row {index}: label {label!r} is not one of {list(names)}")
        return list(names).index(label)
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(names):
        raise DataError(f"row {index}: label must be a class index in 0..{len(names) - 1} or one of {list(names)}, got {label!r}")
    return int(label)


def _head_predictions(model: Any, tokenizer: Any, texts: Sequence[Tuple[str, bool]], batch_size: int, progress: Progress) -> List[int]:
    """Argmax of a sequence-classification head. Rows are right-padded with the config's
    pad_token_id, which the head uses to find each row's last token (as transformers does);
    without one, rows go one at a time."""
    pad = model.config.to_dict().get("pad_token_id")
    if pad is None:
        batch_size = 1
    encoded = [_encode(tokenizer, t, c) for t, c in texts]
    preds = [0] * len(texts)
    batches = _batches(_by_length([len(e) for e in encoded]), batch_size)
    with progress(len(batches)) as bar:
        for batch in batches:
            ids, mask = _pad([encoded[i] for i in batch], 0 if pad is None else int(pad), left=False)
            logits = model(ids, attention_mask=mask).logits
            for r, i in enumerate(batch):
                preds[i] = int(np.argmax(logits[r]))
            bar.update(1)
    return preds


def _evaluate_classification(model: Any, tokenizer: Any, rows: Sequence[Tuple[int, Mapping[str, Any]]], batch_size: int, progress: Progress, label_words: Optional[Sequence[str]] = None, delimiter: str = " ") -> EvalResult:
    texts = []
    for i, r in rows:
        name, _ = _field(r, i, ("text", "prompt", "messages"))
        texts.append((_prompt_text(tokenizer, r, i, (name,)), name == "messages"))
    if model.num_labels is not None:
        if label_words is not None:
            raise InputError("label_words scores label words with a language model; this model has a classification head")
        id2label = model.config.to_dict().get("id2label") or {}
        names = [str(id2label.get(str(k), id2label.get(k, k))) for k in range(model.num_labels)]
        preds = _head_predictions(model, tokenizer, texts, batch_size, progress)
    else:
        if not label_words or not all(isinstance(w, str) and w for w in label_words):
            raise InputError(
                "classification with a language model needs label_words=[...] (one non-empty word per class, "
                "scored after the text); or give a model with a classification head (Model.for_sequence_classification)"
            )
        names = list(label_words)
        _, preds, _ = _choose(model, tokenizer, texts, [names] * len(texts), delimiter, batch_size, progress)
    y_true = [_label_index(_field(r, i, ("label",))[1], names, i) for i, r in rows]
    records = [
        {"index": i, "input": t, "prediction": names[p], "reference": names[y], "scores": {"correct": float(p == y)}}
        for (i, _), (t, _), p, y in zip(rows, texts, preds, y_true)
    ]
    labels = list(range(len(names)))
    details = {
        "labels": names,
        "confusion_matrix": confusion_matrix(y_true, preds, labels=labels).tolist(),
    }
    return EvalResult("classification", classification_scores(y_true, preds, labels=labels), records, details)


# --------------------------------------------------------------------------- perplexity


def _evaluate_perplexity(model: Any, tokenizer: Any, rows: Sequence[Tuple[int, Mapping[str, Any]]], batch_size: int, progress: Progress, max_length: Optional[int] = None) -> EvalResult:
    window = min(int(max_length), _context(model)) if max_length is not None else _context(model)
    if window < 2:
        raise InputError(f"max_length must be at least 2 (one token to predict from), got {max_length!r}")
    pieces: List[Tuple[int, List[int]]] = []  # (example, window of ids)
    texts = []
    for k, (i, r) in enumerate(rows):
        name, text = _field(r, i, ("text", "messages"))
        if name == "messages":
            text = str(tokenizer.apply_chat_template(text, tokenize=False))
        elif not isinstance(text, str):
            raise DataError(f"row {i}: 'text' must be a string, got {type(text).__name__}")
        texts.append(text)
        ids = _encode(tokenizer, text, name == "messages")
        pieces += [(k, ids[s : s + window]) for s in range(0, len(ids), window)]
    sums = [0.0] * len(rows)
    counts = [0] * len(rows)
    batches = _batches(_by_length([len(p) for _, p in pieces]), batch_size)
    with progress(len(batches)) as bar:
        for batch in batches:
            ids, mask = _pad([pieces[j][1] for j in batch], 0, left=False)
            loss, _ = model.token_losses(ids, attention_mask=mask)
            for r, j in enumerate(batch):
                k = pieces[j][0]
                sums[k] += float(loss[r].sum())
                counts[k] += int(mask[r].sum()) - 1
            bar.update(1)
    records = [
        {
            "index": i,
            "input": t,
            "prediction": None,
            "reference": None,
            "scores": {"loss": s / c if c else float("nan"), "tokens": float(c)},
        }
        for (i, _), t, s, c in zip(rows, texts, sums, counts)
    ]
    total = sum(counts)
    loss_mean = sum(sums) / total if total else float("nan")
    metrics = {"loss": loss_mean, "perplexity": perplexity(loss_mean), "tokens": float(total)}
    return EvalResult("perplexity", metrics, records)


# --------------------------------------------------------------------------- entry point

#: The options each task takes (generation passes any other to ``Model.generate``, which checks them).
_OPTIONS = {"classification": {"label_words", "delimiter"}, "multiple_choice": {"delimiter"}, "perplexity": {"max_length"}}

_RUNNERS: Dict[str, Callable[..., EvalResult]] = {
    "generation": _evaluate_generation,
    "classification": _evaluate_classification,
    "multiple_choice": _evaluate_multiple_choice,
    "perplexity": _evaluate_perplexity,
}


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Union[Iterable[Mapping[str, Any]], str, os.PathLike],
    *,
    task: str,
    batch_size: int = 16,
    limit: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> EvalResult:
    """Score ``model`` on ``data`` for one task (see the module docstring for the row keys).

    Args:
        model: a :class:`ferrotune.Model` (or PeftModel).
        tokenizer: its :class:`ferrotune.Tokenizer`.
        data: rows (dicts), a ``datasets.Dataset`` or a JSONL path.
        task: ``"generation"``, ``"classification"``, ``"multiple_choice"`` or ``"perplexity"``.
        batch_size: sequences per forward / generate call.
        limit: score a random subset of this many rows (drawn with ``seed``, kept in data order).
        progress: show a progress bar (a widget in Jupyter, text in a terminal).
        options: per task. generation: ``max_new_tokens`` (default 32) and any other
            ``generate`` argument (``do_sample``, ``temperature``, ``stop_strings``, ...);
            classification: ``label_words``, ``delimiter``; multiple_choice: ``delimiter``
            (default ``" "``); perplexity: ``max_length`` (window, default the model's context).

    Returns:
        an :class:`EvalResult`.
    """
    import time

    if task not in _RUNNERS:
        raise InputError(f"task must be one of {list(TASKS)}, got {task!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    unknown = set(options) - _OPTIONS[task] if task in _OPTIONS else set()
    if unknown:
        raise TypeError(f"evaluate(task={task!r}) got unexpected options {sorted(unknown)}; it takes {sorted(_OPTIONS[task])}")
    rows = _rows(data, limit, seed)
    if not rows:
        raise DataError("no rows to evaluate")
    t0 = time.perf_counter()

    def bar(total: int) -> Any:
        return progress_bar(total, f"evaluate ({task})", unit="batch", disable=not progress)

    was_training = bool(getattr(model, "training", False))
    if was_training:
        model.eval()
    try:
        result = _RUNNERS[task](model, tokenizer, rows, batch_size, bar, **options)
    finally:
        if was_training:
            model.train()
    result.details.update(examples=len(rows), seconds=time.perf_counter() - t0)
    return result
