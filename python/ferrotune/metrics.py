"""Evaluation metrics: classification scores, confusion matrix, perplexity, and the text
comparisons of generated replies (normalisation, exact match, token F1; chrF and BLEU come
from sacrebleu, see ``ferrotune.evaluation``).

Pure numpy. The definitions are scikit-learn's (``sklearn.metrics``), so a number
computed here matches the one a ``transformers`` user gets from their usual
``compute_metrics``:

- labels are the sorted union of the values in ``y_true`` and ``y_pred`` unless given;
- ``average="binary"`` reports the class ``pos_label`` only, ``"micro"`` pools the
  counts of every class, ``"macro"`` is the unweighted mean of the per-class scores and
  ``"weighted"`` their mean weighted by support (the number of true instances);
- a ratio whose denominator is zero (precision with no predicted positive, recall with
  no true positive, F1 with neither) takes the value ``zero_division``.

Token-level inputs follow the Hugging Face convention: entries whose true label is
``-100`` (padding, prompt tokens) are dropped before anything is counted, and arrays of
any shape are flattened.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "EvalPrediction",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "precision_recall_f1",
    "confusion_matrix",
    "classification_report",
    "perplexity",
    "token_accuracy",
    "classification_scores",
    "normalize_text",
    "exact_match",
    "token_f1",
]

#: Label value that marks a position to ignore (Hugging Face / PyTorch convention).
IGNORE_INDEX = -100

_AVERAGES = ("binary", "micro", "macro", "weighted")


@dataclass
class EvalPrediction:
    """What ``Trainer`` hands to ``compute_metrics``, as in ``transformers``.

    ``predictions`` are the model outputs (logits, or whatever
    ``preprocess_logits_for_metrics`` reduced them to, e.g. argmax token ids),
    ``label_ids`` the labels, ``inputs`` the input ids when requested.

    It unpacks like a tuple: ``preds, labels = eval_pred`` (three items when
    ``inputs`` is set), and ``eval_pred[0]`` is ``predictions``.
    """

    predictions: Any
    label_ids: Any
    inputs: Any = None

    def _elements(self) -> Tuple[Any, ...]:
        if self.inputs is None:
            return (self.predictions, self.label_ids)
        return (self.predictions, self.label_ids, self.inputs)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._elements())

    def __getitem__(self, idx: Union[int, slice]) -> Any:
        return self._elements()[idx]

    def __len__(self) -> int:
        return len(self._elements())


# --------------------------------------------------------------------------- helpers


def _as_1d(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype == object:
        # A list of strings/ints of uneven kinds; keep as is but flatten.
        arr = np.array(list(np.ravel(arr)))
    return np.ravel(arr)


def _prepare(y_true: Any, y_pred: Any, ignore_index: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    t = _as_1d(y_true, "y_true")
    p = _as_1d(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(
            f"y_true and y_pred have different numbers of elements: {t.size} vs {p.size}"
        )
    if ignore_index is not None and t.size and np.issubdtype(t.dtype, np.number):
        keep = t != ignore_index
        if not keep.all():
            t, p = t[keep], p[keep]
    return t, p


def _unique_labels(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    if t.size == 0 and p.size == 0:
        return np.array([], dtype=t.dtype)
    return np.unique(np.concatenate([t, p]))


def _safe_div(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(zero_division), dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _check_average(average: Optional[str]) -> None:
    if average not in _AVERAGES and average is not None:
        raise ValueError(f"average must be one of {_AVERAGES} or None, got {average!r}")


def _per_class_counts(
    t: np.ndarray, p: np.ndarray, labels: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, predicted counts and true counts (support) for each label."""
    tp = np.array([np.count_nonzero((t == lab) & (p == lab)) for lab in labels], dtype=np.int64)
    pred = np.array([np.count_nonzero(p == lab) for lab in labels], dtype=np.int64)
    true = np.array([np.count_nonzero(t == lab) for lab in labels], dtype=np.int64)
    return tp, pred, true


def _scores(
    y_true: Any,
    y_pred: Any,
    average: Optional[str],
    pos_label: Any,
    zero_division: float,
    labels: Any,
    ignore_index: Optional[int],
) -> Tuple[Any, Any, Any, Any]:
    """(precision, recall, f1, support) with sklearn's precision_recall_fscore_support rules."""
    _check_average(average)
    t, p = _prepare(y_true, y_pred, ignore_index)
    present = _unique_labels(t, p)

    if average == "binary":
        if present.size > 2:
            raise ValueError(
                f"average='binary' needs at most two distinct labels, found {present.size} "
                f"({present[:10].tolist()}...); choose average='micro', 'macro' or 'weighted'"
            )
        if present.size == 2 and pos_label not in present.tolist():
            raise ValueError(
                f"pos_label={pos_label!r} is not a valid label: it should be one of {present.tolist()}"
            )
        use = np.array([pos_label])
    elif labels is not None:
        use = np.asarray(labels)
    else:
        use = present

    tp, pred, true = _per_class_counts(t, p, use)

    if average == "micro":
        tp, pred, true = tp.sum(keepdims=True), pred.sum(keepdims=True), true.sum(keepdims=True)

    prec = _safe_div(tp, pred, zero_division)
    rec = _safe_div(tp, true, zero_division)
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (pred + true): defined even where P or R is not.
    f = _safe_div(2 * tp, pred + true, zero_division)

    if average is None:
        return prec, rec, f, true
    weights = true.astype(np.float64) if average == "weighted" else None
    return _nanaverage(prec, weights), _nanaverage(rec, weights), _nanaverage(f, weights), None


