#!/usr/bin/env python3
"""Speed and memory benchmark of issue 13, one run, JSON to stdout (and ``--out``); never asserted in tests.

What it measures (CPU only; every figure at ``--threads`` torch threads):

- ``matmul_gflops``: the machine's dense fp32 ceiling, a large ``torch.matmul`` (best of a few);
- training of the default recipe (attention decoder on EfficientNet-Lite2 9x9 maps, batch 128 by image) with
  the feature cache warm, steady-state steps through the training loop's own step (``captioner.train``), against
  a naive tutorial loop that loads, transforms and encodes one image per caption at every step; ``train_mfu``;
- captioning through the ``captioner caption`` code path (batch 32, beam 3), the model load excluded;
- the cold start of ``captioner caption ONE.jpg`` as a fresh process, its import time and top import costs;
- the encoder's FLOPs per image and the share of the matmul ceiling it reaches;
- peak resident memory of a training process on the whole train split and of captioning 1000 images.

The training figures and the training memory come from one child process (``--child-train``) that loads the
split as ``captioner train`` does; its peak RSS is read before the naive baseline loads the encoder.

Usage: python scripts/benchmark.py [--data ../shared/data/flickr8k] [--cache-dir runs/cache] [--images 300]
       [--threads N] [--backend torch|onnxruntime] [--quick] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
TARGETS = {  # issue 13: (key, comparison, bound)
    "train_speedup_vs_naive": (">=", 10.0),
    "train_mfu": (">=", 0.70),
    "caption_images_per_s": (">=", 40.0),
    "cli_cold_s": ("<=", 3.0),
    "peak_rss_mb": ("<=", 2048.0),
}
RECIPE = dict(  # scripts/train_default.sh, one member
    model=dict(encoder="efficientnet_lite2", inject="attention", attention_dim=256, attention_init="mean",
               embed_dim=256, hidden_dim=512, image_proj_dim=256, dropout=0.5),
    train=dict(epochs=8, batch_size=128, lr=1e-3, schedule="cosine", clip_norm=5.0, min_count=5, holdout=500,
               holdout_seed=0, select_by="cider", patience=3, keep_epochs=5, seed=0, batch_by_image=True),
)


# --- small helpers -----------------------------------------------------------------------------------------


def peak_rss_self_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb() -> dict:
    """VmRSS / VmHWM / RssAnon / RssFile of this process from /proc (MiB); empty where /proc is missing."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    out = {}
    for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if match:
            out[key] = round(int(match[1]) / 1024, 1)
    return out


