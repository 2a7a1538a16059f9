"""The Responses API's response store: ``store``, ``previous_response_id`` and ``item_reference``.

Clients such as the Vercel AI SDK (``store`` on by default) refer to earlier output by id instead
of sending it again, so ccproxy keeps each stored response in Redis (the stack's, so any gateway
replica can continue any response; the embedded one under ``ccproxy serve``), under
``REDIS__KEY_PREFIX`` and the caller's client key id:

- ``responses:{owner}:r:{id}``: one response, compactly: its *own* input items (what that request
  sent, ``item_reference`` items kept as references), the response object (its output items,
  reasoning items with their ``encrypted_content`` included, so thinking round-trips) and the id
  of its predecessor. A conversation is rebuilt by walking those pointers, never copied per turn.
- ``responses:{owner}:items``: item id -> response id, to resolve ``item_reference``.
- ``responses:{owner}:meta`` (response id -> size, time, item ids) and ``responses:{owner}:bytes``
  (their total): the per-key size cap evicts the oldest responses first.

Every key lives ``RESPONSES__RETENTION_DAYS`` (a Redis TTL), renewed for a whole chain when a
later response continues it. Another key's responses do not exist for a caller (404, never 403):
the owner is part of every key name. Nothing stored is ever logged.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ccproxy_core.errors import ProxyError, validation_error
from ccproxy_core.identity import caller
from ccproxy_core.redis import UNAVAILABLE, as_text, unavailable_as_503
from ccproxy_core.settings import OpenAISettings, ResponsesSettings
from ccproxy_gateway.openai import ModelMap, OpenAIFormat, ResponsesPlan
from ccproxy_gateway.openai.request import Plan
from ccproxy_gateway.openai.responses_models import InputItem, ResponsesRequest
from ccproxy_gateway.routes import ApiRoute

log = logging.getLogger(__name__)

_ITEMS = TypeAdapter(list[InputItem])
#: Id prefixes OpenAI uses, for stored input items the client sent without an id.
_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def owner_of(request: Request) -> str:
    """Whose namespace a request uses: its caller's id (its client key's id; ``LEAD.id`` for the
    shared token, ``LOCAL.id`` when client auth is off; :mod:`ccproxy_core.identity`)."""
    return caller(request).id


def not_found(response_id: str) -> ProxyError:
    return ProxyError(404, f"Response with id '{response_id}' not found.", "not_found_error")


def _dump_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": req.input}]}]
    return [item.model_dump(mode="json", exclude_none=True, by_alias=True) for item in req.input]


def _with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as stored: each with an id (OpenAI lists input items by id), references as they are."""
    out = []
    for item in items:
        kind = str(item.get("type") or "message")
        if kind != "item_reference" and not item.get("id"):
            item = {**item, "id": f"{_ID_PREFIX.get(kind, 'item')}_{uuid.uuid4().hex}"}
        if kind == "message" and isinstance(item.get("content"), str):  # listed in OpenAI's shape
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item = {**item, "content": [{"type": part, "text": item["content"]}]}
        out.append(item)
    return out


@dataclass(slots=True)
class Turn:
    """What a request brings to the store: whose it is, whether to keep it, what came before."""

    owner: str
    store: bool
    previous: str | None
    #: The request's own input items, as they will be stored.
    own_input: list[dict[str, Any]] = field(default_factory=list)


