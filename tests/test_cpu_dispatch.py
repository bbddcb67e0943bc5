"""One build, several code paths: ferrotune's own kernels take AVX-512 or AVX2 code at run time
when the CPU has it, and FERROTUNE_CPU=avx2 / =generic force a lower tier. Every tier must
train and decode to the same numbers (up to summation order), so every CPU gets the same model."""

import os
import subprocess
import sys

import numpy as np
import pytest

import ferrotune as ft
from conftest import fixture_dir

SCRIPT = """
import sys, numpy as np, ferrotune as ft
out = {"isa": np.array(ft.cpu_isa())}
for name in sys.argv[1].split(","):
    m = ft.Model.from_pretrained(sys.argv[2] + "/" + name)
    ids = np.random.default_rng(0).integers(0, m.config.vocab_size, size=(3, 11))
    out[name + ".loss"] = np.array(m.forward_backward(ids))
    for k, g in m.gradients().items():
        out[name + "." + k] = g
    opt = ft.AdamW(m, lr=1e-2)
    opt.step()
    out[name + ".logits_after_step"] = m.eval()(ids).logits
np.savez(sys.argv[3], **out)
"""

DECODE = """
import sys, numpy as np, ferrotune as ft
from ferrotune.generation import generate
m = ft.Model.from_pretrained(sys.argv[1])
out = {"isa": np.array(ft.cpu_isa())}
for dt in ("float32", "bfloat16"):
    out[dt] = generate(m, np.array([[5, 9, 2, 17]]), max_new_tokens=5, eos_token_id=[], output_logits=True,
                       weights_dtype=dt)[1]
np.savez(sys.argv[2], **out)
"""

MODELS = ["gpt2_tiny_a", "llama_tiny", "mistral_tiny"]


TIERS = ("generic", "avx2", "native")


def run_tiers(tmp_path, script, *args):
    """Runs `script` with FERROTUNE_CPU=generic, =avx2 and unset (the best tier); each run
    saves its arrays to the .npz named by its last argument. Returns {tier: arrays}."""
    (tmp_path / "script.py").write_text(script)
    results = {}
    for tier in TIERS:
        env = {k: v for k, v in os.environ.items() if k != "FERROTUNE_CPU"}
        if tier != "native":
            env["FERROTUNE_CPU"] = tier
        dst = tmp_path / f"{tier}.npz"
        subprocess.run([sys.executable, str(tmp_path / "script.py"), *map(str, args), str(dst)], env=env, check=True)
        results[tier] = dict(np.load(dst))
    isas = {tier: str(r.pop("isa")) for tier, r in results.items()}
    # a CPU without AVX2 runs generic code for "avx2"; one without AVX-512 runs avx2 natively
    assert isas["generic"] == "generic" and isas["native"] == ft.cpu_isa()
    assert isas["avx2"] in ("avx2", "generic") and (isas["avx2"] == "avx2") == (isas["native"] != "generic")
    assert results["generic"].keys() == results["avx2"].keys() == results["native"].keys()
    return results


def assert_alike(results):
    gen = results["generic"]
    for tier in ("avx2", "native"):
        for k in gen:
            scale = max(float(np.abs(results[tier][k]).max()), 1e-30)
            assert np.abs(gen[k] - results[tier][k]).max() <= 1e-5 * scale, (tier, k)


def test_every_tier_trains_alike(tmp_path):
    root = os.path.dirname(fixture_dir(MODELS[0]))
    if not all(os.path.isdir(os.path.join(root, m)) for m in MODELS):
        pytest.skip("fixtures missing: run tests/fixtures/make_fixtures.py")
    assert_alike(run_tiers(tmp_path, SCRIPT, ",".join(MODELS), root))


def test_every_tier_decodes_alike(tmp_path):
    """KV-cached decoding with f32 and bf16 weights (kernels/matvec.rs has both paths)."""
    if not os.path.isdir(fixture_dir(MODELS[0])):
        pytest.skip("fixtures missing: run tests/fixtures/make_fixtures.py")
    assert_alike(run_tiers(tmp_path, DECODE, fixture_dir(MODELS[0])))
