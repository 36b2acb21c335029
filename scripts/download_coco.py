#!/usr/bin/env python3
"""Download COCO annotations and images: the same as ``captioner data download``.

Whole archives, or only the images a manifest lists (the manifest.json of ``captioner data subset``).

Examples:
    python scripts/download_coco.py                                  # 2017 annotations + val2017.zip into data/coco
    python scripts/download_coco.py --split train val --extract      # both image zips, unpacked
    python scripts/download_coco.py --split train --subset m.json    # train2017.zip, then only m.json's images
    python scripts/download_coco.py --split train --subset m.json --remote --no-annotations
                                                                     # only m.json's images, over HTTP ranges
Rerunning the same command resumes an interrupted download and skips what is already complete and valid.
Every failure is reported as one line 'error: <message>' on stderr with a non-zero exit code.
"""

import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "download", *sys.argv[1:]]))
