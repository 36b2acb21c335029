"""The old spelling ``torchrun -m captioner.train ...`` (``python -m captioner train ...`` is the new one).

A thin shim: it runs ``captioner train`` with the given options through ``python -m captioner`` (run by name, so
that this module imports nothing of the library and no import circle can form through it).
"""

import runpy
import sys

if __name__ == "__main__":
    sys.argv[1:1] = ["train"]
    runpy.run_module("captioner", run_name="__main__", alter_sys=True)
