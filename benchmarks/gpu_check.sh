#!/usr/bin/env bash
# The builder's GPU path in one go (about 5 minutes on one H200): throughput against a naive loop with bf16 vectors
# judged against CPU fp32, an end-to-end COCO-layout build (bad files, thumbnails, index, full-gallery eval), and the
# torchrun path on one GPU. Writes its logs to $OUT (default /tmp/gpu-check).
#
#     bash benchmarks/gpu_check.sh                     # IMAGES=16000 COCO_TRAIN=4000 COCO_VAL=1000 DEVICE=cuda
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
CACHE=${CACHE:-/tmp/clipsearch-bench}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 CLIPSEARCH_KARPATHY=off  # no network: the Karpathy file is not fetched
mkdir -p "$OUT" "$CACHE"

step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
python3 -c "import torch, transformers, faiss, huggingface_hub as h; print('torch', torch.__version__, 'cuda',
torch.version.cuda, '| transformers', transformers.__version__, '| faiss', faiss.__version__, '| hub', h.__version__)"
nproc

step "throughput: naive loop vs builder, ${IMAGES:-16000} JPEGs"
python3 benchmarks/build_throughput.py --device "$DEVICE" --images "${IMAGES:-16000}" --cache "$CACHE" \
    2>&1 | grep -v "it/s\]" | tee "$OUT/throughput.md"

step "COCO-layout gallery: ${COCO_TRAIN:-4000} train + ${COCO_VAL:-1000} val, 320 px, a few broken files per split"
python3 - <<EOF
import sys, time
from pathlib import Path
sys.path[:0] = ["tests"]
from conftest import write_coco_dir
root = Path("$CACHE/coco")
if not (root / "annotations" / "captions_val2017.json").exists():
    started = time.time()
    write_coco_dir(root, {"train2017": ${COCO_TRAIN:-4000}, "val2017": ${COCO_VAL:-1000}}, size=320)
    print(f"written in {time.time() - started:.0f} s")
EOF
MODEL="$CACHE/clip-b32"

step "end-to-end build on $DEVICE (eval auto)"
rm -rf "$CACHE/artifacts-e2e"
start=$(date +%s.%N)
python3 -m builder.build --coco-dir "$CACHE/coco" --model "$MODEL" --device "$DEVICE" --out "$CACHE/artifacts-e2e" \
    2>&1 | grep -v "it/s\]" | tee "$OUT/build_e2e.log"
echo "wall: $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f} s')")" | tee -a "$OUT/build_e2e.log"
python3 - <<EOF | tee -a "$OUT/build_e2e.log"
import json
m = json.load(open("$CACHE/artifacts-e2e/manifest.json"))
print({k: m[k] for k in ("count", "device", "precision", "images_per_second", "build_seconds")})
EOF

step "torchrun, one process on one GPU, first 1000 images"
rm -rf "$CACHE/artifacts-ddp"
torchrun --standalone --nproc_per_node 1 -m builder.build --coco-dir "$CACHE/coco" --model "$MODEL" \
    --device "$DEVICE" --limit 1000 --eval none --out "$CACHE/artifacts-ddp" 2>&1 | grep -v "it/s\]" \
    | tee "$OUT/build_ddp.log"
ls "$CACHE/artifacts-ddp" | tee -a "$OUT/build_ddp.log"
step "done"
