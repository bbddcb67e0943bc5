"""ferrotune's pytest plugin (ferrotune.pytest_plugin) run in pytester sessions, and its helpers
(ferrotune.testing): options, fixtures, the report, the baseline comparison, the summary
table, assert_metric's message, load_cases and load_model on each kind of model path."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import ferrotune as ft
import ferrotune.testing
from ferrotune.evaluation import LOWER_IS_BETTER, EvalResult
from ferrotune.testing import assert_metric, load_cases, load_model, load_pretrained, load_tokenizer, lower_is_better

from conftest import FIXTURES, fixture_dir

pytest_plugins = ["pytester"]

# "no:ferrotune" blocks the installed entry point, so the plugin loads once (from -p) whether
# the package was installed before or after the entry point was added
PLUGIN = ("-p", "no:ferrotune", "-p", "ferrotune.pytest_plugin", "-p", "no:cacheprovider")

IDS = np.array([[5, 17, 42, 7, 90, 3]])  # below the GGUF fixture's 96 tokens


@pytest.fixture(autouse=True)
def recorded(monkeypatch):
    """What assert_metric records in these tests (kept out of a session running them with the plugin)."""
    calls = []
    monkeypatch.setattr(ferrotune.testing, "recorder", lambda *call: calls.append(call))
    return calls


@pytest.fixture(scope="module")
def tok():
    return ft.Tokenizer.from_pretrained(fixture_dir("tokenizer_bpe"))


def tiny_gpt2(tok, seed=0):
    config = {
        "model_type": "gpt2", "vocab_size": len(tok), "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2,
        "bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
    }
    return ft.Model.from_config(config, seed=seed)


@pytest.fixture(scope="module")
def saved_dir(tok, tmp_path_factory):
    """A model directory as save_pretrained writes it, with its tokenizer."""
    d = tmp_path_factory.mktemp("saved")
    tiny_gpt2(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def logits(model):
    return np.asarray(model(IDS).logits)


def run(pytester, source, *args):
    pytester.makepyfile(test_suite=source)
    return pytester.runpytest(*PLUGIN, *args)


# --------------------------------------------------------------------------- options and fixtures


def test_options_are_in_the_help(pytester):
    result = pytester.runpytest(*PLUGIN, "--help")
    for option in ("--ft-model=PATH", "--ft-tokenizer=PATH", "--ft-report=FILE", "--ft-baseline=FILE", "--ft-tolerance=DELTA"):
        result.stdout.fnmatch_lines([f"*{option}*"])


SESSION_FIXTURES = """
    seen = []

    def test_model(ft_model, ft_tokenizer):
        seen.append((ft_model, ft_tokenizer))
        assert ft_model.config.vocab_size == len(ft_tokenizer) == 400
        assert ft_tokenizer.encode("hello world") == [260, 76, 276, 316, 79, 82, 76, 68]

    def test_loaded_once(ft_model, ft_tokenizer):
        assert seen == [(ft_model, ft_tokenizer)]
"""


def test_fixtures_skip_naming_the_option_without_a_model(pytester):
    result = run(pytester, SESSION_FIXTURES, "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no model to evaluate: pass --ft-model PATH*"])
    assert "ferrotune metrics" not in result.stdout.str()


def test_fixtures_load_the_model_once_per_session(pytester, saved_dir):
    result = run(pytester, SESSION_FIXTURES, f"--ft-model={saved_dir}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"ferrotune: model {saved_dir}"])


def test_ft_tokenizer_option_overrides_the_models_own(pytester, saved_dir):
    source = """
        def test_tokenizer(ft_tokenizer):
            assert ft_tokenizer.eos_token_id == 2 and ft_tokenizer.pad_token_id == 0
    """
    result = run(pytester, source, f"--ft-model={saved_dir}", f"--ft-tokenizer={fixture_dir('chat_tokenizer')}")
    result.assert_outcomes(passed=1)


def test_a_model_that_fails_to_load_errors_the_tests_naming_the_path(pytester, tmp_path):
    result = run(pytester, SESSION_FIXTURES, f"--ft-model={tmp_path}")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([f"*CheckpointError: {tmp_path} holds no model*"])


# --------------------------------------------------------------------------- report and baseline

RECORDING = """
    import pytest

    def test_translation(ft_record):
        ft_record("chrf", 41.25)
        ft_record("exact_match", 0.5)

    @pytest.mark.parametrize("split", ["dev", "test"])
    def test_perplexity(ft_record, split):
        ft_record("loss", {"dev": 2.5, "test": 3.0}[split])
