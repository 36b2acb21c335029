"""``captioner caption PATH...``: caption image files and directories."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from captioner.cli.common import (
    CliError,
    add_decoding_options,
    add_device_option,
    add_guided_options,
    add_image_options,
    add_model_option,
    apply_image_options,
    generation_config,
    load_model,
    positive_int,
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "caption", help="caption images",
        description="Caption image files; directories are searched recursively for image files. Prints "
        "'path<TAB>caption' per image (or JSON lines with --json). Unreadable files are reported as "
        "'error: <path>: <reason>' on stderr, the others are still captioned, and the exit code is 1.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    add_model_option(parser)
    add_decoding_options(parser)
    add_guided_options(parser)
    parser.add_argument("--tags", dest="show_tags", action="store_true",
                        help="also print each image's tags with their probabilities (--json: a 'tags' list)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object per line: {"image", "caption", "log_prob"}')
    add_image_options(parser, bad_image_choice=False)
    add_device_option(parser)
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="run the model with PyTorch, or with ONNX Runtime on CPU from a directory written by "
                        "`captioner export` given as --model (same search, same captions; faster encoder; the "
                        "default model is exported into the cache on first use) (default: torch)")
    parser.set_defaults(run=run)


def collect_images(paths: list[str]) -> Iterator[tuple[Path, str | None]]:
    """Yield ``(path, None)`` for each file to caption and ``(path, reason)`` for each argument that fails."""
    from captioner.images import is_image_file

    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                yield path, "directory holds no image files"
            yield from ((p, None) for p in found)
        elif path.exists():
            yield path, None
        else:
            yield path, "no such file or directory"


def run(args: argparse.Namespace) -> int:
    from captioner.images import ImageLoadError, load_image

    apply_image_options(args)
    config = generation_config(args)
    if args.backend != "torch" and (args.guided or args.show_tags):
        raise CliError("--guided and --tags need the PyTorch backend (the encoder's ImageNet head); drop "
                       "--backend onnxruntime")
    model = load_backend(args)
    errors = 0
    batch: list[tuple[Path, object]] = []
    for path, problem in collect_images(args.paths):
        if problem is None:
            try:
                batch.append((path, load_image(path)))
            except ImageLoadError as err:
                problem = str(err)
        if problem is not None:
            errors += 1
            print(f"error: {path}: {problem}", file=sys.stderr, flush=True)
        if len(batch) >= args.batch_size:
            _emit(model, batch, config, args)
            batch = []
    _emit(model, batch, config, args)
    return 1 if errors else 0


def load_backend(args: argparse.Namespace):
    """The PyTorch model, or with ``--backend onnxruntime`` the ONNX export that ``--model`` names."""
    if args.backend == "torch":
        return load_model(args.model, args.device)
    if args.device == "cuda":
        raise CliError("--backend onnxruntime runs on CPU only; drop --device cuda or use --backend torch")
    from captioner.export.onnx import ExportError
    from captioner.export.runtime import ExportLoadError, OnnxCaptioner, default_export

    directory = args.model
    try:
        if args.model == "default":
            directory = default_export()  # exported into the user cache on first use
        return OnnxCaptioner(directory)
    except ExportError as err:
        raise CliError(str(err)) from None
    except (ExportLoadError, ValueError, OSError) as err:
        raise CliError(f"cannot load ONNX export {directory}: {err}") from None


def _emit(model, batch: list, config, args: argparse.Namespace) -> None:
    """Caption one batch of loaded images and print the results (with ``--tags``, each image's tags)."""
    if not batch:
        return
    if args.show_tags and not config.guided:  # plain captions, with the tags guided decoding would use
        import torch

        features = model.encode(torch.stack([model.transform(img) for _, img in batch]))
        tags = model.image_tags(features, config)
        hyps = model.caption_features(features, config)
    else:  # guided hypotheses carry the tags they were asked to contain
        hyps = model.caption_images([img for _, img in batch], config)
        tags = [h[0].tags if args.show_tags else None for h in hyps]
    for (path, _), best, found in zip(batch, (h[0] for h in hyps), tags):
        text = model.vocab.decode(best.tokens)
        if args.json:
            row = {"image": str(path), "caption": text, "log_prob": round(best.log_prob, 6)}
            if found is not None:
                row["tags"] = [{"word": t.word, "prob": round(t.prob, 4)} for t in found]
            print(json.dumps(row))
        elif found is not None:
            listed = ", ".join(f"{t.word} {t.prob:.2f}" for t in found) or "-"
            print(f"{path}\t{text}\t[{listed}]")
        else:
            print(f"{path}\t{text}")
    sys.stdout.flush()


