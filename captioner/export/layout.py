"""An ONNX export directory without PyTorch: its file names and manifest, where a model directory's export is kept in
the cache, and the check that a directory is a usable export.

Nothing here imports torch or onnxruntime, so that a cold ``captioner caption`` finds and checks its export (and
:mod:`captioner.export.sessions` loads the graphs) without either until a session is made.
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "onnx_manifest.json"
FORMAT_VERSION = 2  # 2: classifier graph and rows for the tag words
GRAPHS = {"encoder": "encoder.onnx", "decoder_init": "decoder_init.onnx", "decoder_step": "decoder_step.onnx"}
CLASSIFIER = "classifier.onnx"  # optional: encoders without an ImageNet head have none
EXPORT_FILES = (*GRAPHS.values(), "config.json", "vocab.json", MANIFEST)
MODEL_KEY_FILES = ("model.safetensors", "config.json", "vocab.json", "tag_calibration.json", "confidence.json")


class ExportError(RuntimeError):
    """An export that cannot be written; the message says what to do."""


class ExportLoadError(RuntimeError):
    """A directory that is not a usable ONNX export; the message says what to do."""


def export_cache_dir(model_dir: Path, name: str) -> Path:
    """Where a model directory's ONNX export is kept: ``onnx/NAME-VERSION-fFORMAT-HASH`` in
    :func:`captioner.fileio.cache_root`, keyed by captioner's version, the export format and the SHA-256 of the
    model's files, so an upgrade or other weights get a fresh export."""
    from captioner.fileio import cache_root, files_sha256
    from captioner.version import __version__

    files = [model_dir / f for f in MODEL_KEY_FILES]
    digest = files_sha256([f for f in files if f.is_file()])[:16]
    return cache_root() / "onnx" / f"{name}-{__version__}-f{FORMAT_VERSION}-{digest}"


def default_export_dir() -> Path:
    """Where the embedded default model's ONNX export is kept (see :func:`export_cache_dir`)."""
    from captioner.models.files import DEFAULT_MODEL_DIR

    return export_cache_dir(DEFAULT_MODEL_DIR, "default")


def safe_name(directory: Path) -> str:
    """A short file-name-safe label for a model directory (its name, or its run's name for ``RUN/model``)."""
    name = directory.parent.name if directory.name == "model" else directory.name
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40] or "model"


def is_default(model: str | Path | None) -> bool:
    """Whether ``model`` names the embedded default model (None or ``default``)."""
    return model is None or str(model) == "default"


def export_location(model: str | Path | None) -> tuple[Path, bool]:
    """Where the export of ``model`` is: the directory itself when it is an export (``captioner export``'s output),
    else its export in the cache (None or ``default``: the embedded default model's); and whether it is an export
    already, or must be written first (:func:`captioner.export.runtime.cached_export`)."""
    from captioner.models.files import resolve_model_dir

    if not is_default(model) and (Path(model) / MANIFEST).is_file():
        return Path(model), True
    if is_default(model):
        directory = default_export_dir()
    else:
        source = resolve_model_dir(model)
        directory = export_cache_dir(source, safe_name(source))
    return directory, (directory / MANIFEST).is_file()


def check_export_dir(directory: Path) -> dict:
    """Read and check an export directory's manifest.

    Raises:
        ExportLoadError: the directory is missing, a PyTorch model directory, incomplete or of a newer format.
    """
    if not directory.is_dir():
        raise ExportLoadError(f"{directory} is not a directory; pass a directory written by `captioner export`")
    if not (directory / MANIFEST).is_file():
        hint = "a PyTorch model directory" if (directory / "model.safetensors").is_file() else "not an ONNX export"
        raise ExportLoadError(f"{directory} is {hint} (no {MANIFEST}); run `captioner export --model {directory} "
                              f"--out EXPORT_DIR` first and pass --model EXPORT_DIR")
    missing = [name for name in EXPORT_FILES if not (directory / name).is_file()]
    if missing:
        raise ExportLoadError(f"{directory} is an incomplete ONNX export (missing {', '.join(missing)}); export the "
                              "model again with `captioner export`")
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ExportLoadError(f"{directory} was exported by a newer captioner (format {manifest['format_version']}, "
                              f"this one reads {FORMAT_VERSION}); upgrade captioner or export again")
    return manifest