class ResponseStore:
    def __init__(self, redis: Redis, settings: ResponsesSettings, key_prefix: str) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = f"{key_prefix}responses:"
        self.ttl = max(1, int(settings.retention_days * 86400))

    # -- keys ------------------------------------------------------------------------------------

    def _key(self, owner: str, response_id: str) -> str:
        return f"{self.prefix}{owner}:r:{response_id}"

    def _index(self, owner: str, what: str) -> str:
        """The key's ``items``, ``meta`` or ``bytes`` index (module docstring)."""
        return f"{self.prefix}{owner}:{what}"

    # -- a request's input -----------------------------------------------------------------------

    async def prepare(self, owner: str, req: ResponsesRequest) -> tuple[ResponsesRequest, Turn]:
        """The request with its whole conversation in ``input`` (the chain before it, references
        resolved), and what to store once it is answered."""
        own = _dump_items(req)
        turn = Turn(owner=owner, store=req.store is not False, previous=req.previous_response_id, own_input=own)
        has_refs = any(item.get("type") == "item_reference" for item in own)
        if not req.previous_response_id and not has_refs:
            if turn.store:
                turn.own_input = _with_ids(own)
            return req, turn
        async with unavailable_as_503("the response store"):
            history = await self._chain_items(owner, req.previous_response_id) if req.previous_response_id else []
            resolved = await self._resolve(owner, own, "input")
        if turn.store:
            turn.own_input = _with_ids(own)
        try:
            items = _ITEMS.validate_python([*history, *resolved])
        except ValidationError as exc:  # a stored item this version cannot read
            raise validation_error(exc) from exc
        return req.model_copy(update={"input": items, "previous_response_id": None}), turn

    async def _chain_items(self, owner: str, response_id: str) -> list[dict[str, Any]]:
        """Input and output items of ``response_id`` and its predecessors, oldest first."""
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        next_id: str | None = response_id
        while next_id is not None:
            if len(records) >= self.settings.max_chain or next_id in seen:
                raise ProxyError(
                    400, f"previous_response_id: the conversation is longer than {self.settings.max_chain} "
                    "stored responses (RESPONSES__MAX_CHAIN); start a new one or send the whole conversation "
                    "in input", param="previous_response_id",
                )
            seen.add(next_id)
            record = await self._record(owner, next_id)
            if record is None:
                what = "Previous response" if next_id == response_id else "A response this conversation continues,"
                raise ProxyError(404, f"{what} with id '{next_id}' not found.", "not_found_error",
                                 param="previous_response_id")
            records.append(record)
            next_id = record.get("previous")
        await self._touch(owner, [r["response"]["id"] for r in records])
        items: list[dict[str, Any]] = []
        for record in reversed(records):
            items += await self._resolve(owner, record["input"], "previous_response_id")
            items += record["response"].get("output") or []
        return items

    async def _resolve(self, owner: str, items: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
        """``items`` with each ``item_reference`` replaced by the stored item it names."""
        refs = [i for i, item in enumerate(items) if item.get("type") == "item_reference"]
        if not refs:
            return items
        ids = [str(items[i].get("id")) for i in refs]
        owners = await self.redis.hmget(self._index(owner, "items"), ids)  # type: ignore[misc]
        found: dict[str, dict[str, Any]] = {}
        records: dict[str, dict[str, Any] | None] = {}
        for item_id, raw in zip(ids, owners, strict=True):
            response_id = raw.decode() if isinstance(raw, bytes) else raw
            if response_id is None:
                continue
            if response_id not in records:
                records[response_id] = await self._record(owner, response_id)
            record = records[response_id]
            if record is not None:
                for stored in [*record["input"], *(record["response"].get("output") or [])]:
                    if stored.get("id") == item_id and stored.get("type") != "item_reference":
                        found[item_id] = stored
        await self._touch(owner, [r for r, rec in records.items() if rec is not None])
        out = list(items)
        for i, item_id in zip(refs, ids, strict=True):
            if item_id not in found:
                at = f"input.{i}" if where == "input" else where
                raise ProxyError(404, f"Item with id '{item_id}' not found.", "not_found_error", param=at)
            out[i] = found[item_id]
        return out

    # -- reads -----------------------------------------------------------------------------------

    async def _record(self, owner: str, response_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self._key(owner, response_id))
        if raw is None:
            return None
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def _touch(self, owner: str, response_ids: list[str]) -> None:
        """Renew the retention of what a new request continues, and of the key's indexes."""
        pipe = self.redis.pipeline(transaction=False)
        for response_id in response_ids:
            pipe.expire(self._key(owner, response_id), self.ttl)
        for what in ("items", "meta", "bytes"):
            pipe.expire(self._index(owner, what), self.ttl)
        await pipe.execute()

    async def get(self, owner: str, response_id: str) -> dict[str, Any]:
        async with unavailable_as_503("the response store"):
            record = await self._record(owner, response_id)
        if record is None:
            raise not_found(response_id)
        response: dict[str, Any] = record["response"]
        return response

    async def input_items(self, owner: str, response_id: str) -> list[dict[str, Any]]:
        """The response's own input items (references shown as the items they name, when those
        are still stored), in the order they were sent."""
        async with unavailable_as_503("the response store"):
            record = await self._record(owner, response_id)
            if record is None:
                raise not_found(response_id)
            items: list[dict[str, Any]] = record["input"]
            out = []
            for item in items:
                if item.get("type") == "item_reference":
                    try:
                        item = (await self._resolve(owner, [item], "input"))[0]
                    except ProxyError:
                        pass  # its item is gone: listed as the reference it was
                out.append(item)
        return out

    # -- writes ----------------------------------------------------------------------------------

    async def save(self, turn: Turn, response: dict[str, Any]) -> None:
        """Keep an answered response. A Redis failure here is logged, not raised: the client has
        (or is getting) its answer, which matters more than being able to continue it."""
        if not turn.store:
            return
        try:
            await self._save(turn, response)
        except UNAVAILABLE as exc:
            log.warning("response store: could not keep a response (%s)", type(exc).__name__)

    async def _save(self, turn: Turn, response: dict[str, Any]) -> None:
        owner, response_id = turn.owner, str(response["id"])
        record = {"previous": turn.previous, "input": turn.own_input, "response": response}
        raw = orjson.dumps(record)
        item_ids = [str(i["id"]) for i in [*turn.own_input, *(response.get("output") or [])]
                    if i.get("id") and i.get("type") != "item_reference"]
        meta = orjson.dumps({"bytes": len(raw), "at": time.time(), "items": item_ids})
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key(owner, response_id), raw, ex=self.ttl)
        if item_ids:
            pipe.hset(self._index(owner, "items"), mapping=dict.fromkeys(item_ids, response_id))
        pipe.hset(self._index(owner, "meta"), mapping={response_id: meta})
        pipe.incrby(self._index(owner, "bytes"), len(raw))
        for what in ("items", "meta", "bytes"):
            pipe.expire(self._index(owner, what), self.ttl)
        total = (await pipe.execute())[-4]
        if int(total) > self.settings.max_bytes_per_key:
            await self._evict(owner)

    async def delete(self, owner: str, response_id: str) -> None:
        async with unavailable_as_503("the response store"):
            if not await self.redis.exists(self._key(owner, response_id)):
                raise not_found(response_id)
            raw = await self.redis.hget(self._index(owner, "meta"), response_id)  # type: ignore[misc]
            await self._forget(owner, {response_id: raw})

    async def _forget(self, owner: str, metas: dict[str, Any]) -> None:
        """Remove responses and their index entries (``metas``: response id -> its meta entry)."""
        pipe = self.redis.pipeline(transaction=True)
        freed = 0
        for response_id, raw in metas.items():
            meta = orjson.loads(raw) if raw else {}
            freed += int(meta.get("bytes", 0))
            pipe.delete(self._key(owner, response_id))
            pipe.hdel(self._index(owner, "meta"), response_id)
            if meta.get("items"):
                pipe.hdel(self._index(owner, "items"), *meta["items"])
        if freed:
            pipe.decrby(self._index(owner, "bytes"), freed)
        await pipe.execute()

    async def _evict(self, owner: str) -> None:
        """Over ``RESPONSES__MAX_BYTES_PER_KEY``: forget what expired, then the oldest responses
        until the key is under its cap again (approximate when replicas write at once)."""
        metas = {as_text(k): v
                 for k, v in (await self.redis.hgetall(self._index(owner, "meta"))).items()}  # type: ignore[misc]
        ids = list(metas)
        pipe = self.redis.pipeline(transaction=False)
        for response_id in ids:
            pipe.exists(self._key(owner, response_id))
        alive = await pipe.execute()
        expired = {r: metas.pop(r) for r, exists in zip(ids, alive, strict=True) if not exists}
        total = sum(int(orjson.loads(m).get("bytes", 0)) for m in metas.values())
        oldest = sorted(metas, key=lambda r: float(orjson.loads(metas[r]).get("at", 0)))
        evicted: dict[str, Any] = dict(expired)
        for response_id in oldest:
            if total <= self.settings.max_bytes_per_key:
                break
            total -= int(orjson.loads(metas[response_id]).get("bytes", 0))
            evicted[response_id] = metas[response_id]
        if evicted:
            await self._forget(owner, evicted)
            # The count, recomputed: what expired on its own was still in it.
            await self.redis.set(self._index(owner, "bytes"), max(total, 0), ex=self.ttl)


