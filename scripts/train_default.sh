#!/usr/bin/env bash
# Reproduce the embedded default model from the developers' Flickr8k copy, from scratch, on the CPU.
# Usage: bash scripts/train_default.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
data=${1:-../shared/data/flickr8k}
run=${2:-runs/default}
start=$(date +%s)
captioner -v train --data "$data" --out "$run" --epochs 15 --batch-size 128 --lr 4e-4 --clip-norm 5.0 \
  --embed-dim 256 --hidden-dim 512 --image-proj-dim 256 --dropout 0.5 --min-count 5 --seed 0
python scripts/export_default.py "$run" --data "$data"
echo "wall time: $(( $(date +%s) - start )) s"
