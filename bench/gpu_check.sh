#!/usr/bin/env bash
# The prepared GPU check: run where a CUDA GPU is available (no install needed beyond torch,
# torchvision, tqdm, matplotlib, tensorboard and pytest; sdlab is used from src/).
#   bash bench/gpu_check.sh [DEST]
# 1. on CUDA in the default precision (bf16): a VAE run stopped by SIGINT mid-epoch and resumed,
#    then sampled; a pixel DDPM and a class-conditional latent DDPM, each trained, resumed for one
#    more epoch, sampled and evaluated; a fault case on CUDA (a bad --out).
# 2. torchrun: a 2-process gloo run on the CPU, a 1-process run on CUDA, and on several GPUs an
#    NCCL run over all of them (on one GPU: 2 processes refused with one line).
# 3. the U-Net training throughput against diffusers' UNet2DModel on the GPU, when diffusers is
#    importable or its wheel (and importlib_metadata's) lies in .whl/ (pip download --no-deps ... -d .whl);
# 4. last, the test suite (CPU tests, on this machine's torch version).
# Prints one summary table; logs, images and the table go to DEST/gpu_check.tgz (default DEST: a
# temp dir). TEST_SECONDS caps step 4; PYTEST_ARGS adds to its pytest line (e.g. "-n 8" with xdist).
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${1:-$(mktemp -d)}; mkdir -p "$dest"
out=$(mktemp -d)         # logs and images; packed into DEST/gpu_check.tgz at the end
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}
rows=()
check() {  # check NAME COMMAND...: run, log, record status and seconds
    local name=$1; shift
    local start=$SECONDS
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    row "$name" "$rc" "$((SECONDS - start))s" \
        "$(tr '\r' '\n' < "$out/$name.log" | grep -v 'it/s\|s/it' | grep -v '^\s*$' | tail -1 | cut -c1-110)"
}
row() {  # row NAME EXIT TIME LAST-LINE: add to the table and print at once (a cut-off run still shows it)
    rows+=("$(printf '| %-28s | %4s | %6s | %s |' "$@")")
    echo "${rows[-1]}"
}

"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/device.txt"

