import json

import pytest
import torch
from torch import nn

from sdlab.data import BatchLoader, make_synthetic
from sdlab.trainer import TrainConfig, Trainer
from sdlab.vae import VAE, DiagonalGaussian, VAEConfig, VAELossConfig, psnr, vae_loss

from conftest import ROOT, run_script, scalar_tags

TINY = VAEConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1)


def test_reparameterized_samples_have_mean_mu_and_std_sigma():
    # Fails for the original repo's uniform noise: U[0,1) shifts the mean by sigma/2 and has
    # std sigma/sqrt(12); U[-1,1) has std sigma/sqrt(3); neither puts 68% within one sigma.
    mu = torch.tensor([-1.5, 0.0, 2.0]).repeat(50_000, 1)
    logvar = torch.log(torch.tensor([0.25, 1.0, 4.0])).repeat(50_000, 1)
    q = DiagonalGaussian(mu, logvar)
    z = q.sample(torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 1.0, 2.0])
    assert torch.allclose(z.mean(0), mu[0], atol=0.03)
    assert torch.allclose(z.std(0), sigma, rtol=0.02)
    within_one_sigma = ((z - mu).abs() < sigma).float().mean(0)
    assert torch.allclose(within_one_sigma, torch.full((3,), 0.6827), atol=0.01)
    assert q.sample(torch.Generator().manual_seed(1)).shape == mu.shape


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mean, logvar = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3) * 0.5
    q = DiagonalGaussian(mean, logvar)
    z = mean + q.std * torch.randn(100_000, *mean.shape)
    log_q = torch.distributions.Normal(mean, q.std).log_prob(z)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    mc = (log_q - log_p).flatten(2).sum(2).mean(0)              # (B,)
    assert torch.allclose(q.kl(), mc, rtol=0.02, atol=0.05)


def test_kl_of_standard_normal_is_zero():
    q = DiagonalGaussian(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8))
    assert torch.equal(q.kl(), torch.zeros(2))