"""


def report(metrics):
    return json.dumps({"metrics": metrics})


def test_report_holds_every_metric_by_test_id_with_model_and_version(pytester, saved_dir):
    result = run(pytester, RECORDING, "--ft-report=out/report.json", f"--ft-model={saved_dir}")
    result.assert_outcomes(passed=3)
    written = json.loads((pytester.path / "out" / "report.json").read_text())
    assert written == {
        "report_version": 1,
        "ferrotune_version": ft.__version__,
        "model": str(saved_dir),
        "tokenizer": None,
        "metrics": {
            "test_suite.py::test_translation": {"chrf": 41.25, "exact_match": 0.5},
            "test_suite.py::test_perplexity[dev]": {"loss": 2.5},
            "test_suite.py::test_perplexity[test]": {"loss": 3.0},
        },
    }
    result.stdout.fnmatch_lines([f"metrics written to {pytester.path / 'out' / 'report.json'}"])


def test_a_report_is_a_baseline_and_an_unchanged_run_passes(pytester):
    run(pytester, RECORDING, "--ft-report=first.json").assert_outcomes(passed=3)
    run(pytester, RECORDING, "--ft-baseline=first.json").assert_outcomes(passed=3)


def test_a_drop_from_the_baseline_fails_that_test_with_both_numbers(pytester):
    pytester.makefile(".json", baseline=report({
        "test_suite.py::test_translation": {"chrf": 50.0, "exact_match": 0.25},  # chrf dropped
        "test_suite.py::test_perplexity[dev]": {"loss": 2.0},  # the loss rose
        "test_suite.py::test_perplexity[test]": {"loss": 3.5},  # the loss fell: better
    }))
    result = run(pytester, RECORDING, "--ft-baseline=baseline.json")
    result.assert_outcomes(passed=1, failed=2)
    baseline = pytester.path / "baseline.json"
    result.stdout.fnmatch_lines([
        "*_ test_translation _*",
        f"metric 'chrf' regressed: 41.25 now, 50.0 in the baseline {baseline} (higher is better, tolerance 0.0)",
        "*_ test_perplexity?dev? _*",
        f"metric 'loss' regressed: 2.5 now, 2.0 in the baseline {baseline} (lower is better, tolerance 0.0)",
    ])
    assert "exact_match' regressed" not in result.stdout.str()


def test_every_regression_of_a_test_is_in_its_one_failure(pytester):
    pytester.makefile(".json", baseline=report({"test_suite.py::test_translation": {"chrf": 50.0, "exact_match": 0.75}}))
    result = run(pytester, RECORDING, "--ft-baseline=baseline.json", "-k", "translation")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "'chrf' regressed: 41.25 now, 50.0" in out and "'exact_match' regressed: 0.5 now, 0.75" in out


def test_tolerance_option_and_per_record_override(pytester):
    source = """
        def test_global(ft_record):
            ft_record("accuracy", 0.70)

        def test_own_tolerance(ft_record):
            ft_record("accuracy", 0.70, tolerance=0.2)

        def test_own_direction(ft_record):
            ft_record("wer", 0.35, higher_is_better=False)
    """
    pytester.makefile(".json", baseline=report({
        "test_suite.py::test_global": {"accuracy": 0.75},
        "test_suite.py::test_own_tolerance": {"accuracy": 0.85},
        "test_suite.py::test_own_direction": {"wer": 0.20},
    }))
    # a drop of 0.05 passes a tolerance of 0.1; 0.15 passes its own 0.2; wer rose by 0.15 > 0.1
    result = run(pytester, source, "--ft-baseline=baseline.json", "--ft-tolerance=0.1")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*_ test_own_direction _*", "metric 'wer' regressed: 0.35 now, 0.2 in the baseline * (lower is better, tolerance 0.1)"])
    # without the option: only the per-record tolerance is left
    run(pytester, source, "--ft-baseline=baseline.json").assert_outcomes(passed=1, failed=2)


def test_a_nan_metric_counts_as_a_regression(pytester):
    pytester.makefile(".json", baseline=report({"test_suite.py::test_nan": {"f1": 0.5}}))
    source = """
        def test_nan(ft_record):
            ft_record("f1", float("nan"))
    """
    result = run(pytester, source, "--ft-baseline=baseline.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*'f1' regressed: nan now, 0.5 in the baseline*"])


def test_a_failing_test_keeps_its_own_error(pytester):
    pytester.makefile(".json", baseline=report({"test_suite.py::test_fails": {"f1": 0.5}}))
    source = """
        def test_fails(ft_record):
            ft_record("f1", 0.1)
            raise ValueError("its own error")
    """
    result = run(pytester, source, "--ft-baseline=baseline.json")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "its own error" in out and "regressed:" not in out
    result.stdout.fnmatch_lines(["test_suite.py::test_fails  f1      0.1    0.5       REGRESSED"])


@pytest.mark.parametrize(
    "content, problem",
    [(None, "no such file"), ("{not json", "is not valid JSON"), ('{"metrics": {"t": {"m": "high"}}}', "is not a ferrotune report")],
)
def test_a_bad_baseline_file_is_a_usage_error_naming_it(pytester, content, problem):
    if content is not None:
        pytester.makefile(".json", baseline=content)
    result = run(pytester, RECORDING, "--ft-baseline=baseline.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--ft-baseline: *{problem}*"])
    assert str(pytester.path / "baseline.json") in result.stderr.str()


def test_bad_records_and_options_are_refused(pytester):
    source = """
        import pytest

        def test_bad(ft_record):
            with pytest.raises(TypeError, match="must be a number, got 'high'"):
                ft_record("f1", "high")
            with pytest.raises(TypeError, match="must be a number, got True"):
                ft_record("f1", True)
            with pytest.raises(TypeError, match="non-empty string"):
                ft_record("", 1.0)
            with pytest.raises(ValueError, match="tolerance must be a number >= 0, got -1"):
                ft_record("f1", 1.0, tolerance=-1)
    """
    run(pytester, source).assert_outcomes(passed=1)
    result = run(pytester, source, "--ft-tolerance=-0.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ft-tolerance must be zero or positive, got -0.5*"])


def test_summary_table_lists_metrics_and_baselines(pytester):
    pytester.makefile(".json", baseline=report({"test_suite.py::test_translation": {"chrf": 50.0}}))
    result = run(pytester, RECORDING, "--ft-baseline=baseline.json")
    result.stdout.fnmatch_lines([
        "*= ferrotune metrics =*",
        "test                                  metric       value  baseline",
        "test_suite.py::test_translation       chrf         41.25  50        REGRESSED",
        "test_suite.py::test_translation       exact_match  0.5    -",
        "test_suite.py::test_perplexity[dev]   loss         2.5    -",
        "test_suite.py::test_perplexity[test]  loss         3      -",
    ])


def test_summary_table_without_a_baseline_has_no_baseline_column(pytester):
    result = run(pytester, RECORDING)
    result.stdout.fnmatch_lines([
        "*= ferrotune metrics =*",
        "test                                  metric       value",
        "test_suite.py::test_translation       chrf         41.25",
    ])


# --------------------------------------------------------------------------- assert_metric


def generation_result():
    """Eight examples whose chrF falls with the index and whose exact match is 1 for odd ones."""
    records = [
        {
            "index": i, "input": f"prompt {i}", "prediction": f"answer {i}", "reference": f"gold {i}",
            "scores": {"chrf": 80.0 - 10 * i, "exact_match": float(i % 2)},
        }
        for i in range(8)
    ]
    return EvalResult(task="generation", metrics={"chrf": 45.0, "exact_match": 0.5, "bleu": 12.0}, records=records)


def test_assert_metric_passes_within_the_bounds_and_records_the_direction_of_its_bound(recorded):
    result = generation_result()
    assert_metric(result, "chrf", at_least=45.0)
    assert_metric(result, "chrf", at_most=45.0)
    assert_metric(result, "chrf", at_least=40, at_most=50)
    assert_metric({"accuracy": 0.9}, "accuracy", at_least=np.float32(0.5))
    # (name, value, higher_is_better): None leaves the direction to the name
    assert recorded == [("chrf", 45.0, True), ("chrf", 45.0, False), ("chrf", 45.0, None), ("accuracy", 0.9, True)]


def test_assert_metric_shows_the_worst_examples_by_the_asserted_score():
    with pytest.raises(AssertionError) as e:
        assert_metric(generation_result(), "chrf", at_least=50.0)
    message = str(e.value)
    assert message.startswith("chrf = 45 is below at_least=50\nworst 5 of 8 examples by chrf:\n  [7] chrf=10, exact_match=1\n")
    assert "      input:      'prompt 7'\n      prediction: 'answer 7'\n      reference:  'gold 7'" in message
    assert [f"[{i}]" in message for i in range(8)] == [False] * 3 + [True] * 5
    # exact match ranks the five wrong ones (even indices) first, in data order
    with pytest.raises(AssertionError, match=r"(?s)above at_most=0.4\nworst 5 of 8 examples by exact_match:\n  \[0\].*\[2\].*\[4\].*\[6\].*\[1\]"):
        assert_metric(generation_result(), "exact_match", at_most=0.4)


def test_assert_metric_ranks_by_the_main_score_when_records_lack_the_metric():
    with pytest.raises(AssertionError, match=r"(?s)bleu = 12 is below at_least=20\nworst 5 of 8 examples by the task's main score:\n  \[7\]"):
        assert_metric(generation_result(), "bleu", at_least=20)


def test_assert_metric_on_a_dict_and_long_values():
    with pytest.raises(AssertionError, match=r"^loss = 2.5 is above at_most=2$"):
        assert_metric({"loss": 2.5}, "loss", at_most=2)
    long = EvalResult(task="perplexity", metrics={"loss": 3.0}, records=[
        {"index": 0, "input": "x" * 500, "prediction": None, "reference": None, "scores": {"loss": 3.0}}
    ])
    with pytest.raises(AssertionError) as e:
        assert_metric(long, "loss", at_most=1.0)
    assert "input:      '" + "x" * 116 + "...\n" in str(e.value)


def test_assert_metric_refuses_bad_arguments():
    result = generation_result()
    with pytest.raises(TypeError, match="needs a bound"):
        assert_metric(result, "chrf")
    with pytest.raises(TypeError, match="at_least must be a number, got '40'"):
        assert_metric(result, "chrf", at_least="40")
    with pytest.raises(ValueError, match="at_least=50 is above at_most=40"):
        assert_metric(result, "chrf", at_least=50, at_most=40)
    with pytest.raises(KeyError, match=r"no metric 'accuracy'; the result has \['bleu', 'chrf', 'exact_match'\]"):
        assert_metric(result, "accuracy", at_least=0.5)


def test_assert_metric_records_in_a_session_and_fails_on_a_drop(pytester):
    pytester.makefile(".json", baseline=report({
        "test_suite.py::test_wer": {"wer": 0.2}, "test_suite.py::test_chrf": {"chrf": 40.0},
    }))
    source = """
        from ferrotune.testing import assert_metric

        def test_chrf():
            assert_metric({"chrf": 45.0}, "chrf", at_least=30.0)

        def test_wer():
            assert_metric({"wer": 0.25}, "wer", at_most=0.3)  # at_most only: lower is better

        def test_out_of_bounds():
            assert_metric({"f1": 0.25}, "f1", at_least=0.5)
    """
    result = run(pytester, source, "--ft-baseline=baseline.json", "--ft-report=report.json")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*_ test_wer _*", "metric 'wer' regressed: 0.25 now, 0.2 in the baseline * (lower is better, tolerance 0.0)"])
    result.stdout.fnmatch_lines(["*AssertionError: f1 = 0.25 is below at_least=0.5"])
    written = json.loads((pytester.path / "report.json").read_text())["metrics"]
    assert written == {
        "test_suite.py::test_chrf": {"chrf": 45.0},
        "test_suite.py::test_wer": {"wer": 0.25},
        "test_suite.py::test_out_of_bounds": {"f1": 0.25},
    }


def test_a_session_puts_back_the_recorder_it_found(pytester, recorded):
    before = ferrotune.testing.recorder
    run(pytester, "def test_nothing(): pass").assert_outcomes(passed=1)
    assert ferrotune.testing.recorder is before


def test_lower_is_better_names():
    assert all(lower_is_better(n) for n in LOWER_IS_BETTER)
    assert lower_is_better("eval_loss") and lower_is_better("eval_perplexity")
    assert not lower_is_better("chrf") and not lower_is_better("lossless") and not lower_is_better("gloss")


# --------------------------------------------------------------------------- load_cases


def test_load_cases_from_jsonl_csv_and_rows(tmp_path):
    jsonl = tmp_path / "cases.jsonl"
    jsonl.write_text('{"prompt": "水", "reference": ["water"]}\n\n{"prompt": "火", "reference": ["fire"]}\n', encoding="utf-8")
    assert load_cases(jsonl) == [{"prompt": "水", "reference": ["water"]}, {"prompt": "火", "reference": ["fire"]}]
    csv_file = tmp_path / "cases.csv"
    csv_file.write_text('text,label\n"good, really",1\n"two\nlines",0\n', encoding="utf-8")
    assert load_cases(str(csv_file)) == [{"text": "good, really", "label": "1"}, {"text": "two\nlines", "label": "0"}]
    rows = ({"text": t} for t in "ab")  # any iterable of dicts, as a datasets.Dataset is
    assert load_cases(rows) == [{"text": "a"}, {"text": "b"}]


def test_load_cases_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": 2,}\n', encoding="utf-8")
    with pytest.raises(ft.DataError, match=rf"{bad}:2: invalid JSON"):
        load_cases(bad)
    bad.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ft.DataError, match=rf"{bad}:2: expected a JSON object, got list"):
        load_cases(bad)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\na,1\nb,1,extra\n", encoding="utf-8")
    with pytest.raises(ft.DataError, match=rf"{ragged}:3: more fields than the header's 2 columns"):
        load_cases(ragged)
    ragged.write_text("text,label\na,1\n\nb\n", encoding="utf-8")
    with pytest.raises(ft.DataError, match=rf"{ragged}:4: fewer fields than the header's 2 columns"):
        load_cases(ragged)
    with pytest.raises(ValueError, match=r"reads \.jsonl and \.csv files, not '\.json'.*cases\.json"):
        load_cases(tmp_path / "cases.json")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_cases(tmp_path / "missing.csv")
    with pytest.raises(ft.DataError, match="case 1 is a str, not a dict"):
        load_cases([{"a": 1}, "b"])
    with pytest.raises(ft.DataError, match="not one dict"):
        load_cases({"a": 1})


# --------------------------------------------------------------------------- load_model


def test_load_model_from_a_saved_directory(saved_dir, tok):
    model, tokenizer = load_model(saved_dir)
    np.testing.assert_array_equal(logits(model), logits(tiny_gpt2(tok)))
    assert tokenizer.encode("hello world") == tok.encode("hello world")
    assert isinstance(load_pretrained(saved_dir), ft.Model)


def test_load_model_from_a_trainer_checkpoint(tmp_path, tok):
    model = tiny_gpt2(tok)
    args = ft.TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=1, save_steps=1, per_device_train_batch_size=1,
        learning_rate=1e-2, disable_tqdm=True, report_to="none",
    )
    ft.Trainer(model=model, args=args, train_dataset=[{"text": "hello world"}], processing_class=tok).train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "optimizer.safetensors").is_file()
    loaded, tokenizer = load_model(checkpoint)
    np.testing.assert_array_equal(logits(loaded), logits(model))
    assert not np.array_equal(logits(loaded), logits(tiny_gpt2(tok)))  # the trained weights
    assert len(tokenizer) == len(tok)
    # the run directory itself is not a model; the error points at the checkpoint
    with pytest.raises(ft.CheckpointError, match=rf"{tmp_path / 'run'} holds no model.*latest checkpoint is {checkpoint}"):
        load_model(tmp_path / "run")


def test_load_model_from_a_gguf_file(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from bad_inputs_cases import write_llama_gguf

    path = write_llama_gguf(tmp_path / "tiny.gguf")
    model, tokenizer = load_model(path)
    np.testing.assert_array_equal(logits(model), logits(ft.Model.from_pretrained(path)))
    assert len(tokenizer) == model.config.vocab_size == 96
    assert tokenizer.eos_token == "</s>"
    # an explicit tokenizer replaces the file's own
    assert len(load_tokenizer(path, FIXTURES / "tokenizer_bpe")) == 400


def test_load_model_from_a_peft_adapter(tmp_path, saved_dir, tok):
    peft = ft.get_peft_model(ft.Model.from_pretrained(saved_dir), ft.LoraConfig(r=2, target_modules=["c_attn"]), seed=1)
    state = peft.state_dict()
    for name in state:  # non-zero B, so the adapter changes the output
        if ".lora_B." in name:
            state[name] = np.full_like(state[name], 0.05)
    peft.load_state_dict(state)
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(saved_dir)

    model, tokenizer = load_model(adapter)
    assert isinstance(model, ft.PeftModel)
    np.testing.assert_allclose(logits(model), logits(peft), rtol=0, atol=1e-6)
    assert not np.allclose(logits(model), logits(ft.Model.from_pretrained(saved_dir)), atol=1e-3)
    assert tokenizer.encode("hello world") == tok.encode("hello world")  # the base's tokenizer

    # a tokenizer saved with the adapter (a Trainer checkpoint of a LoRA run) wins over the base's
    ft.Tokenizer.from_pretrained(fixture_dir("chat_tokenizer")).save_pretrained(adapter)
    assert load_tokenizer(adapter).pad_token_id == 0


@pytest.mark.parametrize(
    "base, problem",
    [
        (None, r"names no base model \(base_model_name_or_path is missing or null\): set it"),
        ("", r"names no base model"),
        ("no/such/base", r"names the base model 'no/such/base', which is not a local directory or file .*ferrotune downloads nothing"),
        ("gpt2", r"names the base model 'gpt2', which is not a local directory"),
    ],
)
def test_an_adapter_without_a_usable_base_says_so(tmp_path, base, problem):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((fixture_dir("lora_gpt2") / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ft.CheckpointError, match=rf"{adapter / 'adapter_config.json'} {problem}"):
        load_model(adapter)


def test_load_model_errors_name_the_path(tmp_path, saved_dir):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        load_model(tmp_path / "nothing")
    with pytest.raises(ft.CheckpointError, match=rf"{tmp_path} holds no model: no config.json .* no adapter_config.json"):
        load_pretrained(tmp_path)
    bare = tmp_path / "bare"
    ft.Model.from_pretrained(saved_dir).save_pretrained(bare)
    with pytest.raises(ft.CheckpointError, match=rf"no tokenizer.json in {bare}: give the tokenizer's path"):
        load_model(bare)
    assert len(load_model(bare, tokenizer=saved_dir)[1]) == 400
