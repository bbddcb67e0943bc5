#!/usr/bin/env python
"""Training speed, side by side: ferrotune against PyTorch + transformers.

Same model config (random init), same shapes, same token ids, same loop:

    ferrotune: loss = model.forward_backward(ids); opt.step(); model.zero_grad()
    PyTorch:   model.train(); loss = model(ids, labels=ids).loss; loss.backward();
               opt.step(); opt.zero_grad(set_to_none=True)    (torch.optim.AdamW)

Forward-only rows run ``model(ids, labels=ids)`` (loss + (B, T, V) logits) in eval mode
(PyTorch under ``torch.inference_mode()``). ``bf16`` rows train the 124M model in mixed
precision: ferrotune with ``set_float32_matmul_precision("medium")`` (what
``TrainingArguments(bf16=True)`` sets), PyTorch with its forward under
``torch.autocast("cpu", dtype=torch.bfloat16)``; both keep f32 weights and AdamW state.
``ckpt`` rows train the 124M model with gradient checkpointing on both sides
(``model.gradient_checkpointing_enable()``). ``fused`` rows fuse the optimizer step into the
backward on both sides: ferrotune ``loss = opt.backward_step(ids)``, PyTorch one
``torch.optim.AdamW`` per parameter stepped from a ``register_post_accumulate_grad_hook``
(PyTorch's "optimizer step in backward" recipe), so neither holds every gradient at once;
``fusedckpt`` rows add gradient checkpointing to that. ``trainer`` rows go end to end through each
framework's ``Trainer`` (``TrainingArguments(per_device_train_batch_size=B, max_steps=...,
learning_rate=1e-4, weight_decay=0.01, save_strategy="no", logging_steps=1, report_to=[])``
over B * (warm-up + steps) rows of T token ids; a step's time runs from one ``on_step_end``
callback to the next, so collation, logging and the scheduler are in it).

Every measurement runs in a fresh subprocess, so the peak RSS (``ru_maxrss``) is that
run's alone (it includes the interpreter, the imports, the model and the optimizer
state). The frameworks alternate, shape by shape (and with ``--repeats``, the order
flips every repeat). One warm-up step, then ``--steps`` timed steps; the table shows the
median step of the fastest process (with ``--repeats`` > 1: the one least disturbed by
other jobs on a shared machine; every process's median is listed too), tokens/s, the
ratios ferrotune / PyTorch, peak RSS, MFU, and each process's CPU seconds per wall second
(which shows when other jobs took the cores). ``--json`` keeps every step time.

MFU = model FLOPs per step / step time / the best f32 matmul rate measured here, where
    model FLOPs (training)   = 6 * N * B * T + 12 * L * T^2 * C * B
    model FLOPs (forward)    = 2 * N * B * T +  4 * L * T^2 * C * B
    N = parameters minus the position table (n_positions * C, a lookup); the tied token
        embedding counts once, as the LM head's matmul. The attention term counts QK^T and
        AV over the full T x T square (no causal halving), as in the PaLM paper.
The matmul rate is the best of 10 timed (2048, 2048) x (2048, 2048) float32 products with
numpy (each environment's BLAS) and, when PyTorch runs, torch.mm; it is measured before and
after the runs and after every run (once its peak RSS is read), and the best of all these
probes is the denominator (one probe can land on a moment when other jobs hold the cores).

Usage (from the repository root; ferrotune installed in the running environment):

    python benchmarks/bench_train.py                                   # every shape
    python benchmarks/bench_train.py --torch-python /path/to/venv/bin/python
    python benchmarks/bench_train.py --shapes train:4x256 forward:1x512 tiny:8x128 \\
        --threads 1 2 --steps 3

PyTorch runs when --torch-python names an interpreter that has torch + transformers,
or when torch is importable here; ``--frameworks ferrotune`` skips it. ``--tuned-pytorch``
adds PyTorch "hand-tuned": the same loop with MKL on its AVX-512 path (on AMD CPUs MKL takes
its AVX2 code unless ``mkl_serv_intel_cpu_true`` says yes; benchmarks/mkl_avx512.c, built
with ``cc`` and loaded with LD_PRELOAD). The issue's hand-tuned figures also used tcmalloc,
which this does not.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from hostinfo import add_isa_argument, git_revision, isa_env, load_average, machine, tier

GPT2_124M = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
TINY = dict(vocab_size=50257, n_positions=1024, n_embd=256, n_layer=4, n_head=4)
MODELS = {"train": GPT2_124M, "bf16": GPT2_124M, "ckpt": GPT2_124M, "fused": GPT2_124M, "fusedckpt": GPT2_124M,
          "trainer": GPT2_124M, "forward": GPT2_124M, "tiny": TINY}
DEFAULT_SHAPES = ["train:4x128", "train:4x256", "train:2x512", "train:1x1024", "tiny:8x128", "forward:1x512"]
DROPOUTS = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
DATA_SEED = 1234
MATMUL_N, MATMUL_REPEATS = 2048, 10


# ---- model arithmetic ----------------------------------------------------------------
def n_params(cfg: dict) -> int:
    """GPT-2 parameter count (tied LM head)."""
    v, p, c, nl = cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"], cfg["n_layer"]
    per_layer = 12 * c * c + 13 * c  # qkv, proj, fc, fc_proj weights + biases + 2 LayerNorms
    return v * c + p * c + nl * per_layer + 2 * c


def model_flops(cfg: dict, b: int, t: int, train: bool) -> float:
    n = n_params(cfg) - cfg["n_positions"] * cfg["n_embd"]
    c, nl = cfg["n_embd"], cfg["n_layer"]
    if train:
        return 6.0 * n * b * t + 12.0 * nl * t * t * c * b
    return 2.0 * n * b * t + 4.0 * nl * t * t * c * b


def parse_shape(s: str) -> tuple:
    try:
        mode, bt = s.split(":")
        b, t = (int(x) for x in bt.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {s!r}: expected MODE:BxT, e.g. train:4x256") from None
    if mode not in MODELS:
        raise argparse.ArgumentTypeError(f"shape {s!r}: mode must be one of {sorted(MODELS)}")
    if t > MODELS[mode]["n_positions"]:
        raise argparse.ArgumentTypeError(f"shape {s!r}: T > n_positions")
    return mode, b, t


# ---- workers (run in a fresh subprocess each) ----------------------------------------
def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_bytes() -> int:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def _file_id(path: str) -> str:
    """sha256 prefix + modification time of a file (which build of the extension ran)."""
    import hashlib

    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(os.stat(path).st_mtime))
    return f"{os.path.basename(path)} sha256 {digest}, built {stamp} UTC"


def _timed_loop(step, warmup: int, steps: int) -> dict:
    losses = []
    for _ in range(warmup):
        losses.append(float(step()))
    times = []
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(float(step()))
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - wall0
    return {"times": times, "losses": losses, "cpu_per_wall": (_cpu_seconds() - cpu0) / wall}


def _trainer_run(make_trainer, callback_base, job: dict) -> dict:
    """Trains through a framework's Trainer for warm-up + steps steps; times from the
    on_step_end callbacks (the first `warmup` steps dropped), losses from the log history."""
    stamps: list = []

    class StepTimer(callback_base):  # type: ignore[misc,valid-type]
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ARG002
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
            stamps.append(time.perf_counter())

    trainer = make_trainer(StepTimer())
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - wall0
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"times": times[job["warmup"]:], "losses": losses, "cpu_per_wall": (_cpu_seconds() - cpu0) / wall}


def _trainer_args(job: dict, tmp: str) -> dict:
    return dict(output_dir=tmp, per_device_train_batch_size=job["b"], max_steps=job["warmup"] + job["steps"],
                learning_rate=1e-4, weight_decay=0.01, save_strategy="no", logging_steps=1, report_to=[],
                disable_tqdm=True)


def worker_ferrotune(job: dict) -> dict:
    import numpy as np

    import ferrotune as ft

    mode, b, t = job["mode"], job["b"], job["t"]
    cfg = dict(model_type="gpt2", **MODELS[mode], **DROPOUTS)
    ids = np.random.default_rng(DATA_SEED).integers(0, cfg["vocab_size"], size=(b, t), dtype=np.int64)
    model = ft.Model.from_config(cfg, seed=0)
    assert model.num_parameters() == n_params(cfg), (model.num_parameters(), n_params(cfg))
    if mode == "bf16":
        ft.set_float32_matmul_precision("medium")
    if mode in ("ckpt", "fusedckpt"):
        model.gradient_checkpointing_enable()
    if mode == "trainer":
        rows = [{"input_ids": r.tolist()} for r in np.random.default_rng(DATA_SEED).integers(
            0, cfg["vocab_size"], size=(b * (job["warmup"] + job["steps"]), t))]
        with tempfile.TemporaryDirectory() as tmp:
            r = _trainer_run(lambda cb: ft.Trainer(model=model, args=ft.TrainingArguments(**_trainer_args(job, tmp)),
                                                   train_dataset=rows, callbacks=[cb]), ft.TrainerCallback, job)
        r["version"] = f"ferrotune {ft.__version__}, numpy {np.__version__}"
        r["build"] = _file_id(ft._core.__file__)
        r["build_path"] = os.path.dirname(ft.__file__)
        r["threads"] = os.environ.get("RAYON_NUM_THREADS", str(os.cpu_count()))
        return r
    if mode == "forward":
        model.eval()

        def step():
            out = model(ids, labels=ids)
            assert out.logits.shape == (b, t, cfg["vocab_size"])
            return out.loss

    elif mode in ("fused", "fusedckpt"):
        model.train()
        opt = ft.AdamW(model, lr=1e-4, weight_decay=0.01)

        def step():
            return opt.backward_step(ids)

    else:
        model.train()
        opt = ft.AdamW(model, lr=1e-4, weight_decay=0.01)

        def step():
            loss = model.forward_backward(ids)
            opt.step()
            model.zero_grad()
            return loss

    r = _timed_loop(step, job["warmup"], job["steps"])
    r["version"] = f"ferrotune {ft.__version__}, numpy {np.__version__}"
    r["build"] = _file_id(ft._core.__file__)
    r["build_path"] = os.path.dirname(ft.__file__)
    r["threads"] = os.environ.get("RAYON_NUM_THREADS", str(os.cpu_count()))
    return r


def worker_pytorch(job: dict) -> dict:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(job["torch_threads"])
    torch.manual_seed(0)
    mode, b, t = job["mode"], job["b"], job["t"]
    cfg = transformers.GPT2Config(**MODELS[mode], **DROPOUTS)
    ids_np = np.random.default_rng(DATA_SEED).integers(0, cfg.vocab_size, size=(b, t), dtype=np.int64)
    ids = torch.from_numpy(ids_np)
    model = transformers.GPT2LMHeadModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == n_params(MODELS[mode])
    if mode in ("ckpt", "fusedckpt"):
        model.gradient_checkpointing_enable()
    if mode == "trainer":
        rows = [{"input_ids": torch.from_numpy(r), "labels": torch.from_numpy(r)} for r in np.random.default_rng(
            DATA_SEED).integers(0, cfg.vocab_size, size=(b * (job["warmup"] + job["steps"]), t), dtype=np.int64)]
        with tempfile.TemporaryDirectory() as tmp:
            args = transformers.TrainingArguments(**_trainer_args(job, tmp), use_cpu=True, dataloader_num_workers=0)
            r = _trainer_run(lambda cb: transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[cb]),
                             transformers.TrainerCallback, job)
        attn = getattr(model.config, "_attn_implementation", "?")
        r["version"] = f"torch {torch.__version__}, transformers {transformers.__version__}, attn {attn}"
        r["threads"] = str(torch.get_num_threads())
        return r
    if mode == "forward":
        model.eval()

        def step():
            with torch.inference_mode():
                out = model(ids, labels=ids)
            assert tuple(out.logits.shape) == (b, t, cfg.vocab_size)
            return out.loss.item()

    elif mode in ("fused", "fusedckpt"):
        model.train()
        # one optimizer per parameter, stepped as soon as its gradient is complete
        opts = {p: torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01) for p in model.parameters()}

        def hook(p):
            opts[p].step()
            opts[p].zero_grad(set_to_none=True)

        for p in model.parameters():
            p.register_post_accumulate_grad_hook(hook)

        def step():
            loss = model(ids, labels=ids).loss
            loss.backward()
            return loss.item()

    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

    r = _timed_loop(step, job["warmup"], job["steps"])
    attn = getattr(model.config, "_attn_implementation", "?")
    r["version"] = f"torch {torch.__version__}, transformers {transformers.__version__}, attn {attn}"
    r["threads"] = str(torch.get_num_threads())
    return r


def worker_matmul(job: dict) -> dict:
    """Best float32 matmul rate in GFLOP/s: numpy here, and torch.mm if job asks for it."""
    import numpy as np

    n = MATMUL_N
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = {}
    fns = {"numpy (torch env)" if job.get("torch") else "numpy (ferrotune env)": lambda: a @ b}
    if job.get("torch"):
        import torch

        torch.set_num_threads(job["torch_threads"])
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns["torch.mm"] = lambda: torch.mm(ta, tb)
    for name, f in fns.items():
        f()
        best = float("inf")
        for _ in range(MATMUL_REPEATS):
            t0 = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t0)
        out[name] = 2.0 * n**3 / best / 1e9
    return {"gflops": out}


def worker_main(job_json: str) -> None:
    job = json.loads(job_json)
    fn = {"ferrotune": worker_ferrotune, "pytorch": worker_pytorch, "matmul": worker_matmul}[job["kind"]]
    r = fn(job)
    r["peak_rss"] = _peak_rss_bytes()
    if job["kind"] != "matmul":
        r["tier"] = tier(job["kind"])
        # a matmul probe in every run (after reading the peak RSS), so that the MFU denominator is
        # the best rate seen over the whole benchmark, not one moment of a shared machine
        r["gflops"] = worker_matmul({"torch": job["kind"] == "pytorch", "torch_threads": job["torch_threads"]})["gflops"]
    print("RESULT " + json.dumps(r), flush=True)


# ---- orchestration --------------------------------------------------------------------
def run_job(python: str, job: dict, env_extra: dict | None = None) -> dict:
    env = dict(os.environ)
    # a forced OpenBLAS core type (e.g. Haswell) would hold numpy's matmul probe below the CPU's
    # best; neither training loop uses OpenBLAS (ferrotune: the gemm crate, PyTorch: MKL/oneDNN)
    env.pop("OPENBLAS_CORETYPE", None)
    env.update(env_extra or {})
    cmd = [python, os.path.abspath(__file__), "--worker", json.dumps(job)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {job} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


def torch_available(python: str) -> bool:
    if python == sys.executable:
        return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
    p = subprocess.run([python, "-c", "import torch, transformers"], capture_output=True)
    return p.returncode == 0


def fmt_gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES],
                    metavar="MODE:BxT", help="train:BxT (GPT-2 124M), tiny:BxT (4 layers, 256 channels), "
                    f"forward:BxT (124M, forward only); default: {' '.join(DEFAULT_SHAPES)}")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per shape and framework (default 1)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="ferrotune thread counts (RAYON_NUM_THREADS); e.g. --threads 1 2 (default 2)")
    ap.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--torch-python", default=None,
                    help="Python interpreter with torch + transformers (default: this one, if it has them)")
    ap.add_argument("--frameworks", nargs="+", choices=["ferrotune", "pytorch"], default=["ferrotune", "pytorch"])
    ap.add_argument("--tuned-pytorch", action="store_true",
                    help="also run PyTorch with MKL forced onto its AVX-512 path (needs a C compiler, cc)")
    add_isa_argument(ap)
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="also show MFU against this nominal peak f32 rate (GFLOP/s), e.g. the CPU's FMA peak")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="import ferrotune from where it is installed in every run; by default the package is "
                    "copied once into a temporary directory first, so that every run measures the same build "
                    "even if an editable install is rebuilt meanwhile")
    ap.add_argument("--json", default=None, help="also write every raw measurement to this file")
    ap.add_argument("--report", default=None, metavar="FILE", help="print the table of a --json file and exit")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker_main(args.worker)
        return
    if args.report is not None:
        with open(args.report) as f:
            print_report(json.load(f), args.peak_gflops)
        return

    torch_python = args.torch_python or sys.executable
    use_torch = "pytorch" in args.frameworks and torch_available(torch_python)
    if "pytorch" in args.frameworks and not use_torch:
        print("PyTorch side skipped: torch + transformers not importable "
              + ("there" if args.torch_python else "here (pass --torch-python)"))
    use_ft = "ferrotune" in args.frameworks

    ft_env: dict = {}
    if use_ft and not args.no_snapshot:
        spec = importlib.util.find_spec("ferrotune")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("ferrotune is not importable here (run from its environment, or --frameworks pytorch)")
        snapshot = tempfile.mkdtemp(prefix="bench_train_")
        atexit.register(shutil.rmtree, snapshot, True)
        shutil.copytree(list(spec.submodule_search_locations)[0], os.path.join(snapshot, "ferrotune"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        ft_env["PYTHONPATH"] = os.pathsep.join([snapshot] + [p for p in [os.environ.get("PYTHONPATH")] if p])

    print(f"machine: {machine()}; load average at start: {load_average()}")
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"note: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set here; the runs go without it "
              "(OpenBLAS picks its kernels for this CPU)")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    source = git_revision()
    print(f"date: {date}; source tree: {source}")
    started = time.time()

    tier_env = isa_env(args.isa)
    if args.isa != "native" and args.tuned_pytorch:
        sys.exit("--tuned-pytorch forces MKL onto AVX-512: it goes with --isa native only")

    def measure_matmul() -> dict:
        """f32 matmul rate (GFLOP/s) in each environment."""
        out = run_job(sys.executable, {"kind": "matmul"}, tier_env)["gflops"]
        if use_torch:
            out.update(run_job(torch_python, {"kind": "matmul", "torch": True,
                                              "torch_threads": args.torch_threads}, tier_env)["gflops"])
        return out

    def show_matmul(when: str, mm: dict) -> None:
        print(f"f32 matmul {when} ({MATMUL_N}x{MATMUL_N} @ {MATMUL_N}x{MATMUL_N}, best of {MATMUL_REPEATS}): "
              + ", ".join(f"{k} {v:.0f}" for k, v in mm.items()) + " GFLOP/s", flush=True)

    # the MFU denominator: the best rate of all probes (start, end, and one after every run)
    probes = [measure_matmul()]
    show_matmul("at start", probes[0])

    # runs: per shape, alternate frameworks; the order flips each repeat
    variants = ([("ferrotune", th) for th in args.threads] if use_ft else []) + \
               ([("pytorch", args.torch_threads)] if use_torch else []) + \
               ([("pytorch-tuned", args.torch_threads)] if use_torch and args.tuned_pytorch else [])
    tuned_env: dict = {}
    if use_torch and args.tuned_pytorch:
        lib = os.path.join(tempfile.mkdtemp(prefix="bench_train_mkl_"), "libmkl_avx512.so")
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mkl_avx512.c")
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib, src], check=True)
        tuned_env["LD_PRELOAD"] = lib
    raw = {}
    versions: dict = {}
    tiers: dict = {}
    builds: dict = {}
    for rep in range(args.repeats):
        for mode, b, t in args.shapes:
            order = variants if rep % 2 == 0 else variants[::-1]
            for fw, th in order:
                job = dict(kind=fw, mode=mode, b=b, t=t, warmup=args.warmup, steps=args.steps,
                           torch_threads=args.torch_threads)
                if fw == "ferrotune":
                    r = run_job(sys.executable, job, {**ft_env, **tier_env, "RAYON_NUM_THREADS": str(th)})
                elif fw == "pytorch-tuned":
                    r = run_job(torch_python, {**job, "kind": "pytorch"}, tuned_env)
                else:
                    r = run_job(torch_python, job, tier_env)
                versions[fw] = r["version"]
                tiers[fw] = r["tier"]
                probes.append(r["gflops"])
                if "build" in r:
                    builds.setdefault(r["build"], []).append(f"{mode}:{b}x{t}")
                key = (mode, b, t, fw, th)
                raw.setdefault(key, []).append(r)
                med = statistics.median(r["times"])
                print(f"  [{rep + 1}/{args.repeats}] {mode}:{b}x{t} {fw} ({th} thr): median {med:.3f} s/step, "
                      f"steps {' '.join(f'{x:.2f}' for x in r['times'])}, peak RSS {fmt_gb(r['peak_rss'])}, "
                      f"cpu/wall {r['cpu_per_wall']:.2f}, losses {' '.join(f'{x:.3f}' for x in r['losses'])}, "
                      f"load {load_average()}", flush=True)

    probes.append(measure_matmul())
    show_matmul("at end", probes[-1])
    data = {
        "machine": machine(), "source": source, "date": date, "builds": builds,
        "versions": versions, "isa": args.isa, "tiers": tiers, "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
        "torch_threads": args.torch_threads, "wall_s": time.time() - started, "load_end": load_average(),
        "matmul_gflops": probes,
        "runs": [dict(mode=k[0], b=k[1], t=k[2], framework=k[3], threads=k[4], results=v) for k, v in raw.items()],
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    print_report(data, args.peak_gflops)


def print_report(data: dict, peak_gflops: float | None = None) -> None:
    """The summary table, from the measurements (also those saved with --json)."""
    probes = data["matmul_gflops"]
    mm = {k: max(p[k] for p in probes if k in p) for k in dict.fromkeys(k for p in probes for k in p)}
    print(f"f32 matmul, best of {len(probes)} probes ({MATMUL_N}x{MATMUL_N} @ {MATMUL_N}x{MATMUL_N}, best of "
          f"{MATMUL_REPEATS} each): " + ", ".join(f"{k} {v:.0f}" for k, v in mm.items()) + " GFLOP/s")
    best_rate = max(mm.values()) * 1e9

    summary = {}
    for run in data["runs"]:
        mode, b, t = run["mode"], run["b"], run["t"]
        per_process = sorted((statistics.median(r["times"]), r) for r in run["results"]) if run["results"] else []
        if not per_process:
            continue
        med, best = per_process[0]
        summary[(mode, b, t, run["framework"], run["threads"])] = dict(
            s=med, tok=b * t / med, rss=max(r["peak_rss"] for r in run["results"]), cpu=best["cpu_per_wall"],
            meds=[m for m, _ in per_process],
            flops=model_flops(MODELS[mode], b, t, mode != "forward") / med,
        )
    print()
    print(f"versions: {'; '.join(data['versions'].values())}; source tree {data.get('source', '?')}")
    if data.get("tiers"):
        print(f"instruction-set tiers (--isa {data.get('isa', 'native')}): "
              + ", ".join(f"{fw} {t}" for fw, t in data["tiers"].items()))
    for build in data.get("builds", {}):
        print(f"ferrotune extension: {build}")
    if len(data.get("builds", {})) > 1:
        print("WARNING: the ferrotune extension changed during the run (rebuilt by someone); see the builds above")
    print(f"warm-up {data['warmup']}, timed steps {data['steps']} x {data['repeats']} process(es); "
          f"load average at end: {data.get('load_end', '?')}; wall {data.get('wall_s', 0):.0f} s")
    tuned = any(r["framework"] == "pytorch-tuned" for r in data["runs"])
    hdr = ("shape", "framework", "thr", "s/step", "per-process medians", "tokens/s", "ft/PT speed") + \
          (("ft/tuned",) if tuned else ()) + ("peak RSS", "ft/PT RSS", "MFU") + (("of peak",) if peak_gflops else ()) + ("cpu/wall",)
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    shapes = dict.fromkeys((r["mode"], r["b"], r["t"]) for r in data["runs"])
    variants = dict.fromkeys((r["framework"], r["threads"]) for r in data["runs"])
    variants = sorted(variants, key=lambda v: (v[0] != "ferrotune", v[0], v[1]))
    for mode, b, t in shapes:
        pt = summary.get((mode, b, t, "pytorch", data["torch_threads"]))
        ptt = summary.get((mode, b, t, "pytorch-tuned", data["torch_threads"]))
        for fw, th in variants:
            s = summary.get((mode, b, t, fw, th))
            if s is None:
                continue
            ratio = rss_ratio = tuned_ratio = ""
            if fw == "ferrotune" and pt:
                ratio = f"{s['tok'] / pt['tok']:.2f}x"
                rss_ratio = f"{s['rss'] / pt['rss']:.2f}x"
            if fw == "ferrotune" and ptt:
                tuned_ratio = f"{s['tok'] / ptt['tok']:.2f}x"
            name = {"train": "124M train", "bf16": "124M train bf16", "ckpt": "124M train ckpt",
                    "fused": "124M train fused", "fusedckpt": "124M train fused+ckpt",
                    "trainer": "124M Trainer", "tiny": "tiny train", "forward": "124M forward"}[mode]
            label = {"ferrotune": "ferrotune", "pytorch": "PyTorch", "pytorch-tuned": "PyTorch tuned"}[fw]
            row = (f"{name} ({b},{t})", label, str(th), f"{s['s']:.3f}", " ".join(f"{m:.2f}" for m in s["meds"]),
                   f"{s['tok']:.0f}", ratio) + ((tuned_ratio,) if tuned else ()) + \
                  (fmt_gb(s["rss"]), rss_ratio, f"{s['flops'] / best_rate:.1%}")
            row += (f"{s['flops'] / (peak_gflops * 1e9):.1%}",) if peak_gflops else ()
            row += (f"{s['cpu']:.2f}",)
            print("| " + " | ".join(row) + " |")
    print("\ns/step: the median timed step of the fastest process (the one least disturbed by other jobs); "
          "every process's median is listed next to it. ft/PT speed: ferrotune tokens/s / PyTorch tokens/s. "
          "peak RSS: the largest ru_maxrss of the processes.")
    print(f"MFU: model FLOPs (train 6*N*B*T + 12*L*T^2*C*B, forward 2*N*B*T + 4*L*T^2*C*B; N = params "
          f"minus the position table) / s per step / {best_rate / 1e9:.0f} GFLOP/s (the best f32 matmul rate "
          "measured; bf16 rows too, so they can pass 100%)"
          + (f"; 'of peak': the same FLOPs / the nominal {peak_gflops:.0f} GFLOP/s. " if peak_gflops else ". ")
          + "cpu/wall: CPU seconds per wall second of that process over its timed steps (2.0 = two cores busy).")


if __name__ == "__main__":
    main()
