"""Perplexity of whole held-out translation chats (system, question, dictionary answer)."""

import ferrotune as ft
from ferrotune.testing import assert_metric

from cases import BOUNDS


def test_perplexity(ft_model, ft_tokenizer, ft_record, translation_rows):
    texts = []
    for row in translation_rows:
        answer = row["reference"][0]
        if "messages" in row:
            texts.append({"messages": row["messages"] + [{"role": "assistant", "content": answer}]})
        else:
            texts.append({"text": f"{row['prompt']} {answer}"})
    result = ft.evaluate(ft_model, ft_tokenizer, texts, task="perplexity")
    ft_record("perplexity_loss", result["loss"], higher_is_better=False)
    assert_metric(result, "perplexity", at_most=BOUNDS["perplexity_at_most"])
