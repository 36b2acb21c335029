"""Captioning figures: images per second in-process through the ``captioner caption`` code path (default, guided
and plain decoding), the CLI as a user runs it (whole process, model load included), the encoder's FLOPs and speed,
and the peak memory of ``captioner caption`` over growing folders (its slope over the number of images)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import captioner_cmd, child_env, link_folder, r, rss_slope, run_measured


def backend_args(args: argparse.Namespace) -> list[str]:
    """Extra ``captioner caption`` options: none for the default backend and model, as a new user types it."""
    extra = ["--backend", args.backend] if args.backend != "auto" else []
    return extra + (["--model", args.model] if args.model != "default" else [])


def load_caption_model(args: argparse.Namespace):
    """The model as ``captioner caption`` loads it (``cli.common.load_captioner``: the default backend exports the
    model into the cache once), on the CPU."""
    from captioner.cli.common import load_captioner

    return load_captioner(argparse.Namespace(backend=args.backend, model=args.model, device="cpu"))


def search_config(guided: bool | None):
    """The CLI's search: beam 3, the model's own settings where the options leave them open (``guided=None``)."""
    from captioner.cli.common import generation_config

    return generation_config(argparse.Namespace(beam_size=3, guided=guided))


def caption_batch(model, paths: list[Path], config) -> list[str]:
    """What ``captioner caption`` does per batch (``library.run``), without printing: read at the encoder's size,
    caption, decode."""
    from captioner.images import load_image

    side = model.config.preprocess.resize
    hyps = model.caption_images([load_image(p, min_side=side) for p in paths], config)
    return [model.vocab.decode(h[0].tokens) for h in hyps]


def images_per_s(model, paths: list[Path], configs: dict, size: int) -> dict:
    """Images/s of each of ``configs`` (name -> search) over ``paths`` in batches of ``size``, after a warm-up batch
    of each: the searches take turns batch by batch (which goes first alternates), so that a machine whose speed
    drifts during the run slows them alike and their ratio stays fair."""
    for config in configs.values():
        caption_batch(model, paths[:size], config)  # warm-up: first-call costs
    seconds = dict.fromkeys(configs, 0.0)
    for number, start in enumerate(range(0, len(paths), size)):
        names = list(configs) if number % 2 == 0 else list(reversed(configs))
        for name in names:
            t0 = time.perf_counter()
            caption_batch(model, paths[start : start + size], configs[name])
            seconds[name] += time.perf_counter() - t0
    return {name: len(paths) / seconds[name] for name in configs}


def measure_caption(args: argparse.Namespace, paths: list[Path]) -> dict:
    """In-process images/s (beam 3, batch ``caption_batch``, model load excluded) with guided and with plain
    decoding, batch by batch in turns; ``caption_images_per_s`` is the model's default of the two; and the median
    warm latency of one image."""
    from captioner.generation.config import GenerationConfig, with_model_defaults

    t0 = time.perf_counter()
    model = load_caption_model(args)
    load_s = time.perf_counter() - t0
    size = args.caption_batch
    rates = images_per_s(model, paths, {"guided": search_config(True), "plain": search_config(False)}, size)
    guided, plain = rates["guided"], rates["plain"]
    default_guided = bool(with_model_defaults(GenerationConfig(), model.decoder).guided)
    singles = []
    for path in paths[: 3 if args.quick else 9]:
        t1 = time.perf_counter()
        caption_batch(model, [path], search_config(None))
        singles.append(time.perf_counter() - t1)
    return {"caption_images_per_s": r(guided if default_guided else plain, 2), "guided_images_per_s": r(guided, 2),
            "plain_images_per_s": r(plain, 2), "caption_ms_single": r(1000 * statistics.median(singles), 1),
            "caption_detail": {"backend": type(model).__name__, "default_is_guided": default_guided,
                               "images": len(paths), "batch_size": size, "beam_size": 3, "model_load_s": r(load_s, 3),
                               "single_ms_all": [r(1000 * s, 1) for s in singles]}}


def measure_cli(args: argparse.Namespace, paths: list[Path], errors: dict) -> dict:
    """``captioner caption DIR --beam-size 3 --batch-size 32`` (no backend flag) over a folder of ``paths``, whole
    process with the model load: images/s by wall time, with the model's default decoding and with ``--plain``."""
    out: dict = {"cli_caption_images": len(paths)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = link_folder(paths, Path(tmp) / "photos")
        for key, extra in (("cli_caption_images_per_s", []), ("cli_plain_images_per_s", ["--plain"])):
            cmd = captioner_cmd() + ["caption", str(folder), "--beam-size", "3", "--batch-size",
                                     str(args.caption_batch)] + extra + backend_args(args)
            result = run_measured(cmd, child_env(args.threads, args.captioner_cache))
            if result["rc"] != 0:
                errors[key] = f"exit {result['rc']}: {result['stderr_tail']}"
                continue
            out[key] = r(len(paths) / result["wall_s"], 2)
            out[key.replace("images_per_s", "wall_s")] = r(result["wall_s"], 2)
    return out


def encoder_figures(args: argparse.Namespace, paths: list[Path], gflops: float | None) -> dict:
    """Encoder FLOPs per image (``FlopCounterMode`` on the PyTorch encoder, 2 per multiply-add, convolutions and
    matmuls only) and the share of the matmul ceiling the backend's encoder reaches at batch ``caption_batch``
    (real preprocessed images, best of a few)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from captioner.cli.common import load_model
    from captioner.images import load_image

    model = load_model(args.model, "cpu")
    crop = model.config.preprocess.crop
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.encoder.eval()(torch.zeros(1, 3, crop, crop).contiguous(memory_format=torch.channels_last))
    per_image = counter.get_total_flops() / 1e9
    pixels = torch.stack([model.transform(load_image(p)) for p in paths[: args.caption_batch]])  # (B, 3, H, W)
    runner = model if args.backend == "torch" else load_caption_model(args)  # the backend's own encoder
    runner.encode(pixels)  # warm-up
    times = []
    for _ in range(2 if args.quick else 5):
        t0 = time.perf_counter()
        runner.encode(pixels)
        times.append(time.perf_counter() - t0)
    rate = len(pixels) / min(times)
    achieved = per_image * rate
    return {"encoder_gflops_per_image": r(per_image, 3), "encoder_images_per_s": r(rate, 2),
            "encoder_gflops_per_s": r(achieved, 2),
            "encoder_fraction_of_matmul": r(achieved / gflops, 4) if gflops else None,
            "encoder_input": [len(pixels), 3, crop, crop]}


def measure_caption_rss(args: argparse.Namespace, paths: list[Path], sizes: list[int], errors: dict) -> dict:
    """``captioner caption DIR --batch-size 32 --beam-size 3 --json`` over folders of the first N of ``paths`` for
    each N of ``sizes``: each run's peak RSS, wall time and images/s, and the slope of the peak over N."""
    points, runs = {}, {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = link_folder(paths[:n], Path(tmp) / "photos")
            cmd = captioner_cmd() + ["caption", str(folder), "--batch-size", str(args.caption_batch),
                                     "--beam-size", "3", "--json"] + backend_args(args)
            result = run_measured(cmd, child_env(args.threads, args.captioner_cache))
        if result["rc"] != 0:
            errors[f"caption_rss_{n}"] = f"exit {result['rc']}: {result['stderr_tail']}"
            continue
        points[len(paths[:n])] = result["peak_rss_mb"]
        runs[str(len(paths[:n]))] = {"peak_rss_mb": r(result["peak_rss_mb"], 1), "wall_s": r(result["wall_s"], 2),
                                     "images_per_s": r(len(paths[:n]) / result["wall_s"], 2)}
    return {"peak_rss_mb_caption": r(max(points.values()), 1) if points else None,
            "caption_rss_slope_mb_per_1000": r(rss_slope(points), 1), "caption_rss_runs": runs}
