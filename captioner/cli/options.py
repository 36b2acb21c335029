"""Command-line options built from the configuration dataclasses, so that each default is written once (in the
dataclass) and the ``--help`` text states it.

``add_field(parser, defaults, "lr", "--lr", ...)`` adds an option whose destination is the field's name and whose
default is ``defaults``' value of it (``defaults`` is a dataclass instance: ``TrainConfig()``, the fine-tuning
defaults, ``ModelConfig()``, ``GenerationConfig()``); :func:`fields_of` collects the parsed values back into a
dataclass. ``tests/test_architecture.py`` checks every such option against its dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

SOURCES: dict[tuple[str, str], type] = {}  # (parser prog, dest) -> the dataclass whose field it is


def show(value: Any) -> str:
    """A default as ``--help`` prints it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def add_field(parser: argparse.ArgumentParser | Any, defaults: Any, name: str, *flags: str, help: str,
              show_default: bool = True, **kwargs: Any) -> argparse.Action:
    """Add an option for the dataclass field ``name`` with ``defaults``' value as its default.

    Args:
        parser: a parser or argument group.
        defaults: a dataclass instance holding the defaults.
        name: the field (the option's ``dest``).
        flags: the option strings (default ``--field-name``).
        help: what the option does; ``(default: X)`` is appended.
        show_default: append the default to ``help``.
        kwargs: ``type``, ``choices``, ``action``, ``metavar``...
    """
    default = getattr(defaults, name)
    if kwargs.get("action") in ("store_true", "store_false") and default is not None:
        if (kwargs["action"] == "store_true") == bool(default):
            raise ValueError(f"{name}: a {kwargs['action']} flag cannot change the default {default!r}")
    text = f"{help} (default: {show(default)})" if show_default else help
    action = parser.add_argument(*(flags or (f"--{name.replace('_', '-')}",)), dest=name, default=default,
                                 help=text, **kwargs)
    prog = getattr(parser, "prog", None) or getattr(getattr(parser, "_container", None), "prog", "")
    SOURCES[(prog, name)] = type(defaults)
    return action


def fields_of(cls: type, args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """The values of ``cls``' fields that the parsed ``args`` hold, plus ``overrides``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(overrides)
    return values
