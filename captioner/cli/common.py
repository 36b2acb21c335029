"""Options and helpers shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.options import add_field, fields_of


class CliError(Exception):
    """A user-facing failure: printed as ``error: <message>``, exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def bounded(cast: type, minimum: float, inclusive: bool = True):
    """An argparse type: a number of type ``cast`` at least (or, not ``inclusive``, above) ``minimum``."""
    kind = "a whole number" if cast is int else "a number"

    def convert(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum):  # also rejects NaN
            bound = "of at least" if inclusive else "above"
            raise argparse.ArgumentTypeError(f"expected a number {bound} {minimum:g}, got {text}")
        return value

    return convert


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
non_negative_float = bounded(float, 0.0)
positive_float = bounded(float, 0.0, inclusive=False)


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text}")
    return value


def _ngram_size(text: str) -> int:
    from captioner.config import check_no_repeat_ngram

    try:
        return check_no_repeat_ngram(non_negative_int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="default", metavar="DIR",
        help="model directory, or a training run's directory (its best model, RUN/model, is used); "
        "default: the embedded default model",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    from captioner.config import DEVICES

    parser.add_argument(
        "--device", default="auto", choices=DEVICES,
        help="where to run: auto picks CUDA, else Apple's MPS, else the CPU (default: auto)",
    )


def add_decoding_options(parser: argparse.ArgumentParser) -> None:
    """``--beam-size``, ``--max-length`` and ``--no-repeat-ngram``, with ``GenerationConfig``'s defaults."""
    from captioner.generation import GenerationConfig

    g = GenerationConfig()
    add_field(parser, g, "beam_size", type=positive_int, help="beams per image; 1 is greedy decoding")
    add_field(parser, g, "max_length", type=positive_int, help="maximum caption length in tokens")
    add_field(parser, g, "no_repeat_ngram", type=_ngram_size, metavar="N", show_default=False,
              help="never repeat an n-gram of N words in a caption (2 blocks 'a red shirt and a red shirt'); 0 turns "
              "the guard off (default: the model's own setting, which its model card states; 0 for models without "
              "one)")


def _tag_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {text}")
    return value


def add_guided_options(parser: argparse.ArgumentParser) -> None:
    """``--guided``, ``--tag-threshold`` and ``--max-tags``: tag-guided decoding."""
    from captioner.generation import GenerationConfig

    g = GenerationConfig()
    group = parser.add_mutually_exclusive_group()
    add_field(group, g, "guided", "--guided", action="store_const", const=True, show_default=False,
              help="tag-guided decoding: the encoder's confident ImageNet tags (e.g. 'a cat', 'a cup of coffee') must "
              "appear in the caption (constrained beam search); words the decoder never learned get rows for this "
              "(default: the model's setting, on for the embedded default model)")
    group.add_argument("--plain", dest="guided", action="store_const", const=False,
                       help="plain decoding: no tags asked of the caption")
    add_field(parser, g, "guided_fallback", "--guide-always", action="store_const", const=False, show_default=False,
              help="with guided decoding, constrain every tagged photo; by default the embedded model constrains only "
              "the photos whose plain caption does not already name their tags (its model card says so)")
    add_field(parser, g, "tag_threshold", type=_tag_threshold, metavar="P", show_default=False,
              help="probability a tag needs, summed over the ImageNet classes that map to its word (default: the "
              "model's setting, which its model card states; docs/ablation.md)")
    add_field(parser, g, "max_tags", type=positive_int, metavar="N", show_default=False,
              help="at most N tags per image (default: the model's setting)")


def resolve_device(name: str):
    from captioner.devices import resolve_device as resolve

    try:
        return resolve(name)
    except ValueError as err:
        raise CliError(str(err)) from None


def load_model(model: str, device: str):
    """Load a model directory (or the default) as a CliError-friendly call."""
    from captioner.models.files import ModelLoadError
    from captioner.pipeline import Captioner

    try:
        return Captioner.from_pretrained(model, device=resolve_device(device))
    except (ModelLoadError, ValueError, OSError) as err:
        raise CliError(f"cannot load model {model}: {err}") from None


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=["auto", "onnxruntime", "torch"], default="auto",
        help="auto: ONNX Runtime on the CPU (a model directory is exported once into the cache, a few seconds), "
        "PyTorch on a GPU; onnxruntime or torch to choose (same search, same captions within rounding) "
        "(default: auto)")


