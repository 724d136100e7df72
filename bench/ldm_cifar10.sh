#!/usr/bin/env bash
# Stable Diffusion in miniature: a class-conditional latent DDPM on a trained VAE (bench/vae_cifar10.sh),
# on real CIFAR-10 images, for MINUTES of wall time; then class grids at several guidance scales.
#   bash bench/ldm_cifar10.sh VAE_CHECKPOINT [MINUTES] [EXTRA TRAIN FLAGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
vae=$1; minutes=${2:-45}; shift 2 || shift || true
data=${CIFAR_DIR:-$(mktemp -d)}
[ -d "$data/train" ] || unzip -q "$here/../shared/data/cifar10-jpeg.zip" -d "$data"
out=${OUT_DIR:-$(mktemp -d)}; mkdir -p "$out"
python=${PYTHON:-python}
"$python" "$here/diffusers/train_diffusion.py" --dataset folder --data-dir "$data" --latent \
    --vae-checkpoint "$vae" --class-cond --epochs 1000 --max-minutes "$minutes" --batch 128 --lr 4e-4 \
    --save-dir "$out/ldm" --visualize "$@" > "$out/train.log" 2>&1
grep -v 'it/s\|s/it' "$out/train.log" | tail -12
for w in 0 1 2 4 7; do
    classes=(); for c in airplane automobile bird cat deer dog frog horse ship truck; do classes+=(--class "$c"); done
    "$python" -m sdlab.cli.sample "$out/ldm/last.pt" "${classes[@]}" --num-samples 80 --nrow 10 \
        --guidance-scale "$w" --out "$out/classes_w$w.png" 2>/dev/null
done
echo "outputs in $out"
