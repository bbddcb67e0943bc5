"""The x86_64 wheel the way a user meets it: a fresh virtual environment, `pip install` of the
wheel in dist/ (made by scripts/build_wheels.sh), no cargo or rustc on PATH, run from a
directory outside the checkout; then load a model, train 2 steps, save, reload, generate.

The test command builds the wheel first and sets FERROTUNE_TEST_WHEEL=1, so a missing wheel
fails there; elsewhere it is skipped with the command that builds one.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import ferrotune

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "gpt2_tiny_a"

SMOKE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import ferrotune
    from ferrotune import Model, Trainer, TrainingArguments

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    model = Model.from_pretrained(str(model_dir))
    rng = np.random.default_rng(0)
    rows = [{"input_ids": rng.integers(0, 100, 12).tolist()} for _ in range(4)]
    args = TrainingArguments(output_dir=str(out / "run"), max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-2, save_strategy="no", disable_tqdm=True, report_to="none")
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    model.save_pretrained(str(out / "saved"))
    again = Model.from_pretrained(str(out / "saved"))
    ids = np.array([[1, 2, 3, 4]])
    same = bool(np.array_equal(model(ids).logits, again(ids).logits))
    generated = again.generate(ids, max_new_tokens=5, do_sample=False)
    print(json.dumps({
        "file": ferrotune.__file__, "version": ferrotune.__version__, "isa": ferrotune.cpu_isa(),
        "loss": result.training_loss, "steps": result.global_step, "same_after_reload": same,
        "generated": np.asarray(generated).tolist(),
    }))
    """
)


def _wheel() -> Path:
    machine = platform.machine()
    wheels = sorted((ROOT / "dist").glob(f"ferrotune-{ferrotune.__version__}-cp39-abi3-manylinux*_{machine}.whl"))
    if not wheels:
        msg = f"no {machine} wheel of ferrotune {ferrotune.__version__} in dist/: bash scripts/build_wheels.sh {machine}"
        if os.environ.get("FERROTUNE_TEST_WHEEL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return wheels[-1]


def test_wheel_tags_and_contents():
    wheel = _wheel()
    # one wheel for every CPython >= 3.9, glibc >= 2.17
    assert re.search(rf"-cp39-abi3-(manylinux2014_{platform.machine()}\.)?manylinux_2_17_{platform.machine()}\.whl$", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(re.fullmatch(r"ferrotune/_core\.abi3\.so", n) for n in names), names
    assert "ferrotune/_core.pyi" in names and "ferrotune/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names), names
    assert "License-Expression: Apache-2.0 AND CC-BY-SA-4.0" in meta
    assert f"Version: {ferrotune.__version__}" in meta
    assert "Requires-Python: >=3.9" in meta


def _interpreters():
    """This interpreter, and the oldest and newest CPython the abi3 wheel claims, where present."""
    found = [pytest.param(sys.executable, id="this-python")]
    for version in ("3.9", "3.13"):
        # pyenv's interpreters themselves (its shims on PATH fail unless that version is selected)
        candidates = sorted(map(str, Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")))
        on_path = shutil.which(f"python{version}")
        candidates += [on_path] if on_path and "/shims/" not in on_path else []
        path = next(iter(candidates), None)
        marks = () if path else pytest.mark.skip(reason=f"no python{version} on this machine (PATH or pyenv)")
        found.append(pytest.param(path, id=f"python{version}", marks=marks))
    return found


@pytest.mark.parametrize("python", _interpreters())
def test_wheel_installs_and_trains_without_rust(tmp_path, python):
    wheel = _wheel()
    if not TINY.joinpath("model.safetensors").exists():
        pytest.skip("fixture gpt2_tiny_a is absent (run tests/fixtures/make_fixtures.py)")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    # PATH has the venv and the system's directories, never a Rust toolchain
    path = os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    for tool in ("cargo", "rustc"):
        found = shutil.which(tool, path=path)
        assert found is None, f"{tool} is on the smoke test's PATH ({found})"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = path
    work = tmp_path / "outside"  # not the checkout: nothing can be imported from python/
    work.mkdir()
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [str(wheel)], check=True, cwd=work, env=env, timeout=600)
    model_dir = tmp_path / "model"
    shutil.copytree(TINY, model_dir)
    (work / "smoke.py").write_text(SMOKE)
    run = subprocess.run(
        [str(venv / "bin" / "python"), "smoke.py", str(model_dir), str(tmp_path)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(venv), out["file"]
    assert out["version"] == ferrotune.__version__
    assert out["isa"] == ferrotune.cpu_isa()
    assert out["steps"] == 2 and out["loss"] > 0
    assert out["same_after_reload"] is True
    assert len(out["generated"][0]) == 4 + 5

    # what a user pastes into a bug report, from the installed wheel
    info = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "ferrotune.info"], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert info.returncode == 0, info.stderr
    assert re.search(rf"^ferrotune\s+{re.escape(ferrotune.__version__)}$", info.stdout, re.M), info.stdout
    assert re.search(rf"^build\s+release {platform.machine()}-unknown-linux-gnu$", info.stdout, re.M), info.stdout
    assert re.search(r"^commit\s+[0-9a-f]{12}$", info.stdout, re.M), info.stdout
