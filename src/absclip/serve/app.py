"""The HTTP API (FastAPI): the page, ``/v1/classify``, ``/v1/explain``, ``/healthz``; errors as ``{"error": ...}``.

The app talks to a *backend* (:class:`LocalBackend` here: a :class:`Service` behind a
:class:`MicroBatcher`; :mod:`absclip.serve.ray_serve` has one that calls Ray Serve replicas), so the
local server and the Ray Serve deployment answer the same API with the same code.
"""

# no "from __future__ import annotations": FastAPI reads the routes' annotations, which name local imports
import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from typing import Any, Protocol

from absclip.errors import AbsclipError
from absclip.io.files import json_text
from absclip.serve.batching import MicroBatcher
from absclip.serve.page import page_html
from absclip.serve.service import Job, Service, parse_classes

log = logging.getLogger("absclip")

EXAMPLE = [{"label": "tabby cat", "score": 0.91}, {"label": "tiger cat", "score": 0.06}]


def require_web() -> None:
    """Raise the one-sentence error when the ``serve`` extra is not installed."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise AbsclipError("absclip serve needs FastAPI, uvicorn and python-multipart: "
                           "pip install 'absclip[serve]'.") from e


class Backend(Protocol):
    """What the app needs from the model side."""

    info: dict[str, Any]  # model, methods, classes (labels), method (default)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def classify(self, job: Job) -> list[dict[str, Any]]: ...
    async def explain(self, job: Job) -> bytes: ...
    def stats(self) -> dict[str, Any]: ...


def service_info(service: Service, method: str) -> dict[str, Any]:
    """Return what ``/healthz`` and the page show of a service: model, methods, default classes and method."""
    return {"model": service.model, "methods": service.methods, "classes": service.clf.classes, "method": method}


class LocalBackend:
    """A :class:`Service` in this process; concurrent classifications are batched by a :class:`MicroBatcher`."""

    def __init__(self, service: Service, *, method: str = "abs", max_wait_s: float = 0.005) -> None:
        self.service = service
        self.info = service_info(service, method)
        self.batcher = MicroBatcher(service.run_batch, max_batch=service.max_batch, max_wait_s=max_wait_s)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def classify(self, job: Job) -> list[dict[str, Any]]:
        return await self.batcher.submit(job)

    async def explain(self, job: Job) -> bytes:
        return await self.batcher.call(self.service.explain_png, job)

    def stats(self) -> dict[str, Any]:
        sizes = self.batcher.batch_sizes
        return {"batches": len(sizes), "images": sum(sizes), "largest_batch": max(sizes, default=0)}


class UploadLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413, refused from its Content-Length before
    anything is read, or as soon as the streamed body passes the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        message = f"The upload is larger than the server's limit of {limit / 2**20:g} MB."
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(send, 413, message)
            return
        seen = 0
        refused = False
        started = False

        async def limited_receive() -> dict:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    refused = True
                    if not started:
                        await _send_error(send, 413, message)
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped below
            return msg

        async def guarded_send(msg: dict) -> None:
            nonlocal started
            if refused:
                return
            started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json_text({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(backend: Backend, *, api_key: str | None = None, max_upload_bytes: int = 20 * 2**20,
               max_pixels: int | None = None, root_path: str = "") -> Any:
    """Return the ASGI application: FastAPI routes behind the upload limit.

    Args:
        backend: the model side (:class:`LocalBackend` or the Ray Serve one).
        api_key: when given, ``/v1/*`` needs it as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.
        max_upload_bytes: larger request bodies get 413 before they are read.
        max_pixels: images with more pixels are refused (decompression bombs); None: no limit.
        root_path: the path prefix a reverse proxy serves the app under (OpenAPI and docs use it).
    """
    require_web()
    from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, Response
    from starlette.exceptions import HTTPException

    from absclip._version import __version__
    from absclip.io.images import make_item
    from absclip.methods.base import get_method_class

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    app = FastAPI(title="absclip", version=__version__, lifespan=lifespan,
                  description="Zero-shot image classification with ABS (attention-based selection) and other "
                              "training-free methods; answers in the Hugging Face pipeline shape.")

    def error(status: int, message: str) -> Response:
        return Response(json_text({"error": message}), status_code=status, media_type="application/json")

    @app.exception_handler(AbsclipError)
    async def _user_error(_r: Request, e: AbsclipError) -> Response:
        return error(400, str(e))

    @app.exception_handler(HTTPException)
    async def _http_error(_r: Request, e: HTTPException) -> Response:
        return error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _form_error(_r: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        field = str(first.get("loc", ("", "?"))[-1])
        if first.get("type") == "missing":
            return error(400, f"The form field `{field}` is required (send a multipart/form-data request).")
        return error(400, f"The form field `{field}` is invalid: {first.get('msg', 'bad value')}.")

    @app.exception_handler(Exception)
    async def _server_error(_r: Request, e: Exception) -> Response:
        log.error("request failed: %s: %s", type(e).__name__, e)
        return error(500, f"The server failed on this request ({type(e).__name__}).")

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "A valid API key is required (header X-API-Key or Authorization: Bearer).")

    async def job_of(request: Request, image: Any, classes: str | None, method: str | None, top: int | None) -> Job:
        if classes is None and "classes" in await request.form():  # FastAPI reads an empty field as absent
            classes = ""
        method = backend.info["method"] if method in (None, "") else method
        get_method_class(method)  # unknown: one sentence with the valid names
        if top is not None and top < 1:
            raise AbsclipError(f"`top` must be at least 1, got {top}.")
        wanted = None if classes is None else parse_classes(classes)
        if wanted is not None and not wanted:
            raise AbsclipError("The class list is empty; give at least one class (or leave `classes` out).")
        data = await image.read()
        name = image.filename or "upload"
        item = await asyncio.to_thread(make_item, data, max_pixels=max_pixels, name=name)
        return Job(item=item, method=method, top=top or 5, classes=wanted)

    form_doc = {
        "image": File(..., description="the image file"),
        "classes": Form(None, description="class names, comma-separated or a JSON list (default: the server's)"),
        "method": Form(None, description="a method name (default: the server's, see /healthz)"),
        "top": Form(None, description="how many labels to return (default: 5)"),
    }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, what the server serves, and how its batches went (count, images, largest)."""
        return {"status": "ok", "model": backend.info["model"], "methods": backend.info["methods"],
                **backend.stats()}

    @app.get("/v1/classes")
    async def classes() -> dict[str, Any]:
        """The server's default class labels and method (what the page starts from)."""
        return {"classes": backend.info["classes"], "method": backend.info["method"],
                "methods": backend.info["methods"]}

    @app.post("/v1/classify", dependencies=[Depends(check_key)],
              responses={200: {"description": "ranked labels, best first",
                               "content": {"application/json": {"example": EXAMPLE}}}})
    async def classify(request: Request, image: UploadFile = form_doc["image"],
                       classes: str | None = form_doc["classes"],
                       method: str | None = form_doc["method"], top: int | None = form_doc["top"]) -> Response:
        """Rank the classes for one image: ``[{"label", "score"}]`` best first (Hugging Face pipeline shape)."""
        rows = await backend.classify(await job_of(request, image, classes, method, top))
        return Response(json_text(rows), media_type="application/json")

    @app.post("/v1/explain", dependencies=[Depends(check_key)], response_class=Response,
              responses={200: {"description": "the explanation picture", "content": {"image/png": {}}}})
    async def explain(request: Request, image: UploadFile = form_doc["image"],
                      classes: str | None = form_doc["classes"],
                      method: str | None = form_doc["method"], top: int | None = form_doc["top"]) -> Response:
        """The explanation picture (PNG) of ABS's prediction: attention map, crops, scores, description evidence."""
        png = await backend.explain(await job_of(request, image, classes, method, top))
        return Response(png, media_type="image/png")

    limited = UploadLimit(app, max_upload_bytes)
    if not root_path:
        return limited

    async def behind_proxy(scope: dict, receive: Any, send: Any) -> None:  # what uvicorn's --root-path does
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "root_path": root_path.rstrip("/") + scope.get("root_path", "")}
        await limited(scope, receive, send)

    return behind_proxy
