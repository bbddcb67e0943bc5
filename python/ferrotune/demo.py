"""The main job: teach a small GPT-2 to translate Chinese words into English, on CPU.

Run it with ``python -m ferrotune.demo`` (or the ``ferrotune-demo`` command). Nothing is
downloaded: the data is the CC-CEDICT sample shipped in :mod:`ferrotune.datasets`, the
tokenizer is a byte-level BPE trained on it, and the model is a GPT-2 built from a
config (random weights, ``seed=0``). It then fine-tunes the model with
:class:`ferrotune.Trainer` exactly as one would with ``transformers``:

- each entry becomes a prompt/completion pair, ``"Chinese: 你好\\nEnglish:"`` →
  ``" hello; hi"`` + ``<|endoftext|>``, with the loss on the English part only;
- 800 entries are trained on and 150 held out;
- it prints the loss and perplexity on both before and after training, and greedy
  translations of a few training and held-out words.

Trained from scratch on 800 words, the model learns to translate the words it was
trained on (all of them, by the end of the default run) but has no Chinese to
generalise from: the held-out loss falls while it learns the format and common English,
then rises as it memorises. A pretrained model (``Model.from_pretrained``) is what
generalises.

The default run takes a few minutes on two CPU cores; ``--quick`` takes seconds (for
tests); ``--steps``/``--epochs`` change the length. Checkpoints, the final model and
tokenizer, TensorBoard event files and a JSONL log go to ``--output-dir`` (a new
temporary directory by default).
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

__all__ = ["main", "run", "DemoConfig", "clean_senses", "make_examples", "greedy_translate"]

EOS = "<|endoftext|>"

# Senses that do not help a word-for-word translation demo.
_NOISE = re.compile(
    r"CL:|variant of|see also|see |used in|abbr\.|\(Tw\)|\(old\)|surname|radical|\(slang\)|"
    r"\(dialect\)|\(literary\)|\(archaic\)|same as|\[|\]|[\u3400-\u9fff]"
)


@dataclass
class DemoConfig:
    """Every knob of the demo; the defaults are the main job."""

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


def run(cfg: DemoConfig, output_dir: str, *, progress: bool = True, resume: bool = False) -> Dict[str, Any]:
    """Run the whole job; returns a summary (also written to ``output_dir/demo_summary.json``).

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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ferrotune-demo",
        description="Fine-tune a small GPT-2 to translate Chinese words into English, on CPU, "
        "with the packaged CC-CEDICT sample (no download).",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=None, help="training epochs (default 30; --quick: 8)")
    length.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides epochs)")
    p.add_argument("--output-dir", default=None, help="where to write checkpoints, logs and the final model (default: a new temporary directory)")
    p.add_argument("--quick", action="store_true", help="a tiny model and data subset: seconds instead of minutes (for tests)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per optimizer step (default 16)")
    p.add_argument("--learning-rate", type=float, default=None, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the initial weights and the data order")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from the last checkpoint in --output-dir (same flags as that run)",
    )
    return p.parse_args(argv)


def config_from_args(ns: argparse.Namespace) -> DemoConfig:
    cfg = DemoConfig(**QUICK) if ns.quick else DemoConfig()
    if ns.epochs is not None:
        cfg.num_train_epochs = ns.epochs
    if ns.steps is not None:
        cfg.max_steps = ns.steps
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
        if not ns.resume:
            raise
        print(f"ferrotune-demo: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
