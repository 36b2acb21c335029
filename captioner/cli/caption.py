"""``captioner caption PATH...``: caption image files and directories, a photo library included: results files,
resume after a kill, captions written into the photos' metadata, confidence, shards."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from captioner.cli.common import (
    CliError,
    add_backend_option,
    add_decoding_options,
    add_device_option,
    add_guided_options,
    add_image_options,
    add_model_option,
    apply_image_options,
    generation_config,
    load_captioner,
    positive_int,
    probability,
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "caption", help="caption images (a photo library too)",
        description="Caption image files; directories are searched recursively for image files. Prints "
        "'path<TAB>caption' per image (or JSON lines with --json), or writes a results file with --out (resumable "
        "with --resume). Unreadable files are reported as 'error: <path>: <reason>' on stderr, the others are "
        "still captioned, and the exit code is 1.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    add_model_option(parser)
    add_decoding_options(parser)
    add_guided_options(parser)
    parser.add_argument("--tags", dest="show_tags", action="store_true",
                        help="also print each image's tags with their probabilities (--json: a 'tags' list)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object per line: {"image", "caption", "log_prob", "confidence", ...}')
    _add_library_options(parser)
    add_image_options(parser, bad_image_choice=False)
    add_device_option(parser)
    add_backend_option(parser)
    parser.set_defaults(run=run, exit_at_once=True)  # cli.main.end_process: no teardown of torch at the end


def _add_library_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a photo library: results files, resume, metadata, review, shards")
    group.add_argument("--out", metavar="FILE", help="write the results here as the run goes: .jsonl, .csv (image, "
                       "caption, confidence), .tsv or .json (COCO results, image ids from the names' trailing numbers)")
    group.add_argument("--format", dest="results_format", choices=["jsonl", "csv", "tsv", "json"],
                       help="the results format (default: from --out's extension)")
    group.add_argument("--resume", action="store_true", help="continue a run: skip the photos --out already holds "
                       "(unchanged since), caption the rest, each photo exactly once")
    group.add_argument("--overwrite", action="store_true", help="replace an existing --out (default: refuse)")
    group.add_argument("--metadata", choices=["embed", "sidecar"], help="also write each caption into the photo "
                       "(XMP dc:description and AltTextAccessibility, EXIF ImageDescription, IPTC Caption-Abstract "
                       "where present) or into an XMP sidecar; needs pip install 'captioner[metadata]'")
    group.add_argument("--sidecar-name", choices=["append", "replace"], default="append",
                       help="sidecar file name: photo.jpg.xmp (append) or photo.xmp (replace) (default: append)")
    group.add_argument("--overwrite-descriptions", action="store_true", help="replace descriptions a person wrote "
                       "(default: never; such photos are reported as skipped)")
    group.add_argument("--keep-mtime", action="store_true", help="keep the photos' modification times")
    group.add_argument("--min-confidence", type=probability, metavar="P", help="mark captions whose confidence is "
                       "below P as needs_review; they are not written into metadata unless --write-low-confidence")
    group.add_argument("--write-low-confidence", action="store_true",
                       help="write captions below --min-confidence into the metadata too")
    group.add_argument("--shard", metavar="K/N", help="caption every N-th photo of the sorted list, starting with "
                       "the K-th (1 <= K <= N), so N processes or machines split a library; under torchrun the "
                       "shard comes from RANK and WORLD_SIZE")



def library_options(args: argparse.Namespace):
    """The run's :class:`captioner.library.run.LibraryOptions`, with every refusal a user can fix checked first."""
    from captioner.library.inputs import parse_shard, shard_from_env
    from captioner.library.results import ResultsError, format_of
    from captioner.library.run import LibraryOptions

    out = Path(args.out) if args.out else None
    if out is None and (args.resume or args.results_format):
        raise CliError("--resume and --format need --out FILE", code=2)
    fmt = "jsonl"
    if out is not None:
        try:
            fmt = format_of(out, args.results_format)
        except ResultsError as err:
            raise CliError(str(err), code=2) from None
        _check_out(out, args.resume, args.overwrite)
    try:
        shard = parse_shard(args.shard) if args.shard else shard_from_env()
    except ValueError as err:
        raise CliError(str(err), code=2) from None
    if args.metadata:
        _require_metadata()
    return LibraryOptions(out=out, fmt=fmt, resume=args.resume, metadata=args.metadata,
                          sidecar_name=args.sidecar_name, overwrite_descriptions=args.overwrite_descriptions,
                          keep_mtime=args.keep_mtime, min_confidence=args.min_confidence,
                          write_low_confidence=args.write_low_confidence, shard=shard, batch_size=args.batch_size,
                          show_tags=args.show_tags)


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    if out.is_dir():
        raise CliError(f"--out {out} is a directory; give a file name")
    if not out.resolve().parent.is_dir():
        raise CliError(f"--out {out}: directory {out.parent} does not exist; create it first")
    if out.exists() and not (resume or overwrite):
        raise CliError(f"--out {out} already exists; pass --resume to continue that run or --overwrite to replace it")


def _require_metadata() -> None:
    try:
        from captioner.library.metadata import require_library
    except ImportError:  # the metadata module itself always imports; its library is checked here
        return
    try:
        require_library()
    except (ImportError, RuntimeError, ValueError) as err:
        raise CliError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    from captioner.library.results import ResultsError
    from captioner.library.run import caption_library

    apply_image_options(args)
    config = generation_config(args)
    options = library_options(args)
    model = load_captioner(args)
    emit = _Emitter(args, quiet=options.out is not None)
    try:
        summary = caption_library(model, args.paths, config, options, on_row=emit)
    except ResultsError as err:
        raise CliError(str(err)) from None
    if options.out is not None or options.metadata or options.resume:
        print(f"{options.out or 'captions'}: {summary.line()}", file=sys.stderr)
    return 1 if summary.failed else 0


class _Emitter:
    """Prints each row as it comes (``path<TAB>caption`` or a JSON line; failures as ``error:`` lines on stderr);
    with ``quiet`` (a results file is written) only the failures. A line that cannot be written whole (a full
    disk) is taken back, so the output never ends in a cut line."""

    def __init__(self, args: argparse.Namespace, quiet: bool) -> None:
        self.json, self.tags, self.quiet = args.json, args.show_tags, quiet

    def __call__(self, row) -> None:
        if row.error is not None:
            print(f"error: {row.image}: {row.error}", file=sys.stderr, flush=True)
            return
        if self.quiet:
            return
        if self.json:
            _write_line(json.dumps(row.public(), ensure_ascii=False))
        elif self.tags:
            listed = ", ".join(f"{t['word']} {t['prob']:.2f}" for t in row.tags or []) or "-"
            _write_line(f"{row.image}\t{row.caption}\t[{listed}]")
        else:
            _write_line(f"{row.image}\t{row.caption}")


def _write_line(text: str) -> None:
    """Write one line to stdout at once; on a failed write of a regular file, truncate back to before the line."""
    data = (text + "\n").encode("utf-8")
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # a stream without a descriptor (captured, in memory)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    start = os.lseek(fd, 0, os.SEEK_CUR) if _is_regular(fd) else None
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError as err:
        if start is not None:
            os.ftruncate(fd, start)
        if err.errno == errno.EPIPE:
            raise BrokenPipeError from None
        raise CliError(f"cannot write the captions to standard output: {err.strerror or err} (the lines written "
                       "before are complete)") from None


def _is_regular(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False
