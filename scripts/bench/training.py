"""Training figures: the default recipe's steady-state step through the training loop's own step, a naive tutorial
loop for comparison, model FLOP utilisation, the peak memory of a training process that sets up the train split
(run as a child, ``benchmark.py --child-train``), and the peak memory of cold-cache setups of growing splits
(``benchmark.py --child-rss N``, one child per size) with its slope over the number of images."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BENCHMARK, child_env, guarded, peak_rss_self_mb, proc_status_mb, r, rss_slope, run_measured
from captioner.training.config import RECIPE_MODEL

RECIPE = dict(  # scripts/train_default.sh, one member: the architecture is captioner train's default
    model=dict(RECIPE_MODEL),
    train=dict(epochs=8, batch_size=128, lr=1e-3, schedule="cosine", clip_norm=5.0, min_count=5, holdout=500,
               holdout_seed=0, select_by="cider", patience=3, keep_epochs=5, seed=0, batch_by_image=True),
)


def build_recipe_run(data: Path, cache_dir: Path, out: Path, threads: int, train_images: int, device: str = "cpu",
                     precision: str = "auto", holdout: int | None = None, val_images: int = 0):
    """The default recipe's training run set up as ``captioner train`` does it (``training.loop.build_run``):
    whole train split (minus the 500 held out for selection) with its cached features loaded, vocabulary, model,
    optimizer and schedule. ``train_images`` > 0 cuts the split (quick runs); ``device`` and ``precision`` as
    ``captioner train``'s (scripts/gpu_bench.py); ``holdout`` (None: the recipe's, a fifth of a cut split) 0
    validates on the first ``val_images`` of the validation split instead (0: all of it)."""
    from captioner.config import ModelConfig
    from captioner.models.factory import complete_config
    from captioner.pipeline import Captioner
    from captioner.training import loop as training
    from captioner.training.config import TrainConfig
    from captioner.training.splits import load_splits
    from captioner.training.state import seed_everything
    from captioner.vocab import Vocabulary

    if holdout is None:
        holdout = RECIPE["train"]["holdout"] if not train_images else max(train_images // 5, 4)
    cfg = TrainConfig(data=str(data), out=str(out), cache_dir=str(cache_dir), num_threads=threads, device=device,
                      precision=precision, val_max_images=val_images, **{**RECIPE["train"], "holdout": holdout})
    seed_everything(cfg.seed)
    import torch

    torch.set_num_threads(threads)
    train_set, val_set = load_splits(cfg)
    if train_images:
        train_set = train_set.subset(train_images)
    vocab = Vocabulary.build(train_set.captions(), cfg.min_count)
    model = Captioner(complete_config(ModelConfig(**RECIPE["model"]), len(vocab), cfg.image_size), vocab)
    t0 = time.perf_counter()
    run = training.build_run(model, cfg, out, train_set, val_set, [])
    return run, time.perf_counter() - t0


def recipe_batches(run) -> list[list[int]]:
    """The first epoch's cross-entropy batches (whole images, >= 128 captions each), as the loop draws them."""
    import torch

    from captioner.training.loop import xe_batches

    return xe_batches(run.train, run.cfg, torch.Generator().manual_seed(run.cfg.seed * 1000 + 1))


def real_tokens(run, batch: list[int]) -> int:
    """Target tokens of a batch that are not padding: each caption's length minus its <start>."""
    return sum(len(run.train.captions[i]) - 1 for i in batch)


def time_recipe_steps(run, batches: list[list[int]], warmup: int, steps: int) -> dict:
    """Steady-state cross-entropy steps through the loop's own step function (features from the cache)."""
    from captioner.training.xe import train_mode, xe_step

    train_mode(run)
    for batch in batches[:warmup]:
        xe_step(run, batch)
    timed = batches[warmup : warmup + steps]
    t0 = time.perf_counter()
    for batch in timed:
        xe_step(run, batch)
    seconds = time.perf_counter() - t0
    captions = sum(len(b) for b in timed)
    tokens = sum(real_tokens(run, b) for b in timed)
    return {"steps": len(timed), "seconds": seconds, "captions": captions, "tokens": tokens,
            "step_s": seconds / len(timed), "captions_per_s": captions / seconds, "tokens_per_s": tokens / seconds,
            "captions_per_step": captions / len(timed), "tokens_per_step": tokens / len(timed)}


