"""``captioner serve``: a web page and a JSON API for captioning photos (FastAPI; the ``serve`` extra).

- ``GET /``: the page (``captioner/serving/static``: plain HTML, CSS and JavaScript, no build step);
- ``POST /api/caption``: multipart, one or more files in the field ``files``, form fields ``beam_size`` and
  ``max_length`` → ``{"results": [{"filename", "caption", "beams": [{"caption", "log_prob"}], "ms"}]}``. A file that
  is not an image, is corrupt or is a decompression bomb makes the answer 400 with ``errors`` naming it, while the
  other files of the request are still captioned (in ``results``);
- ``GET /healthz``, ``GET /api/model`` (the model card's facts), ``GET /docs`` (OpenAPI, as FastAPI gives it).

Limits: a request body above ``max_upload_mb`` → 413 (checked before the body is parsed); more than ``max_queue``
requests waiting for the model → 503; the model runs on one worker thread, which captions the requests waiting
together as one batch (:mod:`captioner.serving.batcher`).
"""

import asyncio
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from captioner.generation import GenerationConfig
from captioner.images import ImageLoadError, decode_image
from captioner.pipeline import Captioner
from captioner.serving.batcher import Batcher, QueueFull

MAX_BEAM, MAX_LENGTH, MAX_FILES = 10, 50, 32


class BodyLimit:
    """ASGI middleware: answer 413 to any request whose body exceeds ``max_bytes`` (by its Content-Length, or
    while reading it), before the app parses it; the app then reads the body from memory."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        megabytes = self.max_bytes / 2**20
        response = JSONResponse({"detail": f"upload too large: the limit is {megabytes:g} MB per request "
                                           "(captioner serve --max-upload-mb)"}, status_code=413)
        await response(scope, receive, send)


def model_facts(model: Captioner, model_dir) -> dict:
    """What ``GET /api/model`` answers: the configuration's main facts and the model card's summary lines."""
    cfg = model.config
    card = model_dir / "README.md" if model_dir is not None else None
    lines = card.read_text(encoding="utf-8").splitlines() if card is not None and card.is_file() else []
    summary = []
    for line in lines[1:]:
        if line.startswith("## "):
            break
        if line.startswith("- "):
            summary.append(line[2:])
    return {"model": str(model_dir), "encoder": cfg.encoder, "inject": cfg.inject, "cell": cfg.cell,
            "hidden_dim": cfg.hidden_dim, "num_decoders": cfg.num_decoders, "vocab_size": cfg.vocab_size,
            "no_repeat_ngram": cfg.no_repeat_ngram, "card": summary,
            "limits": {"max_beam_size": MAX_BEAM, "max_length": MAX_LENGTH, "max_files": MAX_FILES}}


def create_app(model: Captioner, model_dir=None, max_upload_mb: float = 10, max_queue: int = 16,
               max_batch: int = 32, warm_up: bool = True):
    """The FastAPI application around a loaded model (see the module docstring); ``warm_up`` builds the encoder and
    captions a blank image first, so that the first request does not pay for it."""
    if warm_up:
        from PIL import Image

        side = model.config.preprocess.crop
        model.caption_images([Image.new("RGB", (side, side))], GenerationConfig(method="greedy", max_length=2))
    batcher = Batcher(model.caption_images, max_queue=max_queue, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="captioner", description="Caption photos with a captioner model.", lifespan=lifespan)
    app.state.batcher, app.state.facts = batcher, model_facts(model, model_dir)
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 2**20))
    _add_pages(app)
    _add_api(app, model)
    return app


def _add_pages(app) -> None:
    static = resources.files("captioner.serving") / "static"
    index = (static / "index.html").read_text(encoding="utf-8")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return index

    @app.get("/healthz", summary="liveness: the model is loaded and the worker runs")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/model", summary="the model's configuration and model-card facts")
    async def about() -> dict:
        return app.state.facts


def _add_api(app, model: Captioner) -> None:
    @app.post("/api/caption", summary="caption one or more photos (multipart field 'files')")
    async def caption(files: list[UploadFile] = File(..., description="the photos"),
                      beam_size: int = Form(3, ge=1, le=MAX_BEAM, description="beams per photo; 1 is greedy"),
                      max_length: int = Form(20, ge=1, le=MAX_LENGTH, description="longest caption in tokens")):
        if len(files) > MAX_FILES:
            return JSONResponse({"detail": f"{len(files)} files: at most {MAX_FILES} per request"}, status_code=400)
        decoded, errors = await _decode_all(files)
        results = []
        if decoded:
            config = GenerationConfig(beam_size=beam_size, max_length=max_length, n_best=beam_size)
            try:
                future = app.state.batcher.submit([image for _, image, _ in decoded], config)
            except QueueFull as err:
                return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})
            hypotheses, seconds = await asyncio.wrap_future(future)
            results = [_result(model, name, hyps, decode_s + seconds / len(decoded))
                       for (name, _, decode_s), hyps in zip(decoded, hypotheses)]
        if errors:
            names = ", ".join(e["filename"] for e in errors)
            return JSONResponse({"detail": f"{len(errors)} of {len(files)} files could not be read: {names}",
                                 "results": results, "errors": errors}, status_code=400)
        return {"results": results}


async def _decode_all(files: list[UploadFile]) -> tuple[list[tuple[str, object, float]], list[dict]]:
    """Each upload decoded (off the event loop): ``[(filename, image, seconds)]`` and ``[{"filename", "error"}]``."""
    decoded, errors = [], []
    for upload in files:
        name = upload.filename or "(unnamed)"
        t0 = time.perf_counter()
        try:
            image = await run_in_threadpool(decode_image, await upload.read())
        except ImageLoadError as err:
            errors.append({"filename": name, "error": str(err)})
            continue
        decoded.append((name, image, time.perf_counter() - t0))
    return decoded, errors


def _result(model: Captioner, name: str, hypotheses, seconds: float) -> dict:
    beams = [{"caption": model.vocab.decode(h.tokens), "log_prob": round(float(h.log_prob), 4)} for h in hypotheses]
    return {"filename": name, "caption": beams[0]["caption"], "beams": beams, "ms": round(1000 * seconds, 1)}