def run_measured(cmd: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> dict:
    """Run a command as a child; its wall time, exit code, stderr tail and its own peak RSS (``os.wait4``)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        tail = err.read().decode(errors="replace")[-600:]
    return {"wall_s": wall, "rc": proc.returncode, "peak_rss_mb": usage.ru_maxrss / 1024, "stderr_tail": tail}


def child_env(threads: int) -> dict:
    """Environment of child processes: this venv's PATH, and the thread count for torch's OpenMP pool."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = str(threads)
    env.pop("CAPTIONER_DEBUG", None)
    return env


def captioner_cmd() -> list[str]:
    """The ``captioner`` console script of this environment (``python -m`` when it is not installed)."""
    script = Path(sys.executable).parent / "captioner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "captioner.cli.main"]


def r(value: float | None, digits: int = 3) -> float | None:
    """Round for the report (None stays None)."""
    return None if value is None else round(float(value), digits)


def guarded(name: str, errors: dict, fn, *args, **kwargs):
    """Call ``fn``; on failure record ``name: error`` in ``errors`` and return None (the benchmark goes on)."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # a benchmark reports what failed instead of stopping
        errors[name] = f"{type(err).__name__}: {err}"[:500]
        return None


# --- machine ----------------------------------------------------------------------------------------------


def machine_info() -> dict:
    """Platform, CPUs, torch version and threads, and the load average (a busy machine shows here)."""
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "cpus_usable": affinity, "torch_threads": torch.get_num_threads(),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def matmul_gflops(n: int, repeats: int) -> float:
    """Best fp32 ``torch.matmul`` rate of an ``n x n`` product, GFLOP/s (2 n^3 FLOPs each)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# --- training (child process) -----------------------------------------------------------------------------


def build_recipe_run(data: Path, cache_dir: Path, out: Path, threads: int, train_images: int, device: str = "cpu",
                     precision: str = "auto"):
    """The default recipe's training run set up as ``captioner train`` does it (``captioner.train._build_run``):
    whole train split (minus the 500 held out for selection) with its cached features loaded, vocabulary, model,
    optimizer and schedule. ``train_images`` > 0 cuts the split (quick runs); ``device`` and ``precision`` as
    ``captioner train``'s (scripts/gpu_bench.py)."""
    from captioner import train as training
    from captioner.config import ModelConfig, TrainConfig
    from captioner.model import Captioner, complete_config
    from captioner.runstate import seed_everything
    from captioner.splits import load_splits
    from captioner.vocab import Vocabulary

    holdout = RECIPE["train"]["holdout"] if not train_images else max(train_images // 5, 4)
    cfg = TrainConfig(data=str(data), out=str(out), cache_dir=str(cache_dir), num_threads=threads, device=device,
                      precision=precision, **{**RECIPE["train"], "holdout": holdout})
    seed_everything(cfg.seed)
    import torch

    torch.set_num_threads(threads)
    train_set, val_set = load_splits(cfg)
    if train_images:
        train_set = train_set.subset(train_images)
    vocab = Vocabulary.build(train_set.captions(), cfg.min_count)
    model = Captioner(complete_config(ModelConfig(**RECIPE["model"]), len(vocab), cfg.image_size), vocab)
    t0 = time.perf_counter()
    run = training._build_run(model, cfg, out, train_set, val_set, [])
    return run, time.perf_counter() - t0


def recipe_batches(run) -> list[list[int]]:
    """The first epoch's cross-entropy batches (whole images, >= 128 captions each), as the loop draws them."""
    import torch

    from captioner.train import xe_batches

    return xe_batches(run.train, run.cfg, torch.Generator().manual_seed(run.cfg.seed * 1000 + 1))


def real_tokens(run, batch: list[int]) -> int:
    """Target tokens of a batch that are not padding: each caption's length minus its <start>."""
    return sum(len(run.train.captions[i]) - 1 for i in batch)


def time_recipe_steps(run, batches: list[list[int]], warmup: int, steps: int) -> dict:
    """Steady-state cross-entropy steps through the loop's own step function (features from the cache)."""
    from captioner.train import _train_mode, _xe_step

    _train_mode(run)
    for batch in batches[:warmup]:
        _xe_step(run, batch)
    timed = batches[warmup : warmup + steps]
    t0 = time.perf_counter()
    for batch in timed:
        _xe_step(run, batch)
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

    from captioner.train import _xe_step

    counter = FlopCounterMode(display=False)
    with counter:
        _xe_step(run, batch)
    return float(counter.get_total_flops())


def naive_step(run, batch: list[int]) -> None:
    """One step of the tutorial loop: every caption brings its own image, which is read, transformed and encoded
    (no_grad) again at every step, then the same decoder step as the real loop."""
    import torch

    from captioner.images import load_image
    from captioner.runstate import apply_gradients
    from captioner.data.batching import pad_batch

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

    from captioner.train import _train_mode

    _train_mode(run)
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
    from captioner.train import _validate

    return _validate(run)


# --- training (parent side) -------------------------------------------------------------------------------


def measure_training(args: argparse.Namespace, gflops: float | None, errors: dict) -> dict:
    """Run ``--child-train`` and turn its timings into the issue's figures."""
    cmd = [sys.executable, str(HERE), "--child-train", "--data", str(args.data), "--cache-dir", str(args.cache_dir),
           "--threads", str(args.threads), "--train-images", str(args.train_images),
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


# --- captioning -------------------------------------------------------------------------------------------


def val_images(data: Path, n: int) -> list[Path]:
    """The first ``n`` images of the validation split (all of it when it is shorter)."""
    names = (data / "splits" / "val.txt").read_text().split()[:n]
    return [data / "images" / name for name in names]


def backend_args(args: argparse.Namespace) -> list[str]:
    """Extra ``captioner caption`` options that select the backend and its model."""
    if args.backend == "torch":
        return ["--model", args.model] if args.model != "default" else []
    return ["--backend", args.backend, "--model", str(args.onnx_dir)]


def load_caption_model(args: argparse.Namespace):
    """The model as ``captioner caption`` loads it (``cli.caption.load_backend``, or ``cli.common.load_model``
    where the CLI has no backends), on the CPU."""
    from captioner.cli import caption

    model = args.model if args.backend == "torch" else str(args.onnx_dir)
    load_backend = getattr(caption, "load_backend", None)
    if load_backend is not None:
        return load_backend(argparse.Namespace(backend=args.backend, model=model, device="cpu"))
    if args.backend != "torch":
        raise RuntimeError(f"this captioner's caption command has no --backend {args.backend}")
    return caption.load_model(model, "cpu")


def caption_batch(model, paths: list[Path], config) -> list[str]:
    """What ``captioner caption`` does per batch (``cli/caption.py``), without printing: read, caption, decode."""
    from captioner.images import load_image

    hyps = model.caption_images([load_image(p) for p in paths], config)
    return [model.vocab.decode(h[0].tokens) for h in hyps]


def measure_caption(args: argparse.Namespace, paths: list[Path]) -> dict:
    """Images/s over ``paths`` in batches of ``args.caption_batch`` (beam 3) after a warm-up batch, and the
    median warm latency of one image."""
    from captioner.cli.common import generation_config

    t0 = time.perf_counter()
    model = load_caption_model(args)
    load_s = time.perf_counter() - t0
    config = generation_config(argparse.Namespace(beam_size=3, max_length=20))
    size = args.caption_batch
    caption_batch(model, paths[:size], config)  # warm-up: builds the encoder, first-call costs
    t0 = time.perf_counter()
    for start in range(0, len(paths), size):
        caption_batch(model, paths[start : start + size], config)
    seconds = time.perf_counter() - t0
    singles = []
    for path in paths[: 3 if args.quick else 9]:
        t1 = time.perf_counter()
        caption_batch(model, [path], config)
        singles.append(time.perf_counter() - t1)
    return {"caption_images_per_s": r(len(paths) / seconds, 2), "caption_ms_single": r(
        1000 * statistics.median(singles), 1), "caption_detail": {
        "images": len(paths), "batch_size": size, "beam_size": 3, "seconds": r(seconds, 2),
        "model_load_s": r(load_s, 3), "single_ms_all": [r(1000 * s, 1) for s in singles]}}


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
    images_per_s = len(pixels) / min(times)
    achieved = per_image * images_per_s
    return {"encoder_gflops_per_image": r(per_image, 3), "encoder_images_per_s": r(images_per_s, 2),
            "encoder_gflops_per_s": r(achieved, 2),
            "encoder_fraction_of_matmul": r(achieved / gflops, 4) if gflops else None,
            "encoder_input": [len(pixels), 3, crop, crop]}


# --- cold start and imports -------------------------------------------------------------------------------

PHASES = """
import argparse, json, sys, time
t0 = time.perf_counter()
import captioner.cli
t1 = time.perf_counter()
import torch
t2 = time.perf_counter()
import captioner.encoders, captioner.generate
from captioner.cli import caption
from captioner.cli.common import generation_config
from captioner.images import load_image
t3 = time.perf_counter()
args = argparse.Namespace(backend=sys.argv[3], model=sys.argv[2], device="cpu")
load = getattr(caption, "load_backend", None)
model = load(args) if load else caption.load_model(args.model, "cpu")
t4 = time.perf_counter()
model.encoder
t5 = time.perf_counter()
config = generation_config(argparse.Namespace(beam_size=3, max_length=20))
model.caption_images([load_image(sys.argv[1])], config)
t6 = time.perf_counter()
print(json.dumps({"import_cli_s": t1 - t0, "import_torch_s": t2 - t1, "import_encoders_generate_s": t3 - t2,
                  "load_model_s": t4 - t3, "build_encoder_s": t5 - t4, "first_caption_s": t6 - t5}))
"""


def median_run(cmd: list[str], env: dict, repeats: int) -> tuple[float | None, dict]:
    """Median wall time of ``repeats`` runs of ``cmd`` (None when one fails) and the last run's record."""
    walls, last = [], {}
    for _ in range(repeats):
        last = run_measured(cmd, env)
        if last["rc"] != 0:
            return None, last
        walls.append(last["wall_s"])
    return statistics.median(walls), last


def measure_cold_start(args: argparse.Namespace, image: Path, errors: dict) -> dict:
    """``captioner caption ONE.jpg`` as a fresh process (median of 3), the bare interpreter start, the import of
    ``captioner.cli`` alone (timed inside a fresh process), and the phases of a cold caption (torch backend)."""
    env = child_env(args.threads)
    cold, last = median_run(captioner_cmd() + ["caption", str(image)] + backend_args(args), env, 3)
    if cold is None:
        errors["cli_cold"] = f"exit {last['rc']}: {last['stderr_tail']}"
    startup, _ = median_run([sys.executable, "-c", "pass"], env, 3)
    code = "import time; t = time.perf_counter(); import captioner.cli; print(time.perf_counter() - t)"
    imports = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout) for _ in range(3)]
    out = {"cli_cold_s": r(cold, 3), "import_s": r(statistics.median(imports), 4),
           "python_startup_s": r(startup, 3)}
    model = args.model if args.backend == "torch" else str(args.onnx_dir)
    phases = subprocess.run([sys.executable, "-c", PHASES, str(image), model, args.backend], env=env,
                            capture_output=True, text=True)
    if phases.returncode == 0:
        out["cold_phases_s"] = {k: r(v, 3) for k, v in json.loads(phases.stdout.splitlines()[-1]).items()}
    else:
        errors["cold_phases"] = phases.stderr[-500:]
    return out


def parse_importtime(text: str) -> list[tuple[int, str, int, int]]:
    """``-X importtime`` lines → ``(depth, module, self_us, cumulative_us)`` in the order printed (children
    before their parent)."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append(((len(match[3]) - 1) // 2, match[4], int(match[1]), int(match[2])))
    return rows


def import_costs(rows: list[tuple[int, str, int, int]], top: int = 8) -> dict:
    """The costliest imports: the first-level imports of the command (what a captioner module pulled in when it
    was first imported), each with its three costliest children; and each heavy third-party package with the
    captioner module that imported it first."""
    parents: dict[int, int] = {}
    stack: list[int] = []  # indices waiting for their parent (children are printed first)
    for i, (depth, *_rest) in enumerate(rows):
        while stack and rows[stack[-1]][0] > depth:
            parents[stack.pop()] = i
        stack.append(i)
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    skip = {"site", "encodings", "_frozen_importlib_external", "zipimport"}
    firsts = sorted((i for i, row in enumerate(rows) if row[0] == 0 and row[1] not in skip),
                    key=lambda i: -rows[i][3])[:top]
    first_level = [{"module": rows[i][1], "cumulative_s": r(rows[i][3] / 1e6, 3), "pulls_in": [
        f"{rows[c][1]} {rows[c][3] / 1e6:.3f}s" for c in sorted(children.get(i, []), key=lambda c: -rows[c][3])[:3]]}
        for i in firsts]
    return {"first_level": first_level, "heavy_packages": heavy_packages(rows, parents)}


def heavy_packages(rows: list, parents: dict[int, int], min_s: float = 0.02) -> list[dict]:
    """Top-level third-party packages costing over ``min_s``, with the captioner module that imported each and the
    chain of imports from it (the standard library left out)."""
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    out = []
    for i, (_depth, name, _self, cumulative) in enumerate(rows):
        if "." in name or name.startswith(("captioner", "_")) or name in stdlib or cumulative / 1e6 < min_s:
            continue
        chain, j = [name], parents.get(i)
        while j is not None and not chain[-1].startswith("captioner"):
            chain.append(rows[j][1])
            j = parents.get(j)
        via = chain[-1] if chain[-1].startswith("captioner") else "(a call at run time, not an import)"
        links = chain[::-1]
        links = links if len(links) <= 5 else links[:2] + ["..."] + links[-2:]
        out.append({"package": name, "cumulative_s": r(cumulative / 1e6, 3), "imported_by": via,
                    "chain": " > ".join(links)})
    return sorted(out, key=lambda row: -row["cumulative_s"])[:10]


def measure_imports(args: argparse.Namespace, image: Path, errors: dict) -> dict:
    """``python -X importtime`` of ``captioner caption ONE.jpg`` run in-process (``captioner.cli.main``)."""
    code = (f"import sys; from captioner.cli import main; "
            f"sys.exit(main({['caption', str(image)] + backend_args(args)!r}))")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=child_env(args.threads),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        errors["importtime"] = proc.stderr[-500:]
    rows = parse_importtime(proc.stderr)
    total = sum(row[2] for row in rows) / 1e6
    return {"import_total_s_caption_command": r(total, 3), **import_costs(rows)}


def measure_caption_rss(args: argparse.Namespace, paths: list[Path], cold_s: float | None, errors: dict) -> dict:
    """``captioner caption DIR --batch-size 32 --beam-size 3 --json`` over a folder of symlinked images: its
    peak RSS, wall time and, less one cold single-image run, its steady images/s through the real CLI."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            (Path(tmp) / path.name).symlink_to(path.resolve())
        cmd = captioner_cmd() + ["caption", tmp, "--batch-size", str(args.caption_batch), "--beam-size", "3",
                                 "--json"] + backend_args(args)
        result = run_measured(cmd, child_env(args.threads))
    if result["rc"] != 0:
        errors["caption_rss"] = f"exit {result['rc']}: {result['stderr_tail']}"
        return {}
    steady = (len(paths) - 1) / (result["wall_s"] - cold_s) if cold_s and result["wall_s"] > cold_s else None
    return {"peak_rss_mb_caption": r(result["peak_rss_mb"], 1), "caption_cli_images": len(paths),
            "caption_cli_wall_s": r(result["wall_s"], 2), "caption_cli_images_per_s": r(steady, 2)}


# --- report -----------------------------------------------------------------------------------------------


def prepare_onnx(args: argparse.Namespace, tmp: Path, errors: dict) -> bool:
    """With ``--backend onnxruntime`` and no ``--onnx-dir``: export the torch model with ``captioner export``."""
    if args.backend == "torch" or args.onnx_dir:
        return True
    args.onnx_dir = tmp / "onnx"
    cmd = captioner_cmd() + ["export", "--model", args.model, "--format", "onnx", "--out", str(args.onnx_dir)]
    result = run_measured(cmd, child_env(args.threads))
    if result["rc"] != 0:
        errors["onnx_export"] = f"exit {result['rc']}: {result['stderr_tail']}"
        return False
    return True


def check_targets(report: dict) -> dict:
    """Pass/fail of each target of issue 13 (None: not measured)."""
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = report.get(key)
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"value": value, "target": f"{op} {bound:g}", "pass": ok}
    return out


