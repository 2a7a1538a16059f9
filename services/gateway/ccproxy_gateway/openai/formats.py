"""Chat Completions and Responses behind one interface, so one route serves either format in
either mode (API, SDK): parse, translate, answer whole, or relay a stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ccproxy_core.settings import OpenAISettings
from ccproxy_gateway.openai.chat import ChatStreamTranslator, chat_completion, parse_chat_request, translate_chat_request
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.request import Plan
from ccproxy_gateway.openai.responses import (
    ResponsesStreamTranslator,
    parse_responses_request,
    response_object,
    translate_responses_request,
)
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


CHAT = OpenAIFormat(False, parse_chat_request, translate_chat_request, chat_completion, ChatStreamTranslator)
RESPONSES = OpenAIFormat(True, parse_responses_request, translate_responses_request, response_object,
                         ResponsesStreamTranslator)
