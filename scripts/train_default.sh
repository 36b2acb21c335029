#!/usr/bin/env bash
# Reproduce the embedded default model from the developers' Flickr8k copy, from scratch, on the CPU:
# feature extraction (into a fresh cache inside the run directory), 15 cross-entropy epochs (cosine learning rate),
# 6 self-critical (CIDEr-D) epochs, selection on 500 images held out of the training split, then the val table.
# Usage: bash scripts/train_default.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
data=${1:-../shared/data/flickr8k}
run=${2:-runs/default}
start=$(date +%s)
captioner -v train --data "$data" --out "$run" --encoder efficientnet_lite2 --epochs 15 --batch-size 128 \
  --lr 1e-3 --schedule cosine --clip-norm 5.0 --embed-dim 256 --hidden-dim 512 --image-proj-dim 256 --dropout 0.5 \
  --min-count 5 --holdout 500 --select-by cider --patience 3 --scst-epochs 6 --scst-lr 5e-5 --scst-samples 5 \
  --scst-batch-size 50 --seed 0 --cache-dir "$run/features"
python scripts/export_default.py "$run" --data "$data" --dest "$run/export" --cache-dir "$run/features"
echo "wall time: $(( $(date +%s) - start )) s"
shipped=captioner/pretrained/default/model.safetensors
if cmp -s "$run/export/model.safetensors" "$shipped"; then
  echo "$run/export/model.safetensors is byte-identical to the shipped $shipped"
else
  new=$(sha256sum "$run/export/model.safetensors" | cut -c1-16)
  echo "$run/export/model.safetensors differs from the shipped $shipped (sha256 $new vs $(sha256sum "$shipped" | cut -c1-16))"
fi
