"""CPU-bound request work off the event loop.

The event loop only moves bytes and awaits: parsing and validating a large JSON body,
tokenising text, resolving options and checking a request's samples, building graphs and
encoding a large response run in worker threads (`run_cpu`), so GET /healthz and every other
request keep being answered (docs/api.md "Limits"). Model work runs on the scheduler's model
thread (service/scheduler.py).

- `OffloadRoute`: the route class of every router. A JSON body of at least
  `OFFLOAD_MIN_BYTES` is parsed (json.loads) and validated against the route's body model in a
  worker thread; FastAPI then gets the validated model (validating a model instance again is
  free). Errors are the ones FastAPI raises itself (RequestValidationError, or its 400 "error
  parsing the body" with the cause), so service/errors.py answers them unchanged.
- `run_cpu(fn, ...)`: a blocking call in a worker thread; the request may be cancelled (its
  client left) while it runs, and then does not wait for it.
- `dump_spliced(head, items)`: a large response model's JSON bytes made an element at a time,
  the bytes FastAPI's own serialisation of the whole model would give. A single C call (a
  pydantic validation or serialisation, json.loads) holds the GIL, and so the event loop, for
  its whole duration even in a worker thread: large bodies and responses are handled in parts.
"""

from __future__ import annotations

import contextlib
import email.message
import functools
import gc
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import anyio
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

T = TypeVar("T")

# bodies smaller than this are parsed on the loop, as FastAPI does (well under a millisecond)
OFFLOAD_MIN_BYTES = 32 * 1024
# worker threads for request preparation at a time (they share the GIL; more would only
# add memory: each may hold a parsed body)
PREP_THREADS = 4

_limiter: anyio.CapacityLimiter | None = None

# body models validated in parts (a large request in one pydantic call would hold the GIL, and
# so the event loop, for its whole duration): model -> function(data, settings) returning the
# validated model, raising RequestValidationError as FastAPI would, or an ApiError (e.g. a
# budget checked before validating); service/routers/graph.py registers one
PART_VALIDATORS: dict[type, Callable[[Any, Any], Any]] = {}


def _prep_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:  # created inside the running loop
        _limiter = anyio.CapacityLimiter(PREP_THREADS)
    return _limiter


async def run_cpu(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) in a worker thread. Cancelling the caller (client gone) does not
    wait for the thread: its result is dropped."""
    return await anyio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs),
        limiter=_prep_limiter(),
        abandon_on_cancel=True,
    )


_gc_lock = threading.Lock()
_gc_holders = 0


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a worker builds many objects (a large graph):
    a full collection over them would hold the GIL, and so the event loop, ~0.1-0.2 s at a
    time. Refcounting still frees everything that is not a cycle; collection resumes when the
    last holder leaves."""
    global _gc_holders
    with _gc_lock:
        _gc_holders += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                gc.enable()


def _is_json(content_type: str | None) -> bool:
    """FastAPI's own rule for reading a body as JSON (application/json or */*+json)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _parse(body: bytes, field: Any, settings: Any = None) -> Any:
    """json.loads + validation against the body field, raising what FastAPI would raise."""
    with no_cyclic_gc():  # a large body is many objects: no full collection over them
        return _parse_body(body, field, settings)


def _parse_body(body: bytes, field: Any, settings: Any) -> Any:
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", e.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": e.msg},
                }
            ],
            body=e.doc,
        ) from e
    except Exception as e:  # not UTF-8, nested too deeply, too many digits
        raise HTTPException(400, "There was an error parsing the body") from e
    in_parts = PART_VALIDATORS.get(field.field_info.annotation)
    if in_parts is not None:
        return in_parts(data, settings)
    value, errors = field.validate(data, {}, loc=("body",))
    if errors:
        raise RequestValidationError(errors, body=data)
    return value


def validation_error(
    e: ValidationError, loc: tuple[Any, ...], body: Any
) -> RequestValidationError:
    """A part's pydantic error as FastAPI reports a body's: each location under ("body", *loc)."""
    errors = [
        {**err, "loc": ("body", *loc, *err.get("loc", ()))} for err in e.errors(include_url=False)
    ]
    return RequestValidationError(errors, body=body)


def dump_spliced(head: BaseModel, items: list[bytes], exclude_none: bool = False) -> bytes:
    """The JSON of `head`, whose last field is an empty list, with `items` (each an element's
    JSON) in that list: the bytes of the whole model's own serialisation, made in parts so no
    single call holds the GIL for all of it."""
    empty = head.__pydantic_serializer__.to_json(head, exclude_none=exclude_none)
    if not empty.endswith(b"[]}"):
        raise ValueError("the model's last field is not an empty list")
    return empty[:-3] + b"[" + b",".join(items) + b"]}"


class OffloadRoute(APIRoute):
    """APIRoute whose large JSON bodies are parsed and validated off the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        if field is None or getattr(self, "_embed_body_fields", False):
            return handler

        async def offloaded(request: Request) -> Response:
            if request.method == "POST" and _is_json(request.headers.get("content-type")):
                body = await request.body()
                if len(body) >= OFFLOAD_MIN_BYTES:
                    # FastAPI's `await request.json()` returns this cached value, and its
                    # validation of a model instance returns it as is
                    settings = getattr(request.app.state, "settings", None)
                    request._json = await run_cpu(_parse, body, field, settings)
            return await handler(request)

        return offloaded
