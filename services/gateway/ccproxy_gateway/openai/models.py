"""The two OpenAI request formats' wire models (replies are the ``openai`` package's types). Lenient
where OpenAI is (unknown fields kept, so the translator can refuse by name what Claude cannot honour),
strict where a wrong shape would reach upstream as something else. Each content part knows its
Anthropic block; an input item ccproxy cannot translate is a 400 naming it, never skipped."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictInt, Tag

from ccproxy_core.errors import ProxyError
from ccproxy_gateway.openai.content import Block, file_block, image_block, text_block


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputText(_Lenient):
    type: Literal["input_text", "output_text", "text"]
    text: str

    def block(self, where: str) -> Block | None:
        return text_block(self.text)


class TextPart(InputText):
    """Chat's text part (Responses takes the other names too)."""

    type: Literal["text"]


class RefusalPart(_Lenient):
    type: Literal["refusal"]
    refusal: str

    def block(self, where: str) -> Block | None:
        return text_block(self.refusal)


class ImageURL(_Lenient):
    url: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL

    def block(self, where: str) -> Block | None:
        return image_block(self.image_url.url, where + ".image_url.url")


class FileData(_Lenient):
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None

    def block(self, where: str) -> Block | None:
        return file_block(self.file_data, self.file_id or self.file_url, where, self.filename)


class FilePart(_Lenient):
    type: Literal["file"]
    file: FileData

    def block(self, where: str) -> Block | None:
        return self.file.block(where + ".file")


class AudioPart(_Lenient):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]

    def block(self, where: str) -> Block | None:
        raise ProxyError(400, f"{where}: Claude does not accept audio input", param=where)


UserPart = Annotated[TextPart | ImagePart | FilePart | AudioPart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Lenient):
    name: str
    arguments: str = ""


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Lenient):
    role: Literal["system", "developer"]
    content: str | list[TextPart]


class UserMessage(_Lenient):
    role: Literal["user"]
    content: str | list[UserPart]


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    #: ccproxy's thinking round trip (docs/openai.md): the text, for display ...
    reasoning_content: str | None = None
    #: ... and the exact Anthropic blocks with their signatures, for sending back.
    thinking_blocks: list[dict[str, Any]] | None = None


class ToolMessage(_Lenient):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Lenient):
    role: Literal["function"]
    name: str
    content: str | None = None


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
                        Field(discriminator="role")]


class FunctionDefinition(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatTool(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Lenient):
    name: str | None = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Lenient):
    include_usage: bool | None = None


class _Request(_Lenient):
    """The fields both request formats share."""

    model: str
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    parallel_tool_calls: bool | None = None
    user: str | None = None
    top_logprobs: int | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    stream_options: StreamOptions | None = None
    #: Strict: a budget reserves this many tokens, so ``true`` or ``"5"`` is not a limit.
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    n: int | None = None
    stop: str | list[str] | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None


class InputImage(_Lenient):
    type: Literal["input_image"]
    image_url: str | None = None

    def block(self, where: str) -> Block | None:
        if not self.image_url:
            raise ProxyError(400, f"{where}: file ids are not supported; send image_url", param=where)
        return image_block(self.image_url, where + ".image_url")


class InputFile(FileData):
    type: Literal["input_file"]


InputPart = Annotated[InputText | RefusalPart | InputImage | InputFile, Field(discriminator="type")]


class InputMessage(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]


class FunctionCallItem(FunctionCall):
    type: Literal["function_call"]
    call_id: str


class FunctionOutputPart(_Lenient):
    type: str
    text: str | None = None
    image_url: str | None = None

    def block(self, where: str) -> Block | None:
        if self.type in ("input_text", "output_text", "text"):
            return text_block(self.text)
        if self.type == "input_image" and self.image_url:
            return image_block(self.image_url, where + ".image_url")
        return None


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[FunctionOutputPart]


class ReasoningItem(_Lenient):
    type: Literal["reasoning"]
    summary: list[dict[str, Any]] = Field(default_factory=list)
    encrypted_content: str | None = None


class ItemReference(_Lenient):
    type: Literal["item_reference"]
    id: str


def _item_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("type") or ("message" if "role" in value else None)
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[ItemReference, Tag("item_reference")],
    Discriminator(_item_tag),
]


class ResponsesTool(_Lenient):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None


class FunctionToolChoice(NamedFunction):
    type: Literal["function"]


class TextFormat(JSONSchemaFormat):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None


class TextConfig(_Lenient):
    format: TextFormat | None = None


class ReasoningConfig(_Lenient):
    effort: str | None = None


class ResponsesRequest(_Request):
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | dict[str, Any] | None = None
    #: Strict: a budget reserves this many tokens, so ``true`` or ``"5"`` is not a limit.
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    safety_identifier: str | None = None
