"""Data and bounds of the evaluation suite (conftest.py holds its fixture).

Run it with ferrotune's pytest plugin (installed with ferrotune):

    pytest examples/evaluation --ft-model PATH [--ft-report report.json] [--ft-baseline old.json]

PATH is a saved model directory, a Trainer checkpoint, a GGUF file or a PEFT adapter directory.
The examples are CC-CEDICT entries that the demo (python -m ferrotune.demo) never trains on.
"""

from typing import Any, Dict, List

from ferrotune.demo import chat_messages, prompt_for, senses, untrained_examples

#: The bounds each test asserts: a little below what SmolLM2-135M-Instruct scores before
#: fine-tuning (README.md), so that a fine-tune doing worse than the model it started from
#: fails, while float rounding on another CPU does not. Edit them for your model;
#: --ft-baseline catches any drop from one run to the next.
BOUNDS: Dict[str, float] = {
    "translation_chrf_at_least": 10.5,  # base model: 11.05
    "verification_f1_at_least": 0.42,  # base model: 0.445 (macro F1 of yes/no)
    "perplexity_at_most": 60.0,  # base model: 57.5 on the whole chats
}

#: CC-CEDICT examples kept out of the demo's training: translation uses the first 64,
#: verification the next 64.
EXAMPLES = untrained_examples(128)


def is_chat(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def ask(tokenizer: Any, zh: str) -> Dict[str, Any]:
    """The translation request for one word: a chat when the tokenizer has a template."""
    return {"messages": chat_messages(zh)} if is_chat(tokenizer) else {"prompt": prompt_for(zh)}
