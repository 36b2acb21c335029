"""ONNX Runtime sessions of an export directory, created without PyTorch, and the choice of backend.

:func:`open_export` finds and checks the export and creates its sessions on a background thread (ONNX Runtime
releases the GIL while it builds a session, and hashing the model files releases it too), so that they load while
the command goes on importing and parsing. :func:`choose_backend` answers without importing torch on a machine
without a GPU driver. Nothing here imports torch at module level, nor onnxruntime before a session is made.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from captioner.export.layout import ExportLoadError, check_export_dir, export_location

BACKENDS = ("auto", "onnxruntime", "torch")


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthreads of one core counted once; Linux sysfs, else the logical
    CPU count)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in cpus:
        try:
            text = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
        except OSError:
            return len(cpus)
        cores.add(text.strip())
    return len(cores) or len(cpus) or os.cpu_count() or 1


def default_threads() -> int:
    """Intra-op threads of a session when none are asked for: torch's own thread count once torch is imported
    (``torch.set_num_threads`` applies to both backends), else what torch will choose: ``OMP_NUM_THREADS`` or the
    physical cores."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return torch.get_num_threads()
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return physical_cores()


SPINNING_GRAPHS = frozenset({"encoder", "classifier"})  # one long run per batch: threads spin within it


def make_session(path: Path, threads: int | None = None, spin: bool = False):
    """An ONNX Runtime CPU session with all graph optimisations and ``threads`` intra-op threads (None:
    :func:`default_threads`); ``spin``: idle threads spin while a run lasts (and stop when it ends), for graphs run
    once per batch (:data:`SPINNING_GRAPHS`).

    Raises:
        ExportLoadError: onnxruntime is missing, or cannot load the graph.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportLoadError("the onnxruntime backend needs onnxruntime (a dependency of captioner): pip install "
                              "onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1  # the graphs are chains: no parallel branches worth a thread pool
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The decoder's step graph is many small runs, between which spinning threads burn a core; with other processes
    # on the CPU, that made greedy search 1.7x slower here, so its idle threads sleep. The encoder is one long run per
    # batch, made of many parallel sections: spinning between them made it 8-18% faster here (batch 32, 2 threads),
    # and force_spinning_stop ends the spinning with the run, so the search after it gets the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types (bad protobuf, unknown op, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportLoadError(f"ONNX Runtime cannot load {path} ({reason}); export the model again with "
                              "`captioner export`") from None


def graph_session(directory: Path, name: str, file: str, threads: int | None = None):
    """The session of an export's graph ``name`` (``file`` in ``directory``), spinning within a run for
    :data:`SPINNING_GRAPHS`."""
    return make_session(directory / file, threads, spin=name in SPINNING_GRAPHS)


def graph_files(manifest: dict) -> dict[str, str]:
    """The export's graphs, ``{name: file}`` (``encoder``, ``decoder_init``, ``decoder_step``, ``classifier`` when
    the encoder has an ImageNet head)."""
    return {name: file for name, file in manifest["graphs"].items() if file}


class OpeningExport:
    """The export of a model being opened on a background thread: its directory found (the model files hashed for
    the cache key), its manifest checked and every graph's session created. :meth:`result` waits for it.

    Args:
        model: an export directory, a model directory (its export in the cache), or None / ``default``.
        threads: intra-op threads per session (None: :func:`default_threads`, read now).
    """

    def __init__(self, model: str | Path | None, threads: int | None = None) -> None:
        self.model, self.threads = model, threads or default_threads()
        self.directory: Path | None = None
        self.manifest: dict | None = None
        self.sessions: dict = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, name="captioner-onnx-open", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            self.directory, exported = export_location(self.model)
            if not exported:
                return  # exporting needs torch: the caller does it (captioner.export.runtime.cached_export)
            self.manifest = check_export_dir(self.directory)
            for name, file in graph_files(self.manifest).items():
                self.sessions[name] = graph_session(self.directory, name, file, self.threads)
        except BaseException as err:  # noqa: BLE001  (handed to the caller by result())
            self._error = err

    def result(self) -> tuple[Path, dict | None, dict]:
        """The export directory, its manifest (None: the model is not exported yet) and its sessions by graph name.

        Raises:
            ExportLoadError: the directory is not a usable export (the message says what to do).
            ModelLoadError, OSError: the model directory cannot be read.
        """
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.directory, self.manifest, self.sessions


def open_export(model: str | Path | None = None, threads: int | None = None) -> OpeningExport:
    """Start opening the export of ``model`` (see :class:`OpeningExport`), then hand it to
    :func:`captioner.export.runtime.load_onnx`."""
    return OpeningExport(model, threads)


def cuda_possible() -> bool:
    """Whether PyTorch may find a CUDA (or ROCm) GPU: on Linux without a GPU driver's device files, no, answered
    without importing torch; otherwise ``torch.cuda.is_available()``."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        dev = Path("/dev")
        drivers = [Path("/proc/driver/nvidia/version"), dev / "dxg", dev / "kfd"]  # NVIDIA, WSL2, ROCm
        if not any(p.exists() for p in drivers) and not any(dev.glob("nvidia[0-9]*")):
            return False
    import torch

    return torch.cuda.is_available()


def choose_backend(backend: str, device: str) -> tuple[str, str | None]:
    """The backend to caption with, and why PyTorch when ``auto`` could not use ONNX Runtime (None otherwise).

    ``auto`` (the default) is ONNX Runtime on the CPU, PyTorch on a GPU (``--device cuda|mps``, or ``auto`` on a
    machine that has one) or where onnxruntime is missing.

    Raises:
        ValueError: ``onnxruntime`` asked for with a GPU device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch", None
    if device in ("cuda", "mps"):
        if backend == "onnxruntime":
            raise ValueError(f"--backend onnxruntime runs on the CPU; drop --device {device} or use --backend torch")
        return "torch", f"--device {device} runs PyTorch (ONNX Runtime runs on the CPU here)"
    if device == "auto" and backend == "auto" and cuda_possible():
        return "torch", "a CUDA GPU is available, where PyTorch is the faster backend"
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        if backend == "onnxruntime":
            raise ValueError("--backend onnxruntime needs onnxruntime: pip install onnxruntime")
        return "torch", "onnxruntime is not installed (pip install onnxruntime for the faster CPU backend)"
    return "onnxruntime", None
