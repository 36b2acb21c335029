"""Writing files safely: atomic replacement (readers see the old or the new file, never half of one), one error
line for a failed write that says what is intact, removal of what killed writes left, and file checksums."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
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
    except Exception as err:  # an OSError, or a library's own error for a failed write (torch.save's RuntimeError)
        failure = write_failure(err, path.parent)  # before the temporary file is removed: a full disk is still full
        tmp.unlink(missing_ok=True)
        if failure is None:
            raise
        raise save_error(path, failure) from None
    except BaseException:  # interrupted: leave no temporary file behind
        tmp.unlink(missing_ok=True)
        raise


def save_error(path: Path, err: OSError, then: str = "run again (training: with --resume)") -> SaveError:
    """The one-line error for a failed write of ``path``: why, what is intact, and what to do (``then``, after
    freeing space or fixing permissions)."""
    before = f"the previous {path.name} is intact" if path.exists() else f"no partial {path.name} was left"
    return SaveError(err.errno, f"cannot write {path}: {err.strerror or err} ({before}); free some space or fix "
                                f"the permissions, then {then}", str(path))


# How libraries report a write the operating system refused, when they do not raise OSError: torch.save's zip writer
# ("[enforce fail at inline_container.cc:...] . unexpected pos 576 vs 534" on a full disk, "PytorchStreamWriter failed
# writing file"), safetensors ("I/O error: No space left on device (os error 28)").
_WRITE_FAILED = re.compile(r"inline_container\.cc|unexpected pos \d+ vs \d+|PytorchStreamWriter failed|file write failed")
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_FULL_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def write_failure(err: BaseException, folder: Path) -> OSError | None:
    """The :class:`OSError` behind a failed write, whatever a library wrapped it in: ``err`` itself, an ``(os error
    N)`` in its message, or for a writer failure (torch.save's) the ``OSError`` it happened during or, as torch.save
    gives no error number, ``ENOSPC`` when the disk of ``folder`` is full (otherwise ``EIO``). None: ``err`` is not a
    failed write."""
    if isinstance(err, OSError):
        return err
    text = str(err)
    if match := _OS_ERROR.search(text):
        code = int(match.group(1))
        return OSError(code, os.strerror(code))
    if not _WRITE_FAILED.search(text):
        return None
    if isinstance(err.__cause__ or err.__context__, OSError):
        return err.__cause__ or err.__context__
    try:
        stat = os.statvfs(folder)
        full = stat.f_bavail * stat.f_frsize < _FULL_BYTES
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, f"the write failed ({text.strip().splitlines()[0][:120]})")


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that killed writes left in ``folder`` (``.NAME.PID.tmp``, see
    :func:`atomic_target`); only the run that owns the folder may call this. Returns what was removed."""
    stale = [p for p in Path(folder).glob(".*.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


UNOWNED_AGE = 3600.0  # seconds after which a temporary directory without an owner's PID is taken as abandoned


def owned_prefix(name: str, mark: str) -> str:
    """The name prefix of a temporary directory beside ``name`` that records its owner: ``.NAME{mark}PID-`` (for
    ``tempfile.mkdtemp(prefix=...)``), so that :func:`remove_abandoned_dirs` can tell a killed writer's leftover
    from a live writer's work."""
    return f".{name}{mark}{os.getpid()}-"


def remove_abandoned_dirs(parent: Path, mark: str) -> list[Path]:
    """Delete the temporary directories ``.NAME{mark}...`` in ``parent`` whose writer is gone: the process whose PID
    :func:`owned_prefix` put in the name no longer exists, or (names written before PIDs were recorded) nothing
    touched them for :data:`UNOWNED_AGE`. A live writer's directory is never touched. Returns what was removed."""
    owned = re.compile(re.escape(mark) + r"(\d+)-[^-]*$")
    removed = []
    for path in sorted(Path(parent).glob(f".*{mark}*")):
        match = owned.search(path.name)
        try:
            alive = process_alive(int(match.group(1))) if match else (
                time.time() - path.stat().st_mtime < UNOWNED_AGE)
            if alive or not path.is_dir():
                continue
        except OSError:  # removed meanwhile
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a PID is the only owner a temporary records)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):  # not a PID at all
        return False
    return True


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then replace ``path`` with it, as :func:`atomic_target`."""
    with atomic_target(path) as tmp:
        write(tmp)


def cache_root() -> Path:
    """captioner's cache directory: ``$CAPTIONER_CACHE`` or ``$XDG_CACHE_HOME/captioner`` (``~/.cache/captioner``);
    the feature cache and the ONNX exports live under it."""
    root = os.environ.get("CAPTIONER_CACHE")
    return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "captioner"


def files_sha256(paths: Iterable[Path]) -> str:
    """One SHA-256 over several files (names and bytes), e.g. a dataset's caption and split files."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
