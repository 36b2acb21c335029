"""``captioner serve``: a web page and a JSON API for captioning photos (FastAPI; the ``serve`` extra).

- ``GET /``: the page (``captioner/serving/static``: plain HTML, CSS and JavaScript, no build step);
- ``POST /api/caption``: multipart, one or more files in the field ``files``, form fields ``beam_size``,
  ``max_length`` and ``guided`` → ``{"results": [{"filename", "caption", "beams": [{"caption", "log_prob"}], "tags",
  "confidence", "needs_review", "ms"}]}`` (:data:`CAPTION_DOC`). A file that is not an image, is corrupt or is a
  decompression bomb makes the answer 400 with ``errors`` naming it, while the other files of the request are still
  captioned (in ``results``);
  A file that fails to decode, whatever Pillow raises, is reported the same way; so is a file over the request's
  pixel budget (``max_request_megapixels``, by the size its header declares: it is not decoded);
- ``GET /healthz``, ``GET /api/model`` (the model card's facts, without local paths or training commands), ``GET
  /docs`` and ``GET /redoc`` (OpenAPI; Swagger UI and ReDoc served from the ``fastapi-offline`` package, no CDN).

Limits (:class:`captioner.serving.settings.ServeSettings`): a request body above ``max_upload_mb`` → 413 (checked
before the body is parsed), a body that stalls → 408; more than ``max_queue`` requests waiting for the model → 503;
uploads are decoded one at a time and preprocessed at once (:mod:`captioner.serving.uploads`), so memory is bounded
by one decoded photo, not by the files in flight; the model runs on one worker thread, which captions the requests
waiting together as one batch (:mod:`captioner.serving.batcher`). Exposure (:mod:`captioner.serving.middleware`): a
``Host`` outside ``allowed_hosts`` → 400, a cross-origin POST → 403 unless its origin is in ``cors_origins``.
Connections (header deadline, connection cap, graceful shutdown) are :mod:`captioner.serving.connections`.
"""

import asyncio
import dataclasses
import functools
from contextlib import asynccontextmanager
from importlib import resources

import torch
from fastapi import File, Form, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.middleware.cors import CORSMiddleware

from captioner.generation import GenerationConfig, Hypothesis
from captioner.pipeline import Captioner
from captioner.serving.batcher import Batcher, QueueFull
from captioner.serving.middleware import BodyLimit, ExposureGuard, OwnOriginOnly
from captioner.serving.settings import ServeSettings
from captioner.serving.uploads import UploadReader, release_memory

MAX_BEAM, MAX_LENGTH, MAX_FILES = 10, 50, 32
# Model-card summary lines /api/model repeats: what the model is, never where it was made or how (local paths,
# training commands)
CARD_FACTS = ("Encoder", "Decoder", "Preprocessing", "Vocabulary", "Training:", "Weights stored")
CAPTION_DOC = """Caption the photos sent in the multipart field `files` (at most `max_files` per request, within the
request's upload size and pixel budget: `GET /api/model` tells the limits). Each photo's result:

- `filename`: the upload's file name;
- `caption`: the best caption; `beams`: the n-best list (`caption`, `log_prob`), best first;
- `tags`: the image tags the caption was guided by, `[{"word", "prob"}]` (`prob`: the tag's probability from the
  encoder's ImageNet head), or null when the caption was not guided;
- `confidence`: the calibrated probability in [0, 1] that the caption is right, or null when the model has no
  confidence model;
- `needs_review`: true when `confidence` is below the server's `--min-confidence` (false when it is null);
- `ms`: milliseconds spent on the photo.

A file that cannot be captioned (not an image, damaged, a decompression bomb, over the pixel budget) makes the answer
400 with `errors` naming it, while the request's other photos are still captioned in `results`. `guided=true` for a
model that cannot tag images (no ImageNet classifier) is answered 422."""


class TagResult(BaseModel):
    word: str = Field(description="the tag's word, which the caption was asked to contain")
    prob: float = Field(description="its probability from the encoder's ImageNet head")


class Beam(BaseModel):
    caption: str
    log_prob: float = Field(description="the caption's log-probability")


