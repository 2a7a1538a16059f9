"""The Responses API's store (``store``, ``previous_response_id``, ``item_reference``) in Redis, under
``{REDIS__KEY_PREFIX}responses:{owner}:`` (the caller's key id: another key's responses are a 404): ``r:{id}``
one ``Stored`` with only its request's own input (a conversation is rebuilt along ``previous``), ``items`` item
id -> response id, ``saved`` response ids by time saved and ``bytes`` (an upper bound of their size) for the
size cap. Kept RESPONSES__RETENTION_DAYS, renewed when continued."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ccproxy_core.errors import ProxyError, validation_error
from ccproxy_core.identity import caller
from ccproxy_core.redis import UNAVAILABLE, as_text, unavailable_as_503
from ccproxy_core.settings import ResponsesSettings
from ccproxy_core.sse import ServerSentEvent
from ccproxy_gateway.openai.models import InputItem, InputMessage, ResponsesRequest
from ccproxy_gateway.openai.request import Plan
from ccproxy_gateway.openai.stream import OpenAIFormat, StreamTranslator, translate_stream
from ccproxy_gateway.routes import ApiRoute

log = logging.getLogger(__name__)

Item = dict[str, Any]
_ITEMS = TypeAdapter(list[InputItem])
#: Id prefixes OpenAI uses, for stored input items the client sent without an id.
_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
_INDEXES = ("items", "saved", "bytes")


class Stored(BaseModel):
    previous: str | None = None
    #: The request's own items (``item_reference`` kept as references), not the conversation so far.
    input: list[Item]
    response: Item

    def items(self) -> dict[str, Item]:
        """Its items by id (a reference is not an item of its own)."""
        return {item["id"]: item for item in [*self.input, *(self.response.get("output") or [])]
                if item.get("id") and item.get("type") != "item_reference"}


def _own_items(req: ResponsesRequest) -> list[Item]:
    """The request's input items as stored: each with an id (OpenAI lists input items by id), text
    content as parts (OpenAI's shape), references as they are."""
    out = []
    for parsed in [InputMessage(role="user", content=req.input)] if isinstance(req.input, str) else req.input:
        item = parsed.model_dump(mode="json", exclude_none=True, by_alias=True)
        if item["type"] != "item_reference" and not item.get("id"):
            item["id"] = f"{_ID_PREFIX.get(item['type'], 'item')}_{uuid.uuid4().hex}"
        if item["type"] == "message" and isinstance(item["content"], str):
            part = "output_text" if item["role"] == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        out.append(item)
    return out


@dataclass(slots=True)
class Turn:
    """What a request brings to the store: whose it is, whether to keep it, what came before."""

    owner: str
    store: bool
    previous: str | None
    own_input: list[Item]


class ResponseStore:
    def __init__(self, redis: Redis, settings: ResponsesSettings, key_prefix: str) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = f"{key_prefix}responses:"
        self.ttl = max(1, int(settings.retention_days * 86400))

    def _key(self, owner: str, what: str) -> str:
        return f"{self.prefix}{owner}:{what}"

    async def prepare(self, owner: str, req: ResponsesRequest) -> tuple[ResponsesRequest, Turn]:
        """The request with its whole conversation in ``input`` (the chain before it, references
        resolved), and what to store once it is answered."""
        own = _own_items(req)
        turn = Turn(owner, req.store is not False, req.previous_response_id, own)
        if not req.previous_response_id and not any(item.get("type") == "item_reference" for item in own):
            return req, turn
        async with unavailable_as_503("the response store"):
            history = await self._chain_items(owner, req.previous_response_id) if req.previous_response_id else []
            resolved = await self._resolve(owner, own, "input")
        try:
            items = _ITEMS.validate_python([*history, *resolved])
        except ValidationError as exc:  # a stored item this version cannot read
            raise validation_error(exc) from exc
        return req.model_copy(update={"input": items, "previous_response_id": None}), turn

    async def _chain_items(self, owner: str, response_id: str) -> list[Item]:
        """Input and output items of ``response_id`` and its predecessors, oldest first."""
        chain: dict[str, Stored] = {}
        next_id: str | None = response_id
        while next_id is not None:
            if len(chain) >= self.settings.max_chain or next_id in chain:
                raise ProxyError(
                    400, f"previous_response_id: the conversation is longer than {self.settings.max_chain} "
                    "stored responses (RESPONSES__MAX_CHAIN); start a new one or send the whole conversation "
                    "in input", param="previous_response_id",
                )
            stored = await self._record(owner, next_id)
            if stored is None:
                what = "Previous response" if next_id == response_id else "A response this conversation continues,"
                raise ProxyError(404, f"{what} with id '{next_id}' not found.", "not_found_error",
                                 param="previous_response_id")
            chain[next_id] = stored
            next_id = stored.previous
        await self._touch(owner, list(chain))
        items: list[Item] = []
        for stored in reversed(chain.values()):
            items += await self._resolve(owner, stored.input, "previous_response_id")
            items += stored.response.get("output") or []
        return items

    async def _resolve(self, owner: str, items: list[Item], where: str | None) -> list[Item]:
        """``items`` with each ``item_reference`` replaced by the stored item it names; one no longer
        stored is a 404 (``where``: the param to name), or stays a reference (``where`` None)."""
        refs = {i: str(item.get("id")) for i, item in enumerate(items) if item.get("type") == "item_reference"}
        if not refs:
            return items
        holders = await self.redis.hmget(self._key(owner, "items"), list(refs.values()))  # type: ignore[misc]
        found: dict[str, Item] = {}
        kept = []
        for response_id in {as_text(holder) for holder in holders if holder is not None}:
            stored = await self._record(owner, response_id)
            if stored is not None:
                kept.append(response_id)
                found |= stored.items()
        await self._touch(owner, kept)
        out = list(items)
        for i, item_id in refs.items():
            if item_id in found:
                out[i] = found[item_id]
            elif where is not None:
                at = f"input.{i}" if where == "input" else where
                raise ProxyError(404, f"Item with id '{item_id}' not found.", "not_found_error", param=at)
        return out

    async def _record(self, owner: str, response_id: str) -> Stored | None:
        raw = await self.redis.get(self._key(owner, f"r:{response_id}"))
        return None if raw is None else Stored.model_validate_json(raw)

    async def _touch(self, owner: str, response_ids: list[str]) -> None:
        """Renew the retention of what a new request continues, and of the key's indexes."""
        pipe = self.redis.pipeline(transaction=False)
        for what in [*(f"r:{r}" for r in response_ids), *_INDEXES]:
            pipe.expire(self._key(owner, what), self.ttl)
        await pipe.execute()

    async def _found(self, request: Request) -> tuple[str, str, Stored]:
        """(owner, response id, the stored response) of a route's ``{response_id}``: the caller's own only."""
        owner, response_id = caller(request).id, request.path_params["response_id"]
        stored = await self._record(owner, response_id)
        if stored is None:
            raise ProxyError(404, f"Response with id '{response_id}' not found.", "not_found_error")
        return owner, response_id, stored

    async def save(self, turn: Turn, response: Item) -> None:
        """Keep an answered response. A Redis failure here is logged, not raised: the client has
        (or is getting) its answer, which matters more than being able to continue it."""
        if not turn.store:
            return
        owner, response_id = turn.owner, str(response["id"])
        stored = Stored(previous=turn.previous, input=turn.own_input, response=response)
        raw = stored.model_dump_json()
        item_ids = list(stored.items())
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key(owner, f"r:{response_id}"), raw, ex=self.ttl)
        if item_ids:
            pipe.hset(self._key(owner, "items"), mapping=dict.fromkeys(item_ids, response_id))
        pipe.zadd(self._key(owner, "saved"), {response_id: time.time()})
        pipe.incrby(self._key(owner, "bytes"), len(raw))
        for what in _INDEXES:
            pipe.expire(self._key(owner, what), self.ttl)
        try:
            total = (await pipe.execute())[-4]
            if int(total) > self.settings.max_bytes_per_key:
                await self._evict(owner)
        except UNAVAILABLE as exc:
            log.warning("response store: could not keep a response (%s)", type(exc).__name__)

    async def _forget(self, owner: str, response_ids: set[str], candidates: list[str] | None = None) -> None:
        """Remove responses and the index entries that name them (``bytes`` stays an upper bound: ``_evict``
        recounts). ``candidates``: the item ids they may hold, when known; else every entry is looked at."""
        index = self._key(owner, "items")
        if candidates is None:
            holders = await self.redis.hgetall(index)  # type: ignore[misc]
        else:  # an item sent again later is held by the later response: not ours to remove
            found = await self.redis.hmget(index, candidates) if candidates else []  # type: ignore[misc]
            holders = dict(zip(candidates, found, strict=True))
        items = [item for item, holder in holders.items() if holder is not None and as_text(holder) in response_ids]
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*(self._key(owner, f"r:{r}") for r in response_ids))
        pipe.zrem(self._key(owner, "saved"), *response_ids)
        if items:
            pipe.hdel(index, *items)
        await pipe.execute()

    async def _evict(self, owner: str) -> None:
        """Over ``RESPONSES__MAX_BYTES_PER_KEY``: forget what expired, then the oldest responses
        until the key is under its cap again (approximate when replicas write at once)."""
        saved = [as_text(r) for r in await self.redis.zrange(self._key(owner, "saved"), 0, -1)]  # oldest first
        pipe = self.redis.pipeline(transaction=False)
        for response_id in saved:
            pipe.strlen(self._key(owner, f"r:{response_id}"))  # 0: expired
        sizes = dict(zip(saved, await pipe.execute(), strict=True))
        total = sum(sizes.values())
        evicted = {r for r, size in sizes.items() if not size}
        for response_id in saved:
            if total <= self.settings.max_bytes_per_key:
                break
            total -= sizes[response_id]
            evicted.add(response_id)
        if evicted:
            await self._forget(owner, evicted)
        await self.redis.set(self._key(owner, "bytes"), total, ex=self.ttl)

    def routes(self, prefixes: tuple[str, ...]) -> list[BaseRoute]:
        out: list[BaseRoute] = []
        for prefix in prefixes:
            one = f"{prefix}/responses/{{response_id}}"
            out += [
                ApiRoute(one, self.get, methods=["GET"], client_format="openai-responses"),
                ApiRoute(one, self.delete, methods=["DELETE"], client_format="openai-responses"),
                ApiRoute(f"{one}/input_items", self.input_items, methods=["GET"], client_format="openai-responses"),
            ]
        return out

    async def get(self, request: Request) -> Response:
        if request.query_params.get("stream", "").lower() == "true":
            raise ProxyError(400, "stream: a stored response is returned whole, not streamed again", param="stream")
        async with unavailable_as_503("the response store"):
            return JSONResponse((await self._found(request))[2].response)

    async def delete(self, request: Request) -> Response:
        async with unavailable_as_503("the response store"):
            owner, response_id, stored = await self._found(request)
            await self._forget(owner, {response_id}, list(stored.items()))
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        """The response's own input items (references shown as the items they name while stored)."""
        query = request.query_params
        limit = query.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            raise ProxyError(400, "limit: an integer from 1 to 100", param="limit")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ProxyError(400, "order: asc or desc", param="order")
        async with unavailable_as_503("the response store"):
            owner, _, stored = await self._found(request)
            items = await self._resolve(owner, stored.input, None)
        if order == "desc":
            items.reverse()
        if after := query.get("after"):
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise ProxyError(400, f"after: no input item with id '{after}' in this response", param="after")
            items = items[ids.index(after) + 1:]
        page = items[: int(limit)]
        return JSONResponse({
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > len(page),
        })


