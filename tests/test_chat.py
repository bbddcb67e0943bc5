"""Chat templates: rendering and tokenizing parity with transformers' apply_chat_template
(tests/fixtures/chat_tokenizer, made by tests/fixtures/make_fixtures.py), the assistant-token
masks ({% generation %} and prefix-based), training examples in the "messages" format,
saving/loading templates, and errors."""

from __future__ import annotations

import datetime
import json
import pickle
import shutil
import warnings
from pathlib import Path

import jinja2.exceptions
import numpy as np
import pytest

import ferrotune
from ferrotune import BatchEncoding, DataError, InputError, Tokenizer, TokenizerError
from ferrotune import chat
from ferrotune.chat import ChatTemplateError, encode_chat_for_training
from ferrotune.data import IGNORE_INDEX, prepare_dataset, tokenize_example

FIXTURE = Path(__file__).parent / "fixtures" / "chat_tokenizer"


def _load_expected() -> dict:
    path = FIXTURE / "expected.json"
    if not path.exists():
        return {"cases": []}
    return json.loads(path.read_text(encoding="utf-8"))


EXPECTED = _load_expected()
CASES = EXPECTED["cases"]


def _case_id(c: dict) -> str:
    opt = "continue" if c.get("continue_final_message") else f"agp={int(c['add_generation_prompt'])}"
    return f"{c['template']}-{c['conversation']}-{opt}"


@pytest.fixture(scope="module")
def expected() -> dict:
    if not CASES:
        pytest.skip("tests/fixtures/chat_tokenizer is missing: run tests/fixtures/make_fixtures.py")
    return EXPECTED


@pytest.fixture()
def tok(expected: dict) -> Tokenizer:
    return Tokenizer.from_pretrained(FIXTURE)


def conv(expected: dict, name: str) -> list:
    return expected["conversations"][name]


def call_kwargs(case: dict) -> dict:
    keys = ("add_generation_prompt", "continue_final_message", "tools", "date_string")
    return {k: case[k] for k in keys if k in case}


