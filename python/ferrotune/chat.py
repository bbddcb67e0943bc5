"""Chat templates, rendered as ``transformers`` renders them, and the assistant-token mask.

A chat model's tokenizer carries a Jinja template that turns a list of messages
(``[{"role": "user", "content": "Hi"}, ...]``) into the text the model was trained on.
This module renders those templates with the same Jinja environment as
``transformers.utils.chat_template_utils``: a sandboxed (immutable) environment with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension (``{% break %}``,
``{% continue %}``), the ``{% generation %}`` tag, a ``tojson`` filter that does not escape
HTML or non-ASCII characters (``json.dumps(..., ensure_ascii=False)`` with the ``indent``,
``separators`` and ``sort_keys`` arguments), and the globals ``raise_exception``,
``strftime_now``, ``dict`` and ``namespace``. The special tokens (``bos_token``,
``eos_token``, ...) are template variables, and extra keyword arguments override them.
Compiled templates are cached.

Most users call :meth:`ferrotune.Tokenizer.apply_chat_template`; the data pipeline calls
:func:`encode_chat_for_training`.

Which tokens are the assistant's
--------------------------------
To train on chats with the loss on assistant tokens only, each token must be known to
belong to an assistant turn or not. Two mechanisms:

1. Templates with ``{% generation %}...{% endgeneration %}`` blocks (what transformers'
   ``return_assistant_tokens_mask=True`` uses): the rendered text of every block is an
   assistant span; a token is an assistant token when its character offsets overlap a
   span. ``apply_chat_template(return_assistant_tokens_mask=True)`` supports only this,
   like transformers: on a template without the tag it warns and returns a mask of zeros.
2. Any other template (most templates on the Hub, e.g. SmolLM2's ChatML template): the
   conversation is rendered prefix by prefix, as TRL does. For an assistant message at
   position ``k``, ``messages[:k]`` rendered with ``add_generation_prompt=True`` ends where
   the assistant's reply starts, and ``messages[:k+1]`` rendered without it ends where the
   turn ends; the text between them is the reply plus the template's end-of-turn text
   (ChatML: ``"Hello!<|im_end|>\\n"``). Trailing whitespace is cut from that span (it is
   the separator before the next turn, e.g. the ``"\\n"`` after ``<|im_end|>``), so the
   span is the reply and its end-of-turn token, which the model must learn to emit to
   stop. Both renderings must be prefixes of the full conversation's rendering; a
   template that rewrites earlier turns (some reasoning templates drop old "thinking")
   fails this check with a :class:`ferrotune.DataError` that suggests adding
   ``{% generation %}`` tags.

:func:`encode_chat_for_training` uses (1) when the template has the tag, else (2).

Character spans become token masks through the tokens' character offsets, which the
``tokenizers`` library computes (``tokenizer(text, return_offsets_mapping=True)``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._core import DataError, FerrotuneError, InputError, TokenizerError

try:
    import jinja2
    import jinja2.exceptions
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:  # pragma: no cover - jinja2 is a dependency
    jinja2 = None  # type: ignore[assignment]

__all__ = [
    "ChatTemplateError",
    "CHAT_TEMPLATE_FILE",
    "CHAT_TEMPLATE_DIR",
    "NO_TEMPLATE_MESSAGE",
    "compile_template",
    "has_generation_tags",
    "render",
    "assistant_spans_by_prefix",
    "assistant_token_mask",
    "apply_chat_template",
    "encode_chat_for_training",
]

#: File that holds the (default) chat template in a saved tokenizer directory (transformers >= 4.50).
CHAT_TEMPLATE_FILE = "chat_template.jinja"
#: Folder of the other named templates (``<name>.jinja``).
CHAT_TEMPLATE_DIR = "additional_chat_templates"

NO_TEMPLATE_MESSAGE = (
    "Cannot use chat template functions because tokenizer.chat_template is not set and no template "
    "argument was passed! Set tokenizer.chat_template to a Jinja template string (or load a tokenizer "
    "directory that has one in tokenizer_config.json or chat_template.jinja)."
)

_GENERATION_TAG = re.compile(r"\{\%-?\s*generation\s*-?\%\}")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

Span = Tuple[int, int]
Template = Union[str, Dict[str, str]]


if jinja2 is not None:

    class ChatTemplateError(TokenizerError, jinja2.exceptions.TemplateError):
        """A chat template failed to compile or render (a syntax error, or the template's
        ``raise_exception(...)``). Also a ``jinja2.exceptions.TemplateError``, which is what
        transformers raises, so code that catches either keeps working."""

else:  # pragma: no cover

    class ChatTemplateError(TokenizerError):  # type: ignore[no-redef]
        """A chat template failed to compile or render."""


def _require_jinja() -> None:
    if jinja2 is None:
        raise ImportError("chat templates need jinja2 >= 3.1.6: pip install 'jinja2>=3.1.6'")
    version = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
    if version < (3, 1, 6):
        # Older versions have known sandbox escapes, and chat templates from the Hub are untrusted code.
        raise ImportError(
            f"chat templates need jinja2 >= 3.1.6 (older versions have sandbox escapes); found {jinja2.__version__}"
        )


# --------------------------------------------------------------------------------------
# the Jinja environment (mirrors transformers' _cached_compile_jinja_template)
# --------------------------------------------------------------------------------------


def _make_environment() -> Any:
    class AssistantTracker(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: records the character span of the
        block's output while a tracker is active; renders the body unchanged."""

        tags = {"generation"}

        def __init__(self, environment: Any) -> None:
            super().__init__(environment)
            environment.extend(activate_tracker=self.activate_tracker)
            self._tracking: ContextVar[Any] = ContextVar("assistant_tracker", default=None)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

        @jinja2.pass_eval_context
        def _generation_support(self, context: Any, caller: Any) -> str:
            rv = caller()
            tracking = self._tracking.get()
            if tracking is not None:
                rendered_blocks, generation_indices = tracking
                start = len("".join(rendered_blocks))
                generation_indices.append((start, start + len(rv)))
            return rv  # type: ignore[no-any-return]

        @contextmanager
        def activate_tracker(self, rendered_blocks: List[str], generation_indices: List[Span]) -> Iterator[None]:
            if self._tracking.get() is not None:
                raise ValueError("AssistantTracker should not be reused before closed")
            token = self._tracking.set((rendered_blocks, generation_indices))
            try:
                yield
            finally:
                self._tracking.reset(token)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        # Jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class TemplateDict:
        # a limited dict() so templates cannot reach dict internals
        def __call__(self, *args: Any, **kwargs: Any) -> dict:  # type: ignore[type-arg]
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:  # type: ignore[type-arg]
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # namespaces reject underscore attributes (no way to CPython internals)
        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's own signature trick
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    "Chat templates cannot store underscore-prefixed attributes on a namespace, but got "
                    f"{name!r}. Please rename the attribute."
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


