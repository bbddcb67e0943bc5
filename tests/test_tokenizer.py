"""ferrotune.Tokenizer: parity with transformers' GPT2TokenizerFast (tests/fixtures/tokenizer_bpe,
made by tests/fixtures/make_fixtures.py), training, saving, padding and errors."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import ferrotune
from ferrotune import BatchEncoding, InputError, Tokenizer, TokenizerError

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer_bpe"
EOT = "<|endoftext|>"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fine-tuning reads a model, a tokenizer and a dataset, then trains.",
    "你好，世界！今天天气很好。我们一起学习中文。",
    "emoji 🦀🐍 👍🏽 and 🎉🎉 party",
    "def f(x):\n    return x * 2\n",
    "numbers 12345 and 3.14159",
]


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture()
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(FIXTURE)


@pytest.fixture()
def slow_dir(tmp_path: Path) -> Path:
    """Only GPT-2's slow-tokenizer files: vocab.json + merges.txt."""
    d = tmp_path / "slow"
    d.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(FIXTURE / name, d / name)
    return d


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train_new_from_iterator(CORPUS * 20, vocab_size=420)


# ---------------------------------------------------------------------------
# parity with transformers
# ---------------------------------------------------------------------------


def test_metadata_matches_transformers(tok: Tokenizer, expected: dict) -> None:
    assert tok.vocab_size == expected["vocab_size"]
    assert len(tok) == expected["len"]
    special = expected["special"]
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == (special["bos"], special["eos"], special["unk"])
    assert tok.eos_token_id == special["eos_id"]
    assert tok.pad_token is None and tok.pad_token_id is None
    assert tok.padding_side == "right" and tok.truncation_side == "right"
    assert tok.model_max_length == int(1e30)


@pytest.mark.parametrize("source", ["directory", "tokenizer.json file", "vocab+merges only"])
def test_ids_tokens_and_decodes_match(source: str, expected: dict, slow_dir: Path) -> None:
    path = {"directory": FIXTURE, "tokenizer.json file": FIXTURE / "tokenizer.json", "vocab+merges only": slow_dir}[
        source
    ]
    tok = Tokenizer.from_pretrained(path)
    assert tok.eos_token == EOT and tok.eos_token_id == expected["special"]["eos_id"]
    cases = expected["cases"]
    assert len(cases) >= 12
    for case in cases:
        text = case["text"]
        assert tok(text)["input_ids"] == case["ids"], text
        assert tok.encode(text) == case["ids"], text
        assert tok.tokenize(text) == case["tokens"], text
        assert tok.decode(case["ids"]) == case["decoded"], text
        assert tok.decode(case["ids"], skip_special_tokens=True) == case["decoded_skip_special"], text
    # the whole batch at once gives the same rows
    batch = tok([c["text"] for c in cases])
    assert batch["input_ids"] == [c["ids"] for c in cases]
    assert tok.batch_decode(batch["input_ids"]) == [c["decoded"] for c in cases]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_transformers(tok: Tokenizer, expected: dict, side: str) -> None:
    b = expected["batch"]
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == b["pad_token_id"]
    tok.padding_side = side
    out = tok(b["texts"], padding=True, return_tensors="np")
    assert isinstance(out, BatchEncoding)
    assert out.input_ids.dtype == np.int64 and out.attention_mask.dtype == np.int64
    np.testing.assert_array_equal(out.input_ids, np.array(b[side]["input_ids"]))
    np.testing.assert_array_equal(out.attention_mask, np.array(b[side]["attention_mask"]))
    lists = tok(b["texts"], padding="longest")
    assert lists["input_ids"] == b[side]["input_ids"]
    assert lists["attention_mask"] == b[side]["attention_mask"]


def test_truncation_matches_transformers(tok: Tokenizer, expected: dict) -> None:
    t = expected["truncation"]
    out = tok(t["text"], truncation=True, max_length=t["max_length"])
    assert out["input_ids"] == t["input_ids"]
    assert out["attention_mask"] == t["attention_mask"]
    # transformers: max_length without padding turns truncation on
    assert tok(t["text"], max_length=t["max_length"])["input_ids"] == t["input_ids"]
    assert tok(t["text"])["input_ids"] == t["full_ids"]
    tok.truncation_side = "left"
    assert tok(t["text"], truncation=True, max_length=5)["input_ids"] == t["full_ids"][-5:]


# ---------------------------------------------------------------------------
# encoding options
# ---------------------------------------------------------------------------


