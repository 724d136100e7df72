"""The VAE recipe: data, model, loss, trainer, TensorBoard images and figures, from one config.

    from sdlab.recipes import VAERun, train_vae
    trained = train_vae(VAERun(train=TrainConfig(epochs=1, save_dir="runs/vae")))
    vae = trained.trainer.eval_model

Evaluation (what `sdlab-eval-vae` reports): `fit_sigma` and `evaluate_vae`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import ConfigError, from_stored
from ..data import BatchLoader, DataConfig
from ..likelihood import bits_per_dim, discretized_gaussian_log_likelihood
from ..figures import vae_figures
from ..runtime import pick_device
from ..trainer import TrainConfig, Trainer
from ..vae import VAE, VAEConfig, VAELossConfig, psnr, vae_loss
from ..visualize import grid
from .run import Trained, build_loaders, prepare_run, report, save_run_config, start_run, with_defaults


# Defaults chosen for reconstruction quality per minute of training (BENCHMARKS.md).
CPU_DEFAULTS = {"base_channels": 32, "epochs": 30, "lr": 1e-3, "scheduler": "cosine",
                "warmup_steps": 200, "save_dir": "outputs/vae"}
CUDA_DEFAULTS = {"base_channels": 128, "num_res_blocks": 2, "epochs": 100, "lr": 5e-4,
                 "scheduler": "cosine", "warmup_steps": 500, "save_dir": "outputs/vae"}


def device_defaults(device: torch.device) -> dict:
    """The defaults (field -> value) of a VAE run on `device`; flags and `VAERun.recommended`'s
    sections go over them."""
    return CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS


@dataclass(frozen=True)
class VAERun:
    """Everything a VAE run is made of; its fields are the sections of config.json."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)

    @classmethod
    def recommended(cls, **sections) -> "VAERun":
        """What `train_vae.py` runs with no flags on the device of sections["train"] (default
        auto), with `sections` over it: VAERun.recommended(train={"epochs": 1})."""
        device = pick_device(sections.get("train", {}).get("device", "auto"))
        return with_defaults(cls, device_defaults(device), sections)


def log_images(trainer: Trainer, fixed: torch.Tensor, latent_shape) -> None:
    """TensorBoard images each epoch: inputs above reconstructions, and prior samples."""
    vae = trainer.eval_model
    vae.eval()
    with torch.no_grad():
        recon = vae.decode(vae.encode(fixed).mode())
        g = torch.Generator(fixed.device).manual_seed(0)
        samples = vae.decode(torch.randn((16, *latent_shape), generator=g, device=fixed.device))
    trainer.writer.add_image("vae/inputs_vs_reconstructions", grid(torch.cat([fixed, recon])), trainer.step)
    trainer.writer.add_image("vae/prior_samples", grid(samples), trainer.step)


def train_vae(run: VAERun) -> Trained:
    """Train (or, with run.train.resume, continue) a VAE; returns the trainer (history, EMA weights
    as `trainer.eval_model`). A resumed run keeps the architecture stored in its checkpoint."""
    dist, device, run = start_run(run)
    resumed = prepare_run(run.train, "vae", dist)
    if resumed is not None:
        run = VAERun(run.data, run.train, from_stored(VAEConfig, resumed["config"]["vae"]), run.loss)
    data_cfg, train_cfg, vae_cfg, loss_cfg = run.data, run.train, run.vae, run.loss
    torch.manual_seed(train_cfg.seed)
    splits, train_loader, val_loader = build_loaders(data_cfg, train_cfg, device, dist=dist)
    if splits.train.channels != vae_cfg.in_channels:
        raise ConfigError("in_channels", f"is {vae_cfg.in_channels} but --dataset {data_cfg.dataset} "
                                         f"has {splits.train.channels} channels; pass --in-chans "
                                         f"{splits.train.channels}")
    if data_cfg.image_size % vae_cfg.downsampling:
        raise ConfigError("image_size", f"{data_cfg.image_size} is not divisible by the VAE's "
                                        f"downsampling factor {vae_cfg.downsampling} (2 ** number of --channel-mults)")
    vae = VAE(vae_cfg).to(device)
    n_params = sum(p.numel() for p in vae.parameters())
    latent_shape = vae_cfg.latent_shape(data_cfg.image_size)
    if dist.is_main:
        print(f"VAE: {n_params / 1e6:.2f}M parameters, latent {'x'.join(map(str, latent_shape))}, "
              f"{len(splits.train)} train / {len(splits.test)} val images, device {device}, "
              f"precision {train_cfg.precision}")
    run_config = save_run_config(vars(run), train_cfg.save_dir, dist)
    run_config["kind"] = "vae"
    fixed = val_loader.spread(8)[0]

    def loss_fn(model, images, labels, generator=None, step=None):
        return vae_loss(model, images, loss_cfg, generator=generator, step=step)

    trainer = Trainer(vae, loss_fn, train_loader, val_loader, train_cfg, run_config=run_config,
                      device=device, epoch_hook=lambda t: log_images(t, fixed, latent_shape), dist=dist)
    trainer.fit(resume_state=resumed)
    report(trainer)
    if train_cfg.visualize and dist.is_main:
        vae_figures(trainer.eval_model, trainer.history, val_loader.spread(256)[0], train_cfg.save_dir)
    return Trained(trainer)


@torch.no_grad()
def fit_sigma(vae: VAE, loader: BatchLoader, limit: int, generator: torch.Generator) -> float:
    """Maximum-likelihood sigma of a Gaussian decoder: sqrt(mean squared error), z ~ q(z|x)."""
    total, count = 0.0, 0
    for x, _ in loader.epoch(0):
        x_hat = vae.decode(vae.encode(x).sample(generator))
        total += (x_hat - x).pow(2).sum().item()
        count += x.numel()
        if count >= limit * x[0].numel():
            break
    return math.sqrt(total / count)


@torch.no_grad()
def evaluate_vae(vae: VAE, test: BatchLoader, sigma: float, generator: torch.Generator,
                 limit: int | None = None) -> dict:
    sums = {"mse": 0.0, "psnr": 0.0, "kl_bits": 0.0, "nelbo_bpd": 0.0}
    means, n = [], 0
    for x, _ in test.epoch(0):
        q = vae.encode(x)
        x_mode = vae.decode(q.mode())
        x_hat = vae.decode(q.sample(generator))
        log_scale = torch.full_like(x_hat, math.log(sigma))
        nll = -discretized_gaussian_log_likelihood(x, x_hat, log_scale).flatten(1).sum(1)
        kl = q.kl()
        sums["mse"] += (x_mode - x).pow(2).flatten(1).mean(1).sum().item()
        sums["psnr"] += psnr(x_mode, x).sum().item()
        sums["kl_bits"] += (kl / math.log(2)).sum().item()
        sums["nelbo_bpd"] += bits_per_dim(nll + kl, x[0].numel()).sum().item()
        means.append(q.mean.float().cpu())
        n += x.shape[0]
        if limit and n >= limit:
            break
    latents = torch.cat(means)
    result = {k: v / n for k, v in sums.items()}
    result.update(images=n, sigma=sigma, latent_mean=latents.mean().item(),
                  latent_std=latents.std().item(), scale_factor=1.0 / latents.std().item())
    return result
