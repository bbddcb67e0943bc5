"""Loading cost of a safetensors model: wall time and peak RSS of `Model.from_pretrained` in
fresh processes (GPT-2 124M, float32, random weights written by ferrotune unless --model).

    python benchmarks/bench_load.py [--model DIR] [--repeats 3] [--build NAME=PYTHONPATH ...]

--build compares builds side by side (e.g. an older checkout's python/ directory with its
extension): the processes alternate between them. Without it, the installed ferrotune.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import resource, sys, time
import ferrotune as ft
t = time.perf_counter()
m = ft.Model.from_pretrained(sys.argv[1])
s = time.perf_counter() - t
print(s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, m.num_parameters())
"""

GPT2_124M = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a saved model directory (default: GPT-2 124M, random, in a temporary directory)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--build", action="append", default=[], help="NAME=PYTHONPATH of a build to compare")
    a = p.parse_args()
    builds = [tuple(b.split("=", 1)) for b in a.build] or [("installed", os.environ.get("PYTHONPATH", ""))]

    with tempfile.TemporaryDirectory() as tmp:
        model = a.model
        if model is None:
            import ferrotune as ft

            model = os.path.join(tmp, "gpt2-124m")
            ft.Model.from_config(GPT2_124M, seed=0).save_pretrained(model)
        size = os.path.getsize(os.path.join(model, "model.safetensors")) / 2**20
        runs = {name: [] for name, _ in builds}
        for _ in range(a.repeats):
            for name, path in builds:
                env = {**os.environ, "PYTHONPATH": path}
                out = subprocess.run([sys.executable, "-c", CHILD, model], env=env, capture_output=True, text=True, check=True)
                seconds, rss, n = out.stdout.split()
                runs[name].append((float(seconds), float(rss)))
        print(f"model: {model} ({int(n):,} parameters, model.safetensors {size:.0f} MiB), {a.repeats} fresh processes each\n")
        print("| build | load s (median) | runs | peak RSS MiB |")
        print("|---|---|---|---|")
        for name, r in runs.items():
            secs = [s for s, _ in r]
            print(f"| {name} | {statistics.median(secs):.3f} | {', '.join(f'{s:.2f}' for s in secs)} | {max(m for _, m in r):.0f} |")


if __name__ == "__main__":
    main()
