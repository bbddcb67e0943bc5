"""ferrotune.metrics against hand-computed values and against scikit-learn itself (test extra)."""

import math

import numpy as np
import pytest

from ferrotune.metrics import (
    EvalPrediction,
    accuracy,
    classification_report,
    confusion_matrix,
    f1,
    perplexity,
    precision,
    precision_recall_f1,
    recall,
    token_accuracy,
)

# Three classes. Per class (TP, predicted, true):
#   0: (3, 4, 3) -> P 3/4, R 1,   F1 2*3/(4+3) = 6/7
#   1: (0, 1, 2) -> P 0,   R 0,   F1 0
#   2: (2, 3, 3) -> P 2/3, R 2/3, F1 2/3
# 5 of 8 correct.
Y_TRUE = [0, 1, 2, 0, 1, 2, 0, 2]
Y_PRED = [0, 2, 1, 0, 0, 2, 0, 2]


def test_accuracy():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 8)
    assert accuracy(np.array(Y_TRUE), np.array(Y_PRED)) == pytest.approx(5 / 8)
    assert accuracy(["a", "b"], ["a", "a"]) == pytest.approx(0.5)
    assert math.isnan(accuracy([], []))


def test_multiclass_averages():
    assert precision(Y_TRUE, Y_PRED, average="macro") == pytest.approx((3 / 4 + 0 + 2 / 3) / 3)
    assert recall(Y_TRUE, Y_PRED, average="macro") == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert f1(Y_TRUE, Y_PRED, average="macro") == pytest.approx((6 / 7 + 0 + 2 / 3) / 3)
    # weighted by support 3, 2, 3
    assert precision(Y_TRUE, Y_PRED, average="weighted") == pytest.approx((3 * 3 / 4 + 3 * 2 / 3) / 8)
    assert recall(Y_TRUE, Y_PRED, average="weighted") == pytest.approx(5 / 8)
    assert f1(Y_TRUE, Y_PRED, average="weighted") == pytest.approx(4 / 7)
    # micro pools the counts: every score equals accuracy for single-label data
    for fn in (precision, recall, f1):
        assert fn(Y_TRUE, Y_PRED, average="micro") == pytest.approx(5 / 8)


def test_per_label_arrays():
    np.testing.assert_allclose(precision(Y_TRUE, Y_PRED, average=None), [3 / 4, 0, 2 / 3])
    np.testing.assert_allclose(recall(Y_TRUE, Y_PRED, average=None), [1, 0, 2 / 3])
    np.testing.assert_allclose(f1(Y_TRUE, Y_PRED, average=None), [6 / 7, 0, 2 / 3])
    # explicit label order, including a label that never occurs (zero_division applies)
    np.testing.assert_allclose(
        precision(Y_TRUE, Y_PRED, average=None, labels=[2, 0, 5], zero_division=1.0), [2 / 3, 3 / 4, 1.0]
    )


def test_binary():
    t = [1, 0, 1, 1, 0, 0, 1]
    p = [1, 1, 0, 1, 0, 0, 0]
    # pos 1: TP 2, FP 1, FN 2
    assert precision(t, p) == pytest.approx(2 / 3)
    assert recall(t, p) == pytest.approx(1 / 2)
    assert f1(t, p) == pytest.approx(4 / 7)
    # pos 0: TP 2, predicted 4, true 3
    assert precision(t, p, pos_label=0) == pytest.approx(1 / 2)
    assert recall(t, p, pos_label=0) == pytest.approx(2 / 3)
    assert precision_recall_f1(t, p) == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7})
    # string labels
    assert f1(["a", "b", "a"], ["a", "a", "a"], pos_label="a") == pytest.approx(0.8)


def test_binary_rejects_multiclass_and_bad_pos_label():
    with pytest.raises(ValueError, match="average"):
        f1(Y_TRUE, Y_PRED)
    with pytest.raises(ValueError, match="pos_label"):
        f1(["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="average must be"):
        f1(Y_TRUE, Y_PRED, average="samples")


def test_zero_division():
    # no predicted positive and no true positive
    for zd in (0.0, 1.0):
        assert precision([0, 0], [0, 0], zero_division=zd) == zd
        assert recall([0, 0], [0, 0], zero_division=zd) == zd
        assert f1([0, 0], [0, 0], zero_division=zd) == zd
    # predicted positives exist but no true positive: recall undefined, F1 defined (= 0)
    assert recall([0, 0], [1, 0], zero_division=1.0) == 1.0
    assert precision([0, 0], [1, 0], zero_division=1.0) == 0.0
    assert f1([0, 0], [1, 0], zero_division=1.0) == 0.0
    # nan zero_division: per-class nan, ignored when averaging
    assert math.isnan(precision([0, 1], [0, 0], average=None, zero_division=float("nan"))[1])
    assert precision([0, 1], [0, 0], average="macro", zero_division=float("nan")) == pytest.approx(0.5)


def test_ignore_index_and_token_level_shapes():
    labels = np.array([[-100, 5, 6], [7, -100, -100]])
    preds = np.array([[9, 5, 0], [7, 1, 2]])
    # counted pairs: (5,5) (6,0) (7,7)
    assert accuracy(labels, preds) == pytest.approx(2 / 3)
    assert precision(labels, preds, average="micro") == pytest.approx(2 / 3)
    # labels 0, 5, 6, 7: P = [0 (pred 0 wrong), 1, 0 (nothing predicted), 1] -> macro 1/2
    assert precision(labels, preds, average="macro") == pytest.approx(0.5)
    np.testing.assert_array_equal(confusion_matrix(labels, preds), [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    # ignore_index=None keeps everything
    assert accuracy(labels, preds, ignore_index=None) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="different numbers"):
        accuracy([1, 2, 3], [1, 2])


def test_confusion_matrix():
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED), [[3, 0, 0], [1, 0, 1], [0, 1, 2]])
    # labels choose and order rows/columns; samples with other labels are dropped
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED, labels=[2, 0]), [[2, 0], [0, 3]])
    cm = confusion_matrix(["cat", "dog", "cat"], ["dog", "dog", "cat"])
    np.testing.assert_array_equal(cm, [[1, 1], [0, 1]])
    assert confusion_matrix([], []).shape == (0, 0)


