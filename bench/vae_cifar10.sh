#!/usr/bin/env bash
# VAE quality benchmark: train the default VAE on real CIFAR-10 images for a fixed number of
# epochs sized to ~10 minutes on a 2-core CPU, then evaluate on the 10,000 test images.
#   bash bench/vae_cifar10.sh [EPOCHS] [EXTRA TRAIN FLAGS...]
# Needs ../shared/data/cifar10-jpeg.zip (unzipped to a temp dir, never committed).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
epochs=${1:-8}; shift || true
data=${CIFAR_DIR:-$(mktemp -d)}
[ -d "$data/train" ] || unzip -q "$here/../shared/data/cifar10-jpeg.zip" -d "$data"
out=${OUT_DIR:-$(mktemp -d)}; mkdir -p "$out"
python=${PYTHON:-python}
start=$(date +%s)
"$python" "$here/diffusers/train_vae.py" --dataset folder --data-dir "$data" --epochs "$epochs" \
    --save-dir "$out/vae" --visualize "$@" 2>&1 | tr '\r' '\n' | grep -v 'it/s' | tee "$out/train.log"
echo "train wall time: $(( $(date +%s) - start )) s"
"$python" -m sdlab.cli.eval_vae "$out/vae/last.pt" --data-dir "$data" | tee "$out/eval.txt"
echo "outputs in $out"
