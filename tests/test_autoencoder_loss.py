"""Stable Diffusion's autoencoder loss: its terms against closed forms."""

import json
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


# ---------------------------------------------------------------- perceptual distances in trained networks


def tiny_classifier(seed=0, widths=(8, 16)):
    from sdlab.classifier import Classifier, ClassifierConfig

    torch.manual_seed(seed)
    model = Classifier(ClassifierConfig(widths=widths))
    model.stem.fit(torch.rand(32, 3, 16, 16) * 2 - 1)
    return model.eval()


def test_the_classifier_stages_are_its_body_and_the_feature_distance_is_one_minus_cosine_per_location():
    import torch.nn.functional as F

    from sdlab.perceptual import FeatureDistance

    net = tiny_classifier()
    x, x_hat = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    stages = net.stage_outputs(x)
    assert [s.shape[1:] for s in stages] == [(8, 7, 7), (16, 3, 3)]
    torch.testing.assert_close(stages[-1].amax((2, 3)), net.features(x), rtol=0, atol=0)
    distance = FeatureDistance(net)
    got = distance(x_hat, x)
    # ||u - v||^2 of unit vectors is 2 - 2 cos: the closed form, per location, averaged over the stages
    cosines = [F.cosine_similarity(a, b, dim=1, eps=1e-12) for a, b in zip(net.stage_outputs(x_hat), stages)]
    expected = sum((2 - 2 * c).mean((1, 2)) for c in cosines) / len(cosines)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(distance(x, x), torch.zeros(3))
    assert (got > 0).all() and (got <= 4).all()
    x_hat.requires_grad_(True)
    distance(x_hat, x).sum().backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())            # the loss network stays as it is


def test_a_vae_trained_against_a_classifier_is_never_scored_by_it(tmp_path):
    import dataclasses

    from sdlab.checkpoint import load_checkpoint, state_digest
    from sdlab.cli import eval_vae, train_classifier
    from sdlab.recipes import train_vae
    from sdlab.vae import VAELossConfig

    data = ["--dataset", "synthetic", "--synthetic-size", "40", "--image-size", "16", "--batch", "20",
            "--device", "cpu", "--epochs", "1", "--widths", "8,16"]
    train_classifier.main([*data, "--save-dir", str(tmp_path / "loss_net")])
    train_classifier.main([*data, "--seed", "1", "--save-dir", str(tmp_path / "scorer")])
    base = sd_run(tmp_path / "vae", 1)
    run = dataclasses.replace(base, loss=VAELossConfig(recon_loss="l1", kl_weight=1e-6, perceptual="classifier",
                                                       perceptual_net=str(tmp_path / "loss_net" / "best.pt")))
    trainer = train_vae(run).trainer
    assert "train/perceptual" in trainer.history[-1]
    stored = load_checkpoint(tmp_path / "vae" / "last.pt")["config"]["perceptual_net_sha256"]
    assert stored == state_digest(load_checkpoint(tmp_path / "loss_net" / "best.pt")["ema"] or
                                  load_checkpoint(tmp_path / "loss_net" / "best.pt")["model"])
    ckpt = str(tmp_path / "vae" / "last.pt")
    with pytest.raises(SystemExit):
        eval_vae.main([ckpt, "--classifier", str(tmp_path / "loss_net" / "best.pt"), "--out", str(tmp_path / "e.json")])
    eval_vae.main([ckpt, "--classifier", str(tmp_path / "scorer" / "best.pt"), "--num-images", "20",
                   "--out", str(tmp_path / "e.json")])
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["metric"] == "FD-classifier" and 0 <= result["accuracy"] <= 1 and result["fd"] > 0
    assert -1 <= result["ssim"] <= 1 and result["high_freq_ratio"] > 0
    # resuming against another loss network is refused, naming the flag
    from sdlab.config import ConfigError
    other = dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=2, resume="last"),
                                loss=dataclasses.replace(run.loss, perceptual_net=str(tmp_path / "scorer" / "best.pt")))
    with pytest.raises(ConfigError, match="other weights than the network"):
        train_vae(other)


def test_the_classifier_distance_needs_its_network_and_lpips_names_what_is_missing(tmp_path, monkeypatch):
    from sdlab.config import ConfigError
    from sdlab.errors import UserError
    from sdlab.perceptual import lpips_distance
    from sdlab.vae import VAELossConfig

    with pytest.raises(ConfigError, match="needs the checkpoint of a classifier"):
        VAELossConfig(perceptual="classifier")
    with pytest.raises(ConfigError, match="only read by --perceptual classifier or lpips"):
        VAELossConfig(perceptual="watson", perceptual_net="x.pt")
    monkeypatch.setitem(__import__("sys").modules, "lpips", None)        # as if not installed
    with pytest.raises(UserError, match="needs the lpips package: pip install lpips"):
        lpips_distance()


def test_lpips_reads_torchvision_vgg16_weights_from_a_local_file(tmp_path):
    pytest.importorskip("lpips")
    import torchvision

    from sdlab.errors import UserError
    from sdlab.perceptual import lpips_distance

    with pytest.raises(UserError, match=r"not at .*missing\.pth; copy torchvision's vgg16-397923af\.pth"):
        lpips_distance(str(tmp_path / "missing.pth"))
    features = torchvision.models.vgg16().features.state_dict()     # random weights in torchvision's layout
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp_path / "vgg16.pth")
    distance = lpips_distance(str(tmp_path / "vgg16.pth"))
    for key, value in distance.net.net.state_dict().items():
        assert torch.equal(value, features[key.split(".", 1)[1]]), key
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert distance(x, x).shape == (2,) and torch.allclose(distance(x, x), torch.zeros(2))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not torchvision's VGG16 weights"):
        lpips_distance(str(tmp_path / "other.pth"))


# ---------------------------------------------------------------- evaluation


def test_the_power_spectrum_of_a_cosine_has_all_its_power_in_its_ring():
    from sdlab.quality import high_frequency_ratio, radial_power_spectrum

    side, k = 16, 5
    wave = torch.cos(2 * math.pi * k * torch.arange(side) / side).expand(side, side)
    spectrum = radial_power_spectrum(wave.expand(2, 3, side, side))       # summed over the 2 images
    ring = (torch.fft.fftfreq(side) * side).pow(2)
    ring_k = ((ring[:, None] + ring[None, :]).sqrt().round() == k).sum()
    # two DFT peaks of magnitude S^2/2 at (0, +-k): power (S^2/2)^2 / S^2 each, averaged over ring k's entries
    expected = torch.zeros(side // 2 + 1)
    expected[k] = 2 * 2 * (side**2 / 4) / ring_k
    torch.testing.assert_close(spectrum, expected, rtol=1e-5, atol=1e-4)
    images = torch.rand(4, 3, side, side) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(images, 3, 1, 1, count_include_pad=False)
    real = radial_power_spectrum(images)
    assert high_frequency_ratio(real, real) == 1.0
    assert high_frequency_ratio(radial_power_spectrum(blurred), real) < 0.5
