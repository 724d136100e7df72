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
    assert d.tolist() == pytest.approx([4 * delta / s / 3 / 256] * 2, rel=1e-4)      # per pixel of 16x16
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
    flat = x.clone()
    flat[..., :8, :8] = 0.3                          # a flat block: its AC coefficients are exactly 0
    x_hat = (flat + 0.1 * noise).requires_grad_(True)
    watson(x_hat, flat).sum().backward()
    assert torch.isfinite(x_hat.grad).all()
    with pytest.raises(ValueError, match="divisible by 8"):
        watson(torch.zeros(1, 3, 12, 12), torch.zeros(1, 3, 12, 12))


# ---------------------------------------------------------------- the recipe


def sd_run(save_dir, epochs, **train):
    from sdlab.data import DataConfig
    from sdlab.discriminator import DiscriminatorConfig
    from sdlab.recipes import VAERun
    from sdlab.trainer import TrainConfig
    from sdlab.vae import VAEConfig, VAELossConfig

    return VAERun(data=DataConfig(dataset="synthetic", synthetic_size=64, image_size=16, batch_size=16),
                  train=TrainConfig(epochs=epochs, save_dir=str(save_dir), device="cpu", precision="fp32",
                                    beta1=0.5, beta2=0.9, ema_decay=0.9, lr=1e-3, **train),
                  vae=VAEConfig(base_channels=8),
                  loss=VAELossConfig(recon_loss="l1", kl_weight=1e-6, perceptual="watson", learned_variance=True),
                  disc=DiscriminatorConfig(disc_start=3, disc_channels=8))


def test_stable_diffusion_loss_trains_two_optimizers_resumes_exactly_and_feeds_latent_diffusion(tmp_path):
    from sdlab.checkpoint import load_checkpoint, state_digest
    from sdlab.recipes import train_vae
    from sdlab.trained import carried_vae, load_vae

    full = train_vae(sd_run(tmp_path / "full", 2)).trainer
    names = [o.name for o in full.optimizers]
    assert names == ["autoencoder", "disc"] and full.optimizers[1].update.starts_at == 3
    record = full.history[-1]
    assert {"train/g_loss", "train/d_weight", "train/disc_loss", "val/perceptual"} <= set(record)
    assert "train/g_loss" not in full.history[0] or full.history[0]["step"] > 3
    assert full.model.logvar.item() != 0.0                                   # the log-scale is learned
    train_vae(sd_run(tmp_path / "cut", 1))
    again = train_vae(sd_run(tmp_path / "cut", 2, resume="last")).trainer
    for (name, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["val/loss"] for r in full.history] == [r["val/loss"] for r in again.history]
    # the checkpoint's VAE part is what latent diffusion and sdlab-eval-vae read
    state = load_checkpoint(tmp_path / "full" / "last.pt")
    vae, _ = load_vae(str(tmp_path / "full" / "last.pt"), torch.device("cpu"))
    ema_vae = {k.removeprefix("vae."): v for k, v in state["ema"].items() if k.startswith("vae.")}
    assert state_digest(vae.state_dict()) == state_digest(ema_vae) == carried_vae(state)["sha256"]


def test_resuming_with_another_loss_is_refused_naming_the_flag(tmp_path):
    import dataclasses

    from sdlab.config import ConfigError
    from sdlab.recipes import train_vae
    from sdlab.vae import VAELossConfig

    train_vae(sd_run(tmp_path / "sd", 1))
    elbo_flags = dataclasses.replace(sd_run(tmp_path / "sd", 2, resume="last"), loss=VAELossConfig())
    with pytest.raises(ConfigError, match="Stable Diffusion's loss and a learned variance"):
        train_vae(elbo_flags)
    plain = dataclasses.replace(sd_run(tmp_path / "elbo", 1), loss=VAELossConfig(),
                                disc=dataclasses.replace(sd_run(tmp_path, 1).disc, disc_start=-1))
    train_vae(plain)
    with pytest.raises(ConfigError, match="the ELBO's loss"):
        train_vae(dataclasses.replace(sd_run(tmp_path / "elbo", 2, resume="last"), disc=plain.disc))


def test_decoder_only_fine_tuning_keeps_the_encoder_and_so_every_latent(tmp_path):
    import dataclasses

    from sdlab.recipes import train_vae
    from sdlab.recipes.vae import FinetuneConfig
    from sdlab.trained import load_vae
    from sdlab.vae import VAEConfig, VAELossConfig

    base = sd_run(tmp_path / "l2", 1)
    train_vae(dataclasses.replace(base, loss=VAELossConfig(), disc=dataclasses.replace(base.disc, disc_start=-1)))
    source, _ = load_vae(str(tmp_path / "l2" / "last.pt"), torch.device("cpu"))
    tuned_run = dataclasses.replace(sd_run(tmp_path / "ft", 1), vae=VAEConfig(base_channels=16),   # ignored: the source's
                                    finetune=FinetuneConfig(str(tmp_path / "l2" / "last.pt")))
    trainer = train_vae(tuned_run).trainer
    assert [o.name for o in trainer.optimizers] == ["autoencoder", "disc"]
    tuned, _ = load_vae(str(tmp_path / "ft" / "last.pt"), torch.device("cpu"))
    assert tuned.cfg == source.cfg
    for name, value in source.state_dict().items():
        same = torch.equal(value, tuned.state_dict()[name])
        assert same == name.startswith(("encoder.", "quant_conv.")), name
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(tuned.encode(x).mean, source.encode(x).mean, rtol=0, atol=0)
    with pytest.raises(Exception, match="--finetune-decoder"):
        train_vae(dataclasses.replace(tuned_run, train=dataclasses.replace(tuned_run.train, save_dir=str(tmp_path / "x")),
                                      finetune=FinetuneConfig(str(tmp_path / "missing.pt"))))
