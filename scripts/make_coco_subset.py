#!/usr/bin/env python3
"""Make a reproducible COCO subset from the annotation files: the same as ``captioner data subset``.

Example: python scripts/make_coco_subset.py captions_train2017.json subsets/dogs --instances instances_train2017.json
         --categories dog --count 5000 --split-ratios 0.9,0.05,0.05 --seed 0
"""

import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "subset", *sys.argv[1:]]))