# --- what the routes use ---------------------------------------------------------------------------


async def plan_request(
    fmt: OpenAIFormat, raw: dict[str, Any], request: Request, store: ResponseStore | None, models: ModelMap,
    options: OpenAISettings,
) -> tuple[Plan, Turn | None]:
    """The request's plan, with its stored conversation filled in for a format that has one (no
    store: the translation refuses ``previous_response_id`` and ``item_reference``), and the turn
    to keep once it is answered (None: nothing to keep)."""
    req = fmt.parse(raw)
    turn = None
    if fmt.stored and store is not None:
        req, turn = await store.prepare(owner_of(request), req)
    plan = fmt.translate(req, models, options)
    if turn is not None and isinstance(plan, ResponsesPlan):  # what the response says about storage
        plan.echo["store"] = turn.store
        plan.echo["previous_response_id"] = turn.previous
    return plan, turn


async def keep(store: ResponseStore | None, turn: Turn | None, response: dict[str, Any]) -> None:
    if store is not None and turn is not None and response.get("status") in ("completed", "incomplete"):
        await store.save(turn, response)


def kept_stream(
    frames: AsyncIterator[bytes], translator: Any, store: ResponseStore | None, turn: Turn | None,
) -> AsyncIterator[bytes]:
    """The stream's frames, the response stored *before* its ``response.completed`` goes out, so a
    client that continues it at once finds it."""
    if store is None or turn is None:
        return frames

    async def kept() -> AsyncIterator[bytes]:
        saved = False
        async for frame in frames:
            if not saved and translator.response is not None:
                saved = True
                await keep(store, turn, translator.response)
            yield frame

    return kept()


