"""The ASGI app of ``spiritlm serve`` (Starlette; uvicorn runs it).

Routes:

* ``GET /``: the page (``static/index.html``, no build step).
* ``GET /api/info``: what is loaded (model, speech tokenizer, vocoder), the limits, the counters.
* ``POST /api/generate``: one JSON answer (``text``, ``tokens``, ``segments``, ``audio_wav_base64``:
  a float32 WAV, ``timings``).
* ``POST /api/stream``: the answer as server-sent events while it is generated (``queued``,
  ``prompt``, ``text``, ``units``, ``audio``, ``done`` or ``error``; see :mod:`spiritlm.serve.engine`).

Both POST routes take ``multipart/form-data`` (fields of
:class:`~spiritlm.serve.engine.GenerationRequest`, the upload in the ``audio`` file field) or a
JSON object (the upload as ``audio_base64``). A refused request is answered with its HTTP status
and ``{"error": message, "field": name}``; a full queue with 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from spiritlm.errors import one_line
from spiritlm.serve.engine import Busy, Cancelled, Engine, GenerationRequest, RequestError, parse_request

STATIC = Path(__file__).with_name("static")
log = logging.getLogger("spiritlm.serve")


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuses a request body over ``limit`` bytes (413), by its Content-Length
    or, when it has none, while it is read."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(self.limit, int(length))(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int, size: int | None) -> JSONResponse:
    got = f"{size / 2**20:.1f} MiB" if size is not None else "more"
    err = RequestError(f"upload of {got}: larger than this server's {limit / 2**20:g} MiB (spiritlm serve --max_upload_mb)",
                       status=413, field="audio")
    return _error(err)


def _error(err: RequestError) -> JSONResponse:
    headers = {"Retry-After": "5"} if isinstance(err, Busy) else None
    return JSONResponse({"error": err.message, "field": err.field, "status": err.status}, status_code=err.status,
                        headers=headers)


def sse(event: dict[str, Any]) -> str:
    """One server-sent event: ``event: <type>`` and the JSON of the whole dict."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


async def read_request(request: Request, limit: int) -> GenerationRequest:
    """The request's fields and upload (multipart form or JSON)."""
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("application/json"):
            try:
                values = json.loads(await request.body() or b"{}")
            except ValueError:
                raise RequestError("the body is not valid JSON") from None
            if not isinstance(values, dict):
                raise RequestError("the body must be a JSON object of request fields")
            audio, name = None, "audio_base64"
            if values.get("audio_base64"):
                try:
                    audio = base64.b64decode(values.pop("audio_base64"), validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise RequestError("audio_base64: not base64", field="audio") from None
            values.pop("audio_base64", None)
            return parse_request(values, audio, name)
        if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            async with request.form(max_files=1, max_fields=64) as form:
                values: dict[str, Any] = {}
                audio, name = None, "upload"
                for key, value in form.multi_items():
                    if hasattr(value, "read"):  # an UploadFile
                        if key != "audio":
                            raise RequestError(f"file field {key!r}: the upload goes in the field 'audio'", field=key)
                        audio, name = await value.read(), value.filename or "upload"
                    else:
                        values[key] = value
            return parse_request(values, audio, name)
    except _TooLarge:
        raise RequestError(f"upload larger than this server's {limit / 2**20:g} MiB (spiritlm serve --max_upload_mb)",
                           status=413, field="audio") from None
    raise RequestError(f"content type {ctype or 'none'!r}: send multipart/form-data or application/json", status=415)


def create_app(engine: Engine) -> Any:
    """The ASGI app serving ``engine`` (wrapped in the upload-size limit)."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def info(request: Request) -> Response:
        return JSONResponse(engine.info())

    async def checked(request: Request) -> GenerationRequest:
        req = await read_request(request, engine.limits.max_upload_bytes)
        return await run_in_threadpool(engine.check, req)  # decoding an upload does not block the loop

    async def generate(request: Request) -> Response:
        try:
            req = await checked(request)
            future = engine.scheduler.submit(engine.run_full, req)
            out = await asyncio.wrap_future(future)
        except Busy as err:
            engine.stats["refused"] += 1
            return _error(err)
        except RequestError as err:
            return _error(err)
        except Exception as exc:  # a bug: the answer says so, the server goes on
            log.exception("generate failed")
            return _error(RequestError(f"internal error: {type(exc).__name__}: {one_line(exc)}", status=500))
        wav = out.pop("audio_wav")
        out["audio_wav_base64"] = base64.b64encode(wav).decode("ascii") if wav is not None else None
        return JSONResponse(out)

    stream = _stream_route(engine, checked)

    app = Starlette(routes=[
        Route("/", page),
        Route("/api/info", info),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/stream", stream, methods=["POST"]),
    ])
    app.state.engine = engine
    return BodyLimit(app, engine.limits.max_upload_bytes)


def _stream_route(engine: Engine, checked: Callable[[Request], Awaitable[GenerationRequest]]) -> Callable[[Request], Awaitable[Response]]:
    """The ``/api/stream`` handler: queues the request on ``engine``'s scheduler and relays its
    events as server-sent events; a client that leaves cancels the work."""

    async def stream(request: Request) -> Response:
        try:
            req = await checked(request)
        except RequestError as err:
            return _error(err)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: dict[str, Any] | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is gone (server stopping)
                cancel.set()

        def work() -> None:
            try:
                if cancel.is_set():  # the client left while waiting
                    engine.stats["cancelled"] += 1
                    return
                engine.run_stream(req, emit, cancel)
            except Cancelled:
                pass
            except RequestError as err:
                emit(err.to_dict())
            except Exception as exc:
                log.exception("stream failed")
                emit({"type": "error", "message": f"internal error: {type(exc).__name__}: {one_line(exc)}", "status": 500,
                      "field": None})
            finally:
                emit(None)

        ahead = engine.scheduler.pending
        try:
            engine.scheduler.submit(work)
        except Busy as err:
            engine.stats["refused"] += 1
            return _error(err)

        async def events():
            try:
                yield sse({"type": "queued", "ahead": ahead})
                while (event := await queue.get()) is not None:
                    yield sse(event)
            finally:  # finished, or the client disconnected (Starlette cancels this generator)
                cancel.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return stream


@contextlib.contextmanager
def background_server(engine: Engine, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serves ``engine`` with uvicorn on a thread of this process; yields the base URL.

    ``port=0`` takes a free port. Tests and ``benchmarks/bench_serve.py`` use it; the server stops
    when the block ends.
    """
    import uvicorn

    sock = socket.create_server((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="spiritlm-serve-http", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server thread ended before it started listening")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
