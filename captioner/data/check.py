"""``captioner data check``: what is in a dataset and what is wrong with it.

Every split is loaded with its problems collected rather than raised (:mod:`captioner.data.problems`), so one run
lists every bad line of every file (``file:line`` and why), every unreadable image and every entry that no split
uses. Errors: what training refuses (a malformed entry) or leaves out (an empty caption), and unreadable images.
Warnings: what is used but maybe not as meant (a caption cut to the word limit, duplicates).
"""

from __future__ import annotations

import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from captioner.data.base import EMPTY_CAPTION, CaptionSet, DatasetError, get_format, list_splits, load_dataset
from captioner.data.problems import Problems, abbreviate
from captioner.images import ImageLoadError, load_image
from captioner.vocab import Vocabulary, tokenize

MAX_LISTED = 50  # problems of each kind listed in the report by default; the rest are counted
MAX_LINE_CHARS = 1000  # one reported problem is at most this long


def check_dataset(
    path: str | Path, fmt: str | None = None, images: str | Path | None = None, min_count: int = 5,
    verify_images: bool = True, progress: bool = True, max_listed: int = MAX_LISTED,
) -> dict:
    """Inspect every split of a dataset.

    Args:
        path: dataset path.
        fmt: format name (None: detect).
        images: images directory override.
        min_count: vocabulary threshold for the coverage figures (vocabulary built on the ``train`` split, else the
            first split).
        verify_images: decode every image (False: only check that the files exist).
        progress: show a progress bar while images are checked.
        max_listed: errors, and warnings, listed in the report (0: all); the rest are only counted.

    Returns:
        A report: ``{"format", "splits": {name: {...}}, "errors": [...], "warnings": [...], "error_count",
        "warning_count"}``; each error or warning is one line naming the file and the entry.

    Raises:
        DatasetError: the path is not a dataset in any known format.
    """
    path = Path(path)
    fmt_name = get_format(path, fmt).name
    problems, sets, per_split = Problems(), {}, {}
    for name in list_splits(path, fmt):
        per_split[name] = Problems()
        try:
            sets[name] = load_dataset(path, name, fmt, images, problems=per_split[name])
        except DatasetError as err:
            per_split[name].error("", str(err))
        problems.extend(per_split[name].items)
    _audit(path, fmt_name, problems)
    base = sets.get("train") or next(iter(sets.values()), CaptionSet(path, "none"))
    vocab = Vocabulary.build(base.captions(), min_count)
    report: dict = {"path": str(path), "format": fmt_name, "min_count": min_count, "vocab_size": len(vocab),
                    "vocab_built_on": base.split, "splits": {}}
    image_errors: list[str] = []
    for name, data in sets.items():
        report["splits"][name] = _check_split(data, per_split[name], vocab, verify_images, progress, image_errors)
    errors = [str(p) for p in problems.of_level("error", "skipped")] + image_errors
    warnings = [str(p) for p in problems.of_level("warning")] + _split_warnings(report["splits"])
    report.update(error_count=len(errors), warning_count=len(warnings),
                  errors=_listed(errors, max_listed, "error"), warnings=_listed(warnings, max_listed, "warning"))
    return report


def _audit(path: Path, fmt_name: str, problems: Problems) -> None:
    from captioner.data.base import FORMATS

    audit = FORMATS[fmt_name].audit
    if audit is not None:
        try:
            audit(path, problems)
        except DatasetError as err:  # the loads have reported what stops it
            problems.error("", str(err))


def _listed(lines: list[str], limit: int, kind: str) -> list[str]:
    shown = [abbreviate(line, MAX_LINE_CHARS) for line in (lines[:limit] if limit else lines)]
    if limit and len(lines) > limit:
        shown.append(f"... and {len(lines) - limit:,} more {kind}(s) (--max-problems 0 lists them all)")
    return shown


def _check_split(data: CaptionSet, problems: Problems, vocab: Vocabulary, verify: bool, progress: bool,
                 image_errors: list[str]) -> dict:
    lengths, duplicates, covered, tokens = [], 0, 0, 0
    for item in data.items:
        seen = Counter(" ".join(tokenize(c)) for c in item.captions)
        duplicates += sum(n - 1 for n in seen.values())
        for caption in item.captions:
            words = tokenize(caption)
            lengths.append(len(words))
            tokens += len(words)
            covered += sum(w in vocab for w in words)
    bad = _bad_images(data, verify, progress)
    image_errors += [f"split {data.split}: {abbreviate(name)}: {reason}" for name, reason in bad]
    empty = sum(p.message.startswith(EMPTY_CAPTION) for p in problems.of_level("skipped"))
    return {
        "images": len(data), "captions": len(lengths), "bad_images": len(bad), "empty_captions": empty,
        "duplicate_captions": duplicates, "caption_length": _distribution(lengths),
        "vocab_coverage": round(covered / tokens, 4) if tokens else 0.0,
    }


def _split_warnings(splits: dict[str, dict]) -> list[str]:
    return [f"split {name}: {s['duplicate_captions']} duplicate caption(s) of the same image"
            for name, s in splits.items() if s["duplicate_captions"]]


def _bad_images(data: CaptionSet, verify: bool, progress: bool) -> list[tuple[str, str]]:
    def problem(item) -> str | None:
        try:
            if not item.path.is_file():
                return "missing file"
            if verify:
                load_image(item.path)
        except ImageLoadError as err:
            return str(err)
        except OSError as err:  # a name the file system refuses (too long ...)
            return f"cannot read the file: {err.strerror or err}"
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow releases the GIL while decoding
        results = list(tqdm(pool.map(problem, data.items), total=len(data), desc=f"checking {data.split} images",
                            unit="img", disable=not progress, leave=False))
    return [(item.name, reason) for item, reason in zip(data.items, results) if reason]


def _distribution(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1],
            "mean": round(statistics.fmean(values), 2)}


def format_report(report: dict) -> str:
    """The report's table and totals as text (its problems are :func:`problem_lines`)."""
    lines = [f"{report['path']} ({report['format']} format); vocabulary at min-count {report['min_count']}: "
             f"{report['vocab_size']} tokens (built on {report['vocab_built_on']})",
             f"{'split':<10}{'images':>8}{'captions':>10}{'bad img':>9}{'empty':>7}{'dup':>6}  length min/p50/p90/max"
             f"  coverage"]
    for name, s in report["splits"].items():
        d = s["caption_length"]
        length = f"{d.get('min', 0)}/{d.get('p50', 0)}/{d.get('p90', 0)}/{d.get('max', 0)}"
        lines.append(f"{name:<10}{s['images']:>8}{s['captions']:>10}{s['bad_images']:>9}{s['empty_captions']:>7}"
                     f"{s['duplicate_captions']:>6}  {length:<22}  {100 * s['vocab_coverage']:.1f}%")
    lines.append(f"{report['error_count']} error(s), {report['warning_count']} warning(s)")
    return "\n".join(lines)


def problem_lines(report: dict) -> list[str]:
    """One ``warning: ...`` or ``error: ...`` line per listed problem, warnings first."""
    return [f"warning: {w}" for w in report["warnings"]] + [f"error: {e}" for e in report["errors"]]