def counted_step_flops(run, batch: list[int]) -> float:
    """FLOPs of one training step (forward + backward of the decoder) counted by ``FlopCounterMode``
    (matmuls and convolutions, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from captioner.training.xe import xe_step

    counter = FlopCounterMode(display=False)
    with counter:
        xe_step(run, batch)
    return float(counter.get_total_flops())


def naive_step(run, batch: list[int]) -> None:
    """One step of the tutorial loop: every caption brings its own image, which is read, transformed and encoded
    (no_grad) again at every step, then the same decoder step as the real loop."""
    import torch

    from captioner.data.batching import pad_batch
    from captioner.images import load_image
    from captioner.training.state import apply_gradients

    model, split = run.model, run.train
    paths = [split.data.items[split.image_index[i]].path for i in batch]
    pixels = torch.stack([model.transform(load_image(p)) for p in paths])  # (B, 3, H, W)
    with torch.no_grad():
        features = model.encoder.eval()(pixels.contiguous(memory_format=torch.channels_last))  # (B, L, D)
    inputs, targets = pad_batch([split.captions[i] for i in batch], model.vocab.pad_id)  # (B, T)
    logits = model.decoder(features, inputs)  # (B, T, V)
    loss = run.loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    apply_gradients(run, loss)


def time_naive(run, steps: int) -> dict:
    """The naive loop over randomly drawn captions (batch 128), a few steps after building the encoder."""
    import torch

    from captioner.training.xe import train_mode

    train_mode(run)
    with torch.no_grad():
        run.model.encoder.eval()(torch.zeros(1, 3, run.model.config.preprocess.crop,
                                             run.model.config.preprocess.crop))  # build + warm the encoder
    order = torch.randperm(len(run.train.captions), generator=torch.Generator().manual_seed(0)).tolist()
    size = run.cfg.batch_size
    batches = [order[i * size : (i + 1) * size] for i in range(steps)]
    t0 = time.perf_counter()
    for batch in batches:
        naive_step(run, batch)
    seconds = time.perf_counter() - t0
    captions = sum(len(b) for b in batches)
    return {"steps": len(batches), "seconds": seconds, "captions": captions, "step_s": seconds / len(batches),
            "captions_per_s": captions / seconds}


def child_train(args: argparse.Namespace) -> int:
    """``--child-train``: set up the recipe's run, time steady-state and naive steps; JSON on stdout."""
    out: dict = {"errors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        run, setup_s = build_recipe_run(args.data, args.cache_dir, Path(tmp) / "run", args.threads,
                                        args.train_images)
        out["setup_s"] = setup_s  # reading (or, with a cold cache, extracting) the split's features
        out["rss_after_setup"] = proc_status_mb()
        batches = recipe_batches(run)
        warmup, steps = (1, 2) if args.quick else (3, 40)
        out["recipe"] = time_recipe_steps(run, batches, warmup, min(steps, len(batches) - warmup))
        out["trainable_params"] = sum(p.numel() for p in run.model.decoder.parameters() if p.requires_grad)
        out["batches_per_epoch"] = len(batches)
        out["captions_per_epoch"] = len(run.train.captions)
        t0 = time.perf_counter()
        guarded("validate", out["errors"], _validate_once, run)
        out["validate_s"] = time.perf_counter() - t0
        out["peak_rss_mb_training"] = peak_rss_self_mb()  # before the naive loop loads the encoder
        out["rss_at_peak_point"] = proc_status_mb()
        out["counted_flops_per_step"] = guarded("flop_count", out["errors"], counted_step_flops, run, batches[0])
        out["counted_step_tokens"] = real_tokens(run, batches[0])
        out["naive"] = guarded("naive", out["errors"], time_naive, run, 1 if args.quick else args.naive_steps)
    print(json.dumps(out))
    return 0


def _validate_once(run) -> dict:
    """One end-of-epoch validation (teacher-forced loss + greedy captions), for its memory."""
    from captioner.training.validation import validate

    return validate(run)


def measure_training(args: argparse.Namespace, gflops: float | None, errors: dict) -> dict:
    """Run ``--child-train`` and turn its timings into the issue's figures."""
    cmd = [sys.executable, str(BENCHMARK), "--child-train", "--data", str(args.data),
           "--cache-dir", str(args.cache_dir), "--threads", str(args.threads), "--train-images", str(args.train_images),
           "--naive-steps", str(args.naive_steps)] + (["--quick"] if args.quick else [])
    with tempfile.TemporaryFile() as stdout:
        result = run_measured(cmd, child_env(args.threads), stdout=stdout)
        stdout.seek(0)
        text = stdout.read().decode()
    if result["rc"] != 0:
        errors["train"] = f"child exited {result['rc']}: {result['stderr_tail']}"
        return {}
    child = json.loads(text.strip().splitlines()[-1])
    errors.update({f"train.{k}": v for k, v in child.pop("errors").items()})
    return summarize_training(child, result, gflops)


