"""Data: example formats, load_jsonl, the collator (dynamic padding, EOS label kept when
pad == eos), truncation and packing.  Uses a small character-level tokenizer so these tests
do not depend on a trained vocabulary."""

import json

import numpy as np
import pytest

from ferrotune import DataError
from ferrotune.data import (
    IGNORE_INDEX,
    DataCollatorForLanguageModeling,
    as_examples,
    load_jsonl,
    pack_examples,
    prepare_dataset,
    tokenize_example,
)


class CharTokenizer:
    """ids: 'a'..'z' -> 1..26, ' ' -> 27; eos = pad = 0 (GPT-2 style: pad_token = eos_token)."""

    eos_token_id = 0
    pad_token_id = 0
    padding_side = "right"

    def encode(self, text, add_special_tokens=True):
        return [27 if c == " " else ord(c) - ord("a") + 1 for c in text]


TOK = CharTokenizer()


def test_text_example_gets_eos_and_full_loss():
    f = tokenize_example({"text": "abc"}, TOK)
    assert f["input_ids"] == [1, 2, 3, 0]
    assert f["attention_mask"] == [1, 1, 1, 1]
    assert "labels" not in f  # the collator derives them from the attention mask


def test_text_truncation_drops_the_eos_of_a_cut_text():
    f = tokenize_example({"text": "abcdef"}, TOK, max_length=4)
    assert f["input_ids"] == [1, 2, 3, 4]  # the text did not end here: no EOS
    f = tokenize_example({"text": "abc"}, TOK, max_length=4)
    assert f["input_ids"] == [1, 2, 3, 0]
    f = tokenize_example({"text": "abc"}, TOK, add_eos_token=False)
    assert f["input_ids"] == [1, 2, 3]


