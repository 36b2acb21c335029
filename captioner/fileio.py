"""Writing files safely: atomic replacement (readers see the old or the new file, never half of one), one error
line for a failed write that says what is intact, removal of what killed writes left, and file checksums."""

from __future__ import annotations

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


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
