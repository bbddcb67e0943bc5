"""GGUF export from the command line: a Hugging Face model directory (or a Trainer
checkpoint) and its tokenizer to one file for llama.cpp, Ollama or LM Studio.

    python -m ferrotune.gguf convert IN OUT --quantization q8_0

The work is :meth:`ferrotune.Model.save_gguf`'s; this module only loads, times and reports.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

QUANTIZATIONS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q6_k", "q4_k_m")


def convert(src: str, dst: str, quantization: str = "f32", tokenizer: Optional[str] = None, progress: bool = True) -> int:
    """Loads ``src`` (model) and ``tokenizer`` (default: ``src``), writes ``dst``; returns its size
    in bytes. Prints each stage with its time, and a bar over the parameters while writing."""
    from .modeling import Model
    from .tokenizer import Tokenizer

    t0 = time.perf_counter()
    print(f"[1/3] loading {src}", flush=True)
    model = Model.from_pretrained(src)
    print(f"[2/3] loading the tokenizer from {tokenizer or src}", flush=True)
    tok = Tokenizer.from_pretrained(tokenizer or src)
    t1 = time.perf_counter()
    print(f"      loaded in {t1 - t0:.1f} s; [3/3] writing {dst} ({quantization})", flush=True)
    model.save_gguf(dst, quantization=quantization, tokenizer=tok, progress=progress)
    size = os.path.getsize(dst)
    print(f"      wrote {size / 2**20:.1f} MiB in {time.perf_counter() - t1:.1f} s", flush=True)
    return size


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferrotune.gguf", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="write a model directory or checkpoint as a GGUF file")
    c.add_argument("input", help="a Hugging Face model directory, a checkpoint directory, or a .gguf file")
    c.add_argument("output", help="the .gguf file to write")
    c.add_argument("--quantization", "-q", default="f32", choices=QUANTIZATIONS, type=str.lower)
    c.add_argument("--tokenizer", default=None, help="where the tokenizer is, when not beside the model")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    ns = p.parse_args(argv)
    convert(ns.input, ns.output, ns.quantization, ns.tokenizer, ns.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