@dataclass(slots=True)
class Exchange:
    """One OpenAI request in either mode (API, SDK): its plan, and its answer kept when it asks to be."""

    fmt: OpenAIFormat
    plan: Plan
    #: Keeps the answer; None: nothing to keep.
    save: Callable[[Item], Awaitable[None]] | None

    async def _keep(self, response: Item) -> None:
        if self.save is not None and response.get("status") in ("completed", "incomplete"):
            await self.save(response)

    async def answer(self, message: dict[str, Any]) -> Item:
        """The client's whole answer to an Anthropic ``message``, kept."""
        answer = self.fmt.whole(message, self.plan)
        await self._keep(answer)
        return answer

    def stream(self, events: AsyncIterator[ServerSentEvent]) -> tuple[AsyncIterator[bytes], StreamTranslator[Any]]:
        """The client's frames of an Anthropic stream, and their translator (its usage). The response is
        kept *before* its ``response.completed`` goes out, so a client that continues it at once finds it."""
        translator = self.fmt.translator(self.plan)
        frames = translate_stream(events, translator)
        if self.save is None:
            return frames, translator

        async def kept() -> AsyncIterator[bytes]:
            saved = None
            async for frame in frames:
                response = getattr(translator, "response", None)
                if saved is None and response is not None:
                    saved = response
                    await self._keep(saved)
                yield frame

        return kept(), translator
