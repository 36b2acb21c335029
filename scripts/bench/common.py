"""Helpers every benchmark part shares: where the repository and the data are, running a child process and reading
its peak memory, folders of linked images, the slope of memory over data size, the machine's description and its
matmul rate, rounding, and recording a failed measurement."""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCHMARK = REPO / "scripts" / "benchmark.py"
SHARED = REPO.parent / "shared" / "data"


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


# Linux carries a process's peak RSS across fork and exec (exec records the old address space's high-water mark), so
# a command started straight from this process, which holds ~1-2 GB after the in-process phases, would report at
# least that much. A small wrapper process starts the command instead and reports the peak of its only child.
_WRAPPER = ("import resource, subprocess, sys\n"
            "rc = subprocess.call(sys.argv[1:])\n"
            "sys.stderr.write('\\n__peak_rss_kb__ %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(rc)\n")


def run_measured(cmd: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> dict:
    """Run a command as a grandchild through a small wrapper; its wall time, exit code, stderr tail and its own peak
    RSS (the wrapper's ``RUSAGE_CHILDREN``, free of this process's high-water mark)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, *cmd], stdout=stdout, stderr=err, env=env)
        proc.wait()
        wall = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode(errors="replace")
    match = re.search(r"__peak_rss_kb__ (\d+)", text)
    tail = re.sub(r"\n?__peak_rss_kb__ \d+\n?", "", text)[-600:]
    return {"wall_s": wall, "rc": proc.returncode, "peak_rss_mb": int(match[1]) / 1024 if match else None,
            "stderr_tail": tail}


def child_env(threads: int, cache: Path | None = None) -> dict:
    """Environment of child processes: this venv's PATH, the thread count for torch's OpenMP pool and, given, the
    captioner cache (``CAPTIONER_CACHE``: where the default model's ONNX export is kept)."""
    env = dict(os.environ)
    if cache is not None:
        env["CAPTIONER_CACHE"] = str(cache)
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


def val_images(data: Path, n: int) -> list[Path]:
    """The first ``n`` images of the validation split (all of it when it is shorter)."""
    names = (data / "splits" / "val.txt").read_text().split()[:n]
    return [data / "images" / name for name in names]


def folder_images(folder: Path, n: int) -> list[Path]:
    """The first ``n`` image files of a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


def link_folder(paths: list[Path], directory: Path) -> Path:
    """A folder of symbolic links to ``paths`` (a directory argument for ``captioner caption``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in paths:
        (directory / path.name).symlink_to(path.resolve())
    return directory


def rss_slope(points: dict[int, float]) -> float | None:
    """Least-squares slope of peak memory (MB) over data size (images), in MB per 1,000 images (None with fewer
    than two sizes)."""
    sizes = sorted(points)
    if len(sizes) < 2:
        return None
    mean_n = sum(sizes) / len(sizes)
    mean_mb = sum(points[n] for n in sizes) / len(sizes)
    spread = sum((n - mean_n) ** 2 for n in sizes)
    return 1000 * sum((n - mean_n) * (points[n] - mean_mb) for n in sizes) / spread


def select_phases(phases: tuple[str, ...], only: str | None, skip: str | None) -> list[str]:
    """The phases to run, in order: ``only`` (comma-separated; None: all) less ``skip``.

    Raises:
        ValueError: a name that is not a phase.
    """
    wanted = [p.strip() for p in only.split(",") if p.strip()] if only else list(phases)
    unwanted = {p.strip() for p in skip.split(",") if p.strip()} if skip else set()
    unknown = sorted((set(wanted) | unwanted) - set(phases))
    if unknown:
        raise ValueError(f"unknown phase(s) {', '.join(unknown)}; the phases are {', '.join(phases)}")
    return [p for p in phases if p in wanted and p not in unwanted]
