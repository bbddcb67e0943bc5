"""Helpers for evaluation suites written with pytest (the plugin is :mod:`ferrotune.pytest_plugin`).

    >>> from ferrotune.testing import assert_metric, load_cases
    >>> @pytest.mark.parametrize("case", load_cases("cases.jsonl"))
    ... def test_case(ft_model, ft_tokenizer, case): ...
    >>> assert_metric(result, "chrf", at_least=40.0)   # the message shows the 5 worst examples

* :func:`assert_metric` checks one metric of an :class:`~ferrotune.EvalResult` (or a dict of
  metrics) against a bound; inside a pytest session with the plugin the value is also recorded
  for the report and the baseline comparison, like the ``ft_record`` fixture does.
* :func:`load_cases` reads test cases (JSONL, CSV, a ``datasets.Dataset``, rows) into dicts.
* :func:`load_model`, :func:`load_pretrained` and :func:`load_tokenizer` load what the
  ``--ft-model`` option names: a saved model directory, a Trainer checkpoint, a GGUF file or
  a PEFT adapter directory (whose base comes from ``base_model_name_or_path``).

This module imports only the standard library at import time: the plugin imports it into
every pytest session, and the model code is loaded only when a model is.
"""

from __future__ import annotations

import csv
import numbers
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

if TYPE_CHECKING:
    from .modeling import Model
    from .tokenizer import Tokenizer

__all__ = ["assert_metric", "load_cases", "load_model", "load_pretrained", "load_tokenizer", "lower_is_better"]

PathLike = Union[str, "os.PathLike[str]"]

#: Where :func:`assert_metric` reports the values it checks, as ``recorder(name, value,
#: higher_is_better)``: the pytest plugin installs its session's recorder while a session
#: runs (and puts back the one before when it ends); None outside pytest.
recorder: Optional[Callable[[str, float, Optional[bool]], None]] = None

