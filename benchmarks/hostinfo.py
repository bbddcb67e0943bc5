"""What every benchmark prints about the host it ran on: CPU, cores, memory, load, source tree."""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def git_revision() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True, text=True)
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


# --isa: the instruction-set tier both sides of a benchmark run in
ISAS = ("native", "avx2", "generic")


def isa_env(isa: str) -> dict:
    """Environment for a benchmark subprocess that restricts it to `isa`, whichever framework it
    runs: ferrotune's kernels (FERROTUNE_CPU), PyTorch's ATen kernels (ATEN_CPU_CAPABILITY), MKL
    (MKL_ENABLE_INSTRUCTIONS), oneDNN (ONEDNN_MAX_CPU_ISA) and numpy's OpenBLAS, whose matmul rate
    is the benchmarks' MFU yardstick (OPENBLAS_CORETYPE). "native": nothing restricted, each
    takes the best code this CPU runs. Check what each side ran: ``ferrotune.cpu_isa()`` and
    ``torch.backends.cpu.get_cpu_capability()`` (`tiers`)."""
    if isa == "native":
        return {}
    if isa == "avx2":
        return {"FERROTUNE_CPU": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}
    if isa == "generic":
        return {"FERROTUNE_CPU": "generic", "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Nehalem"}
    raise ValueError(f"unknown isa {isa!r} (one of {', '.join(ISAS)})")


def add_isa_argument(parser) -> None:
    parser.add_argument("--isa", choices=ISAS, default="native",
                        help="instruction-set tier for both sides: avx2 forces ferrotune's avx2 tier "
                             "(FERROTUNE_CPU) and PyTorch's (ATen, MKL, oneDNN) on a CPU with AVX-512; "
                             "default native (each side's best)")


def tier(framework: str) -> str:
    """The tier the framework runs in this process: ferrotune's kernel tier (``cpu_isa()``) or
    PyTorch's CPU capability."""
    if framework == "ferrotune":
        import ferrotune

        return ferrotune.cpu_isa()
    import torch

    return torch.backends.cpu.get_cpu_capability()
