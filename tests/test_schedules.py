"""Learning-rate schedules: the lr at every step equals transformers' (fixture made by
tests/fixtures/make_fixtures.py with transformers.get_scheduler)."""

import json
import math
from pathlib import Path

import pytest

from ferrotune import ConfigError
from ferrotune.optimization import SCHEDULER_TYPES, LRScheduler, get_scheduler

FIXTURE = Path(__file__).parent / "fixtures" / "lr_schedules.json"


@pytest.fixture(scope="module")
def hf():
    if not FIXTURE.is_file():
        pytest.skip(f"{FIXTURE.name} is absent (run tests/fixtures/make_fixtures.py)")
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "name", ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
)
def test_lr_at_every_step_equals_transformers(hf, name):
    expected = hf["schedules"][name]
    kwargs = hf.get("scheduler_kwargs", {}).get(name) or {}
    sched = get_scheduler(name, hf["base_lr"], hf["warmup"], hf["total"], **kwargs)
    got = [sched(step) for step in range(hf["total"])]
    assert len(expected) == hf["total"]
    for step, (g, e) in enumerate(zip(got, expected)):
        # the same Python float arithmetic as transformers' LambdaLR (base_lr * lambda(step)): exact
        assert g == e, (name, step, g, e)


def test_warmup_ratio_conversion_matches_transformers(hf):
    from ferrotune import TrainingArguments

    conv = hf["warmup_from_ratio"]
    for key, expected in conv.items():
        if not isinstance(expected, int):
            continue  # that transformers version did not support the form
        # keys look like warmup_steps_0.1_of_20
        _, field, value, _, total = key.split("_")
        args = TrainingArguments(output_dir="unused", **{f"warmup_{field}": float(value) if "." in value else int(value)})
        assert args.get_warmup_steps(int(total)) == expected, key


def test_warmup_ratio_field():
    from ferrotune import TrainingArguments

    args = TrainingArguments(output_dir="unused", warmup_ratio=0.1)
    assert args.get_warmup_steps(20) == 2
    assert args.get_warmup_steps(25) == 3  # ceil, as transformers
    with pytest.warns(UserWarning, match="warmup_steps wins"):
        args = TrainingArguments(output_dir="unused", warmup_ratio=0.1, warmup_steps=4)
    assert args.get_warmup_steps(20) == 4  # warmup_steps wins


def test_linear_hand_values():
    s = get_scheduler("linear", 1e-3, num_warmup_steps=2, num_training_steps=10)
    assert [s(k) for k in range(3)] == [0.0, 0.0005, 0.001]
    assert s(10) == 0.0 and s(12) == 0.0  # never negative past the end


def test_cosine_num_cycles_and_min_lr():
    s = get_scheduler("cosine", 1.0, 0, 10, num_cycles=1.0)
    assert s(5) == pytest.approx(0.0, abs=1e-12) and s(10) == pytest.approx(1.0)
    m = get_scheduler("cosine_with_min_lr", 1.0, 0, 10, min_lr=0.1)
    assert m(10) == pytest.approx(0.1) and m(0) == 1.0


def test_inverse_sqrt():
    s = get_scheduler("inverse_sqrt", 1.0, num_warmup_steps=4)
    assert s(2) == 0.5 and s(4) == 1.0 and s(16) == pytest.approx(1 / math.sqrt(4))


def test_state_dict_round_trip():
    s = get_scheduler("polynomial", 2e-3, 3, 30, power=2.0, lr_end=1e-5)
    t = LRScheduler.from_state_dict(json.loads(json.dumps(s.state_dict())))
    assert [s(k) for k in range(35)] == [t(k) for k in range(35)]


def test_unknown_and_unsupported_schedules_raise():
    with pytest.raises(ConfigError, match="unknown lr_scheduler_type"):
        get_scheduler("triangle", 1e-3, 0, 10)
    with pytest.raises(ConfigError, match="not supported"):
        get_scheduler("reduce_lr_on_plateau", 1e-3, 0, 10)
    with pytest.raises(ConfigError, match="num_training_steps"):
        get_scheduler("linear", 1e-3, 0, None)
    with pytest.raises(ConfigError, match="unknown lr_scheduler_kwargs"):
        get_scheduler("linear", 1e-3, 0, 10, num_cycles=2)
    with pytest.raises(ConfigError, match="lr_end"):
        get_scheduler("polynomial", 1e-8, 0, 10)
    assert set(SCHEDULER_TYPES) >= {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                     "constant_with_warmup"}
