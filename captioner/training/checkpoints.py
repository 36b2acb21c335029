"""A training run's resume state on disk: ``training_state.pt`` written atomically (the last few kept in
``checkpoints/``), read back with ``weights_only=True`` (nothing is unpickled), and the random states it carries."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.fileio import atomic_write, save_error


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
    atomic_write(path, lambda tmp: torch.save(state, tmp))  # torch.save's RuntimeError on a full disk: SaveError
    kept = Path(out) / "checkpoints"
    link = kept / f"step-{step:08d}.pt"
    try:
        kept.mkdir(exist_ok=True)
        if keep > 0 and not link.exists():
            os.link(path, link)
    except OSError as err:  # the state itself is written: say so
        raise save_error(link, err, then=f"run again with --resume ({path.name} of step {step} is complete)") from None
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