@pytest.mark.parametrize("mults,latent,size", [((1,), 2, 16), ((1, 2), 4, 32), ((1, 2, 2), 3, 16)])
def test_shapes_for_several_configs(mults, latent, size):
    cfg = VAEConfig(base_channels=8, channel_mults=mults, latent_channels=latent, z_channels=6)
    vae = VAE(cfg)
    x = torch.rand(2, 3, size, size) * 2 - 1
    x_hat, q = vae(x)
    f = 2 ** len(mults)
    assert q.mean.shape == (2, latent, size // f, size // f) == cfg.latent_shape(size)[:0] + q.mean.shape
    assert (latent, size // f, size // f) == cfg.latent_shape(size)
    assert x_hat.shape == x.shape


def test_default_latent_is_4x8x8_for_32px_and_decoder_ends_in_a_plain_conv():
    vae = VAE(VAEConfig())
    assert VAEConfig().latent_shape(32) == (4, 8, 8)
    last = list(vae.decoder.children())[-1]
    assert isinstance(last, nn.Conv2d) and last is vae.decoder.conv_out


def test_tiny_vae_overfits_one_batch():
    torch.manual_seed(0)
    x = (make_synthetic(8, 16).images.float() / 127.5) - 1
    vae = VAE(VAEConfig(base_channels=16, channel_mults=(1, 2), latent_channels=8))
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    loss_cfg = VAELossConfig(kl_weight=1e-3)
    start = psnr(vae(x, sample=False)[0], x).mean()
    for _ in range(250):
        loss = vae_loss(vae, x, loss_cfg)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = psnr(vae(x, sample=False)[0], x).mean()
    assert start < 14 and end > 24, (start, end)


def test_loss_normalisation_and_terms():
    torch.manual_seed(0)
    vae = VAE(TINY)
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    g = lambda: torch.Generator().manual_seed(0)
    full = vae_loss(vae, x, VAELossConfig(kl_weight=0.5), generator=g())
    assert full["loss"].item() == pytest.approx(full["recon"].item() + 0.5 * full["kl"].item(), rel=1e-5)
    # per-image sums: the batch mean of per-image SSE, so it does not grow with the batch size
    x_hat, q = vae(x, generator=g())
    assert full["recon"].item() == pytest.approx((x_hat - x).pow(2).sum() .item() / 6, rel=1e-5)
    mean = vae_loss(vae, x, VAELossConfig(kl_weight=0.5, reduction="mean"), generator=g())
    assert mean["recon"].item() == pytest.approx(full["recon"].item() / (3 * 64), rel=1e-5)
    warm = vae_loss(vae, x, VAELossConfig(kl_weight=0.5, kl_warmup_steps=10), generator=g(), step=5)
    assert warm["loss"].item() == pytest.approx(full["recon"].item() + 0.25 * full["kl"].item(), rel=1e-5)


def test_validation_loss_is_computed_on_validation_images(tmp_path):
    # The original repo scored validation against the training batch; here val/recon must equal
    # the loss recomputed on the validation images and differ from the one on training images.
    torch.manual_seed(0)
    train, val = make_synthetic(32, 8, seed=0), make_synthetic(16, 8, seed=1)
    val.images = 255 - val.images                               # clearly different images
    loss_cfg = VAELossConfig()
    cfg = TrainConfig(epochs=1, save_dir=str(tmp_path), device="cpu", precision="fp32")   # recomputed in fp32 below
    train_loader = BatchLoader(train, 16, shuffle=True, hflip=False, drop_last=True)
    val_loader = BatchLoader(val, 16, shuffle=False, hflip=False, drop_last=False)
    loss_fn = lambda m, x, y, generator=None, step=None: vae_loss(m, x, loss_cfg, generator=generator, step=step)
    vae = VAE(TINY)
    trainer = Trainer(vae, loss_fn, train_loader, val_loader, cfg, run_config={}, device=torch.device("cpu"))
    measured = trainer.evaluate()
    vae.eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(cfg.seed + 7919)
        on_val = vae_loss(vae, next(val_loader.epoch(0))[0], loss_cfg, generator=g)
        g = torch.Generator().manual_seed(cfg.seed + 7919)
        on_train = vae_loss(vae, next(train_loader.epoch(0))[0], loss_cfg, generator=g)
    assert measured["recon"] == pytest.approx(on_val["recon"].item(), rel=1e-5)
    assert abs(measured["recon"] - on_train["recon"].item()) > 1.0
    assert trainer.evaluate()["loss"] == measured["loss"]      # fixed-seed validation noise


def test_original_flags_map_onto_the_configs():
    from sdlab.cli.train_vae import parse

    configs, _ = parse(["--in-chans", "1", "--num-chans", "16", "--z-dim", "8", "--embed-dim", "3",
                        "--blocks", "2", "--channel-multipliers", "1,2,4", "--B", "0.1",
                        "--reduction", "mean", "--batch", "32", "--imgsz", "16", "--devices", "cpu"])
    vae, loss, data = configs["vae"], configs["loss"], configs["data"]
    assert (vae.in_channels, vae.base_channels, vae.z_channels, vae.latent_channels) == (1, 16, 8, 3)
    assert vae.num_res_blocks == 2 and vae.channel_mults == (1, 2, 4)
    assert loss.kl_weight == 0.1 and loss.reduction == "mean"
    assert data.batch_size == 32 and data.image_size == 16 and configs["train"].device == "cpu"


def test_original_readme_command_runs_from_inside_diffusers(tmp_path):
    save, logs = tmp_path / "outputs", tmp_path / "logs"
    result = run_script(["train_vae.py", f"--save-dir={save}", f"--log-dir={logs}",
                         "--early-stop-patience=10", "--visualize",
                         "--dataset", "synthetic", "--synthetic-size", "64", "--epochs", "2",
                         "--batch", "16", "--num-chans", "8"], cwd=ROOT / "diffusers")
    assert result.returncode == 0, result.stderr
    for name in ("best.pt", "last.pt", "config.json", "history.json", "loss_curves.png",
                 "reconstructions.png", "prior_samples.png", "interpolation.png", "kl_per_channel.png"):
        assert (save / name).stat().st_size > 0, name
    tags = scalar_tags(logs)
    assert {"train/loss", "train/recon", "train/kl", "val/loss", "val/recon", "val/kl", "val/psnr"} <= tags
    assert json.loads((save / "config.json").read_text())["data"]["dataset"] == "synthetic"
    evaluated = run_script(["-m", "sdlab.cli.eval_vae", save / "best.pt", "--out", tmp_path / "e.json",
                            "--figures", tmp_path / "figs"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["images"] == 12 and 0 < result["nelbo_bpd"] < 16 and result["psnr"] > 5
    assert abs(result["scale_factor"] * result["latent_std"] - 1) < 1e-6
    assert (tmp_path / "figs" / "reconstructions.png").stat().st_size > 0