def test_single_text_gives_flat_lists_and_np_gives_one_row(tok: Tokenizer) -> None:
    out = tok("Hello world")
    assert isinstance(out.input_ids, list) and isinstance(out.input_ids[0], int)
    assert out.attention_mask == [1] * len(out.input_ids)
    arr = tok("Hello world", return_tensors="np")
    assert arr["input_ids"].shape == (1, len(out.input_ids))
    assert "attention_mask" not in tok("Hello world", return_attention_mask=False)
    with pytest.raises(AttributeError):
        _ = out.token_type_ids


def test_max_length_padding_and_multiple(tok: Tokenizer) -> None:
    tok.pad_token = tok.eos_token
    texts = ["Hello world", "a much longer sentence about the quick brown fox"]
    out = tok(texts, padding="max_length", truncation=True, max_length=12, return_tensors="np")
    assert out.input_ids.shape == (2, 12)
    assert out.attention_mask[0].sum() == len(tok.encode("Hello world"))
    assert out.attention_mask[1].sum() == 12
    out = tok(["Hello world"], padding=True, pad_to_multiple_of=16, return_tensors="np")
    assert out.input_ids.shape == (1, 16)
    assert (out.input_ids[0, 8:] == tok.pad_token_id).all()


def test_ragged_batch_without_padding(tok: Tokenizer) -> None:
    out = tok(["a", "a much longer sentence"])
    assert len(out.input_ids[0]) < len(out.input_ids[1])
    with pytest.raises(InputError, match="padding"):
        tok(["a", "a much longer sentence"], return_tensors="np")


def test_bad_arguments_raise_typed_errors(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match="return_tensors"):
        tok("x", return_tensors="pt")
    with pytest.raises(InputError, match="padding"):
        tok("x", padding="sideways")
    with pytest.raises(InputError):
        tok(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError):
        tok.encode(["a", "b"])  # type: ignore[arg-type]


def test_padding_without_pad_token_raises(tok: Tokenizer) -> None:
    assert tok.pad_token is None
    with pytest.raises(TokenizerError, match="does not have a padding token"):
        tok(["a", "bb"], padding=True)
    with pytest.raises(TokenizerError, match="does not have a padding token"):
        tok.pad([{"input_ids": [1, 2]}, {"input_ids": [1]}])
    assert issubclass(TokenizerError, ferrotune.FerrotuneError)


def test_padding_side_is_validated(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match="padding_side"):
        tok.padding_side = "middle"
    with pytest.raises(InputError, match="truncation_side"):
        tok.truncation_side = "up"
    assert tok.padding_side == "right"
    tok.padding_side = "left"
    assert tok.padding_side == "left"


# ---------------------------------------------------------------------------
# decoding and vocabulary
# ---------------------------------------------------------------------------


def test_decode_accepts_lists_arrays_and_numpy_ints(tok: Tokenizer) -> None:
    ids = tok.encode("Hello world")
    assert tok.decode(np.array(ids, dtype=np.int64)) == "Hello world"
    assert tok.decode(np.array(ids, dtype=np.int32)) == "Hello world"
    assert tok.decode([np.int64(i) for i in ids]) == "Hello world"
    assert tok.decode(np.int64(ids[0])) == tok.decode([ids[0]])
    assert tok.decode(tuple(ids)) == "Hello world"
    padded = np.array([ids, ids[:3] + [0] * (len(ids) - 3)])
    assert tok.batch_decode(padded, skip_special_tokens=True) == ["Hello world", tok.decode(ids[:3])]


def test_decode_rejects_ids_outside_the_vocabulary(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match=str(len(tok))):
        tok.decode([1, 2, len(tok)])
    with pytest.raises(InputError, match="-100"):
        tok.decode([5, -100])
    with pytest.raises(InputError):
        tok.batch_decode([[1], [10**6]])
    with pytest.raises(InputError):
        tok.decode(np.array([1.0, 2.0]))


def test_token_id_conversions(tok: Tokenizer) -> None:
    vocab = tok.get_vocab()
    assert len(vocab) == len(tok) and vocab[EOT] == tok.eos_token_id
    tokens = tok.tokenize("Hello world")
    ids = tok.convert_tokens_to_ids(tokens)
    assert ids == tok.encode("Hello world")
    assert tok.convert_ids_to_tokens(ids) == tokens
    assert tok.convert_ids_to_tokens(ids[0]) == tokens[0]
    assert tok.convert_tokens_to_ids("definitely-not-a-token") == tok.unk_token_id
    assert tok.convert_ids_to_tokens(10**6) is None
    assert tok.convert_ids_to_tokens([0, ids[0]], skip_special_tokens=True) == [tokens[0]]
    assert tok.all_special_ids == [tok.eos_token_id]


