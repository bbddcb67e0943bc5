#!/usr/bin/env python
"""Data-parallel training over MPI (issue #13): GPT-2 124M (random init), B x T tokens per
rank and step, 1 process x 2 threads against 2 ranks x 1 thread on this machine.

Each process runs the Trainer's step by hand (so the parts can be timed):

    loss = model.forward_backward(ids, num_items_in_batch=N, on_block_done=hook)
    reducer.finish(); model.clip_grad_norm(1.0); opt.step(); model.zero_grad()

and, with 2 ranks, three variants of it, alternated step by step so that other jobs on the
machine disturb them alike:

* ``none``: no reduction at all (the ranks drift apart; the compute alone);
* ``blocking``: the whole gradient buffer summed after the backward (one all-reduce);
* ``overlapped``: the Trainer's way, each bucket's non-blocking all-reduce started when its
  blocks' backward is done and driven from the per-block hook (``GradientReducer``).

The communication a step pays is its time minus the ``none`` step's. Since the step times
of a shared 2-core machine move by more than that, the time spent in MPI calls is also
timed directly: blocking, the one all-reduce; overlapped, the calls made from the per-block
hook (issuing and driving buckets) plus the wait after the backward. The share not hidden
behind compute is overlapped's MPI time over blocking's. On one machine the MPI "network" is
shared memory and the summing runs on the same cores as the compute, so this measures the
software overhead of the reduction, not a network (see the scaling model in RESULTS.md).

Usage (from the repository root, ferrotune installed with the mpi extra):

    python benchmarks/bench_mpi.py                     # 4x256 per rank, 3 timed steps + 1 warm-up
    python benchmarks/bench_mpi.py --batch 4 --seq 256 --steps 3 --json out.json
    python benchmarks/bench_mpi.py --async-progress    # MPICH's progress thread in each rank
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

GPT2_124M = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def worker(batch: int, seq: int, steps: int) -> dict:
    import numpy as np

    import ferrotune
    from ferrotune import distributed as dist

    rank, world = dist.rank(), dist.world_size()
    model = ferrotune.Model.from_config(GPT2_124M, seed=0)
    opt = ferrotune.AdamW(model, lr=1e-4)
    rng = np.random.default_rng(rank)
    ids = rng.integers(0, GPT2_124M["vocab_size"], (batch, seq)).astype(np.int64)
    reducer = dist.GradientReducer(model)
    n = dist.all_reduce_sum([batch * (seq - 1)])[0]
    variants = ["none", "blocking", "overlapped"] if world > 1 else ["none"]
    times: dict = {v: [] for v in variants}
    mpi: dict = {"blocking": [], "overlapped_hook": [], "overlapped_wait": []}
    in_hook = [0.0]

    def timed_hook(block: int) -> None:
        t = time.perf_counter()
        reducer.hook(block)
        in_hook[0] += time.perf_counter() - t

    for step in range(steps + 1):
        for v in variants:
            dist.barrier()
            t0 = time.perf_counter()
            in_hook[0] = 0.0
            if v == "overlapped":
                reducer.begin()
            model.forward_backward(ids, num_items_in_batch=n, on_block_done=timed_hook if v == "overlapped" else None)
            t1 = time.perf_counter()
            if v == "overlapped":
                reducer.finish()
            elif v == "blocking":
                dist.all_reduce_gradients(model)
            t2 = time.perf_counter()
            model.clip_grad_norm(1.0)
            opt.step()
            model.zero_grad()
            if step > 0:  # the first round warms up
                times[v].append(time.perf_counter() - t0)
                if v == "blocking":
                    mpi["blocking"].append(t2 - t1)
                elif v == "overlapped":
                    mpi["overlapped_hook"].append(in_hook[0])
                    mpi["overlapped_wait"].append(t2 - t1)
    return {"rank": rank, "world": world, "threads": os.environ.get("RAYON_NUM_THREADS"), "times": times,
            "mpi": mpi, "buckets": len(reducer.buckets)}


def launch(ranks: int, threads: int, args: argparse.Namespace) -> dict:
    out = os.path.join(args.tmp, f"bench-mpi-{ranks}x{threads}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", out, "--batch", str(args.batch), "--seq",
           str(args.seq), "--steps", str(args.steps)]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    env["RAYON_NUM_THREADS"] = str(threads)
    if args.async_progress:
        env["MPIR_CVAR_ASYNC_PROGRESS"] = "1"
    subprocess.run(cmd, env=env, check=True)
    with open(out) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", help="write the raw times here")
    ap.add_argument("--async-progress", action="store_true",
                    help="MPIR_CVAR_ASYNC_PROGRESS=1: a thread per rank that drives MPI (needs a core of its own)")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        from ferrotune import distributed as dist

        r = worker(args.batch, args.seq, args.steps)
        if dist.rank() == 0:
            with open(args.worker, "w") as f:
                json.dump(r, f)
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hostinfo import git_revision, load_average, machine

    print(f"# {machine()}\n# load average before: {load_average()}; {git_revision()}")
    one = launch(1, 2, args)
    two = launch(2, 1, args)
    tokens = args.batch * args.seq
    med = {v: statistics.median(t) for v, t in two["times"].items()}
    single = statistics.median(one["times"]["none"])
    rows = [("1 process x 2 threads", single, tokens / single)]
    for v in ("none", "blocking", "overlapped"):
        rows.append((f"2 ranks x 1 thread, {v}", med[v], 2 * tokens / med[v]))
    print(f"\nGPT-2 124M, {args.batch}x{args.seq} tokens per rank and step, median of {args.steps} steps "
          f"(load average after: {load_average()})\n")
    print("| run | step (s) | tokens/s |\n| --- | ---: | ---: |")
    for name, t, tps in rows:
        print(f"| {name} | {t:.3f} | {tps:.0f} |")
    cost_blocking = med["blocking"] - med["none"]
    cost_overlapped = med["overlapped"] - med["none"]
    mpi = {k: statistics.median(v) for k, v in two["mpi"].items()}
    print(f"\nstep time minus the no-reduction step: blocking {cost_blocking:+.3f} s, overlapped {cost_overlapped:+.3f} s")
    print(f"time in MPI calls per step (rank 0): blocking {mpi['blocking']:.3f} s; overlapped "
          f"{mpi['overlapped_hook']:.3f} s in the per-block hook + {mpi['overlapped_wait']:.3f} s after the backward "
          f"({two['buckets']} buckets)")
    if mpi["blocking"] > 0:
        hidden = mpi["overlapped_hook"] + mpi["overlapped_wait"]
        print(f"share of the communication not hidden behind compute: {hidden / mpi['blocking']:.0%} "
              f"(after the backward alone: {mpi['overlapped_wait'] / mpi['blocking']:.0%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"one": one, "two": two, "batch": args.batch, "seq": args.seq}, f, indent=1)


if __name__ == "__main__":
    main()
