"""Coverage-guided fuzzing (atheris, libFuzzer's engine for Python) of the chat-template
renderer, ferrotune.chat.render.

An input is a chat template (UTF-8, mutated by libFuzzer from the templates in
tests/fixtures: ChatML, Llama 3, tools, {% generation %}, SmolLM2), a NUL byte, then bytes
that drive a random batch of conversations (unicode, any role, missing keys, values of odd
types, content blocks, tool calls, reasoning fields) and render options (generation
prompt, continue_final_message, generation indices, tools, documents, extra variables).
Every failure must be a ferrotune error (TokenizerError, of which ChatTemplateError is
one, DataError or InputError); any other exception is reported as a crash and its input
written to fuzz/artifacts/chat_template/.

Run by scripts/fuzz.sh; by hand (libFuzzer flags):
    .venv/bin/python fuzz/chat_template.py fuzz/corpus/chat_template -max_total_time=60
"""

import sys

import atheris

with atheris.instrument_imports(include=["jinja2", "markupsafe", "ferrotune.chat"]):
    from ferrotune import chat

from ferrotune import DataError, InputError, TokenizerError

ALLOWED = (TokenizerError, DataError, InputError)

ROLES = ["system", "user", "assistant", "tool", "ipython", "developer", "", "SYSTEM"]
FIELDS = ["content", "reasoning_content", "thinking", "reasoning", "name", "tool_calls", "tool_call_id"]


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0):
    kind = fdp.ConsumeIntInRange(0, 10 if depth < 2 else 5)
    if kind == 0:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 24))
    if kind == 1:
        return None
    if kind == 2:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 9))
    if kind == 3:
        return fdp.ConsumeFloat()
    if kind == 4:
        return fdp.ConsumeBool()
    if kind == 5:
        return fdp.PickValueInList(ROLES + FIELDS)
    if kind == 6:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 7:
        return {fdp.PickValueInList(FIELDS + ["type", "text", "function", "arguments"]): value(fdp, depth + 1)
                for _ in range(fdp.ConsumeIntInRange(0, 3))}
    if kind == 8:
        return tuple(value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 2)))
    if kind == 9:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
    return [{"type": "text", "text": fdp.ConsumeUnicode(12)}, {"type": "image"}]


def message(fdp: atheris.FuzzedDataProvider):
    if fdp.ConsumeIntInRange(0, 15) == 0:
        return value(fdp)  # not a dict at all
    m = {}
    r = fdp.ConsumeIntInRange(0, 5)
    if r < 4:
        m["role"] = fdp.PickValueInList(ROLES)
    elif r == 4:
        m["role"] = value(fdp)
    c = fdp.ConsumeIntInRange(0, 5)
    if c < 3:
        m["content"] = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40))
    elif c == 3:
        m["content"] = value(fdp)
    elif c == 4:
        m["content"] = [{"type": "text", "text": fdp.ConsumeUnicode(16)}]
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        field = fdp.PickValueInList(FIELDS)
        if field == "tool_calls" and fdp.ConsumeBool():
            m[field] = [{"type": "function", "function": {"name": fdp.ConsumeUnicode(8),
                                                          "arguments": {"x": value(fdp)}}}]
        else:
            m[field] = value(fdp)
    return m


def test_one_input(data: bytes) -> None:
    template_bytes, _, rest = data.partition(b"\0")
    template = template_bytes.decode("utf-8", errors="replace")
    fdp = atheris.FuzzedDataProvider(rest)
    conversations = [[message(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
                     for _ in range(fdp.ConsumeIntInRange(1, 2))]
    cont = fdp.PickValueInList([False, False, True, "content", "reasoning_content", "thinking", "name"])
    tools = fdp.PickValueInList([None, None, "tools", "odd"])
    if tools == "tools":
        tools = [{"type": "function", "function": {"name": fdp.ConsumeUnicode(8), "parameters": value(fdp)}}]
    elif tools == "odd":
        tools = value(fdp)
    documents = fdp.PickValueInList([None, None, "docs", "odd"])
    if documents == "docs":
        documents = [{"title": fdp.ConsumeUnicode(8), "text": fdp.ConsumeUnicode(16)}]
    elif documents == "odd":
        documents = value(fdp)
    extra = {k: value(fdp) for k in fdp.PickValueInList([[], ["bos_token", "eos_token"], ["date_string", "x"]])}
    try:
        chat.render(
            conversations,
            template,
            tools=tools,
            documents=documents,
            add_generation_prompt=fdp.ConsumeBool(),
            continue_final_message=cont,
            return_generation_indices=fdp.ConsumeBool(),
            **extra,
        )
    except ALLOWED:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
