"""``captioner data check``: what is in a dataset and what is wrong with it."""

from __future__ import annotations

import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from captioner.data.base import CaptionSet, list_splits, load_dataset
from captioner.images import ImageLoadError, load_image
from captioner.vocab import Vocabulary, tokenize


def check_dataset(
    path: str | Path, fmt: str | None = None, images: str | Path | None = None, min_count: int = 5,
    verify_images: bool = True, progress: bool = True,
) -> dict:
    """Inspect every split of a dataset.

    Args:
        path: dataset path.
        fmt: format name (None: detect).
        images: images directory override.
        min_count: vocabulary threshold for the coverage figures (vocabulary built on the ``train`` split, else the
            first split).
        verify_images: decode every image (False: only check that the files exist).

    Returns:
        A report: ``{"format", "splits": {name: {...}}, "errors": [...], "warnings": [...]}``.
    """
    from captioner.data.base import get_format

    fmt_name = get_format(Path(path), fmt).name
    names = list_splits(path, fmt)
    sets = {name: load_dataset(path, name, fmt, images) for name in names}
    base = sets.get("train") or next(iter(sets.values()))
    vocab = Vocabulary.build(base.captions(), min_count)
    report: dict = {"path": str(path), "format": fmt_name, "min_count": min_count, "vocab_size": len(vocab),
                    "vocab_built_on": base.split, "splits": {}, "errors": [], "warnings": []}
    for name, data in sets.items():
        report["splits"][name] = _check_split(data, vocab, verify_images, progress, report)
    return report


def _check_split(data: CaptionSet, vocab: Vocabulary, verify: bool, progress: bool, report: dict) -> dict:
    lengths, empty, duplicates, covered, tokens = [], 0, 0, 0, 0
    for item in data.items:
        seen = Counter(" ".join(tokenize(c)) for c in item.captions)
        duplicates += sum(n - 1 for n in seen.values())
        for caption in item.captions:
            words = tokenize(caption)
            empty += not words
            lengths.append(len(words))
            tokens += len(words)
            covered += sum(w in vocab for w in words)
    bad = _bad_images(data, verify, progress)
    tag = f"split {data.split}"
    for name, reason in bad[:20]:
        report["errors"].append(f"{tag}: {name}: {reason}")
    if len(bad) > 20:
        report["errors"].append(f"{tag}: ... and {len(bad) - 20} more bad images")
    if empty:
        report["errors"].append(f"{tag}: {empty} empty caption(s)")
    no_caption = sum(not item.captions for item in data.items)
    if no_caption:
        report["errors"].append(f"{tag}: {no_caption} image(s) without captions")
    if duplicates:
        report["warnings"].append(f"{tag}: {duplicates} duplicate caption(s) of the same image")
    return {
        "images": len(data), "captions": len(lengths), "bad_images": len(bad), "empty_captions": empty,
        "duplicate_captions": duplicates, "caption_length": _distribution(lengths),
        "vocab_coverage": round(covered / tokens, 4) if tokens else 0.0,
    }


def _bad_images(data: CaptionSet, verify: bool, progress: bool) -> list[tuple[str, str]]:
    def problem(item) -> str | None:
        if not item.path.is_file():
            return "missing file"
        if verify:
            try:
                load_image(item.path)
            except ImageLoadError as err:
                return str(err)
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
    """The report as a short text table."""
    lines = [f"{report['path']} ({report['format']} format); vocabulary at min-count {report['min_count']}: "
             f"{report['vocab_size']} tokens (built on {report['vocab_built_on']})",
             f"{'split':<10}{'images':>8}{'captions':>10}{'bad img':>9}{'empty':>7}{'dup':>6}  length min/p50/p90/max"
             f"  coverage"]
    for name, s in report["splits"].items():
        d = s["caption_length"]
        length = f"{d.get('min', 0)}/{d.get('p50', 0)}/{d.get('p90', 0)}/{d.get('max', 0)}"
        lines.append(f"{name:<10}{s['images']:>8}{s['captions']:>10}{s['bad_images']:>9}{s['empty_captions']:>7}"
                     f"{s['duplicate_captions']:>6}  {length:<22}  {100 * s['vocab_coverage']:.1f}%")
    lines += [f"warning: {w}" for w in report["warnings"]] + [f"error: {e}" for e in report["errors"]]
    lines.append(f"{len(report['errors'])} error(s), {len(report['warnings'])} warning(s)")
    return "\n".join(lines)
