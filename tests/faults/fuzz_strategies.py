"""Hypothesis strategies for hostile requests: JSON that is deep, huge, of the wrong type or not
JSON at all, request bodies with every known field of the Anthropic and OpenAI request models
mutated, odd headers and query strings.

Bodies are built as raw bytes (never re-encoded by the HTTP client), so NaN, Infinity, integers
past 64 bits, lone surrogates and invalid UTF-8 reach the server as sent.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

MODEL = "claude-haiku-4-5-20251001"

#: Integers a 64-bit counter, a float or a Lua number cannot hold, and their neighbours.
EDGE_INTS = [
    0, -1, 1, 2**31 - 1, 2**31, -(2**31), 2**53 + 1, 2**62, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
    2**64, 4611686018427387904, 10**30, -(10**30), 10**400,
]
#: Floats, some of which are not JSON (written as raw text: NaN, Infinity).
EDGE_FLOATS = [0.0, -0.0, 0.5, 1e-320, 1e308, -1e308, 1.7976931348623157e308, math.inf, -math.inf, math.nan]


class Raw:
    """A piece of already-encoded JSON (or not-quite-JSON) text to splice into a body."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:80]!r}{'...' if len(self.text) > 80 else ''})"


def encode(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` pieces spliced in verbatim and non-finite floats
    as the bare words Python's json writes (NaN, Infinity): not JSON, which is the point."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value, allow_nan=True)


def deep(depth: int, kind: str) -> Raw:
    """``depth`` levels of nested arrays or objects, written without recursion."""
    if kind == "list":
        return Raw("[" * depth + "1" + "]" * depth)
    if kind == "dict":
        return Raw('{"a":' * depth + "1" + "}" * depth)
    return Raw('[{"type":"text","text":' * depth + '"x"' + "}]" * depth)


huge_ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(), st.integers(min_value=2**63, max_value=10**40))
edge_floats = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(allow_nan=True, allow_infinity=True))
#: Text with anything in it: control characters, now and then a lone surrogate (which json
#: escapes as \\udXXX and a strict parser refuses: rare, or it hides everything behind it).
texts = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.sampled_from(["", " ", "\x00", "é" * 50, "\u202e", "\ufeff", "\ud800"]),
)
#: Text a URL can carry (percent-encoded UTF-8: no lone surrogates).
url_texts = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.sampled_from(["", " ", "\x00", "%", "%zz", "&", "=", "é" * 50, "a" * 3000]),
)
depths = st.integers(min_value=2, max_value=1500)
deep_values = st.builds(deep, depths, st.sampled_from(["list", "dict", "blocks"]))

scalars = st.one_of(st.none(), st.booleans(), huge_ints, edge_floats, texts)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=12,
)
#: Any value at all, now and then a deep one: what a wrong-typed field gets (deep values are
#: refused early, so a quarter of them is enough to leave the layers behind the parser reachable).
any_value = st.one_of(json_values, json_values, json_values, deep_values)


# -- request bodies -------------------------------------------------------------------------------

def anthropic_base() -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "fuzz"}]}


def chat_base() -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "fuzz"}]}


def responses_base() -> dict[str, Any]:
    return {"model": MODEL, "max_output_tokens": 16, "input": "fuzz"}


#: The fields each request model knows; each may be dropped or given a value of any type.
ANTHROPIC_FIELDS = [
    "model", "max_tokens", "messages", "system", "stream", "temperature", "top_p", "top_k",
    "stop_sequences", "tools", "tool_choice", "metadata", "thinking", "service_tier", "output_config",
    "mcp_servers", "container", "claude_options",
]
CHAT_FIELDS = [
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stop", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
    "response_format", "reasoning_effort", "user", "logprobs", "top_logprobs", "logit_bias", "modalities",
    "audio", "seed", "claude_options",
]
RESPONSES_FIELDS = [
    "model", "input", "instructions", "stream", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "temperature", "top_p", "text", "reasoning", "previous_response_id",
    "conversation", "store", "metadata", "claude_options",
]
#: Plausible values of the known fields, so mutations also reach past the first check.
ANTHROPIC_MESSAGE_ROLES = ["user", "assistant", "system", "tool", "developer", "function", ""]
BLOCK_TYPES = [
    "text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
    "server_tool_use", "web_search_tool_result", "input_text", "image_url", "input_image", "file", "bogus",
]


@st.composite
def content_blocks(draw: st.DrawFn) -> Any:
    block: dict[str, Any] = {"type": draw(st.sampled_from(BLOCK_TYPES))}
    for name in draw(st.lists(st.sampled_from(
        ["text", "source", "id", "name", "input", "content", "tool_use_id", "cache_control", "image_url",
         "thinking", "signature", "file", "is_error"]), max_size=4)):
        block[name] = draw(any_value)
    return block


@st.composite
def messages(draw: st.DrawFn) -> Any:
    """A message list where roles, contents and blocks are anything from plausible to absurd."""
    out = []
    for _ in range(draw(st.integers(0, 3))):
        msg: dict[str, Any] = {
            "role": draw(st.one_of(st.sampled_from(ANTHROPIC_MESSAGE_ROLES), any_value)),
            "content": draw(st.one_of(texts, st.lists(content_blocks(), max_size=3), any_value)),
        }
        for name in draw(st.lists(st.sampled_from(["tool_calls", "tool_call_id", "name", "function_call"]),
                                  max_size=2)):
            msg[name] = draw(any_value)
        out.append(msg)
    return out


def _field_value(name: str) -> st.SearchStrategy[Any]:
    """Values for one known field: a type confusion of it, or anything."""
    typed: dict[str, st.SearchStrategy[Any]] = {
        "max_tokens": st.one_of(huge_ints, edge_floats, st.booleans(), st.just("16")),
        "max_completion_tokens": st.one_of(huge_ints, edge_floats, st.booleans()),
        "max_output_tokens": st.one_of(huge_ints, edge_floats, st.booleans()),
        "temperature": st.one_of(edge_floats, huge_ints, st.booleans()),
        "top_p": st.one_of(edge_floats, huge_ints),
        "top_k": st.one_of(huge_ints, edge_floats),
        "n": huge_ints,
        "top_logprobs": huge_ints,
        "seed": huge_ints,
        "stream": st.one_of(st.booleans(), st.sampled_from([0, 1, "true", None])),
        "model": st.one_of(texts, st.sampled_from([MODEL, "gpt-4o", "o3", "claude-opus-5-5", ""]), huge_ints),
        "messages": messages(),
        "input": st.one_of(texts, messages(), st.lists(content_blocks(), max_size=3)),
        "tools": st.lists(st.one_of(content_blocks(), st.fixed_dictionaries(
            {"type": st.sampled_from(["function", "custom", "web_search"]), "function": any_value,
             "name": any_value, "input_schema": any_value, "parameters": any_value})), max_size=3),
        "claude_options": st.one_of(any_value, st.dictionaries(st.sampled_from(
            ["max_turns", "permission_mode", "allowed_tools", "disallowed_tools", "cwd", "model", "bogus",
             "max_budget_usd", "system_prompt"]), any_value, max_size=3)),
    }
    return st.one_of(typed.get(name, st.nothing()), any_value)


@st.composite
def mutated_bodies(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """The smallest valid body of ``kind``, then some known fields dropped or replaced by values
    of any type, and unknown fields added."""
    base, fields = {
        "anthropic": (anthropic_base(), ANTHROPIC_FIELDS),
        "chat": (chat_base(), CHAT_FIELDS),
        "responses": (responses_base(), RESPONSES_FIELDS),
    }[kind]
    body = dict(base)
    for name in draw(st.lists(st.sampled_from(fields), max_size=4, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(_field_value(name))
    for name, value in draw(st.dictionaries(texts, any_value, max_size=2)).items():
        body.setdefault(name, value)
    return body


#: A body a validation layer must refuse (for /sdk, where anything valid starts Claude Code).
INVALIDATORS: dict[str, list[tuple[str, Any]]] = {
    "anthropic": [("model", None), ("model", 7), ("messages", "hi"), ("messages", None), ("stream", "yes"),
                  ("max_tokens", "16"), ("claude_options", "x"), ("claude_options", {"bogus_option": 1})],
    "chat": [("model", None), ("messages", []), ("messages", "hi"), ("max_tokens", 0), ("temperature", 9),
             ("claude_options", {"bogus_option": 1})],
    "responses": [("model", None), ("input", None), ("input", 5), ("max_output_tokens", 0),
                  ("claude_options", {"bogus_option": 1})],
}


@st.composite
def invalid_bodies(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    body = draw(mutated_bodies(kind))
    name, value = draw(st.sampled_from(INVALIDATORS[kind]))
    body[name] = value
    return body


# -- raw bodies, content types, headers ----------------------------------------------------------

CONTENT_TYPES = [
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/json; charset=latin-1",
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "*/*",
    "application/jsonx", "application/vnd.api+json", "json", ";;;", "\x7f",
]

raw_bodies = st.one_of(
    st.binary(max_size=200),  # invalid UTF-8 and anything else
    st.sampled_from([
        b"", b"null", b"[]", b"1", b'"s"', b"{", b"}", b"{]", b'{"model":', b"\xff\xfe{}", b"\xef\xbb\xbf{}",
        b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":1e999999}', b'{"a":' + b"9" * 5000 + b"}",
        b'{"a":"\\ud800"}', b'{"a":"\xc3\x28"}', b'{"model":"x","model":"y"}', b"\x00" * 64,
    ]),
    st.builds(lambda d: encode(d).encode(), deep_values),
    st.builds(lambda v: encode(v).encode(errors="surrogatepass"), json_values),
)

#: Header names a request may carry that ccproxy reads, and any other.
HEADER_NAMES = [
    "anthropic-version", "anthropic-beta", "x-claude-session-id", "accept", "accept-encoding", "user-agent",
    "x-request-id", "x-forwarded-for", "openai-organization", "x-stainless-retry-count", "x-fuzz",
    "content-encoding", "expect", "x-forwarded-proto", "forwarded", "host",
]
header_values = st.one_of(
    # Visible ASCII without surrounding blanks: what an HTTP client lets through at all.
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip),
    st.sampled_from(["", ",,,", "oauth-2025-04-20," * 50, "a" * 8000, "x" * 60_000]),
)
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=3)


# -- query strings --------------------------------------------------------------------------------

def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


cursor_values = st.one_of(
    url_texts,
    st.builds(lambda n, rid: _b64(f"{n}|{rid}".encode()), huge_ints, url_texts),
    st.builds(lambda f, rid: _b64(f"{f}|{rid}".encode()), edge_floats, url_texts),
    st.builds(_b64, st.binary(max_size=40)),
    st.sampled_from(["", "=", "====", "!!", "MTcwMDAwMDAwMDAwMHx4", "a" * 5000]),
)
time_values = st.one_of(
    url_texts,
    st.builds(str, huge_ints),
    st.builds(str, edge_floats),
    st.sampled_from(["2026-01-01", "2026-13-45T99:99", "1e20", "-1e20", "nan", "inf", "9999-12-31T23:59:59Z",
                     "0001-01-01", "²", "1_000", "0x10"]),
)
#: Digits str.isdigit() accepts and int() may not ("²"), or reads as another number (Arabic-Indic).
odd_digits = ["²", "\u0663", "\u0661\u0660\u0660", "0", "-1", "1e3", ""]
number_texts = st.one_of(url_texts, st.builds(str, huge_ints), st.sampled_from(odd_digits))
logs_params = st.fixed_dictionaries({}, optional={
    "since": time_values, "until": time_values, "cursor": cursor_values, "limit": number_texts,
    "status": st.one_of(number_texts, st.sampled_from(["4xx", "5xx", "xx", "²xx"])),
    "mode": st.one_of(url_texts, st.sampled_from(["api", "sdk"])),
    "outcome": st.one_of(url_texts, st.sampled_from(["ok", "error", "cancelled"])),
    "key": url_texts, "account": url_texts, "model": url_texts, "group_by": url_texts, "bucket": url_texts,
    "replay": number_texts,
})