def _nanaverage(a: np.ndarray, weights: Optional[np.ndarray]) -> float:
    """Mean of ``a`` ignoring NaNs (``zero_division=nan``), weighted when weights are given.

    As scikit-learn: ``nan`` for nothing to average, and all-zero weights are ignored.
    """
    keep = ~np.isnan(a)
    if a.size == 0 or not keep.any():
        return float("nan")
    a = a[keep]
    if weights is not None:
        w = weights[keep]
        if w.sum() > 0:
            return float(np.average(a, weights=w))
    return float(a.mean())


# --------------------------------------------------------------------------- public API


def accuracy(y_true: Any, y_pred: Any, *, ignore_index: Optional[int] = IGNORE_INDEX) -> float:
    """Fraction of positions where ``y_pred == y_true`` (``-100`` labels ignored).

    Returns ``nan`` when nothing is left to count.
    """
    t, p = _prepare(y_true, y_pred, ignore_index)
    if t.size == 0:
        return float("nan")
    return float(np.count_nonzero(t == p) / t.size)


def precision(
    y_true: Any,
    y_pred: Any,
    average: Optional[str] = "binary",
    pos_label: Any = 1,
    zero_division: float = 0.0,
    *,
    labels: Optional[Sequence[Any]] = None,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> Any:
    """Precision TP / (TP + FP), as ``sklearn.metrics.precision_score``.

    ``average=None`` returns the per-label array (labels sorted, or as given).
    """
    return _scores(y_true, y_pred, average, pos_label, zero_division, labels, ignore_index)[0]


def recall(
    y_true: Any,
    y_pred: Any,
    average: Optional[str] = "binary",
    pos_label: Any = 1,
    zero_division: float = 0.0,
    *,
    labels: Optional[Sequence[Any]] = None,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> Any:
    """Recall TP / (TP + FN), as ``sklearn.metrics.recall_score``."""
    return _scores(y_true, y_pred, average, pos_label, zero_division, labels, ignore_index)[1]


def f1(
    y_true: Any,
    y_pred: Any,
    average: Optional[str] = "binary",
    pos_label: Any = 1,
    zero_division: float = 0.0,
    *,
    labels: Optional[Sequence[Any]] = None,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> Any:
    """F1 = 2 TP / (2 TP + FP + FN), as ``sklearn.metrics.f1_score``."""
    return _scores(y_true, y_pred, average, pos_label, zero_division, labels, ignore_index)[2]


def classification_scores(
    y_true: Any,
    y_pred: Any,
    *,
    labels: Optional[Sequence[Any]] = None,
    zero_division: float = 0.0,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> Dict[str, float]:
    """The scores a classifier is reported with, by the Trainer's evaluation and by
    ``ferrotune.evaluate``: ``accuracy``; ``precision``, ``recall`` and ``f1`` averaged over
    classes (macro); the same three pooled over classes (``*_micro``) and weighted by
    support (``*_weighted``)."""
    out = {"accuracy": accuracy(y_true, y_pred, ignore_index=ignore_index)}
    for average, suffix in (("macro", ""), ("micro", "_micro"), ("weighted", "_weighted")):
        p, r, f, _ = _scores(y_true, y_pred, average, 1, zero_division, labels, ignore_index)
        out.update({f"precision{suffix}": p, f"recall{suffix}": r, f"f1{suffix}": f})
    return out


def precision_recall_f1(
    y_true: Any,
    y_pred: Any,
    average: str = "binary",
    pos_label: Any = 1,
    zero_division: float = 0.0,
    *,
    labels: Optional[Sequence[Any]] = None,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> Dict[str, float]:
    """``{"precision": ..., "recall": ..., "f1": ...}`` for one averaging mode.

    Handy as the body of a ``compute_metrics`` function::

        def compute_metrics(p):
            preds, labels = p
            return {"accuracy": accuracy(labels, preds),
                    **precision_recall_f1(labels, preds, average="macro")}
    """
    if average is None:
        raise ValueError("precision_recall_f1 needs an average; use precision(..., average=None) for per-label arrays")
    p, r, f, _ = _scores(y_true, y_pred, average, pos_label, zero_division, labels, ignore_index)
    return {"precision": p, "recall": r, "f1": f}


def confusion_matrix(
    y_true: Any,
    y_pred: Any,
    labels: Optional[Sequence[Any]] = None,
    *,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> np.ndarray:
    """Counts ``C[i, j]`` of samples with true label ``labels[i]`` predicted as ``labels[j]``.

    As ``sklearn.metrics.confusion_matrix``: rows are true labels, columns predictions;
    ``labels`` defaults to the sorted union of both inputs, and samples whose true or
    predicted label is not in ``labels`` are left out.
    """
    t, p = _prepare(y_true, y_pred, ignore_index)
    labs = _unique_labels(t, p) if labels is None else np.asarray(labels)
    n = labs.size
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64)
    index = {lab: i for i, lab in enumerate(labs.tolist())}
    ti = np.array([index.get(v, -1) for v in t.tolist()], dtype=np.int64)
    pi = np.array([index.get(v, -1) for v in p.tolist()], dtype=np.int64)
    keep = (ti >= 0) & (pi >= 0)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (ti[keep], pi[keep]), 1)
    return cm


def classification_report(
    y_true: Any,
    y_pred: Any,
    labels: Optional[Sequence[Any]] = None,
    target_names: Optional[Sequence[str]] = None,
    zero_division: float = 0.0,
    *,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> Dict[str, Any]:
    """Per-label and averaged scores, shaped like ``sklearn.metrics.classification_report(output_dict=True)``.

    Keys: one per label (``str(label)`` or the matching ``target_names`` entry) mapping
    to ``{"precision", "recall", "f1-score", "support"}``; ``"accuracy"`` (a float) when
    the labels cover every class present, otherwise ``"micro avg"``; ``"macro avg"`` and
    ``"weighted avg"``.
    """
    t, p = _prepare(y_true, y_pred, ignore_index)
    present = _unique_labels(t, p)
    labs = present if labels is None else np.asarray(labels)
    if target_names is not None and len(target_names) != labs.size:
        raise ValueError(
            f"target_names has {len(target_names)} entries but there are {labs.size} labels"
        )
    names: List[str] = [str(x) for x in (target_names if target_names is not None else labs.tolist())]

    prec, rec, f, sup = _scores(t, p, None, 1, zero_division, labs, None)
    report: Dict[str, Any] = {}
    for i, name in enumerate(names):
        report[name] = {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1-score": float(f[i]),
            "support": int(sup[i]),
        }
    total = int(np.sum(sup))
    covers_all = set(present.tolist()) <= set(labs.tolist())
    if covers_all:
        report["accuracy"] = accuracy(t, p, ignore_index=None)
    else:
        mp, mr, mf, _ = _scores(t, p, "micro", 1, zero_division, labs, None)
        report["micro avg"] = {"precision": mp, "recall": mr, "f1-score": mf, "support": total}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = _scores(t, p, avg, 1, zero_division, labs, None)
        report[f"{avg} avg"] = {"precision": ap, "recall": ar, "f1-score": af, "support": total}
    return report


def perplexity(loss: float) -> float:
    """``exp(loss)`` for a mean next-token cross-entropy in nats; ``inf`` when it overflows."""
    loss = float(loss)
    if math.isnan(loss):
        return float("nan")
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def token_accuracy(
    predictions: Any,
    label_ids: Any,
    *,
    shift: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Next-token accuracy of a causal LM from predicted token ids (or logits) and labels.

    ``predictions`` is ``(B, T)`` token ids, or ``(B, T, V)`` logits (argmax taken).
    With ``shift=True`` (causal LM, the Hugging Face convention) the prediction at
    position ``t`` is compared with the label at ``t + 1``; positions whose label is
    ``-100`` are ignored.
    """
    preds = np.asarray(predictions)
    labels = np.asarray(label_ids)
    if preds.ndim == labels.ndim + 1:
        preds = preds.argmax(axis=-1)
    if preds.shape != labels.shape:
        raise ValueError(f"predictions {preds.shape} and label_ids {labels.shape} do not match")
    if shift:
        preds, labels = preds[..., :-1], labels[..., 1:]
    return accuracy(labels, preds, ignore_index=ignore_index)


# --------------------------------------------------------------------------- text scores


def normalize_text(text: str) -> str:
    """Text as exact match and token F1 compare it: Unicode NFKC (full-width letters, digits
    and punctuation become their ASCII forms: ``"ＡＢＣ１"`` -> ``"abc1"``), case folded,
    punctuation (every Unicode ``P*`` character) removed, whitespace collapsed and stripped.
    Unlike SQuAD's script, English articles are kept: the texts are not only English."""
    s = unicodedata.normalize("NFKC", str(text)).casefold()
    s = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in s)
    return " ".join(s.split())


def exact_match(prediction: str, reference: str, *, sep: Optional[str] = ";") -> bool:
    """Whether ``prediction`` equals ``reference`` after :func:`normalize_text`.

    With ``sep`` (default ``";"``) the reference is also a list of alternatives (dictionary
    senses such as ``"hello; hi"``): a prediction equal to one of them counts too."""
    pred = normalize_text(prediction)
    if not pred:
        return False
    if pred == normalize_text(reference):
        return True
    if sep is None:
        return False
    return pred in {normalize_text(s) for s in str(reference).split(sep)}


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the whitespace tokens of the normalised texts (:func:`normalize_text`):
    2 P R / (P + R) over the multiset of shared tokens; 1.0 when both are empty."""
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)