NOTES = [
    "CPU only; every figure at the thread count in machine.torch_threads (children get OMP_NUM_THREADS).",
    "train_captions_per_s: steady-state steps of the default recipe (attention, efficientnet_lite2, batch 128 by "
    "image) through captioner.train's own step, features read from the warm cache; warm-up steps excluded.",
    "train_naive_captions_per_s: tutorial loop (each caption's image read, transformed and encoded under no_grad "
    "at every step, then the same decoder step), measured over a few batches only and taken per caption.",
    "train_mfu: 6 x trainable decoder params x real (unpadded) target tokens per step / step time / "
    "matmul_gflops; train_mfu_counted uses FlopCounterMode's count of one step (forward+backward, includes the "
    "attention over the 81 locations) instead.",
    "FLOPs everywhere are 2 x multiply-adds (torch.utils.flop_counter's convention; convolutions and matmuls "
    "only, no elementwise ops).",
    "caption_images_per_s: the captioner caption path (load_model, load_image, model.caption_images, decode), "
    "model load and a warm-up batch excluded; caption_cli_images_per_s: the real CLI over the 1000-image folder "
    "less one cold single-image run.",
    "peak_rss_mb: the larger of peak_rss_mb_training (a child that sets up the train split as captioner train "
    "does, reading cached features batch by batch, runs steps and one validation; read before the naive loop "
    "builds the encoder; with a cold cache the setup extracts the features and the peak includes that) and "
    "peak_rss_mb_caption (captioner caption over the image folder); both via the process's own ru_maxrss.",
]


