"""The package version (one place; ``captioner --version``, reports and model cards read it)."""

__version__ = "0.1.0"
