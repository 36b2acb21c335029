"""``python -m captioner`` is the ``captioner`` command; ``torchrun --nproc_per_node N -m captioner train ...``
starts a data-parallel training job with the same options."""

import sys

from captioner.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
