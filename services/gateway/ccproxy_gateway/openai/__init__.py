"""OpenAI Chat Completions and Responses over Anthropic Messages, both directions.

Pure translation, no I/O: the gateway (API mode) and the SDK worker both feed it Anthropic
messages or stream events and send its output to the client. docs/openai.md is the user's view.
"""

from ccproxy_gateway.openai.chat_request import ChatPlan, parse_chat_request, translate_chat_request
from ccproxy_gateway.openai.chat_response import ChatStreamTranslator, chat_completion, chat_stream
from ccproxy_gateway.openai.formats import CHAT, RESPONSES, OpenAIFormat
from ccproxy_gateway.openai.model_map import ModelMap
from ccproxy_gateway.openai.responses import (
    ResponsesPlan,
    ResponsesStreamTranslator,
    parse_responses_request,
    response_object,
    responses_stream,
    translate_responses_request,
)

__all__ = [
    "CHAT",
    "RESPONSES",
    "ChatPlan",
    "ChatStreamTranslator",
    "ModelMap",
    "OpenAIFormat",
    "ResponsesPlan",
    "ResponsesStreamTranslator",
    "chat_completion",
    "chat_stream",
    "parse_chat_request",
    "parse_responses_request",
    "response_object",
    "responses_stream",
    "translate_chat_request",
    "translate_responses_request",
]
