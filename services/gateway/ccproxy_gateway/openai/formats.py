"""Chat Completions and Responses behind one interface, so one route serves either format in
either mode (API, SDK): parse, translate, answer whole, or relay a stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ccproxy_core.settings import OpenAISettings
from ccproxy_gateway.openai import chat, responses
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.request import Plan
from ccproxy_gateway.openai.stream import StreamTranslator


@dataclass(frozen=True, slots=True)
class OpenAIFormat:
    #: Whether requests may refer to stored responses (ccproxy_gateway.response_store).
    stored: bool
    parse: Callable[[dict[str, Any]], Any]
    #: The parsed request -> its plan (``ChatPlan`` / ``ResponsesPlan``).
    translate: Callable[[Any, ModelMap, OpenAISettings], Plan]
    #: A whole Anthropic message and the plan -> the client's answer.
    whole: Callable[[dict[str, Any], Any], dict[str, Any]]
    #: The plan -> the stream translator (``stream.translate_stream`` drives it).
    translator: Callable[[Any], StreamTranslator[Any]]


CHAT = OpenAIFormat(False, chat.parse_chat_request, chat.translate_chat_request, chat.chat_completion,
                    chat.ChatStreamTranslator)
RESPONSES = OpenAIFormat(True, responses.parse_responses_request, responses.translate_responses_request,
                         responses.response_object, responses.ResponsesStreamTranslator)