def load_captioner(args: argparse.Namespace):
    """The model ``--model`` names with the backend ``--backend`` and ``--device`` choose; says in one line on
    stderr why it uses PyTorch when ``auto`` could not use ONNX Runtime."""
    import sys

    from captioner.export.layout import MANIFEST, ExportError, ExportLoadError
    from captioner.export.sessions import choose_backend, open_export
    from captioner.models.files import ModelLoadError

    is_export = Path(args.model, MANIFEST).is_file()
    try:
        backend, reason = choose_backend(args.backend, args.device)
    except ValueError as err:
        raise CliError(str(err)) from None
    if backend == "torch" and is_export:
        raise CliError(f"{args.model} is an ONNX export (written by `captioner export`): caption it with --backend "
                       "onnxruntime (or auto), or give the model directory it was exported from")
    if backend == "torch":
        if reason:
            print(f"note: using PyTorch: {reason}", file=sys.stderr)
        return load_model(args.model, args.device)
    try:
        opening = open_export(args.model)  # the graphs load on a thread while the runtime is imported
        from captioner.export.runtime import load_onnx

        return load_onnx(args.model, opening=opening)
    except ExportError as err:
        raise CliError(str(err)) from None
    except ExportLoadError as err:
        raise CliError(f"cannot load ONNX export {args.model}: {err}") from None
    except (ModelLoadError, ValueError, OSError) as err:  # the model directory itself, read to export it
        raise CliError(f"cannot load model {args.model}: {err}") from None


def generation_config(args: argparse.Namespace):
    """The ``GenerationConfig`` the parsed decoding options describe (``GenerationConfig`` decides what a beam of
    one means)."""
    from captioner.generation import GenerationConfig

    return GenerationConfig(**fields_of(GenerationConfig, args))


def check_writable_dir(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise CliError(f"{what} {path} exists and is not a directory; choose another path")


def check_output_dir(out: Path, sources: list[Path], clash: str, own_files: set[str], holds: str,
                     overwrite: bool) -> None:
    """Refuse to write ``--out`` anywhere but a new or empty directory, or one holding only ``own_files`` (an
    earlier output of the same command) that ``overwrite`` allows replacing; never one of the ``sources``.

    Args:
        clash: what ``--out`` is when it is a source, e.g. ``"one of the --models; write the combined model
            elsewhere"``.
        holds: what an earlier output is called, e.g. ``"a model"``.
    """
    if any(out.resolve() == source.resolve() for source in sources):
        raise CliError(f"--out {out} is {clash}")
    if not out.exists():
        return
    check_writable_dir(out, "--out")
    others = sorted(p.name for p in out.iterdir() if p.name not in own_files)
    if others:
        raise CliError(f"--out {out} holds other files ({', '.join(others[:3])}); choose an empty or new directory")
    if any(out.iterdir()) and not overwrite:
        raise CliError(f"--out {out} already holds {holds}; pass --overwrite to replace it")


def add_dataset_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--data``, ``--format`` and ``--images``: where a dataset is and how to read it."""
    from captioner.data import FORMATS

    formats = "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())
    parser.add_argument("--data", required=required, metavar="PATH",
                        help="dataset directory or annotation file; its format is detected")
    parser.add_argument("--format", dest="data_format", choices=sorted(FORMATS), default=None,
                        help=f"dataset format, when detection is not wanted ({formats})")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="images directory, for formats whose annotations live apart from the images")


def add_image_options(parser: argparse.ArgumentParser, bad_image_choice: bool = True) -> None:
    """``--on-bad-image`` and ``--max-image-pixels``."""
    if bad_image_choice:
        parser.add_argument("--on-bad-image", choices=["skip", "error"], default="skip",
                            help="unreadable images: skip them with a warning that counts them, or stop "
                            "(default: skip)")
    parser.add_argument("--max-image-pixels", type=positive_int, default=None, metavar="N",
                        help="raise Pillow's decompression-bomb limit (default: Pillow's, about 89 million "
                        "pixels) for images you trust")


def apply_image_options(args: argparse.Namespace) -> None:
    if getattr(args, "max_image_pixels", None):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = args.max_image_pixels
