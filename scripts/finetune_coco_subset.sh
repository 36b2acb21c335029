#!/usr/bin/env bash
# Fine-tune the embedded default model on the 60-image COCO sample: 48 images to train on, 12 held back (seeded);
# prints BLEU-4 and CIDEr-D on the 12 held-back images before and after, and on 200 Flickr8k validation images
# (what the default was trained for) to show what was forgotten. A few minutes on 2 CPU cores.
# Usage: bash scripts/finetune_coco_subset.sh [CAPTIONS_JSON] [IMAGES_DIR] [WORK_DIR] [FLICKR8K_DIR]
set -euo pipefail
captions=${1:-../shared/data/coco_mini/annotations/captions_mini.json}
images=${2:-$(dirname "$(dirname "$captions")")/images}
work=${3:-runs/finetune_coco_example}
flickr=${4:-../shared/data/flickr8k}
if [ -e "$work" ]; then
  echo "error: $work already exists; remove it or pass another WORK_DIR" >&2
  exit 1
fi

captioner data subset "$captions" "$work/subset" --count 60 --split-ratios 0.8,0.2 --seed 0 --images "$images"
# No validation split: the 12 held-back images ('val') are only scored, never used to pick a model.
captioner finetune --from default --data "$work/subset" --out "$work/run" --val-split none --eval-split val \
  --epochs 8 --batch-size 32 --lr 2e-4 --extend-vocab --min-count 2 --seed 0 \
  --also-eval "$flickr" --also-eval-split val --eval-max-images 200
