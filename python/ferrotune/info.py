"""What to paste into a bug report: `python -m ferrotune.info` or `ferrotune.show_config()`.

Prints ferrotune's version and build (commit, cargo profile, target, compiler, the Rust crates
doing the numerics), the CPU and the kernel tier picked on it, the worker threads, Python and
the versions of the Python packages ferrotune uses.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from ._core import build_info

# the dependencies, then the optional packages the extras bring
PACKAGES = ("numpy", "jinja2", "tqdm", "matplotlib", "tensorboard", "ipywidgets", "mpi4py")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "CPU part"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config() -> dict[str, str]:
    """The facts `show_config` prints, as a flat dict of strings."""
    core = build_info()
    facts = {
        "ferrotune": core["version"],
        "commit": core["commit"],
        "build": f"{core['profile']} {core['target']}",
        "rustc": core["rustc"],
        "crates": core["crates"],
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical cores)",
        "cpu tier": core["cpu_isa"] + (f" (FERROTUNE_CPU={os.environ['FERROTUNE_CPU']})" if "FERROTUNE_CPU" in os.environ else ""),
        "matmul": core["matmul"],
        "threads": core["threads"] + (f" (RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']})" if "RAYON_NUM_THREADS" in os.environ else ""),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
    }
    for name in PACKAGES:
        try:
            facts[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            facts[name] = "not installed"
    return facts


def show_config() -> None:
    """Prints ferrotune's version, build, CPU tier, threads and package versions."""
    facts = config()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    show_config()