def test_prompt_completion_loss_on_completion_only():
    f = tokenize_example({"prompt": "ab", "completion": "cd"}, TOK)
    assert f["input_ids"] == [1, 2, 3, 4, 0]
    assert f["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 0]  # EOS appended and learned
    batch = DataCollatorForLanguageModeling(TOK)([f])
    # counted targets (labels[:, 1:] != -100): c, d, eos
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == 3


def test_input_ids_examples_pass_through_and_truncate():
    f = tokenize_example({"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, None)
    assert f == {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]}
    f = tokenize_example({"input_ids": np.array([5, 6, 7, 8])}, None, max_length=2)
    assert f["input_ids"] == [5, 6]
    with pytest.raises(DataError, match="example 3"):
        tokenize_example({"input_ids": [1, 2], "labels": [1]}, None, index=3)
    with pytest.raises(DataError, match="unrecognised"):
        tokenize_example({"question": "x"}, TOK)
    with pytest.raises(DataError, match="tokenizer"):
        tokenize_example({"text": "x"}, None)


def test_collator_dynamic_padding_and_eos_label_kept_when_pad_is_eos():
    feats = [tokenize_example({"text": t}, TOK) for t in ("ab", "abcd")]
    batch = DataCollatorForLanguageModeling(TOK)(feats)
    assert batch["input_ids"].dtype == np.int64 and batch["input_ids"].shape == (2, 5)  # longest + EOS
    np.testing.assert_array_equal(batch["input_ids"][0], [1, 2, 0, 0, 0])
    np.testing.assert_array_equal(batch["attention_mask"][0], [1, 1, 1, 0, 0])
    # the EOS (id 0 == pad id) keeps its label; only the padding is -100
    np.testing.assert_array_equal(batch["labels"][0], [1, 2, 0, IGNORE_INDEX, IGNORE_INDEX])
    np.testing.assert_array_equal(batch["labels"][1], [1, 2, 3, 4, 0])


def test_collator_options():
    feats = [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]
    b = DataCollatorForLanguageModeling(TOK, pad_to_multiple_of=4)(feats)
    assert b["input_ids"].shape == (2, 4)
    b = DataCollatorForLanguageModeling(TOK, max_length=2)(feats)
    assert b["input_ids"].shape == (2, 2)
    b = DataCollatorForLanguageModeling(TOK, padding_side="left")(feats)
    np.testing.assert_array_equal(b["input_ids"][1], [0, 0, 4])
    np.testing.assert_array_equal(b["attention_mask"][1], [0, 0, 1])
    np.testing.assert_array_equal(b["labels"][1], [IGNORE_INDEX, IGNORE_INDEX, 4])
    b = DataCollatorForLanguageModeling(None)(feats)  # no tokenizer: pad id 0
    assert b["input_ids"][1, 2] == 0
    from ferrotune import ConfigError

    with pytest.raises(ConfigError, match="mlm"):
        DataCollatorForLanguageModeling(TOK, mlm=True)
    with pytest.raises(DataError):
        DataCollatorForLanguageModeling(TOK)([])


def test_packing_concatenates_with_eos_and_keeps_prompt_masks():
    feats = [
        {"input_ids": [1, 2], "attention_mask": [1, 1]},
        {"input_ids": [3, 4, 5], "attention_mask": [1, 1, 0]},  # padding is dropped
        {"input_ids": [6, 7], "labels": [IGNORE_INDEX, 7]},
    ]
    blocks = pack_examples(feats, max_length=4, eos_token_id=0)
    stream = [t for b in blocks for t in b["input_ids"]]
    assert stream == [1, 2, 0, 3, 4, 0, 6, 7, 0]
    labels = [t for b in blocks for t in b["labels"]]
    assert labels == [1, 2, 0, 3, 4, 0, IGNORE_INDEX, 7, 0]
    assert [len(b["input_ids"]) for b in blocks] == [4, 4, 1]
    packed = prepare_dataset([{"text": "ab"}, {"text": "cde"}], TOK, max_length=3, packing=True)
    assert [b["input_ids"] for b in packed] == [[1, 2, 0], [3, 4, 5], [0]]


def test_dataset_containers():
    rows = [{"text": "a"}, {"text": "b"}]
    assert as_examples(rows) == rows
    assert as_examples({"text": ["a", "b"]}) == rows  # columns

    class Indexable:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return rows[i]

    assert as_examples(Indexable()) == rows
    assert as_examples(iter(rows)) == rows
    with pytest.raises(DataError, match="expected a dict with 'text', 'prompt' \\+ 'completion', 'messages' or 'input_ids'"):
        as_examples([1, 2])
    with pytest.raises(DataError, match="plain strings are read as 'text' when a tokenizer"):
        as_examples(["a", "b"])
    assert as_examples(["a", "b"], text_field="text") == rows
    # with a tokenizer, prepare_dataset reads plain strings as text rows
    assert prepare_dataset(["ab", "cde"], TOK) == prepare_dataset([{"text": "ab"}, {"text": "cde"}], TOK)


def test_datasets_dataset_when_installed():
    datasets = pytest.importorskip("datasets", reason="the optional `datasets` package is not installed")
    ds = datasets.Dataset.from_dict({"prompt": ["ab"], "completion": ["c"]})
    feats = prepare_dataset(ds, TOK)
    assert feats[0]["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 3, 0]


def test_load_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "a"}) + "\n\n" + json.dumps({"text": "b"}) + "\n", encoding="utf-8")
    assert load_jsonl(p) == [{"text": "a"}, {"text": "b"}]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_jsonl(bad)


def test_with_the_real_bpe_tokenizer():
    import ferrotune
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "tokenizer_bpe"
    if not (path / "tokenizer.json").is_file():
        pytest.skip("tests/fixtures/tokenizer_bpe is absent (run tests/fixtures/make_fixtures.py)")
    if not hasattr(ferrotune, "Tokenizer"):
        pytest.skip("this build has no ferrotune.Tokenizer")
    tok = ferrotune.Tokenizer.from_pretrained(str(path))
    eos = tok.eos_token_id
    f = tokenize_example({"text": "hello world"}, tok)
    assert f["input_ids"][-1] == eos and tok.decode(f["input_ids"][:-1]) == "hello world"
    g = tokenize_example({"prompt": "hello", "completion": " world"}, tok)
    n_prompt = sum(1 for x in g["labels"] if x == IGNORE_INDEX)
    assert n_prompt == len(tok.encode("hello")) and g["labels"][-1] == eos
    batch = DataCollatorForLanguageModeling(tok)([f, g])
    assert batch["input_ids"].shape[0] == 2
    row = 0 if len(f["input_ids"]) < len(g["input_ids"]) else 1
    n = int(batch["attention_mask"][row].sum())
    assert batch["labels"][row, n - 1] == eos  # the EOS label survives padding