class CaptionResult(BaseModel):
    filename: str
    caption: str = Field(description="the best caption")
    beams: list[Beam] = Field(description="the n-best list, best first")
    tags: list[TagResult] | None = Field(description="the image tags the caption was guided by; null: not guided")
    confidence: float | None = Field(description="the probability in [0, 1] that the caption is right; null: the "
                                     "model has no confidence model")
    needs_review: bool = Field(description="confidence is below the server's --min-confidence")
    ms: float = Field(description="milliseconds spent on this photo")


class FileError(BaseModel):
    filename: str
    error: str = Field(description="why the file could not be captioned")


class Captions(BaseModel):
    results: list[CaptionResult]


class PartlyCaptioned(Captions):
    detail: str
    errors: list[FileError] = Field(description="the files that could not be captioned")


def model_facts(model: Captioner, model_dir, settings: ServeSettings | None = None) -> dict:
    """What ``GET /api/model`` answers: the configuration's main facts and the model card's summary lines about the
    model itself (:data:`CARD_FACTS`); the model directory by its name only, no local path or training command; the
    request limits and review threshold of ``settings``, which the page keeps to."""
    settings = settings or ServeSettings()
    cfg = model.config
    card = model_dir / "README.md" if model_dir is not None else None
    lines = card.read_text(encoding="utf-8").splitlines() if card is not None and card.is_file() else []
    summary = []
    for line in lines[1:]:
        if line.startswith("## "):
            break
        if line.startswith("- ") and line[2:].startswith(CARD_FACTS):
            summary.append(line[2:])
    return {"model": model_dir.name if model_dir is not None else None, "encoder": cfg.encoder,
            "inject": cfg.inject, "cell": cfg.cell, "hidden_dim": cfg.hidden_dim, "num_decoders": cfg.num_decoders,
            "vocab_size": cfg.vocab_size, "no_repeat_ngram": cfg.no_repeat_ngram, "card": summary,
            "guided": bool(getattr(cfg, "guided", False)),
            "confidence": getattr(model, "confidence_model", None) is not None,
            "min_confidence": settings.min_confidence,
            "limits": {"max_beam_size": MAX_BEAM, "max_length": MAX_LENGTH, "max_files": MAX_FILES,
                       "max_upload_mb": settings.max_upload_mb,
                       "max_request_megapixels": settings.max_request_megapixels}}


def create_app(model: Captioner, model_dir=None, settings: ServeSettings | None = None, warm_up: bool = True,
               **overrides):
    """The FastAPI application around a loaded model (see the module docstring).

    Args:
        model: the captioner (PyTorch or ONNX Runtime: anything with ``transform``, ``encode``, ``caption_features``).
        model_dir: its directory (for ``/api/model``'s model-card facts).
        settings: limits and exposure (:class:`captioner.serving.settings.ServeSettings`); ``overrides`` replace
            single fields (``max_upload_mb=1``).
        warm_up: build the encoder and caption a blank image first, so that the first request does not pay for it.
    """
    settings = dataclasses.replace(settings or ServeSettings(), **overrides)
    if warm_up:
        from PIL import Image

        side = model.config.preprocess.crop
        model.caption_images([Image.new("RGB", (side, side))], GenerationConfig(method="greedy", max_length=2))
    batcher = Batcher(functools.partial(caption_pixels, model), max_queue=settings.max_queue,
                      max_batch=settings.max_batch)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop(settings.shutdown_timeout)

    app = FastAPIOffline(title="captioner", description="Caption photos with a captioner model.", lifespan=lifespan,
                         swagger_ui_parameters={"validatorUrl": None})  # docs assets served locally, no validator
    app.state.batcher, app.state.facts = batcher, model_facts(model, model_dir, settings)
    app.state.uploads = UploadReader(model.transform, model.config.preprocess.resize,
                                     int(settings.max_request_megapixels * 1e6))
    _add_middleware(app, settings)
    _add_pages(app)
    _add_api(app, model, settings.min_confidence)
    return app


def caption_pixels(model: Captioner, pixels: list[torch.Tensor], config: GenerationConfig) -> list[list[Hypothesis]]:
    """The model on preprocessed photos (``(3, H, W)`` each, as ``caption_images`` makes them), for the batcher;
    the batch's memory is handed back to the system afterwards."""
    try:
        return model.caption_features(model.encode(torch.stack(pixels)), config)  # (B, 3, H, W) -> features
    finally:
        release_memory()