class StoredResponseRoutes:
    """``GET /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``, ``DELETE
    /v1/responses/{id}``, as OpenAI documents them, over the caller's own responses."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def routes(self, prefix: str) -> list[BaseRoute]:
        return [
            ApiRoute(f"{prefix}/responses/{{response_id}}", self.get, methods=["GET"],
                     client_format="openai-responses"),
            ApiRoute(f"{prefix}/responses/{{response_id}}", self.delete, methods=["DELETE"],
                     client_format="openai-responses"),
            ApiRoute(f"{prefix}/responses/{{response_id}}/input_items", self.input_items, methods=["GET"],
                     client_format="openai-responses"),
        ]

    async def get(self, request: Request) -> Response:
        if request.query_params.get("stream", "").lower() == "true":
            raise ProxyError(400, "stream: a stored response is returned whole, not streamed again", param="stream")
        return JSONResponse(await self.store.get(owner_of(request), request.path_params["response_id"]))

    async def delete(self, request: Request) -> Response:
        response_id = request.path_params["response_id"]
        await self.store.delete(owner_of(request), response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        query = request.query_params
        limit_raw = query.get("limit", "20")
        if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= 100:
            raise ProxyError(400, "limit: an integer from 1 to 100", param="limit")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ProxyError(400, "order: asc or desc", param="order")
        items = await self.store.input_items(owner_of(request), request.path_params["response_id"])
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise ProxyError(400, f"after: no input item with id '{after}' in this response", param="after")
            items = items[ids.index(after) + 1:]
        page = items[: int(limit_raw)]
        return JSONResponse({
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > len(page),
        })


def stored_routes(store: ResponseStore, prefixes: tuple[str, ...]) -> list[BaseRoute]:
    routes = StoredResponseRoutes(store)
    return [route for prefix in prefixes for route in routes.routes(prefix)]
