"""The parts of scripts/benchmark.py (one module per family of figures)."""
