"""``captioner data download``: get COCO annotations and images, whole archives or only a subset's images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.cli.common import CliError, non_negative_float, non_negative_int, positive_float

if TYPE_CHECKING:
    from captioner.download import TransferReport

DESCRIPTION = """\
Download COCO annotations and images: whole archives, or only the images a subset manifest lists.

Examples:
  captioner data download                                   # 2017 annotations + val2017.zip into data/coco
  captioner data download --split train val --extract       # both image zips, unpacked
  captioner data download --split train --subset m.json     # train2017.zip, then only m.json's images
  captioner data download --split train --subset m.json --remote --no-annotations
                                                            # only m.json's images, over HTTP ranges

A manifest is the manifest.json written by 'captioner data subset' (or any COCO captions file). Archives are
verified (size and MD5, or a SHA-256 recorded at the first download); a corrupt one is renamed to .corrupt.
Rerunning the same command resumes an interrupted download and skips what is already complete and valid."""


def add_parser(actions) -> None:
    """Add the ``download`` action to the ``captioner data`` actions (an argparse subparsers object)."""
    parser = actions.add_parser(
        "download", help="download COCO archives, or only the images a subset manifest lists",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="'--list' shows the archive table (URLs, sizes, MD5s); it lives in captioner/download/coco.py.",
    )
    parser.add_argument("--year", choices=["2014", "2017"], default="2017", help="COCO release (default: 2017)")
    parser.add_argument(
        "--split", nargs="+", choices=["train", "val", "test"], default=["val"], metavar="SPLIT",
        help="image archives to get: train, val and/or test (default: val)",
    )
    parser.add_argument(
        "--annotations", action=argparse.BooleanOptionalAction, default=True,
        help="also download annotations_trainval<year>.zip with the captions (default: yes)",
    )
    parser.add_argument(
        "--out", default="data/coco", metavar="DIR", help="where archives and images go (default: data/coco)"
    )
    parser.add_argument(
        "--extract", action="store_true",
        help="unpack every downloaded archive into --out (with --subset, image archives are always reduced to "
        "the manifest's images instead)",
    )
    parser.add_argument(
        "--subset", metavar="MANIFEST",
        help='JSON object whose "images" list holds {"file_name": ...} entries (the manifest.json of '
        "'captioner data subset', or a COCO captions file): extract only these images; needs exactly one --split",
    )
    parser.add_argument(
        "--remote", action="store_true",
        help="with --subset: do not download the image archive; read its directory and the listed images with "
        "HTTP Range requests (a few MB instead of GBs)",
    )
    parser.add_argument(
        "--prefix", metavar="PREFIX",
        help="folder of the images inside the image zip (default: <split><year>/, e.g. val2017/); '' for none",
    )
    _add_network_options(parser)
    parser.add_argument("--list", action="store_true", help="print the known archives (URL, size, MD5) and exit")
    # SUPPRESS: without -v here, the top-level 'captioner -v' is kept instead of being reset to False.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log each step to stderr (like 'captioner -v')")
    parser.set_defaults(run=run)


def _add_network_options(parser: argparse.ArgumentParser) -> None:
    """``--base-url``, ``--timeout``, ``--retries``, ``--retry-wait`` and ``--no-progress``."""
    parser.add_argument(
        "--base-url", default=None, metavar="URL",
        help="server to download from instead of the official COCO server (see --list), e.g. a mirror with the "
        "same paths; http:// or https://",
    )
    parser.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                        help="give up on a connection that sends nothing for this long (default: 60)")
    parser.add_argument("--retries", type=non_negative_int, default=5, metavar="N",
                        help="retries per request after a network failure, each resuming (default: 5)")
    parser.add_argument("--retry-wait", type=non_negative_float, default=2.0, metavar="SECONDS",
                        help="pause before the first retry, doubled for each further one (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def run(args: argparse.Namespace) -> int:
    """Do what the parsed arguments ask; library failures become one-line :class:`CliError`."""
    _check_combination(args)
    from captioner.download import DownloadError

    if args.list:
        _print_table()
        return 0
    try:
        _download(args)
    except DownloadError as err:
        raise CliError(" ".join(str(err).split())) from None
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise CliError(f"{err.strerror or err}{where}; check --out, its permissions and the free disk space") from None
    return 0


def _check_combination(args: argparse.Namespace) -> None:
    """Usage errors argparse cannot see (exit code 2)."""
    if args.remote and not args.subset:
        raise CliError("--remote needs --subset MANIFEST (the images to fetch)", code=2)
    if args.subset and len(args.split) != 1:
        raise CliError("--subset works on one image archive at a time; pass a single --split", code=2)
    if args.base_url is not None and not args.base_url.startswith(("http://", "https://")):
        raise CliError(f"--base-url must start with http:// or https://, got {args.base_url!r}", code=2)


def _print_table() -> None:
    """The archive table, one line per archive: key, size, MD5, URL."""
    from captioner.download import COCO_FILES

    for key, entry in COCO_FILES.items():
        size = f"{entry.size:,}" if entry.size is not None else "?"
        print(f"{key:26} {size:>16} bytes  md5 {entry.md5 or '(none: sha256 recorded)':32}  {entry.url}")


def _download(args: argparse.Namespace) -> None:
    """The annotations archive (unless --no-annotations), then each --split's images."""
    from captioner import download as dl

    out = Path(args.out)
    common = dict(timeout=args.timeout, retries=args.retries, retry_wait=args.retry_wait, progress=not args.no_progress)
    files = dl.load_manifest(args.subset) if args.subset else None
    if files == []:
        raise CliError(f"manifest {args.subset} lists no images; nothing to fetch")
    if args.annotations:
        archive = dl.download_coco(f"annotations_trainval{args.year}", out, base_url=args.base_url, **common)
        print(f"ready: {archive}")
        if args.extract:
            print(_describe(dl.extract_members(archive, None, out), f"extracted {archive.name}"))
    for split in args.split:
        key = f"{split}{args.year}"
        names = None
        if files is not None:
            names = dl.member_names(files, f"{key}/" if args.prefix is None else args.prefix)
        if args.remote:
            report = dl.fetch_remote_members(dl.coco_url(key, args.base_url), names, out, **common)
            print(_describe(report, f"{key} (remote)"))
            continue
        archive = dl.download_coco(key, out, base_url=args.base_url, **common)
        print(f"ready: {archive}")
        if names is not None or args.extract:
            print(_describe(dl.extract_members(archive, names, out), f"extracted from {archive.name}"))


def _describe(report: TransferReport, what: str) -> str:
    """One summary line of a :class:`captioner.download.TransferReport`."""
    line = f"{what}: {report.written} files written, {report.skipped} already present"
    if report.bytes_transferred:
        share = 100.0 * report.bytes_transferred / max(report.archive_size, 1)
        line += f", {report.bytes_transferred:,} bytes transferred"
        line += f" ({share:.2f}% of the {report.archive_size:,}-byte archive)"
    return line
