"""OpenAI requests to Anthropic requests: recorded pairs, refusals, model names, JSON mode."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ccproxy_core.errors import ProxyError
from ccproxy_core.settings import ModelRule, ModelsSettings, OpenAISettings
from ccproxy_gateway.openai.chat import CHAT, ChatPlan, chat_completion, translate_chat_request
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.reasoning import decode_reasoning, encode_reasoning, thinking_config
from ccproxy_gateway.openai.request import INSTRUCTION, JSON_TOOL
from ccproxy_gateway.openai.responses import RESPONSES, translate_responses_request

RECORDED = json.loads((Path(__file__).parent / "recorded" / "requests.json").read_text())
MODELS = ModelMap()
#: The recorded pairs show the translation itself; prompt-cache markers have their own test.
OPTIONS = OpenAISettings(prompt_cache=False)


def chat(data: dict[str, Any], options: OpenAISettings = OPTIONS, models: ModelMap = MODELS) -> ChatPlan:
    return translate_chat_request(CHAT.parse(copy.deepcopy(data)), models, options)


def responses(data: dict[str, Any]) -> dict[str, Any]:
    return translate_responses_request(RESPONSES.parse(copy.deepcopy(data)), MODELS, OPTIONS).body


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("case", RECORDED["chat"], ids=lambda c: c["name"])
def test_chat_requests_translate_as_recorded(case: dict[str, Any]) -> None:
    plan = chat(case["openai"])
    assert plan.body == case["anthropic"]
    assert plan.client_model == case["openai"]["model"]
    assert plan.stream is bool(case["openai"].get("stream"))


@pytest.mark.parametrize("case", RECORDED["responses"], ids=lambda c: c["name"])
def test_responses_requests_translate_as_recorded(case: dict[str, Any]) -> None:
    assert responses(case["openai"]) == case["anthropic"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": "high", "max_completion_tokens": 1000}, "reasoning_effort"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}},
         "response_format.json_schema.schema"),
        ({"temperature": 3}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
         "messages.0.content.0"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "messages.0.user.content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
         "messages.0.content.0.image_url.url"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/tiff;base64,AAAA"}}]}]}, "messages.0.content.0.image_url.url"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
         "messages.0.content.0.file"),
        ({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
         "messages.0.tool_calls.0.function.arguments"),
        ({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
         "messages.0.tool_calls.0.function.arguments"),
        ({"messages": [{"role": "assistant", "content": "x",
                        "thinking_blocks": [{"type": "thinking", "thinking": "t"}]}]},
         "messages.0.thinking_blocks.0"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool.tool_call_id"),
    ],
)
def test_chat_requests_claude_cannot_honour_are_400_naming_the_parameter(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(ProxyError) as caught:
        chat({"model": "gpt-4o", "messages": user(), **extra})
    assert caught.value.status == 400
    assert caught.value.param is not None and caught.value.param.startswith(param), caught.value.message
    assert caught.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input.0"),
        ({"tool_choice": {"type": "web_search_preview"}, "tools": [{"type": "function", "name": "f"}]},
         "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "nope"}]},
         "input.0.arguments"),
    ],
)
def test_responses_requests_without_a_claude_meaning_are_400(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(ProxyError) as caught:
        responses({"model": "gpt-5", "input": "hi", **extra})
    assert caught.value.status == 400
    assert caught.value.param is not None and caught.value.param.startswith(param), caught.value.message


def test_previous_response_id_error_says_why_and_what_to_do() -> None:
    with pytest.raises(ProxyError) as caught:
        responses({"model": "gpt-5", "input": "hi", "previous_response_id": "resp_1"})
    assert "no response store" in caught.value.message and "input" in caught.value.message


def test_ignored_parameters_change_nothing() -> None:
    base = chat({"model": "gpt-4o", "messages": user()}).body
    noisy = chat({
        "model": "gpt-4o", "messages": user(), "presence_penalty": 0.5, "frequency_penalty": 0.1, "seed": 1,
        "service_tier": "auto", "store": True, "metadata": {"a": "b"}, "n": 1, "logprobs": False,
        "prediction": {"type": "content", "content": "x"}, "response_format": {"type": "text"},
    }).body
    assert noisy == base


def test_temperature_above_claudes_range_is_clamped_and_top_p_dropped_beside_it() -> None:
    body = chat({"model": "gpt-4o", "messages": user(), "temperature": 1.8, "top_p": 0.5}).body
    assert body["temperature"] == 1.0
    assert "top_p" not in body


@pytest.mark.parametrize(
    ("effort", "limit", "budget", "max_tokens"),
    [
        ("low", None, 2048, 2048 + 8192),
        ("high", None, 24576, 24576 + 8192),
        ("minimal", 5000, 1024, 5000),
        ("high", 10000, 5000, 10000),
        ("low", 1500, 1024, 1500),
    ],
)
def test_reasoning_effort_budgets(effort: str, limit: int | None, budget: int, max_tokens: int) -> None:
    thinking, sent = thinking_config(effort, {}, limit, 8192)
    assert thinking == {"type": "enabled", "budget_tokens": budget}
    assert sent == max_tokens
    assert budget < sent


def test_reasoning_budgets_are_configurable_per_effort() -> None:
    options = OpenAISettings(reasoning_budgets={"low": 3000}, default_max_tokens=1000)
    body = chat({"model": "gpt-4o", "messages": user(), "reasoning_effort": "low"}, options).body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert body["max_tokens"] == 4000
    medium = chat({"model": "gpt-4o", "messages": user(), "reasoning_effort": "medium"}, options).body
    assert medium["thinking"]["budget_tokens"] == 8192  # unconfigured efforts keep the default
    none = chat({"model": "gpt-4o", "messages": user(), "reasoning_effort": "none"}, options).body
    assert "thinking" not in none


def test_model_names_claude_passes_defaults_map_unknown_passes() -> None:
    assert MODELS.resolve("claude-opus-4-1-20250805") == "claude-opus-4-1-20250805"
    assert MODELS.resolve("claude-some-future-model") == "claude-some-future-model"
    assert MODELS.resolve("gpt-4o-2024-08-06") == "claude-sonnet-5-5"
    assert MODELS.resolve("gpt-4o-mini") == "claude-haiku-5-5"
    assert MODELS.resolve("gpt-5.1-codex-mini") == "claude-haiku-5-5"
    assert MODELS.resolve("o3-mini") == "claude-sonnet-5-5"
    assert MODELS.resolve("o3") == "claude-opus-5-5"
    assert MODELS.resolve("gpt-5-codex") == "claude-sonnet-5-5"
    assert MODELS.resolve("llama-3-70b") == "llama-3-70b"


def test_configured_rules_come_first_in_order_and_may_redirect_claude_names() -> None:
    settings = ModelsSettings(rules=[
        ModelRule(match="claude-3-5-sonnet", kind="prefix", target="claude-sonnet-5-5"),
        ModelRule(match=r"^my-(fast|cheap)$", kind="regex", target="claude-haiku-5-5"),
        ModelRule(match="gpt-4o", target="claude-opus-5-5"),
        ModelRule(match="gpt-4o", target="never-reached"),
    ])
    models = ModelMap.from_settings(settings)
    assert models.resolve("claude-3-5-sonnet-20241022") == "claude-sonnet-5-5"
    assert models.resolve("my-cheap") == "claude-haiku-5-5"
    assert models.resolve("my-cheaper") == "my-cheaper"
    assert models.resolve("gpt-4o") == "claude-opus-5-5"
    assert models.resolve("gpt-4o-mini") == "claude-haiku-5-5"  # exact rule: the defaults still apply
    aliases = models.aliases()
    assert aliases[:2] == ["claude-3-5-sonnet", "gpt-4o"]
    assert "gpt-4o-mini" in aliases and not any(a.startswith("^") for a in aliases)
    only_mine = ModelMap.from_settings(ModelsSettings(rules=settings.rules, default_rules=False))
    assert only_mine.resolve("gpt-4o-mini") == "gpt-4o-mini"
    with pytest.raises(ValueError, match="regular expression"):
        ModelMap([ModelRule(match="(", kind="regex", target="x")])


def test_model_rules_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from ccproxy_core.settings import Settings

    monkeypatch.setenv("MODELS__RULES", '[{"match": "team-default", "target": "claude-opus-5-5"}]')
    monkeypatch.setenv("MODELS__DEFAULT_RULES", "false")
    settings = Settings()
    models = ModelMap.from_settings(settings.models)
    assert models.resolve("team-default") == "claude-opus-5-5"
    assert models.resolve("gpt-4o") == "gpt-4o"


def test_json_mode_with_client_tools_requires_a_tool_and_asks_for_json() -> None:
    body = chat({
        "model": "gpt-4o", "messages": user(), "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "search"}}],
    }).body
    assert [t["name"] for t in body["tools"]] == ["search", JSON_TOOL]
    assert body["tool_choice"] == {"type": "any"}
    assert body["system"][-1]["text"] == INSTRUCTION


def test_json_mode_with_thinking_cannot_force_and_instructs() -> None:
    body = chat({
        "model": "gpt-4o", "messages": user(), "response_format": {"type": "json_object"},
        "reasoning_effort": "low",
    }).body
    assert body["tool_choice"] == {"type": "auto"}
    assert body["tools"][-1]["name"] == JSON_TOOL
    assert body["system"][-1]["text"] == INSTRUCTION


def test_tool_choice_none_and_auto() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert chat({"model": "gpt-4o", "messages": user(), "tools": tools, "tool_choice": "none"}).body[
        "tool_choice"] == {"type": "none"}
    assert chat({"model": "gpt-4o", "messages": user(), "tools": tools, "tool_choice": "auto"}).body[
        "tool_choice"] == {"type": "auto"}
    named = {"type": "function", "function": {"name": "f"}}
    assert chat({"model": "gpt-4o", "messages": user(), "tools": tools, "tool_choice": named}).body[
        "tool_choice"] == {"type": "tool", "name": "f"}
    # No tools: a tool_choice has nothing to choose from and is not sent.
    assert "tool_choice" not in chat({"model": "gpt-4o", "messages": user(), "tool_choice": "required"}).body


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_prompt_cache_breakpoints_on_system_and_conversation_end(api: str) -> None:
    options = OpenAISettings()
    thinking = {"type": "thinking", "thinking": "t", "signature": "s"}
    if api == "chat":
        data = {"model": "gpt-4o", "messages": [
            {"role": "system", "content": "sys"}, *user("q1"), {"role": "assistant", "content": "a1"}, *user("q2")]}
        body = translate_chat_request(CHAT.parse(data), MODELS, options).body
        prefill = translate_chat_request(CHAT.parse({"model": "gpt-4o", "messages": [
            *user(), {"role": "assistant", "content": None, "thinking_blocks": [thinking]}]}), MODELS, options).body
    else:
        data = {"model": "gpt-5", "instructions": "sys", "input": [
            {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}]}
        body = translate_responses_request(RESPONSES.parse(data), MODELS, options).body
        prefill = translate_responses_request(RESPONSES.parse({"model": "gpt-5", "input": [
            {"role": "user", "content": "hi"}, {"type": "reasoning", "encrypted_content": encode_reasoning(thinking)}],
        }), MODELS, options).body
    marked = [b for m in body["messages"] for b in m["content"] if "cache_control" in b]
    marked += [b for b in body["system"] if "cache_control" in b]
    assert marked == [{"type": "text", "text": "q2", "cache_control": {"type": "ephemeral"}},
                      {"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}]
    # Claude refuses cache_control on thinking blocks: an assistant turn ending in one is left alone.
    assert prefill["messages"][-1]["content"] == [thinking]


def test_tool_parameters_without_a_type_are_objects() -> None:
    body = chat({"model": "gpt-4o", "messages": user(), "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"properties": {"a": {"type": "string"}}}}}]}).body
    assert body["tools"][0]["input_schema"] == {"type": "object", "properties": {"a": {"type": "string"}}}


def test_pdf_files_become_documents() -> None:
    body = chat({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "a.pdf"}},
    ]}]}).body
    assert body["messages"][0]["content"] == [{"type": "document", "title": "a.pdf", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}]


def test_thinking_comes_back_from_reasoning_content_alone_when_this_process_answered() -> None:
    plan = chat({"model": "gpt-4o", "messages": user()})
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5",
        "content": [
            {"type": "thinking", "thinking": "Let me call the tool.", "signature": "c2ln"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        ],
        "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    answer = chat_completion(message, plan)["choices"][0]["message"]
    # A client that keeps only reasoning_content (not thinking_blocks) sends this back:
    back = {"role": "assistant", "content": None, "reasoning_content": answer["reasoning_content"],
            "tool_calls": answer["tool_calls"]}
    body = chat({"model": "gpt-4o", "messages": [*user(), back, {"role": "tool", "tool_call_id": "toolu_1",
                                                                   "content": "ok"}]}).body
    assert body["messages"][1]["content"][0] == {"type": "thinking", "thinking": "Let me call the tool.",
                                                 "signature": "c2ln"}
    # Text this process never produced has no signature to recall: the thinking is left out.
    unknown = {**back, "reasoning_content": "something else"}
    body = chat({"model": "gpt-4o", "messages": [*user(), unknown]}).body
    assert [b["type"] for b in body["messages"][1]["content"]] == ["tool_use"]


def test_encrypted_reasoning_round_trips_exactly_and_ignores_foreign_content() -> None:
    for block in ({"type": "thinking", "thinking": "a\nb \u00e9", "signature": "s/+="},
                  {"type": "redacted_thinking", "data": "ZGF0YQ=="}):
        assert decode_reasoning(encode_reasoning(block)) == block
    assert decode_reasoning("gAAAAABnot-ours") is None
    assert decode_reasoning("ccproxy.v1.!!!") is None
    assert decode_reasoning(None) is None
