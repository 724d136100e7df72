"""Stable Diffusion's autoencoder loss: its terms against closed forms."""

import math

import pytest
import torch
from torch import nn

from sdlab.autoencoder_loss import adaptive_weight, discriminator_loss, generator_loss, nll_loss
from sdlab.discriminator import PatchGAN, receptive_field
from sdlab.perceptual import WatsonDFT


def test_the_nll_form_is_minimised_at_the_log_of_the_mean_cost():
    rec = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    assert nll_loss(rec, torch.tensor(0.0)) == pytest.approx(rec.flatten(1).sum(1).mean().item(), rel=1e-6)
    best = torch.tensor(rec.mean().log().item(), requires_grad=True)
    value = nll_loss(rec, best)
    value.backward()
    assert abs(best.grad.item()) < 1e-4
    assert value.item() == pytest.approx(32 * (1 + math.log(rec.mean().item())), rel=1e-5)


def test_the_discriminator_losses_at_known_logits():
    ones = torch.ones(4, 1, 3, 3)
    assert discriminator_loss(2 * ones, -2 * ones, "hinge").item() == 0.0            # both beyond the margin
    assert discriminator_loss(0 * ones, 0 * ones, "hinge").item() == pytest.approx(1.0)
    assert discriminator_loss(0 * ones, 0 * ones, "vanilla").item() == pytest.approx(math.log(2))
    assert generator_loss(3 * ones).item() == -3.0


def test_the_adaptive_weight_equalises_the_two_gradients_at_the_last_layer():
    g = torch.Generator().manual_seed(0)
    layer = nn.Conv2d(4, 3, 1)
    h = torch.randn(2, 4, 5, 5, generator=g)
    out = layer(h)
    nll = (out - torch.randn(out.shape, generator=g)).abs().sum()
    adversarial = -(out * torch.randn(out.shape, generator=g)).mean()
    weight = adaptive_weight(nll, adversarial, layer.weight)
    g_nll = torch.autograd.grad(nll, layer.weight, retain_graph=True)[0]
    g_adv = torch.autograd.grad(weight * adversarial, layer.weight, retain_graph=True)[0]
    assert g_adv.norm().item() == pytest.approx(g_nll.norm().item(), rel=1e-3)    # up to the 1e-4 guard
    assert adaptive_weight(nll, adversarial, layer.weight, scale=0.5) == pytest.approx(0.5 * weight.item())
    assert not weight.requires_grad
    tiny = adversarial * 1e-12                                                       # clamped at 1e4
    assert adaptive_weight(nll, tiny, layer.weight).item() == pytest.approx(1e4)


@pytest.mark.parametrize("layers, side, field", [(1, 14, 16), (2, 6, 34), (3, 2, 70)])
def test_patchgan_patches_and_receptive_field(layers, side, field):
    assert receptive_field(layers) == field
    disc = PatchGAN(3, 16, layers)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert disc(x).shape == (2, 1, side, side)
    # each image's logits are its own (GroupNorm, not BatchNorm)
    torch.testing.assert_close(disc(x)[:1], disc(x[:1]))


def test_one_patchgan_logit_sees_a_16_pixel_window():
    disc = PatchGAN(3, 16, 1)
    for m in disc.modules():                   # the norm couples all positions; measure the convolutions
        if isinstance(m, nn.Sequential):
            for i, child in enumerate(m):
                if isinstance(child, nn.GroupNorm):
                    m[i] = nn.Identity()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    disc(x)[0, 0, 7, 7].backward()
    rows, cols = x.grad.abs().sum((0, 1)).nonzero(as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (16, 16)


def test_watson_distance_of_a_brightness_shift_has_its_closed_form():
    watson = WatsonDFT()
    x = torch.zeros(2, 3, 16, 16)                    # grey 0.5 in [0, 1]; four 8x8 blocks
    delta = 0.1                                      # in [0, 1]: only the Y channel's DC terms change
    d = watson(x + 2 * delta, x)
    a, b = 1.0, 0.5**0.2                             # t_l = 1; the grey block's DC amplitude is 0.5
    s = (a * math.exp(a) + b * math.exp(b)) / (math.exp(a) + math.exp(b))
    assert d.tolist() == pytest.approx([4 * delta / s / 3] * 2, rel=1e-4)
    assert watson(x, x).max().item() < 1e-6


def test_watson_distance_is_per_image_finite_in_its_gradient_and_grows_with_the_error():
    g = torch.Generator().manual_seed(0)
    watson = WatsonDFT()
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(x.shape, generator=g)
    d_small, d_large = watson(x + 0.05 * noise, x), watson(x + 0.2 * noise, x)
    assert (d_large > d_small).all() and (d_small > 0).all()
    torch.testing.assert_close(watson(x[:1] + 0.05 * noise[:1], x[:1]), d_small[:1])
    x_hat = x.clone().requires_grad_(True)
    watson(x_hat, x).sum().backward()                # at x_hat = x: no NaN from the phase term
    assert torch.isfinite(x_hat.grad).all()
    x_hat = (x + 0.1 * noise).requires_grad_(True)
    watson(x_hat, x).sum().backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible by 8"):
        watson(torch.zeros(1, 3, 12, 12), torch.zeros(1, 3, 12, 12))
