"""ferrotune.evaluate: each task against an independent computation (model.generate one prompt
at a time, float64 log-softmax of the full logits, sacrebleu, scikit-learn), per-token losses,
EvalResult, and the errors bad input gets."""

import json
import math

import numpy as np
import pytest

import ferrotune as ft
from ferrotune.evaluation import EvalResult, generation_scores
from ferrotune.metrics import classification_scores, exact_match, normalize_text, token_f1

from conftest import fixture_dir

sacrebleu = pytest.importorskip("sacrebleu", reason="sacrebleu is in the eval/test extras: pip install 'ferrotune[eval]'")


@pytest.fixture(scope="module")
def tok():
    return ft.Tokenizer.from_pretrained(fixture_dir("chat_tokenizer"))


def llama_config(tok, **kw):
    c = json.loads((fixture_dir("llama_tiny") / "config.json").read_text())
    c.update(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    c.update(kw)
    return c


@pytest.fixture(scope="module")
def lm(tok):
    return ft.Model.from_config(llama_config(tok, max_position_embeddings=256), seed=3)


def log_softmax64(logits):
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def loglik(model, tok, context, continuation):
    """log p(continuation | context) from the full float logits of one unpadded sequence."""
    ctx = tok.encode(context)
    cont = tok.encode(continuation, add_special_tokens=False)
    ids = np.array([ctx + cont])
    lp = log_softmax64(model(ids).logits[0])
    return sum(lp[len(ctx) + k - 1, t] for k, t in enumerate(cont))


PROMPTS = ["Chinese: 水\nEnglish:", "hello", "a longer prompt with several words in it", "x", "what is 2+2?", "山", "one two three"]


# --------------------------------------------------------------------------- token losses


def test_token_losses_match_log_softmax_of_the_logits(lm, tok):
    ids = np.random.default_rng(0).integers(0, len(tok), size=(2, 9))
    mask = np.ones_like(ids)
    mask[1, -2:] = 0
    labels = ids.copy()
    labels[0, :2] = -100
    loss, right = lm.token_losses(ids, labels=labels, attention_mask=mask)
    assert loss.shape == ids.shape and loss.dtype == np.float64 and right.dtype == np.bool_
    logits = lm(ids, attention_mask=mask).logits
    lp = log_softmax64(logits)
    b, t = ids.shape
    for r in range(b):
        for p in range(t):
            target = labels[r, p + 1] if p + 1 < t else -100
            if target == -100:
                assert loss[r, p] == 0.0 and not right[r, p]
            else:
                assert abs(loss[r, p] + lp[r, p, target]) < 1e-4
                assert right[r, p] == (np.argmax(logits[r, p]) == target)
    s, n, c = lm.loss_stats(ids, labels=labels, attention_mask=mask)
    assert abs(loss.sum() - s) < 1e-9 and right.sum() == c
    assert n == int((labels[:, 1:] != -100).sum())


def test_token_losses_refuse_a_classification_head(tmp_path, tok):
    ft.Model.from_config(llama_config(tok), seed=0).save_pretrained(tmp_path)
    clf = ft.Model.for_sequence_classification(tmp_path, num_labels=2)
    with pytest.raises(ft.InputError, match="language-model head"):
        clf.token_losses(np.array([[1, 2, 3]]))


# --------------------------------------------------------------------------- generation


def test_generation_equals_generate_one_prompt_at_a_time(lm, tok):
    rows = [{"prompt": p, "reference": "water"} for p in PROMPTS]
    rows.append({"messages": [{"role": "user", "content": "翻译：水"}], "reference": ["water", "river"]})
    res = ft.evaluate(lm, tok, rows, task="generation", batch_size=3, max_new_tokens=6, progress=False)
    assert [r["index"] for r in res.records] == list(range(len(rows)))
    for row, rec in zip(rows, res.records):
        if "prompt" in row:
            ids = np.array([tok.encode(row["prompt"])])
        else:
            text = tok.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
            ids = np.array([tok.encode(text, add_special_tokens=False)])
            assert rec["input"] == text
        out = lm.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in out:
            out = out[: out.index(tok.eos_token_id)]
        assert rec["prediction"] == tok.decode(out, skip_special_tokens=True).strip()
    preds = [r["prediction"] for r in res.records]
    refs = [r["reference"] for r in res.records]
    assert res.metrics == generation_scores(preds, refs)[0]
    assert res.details["examples"] == len(rows) and res.details["seconds"] > 0


def test_generation_scores_equal_sacrebleu_on_recorded_cases():
    preds = ["the cat sat on the mat", "Water.", "ＨＥＬＬＯ，world", "a dog", ""]
    refs = [["the cat is on the mat", "there is a cat on the mat"], "water", ["hello world"], ["the dog", "a hound"], "empty"]
    metrics, per = generation_scores(preds, refs)
    streams = [[r if isinstance(r, str) else r[min(k, len(r) - 1)] for r in refs] for k in range(2)]
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, streams).score, abs=1e-12)
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score, abs=1e-12)
    # a repeated reference changes neither score: what an example with fewer references gets
    assert sacrebleu.corpus_bleu(preds, streams).score == sacrebleu.corpus_bleu(preds, streams + [streams[0]]).score
    for p, r, s in zip(preds, refs, per):
        rs = [r] if isinstance(r, str) else r
        assert s["chrf"] == pytest.approx(sacrebleu.sentence_chrf(p, rs).score, abs=1e-12)
    assert [s["exact_match"] for s in per] == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert metrics["exact_match"] == pytest.approx(0.4)
    # SQuAD-style token F1, best reference: "a dog" vs "the dog" shares one of two tokens each
    assert per[3]["f1"] == pytest.approx(0.5)
    assert per[0]["f1"] == pytest.approx(max(token_f1(preds[0], r) for r in refs[0]))
    assert metrics["f1"] == pytest.approx(sum(s["f1"] for s in per) / 5)


