"""The ``captioner`` console script: one subcommand per module, wired here."""

from captioner.cli.main import main

__all__ = ["main"]
