"""The README's main command: python -m ferrotune.demo (here its --quick variant)."""

import glob
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


@needs_trainer
def test_quick_demo_trains_and_writes_files(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert demo.main(["--quick", "--output-dir", str(out_dir), "--no-progress"]) == 0
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
    assert demo.main(["--quick", "--output-dir", str(out_dir), "--no-progress", "--resume"]) == 0
    assert f"resuming from {checkpoints[-2]}" in capsys.readouterr().out
    resumed = json.loads((out_dir / "demo_summary.json").read_text(encoding="utf-8"))
    assert resumed["global_step"] == summary["global_step"]
    assert resumed["after"] == summary["after"]
    assert resumed["translations"] == summary["translations"]


def test_resume_needs_output_dir_and_a_checkpoint(tmp_path, capsys):
    assert demo.main(["--quick", "--resume"]) == 2
    assert "--output-dir" in capsys.readouterr().err
    if hasattr(ferrotune, "Trainer"):
        assert demo.main(["--quick", "--resume", "--output-dir", str(tmp_path), "--no-progress"]) == 2
        assert "no checkpoint" in capsys.readouterr().err