def build_report(args: argparse.Namespace, tmp: Path) -> dict:
    """Every measurement in order; a failing one is recorded under ``errors``."""
    import torch

    torch.set_num_threads(args.threads)
    errors: dict = {}
    report: dict = {"benchmark": "captioner issue 13", "quick": args.quick, "backend": args.backend,
                    "machine": machine_info()}
    gflops = guarded("matmul", errors, matmul_gflops, 1024 if args.quick else 4096, 3 if args.quick else 5)
    report["matmul_gflops"] = r(gflops, 1)
    if not args.skip_train:
        report.update(guarded("train", errors, measure_training, args, gflops, errors) or {})
    paths = val_images(args.data, args.images)
    if prepare_onnx(args, tmp, errors):
        report.update(guarded("encoder", errors, encoder_figures, args, paths, gflops) or {})
        report.update(guarded("caption", errors, measure_caption, args, paths) or {})
    report.update(guarded("cold_start", errors, measure_cold_start, args, paths[0], errors) or {})
    report["imports"] = guarded("imports", errors, measure_imports, args, paths[0], errors)
    rss_paths = val_images(args.data, args.rss_images)
    report.update(guarded("caption_rss", errors, measure_caption_rss, args, rss_paths, report.get("cli_cold_s"),
                          errors) or {})
    rss = [report.get(k) for k in ("peak_rss_mb_training", "peak_rss_mb_caption") if report.get(k) is not None]
    report["peak_rss_mb"] = max(rss) if rss else None
    report["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = check_targets(report)
    report["notes"] = NOTES
    report["errors"] = errors
    return report


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options (``--child-train`` is the training child's, hidden)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k",
                        help="Flickr8k caption folder (captions.txt, images/, splits/)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache (default: a temporary one, so the train split is extracted first; "
                        "runs/cache already holds the Lite2 maps of Flickr8k)")
    parser.add_argument("--images", type=int, default=None, help="validation images captioned (default: 300)")
    parser.add_argument("--rss-images", type=int, default=None,
                        help="images in the folder given to captioner caption for its memory (default: 1000)")
    parser.add_argument("--caption-batch", type=int, default=32, help="captioning batch size (default: 32)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="cut the train split to N images (default: all, as a real run; --quick: 60)")
    parser.add_argument("--naive-steps", type=int, default=3, help="steps of the naive loop timed (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable CPUs)")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="backend of the captioning measurements (captioner caption --backend)")
    parser.add_argument("--model", default="default", help="torch model directory (default: the embedded model)")
    parser.add_argument("--onnx-dir", type=Path, default=None,
                        help="with --backend onnxruntime: an export directory (default: captioner export of "
                        "--model into a temporary directory)")
    parser.add_argument("--skip-train", action="store_true",
                        help="leave out the training figures (e.g. when comparing caption backends)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check that everything runs")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--child-train", action="store_true", help=argparse.SUPPRESS)
    return parser


def fill_defaults(args: argparse.Namespace) -> None:
    """Sizes left unset: full ones, or tiny ones with ``--quick``."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    args.threads = args.threads or usable
    quick = {"images": 16, "rss_images": 16, "train_images": 60}
    full = {"images": 300, "rss_images": 1000, "train_images": 0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.caption_batch = min(args.caption_batch, 8)


def main(argv: list[str] | None = None) -> int:
    """Measure everything and print the JSON report (or, as ``--child-train``, the training child's part)."""
    args = get_args_parser().parse_args(argv)
    fill_defaults(args)
    if args.child_train:
        return child_train(args)
    if not (args.data / "captions.txt").is_file():
        print(f"error: {args.data}: not a caption folder (give --data)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp:
        if args.cache_dir is None:
            args.cache_dir = Path(tmp) / "cache"
        report = build_report(args, Path(tmp))
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