_WORST_SHOWN = 5
_SHOWN_CHARS = 120


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of the metric ``name`` is better: those of
    ``ferrotune.evaluation.LOWER_IS_BETTER`` (``loss``, ``perplexity``), also with a prefix
    (the Trainer's ``eval_loss``, ``eval_perplexity``)."""
    from .evaluation import LOWER_IS_BETTER

    return any(name == n or name.endswith("_" + n) for n in LOWER_IS_BETTER)


# --------------------------------------------------------------------------- assertions


def assert_metric(result: Any, name: str, at_least: Optional[float] = None, at_most: Optional[float] = None) -> None:
    """Assert ``at_least <= result[name] <= at_most`` (give one bound or both).

    ``result`` is an :class:`~ferrotune.EvalResult` or a dict of metrics. A failure's
    message names the metric, its value and the bound, and for an EvalResult shows the 5
    worst examples (input, prediction, reference), ranked by the per-example score of the
    same name when the records have one, else by the task's main score.

    In a pytest session with ferrotune's plugin the value is recorded under the current
    test (report, baseline comparison, summary table), as ``ft_record`` does; which way is
    better follows the bound: only ``at_most`` means lower is better, only ``at_least``
    higher, both: as the name says (:func:`lower_is_better`).

    Raises TypeError without a bound or with a bound that is not a number, ValueError when
    ``at_least > at_most``, KeyError naming the available metrics for an unknown ``name``.
    """
    if at_least is None and at_most is None:
        raise TypeError("assert_metric needs a bound: at_least=, at_most= or both")
    for label, bound in (("at_least", at_least), ("at_most", at_most)):
        if bound is not None and (not isinstance(bound, numbers.Real) or isinstance(bound, bool)):
            raise TypeError(f"{label} must be a number, got {bound!r}")
    if at_least is not None and at_most is not None and at_least > at_most:
        raise ValueError(f"at_least={at_least} is above at_most={at_most}: no value can pass")
    metrics = result if isinstance(result, Mapping) else result.metrics
    if name not in metrics:
        raise KeyError(f"no metric {name!r}; the result has {sorted(metrics)}")
    value = float(metrics[name])

    if recorder is not None:
        one_sided = at_least is None or at_most is None
        recorder(name, value, (at_least is not None) if one_sided else None)

    if at_least is not None and not value >= at_least:
        problem = f"{name} = {value:.6g} is below at_least={at_least:.6g}"
    elif at_most is not None and not value <= at_most:
        problem = f"{name} = {value:.6g} is above at_most={at_most:.6g}"
    else:
        return
    raise AssertionError(problem + _worst_examples(result, name))


def _worst_examples(result: Any, name: str) -> str:
    """The worst examples of an EvalResult as message lines ("" for a dict of metrics)."""
    records = getattr(result, "records", None)
    if not records:
        return ""
    metric = name if any(name in r.get("scores", {}) for r in records) else None
    worst = result.worst(_WORST_SHOWN, metric)
    ranked_by = metric or "the task's main score"
    lines = [f"\nworst {len(worst)} of {len(records)} examples by {ranked_by}:"]
    for r in worst:
        scores = ", ".join(f"{k}={v:.4g}" for k, v in r.get("scores", {}).items())
        lines.append(f"  [{r.get('index')}] {scores}")
        for key in ("input", "prediction", "reference"):
            lines.append(f"      {key + ':':<11} {_shorten(r.get(key))}")
    return "\n".join(lines)


def _shorten(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


# --------------------------------------------------------------------------- test cases


def load_cases(source: Union[PathLike, Iterable[Mapping[str, Any]]]) -> List[Dict[str, Any]]:
    """Test cases as a list of dicts, e.g. for ``pytest.mark.parametrize``.

    ``source`` is a ``.jsonl`` file (one JSON object per line, blank lines skipped), a
    ``.csv`` file (a header row; every value is a string, as ``csv.DictReader`` reads it),
    a ``datasets.Dataset`` or any iterable of dicts.

    Raises FileNotFoundError naming a missing file, ValueError naming an unsupported file
    extension, and :class:`ferrotune.DataError` naming the file and line of a bad JSONL or
    CSV line (or the index of a row that is not a dict).
    """
    from ._core import DataError

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        ext = os.path.splitext(path)[1].lower()
        if ext == ".jsonl":
            from .data import load_jsonl

            return load_jsonl(path)
        if ext == ".csv":
            return _load_csv(path)
        raise ValueError(f"load_cases reads .jsonl and .csv files, not {ext or 'a file without extension'!r}: {path}")
    if isinstance(source, Mapping):
        raise DataError("load_cases takes rows (an iterable of dicts), not one dict")
    rows = []
    for i, row in enumerate(source):
        if not isinstance(row, Mapping):
            raise DataError(f"case {i} is a {type(row).__name__}, not a dict")
        rows.append(dict(row))
    return rows


def _load_csv(path: str) -> List[Dict[str, Any]]:
    from ._core import DataError

    if not os.path.isfile(path):
        raise FileNotFoundError(2, f"No such file or directory: {path}", path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        try:
            for row in reader:
                if None in row or None in row.values():  # DictReader's marks of extra / missing fields
                    more = "more" if None in row else "fewer"
                    columns = len(reader.fieldnames or [])
                    raise DataError(f"{path}:{reader.line_num}: {more} fields than the header's {columns} columns")
                rows.append(row)
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: {e}") from None
    return rows


# --------------------------------------------------------------------------- models

ADAPTER_CONFIG_NAME = "adapter_config.json"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"


def load_model(path: PathLike, tokenizer: Optional[PathLike] = None) -> Tuple["Model", "Tokenizer"]:
    """``(model, tokenizer)`` from what ``path`` names (see :func:`load_pretrained`); the
    tokenizer comes from ``tokenizer`` when given, else as :func:`load_tokenizer` finds it."""
    return load_pretrained(path), load_tokenizer(path, tokenizer)


def load_pretrained(path: PathLike) -> "Model":
    """The model ``path`` names:

    * a directory with ``config.json`` + ``model.safetensors`` (``save_pretrained``, or a
      Trainer checkpoint ``checkpoint-N``, whose optimizer state is not needed here);
    * a GGUF file;
    * a PEFT adapter directory (``adapter_config.json``, e.g. a LoRA run's checkpoint): its
      base model is loaded from ``base_model_name_or_path``, then the adapter onto it.

    Raises FileNotFoundError naming a missing path and :class:`ferrotune.CheckpointError`
    naming a directory that holds none of these or an adapter whose base cannot be found.
    """
    from .modeling import Model

    path = _existing(path)
    if os.path.isfile(path):
        return Model.from_pretrained(path)
    if _has(path, ADAPTER_CONFIG_NAME):
        from .peft import PeftModel

        return PeftModel.from_pretrained(Model.from_pretrained(_adapter_base(path)), path)
    if _has(path, CONFIG_NAME):
        return Model.from_pretrained(path)
    raise _not_a_model(path)


def load_tokenizer(path: PathLike, tokenizer: Optional[PathLike] = None) -> "Tokenizer":
    """The tokenizer for the model ``path`` names: ``tokenizer`` when given; else the GGUF
    file's own, the directory's ``tokenizer.json`` (a Trainer checkpoint has it when the
    Trainer had a tokenizer), or for an adapter directory without one, its base model's.

    Raises FileNotFoundError naming a missing path, :class:`ferrotune.CheckpointError`
    naming a directory without a tokenizer (pass ``tokenizer``, or ``--ft-tokenizer``).
    """
    from .tokenizer import Tokenizer

    if tokenizer is not None:
        return Tokenizer.from_pretrained(_existing(tokenizer))
    path = source = _existing(path)
    if os.path.isdir(path) and not _has(path, TOKENIZER_NAME) and _has(path, ADAPTER_CONFIG_NAME):
        source = _adapter_base(path)
    if os.path.isfile(source):
        return Tokenizer.from_pretrained(os.path.dirname(source), gguf_file=os.path.basename(source))
    if not _has(source, TOKENIZER_NAME):
        from ._core import CheckpointError

        where = source if source == path else f"{path} nor in its base model {source}"
        raise CheckpointError(f"no {TOKENIZER_NAME} in {where}: give the tokenizer's path (tokenizer=, or --ft-tokenizer in pytest)")
    return Tokenizer.from_pretrained(source)


def _has(directory: str, name: str) -> bool:
    return os.path.isfile(os.path.join(directory, name))


def _existing(path: PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, f"No such file or directory: {path}", path)
    return path


def _adapter_base(adapter_dir: str) -> str:
    """The base model path an adapter's ``base_model_name_or_path`` names (relative paths are
    taken from the current directory, as PEFT does)."""
    from ._core import CheckpointError
    from .io import read_checkpoint_json

    config_file = os.path.join(adapter_dir, ADAPTER_CONFIG_NAME)
    config = read_checkpoint_json(config_file, {"base_model_name_or_path": Optional[str]})
    base: Optional[str] = config.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(
            f"{config_file} names no base model (base_model_name_or_path is missing or null): "
            "set it to the base model's directory or GGUF file, or load the base yourself and "
            "apply the adapter with ferrotune.PeftModel.from_pretrained(base, adapter_dir)"
        )
    if not os.path.exists(base):
        raise CheckpointError(
            f"{config_file} names the base model {base!r}, which is not a local directory or file "
            f"(looked for {os.path.abspath(base)}; ferrotune downloads nothing): point "
            "base_model_name_or_path at a local copy of the base model"
        )
    return base


def _not_a_model(path: str) -> Exception:
    from ._core import CheckpointError
    from .trainer import get_last_checkpoint

    hint = ""
    last = get_last_checkpoint(path)
    if last is not None:
        hint = f" (a Trainer output directory? its latest checkpoint is {last})"
    return CheckpointError(
        f"{path} holds no model: no {CONFIG_NAME} (a saved model or Trainer checkpoint) and "
        f"no {ADAPTER_CONFIG_NAME} (a PEFT adapter){hint}"
    )