def test_chrf_of_sacrebleus_metric_card_example():
    hyp = "The relationship between Obama and Netanyahu is not exactly friendly."
    ref = "The ties between Obama and Netanyahu are not particularly friendly."
    metrics, per = generation_scores([hyp], [ref])
    assert metrics["chrf"] == pytest.approx(61.576379378113785, abs=1e-9) and per[0]["chrf"] == metrics["chrf"]


def test_normalisation_width_case_punctuation():
    assert normalize_text("  ＡＢＣ１２３，Ｈｅｌｌｏ！ ") == "abc123 hello"
    assert normalize_text("Straße") == "strasse"  # case folding, not lower()
    assert normalize_text("「你好」。") == "你好"
    assert exact_match("Hello, World!", "hello world")
    assert exact_match("HI", "hello; hi") and not exact_match("hi", "hello; hi", sep=None)
    assert not exact_match("", "") and not exact_match("hello there", "hello; hi")
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


# --------------------------------------------------------------------------- log-likelihood tasks


def test_multiple_choice_log_likelihoods_and_accuracy(lm, tok):
    rows = [
        {"prompt": "The capital of France is", "choices": ["Paris", "Berlin", "a very long wrong answer"], "label": 0},
        {"prompt": "2 + 2 =", "choices": ["4", "5"], "label": 1},
        {"prompt": "水 means", "choices": ["water", "fire", "mountain"], "label": 2},
    ]
    res = ft.evaluate(lm, tok, rows, task="multiple_choice", batch_size=2, progress=False)
    right = right_norm = 0
    for row, rec in zip(rows, res.records):
        want = [loglik(lm, tok, row["prompt"], " " + c) for c in row["choices"]]
        np.testing.assert_allclose(rec["logliks"], want, rtol=0, atol=2e-4)
        assert rec["prediction"] == int(np.argmax(want))
        per_byte = [w / len((" " + c).encode()) for w, c in zip(want, row["choices"])]
        right += int(np.argmax(want)) == row["label"]
        right_norm += int(np.argmax(per_byte)) == row["label"]
    assert res["accuracy"] == right / 3 and res["accuracy_norm"] == right_norm / 3