def masked_text(tok: Tokenizer, ids: list, mask: list) -> list:
    """The decoded runs of consecutive masked tokens."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


# ---------------------------------------------------------------------------
# parity with transformers
# ---------------------------------------------------------------------------


def test_tokenizer_fixture_and_template_file(tok: Tokenizer, expected: dict) -> None:
    assert expected["files"] == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    assert tok.chat_template == expected["templates"]["chatml"]
    sp = expected["special"]
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (sp["bos"], sp["eos"], sp["unk"], sp["pad"])
    for t in ("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|eot_id|>"):
        assert len(tok.encode(t, add_special_tokens=False)) == 1


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_render_and_ids_match_transformers(case: dict, expected: dict) -> None:
    tok = Tokenizer.from_pretrained(FIXTURE)
    template = expected["templates"][case["template"]]
    messages = conv(expected, case["conversation"])
    kw = call_kwargs(case)
    if "error" in case:
        with pytest.raises(InputError, match="does not appear in the chat"):
            tok.apply_chat_template(messages, chat_template=template, tokenize=False, **kw)
        return
    assert tok.apply_chat_template(messages, chat_template=template, tokenize=False, **kw) == case["text"]
    assert tok.apply_chat_template(messages, chat_template=template, return_dict=False, **kw) == case["ids"]
    if "assistant_masks" in case:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            enc = tok.apply_chat_template(messages, chat_template=template, return_assistant_tokens_mask=True, **kw)
        assert isinstance(enc, BatchEncoding)
        assert enc["input_ids"] == case["ids"]
        assert enc["attention_mask"] == [1] * len(case["ids"])
        assert enc["assistant_masks"] == case["assistant_masks"]
        no_tag = not chat.has_generation_tags(template)
        assert any("generation" in str(w.message) for w in caught) == no_tag


def test_default_call_returns_a_batch_encoding_like_transformers_5(tok: Tokenizer, expected: dict) -> None:
    ref = expected["default_call"]
    out = tok.apply_chat_template(conv(expected, ref["conversation"]))
    assert type(out).__name__ == ref["type"] == "BatchEncoding"
    assert sorted(out.keys()) == ref["keys"]
    assert out["input_ids"] == ref["input_ids"]


def test_batch_with_padding_and_masks(tok: Tokenizer, expected: dict) -> None:
    ref = expected["batch"]
    template = expected["templates"][ref["template"]]
    convs = [conv(expected, n) for n in ref["conversations"]]
    assert tok.padding_side == ref["padding_side"]
    out = tok.apply_chat_template(convs, chat_template=template, padding=True, return_assistant_tokens_mask=True)
    assert out["input_ids"] == ref["input_ids"]
    assert out["attention_mask"] == ref["attention_mask"]
    assert out["assistant_masks"] == ref["assistant_masks"]
    arr = tok.apply_chat_template(
        convs, chat_template=template, padding=True, return_assistant_tokens_mask=True, return_tensors="np"
    )
    np.testing.assert_array_equal(arr["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(arr["assistant_masks"], ref["assistant_masks"])
    assert arr["assistant_masks"].dtype == np.int64
    # left padding moves the masks with the tokens
    tok.padding_side = "left"
    left = tok.apply_chat_template(convs, chat_template=template, padding=True, return_assistant_tokens_mask=True)
    for b in range(2):
        n, T = sum(ref["attention_mask"][b]), len(ref["input_ids"][b])
        assert left["input_ids"][b][T - n :] == ref["input_ids"][b][:n]
        assert left["assistant_masks"][b] == [0] * (T - n) + ref["assistant_masks"][b][:n]
    texts = tok.apply_chat_template(convs, chat_template=template, tokenize=False)
    assert isinstance(texts, list) and len(texts) == 2


def test_truncation_cuts_ids_and_masks(tok: Tokenizer, expected: dict) -> None:
    ref = expected["truncation"]
    out = tok.apply_chat_template(
        conv(expected, ref["conversation"]),
        chat_template=expected["templates"][ref["template"]],
        truncation=True,
        max_length=ref["max_length"],
        return_assistant_tokens_mask=True,
    )
    assert out["input_ids"] == ref["input_ids"]
    assert out["assistant_masks"] == ref["assistant_masks"]


def test_raise_exception_in_a_template(tok: Tokenizer, expected: dict) -> None:
    ref = expected["raise_exception"]
    messages = [{"role": r, "content": "x"} for r in ref["roles"]]
    with pytest.raises(ChatTemplateError) as info:
        tok.apply_chat_template(messages, chat_template=expected["templates"][ref["template"]], tokenize=False)
    assert str(info.value) == ref["message"]
    assert ref["type"] == "jinja2.exceptions.TemplateError"
    assert isinstance(info.value, jinja2.exceptions.TemplateError)  # what transformers raises
    assert isinstance(info.value, TokenizerError) and isinstance(info.value, ferrotune.FerrotuneError)


# ---------------------------------------------------------------------------
# the environment: filters, globals, sandbox, cache
# ---------------------------------------------------------------------------


def render1(template: str, **kw) -> str:
    return chat.render([[{"role": "user", "content": "hi"}]], template, **kw)[0][0]


def test_environment_globals_and_filters() -> None:
    assert render1("{{ strftime_now('%Y') }}") == str(datetime.datetime.now().year)
    assert render1("{{ {'k': 'é<b>'} | tojson }}") == '{"k": "é<b>"}'
    assert render1("{{ [1, 2] | tojson(indent=2) }}") == "[\n  1,\n  2\n]"
    assert render1("{{ {'b': 1, 'a': 2} | tojson(sort_keys=True, separators=(',', ':')) }}") == '{"a":2,"b":1}'
    assert render1("{% for m in messages %}{{ m.role }}{% break %}{% endfor %}") == "user"
    assert render1("{% set d = dict(a=1) %}{{ d.a }}") == "1"
    assert render1("{{ messages[0].content }}{{ undefined_variable }}") == "hi"
    assert render1("{% if x %}\n  a\n{% endif %}\nb", x=True) == "  a\nb"  # trim_blocks + lstrip_blocks
    assert chat.compile_template("{{ 1 }}") is chat.compile_template("{{ 1 }}")


def test_sandbox_blocks_python_internals() -> None:
    with pytest.raises(ChatTemplateError):
        render1("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError, match="underscore"):
        render1("{% set ns = namespace(_x=1) %}")
    with pytest.raises(ChatTemplateError):
        render1("{% set x = messages.append(1) %}")  # immutable sandbox


def test_syntax_error_names_the_problem() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        chat.compile_template("{% for m in messages %}")


# ---------------------------------------------------------------------------
# assistant tokens for training
# ---------------------------------------------------------------------------

TRAIN_CONVS = ["pair", "system", "trailing_space", "none_key", "tool_turn", "long"]


@pytest.mark.parametrize("name", TRAIN_CONVS)
def test_prefix_mask_on_chatml_equals_transformers_generation_mask(name: str, tok: Tokenizer, expected: dict) -> None:
    """SmolLM2's template has no {% generation %}: the prefix-based mask must mark exactly what
    transformers marks on the same template with the reply + <|im_end|> in a generation block."""
    ref = next(
        c for c in CASES if c["template"] == "chatml_gen" and c["conversation"] == name
        and c.get("add_generation_prompt") is False
    )
    ids, mask = encode_chat_for_training(tok, conv(expected, name))
    assert ids == ref["ids"]
    assert mask == ref["assistant_masks"]
    replies = [m["content"] + "<|im_end|>" for m in conv(expected, name) if m["role"] == "assistant"]
    assert masked_text(tok, ids, mask) == replies


@pytest.mark.parametrize("name", TRAIN_CONVS)
def test_generation_tags_drive_the_training_mask(name: str, tok: Tokenizer, expected: dict) -> None:
    for template in ("chatml_gen", "gen_dash"):
        ref = next(
            c for c in CASES if c["template"] == template and c["conversation"] == name
            and c.get("add_generation_prompt") is False
        )
        ids, mask = encode_chat_for_training(tok, conv(expected, name), chat_template=expected["templates"][template])
        assert (ids, mask) == (ref["ids"], ref["assistant_masks"])


def test_prefix_mask_on_llama3_marks_reply_and_eot(tok: Tokenizer, expected: dict) -> None:
    messages = conv(expected, "system")
    ids, mask = encode_chat_for_training(tok, messages, chat_template=expected["templates"]["llama3"])
    ref = next(c for c in CASES if c["template"] == "llama3" and c["conversation"] == "system")
    assert ids == ref["ids"]
    assert masked_text(tok, ids, mask) == [m["content"].strip() + "<|eot_id|>" for m in messages if m["role"] == "assistant"]


def test_offset_mapping_matches_transformers_offsets() -> None:
    """Token offsets (what assistant masks are made from) come from the `tokenizers` library:
    equal to the offsets transformers recorded for the BPE fixture, as lists and as arrays."""
    bpe = Path(__file__).parent / "fixtures" / "tokenizer_bpe"
    if not (bpe / "expected.json").exists():
        pytest.skip("tokenizer_bpe fixture missing")
    t = Tokenizer.from_pretrained(bpe)
    cases = json.loads((bpe / "expected.json").read_text(encoding="utf-8"))["cases"]
    for case in cases:
        enc = t(case["text"], add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == case["ids"]
        assert [tuple(o) for o in enc["offset_mapping"]] == [tuple(o) for o in case["offsets"]], case["text"]
    texts = [c["text"] for c in cases[:3]]
    t.pad_token = t.eos_token
    batch = t(texts, add_special_tokens=False, padding=True, return_offsets_mapping=True, return_tensors="np")
    assert batch["offset_mapping"].shape == batch["input_ids"].shape + (2,)
    for row, case in zip(batch["offset_mapping"], cases[:3]):
        real = [tuple(o) for o in row.tolist()][: len(case["ids"])] if t.padding_side == "right" else [tuple(o) for o in row.tolist()][-len(case["ids"]) :]
        assert real == [tuple(o) for o in case["offsets"]]


def test_template_that_rewrites_history_is_refused(tok: Tokenizer) -> None:
    # renders only the last assistant message: prefixes do not line up
    template = (
        "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}{{ m.role }}: {{ m.content }}\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(DataError, match="generation"):
        encode_chat_for_training(tok, messages, chat_template=template)


# ---------------------------------------------------------------------------
# "messages" datasets
# ---------------------------------------------------------------------------


def test_messages_example_has_labels_on_assistant_tokens_only(tok: Tokenizer, expected: dict) -> None:
    messages = conv(expected, "system")
    feat = tokenize_example({"messages": messages}, tok)
    ids, labels = feat["input_ids"], feat["labels"]
    assert feat["attention_mask"] == [1] * len(ids)
    ref = next(c for c in CASES if c["template"] == "chatml" and c["conversation"] == "system"
               and c.get("add_generation_prompt") is False)
    assert ids == ref["ids"]  # no EOS appended: <|im_end|> ends the reply
    mask = [int(lab != IGNORE_INDEX) for lab in labels]
    assert all(lab == i for lab, i in zip(labels, ids) if lab != IGNORE_INDEX)
    assert masked_text(tok, ids, mask) == ["4<|im_end|>", "6, of course.<|im_end|>"]


def test_messages_dataset_truncation_and_columns(tok: Tokenizer, expected: dict) -> None:
    data = {"messages": [conv(expected, "pair"), conv(expected, "system")]}
    full = prepare_dataset(data, tok)
    cut = prepare_dataset(data, tok, max_length=30)
    assert [len(f["input_ids"]) for f in cut] == [min(30, len(f["input_ids"])) for f in full]
    for f, g in zip(full, cut):
        assert g["labels"] == f["labels"][:30] and g["input_ids"] == f["input_ids"][:30]
    # tools in the example reach the template
    with_tools = tokenize_example(
        {"messages": conv(expected, "pair"), "tools": expected["tools"]},
        tok_with(tok, expected["templates"]["llama31_tools"]),
    )
    assert "get_temperature" in tok.decode(with_tools["input_ids"])


def tok_with(tok: Tokenizer, template: str) -> Tokenizer:
    tok.chat_template = template
    return tok


def test_trainer_trains_on_messages(tok: Tokenizer, expected: dict, tmp_path: Path) -> None:
    model = ferrotune.Model.from_config(
        {"model_type": "gpt2", "vocab_size": len(tok), "n_positions": 128, "n_embd": 32, "n_layer": 1,
         "n_head": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
        seed=0,
    )
    data = [{"messages": conv(expected, n)} for n in ("pair", "system", "tool_turn", "none_key")]
    args = ferrotune.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=4,
        logging_steps=1, save_strategy="no", disable_tqdm=True, report_to="none", seed=0, max_length=96,
    )
    trainer = ferrotune.Trainer(model, args, train_dataset=data, processing_class=tok)
    feats = trainer._features(data)
    for f, d in zip(feats, data):
        ids, mask = encode_chat_for_training(tok, d["messages"])
        assert f["labels"] == [i if m else IGNORE_INDEX for i, m in zip(ids, mask)][:96]
    out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(np.isfinite(losses)) and out.global_step == 4


# ---------------------------------------------------------------------------
# loading, setting and saving templates
# ---------------------------------------------------------------------------


def test_save_writes_chat_template_jinja_like_transformers_5(tok: Tokenizer, tmp_path: Path) -> None:
    paths = tok.save_pretrained(tmp_path / "out")
    assert str(tmp_path / "out" / "chat_template.jinja") in paths
    assert (tmp_path / "out" / "chat_template.jinja").read_text(encoding="utf-8") == tok.chat_template
    assert "chat_template" not in json.loads((tmp_path / "out" / "tokenizer_config.json").read_text(encoding="utf-8"))
    back = Tokenizer.from_pretrained(tmp_path / "out")
    assert back.chat_template == tok.chat_template
    assert Tokenizer.from_pretrained(tmp_path / "out" / "tokenizer.json").chat_template == tok.chat_template


def test_template_from_tokenizer_config_key(tmp_path: Path, expected: dict) -> None:
    d = tmp_path / "legacy"
    shutil.copytree(FIXTURE, d)
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = expected["templates"]["llama3"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    tok = Tokenizer.from_pretrained(d)
    assert tok.chat_template == expected["templates"]["llama3"]
    # pickling keeps it; saving moves it to chat_template.jinja and out of the config
    assert pickle.loads(pickle.dumps(tok)).chat_template == expected["templates"]["llama3"]
    tok.chat_template = expected["templates"]["chatml"]
    assert pickle.loads(pickle.dumps(tok)).chat_template == expected["templates"]["chatml"]
    tok.save_pretrained(tmp_path / "saved")
    assert "chat_template" not in json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert Tokenizer.from_pretrained(tmp_path / "saved").chat_template == expected["templates"]["chatml"]
    # a chat_template.jinja file wins over the config key, as in transformers
    (d / "chat_template.jinja").write_text("{{ 'file' }}", encoding="utf-8")
    assert Tokenizer.from_pretrained(d).chat_template == "{{ 'file' }}"


def test_named_templates(tmp_path: Path, tok: Tokenizer) -> None:
    tok.chat_template = [{"name": "default", "template": "D{{ messages|length }}"},
                         {"name": "tool_use", "template": "T{{ tools|length if tools else 0 }}"}]
    msgs = [{"role": "user", "content": "x"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "D1"
    assert tok.apply_chat_template(msgs, tools=[{"name": "f"}], tokenize=False) == "T1"
    assert tok.apply_chat_template(msgs, chat_template="tool_use", tokenize=False) == "T0"
    tok.save_pretrained(tmp_path / "named")
    assert (tmp_path / "named" / "additional_chat_templates" / "tool_use.jinja").read_text() == "T{{ tools|length if tools else 0 }}"
    assert Tokenizer.from_pretrained(tmp_path / "named").chat_template == tok.chat_template
    tok.chat_template = {"a": "A", "b": "B"}
    with pytest.raises(TokenizerError, match="default"):
        tok.apply_chat_template(msgs)


def test_set_template_by_assignment_and_from_pretrained(expected: dict) -> None:
    tok = Tokenizer.from_pretrained(Path(__file__).parent / "fixtures" / "tokenizer_bpe")
    assert tok.chat_template is None
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
    assert tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False) == "<user>Hello<|endoftext|>"
    tok2 = Tokenizer.from_pretrained(FIXTURE, chat_template="{{ bos_token }}")
    assert tok2.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "<|begin_of_text|>"
    # keyword arguments are template variables and override the special tokens
    assert tok2.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, bos_token="B") == "B"


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_no_template_is_a_clear_error(tmp_path: Path) -> None:
    tok = Tokenizer.from_pretrained(Path(__file__).parent / "fixtures" / "tokenizer_bpe")
    with pytest.raises(TokenizerError, match="chat_template is not set"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(TokenizerError, match="chat_template is not set"):
        tokenize_example({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, tok)


def test_malformed_conversations(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match="empty conversation"):
        tok.apply_chat_template([])
    with pytest.raises(InputError, match="message 1 must be a dict"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, "oops"])
    with pytest.raises(InputError, match="list of message dicts"):
        tok.apply_chat_template("hello")
    with pytest.raises(InputError, match="conversation 1: message 0"):
        tok.apply_chat_template([[{"role": "user", "content": "a"}], [3]])
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(InputError, match="not compatible"):
        tok.apply_chat_template(msgs, continue_final_message=True, add_generation_prompt=True)
    with pytest.raises(InputError, match="requires return_dict=True"):
        tok.apply_chat_template(msgs, tokenize=False, return_assistant_tokens_mask=True)
    with pytest.raises(InputError, match="JSON schemas"):
        tok.apply_chat_template(msgs, tools=[len])


@pytest.mark.parametrize(
    "example, match",
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": "hello"}, "non-empty list"),
        ({"messages": [{"role": "user", "content": "a"}, "b"]}, "message 1 must be a dict"),
        ({"messages": [{"content": "a"}]}, "has no 'role'"),
        ({"messages": [{"role": "user", "content": "a"}]}, "no assistant message"),
    ],
)
def test_malformed_messages_examples(example: dict, match: str, tok: Tokenizer) -> None:
    with pytest.raises(DataError, match=f"example 3: .*{match}"):
        prepare_dataset([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3
                        + [example], tok)
    with pytest.raises(DataError, match="need a tokenizer"):
        tokenize_example({"messages": [{"role": "assistant", "content": "a"}]}, None)


@pytest.mark.parametrize(
    "template, phrase",
    [
        ("{{ 'a' + 1 }}", "TypeError"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% break %}", "does not compile"),
        ("{% if " + "(" * 5000 + "1" + ")" * 5000 + " %}{% endif %}", "nested too deeply"),
    ],
)
def test_template_code_errors_are_chat_template_errors(template: str, phrase: str) -> None:
    # found by fuzz/chat_template.py: Python errors of the template's own code, and jinja2's
    # invalid Python for loop controls outside a loop, came through unwrapped
    with pytest.raises(ChatTemplateError, match=phrase) as info:
        chat.render([[{"role": "user", "content": "hi"}]], template)
    assert isinstance(info.value, TokenizerError) and isinstance(info.value, jinja2.exceptions.TemplateError)


@pytest.mark.parametrize("content", [5, [7], [{"type": "text", "text": 3}]])
def test_continuing_a_final_message_that_is_not_text_is_an_input_error(content) -> None:
    # found by fuzz/chat_template.py: an int content met `+ "<continue tag>"` (TypeError)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    msgs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": content}]]
    with pytest.raises(InputError, match="continue"):
        chat.render(msgs, template, continue_final_message=True)
