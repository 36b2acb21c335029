"""Files a training run writes: atomic text writes and the CSV log."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class SaveError(OSError):
    """A file could not be written (disk full, no permission); what was there before is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` (readers see the old or the new
    file, never half of one); on failure it is removed and :class:`SaveError` says what happened.

    Example::

        with atomic_target(out / "state.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise save_error(path, err) from None
    except BaseException:  # interrupted: leave no temporary file behind
        tmp.unlink(missing_ok=True)
        raise


def save_error(path: Path, err: OSError) -> SaveError:
    """The one-line error for a failed write of ``path``."""
    before = f"the previous {path.name} is intact" if path.exists() else f"no partial {path.name} was left"
    return SaveError(err.errno, f"cannot write {path}: {err.strerror or err} ({before}); free some space or fix "
                                "the permissions, then run again (training: with --resume)")


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that killed writes left in ``folder`` (``.NAME.PID.tmp``, see
    :func:`atomic_target`); only the run that owns the folder may call this. Returns what was removed."""
    stale = [p for p in Path(folder).glob(".*.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then replace ``path`` with it, as :func:`atomic_target`."""
    with atomic_target(path) as tmp:
        write(tmp)


def files_sha256(paths: Iterable[Path]) -> str:
    """One SHA-256 over several files (names and bytes), e.g. a dataset's caption and split files."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class CsvLog:
    """Appends rows to a CSV file with a fixed header, flushing each row (a killed run keeps its log).

    Args:
        path: the CSV file (created with its header if absent).
        fields: column names; missing values are written empty.
    """

    def __init__(self, path: str | Path, fields: list[str]) -> None:
        self.path, self.fields = Path(path), fields
        new = not self.path.exists()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=fields)
        if new:
            self._writer.writeheader()
            self._handle.flush()

    def write(self, **row) -> None:
        try:
            self._writer.writerow({k: _fmt(v) for k, v in row.items()})
            self._handle.flush()
        except OSError as err:
            raise save_error(self.path, err) from None

    def close(self) -> None:
        self._handle.close()


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def rng_state() -> dict:
    """Python, numpy and torch random states, as plain types and tensors (loadable with ``weights_only=True``)."""
    import random

    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    import random

    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def save_training_state(out: Path, state: dict, step: int, keep: int) -> Path:
    """Write ``out/training_state.pt`` atomically and keep hard links to the last ``keep`` states in
    ``out/checkpoints/`` (older ones are removed).

    Args:
        out: run directory.
        state: tensors and plain types only (it is read back with ``weights_only=True``).
        step: the global step, used in the kept file's name.
        keep: how many earlier states to keep (0: only the latest).
    """
    import torch

    path = Path(out) / "training_state.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    kept = Path(out) / "checkpoints"
    kept.mkdir(exist_ok=True)
    link = kept / f"step-{step:08d}.pt"
    if keep > 0 and not link.exists():
        os.link(path, link)
    for old in sorted(kept.glob("step-*.pt"))[:-keep or None]:
        old.unlink()
    return path


def load_training_state(out: Path) -> dict:
    """Read ``out/training_state.pt`` (``weights_only=True``: no code is unpickled)."""
    import torch

    path = Path(out) / "training_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from; run without --resume to start afresh")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses code objects (UnpicklingError); a damaged archive fails too
        reason = str(err).strip().splitlines()[0][:200]
        raise ValueError(f"{path} is not a training state this version wrote, or it is damaged ({reason}); it was "
                         "not unpickled. Start afresh without --resume, or resume from a copy in "
                         f"{path.parent / 'checkpoints'}") from None