def test_classification_with_label_words(lm, tok):
    words = ["water", "fire", "earth"]
    rows = [{"text": f"Element {i}:", "label": words[i % 3] if i % 2 else i % 3} for i in range(7)]
    res = ft.evaluate(lm, tok, rows, task="classification", label_words=words, batch_size=4, progress=False)
    preds = [int(np.argmax([loglik(lm, tok, r["text"], " " + w) for w in words])) for r in rows]
    truth = [i % 3 for i in range(7)]
    assert [rec["prediction"] for rec in res.records] == [words[p] for p in preds]
    assert res.metrics == classification_scores(truth, preds, labels=[0, 1, 2])
    assert res.details["labels"] == words


def test_classification_with_a_head(tmp_path, tok):
    ft.Model.from_config(llama_config(tok), seed=1).save_pretrained(tmp_path)
    clf = ft.Model.for_sequence_classification(tmp_path, id2label={0: "neg", 1: "pos"}, pad_token_id=tok.pad_token_id, seed=2)
    texts = ["good", "bad and long text here", "fine", "terrible day", "ok"]
    rows = [{"text": t, "label": ["neg", "pos"][i % 2]} for i, t in enumerate(texts)]
    res = ft.evaluate(clf, tok, rows, task="classification", batch_size=2, progress=False)
    preds = [int(np.argmax(clf(np.array([tok.encode(t)])).logits[0])) for t in texts]
    assert [r["prediction"] for r in res.records] == [["neg", "pos"][p] for p in preds]
    truth = [i % 2 for i in range(5)]
    assert res.metrics == classification_scores(truth, preds, labels=[0, 1])
    with pytest.raises(ft.InputError, match="classification head"):
        ft.evaluate(clf, tok, rows, task="classification", label_words=["a", "b"], progress=False)


def test_classification_scores_equal_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is in the test extra")
    rng = np.random.default_rng(0)
    for n_classes in (2, 3, 5):
        t = rng.integers(0, n_classes, 200)
        p = np.where(rng.random(200) < 0.6, t, rng.integers(0, n_classes, 200))
        got = classification_scores(t, p)
        assert got["accuracy"] == pytest.approx(sk.accuracy_score(t, p), abs=1e-15)
        for avg, suffix in (("macro", ""), ("micro", "_micro"), ("weighted", "_weighted")):
            assert got["precision" + suffix] == pytest.approx(sk.precision_score(t, p, average=avg, zero_division=0), abs=1e-12)
            assert got["recall" + suffix] == pytest.approx(sk.recall_score(t, p, average=avg, zero_division=0), abs=1e-12)
            assert got["f1" + suffix] == pytest.approx(sk.f1_score(t, p, average=avg, zero_division=0), abs=1e-12)
        np.testing.assert_array_equal(ft.metrics.confusion_matrix(t, p), sk.confusion_matrix(t, p))