def test_special_token_setters(tok: Tokenizer) -> None:
    tok.pad_token = tok.eos_token
    assert tok.pad_token == EOT and tok.pad_token_id == tok.eos_token_id
    tok.pad_token = None
    assert tok.pad_token_id is None
    tok.pad_token_id = tok.eos_token_id
    assert tok.pad_token == EOT
    n = len(tok)
    with pytest.warns(UserWarning, match="resize"):
        tok.pad_token = "<pad>"
    assert len(tok) == n + 1 and tok.pad_token_id == n
    assert tok.add_special_tokens({"additional_special_tokens": ["<sep>"], "pad_token": "<pad>"}) == 1
    assert tok.additional_special_tokens == ["<sep>"] and len(tok) == n + 2
    assert tok.encode("a<sep>b")[1] == tok.convert_tokens_to_ids("<sep>")
    assert tok.decode(tok.encode("a<sep>b"), skip_special_tokens=True) == "ab"
    with pytest.raises(InputError):
        tok.pad_token_id = 10**6


# ---------------------------------------------------------------------------
# pad (data collators)
# ---------------------------------------------------------------------------


def test_pad_features_with_labels(tok: Tokenizer) -> None:
    tok.pad_token = tok.eos_token
    feats = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "length": 3},
        {"input_ids": np.array([8]), "labels": [8], "length": 1},
    ]
    out = tok.pad(feats)
    np.testing.assert_array_equal(out["input_ids"], [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(out["labels"], [[-100, 6, 7], [8, -100, -100]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(out["length"], [3, 1])
    assert out["input_ids"].dtype == np.int64

    tok.padding_side = "left"
    out = tok.pad(feats, padding="max_length", max_length=4, return_tensors=None)
    assert out["input_ids"] == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert out["labels"] == [[-100, -100, 6, 7], [-100, -100, -100, 8]]
    assert out["attention_mask"] == [[0, 1, 1, 1], [0, 0, 0, 1]]

    out = tok.pad({"input_ids": [[1, 2, 3], [4]]}, pad_to_multiple_of=8)
    assert out["input_ids"].shape == (2, 8)
    single = tok.pad({"input_ids": [1, 2, 3]}, padding="max_length", max_length=5)
    np.testing.assert_array_equal(single["attention_mask"], [0, 0, 1, 1, 1])


def test_pad_rejects_inconsistent_features(tok: Tokenizer) -> None:
    tok.pad_token = tok.eos_token
    with pytest.raises(ferrotune.DataError):
        tok.pad([{"input_ids": [1, 2], "attention_mask": [1]}])
    with pytest.raises(ferrotune.DataError):
        tok.pad([{"input_ids": [1]}, {"labels": [1]}])
    with pytest.raises(InputError, match="longer than max_length"):
        tok.pad([{"input_ids": [1, 2, 3]}], padding="max_length", max_length=2)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------


def test_train_new_byte_level_bpe(trained: Tokenizer) -> None:
    assert 256 < len(trained) <= 420
    assert trained.convert_tokens_to_ids(EOT) == 0
    assert trained.bos_token == trained.eos_token == trained.unk_token == EOT
    assert trained.pad_token is None
    for text in CORPUS + ["unseen: 日本語のテキスト 🦀🚀 Ωμέγα", "  spaces\t\ttabs\n"]:
        ids = trained.encode(text)
        assert trained.decode(ids) == text
        assert all(0 <= i < len(trained) for i in ids)
    # merges were learnt from the corpus
    assert len(trained.encode("The quick brown fox")) < len("The quick brown fox".encode())
    assert len(trained.encode("你好，世界")) < len("你好，世界".encode())
    assert trained.decode(trained.encode("x" + EOT), skip_special_tokens=True) == "x"


def test_train_accepts_batches_and_generators() -> None:
    batches = (CORPUS[i : i + 2] for i in range(0, len(CORPUS), 2))
    a = Tokenizer.train_new_from_iterator(batches, vocab_size=300)
    b = Tokenizer.train_new_from_iterator(iter(CORPUS), vocab_size=300)
    assert a.get_vocab() == b.get_vocab()
    with pytest.raises(TypeError, match="str"):
        Tokenizer.train_new_from_iterator([CORPUS[0], 42], vocab_size=300)

    def failing():
        yield "some text"
        raise RuntimeError("corpus broke")

    with pytest.raises(RuntimeError, match="corpus broke"):
        Tokenizer.train_new_from_iterator(failing(), vocab_size=300)
    with pytest.raises(InputError, match="vocab_size"):
        Tokenizer.train_new_from_iterator(CORPUS, vocab_size=100)


def test_train_on_instance_keeps_special_tokens(tok: Tokenizer) -> None:
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    new = tok.train_new_from_iterator(CORPUS * 10, 330, new_special_tokens=["<sep>"])
    assert isinstance(new, Tokenizer)
    assert new.eos_token == EOT and new.pad_token == EOT and new.padding_side == "left"
    assert new.convert_tokens_to_ids(EOT) == 0 and new.convert_tokens_to_ids("<sep>") == 1
    assert new.get_vocab() != tok.get_vocab()
    text = "你好 🦀 def f(x):"
    assert new.decode(new.encode(text)) == text


# ---------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------


def test_save_pretrained_round_trip(trained: Tokenizer, tmp_path: Path) -> None:
    tok = pickle.loads(pickle.dumps(trained))  # a copy; the fixture is shared
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    tok.model_max_length = 128
    files = tok.save_pretrained(tmp_path / "out")
    names = sorted(Path(f).name for f in files)
    assert names == sorted(
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]
    )
    assert all(Path(f).is_file() for f in files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names  # no temporary files left
    cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert cfg["pad_token"] == EOT and cfg["padding_side"] == "left" and cfg["model_max_length"] == 128
    assert cfg["tokenizer_class"] == "GPT2Tokenizer"
    assert cfg["added_tokens_decoder"]["0"]["content"] == EOT and cfg["added_tokens_decoder"]["0"]["special"]

    back = Tokenizer.from_pretrained(tmp_path / "out")
    texts = CORPUS + ["new text 🎉 与 中文"]
    for a, b in [(tok, back)]:
        assert a(texts, padding=True, return_tensors="np").input_ids.tolist() == b(
            texts, padding=True, return_tensors="np"
        ).input_ids.tolist()
    assert (back.pad_token, back.padding_side, back.model_max_length) == (EOT, "left", 128)
    assert back.get_vocab() == tok.get_vocab()

    # the slow files alone give the same ids
    slow = tmp_path / "slow"
    slow.mkdir()
    for n in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "out" / n, slow / n)
    slow_tok = Tokenizer.from_pretrained(slow)
    assert [slow_tok.encode(t) for t in texts] == [tok.encode(t) for t in texts]


def test_fixture_round_trip_keeps_unknown_config_keys(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["errors"] == "replace" and cfg["add_prefix_space"] is False
    assert cfg["pad_token"] is None
    back = Tokenizer.from_pretrained(tmp_path)
    assert back.pad_token is None and back.eos_token == EOT
    assert back.model_max_length == int(1e30)


def test_pickle_round_trip(tok: Tokenizer) -> None:
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    back = pickle.loads(pickle.dumps(tok))
    assert back.padding_side == "left" and back.pad_token == EOT
    assert back(["a", "bcd"], padding=True)["input_ids"] == tok(["a", "bcd"], padding=True)["input_ids"]


def test_from_pretrained_overrides(tok: Tokenizer) -> None:
    t = Tokenizer.from_pretrained(FIXTURE, padding_side="left", pad_token=EOT, use_fast=True)
    assert t.padding_side == "left" and t.pad_token == EOT
    with pytest.raises(TypeError, match="not_a_setting"):
        Tokenizer.from_pretrained(FIXTURE, not_a_setting=1)
    assert "vocab_size=400" in repr(tok) and EOT in repr(tok)


# ---------------------------------------------------------------------------
# load errors
# ---------------------------------------------------------------------------


def test_missing_paths_raise_file_not_found(tmp_path: Path, slow_dir: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match="no-such-dir") as e:
        Tokenizer.from_pretrained(missing)
    assert e.value.filename == str(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(empty)
    (slow_dir / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        Tokenizer.from_pretrained(slow_dir)


def test_corrupt_files_raise_tokenizer_error(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_pretrained(d)
    (d / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_pretrained(d)
    shutil.copy(FIXTURE / "tokenizer.json", d / "tokenizer.json")
    (d / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(d)
    (d / "tokenizer_config.json").write_text('{"padding_side": "middle"}')
    with pytest.raises(InputError, match="padding_side"):
        Tokenizer.from_pretrained(d)

    slow = tmp_path / "slow"
    slow.mkdir()
    shutil.copy(FIXTURE / "vocab.json", slow / "vocab.json")
    (slow / "merges.txt").write_text("#version: 0.2\nH e l\n")
    with pytest.raises(TokenizerError, match="merges.txt"):
        Tokenizer.from_pretrained(slow)
    (slow / "merges.txt").write_text("#version: 0.2\nnot-in-vocab xyz\n")
    with pytest.raises(TokenizerError):
        Tokenizer.from_pretrained(slow)


def test_warnings_are_not_raised_for_known_tokens(tok: Tokenizer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.pad_token = tok.eos_token
        tok.bos_token = EOT
