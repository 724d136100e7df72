"""Fast paths for the CPU, apart from the architecture (`layers`, `vae`, `unet` use them).

Each module stands in for a PyTorch op or module, keeps its parameters and state-dict keys,
computes the same result (gradcheck-tested in tests/test_layers.py) and only changes how:

    groupnorm   GroupNorm (+ SiLU); channels-last bf16 CPU tensors take four torch.compile-fused
                functions instead of torch's slow NHWC bf16 kernel
    conv        Conv2d; on maps of <= 16 pixels the weight gradient is a forward convolution
    dropout     inverted dropout with a mask drawn four per random integer, laid out like x
    attention   softmax(q k^T / sqrt(d)) v as two matmuls on CPU in bf16, else PyTorch's SDPA

Why each exists, measured: BENCHMARKS.md (bench/cpu_kernels.py). A torch version that fixes the
kernel underneath makes the workaround removable, which is why they live here.
"""