def test_perplexity_is_the_token_weighted_loss(lm, tok):
    texts = ["hello world, this is a test", "short", "一个中文句子，还有标点。", "x y z " * 9]
    res = ft.evaluate(lm, tok, [{"text": t} for t in texts], task="perplexity", batch_size=3, progress=False)
    total = count = 0.0
    for text, rec in zip(texts, res.records):
        ids = np.array([tok.encode(text)])
        s, n, _ = lm.loss_stats(ids)
        assert rec["scores"]["loss"] == pytest.approx(s / n, abs=1e-9) and rec["scores"]["tokens"] == n
        total, count = total + s, count + n
    assert res["loss"] == pytest.approx(total / count, abs=1e-9)
    assert res["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-12) and res["tokens"] == count
    # windows: a text longer than max_length is scored in consecutive pieces
    long_ids = tok.encode(texts[3])
    win = ft.evaluate(lm, tok, [{"text": texts[3]}], task="perplexity", max_length=8, progress=False)
    pieces = [long_ids[i : i + 8] for i in range(0, len(long_ids), 8)]
    sums = [lm.loss_stats(np.array([p]))[:2] for p in pieces if len(p) > 1]
    assert win["tokens"] == sum(n for _, n in sums)
    assert win["loss"] == pytest.approx(sum(s for s, _ in sums) / win["tokens"], abs=1e-9)


# --------------------------------------------------------------------------- EvalResult and inputs


def test_eval_result_worst_json_and_lookup(tmp_path):
    recs = [{"index": i, "input": f"q{i}", "prediction": "p", "reference": "r", "scores": {"chrf": c, "loss": c}} for i, c in enumerate([50.0, 10.0, 70.0, 10.0])]
    res = EvalResult("generation", {"chrf": 35.0}, recs, {"labels": np.array([1, 2])})
    assert [r["index"] for r in res.worst(3)] == [1, 3, 0]  # lowest chrF first, ties in data order
    assert [r["index"] for r in res.worst(2, "loss")] == [2, 0]  # a loss: highest first
    with pytest.raises(KeyError, match="f1"):
        res.worst(1, "f1")
    with pytest.raises(KeyError, match="chrf"):
        res["bleu"]
    path = tmp_path / "r.json"
    assert json.loads(res.to_json(path)) == json.loads(path.read_text())
    assert json.loads(path.read_text())["details"]["labels"] == [1, 2]


def test_limit_draws_a_seeded_subset_in_data_order(lm, tok, tmp_path):
    rows = [{"text": f"text number {i}"} for i in range(10)]
    a = ft.evaluate(lm, tok, rows, task="perplexity", limit=4, seed=1, progress=False)
    b = ft.evaluate(lm, tok, rows, task="perplexity", limit=4, seed=1, progress=False)
    idx = [r["index"] for r in a.records]
    assert idx == [r["index"] for r in b.records] and idx == sorted(idx) and len(idx) == 4
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert ft.evaluate(lm, tok, str(path), task="perplexity", progress=False)["tokens"] == ft.evaluate(lm, tok, rows, task="perplexity", progress=False)["tokens"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(task="summarise"), ft.InputError, "task must be one of"),
        (dict(task="perplexity", batch_size=0), ft.InputError, "batch_size"),
        (dict(task="perplexity", limit=-1), ft.InputError, "limit"),
        (dict(task="perplexity", label_words=["a"]), TypeError, "label_words"),
        (dict(task="generation"), ft.DataError, r"row 0 has none of the keys \['prompt', 'messages'\]"),
        (dict(task="classification"), ft.InputError, "label_words"),
        (dict(task="perplexity", max_length=1), ft.InputError, "max_length"),
    ],
)
def test_bad_arguments_name_the_problem(lm, tok, kwargs, error, match):
    with pytest.raises(error, match=match):
        ft.evaluate(lm, tok, [{"text": "hello"}], progress=False, **kwargs)


def test_bad_rows_name_the_row(lm, tok):
    with pytest.raises(ft.DataError, match="row 1.*'choices'"):
        ft.evaluate(lm, tok, [{"prompt": "a", "choices": ["x", "y"], "label": 0}, {"prompt": "b", "choices": ["x"], "label": 0}], task="multiple_choice", progress=False)
    with pytest.raises(ft.DataError, match="row 0.*label"):
        ft.evaluate(lm, tok, [{"prompt": "a", "choices": ["x", "y"], "label": 2}], task="multiple_choice", progress=False)
    with pytest.raises(ft.DataError, match="row 0: label 'maybe'"):
        ft.evaluate(lm, tok, [{"text": "a", "label": "maybe"}], task="classification", label_words=["yes", "no"], progress=False)
    with pytest.raises(ft.DataError, match="row 0: 'reference'"):
        ft.evaluate(lm, tok, [{"prompt": "a", "reference": 3}], task="generation", max_new_tokens=1, progress=False)
    with pytest.raises(ft.DataError, match="no rows"):
        ft.evaluate(lm, tok, [], task="perplexity", progress=False)
    with pytest.raises(ft.DataError, match="not one dict"):
        ft.evaluate(lm, tok, {"text": "a"}, task="perplexity", progress=False)


def test_progress_bar_and_training_mode_restored(lm, tok, capfd):
    lm.train()
    try:
        res = ft.evaluate(lm, tok, [{"text": f"text {i}"} for i in range(5)], task="perplexity", batch_size=2)
        assert lm.training, "evaluate puts a training model back into training mode"
    finally:
        lm.eval()
    err = capfd.readouterr().err
    assert "evaluate (perplexity)" in err and "3/3" in err
    quiet = ft.evaluate(lm, tok, [{"text": f"text {i}"} for i in range(5)], task="perplexity", batch_size=2, progress=False)
    assert res.metrics == quiet.metrics
