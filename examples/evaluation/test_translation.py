"""Chinese -> English on held-out dictionary words: exact match, chrF, BLEU and token F1."""

import ferrotune as ft
from ferrotune.testing import assert_metric

from cases import BOUNDS


def test_translation(ft_model, ft_tokenizer, ft_record, translation_rows):
    result = ft.evaluate(ft_model, ft_tokenizer, translation_rows, task="generation", max_new_tokens=16, batch_size=16)
    for name in ("exact_match", "bleu", "f1"):
        ft_record(f"translation_{name}", result[name])
    assert_metric(result, "chrf", at_least=BOUNDS["translation_chrf_at_least"])
