"""OpenAI Responses requests (replies are built in responses.py). Input items are told apart by ``type``;
a message may omit it, as OpenAI allows. An item type ccproxy cannot translate is a 400 naming
it, never skipped. Each content part knows its Anthropic block (``block``)."""

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


class InputRefusal(_Lenient):
    type: Literal["refusal"]
    refusal: str

    def block(self, where: str) -> Block | None:
        return text_block(self.refusal)


class InputImage(_Lenient):
    type: Literal["input_image"]
    image_url: str | None = None

    def block(self, where: str) -> Block | None:
        if not self.image_url:
            raise ProxyError(400, f"{where}: file ids are not supported; send image_url", param=where)
        return image_block(self.image_url, where + ".image_url")


class InputFile(_Lenient):
    type: Literal["input_file"]
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None

    def block(self, where: str) -> Block | None:
        return file_block(self.file_data, self.file_id or self.file_url, where, self.filename)


InputPart = Annotated[InputText | InputRefusal | InputImage | InputFile, Field(discriminator="type")]


class InputMessage(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = ""


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


class FunctionToolChoice(_Lenient):
    type: Literal["function"]
    name: str


class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class TextConfig(_Lenient):
    format: TextFormat | None = None


class ReasoningConfig(_Lenient):
    effort: str | None = None


class ResponsesRequest(_Lenient):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool | None = False
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    #: Strict: a budget reserves this many tokens, so ``true`` or ``"5"`` is not a limit.
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    top_logprobs: int | None = None