def summarize_training(child: dict, result: dict, gflops: float | None) -> dict:
    """The child's raw timings → captions/s, speed-up over the naive loop, MFU (two FLOP counts), peak RSS."""
    recipe, naive = child["recipe"], child.get("naive")
    flops_per_step = 6 * child["trainable_params"] * recipe["tokens_per_step"]
    achieved = flops_per_step / recipe["step_s"] / 1e9  # GFLOP/s
    counted = child.get("counted_flops_per_step")
    counted_per_step = counted / child["counted_step_tokens"] * recipe["tokens_per_step"] if counted else None
    out = {
        "train_captions_per_s": r(recipe["captions_per_s"], 1),
        "train_naive_captions_per_s": r(naive["captions_per_s"], 2) if naive else None,
        "train_speedup_vs_naive": r(recipe["captions_per_s"] / naive["captions_per_s"], 2) if naive else None,
        "train_gflops_per_s": r(achieved, 2),
        "train_mfu": r(achieved / gflops, 4) if gflops else None,
        "train_mfu_counted": r(counted_per_step / recipe["step_s"] / 1e9 / gflops, 4)
        if counted_per_step and gflops else None,
        "train_epoch_s_estimate": r(child["batches_per_epoch"] * recipe["step_s"], 1),
        "train_detail": {
            "steady_state": {k: r(v, 4) for k, v in recipe.items()},
            "naive": {k: r(v, 4) for k, v in naive.items()} if naive else None,
            "trainable_params": child["trainable_params"],
            "flops_per_step_6ND": r(flops_per_step / 1e9, 3),
            "flops_per_step_counted_gflop": r(counted_per_step / 1e9, 3) if counted_per_step else None,
            "batches_per_epoch": child["batches_per_epoch"], "captions_per_epoch": child["captions_per_epoch"],
            "setup_s": r(child["setup_s"], 2), "validate_s": r(child["validate_s"], 2),
            "rss_after_setup_mb": child["rss_after_setup"], "rss_at_peak_point_mb": child["rss_at_peak_point"],
            "child_wall_s": r(result["wall_s"], 1),
            "child_peak_rss_mb_incl_naive_encoder": r(result["peak_rss_mb"], 1),
        },
        "peak_rss_mb_training": r(child["peak_rss_mb_training"], 1),
    }
    return out


def child_rss(args: argparse.Namespace) -> int:
    """``--child-rss N``: a cold-cache training setup of the first N training images (``--cache-dir`` is a fresh
    feature cache, so the setup extracts every feature), two steps and one validation of ``--rss-val-images``
    validation images; its peak RSS, as JSON on stdout."""
    out: dict = {"errors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        run, setup_s = build_recipe_run(args.data, args.cache_dir, Path(tmp) / "run", args.threads, args.child_rss,
                                        holdout=0, val_images=args.rss_val_images)
        out.update(setup_s=setup_s, train_images=len(run.train.data), rss_after_setup=proc_status_mb())
        batches = recipe_batches(run)
        guarded("steps", out["errors"], time_recipe_steps, run, batches, 0, min(2, len(batches)))
        guarded("validate", out["errors"], _validate_once, run)
        out["peak_rss_mb"] = peak_rss_self_mb()
    print(json.dumps(out))
    return 0


def measure_train_rss(args: argparse.Namespace, sizes: list[int], errors: dict) -> dict:
    """One ``--child-rss N`` per size, each with an empty feature cache: the peak RSS of a cold-cache training setup
    at each size and its slope in MB per 1,000 images (flat memory means a slope near zero)."""
    points, runs = {}, {}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="captioner-cold-cache-") as cache, \
                tempfile.TemporaryFile() as stdout:
            cmd = [sys.executable, str(BENCHMARK), "--child-rss", str(n), "--data", str(args.data), "--cache-dir",
                   cache, "--threads", str(args.threads), "--rss-val-images", str(args.rss_val_images)]
            result = run_measured(cmd, child_env(args.threads), stdout=stdout)
            stdout.seek(0)
            text = stdout.read().decode()
        if result["rc"] != 0:
            errors[f"train_rss_{n}"] = f"child exited {result['rc']}: {result['stderr_tail']}"
            continue
        child = json.loads(text.strip().splitlines()[-1])
        errors.update({f"train_rss_{n}.{k}": v for k, v in child.pop("errors").items()})
        points[child["train_images"]] = child["peak_rss_mb"]
        runs[str(child["train_images"])] = {"peak_rss_mb": r(child["peak_rss_mb"], 1),
                                            "setup_s": r(child["setup_s"], 1), "child_wall_s": r(result["wall_s"], 1),
                                            "rss_after_setup_mb": child["rss_after_setup"]}
    return {"peak_rss_mb_train_cold": r(max(points.values()), 1) if points else None,
            "train_rss_slope_mb_per_1000": r(rss_slope(points), 1), "train_rss_runs": runs}