def _add_middleware(app, settings: ServeSettings) -> None:
    """Outermost first: the Host allow-list and cross-origin refusals, CORS for the allowed origins, the pages'
    content policy, body limits."""
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_upload_mb * 2**20), timeout=settings.body_timeout)
    app.add_middleware(OwnOriginOnly)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(ExposureGuard, allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins)


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


def _add_api(app, model: Captioner, min_confidence: float) -> None:
    refusals = {400: {"model": PartlyCaptioned, "description": "some files could not be captioned (the others are "
                      "in `results`), or too many files"},
                413: {"description": "the request body is over --max-upload-mb"},
                503: {"description": "the server is busy (--max-queue requests waiting); retry after Retry-After"}}

    @app.post("/api/caption", summary="caption one or more photos (multipart field 'files')",
              description=CAPTION_DOC, response_model=Captions, responses=refusals)
    async def caption(files: list[UploadFile] = File(..., description="the photos"),
                      beam_size: int = Form(3, ge=1, le=MAX_BEAM, description="beams per photo; 1 is greedy"),
                      max_length: int = Form(20, ge=1, le=MAX_LENGTH, description="longest caption in tokens"),
                      guided: bool | None = Form(None, description="guide the captions by the image tags; "
                                                 "unset: the model's own setting")):
        if len(files) > MAX_FILES:
            return JSONResponse({"detail": f"{len(files)} files: at most {MAX_FILES} per request"}, status_code=400)
        photos, errors = await app.state.uploads.read(files)
        config = GenerationConfig(beam_size=beam_size, max_length=max_length, n_best=beam_size, guided=guided)
        try:
            results = await _caption_photos(app.state.batcher, model, photos, config, min_confidence)
        except Refused as refusal:
            return JSONResponse({"detail": refusal.detail}, status_code=refusal.status, headers=refusal.headers)
        if errors:
            names = ", ".join(e["filename"] for e in errors)
            return JSONResponse({"detail": f"{len(errors)} of {len(files)} files could not be read: {names}",
                                 "results": results, "errors": errors}, status_code=400)
        return {"results": results}


class Refused(Exception):
    """A request refused as a whole: its status, ``detail`` and headers."""

    def __init__(self, status: int, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


async def _caption_photos(batcher: Batcher, model: Captioner, photos: list, config: GenerationConfig,
                          min_confidence: float) -> list[dict]:
    """The results of a request's decoded photos (:class:`captioner.serving.uploads.Prepared`), captioned by the
    batcher's worker.

    Raises:
        Refused: the queue is full (503), or guided decoding was asked of a model that cannot tag images (422).
    """
    if not photos:
        return []
    try:
        future = batcher.submit([photo.pixels for photo in photos], config)
    except QueueFull as err:
        raise Refused(503, str(err), {"Retry-After": "1"}) from None
    try:
        hypotheses, seconds = await asyncio.wrap_future(future)
    except ValueError:
        if not config.guided:
            raise
        raise Refused(422, "this model cannot guide captions by image tags (it has no ImageNet classifier); send "
                      "guided=false") from None
    return [_result(model, photo.filename, hyps, photo.seconds + seconds / len(photos), min_confidence)
            for photo, hyps in zip(photos, hypotheses)]


def _result(model: Captioner, name: str, hypotheses: list[Hypothesis], seconds: float,
            min_confidence: float) -> dict:
    """One photo's entry of ``results`` (:class:`CaptionResult`) from its hypotheses, best first."""
    best = hypotheses[0]
    beams = [{"caption": model.vocab.decode(h.tokens), "log_prob": round(float(h.log_prob), 4)} for h in hypotheses]
    tags = None if best.tags is None else [{"word": t.word, "prob": round(float(t.prob), 4)} for t in best.tags]
    confidence = None if best.confidence is None else float(best.confidence)
    return {"filename": name, "caption": beams[0]["caption"], "beams": beams, "tags": tags,
            "confidence": None if confidence is None else round(confidence, 4),
            "needs_review": confidence is not None and confidence < min_confidence, "ms": round(1000 * seconds, 1)}
