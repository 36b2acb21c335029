"""Options and helpers shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


class CliError(Exception):
    """A user-facing failure: printed as ``error: <message>``, exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text}")
    return value


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="default", metavar="DIR",
        help="model directory (written by 'captioner train'); default: the embedded default model",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"],
        help="where to run: cuda when available with 'auto' (default: auto)",
    )


def add_decoding_options(parser: argparse.ArgumentParser, beam_size: int = 3) -> None:
    parser.add_argument(
        "--beam-size", type=positive_int, default=beam_size,
        help=f"beams per image; 1 is greedy decoding (default: {beam_size})",
    )
    parser.add_argument(
        "--max-length", type=positive_int, default=20, help="maximum caption length in tokens (default: 20)"
    )


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return name


def load_model(model: str, device: str):
    """Load a model directory (or the default) as a CliError-friendly call."""
    from captioner.model import Captioner, ModelLoadError

    try:
        return Captioner.from_pretrained(model, device=resolve_device(device))
    except (ModelLoadError, ValueError, OSError) as err:
        raise CliError(f"cannot load model {model}: {err}") from None


def generation_config(args: argparse.Namespace):
    from captioner.generate import GenerationConfig

    method = "greedy" if args.beam_size == 1 else "beam"
    return GenerationConfig(method=method, beam_size=args.beam_size, max_length=args.max_length)


def check_writable_dir(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise CliError(f"{what} {path} exists and is not a directory; choose another path")
