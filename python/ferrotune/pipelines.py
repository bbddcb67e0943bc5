"""``ferrotune.pipeline("text-generation", model=..., tokenizer=...)``: text in, text out
(transformers' pipeline API, for the one task ferrotune covers)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Union

import numpy as np

from .modeling import Model


class TextGenerationPipeline:
    """``pipe(prompt, **generate_kwargs)`` -> ``[{"generated_text": ...}]`` (one dict per
    returned sequence); a list of prompts gives a list of such lists. ``return_full_text=False``
    returns only the new text."""

    def __init__(self, model: Model, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def __call__(
        self, text_inputs: Union[str, List[str]], return_full_text: bool = True, **generate_kwargs: Any
    ) -> Union[List[Dict[str, str]], List[List[Dict[str, str]]]]:
        if isinstance(text_inputs, str):
            return self._one(text_inputs, return_full_text, generate_kwargs)
        return [self._one(t, return_full_text, generate_kwargs) for t in text_inputs]

    def _one(self, prompt: str, return_full_text: bool, kwargs: Dict[str, Any]) -> List[Dict[str, str]]:
        ids = [int(i) for i in self.tokenizer.encode(prompt)]
        if not ids:
            raise ValueError("the prompt encodes to no tokens")
        kwargs = dict(kwargs)
        kwargs.setdefault("tokenizer", self.tokenizer)
        out = self.model.generate(np.asarray([ids], dtype=np.int64), **kwargs)
        results = []
        for row in out:
            new = self.tokenizer.decode([int(i) for i in row[len(ids) :]], skip_special_tokens=True)
            results.append({"generated_text": prompt + new if return_full_text else new})
        return results


def _load_tokenizer(path: Union[str, "os.PathLike[str]"]) -> Any:
    from . import Tokenizer  # type: ignore[attr-defined]

    return Tokenizer.from_pretrained(path)


def pipeline(task: str, model: Any = None, tokenizer: Any = None) -> TextGenerationPipeline:
    """A text-generation pipeline. ``model``: a ``Model`` or a checkpoint directory;
    ``tokenizer``: a tokenizer with ``encode``/``decode`` or a directory (default: the model's
    directory).

    >>> pipe = ferrotune.pipeline("text-generation", model="out/checkpoint-100")
    >>> pipe("Once upon a time", max_new_tokens=30, do_sample=True, top_p=0.9)[0]["generated_text"]
    """
    if task != "text-generation":
        raise ValueError(f"unsupported task {task!r}: ferrotune's pipeline supports 'text-generation'")
    if model is None:
        raise ValueError("pipeline() needs model= (a ferrotune.Model or a checkpoint directory)")
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model = Model.from_pretrained(source)
    if tokenizer is None:
        if source is None:
            raise ValueError("pipeline() needs tokenizer= when model is a Model object")
        tokenizer = source
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer)
    return TextGenerationPipeline(model, tokenizer)
