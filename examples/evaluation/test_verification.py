"""A yes/no classifier scored by the language model: does this English sense translate this
Chinese word? Half the pairs are right, half pair the word with another word's sense."""

import ferrotune as ft
from ferrotune.testing import assert_metric

from cases import BOUNDS, EXAMPLES, is_chat


def verification_rows(tokenizer):
    words = EXAMPLES[64:128]
    rows = []
    for k, e in enumerate(words):
        other = words[(k + 1) % len(words)]
        sense, label = (e["en"], "yes") if k % 2 == 0 else (other["en"], "no")
        question = f'Does the Chinese word {e["zh"]} mean "{sense}"? Answer yes or no.'
        if is_chat(tokenizer):
            rows.append({"messages": [{"role": "user", "content": question}], "label": label})
        else:
            rows.append({"prompt": question + "\nAnswer:", "label": label})
    return rows


def test_verification_f1(ft_model, ft_tokenizer, ft_record):
    # after a chat template's assistant prompt the answer starts the line; after "Answer:" a space
    delimiter = "" if is_chat(ft_tokenizer) else " "
    result = ft.evaluate(
        ft_model, ft_tokenizer, verification_rows(ft_tokenizer), task="classification",
        label_words=["yes", "no"], delimiter=delimiter,
    )
    ft_record("verification_accuracy", result["accuracy"])
    assert_metric(result, "f1", at_least=BOUNDS["verification_f1_at_least"])
