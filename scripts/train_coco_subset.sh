#!/usr/bin/env bash
# Worked example: COCO subset -> train -> evaluate, on the 60-image COCO sample in a few minutes on 2 CPU cores.
# With the real COCO files, point CAPTIONS at captions_train2017.json, raise --count, and download the subset's
# images first:  python scripts/download_coco.py --subset OUT/subset/manifest.json --remote ...
# Usage: bash scripts/train_coco_subset.sh [CAPTIONS_JSON] [IMAGES_DIR] [WORK_DIR]
set -euo pipefail
captions=${1:-../shared/data/coco_mini/annotations/captions_mini.json}
images=${2:-$(dirname "$(dirname "$captions")")/images}
work=${3:-runs/coco_subset_example}
if [ -e "$work" ]; then
  echo "error: $work already exists; remove it or pass another WORK_DIR" >&2
  exit 1
fi

captioner data subset "$captions" "$work/subset" --count 60 --split-ratios 0.7,0.15,0.15 --seed 0 --images "$images"
captioner data check "$work/subset" --min-count 2
captioner train --data "$work/subset" --out "$work/run" --epochs 30 --batch-size 32 --lr 1e-3 --min-count 2 \
  --val-split val --seed 0
captioner evaluate --model "$work/run/model" --data "$work/subset" --split test --beam-size 3 \
  --out "$work/report.json" --predictions "$work/predictions.json"
