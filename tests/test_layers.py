"""The CPU fast paths in sdlab.layers compute exactly what the plain PyTorch ops compute."""

import pytest
import torch
import torch.nn.functional as F

from sdlab.kernels import groupnorm
from sdlab.kernels.groupnorm import GroupNorm, GroupNormNHWC, is_channels_last
from sdlab.kernels.attention import attention_matmuls
from sdlab.kernels.conv import Conv2d, TinyMapConv
from sdlab.kernels.dropout import Dropout
from sdlab.layers import Attention
from sdlab.runtime import fused_optimizer, memory_format

NHWC = torch.channels_last


@pytest.mark.parametrize("act", [True, False])
def test_nhwc_group_norm_matches_the_native_one_in_value_and_gradient(act):
    torch.manual_seed(0)
    x = (torch.randn(3, 8, 5, 5, dtype=torch.float64) * 2 + 3).contiguous(memory_format=NHWC).requires_grad_()
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    ours = lambda x, w, b: GroupNormNHWC.apply(x, w, b, 4, 1e-6, act)
    torch.autograd.gradcheck(ours, (x, weight, bias))                    # the hand-written backward
    native = F.group_norm(x, 4, weight, bias, 1e-6)
    native = F.silu(native) if act else native
    torch.testing.assert_close(ours(x, weight, bias), native)


def test_bf16_nhwc_group_norm_is_as_accurate_as_the_native_kernel():
    torch.manual_seed(0)
    norm = GroupNorm(64, act=True)
    torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    x = (torch.randn(4, 64, 8, 8) * 3 + 5).to(torch.bfloat16).contiguous(memory_format=NHWC)
    exact = F.silu(F.group_norm(x.double(), norm.num_groups, norm.weight.double(), norm.bias.double(), 1e-6))
    native = F.silu(F.group_norm(x.contiguous(), norm.num_groups, norm.weight, norm.bias, 1e-6))
    ours = norm(x)                                            # channels-last bf16: the NHWC path
    assert ours.dtype == torch.bfloat16 and is_channels_last(ours)
    err = lambda y: (y.double() - exact).abs().max().item()
    assert err(ours) < 2 * err(native) + 1e-3 and err(ours) < 0.05   # a bf16 rounding, not a bias


def test_bf16_nhwc_group_norm_gradients_are_as_accurate_as_the_native_kernel():
    torch.manual_seed(0)
    x = (torch.randn(4, 64, 8, 8) * 3 + 5).to(torch.bfloat16).contiguous(memory_format=NHWC)
    weight, bias = torch.randn(64) * 0.3 + 1, torch.randn(64)
    grad = torch.randn(4, 64, 8, 8)

    def grads(fn, *inputs):
        inputs = [t.detach().requires_grad_() for t in inputs]
        fn(*inputs).backward(grad.to(inputs[0].dtype).contiguous(memory_format=NHWC))
        return [t.grad.double() for t in inputs]

    native = lambda x, w, b: F.silu(F.group_norm(x, 32, w, b, 1e-6))
    exact = grads(native, x.double(), weight.double(), bias.double())
    theirs = grads(native, x.contiguous(), weight, bias)               # torch's NCHW bf16 kernel
    ours = grads(lambda x, w, b: GroupNormNHWC.apply(x, w, b, 32, 1e-6, True), x, weight, bias)
    for e, t, o in zip(exact, theirs, ours):                           # dx, dgamma, dbeta
        err = lambda y: ((y - e).norm() / e.norm()).item()
        assert err(o) < 2 * err(t), (err(o), err(t))


def test_fused_kernels_fall_back_to_eager_when_compiling_fails(monkeypatch):
    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    double = groupnorm.fused(lambda x: 2 * x)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert double(torch.ones(3)).tolist() == [2, 2, 2]
    assert double(torch.ones(2)).tolist() == [2, 2]            # uncompiled from now on, no new warning


@pytest.mark.parametrize("size, kernel, stride, padding", [(2, 3, 1, 1), (4, 3, 1, 1), (4, 3, 2, 1), (3, 3, 2, 1),
                                                          (2, 1, 1, 0)])
def test_tiny_map_conv_weight_gradient_is_the_convolution_gradient(size, kernel, stride, padding):
    torch.manual_seed(0)
    x = torch.randn(3, 4, size, size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ours = lambda x, w, b: TinyMapConv.apply(x, w, b, (stride, stride), (padding, padding))
    torch.autograd.gradcheck(ours, (x, weight, bias))
    torch.testing.assert_close(ours(x, weight, bias), F.conv2d(x, weight, bias, stride, padding))


def test_conv2d_takes_the_tiny_map_path_only_where_it_should_and_matches_nn_conv2d():
    torch.manual_seed(0)
    conv = Conv2d(8, 8, 3, padding=1)
    plain = torch.nn.Conv2d(8, 8, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(4, 8, 4, 4)
    with torch.autocast("cpu", torch.bfloat16):
        y = conv(x)
        assert y.grad_fn.name() == "TinyMapConvBackward" and y.dtype == torch.bfloat16
        y_plain = plain(x)
    y.float().square().sum().backward()
    y_plain.float().square().sum().backward()
    torch.testing.assert_close(y, y_plain)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=0.02, atol=0.05)
    assert conv(torch.randn(4, 8, 8, 8)).grad_fn.name() != "TinyMapConvBackward"     # 8x8: oneDNN's own
    with torch.no_grad():
        assert conv(x).grad_fn is None


def test_dropout_keeps_the_layout_and_rate_of_a_channels_last_input():
    torch.manual_seed(0)
    x = torch.ones(64, 32, 16, 16).contiguous(memory_format=NHWC)
    y = Dropout(0.25)(x)
    assert is_channels_last(y)
    assert (y == 0).float().mean().item() == pytest.approx(0.25, abs=0.005)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)


def test_attention_gives_the_same_output_in_both_layouts():
    torch.manual_seed(0)
    attn = Attention(16, heads=2)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(attn(x.contiguous(memory_format=NHWC)), attn(x))


def test_attention_matmuls_equal_sdpa_in_value_and_gradient():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    torch.testing.assert_close(attention_matmuls(q, k, v), F.scaled_dot_product_attention(q, k, v))
    torch.autograd.gradcheck(attention_matmuls, (q, k, v))


def test_bf16_cpu_attention_stays_within_bf16_rounding_of_fp32():
    torch.manual_seed(0)
    attn = Attention(32, heads=2)
    x = torch.randn(4, 32, 8, 8).to(torch.bfloat16).contiguous(memory_format=NHWC)
    with torch.autocast("cpu", torch.bfloat16):                 # the attention_matmuls path
        fast = attn(x)
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - attn(x.float())).abs().max().item() < 0.05


def test_memory_format_and_fused_optimizer_choices():
    cpu = torch.device("cpu")
    assert memory_format(cpu, 32) == NHWC and memory_format(cpu, 8) == torch.contiguous_format
    assert memory_format(torch.device("cuda"), 32) == torch.contiguous_format
    assert fused_optimizer(torch.nn.Linear(2, 2))
