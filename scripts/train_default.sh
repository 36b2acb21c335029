#!/usr/bin/env bash
# Reproduce the embedded default model from the developers' data folder, from scratch, on the 2-core CPU:
# 1. EfficientNet-Lite2 9x9 feature maps of the Flickr8k train and val images into a fresh cache inside the run
#    directory (both cores);
# 2. the teacher: captioner 0.1.0's default (Flickr8k only), taken from git history (commit below; its own
#    scripts/train_default.sh rebuilds it), with its image tags calibrated on the training images and the everyday
#    development photos (scripts/calibrate_tags.py);
# 3. self-training data: `captioner data pseudo-label` captions the unlabelled COCO photos with the teacher's guided
#    decoding and keeps the captions it can trust (a tag of probability >= 0.3, >= -2.2 log-probability per token);
# 4. two attention decoders (seeds 0 and 1) trained on Flickr8k plus those pseudo-captions, in parallel on one core
#    each, both holding out the same 500 Flickr8k training images; each keeps its last 5 epochs;
# 5. scripts/export_default.py picks, among those epochs, the best held-out guided beam-3 CIDEr-D, chooses the
#    repetition guard, calibrates tags and caption confidence, measures the Flickr8k val and everyday-photo tables
#    (plain and guided) and writes the model card; the result is byte-compared with the shipped model.
# Usage: bash scripts/train_default.sh [FLICKR8K_DIR] [UNLABELLED_PHOTOS_DIR] [RUN_DIR]
# FEATURE_CACHE=DIR uses an existing feature cache instead of RUN_DIR/features (its rows are the same bytes the
# extraction would write; timings.json then records how long checking it took, not a fresh extraction).
set -euo pipefail
shared=../shared/data
data=${1:-$shared/flickr8k}
unlabelled=${2:-$shared/coco_unlabeled/images}
run=${3:-runs/default}
everyday=("$shared/coco_mini:mini" "$shared/coco_tiny:tiny")
teacher_commit=3aa507cb74ec07be31fd92c214d98d4d96045803
seeds=(0 1)
mkdir -p "$run"
cache=${FEATURE_CACHE:-$run/features}
timings="$run/timings.json"
echo "{}" > "$timings"
start=$(date +%s)
stage_start=$start

record() {  # record the stage just finished in timings.json
  local now
  now=$(date +%s)
  python - "$timings" "$1" $((now - stage_start)) <<'EOF'
import json, sys
path, name, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = json.load(open(path)); data[name] = seconds; json.dump(data, open(path, "w"), indent=1)
EOF
  stage_start=$now
}

captioner data features "$data" --splits train,val --encoder efficientnet_lite2 --map --threads 2 \
  --cache-dir "$cache"
record "feature extraction${FEATURE_CACHE:+ (existing cache)}"

mkdir -p "$run/teacher"
for name in model.safetensors config.json vocab.json; do
  git show "$teacher_commit:captioner/pretrained/default/$name" > "$run/teacher/$name"
done
python scripts/calibrate_tags.py "$run/teacher" --data "$data" --also "${everyday[0]}" --also "${everyday[1]}" \
  --cache-dir "$cache" >/dev/null
rm -rf "$run/pseudo"
captioner data pseudo-label "$unlabelled" "$run/pseudo" --model "$run/teacher" --min-tag-prob 0.3 \
  --min-token-log-prob -2.2 --cache-dir "$cache" --threads 2
record "teacher and pseudo-captions"

member() {  # train one decoder; its log goes to RUN/seedN.log
  captioner -v train --data "$data" --extra-data "$run/pseudo" --out "$run/seed$1" --encoder efficientnet_lite2 \
    --inject attention --attention-dim 256 --attention-init mean --batch-by-image --epochs 8 --batch-size 128 \
    --lr 1e-3 --schedule cosine --clip-norm 5.0 --embed-dim 256 --hidden-dim 512 --image-proj-dim 256 \
    --dropout 0.5 --min-count 5 --holdout 500 --holdout-seed 0 --select-by cider --patience 3 --keep-epochs 5 \
    --seed "$1" --threads 1 --overwrite --cache-dir "$cache" >"$run/seed$1.log" 2>&1
}

pids=()
for seed in "${seeds[@]}"; do
  member "$seed" &
  pids+=($!)
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "a training run failed: see $run/seed*.log" >&2; exit 1; }
done
record "training (two decoders, one core each)"

runs=()
for seed in "${seeds[@]}"; do runs+=("$run/seed$seed"); done
python scripts/export_default.py "${runs[@]}" --data "$data" --everyday "${everyday[0]}" \
  --everyday "${everyday[1]}" --dest "$run/export" --cache-dir "$cache" --timings "$timings" >/dev/null
record "selection, calibration and tables"
echo "wall time: $(( $(date +%s) - start )) s ($(python -c "import json; print(json.load(open('$timings')))"))"
shipped=captioner/pretrained/default/model.safetensors
if cmp -s "$run/export/model.safetensors" "$shipped"; then
  echo "$run/export/model.safetensors is byte-identical to the shipped $shipped"
else
  new=$(sha256sum "$run/export/model.safetensors" | cut -c1-16)
  echo "$run/export/model.safetensors differs from the shipped $shipped (sha256 $new vs $(sha256sum "$shipped" | cut -c1-16))"
fi
