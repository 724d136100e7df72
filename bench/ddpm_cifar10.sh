#!/usr/bin/env bash
# Pixel-space DDPM quality benchmark: train the CPU-default U-Net on real CIFAR-10 images for
# MINUTES of wall time, then: validation L_simple (in the training log), a 64-image DDIM-50 grid
# and its time (bf16 and fp32), the DDPM-1000 time for the same 64 images (bf16), and test
# bits/dim on 32 test images spread over the split (L_T closed form; L_0 + 100 stratified KL terms, one x_t draw each).
#   bash bench/ddpm_cifar10.sh [MINUTES] [EXTRA TRAIN FLAGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-60}; shift || true
data=${CIFAR_DIR:-$(mktemp -d)}
[ -d "$data/train" ] || unzip -q "$here/../shared/data/cifar10-jpeg.zip" -d "$data"
out=${OUT_DIR:-$(mktemp -d)}; mkdir -p "$out"
python=${PYTHON:-python}
"$python" "$here/diffusers/train_diffusion.py" --dataset folder --data-dir "$data" --epochs 1000 \
    --max-minutes "$minutes" --save-dir "$out/ddpm" --visualize "$@" > "$out/train.log" 2>&1
grep -v 'it/s\|s/it' "$out/train.log" | tail -20
for precision in bf16 fp32; do
    "$python" -m sdlab.cli.sample "$out/ddpm/last.pt" --num-samples 64 --sampler ddim --steps 50 \
        --precision $precision --out "$out/ddim50_$precision.png" 2>/dev/null
done
"$python" -m sdlab.cli.sample "$out/ddpm/last.pt" --num-samples 64 --sampler ddpm --precision bf16 \
    --out "$out/ddpm1000_bf16.png" 2>/dev/null
"$python" -m sdlab.cli.eval_diffusion "$out/ddpm/last.pt" --data-dir "$data" --num-images 32 \
    --timesteps 100 --batch-size 32 | tail -2
echo "outputs in $out"
