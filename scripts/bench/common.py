"""Helpers every benchmark part shares: where the repository is, running a child process and reading its peak
memory, the machine's description and its matmul rate, rounding, and recording a failed measurement."""

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
