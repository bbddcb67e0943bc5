"""Data-parallel training over MPI (ferrotune.distributed, issue #13): ``mpiexec -n 2`` runs of
tests/distributed_worker.py, one thread per rank, against the same worker run as one process.

Needs the ``mpi`` extra (mpi4py, and mpiexec from the mpich wheel); the test extra brings it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="the mpi extra is not installed (pip install 'ferrotune[mpi]')")

FIX = Path(__file__).parent / "fixtures"
TINY = FIX / "gpt2_tiny_a"
WORKER = Path(__file__).parent / "distributed_worker.py"
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("no mpiexec next to this Python or on PATH (the mpich wheel of the mpi extra has one)",
                allow_module_level=True)
if not (TINY / "model.safetensors").exists():
    pytest.skip("fixture gpt2_tiny_a is absent (run tests/fixtures/make_fixtures.py)", allow_module_level=True)


def env(threads="1"):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    e.pop("RAYON_NUM_THREADS", None)
    if threads is not None:
        e["RAYON_NUM_THREADS"] = threads
    return e


def launch(spec, ranks=2, timeout=120, threads="1", check=True):
    """Runs the worker on ``ranks`` MPI ranks (1: plain python, no launcher); returns the
    completed process and the ranks' reports."""
    cmd = [sys.executable, str(WORKER), json.dumps(spec)]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    p = subprocess.run(cmd, env=env(threads), capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    reports = []
    for r in range(ranks):
        path = Path(spec["report"]) / f"rank-{r}.json"
        reports.append(json.loads(path.read_text()) if path.exists() else None)
    return p, reports


def args(out, **kw):
    base = dict(output_dir=str(out), learning_rate=1e-2, weight_decay=0.01, logging_steps=1, save_strategy="no",
                disable_tqdm=True, report_to="none", seed=0, max_grad_norm=1.0, lr_scheduler_type="linear")
    base.update(kw)
    return base


def weights(report):
    return {k: np.asarray(v, np.float64) for k, v in report["weights"].items()}


def max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def dropout_model(tmp_path, p=0.1):
    d = tmp_path / "tiny_dropout"
    if not d.exists():
        shutil.copytree(TINY, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)
        (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


@pytest.mark.parametrize("stream", [False, True])
def test_two_ranks_of_batch_2_equal_one_process_of_batch_4(tmp_path, stream):
    """3 steps (one epoch, no padding examples) with accumulation over examples of uneven
    lengths: the weights of 2 ranks x per-device batch 2 equal those of 1 process x batch 4
    (the same global batches, the loss the token mean over both ranks), and the logged losses
    and gradient norms agree; for a map-style dataset and for a stream. (lr 1e-3: AdamW
    divides by the gradients' own scale, so the rounding of sums in another order moves
    weights whose gradient is ~0 by up to ~lr; at lr 1e-2 the largest difference is 4e-5, at
    1e-3 4e-6.)"""
    common = dict(model=str(TINY), mode="train", train=(24, 1), eval=(3, 2), bucket_bytes=1, stream=stream)
    _, one = launch({**common, "report": str(tmp_path / "r1"),
                     "args": args(tmp_path / "one", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                  max_steps=3, learning_rate=1e-3)}, ranks=1)
    _, two = launch({**common, "report": str(tmp_path / "r2"),
                     "args": args(tmp_path / "two", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                  max_steps=3, learning_rate=1e-3)})
    w1, w2a, w2b = weights(one[0]), weights(two[0]), weights(two[1])
    assert max_diff(w2a, w2b) == 0.0  # every rank takes the same step
    assert max_diff(w1, w2a) < 1e-5
    h1 = [h for h in one[0]["log_history"] if "loss" in h]
    h2 = [h for h in two[0]["log_history"] if "loss" in h]
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [1, 2, 3]
    for a, b in zip(h1, h2):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * a["grad_norm"]
    # only rank 0 wrote the final model
    assert (tmp_path / "two" / "final" / "model.safetensors").is_file()
    def steady(history):  # without the timings
        return [{k: v for k, v in h.items() if "runtime" not in k and "per_second" not in k} for h in history]

    assert steady(two[0]["log_history"]) == steady(two[1]["log_history"])  # the ranks' states agree


def test_optimizer_in_backward_two_ranks_equal_one_process(tmp_path):
    """The fused step with each block's update waiting for the sum of its gradients: 2 ranks x
    batch 2 give the weights of 1 process x batch 4."""
    common = dict(model=str(TINY), mode="train", train=(12, 1), eval=(3, 2))
    fused = dict(optimizer_in_backward=True, max_grad_norm=0.0, max_steps=3, learning_rate=1e-3)
    _, one = launch({**common, "report": str(tmp_path / "r1"),
                     "args": args(tmp_path / "one", per_device_train_batch_size=4, **fused)}, ranks=1)
    _, two = launch({**common, "report": str(tmp_path / "r2"),
                     "args": args(tmp_path / "two", per_device_train_batch_size=2, **fused)})
    assert max_diff(weights(two[0]), weights(two[1])) == 0.0
    assert max_diff(weights(one[0]), weights(two[0])) < 1e-5
    h1 = [h["loss"] for h in one[0]["log_history"] if "loss" in h]
    h2 = [h["loss"] for h in two[0]["log_history"] if "loss" in h]
    assert np.allclose(h1, h2, rtol=0, atol=1e-5)


def test_overlapped_bucketed_reduction_equals_one_all_reduce(tmp_path):
    """Buckets started from the backward's per-block hook give the gradients of one blocking
    all-reduce after the backward, bit for bit; threads default to cores / ranks per node."""
    spec = dict(model=str(TINY), mode="reduce", bucket_bytes=1, report=str(tmp_path / "r"))
    _, reports = launch(spec, threads=None)
    for r in reports:
        assert r["world_size"] == 2
        assert r["buckets"] >= 3  # one per block, then the embeddings and the final norm
        assert r["equal"], r["max_diff"]
        assert r["threads"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert reports[0]["shard"] == [0, 2, 4] and reports[1]["shard"] == [1, 3, 0]  # padded from the start


def test_checkpoints_written_once_and_resume_exactly(tmp_path):
    """With dropout on: rank 0 alone writes each checkpoint (with both ranks' RNG states);
    resuming 2 ranks from checkpoint-2 ends with the weights of the uninterrupted run, bit
    for bit; resuming it as one process warns that the run then differs."""
    model = dropout_model(tmp_path)
    common = dict(model=model, mode="train", train=(16, 3), eval=(3, 2))
    full_args = args(tmp_path / "full", per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3,
                     save_strategy="steps", save_steps=1)
    _, full = launch({**common, "report": str(tmp_path / "rf"), "args": full_args})
    assert [r["optimizer_saves"] for r in full] == [3, 0]
    ckpts = sorted(p.name for p in (tmp_path / "full").iterdir() if p.name.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    rng = json.loads((tmp_path / "full" / "checkpoint-2" / "rng_state.json").read_text())
    assert rng["world_size"] == 2 and len(set(rng["model_rng_states"])) == 2

    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full" / "checkpoint-2", cut / "checkpoint-2")
    resume_args = {**full_args, "output_dir": str(cut)}
    _, resumed = launch({**common, "report": str(tmp_path / "rr"), "args": resume_args, "resume": True})
    assert max_diff(weights(full[0]), weights(resumed[0])) == 0.0
    assert max_diff(weights(resumed[0]), weights(resumed[1])) == 0.0
    assert [r["optimizer_saves"] for r in resumed] == [1, 0]

    # another world size: restored, with a warning that says what then differs
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "full" / "checkpoint-2", other / "checkpoint-2")
    p, _ = launch({**common, "report": str(tmp_path / "ro"), "args": {**full_args, "output_dir": str(other)},
                   "resume": True}, ranks=1)
    assert "was written by a run of 2 process(es), this one has 1" in p.stderr, p.stderr[-2000:]


def test_sharded_evaluation_equals_one_process(tmp_path):
    """7 examples in batches of 2 over 2 ranks: loss, accuracy and compute_metrics on the
    gathered predictions (in dataset order) equal the single-process evaluation."""
    spec = dict(model=str(TINY), mode="evaluate", eval=(7, 5), args=args(tmp_path / "o", per_device_eval_batch_size=2))
    _, one = launch({**spec, "report": str(tmp_path / "r1")}, ranks=1)
    _, two = launch({**spec, "report": str(tmp_path / "r2")})
    for key in ("metrics", "plain"):
        a, b0, b1 = one[0][key], two[0][key], two[1][key]
        for k in ("eval_loss", "eval_accuracy", "eval_perplexity"):
            assert b0[k] == b1[k]
            assert abs(a[k] - b0[k]) <= 1e-9 * abs(a[k]), (key, k, a[k], b0[k])
        assert b0["eval_samples_per_second"] > 0
    assert two[0]["metrics"]["eval_n_rows"] == one[0]["metrics"]["eval_n_rows"] == 7
    assert two[0]["metrics"]["eval_checksum"] == one[0]["metrics"]["eval_checksum"]


def test_an_exception_on_one_rank_ends_the_job(tmp_path):
    """Rank 1 raises after step 2 while rank 0 waits for it in the next reduction: the job
    ends non-zero (within the 30 s timeout) with rank 1's traceback."""
    spec = dict(model=str(TINY), mode="train", train=(40, 1), eval=(3, 2), raise_on=(1, 2),
                report=str(tmp_path / "r"), args=args(tmp_path / "o", per_device_train_batch_size=2, max_steps=50))
    p, reports = launch(spec, timeout=30, check=False)
    assert p.returncode != 0
    assert "[rank 1]" in p.stderr and "boom from rank 1 at step 2" in p.stderr, p.stderr[-2000:]
    assert reports == [None, None]


def test_ctrl_c_saves_once_and_stops_every_rank(tmp_path):
    """SIGINT to mpiexec (which passes it to both ranks) after step 2: rank 0 writes one
    interrupt checkpoint, both ranks stop, and the run resumes from it."""
    flag = tmp_path / "at-step-2"
    out = tmp_path / "o"
    spec = dict(model=str(TINY), mode="train", train=(40, 1), eval=(3, 2), signal_at=(2, str(flag)),
                report=str(tmp_path / "r"), args=args(out, per_device_train_batch_size=2, max_steps=50))
    cmd = [MPIEXEC, "-n", "2", sys.executable, str(WORKER), json.dumps(spec)]
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if flag.exists() or p.poll() is not None:
                break
            time.sleep(0.05)
        assert flag.exists(), "the run never reached step 2"
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    ckpts = [c.name for c in out.iterdir() if c.name.startswith("checkpoint-")]
    assert len(ckpts) == 1, (ckpts, stderr[-2000:])
    assert stdout.count("Training interrupted after step") == 1, stdout[-2000:]
    assert (out / ckpts[0] / "optimizer.safetensors").is_file()