data=(--dataset synthetic --synthetic-size 4000 --device cuda)
runs=$(mktemp -d)
# VAE: SIGINT in the second epoch, then --resume to the end
"$py" diffusers/train_vae.py "${data[@]}" --synthetic-size 20000 --epochs 3 --save-dir "$runs/vae" > "$out/vae_interrupted.log" 2>&1 &
pid=$!
while [ ! -f "$runs/vae/last.pt" ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
sleep 1; kill -INT $pid; wait $pid; rc=$?
row vae_sigint $rc - "$(grep -o 'SIGINT: stopped[^;]*' "$out/vae_interrupted.log" | tail -1)"
check vae_resume "$py" diffusers/train_vae.py "${data[@]}" --synthetic-size 20000 --epochs 3 --save-dir "$runs/vae" --resume
check vae_eval "$py" -m sdlab.cli.eval_vae "$runs/vae/best.pt" --device cuda --num-images 1000
tiny=(--model-size cpu --noise-steps 200 --num-samples 16 --sample-steps 10)
check ddpm_train "$py" diffusers/train_diffusion.py "${data[@]}" "${tiny[@]}" --epochs 1 --save-dir "$runs/ddpm"
check ddpm_resume "$py" diffusers/train_diffusion.py "${data[@]}" "${tiny[@]}" --epochs 2 --save-dir "$runs/ddpm" --resume
check ddpm_sample "$py" -m sdlab.cli.sample "$runs/ddpm/best.pt" --device cuda --num-samples 64 --out "$out/ddpm.png"
check ddpm_eval "$py" -m sdlab.cli.eval_diffusion "$runs/ddpm/best.pt" --device cuda --num-images 64 --timesteps 20
ldm=(--latent --vae-checkpoint "$runs/vae/best.pt" --class-cond --noise-steps 200 --num-samples 20 --sample-steps 10)
check ldm_train "$py" diffusers/train_diffusion.py "${data[@]}" "${ldm[@]}" --epochs 1 --save-dir "$runs/ldm"
check ldm_resume "$py" diffusers/train_diffusion.py "${data[@]}" "${ldm[@]}" --epochs 2 --save-dir "$runs/ldm" --resume
mv "$runs/vae" "$runs/vae-moved"   # the latent checkpoint carries its VAE
check ldm_sample_vae_moved "$py" -m sdlab.cli.sample "$runs/ldm/best.pt" --device cuda --class disc --class ring \
    --guidance-scale 3 --num-samples 20 --out "$out/ldm.png"
for sampler in euler_a heun dpmpp_2m; do
    check "ldm_sample_$sampler" "$py" -m sdlab.cli.sample "$runs/ldm/best.pt" --device cuda --class disc \
        --guidance-scale 3 --num-samples 20 --sampler $sampler --steps 8 --out "$out/ldm_$sampler.png"
done
"$py" -m sdlab.cli.sample "$runs/ddpm/best.pt" --device cuda --out "$out/x" > "$out/fault.log" 2>&1; rc=$?
row fault_bad_out $rc - "$(head -1 "$out/fault.log")"

torchrun=("$py" -m torch.distributed.run --standalone)
check ddp_gloo_cpu_2proc env OMP_NUM_THREADS=4 "${torchrun[@]}" --nproc_per_node 2 diffusers/train_diffusion.py \
    --dataset synthetic --synthetic-size 2000 --device cpu --batch 32 "${tiny[@]}" --epochs 1 --save-dir "$runs/ddp_cpu"
check ddp_cuda_torchrun_1proc "${torchrun[@]}" --nproc_per_node 1 diffusers/train_diffusion.py "${data[@]}" "${tiny[@]}" \
    --epochs 1 --save-dir "$runs/ddp_cuda1"
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    check ddp_nccl "${torchrun[@]}" --nproc_per_node "$gpus" diffusers/train_diffusion.py "${data[@]}" "${tiny[@]}" \
        --epochs 2 --save-dir "$runs/ddp_nccl"
else
    "${torchrun[@]}" --nproc_per_node 2 diffusers/train_diffusion.py "${data[@]}" "${tiny[@]}" --epochs 1 \
        --save-dir "$runs/ddp_too_many" > "$out/ddp_too_many.log" 2>&1; rc=$?
    row fault_2proc_on_1gpu $rc - "$(grep -m1 '^error:' "$out/ddp_too_many.log")"
fi

has_diffusers() { (cd / && "$py" -c "from diffusers import UNet2DModel" 2>/dev/null); }  # not the repo's diffusers/
if ! has_diffusers && ls .whl/diffusers-*.whl > /dev/null 2>&1; then
    "$py" -m pip install -q --no-deps --no-index --target "$runs/site" .whl/*.whl > "$out/pip.log" 2>&1
    export PYTHONPATH="$PYTHONPATH:$runs/site"
fi
if has_diffusers; then
    check unet_vs_diffusers_cpu_preset "$py" bench/unet_vs_diffusers.py --device cuda --preset cpu --batch 128 \
        --steps 20 --warmup 5 --rounds 3
    check unet_vs_diffusers_ddpm "$py" bench/unet_vs_diffusers.py --device cuda --preset ddpm-cifar10 --batch 128 \
        --steps 20 --warmup 5 --rounds 3
fi
check tests timeout "${TEST_SECONDS:-300}" "$py" -m pytest -q -x -p no:cacheprovider ${PYTEST_ARGS:-}

{
    echo "| check | exit | time | last line |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} > "$out/summary.md"
tar czf "$dest/gpu_check.tgz" -C "$out" .
echo; cat "$out/device.txt" "$out/summary.md"