def test_classification_report():
    rep = classification_report(Y_TRUE, Y_PRED, target_names=["zero", "one", "two"])
    assert list(rep) == ["zero", "one", "two", "accuracy", "macro avg", "weighted avg"]
    assert rep["zero"] == pytest.approx({"precision": 0.75, "recall": 1.0, "f1-score": 6 / 7, "support": 3})
    assert rep["one"]["support"] == 2
    assert rep["accuracy"] == pytest.approx(5 / 8)
    assert rep["macro avg"]["f1-score"] == pytest.approx((6 / 7 + 2 / 3) / 3)
    assert rep["weighted avg"] == pytest.approx(
        {"precision": 17 / 32, "recall": 5 / 8, "f1-score": 4 / 7, "support": 8}
    )
    # a subset of labels: "micro avg" instead of "accuracy" (micro over labels 0 and 2)
    sub = classification_report(Y_TRUE, Y_PRED, labels=[0, 2])
    assert "accuracy" not in sub
    assert sub["micro avg"]["precision"] == pytest.approx(5 / 7)  # TP 3+2, predicted 4+3
    assert sub["micro avg"]["recall"] == pytest.approx(5 / 6)  # true 3+3
    with pytest.raises(ValueError, match="target_names"):
        classification_report(Y_TRUE, Y_PRED, target_names=["a"])


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(10.0)) == pytest.approx(10.0)
    assert perplexity(np.float32(2.0)) == pytest.approx(math.e**2)
    assert perplexity(1e6) == float("inf")
    assert math.isnan(perplexity(float("nan")))


def test_token_accuracy_shifts_like_a_causal_lm():
    labels = np.array([[-100, 3, 4, 5]])
    preds = np.array([[3, 4, 9, 0]])  # prediction at t is for label t+1
    assert token_accuracy(preds, labels) == pytest.approx(2 / 3)
    logits = np.eye(10)[preds]  # (B, T, V)
    assert token_accuracy(logits, labels) == pytest.approx(2 / 3)
    assert token_accuracy(preds, labels, shift=False) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="do not match"):
        token_accuracy(np.zeros((1, 3)), labels)


def test_eval_prediction_unpacks_like_transformers():
    p = EvalPrediction(predictions=np.array([1, 0]), label_ids=np.array([1, 1]))
    preds, labels = p
    np.testing.assert_array_equal(preds, [1, 0])
    np.testing.assert_array_equal(p[1], [1, 1])
    assert len(p) == 2
    assert p.inputs is None
    q = EvalPrediction(np.zeros(2), np.ones(2), inputs=np.arange(2))
    a, b, c = q
    np.testing.assert_array_equal(c, [0, 1])
    assert accuracy(*reversed(tuple(p))) == pytest.approx(0.5)


# ------------------------------------------------------------------------- exact match (chrF and BLEU: tests/test_evaluate.py)


def test_exact_match_normalises_case_space_and_punctuation():
    from ferrotune.metrics import exact_match, normalize_text

    assert normalize_text("  Hello,  World!! ") == "hello world"
    assert exact_match("Hello.", "hello")
    assert exact_match("hello; hi", "hello; hi")
    assert exact_match("HI", "hello; hi")  # one of the senses
    assert not exact_match("hi", "hello; hi", sep=None)
    assert not exact_match("hello there", "hello; hi")
    assert not exact_match("", "hello") and not exact_match("...", "hello")


# ------------------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("seed, n_classes, zero_division", [(0, 2, 0.0), (1, 4, 0.0), (2, 6, 1.0), (3, 3, 0.0)])
def test_every_score_equals_scikit_learn(seed, n_classes, zero_division):
    """Random labels, some classes never predicted (zero divisions), string labels too."""
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is in the test extra")
    rng = np.random.default_rng(seed)
    t = rng.integers(0, n_classes, 60)
    p = np.where(rng.random(60) < 0.5, t, rng.integers(0, max(n_classes - 1, 1), 60))  # the last class rarely predicted
    for y_true, y_pred in ((t, p), (np.array([f"c{v}" for v in t]), np.array([f"c{v}" for v in p]))):
        assert accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred), abs=1e-15)
        averages = ["micro", "macro", "weighted", None] + (["binary"] if n_classes == 2 and y_true.dtype.kind == "i" else [])
        for avg in averages:
            for ours, theirs in ((precision, sk.precision_score), (recall, sk.recall_score), (f1, sk.f1_score)):
                np.testing.assert_allclose(
                    ours(y_true, y_pred, average=avg, zero_division=zero_division),
                    theirs(y_true, y_pred, average=avg, zero_division=zero_division),
                    rtol=0, atol=1e-12, err_msg=f"{ours.__name__} average={avg}",
                )
        np.testing.assert_array_equal(confusion_matrix(y_true, y_pred), sk.confusion_matrix(y_true, y_pred))
        ours_report = classification_report(y_true, y_pred, zero_division=zero_division)
        theirs_report = sk.classification_report(y_true, y_pred, output_dict=True, zero_division=zero_division)
        assert ours_report.keys() == theirs_report.keys()
        for key, value in theirs_report.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    assert ours_report[key][k] == pytest.approx(v, abs=1e-12), (key, k)
            else:
                assert ours_report[key] == pytest.approx(value, abs=1e-12), key