@lru_cache(maxsize=128)
def compile_template(chat_template: str) -> Any:
    """The compiled ``jinja2.Template`` of a chat template (cached per template string;
    each template gets its own environment, as in transformers).
    A syntax error raises :class:`ChatTemplateError`."""
    _require_jinja()
    if not isinstance(chat_template, str):
        raise InputError(f"a chat template must be a str, got {type(chat_template).__name__}")
    try:
        return _make_environment().from_string(chat_template)
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"the chat template does not compile: {_jinja_message(e)}") from e
    except SyntaxError as e:  # jinja2 compiles `{% break %}` outside a loop into invalid Python
        raise ChatTemplateError(f"the chat template does not compile: {e.msg}") from e
    except RecursionError as e:  # jinja2's parser recurses once per nesting level
        raise ChatTemplateError("the chat template does not compile: it is nested too deeply") from e


def has_generation_tags(chat_template: str) -> bool:
    """Whether a template marks assistant output with ``{% generation %}``."""
    return _GENERATION_TAG.search(chat_template) is not None


def _jinja_message(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e)
    lineno = getattr(e, "lineno", None)
    if isinstance(e, jinja2.exceptions.TemplateSyntaxError) and lineno:
        msg = f"{msg} (line {lineno})"
    return msg


# --------------------------------------------------------------------------------------
# input normalisation (mirrors transformers' helpers)
# --------------------------------------------------------------------------------------


def _message_objects_to_dicts(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _message_objects_to_dicts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_message_objects_to_dicts(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_message_objects_to_dicts(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _message_objects_to_dicts(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models (OpenAI SDK messages)
        return _message_objects_to_dicts(value.model_dump())
    return value


def normalize_messages(conversation: Any, where: str = "") -> List[Dict[str, Any]]:
    """A conversation as a list of plain dicts, keys whose value is None dropped (as transformers:
    many templates render ``content=None`` as "None" but handle a missing key)."""
    messages = _message_objects_to_dicts(getattr(conversation, "messages", conversation))
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise InputError(f"{where}a conversation must be a list of message dicts, got {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(
                f"{where}message {i} must be a dict with 'role' and 'content' (or a dataclass / pydantic model), "
                f"got {message!r}"
            )
        out.append({k: v for k, v in message.items() if v is not None})
    return out


def _plain_template_data(value: Any) -> Any:
    """What a template may see: plain JSON-like data only (rich objects become "<TypeName>")."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain_template_data(k): _plain_template_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_template_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_template_data(v) for v in value)
    if isinstance(value, np.generic):
        return _plain_template_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_template_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain_template_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning_fields(chat: List[Any]) -> List[Any]:
    out = []
    for message in chat:
        if isinstance(message, dict):
            reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _tool_schemas(tools: Optional[Sequence[Any]]) -> Optional[List[Any]]:
    if tools is None:
        return None
    if isinstance(tools, (str, Mapping)) or not isinstance(tools, (list, tuple)):
        raise InputError(f"tools must be a list of JSON schemas (dicts), got {type(tools).__name__}")
    schemas = []
    for tool in tools:
        if isinstance(tool, Mapping):
            schemas.append(dict(tool))
        elif callable(tool):
            raise InputError(
                f"tool {getattr(tool, '__name__', tool)!r} is a function: pass tools as JSON schemas "
                "(dicts); ferrotune does not convert Python functions to schemas"
            )
        else:
            raise InputError(f"tools must be JSON schemas (dicts), got {type(tool).__name__}")
    return schemas


# --------------------------------------------------------------------------------------
# rendering (mirrors transformers' render_jinja_template)
# --------------------------------------------------------------------------------------


def render(
    conversations: Sequence[Any],
    chat_template: str,
    tools: Optional[Sequence[Any]] = None,
    documents: Optional[Sequence[Any]] = None,
    add_generation_prompt: bool = False,
    continue_final_message: Union[bool, str] = False,
    return_generation_indices: bool = False,
    **template_kwargs: Any,
) -> Tuple[List[str], List[List[Span]]]:
    """Renders each conversation; returns (texts, generation spans per text).

    The spans (character ranges of ``{% generation %}`` blocks) are only collected with
    ``return_generation_indices=True``; otherwise each list is empty. Template errors
    (including ``raise_exception``) raise :class:`ChatTemplateError`.
    """
    compiled = compile_template(chat_template)
    tool_schemas = _plain_template_data(_tool_schemas(tools))
    if documents is not None:
        if isinstance(documents, (str, Mapping)) or not isinstance(documents, (list, tuple)):
            raise InputError("documents must be a list of dicts with 'title' and 'text' keys")
        for doc in documents:
            if not isinstance(doc, Mapping):
                raise InputError("documents must be a list of dicts with 'title' and 'text' keys")
    docs = _plain_template_data(documents)
    kwargs = _plain_template_data(template_kwargs)

    rendered: List[str] = []
    all_indices: List[List[Span]] = []
    for index, conv in enumerate(conversations):
        chat = _plain_template_data(getattr(conv, "messages", conv))
        for message in chat:
            if not isinstance(message, dict):
                raise InputError(f"chat messages must be dicts, got {message!r}")
        chat = _alias_reasoning_fields(chat)
        final_message = ""
        if continue_final_message:
            if not chat:
                raise InputError("continue_final_message is set but the conversation is empty")
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final_message = chat[-1].get(field)
            if final_message is None:
                raise InputError(f'continue_final_message is set but the final message has no "{field}" to continue')
            fields = [field]
            if field in _REASONING_FIELDS:
                fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final_message]
            if not any(f in chat_template for f in fields):
                raise InputError(
                    f'continue_final_message is set to "{field}" but this is not an accepted field in the chat_template'
                )
            if isinstance(final_message, (list, tuple)):
                for block in reversed(final_message):
                    if isinstance(block, Mapping) and isinstance(block.get("text"), str):
                        final_message = block["text"]
                        block["text"] = block["text"] + _CONTINUE_TAG
                        break
                else:
                    raise InputError(
                        "continue_final_message is set but there is no text to continue in the final message"
                    )
            elif not isinstance(final_message, str):
                raise InputError(
                    f'continue_final_message is set but the final message\'s "{field}" is a '
                    f"{type(final_message).__name__}, not text or a list of content blocks"
                )
            else:
                for f in fields:
                    chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
        variables = dict(
            messages=chat,
            tools=tool_schemas,
            documents=docs,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
        try:
            if return_generation_indices:
                blocks: List[str] = []
                indices: List[Span] = []
                with compiled.environment.activate_tracker(blocks, indices):
                    for block in compiled.generate(**variables):
                        blocks.append(block)
                    text = "".join(blocks)
            else:
                text = compiled.render(**variables)
                indices = []
        except jinja2.exceptions.TemplateError as e:
            where = f"conversation {index}: " if len(conversations) > 1 else ""
            raise ChatTemplateError(f"{where}{_jinja_message(e)}") from e
        except FerrotuneError:
            raise
        except Exception as e:  # the template's own code failed: 'a' + 1, 1 / 0, a list where a str goes
            where = f"conversation {index}: " if len(conversations) > 1 else ""
            raise ChatTemplateError(f"{where}the chat template failed: {type(e).__name__}: {e}") from e
        all_indices.append(indices)
        if continue_final_message:
            if final_message.strip() not in text or _CONTINUE_TAG.strip() not in text:
                raise InputError(
                    "continue_final_message is set but the final message does not appear in the chat after "
                    "applying the chat template (the template deletes parts of it)."
                    f"\nFinal message to continue: {final_message.strip()}\nRendered chat:\n{text}"
                )
            loc = text.rindex(_CONTINUE_TAG.strip())
            if text[loc : loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
                text = text[:loc]
            else:  # the template trimmed the message's trailing spacing
                text = text[:loc].rstrip()
        rendered.append(text)
    return rendered, all_indices


def assistant_spans_by_prefix(
    messages: Sequence[Mapping[str, Any]],
    chat_template: str,
    full_text: Optional[str] = None,
    **render_kwargs: Any,
) -> Tuple[str, List[Span]]:
    """The full rendering of ``messages`` and the character span of every assistant turn,
    found by rendering prefixes (see the module docs): the span of the assistant message at
    ``k`` runs from the end of ``messages[:k]`` rendered with ``add_generation_prompt=True``
    to the end of ``messages[:k+1]``, trailing whitespace excluded.

    Raises :class:`ferrotune.DataError` when the template is not prefix-consistent.
    """
    msgs = list(messages)
    if full_text is None:
        full_text = render([msgs], chat_template, add_generation_prompt=False, **render_kwargs)[0][0]
    spans: List[Span] = []
    for k, message in enumerate(msgs):
        if message.get("role") != "assistant":
            continue
        before = render([msgs[:k]], chat_template, add_generation_prompt=True, **render_kwargs)[0][0]
        upto = render([msgs[: k + 1]], chat_template, add_generation_prompt=False, **render_kwargs)[0][0]
        if not (upto.startswith(before) and full_text.startswith(upto)):
            raise DataError(
                f"cannot find the tokens of assistant message {k}: the chat template does not render the "
                "conversation prefix by prefix (the rendering of the first messages, with add_generation_prompt="
                "True, is not a prefix of the whole conversation's). Mark the assistant output in the template "
                "with {% generation %}...{% endgeneration %} instead."
            )
        start, end = len(before), len(upto.rstrip())
        if end > start:
            spans.append((start, end))
    return full_text, spans


# --------------------------------------------------------------------------------------
# character spans -> token masks
# --------------------------------------------------------------------------------------


def _mask_from_offsets(offsets: Sequence[Span], spans: Sequence[Span]) -> List[int]:
    # transformers' rule: a token is masked when it overlaps a span (spans and offsets in order)
    mask = [0] * len(offsets)
    k = 0
    for i, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if end > spans[k][0]:
            mask[i] = 1
    return mask


def assistant_token_mask(tokenizer: Any, text: str, spans: Sequence[Span]) -> Tuple[List[int], List[int]]:
    """The ids of ``text`` (no special tokens added) and 1 for every token that overlaps a
    character span, by the tokens' character offsets as the ``tokenizers`` library computes them."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    ids = [int(i) for i in enc["input_ids"]]
    return ids, _mask_from_offsets(enc["offset_mapping"], spans) if spans else [0] * len(ids)


# --------------------------------------------------------------------------------------
# the tokenizer-level entry points
# --------------------------------------------------------------------------------------


def _template_variables(tokenizer: Any, template_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    # transformers: {**tokenizer.special_tokens_map, **kwargs}; special_tokens_map holds only the
    # named tokens (bos/eos/unk/pad/...), not the additional special tokens
    named = {}
    for k, v in dict(getattr(tokenizer, "special_tokens_map", {}) or {}).items():
        if k.endswith("_token") and v is not None:
            named[k] = str(v)
    return {**named, **template_kwargs}


def _is_batched(conversation: Any) -> bool:
    return isinstance(conversation, (list, tuple)) and len(conversation) > 0 and (
        isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")
    )


def apply_chat_template(
    tokenizer: Any,
    conversation: Any,
    tools: Optional[Sequence[Any]] = None,
    documents: Optional[Sequence[Any]] = None,
    chat_template: Optional[str] = None,
    add_generation_prompt: bool = False,
    continue_final_message: Union[bool, str] = False,
    tokenize: bool = True,
    sanitize_control_tokens: bool = False,
    padding: Union[bool, str] = False,
    truncation: Union[bool, str] = False,
    max_length: Optional[int] = None,
    return_tensors: Optional[str] = None,
    return_dict: bool = True,
    return_assistant_tokens_mask: bool = False,
    tokenizer_kwargs: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> Any:
    """:meth:`ferrotune.Tokenizer.apply_chat_template` (see there)."""
    if not tokenize:
        return_dict = False  # transformers: dicts come only from tokenizing
    if return_assistant_tokens_mask and not (return_dict and tokenize):
        raise InputError("return_assistant_tokens_mask=True requires return_dict=True and tokenize=True")
    if sanitize_control_tokens:
        raise InputError(
            "sanitize_control_tokens=True is not supported yet (it needs encoding without added-token matching)"
        )
    template = tokenizer.get_chat_template(chat_template, tools)

    if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
        raise InputError("cannot apply a chat template to an empty conversation: provide at least one message")
    batched = _is_batched(conversation)
    raw = list(conversation) if batched else [conversation]
    conversations = [
        normalize_messages(c, f"conversation {i}: " if batched else "") for i, c in enumerate(raw)
    ]
    if continue_final_message:
        if add_generation_prompt:
            raise InputError(
                "continue_final_message and add_generation_prompt are not compatible: use continue_final_message "
                "to let the model continue the final message, add_generation_prompt to start a new assistant message"
            )
        if return_assistant_tokens_mask:
            raise InputError("continue_final_message is not compatible with return_assistant_tokens_mask")
    if return_assistant_tokens_mask and not has_generation_tags(template):
        warnings.warn(
            "return_assistant_tokens_mask=True but the chat template has no {% generation %} block: "
            "the mask is all zeros (the training data pipeline finds assistant tokens without it)",
            stacklevel=3,
        )

    texts, indices = render(
        conversations,
        template,
        tools=tools,
        documents=documents,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        return_generation_indices=return_assistant_tokens_mask,
        **_template_variables(tokenizer, kwargs),
    )
    if not tokenize:
        return texts if batched else texts[0]

    call_kwargs = dict(tokenizer_kwargs or {})
    out = tokenizer(
        texts if batched else texts[0],
        padding=padding,
        truncation=truncation,
        max_length=max_length,
        add_special_tokens=False,
        return_tensors=return_tensors,
        **call_kwargs,
    )
    if not return_dict:
        return out["input_ids"]
    if return_assistant_tokens_mask:
        masks = []
        for text, spans in zip(texts, indices):
            masks.append(assistant_token_mask(tokenizer, text, spans)[1])
        ids = out["input_ids"]
        rows = [ids] if (not batched and return_tensors is None) else list(ids)
        att = out.get("attention_mask")
        att_rows = None if att is None else ([att] if (not batched and return_tensors is None) else list(att))
        aligned = [
            _align_mask(m, len(r), None if att_rows is None else att_rows[i], tokenizer)
            for i, (m, r) in enumerate(zip(masks, rows))
        ]
        if return_tensors is not None:
            out["assistant_masks"] = np.asarray(aligned, dtype=np.int64)
        else:
            out["assistant_masks"] = aligned if batched else aligned[0]
    return out


def _align_mask(mask: List[int], length: int, attention: Any, tokenizer: Any) -> List[int]:
    """The untruncated, unpadded ``mask`` cut and padded as the tokenizer cut and padded its row."""
    real = length if attention is None else int(np.sum(np.asarray(attention)))
    if len(mask) > real:  # truncated
        side = getattr(tokenizer, "truncation_side", "right")
        mask = mask[len(mask) - real :] if side == "left" else mask[:real]
    pad = length - len(mask)
    if pad > 0:
        side = getattr(tokenizer, "padding_side", "right")
        mask = [0] * pad + mask if side == "left" else mask + [0] * pad
    return mask


def encode_chat_for_training(
    tokenizer: Any,
    messages: Any,
    *,
    chat_template: Optional[str] = None,
    tools: Optional[Sequence[Any]] = None,
    documents: Optional[Sequence[Any]] = None,
    where: str = "",
    **template_kwargs: Any,
) -> Tuple[List[int], List[int]]:
    """(input_ids, assistant_mask) of one conversation, for training with the loss on the
    assistant's tokens only. ``{% generation %}`` blocks give the assistant spans when the
    template has them; otherwise the prefix-by-prefix renderings do (see the module docs)."""
    get = getattr(tokenizer, "get_chat_template", None)
    if get is None:
        raise DataError(f"{where}'messages' examples need a tokenizer with a chat template (processing_class)")
    template = get(chat_template, tools)
    msgs = normalize_messages(messages, where)
    if not msgs:
        raise DataError(f"{where}'messages' is empty")
    variables = _template_variables(tokenizer, template_kwargs)
    if has_generation_tags(template):
        texts, indices = render(
            [msgs], template, tools=tools, documents=documents, return_generation_indices=True, **variables
        )
        text, spans = texts[0], indices[0]
    else:
        text, spans = assistant_spans_by_prefix(msgs, template, tools=tools, documents=documents, **variables)
    return assistant_token_mask(tokenizer, text, spans)


def template_from_config(value: Any) -> Optional[Template]:
    """A ``chat_template`` value of tokenizer_config.json as the tokenizer attribute: a str, or
    ``{name: template}`` for the list-of-``{"name", "template"}`` form of multiple templates."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        out: Dict[str, str] = {}
        for item in value:
            if not (isinstance(item, Mapping) and isinstance(item.get("name"), str) and isinstance(item.get("template"), str)):
                raise TokenizerError("chat_template: expected a string or a list of {'name', 'template'} entries")
            out[item["name"]] = item["template"]
        return out
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise TokenizerError("chat_template: a dict of templates must map names to template strings")
        return dict(value)
    raise TokenizerError(f"chat_template must be a string, got {type(value).__name__}")


def select_template(
    own: Optional[Template], chat_template: Optional[str] = None, tools: Optional[Sequence[Any]] = None
) -> str:
    """transformers' ``get_chat_template``: the argument (a template or, for a tokenizer with
    several templates, a name) wins; else the tokenizer's (``"tool_use"`` when tools are
    given and it exists, else ``"default"``)."""
    if isinstance(own, dict):
        if chat_template is not None and chat_template in own:
            return own[chat_template]
        if chat_template is None:
            if tools is not None and "tool_use" in own:
                return own["tool_use"]
            if "default" in own:
                return own["default"]
            raise TokenizerError(
                "this tokenizer has several chat templates and none is named 'default': pass a template or one of "
                f"the names {sorted(own)} as chat_template="
            )
    elif chat_template is None:
        if own is None:
            raise TokenizerError(NO_TEMPLATE_MESSAGE)
        return own
    if not isinstance(chat_template, str):
        raise InputError(f"chat_template must be a str, got {type(chat_template).__name__}")
    return chat_template

