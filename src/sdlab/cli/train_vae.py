"""`train_vae.py` / `sdlab-train-vae`: train the VAE on CIFAR-10 (or another dataset).

    python diffusers/train_vae.py --save-dir=outputs/vae --log-dir=logs/vae --early-stop-patience=10 --visualize
"""

from __future__ import annotations

import torch

from ..config import ConfigError, from_stored
from ..data import DataConfig

from ..figures import vae_figures
from ..trainer import TrainConfig, Trainer
from ..vae import VAE, VAEConfig, VAELossConfig, vae_loss
from ..visualize import grid
from .flags import add_config_flags, build_configs
from ..runtime import default_precision
from .session import (build_loaders, prepare_run, resolve_device, run_training,
                      save_run_config, shared_parser, user_errors)

# The original repo's VAE flags and what they set. --B is beta (the KL weight); --reduction
# sum|mean picks per-image sums or per-pixel means for both loss terms (see vae_loss).
VAE_ALIASES = {
    "in_channels": ["--in-chans"],
    "out_channels": ["--out-chans"],
    "base_channels": ["--num-chans"],
    "z_channels": ["--z-dim"],
    "latent_channels": ["--embed-dim"],
    "num_res_blocks": ["--blocks"],
    "channel_mults": ["--channel-multipliers"],
    "kl_weight": ["--B"],
}

# Defaults chosen for reconstruction quality per minute of training (BENCHMARKS.md).
CPU_DEFAULTS = {"base_channels": 32, "epochs": 30, "lr": 1e-3, "scheduler": "cosine",
                "warmup_steps": 200, "save_dir": "outputs/vae"}
CUDA_DEFAULTS = {"base_channels": 128, "num_res_blocks": 2, "epochs": 100, "lr": 5e-4,
                 "scheduler": "cosine", "warmup_steps": 500, "save_dir": "outputs/vae"}


def build_parser():
    parser = shared_parser("train_vae.py", "Train the Stable Diffusion VAE (encoder, "
                           "reparameterization, decoder; reconstruction + beta * KL).")
    add_config_flags(parser, VAEConfig, "VAE model", VAE_ALIASES)
    add_config_flags(parser, VAELossConfig, "VAE loss", VAE_ALIASES)
    return parser


def parse(argv=None) -> tuple[dict, torch.device]:
    parser = build_parser()
    args = parser.parse_args(argv)
    classes = {"data": DataConfig, "train": TrainConfig, "vae": VAEConfig, "loss": VAELossConfig}
    device = resolve_device(parser, build_configs(parser, args, classes)["train"])
    defaults = dict(CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS,
                    precision=default_precision(device))
    configs = build_configs(parser, args, classes, overrides=defaults)
    device = resolve_device(parser, configs["train"])
    resumed = prepare_run(configs["train"], "vae")
    if resumed is not None:  # a resumed run keeps the architecture it was trained with
        configs["vae"] = from_stored(VAEConfig, resumed["config"]["vae"])
    return configs, device


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


@user_errors
def main(argv=None) -> None:
    configs, device = parse(argv)
    data_cfg, train_cfg, vae_cfg, loss_cfg = (configs[k] for k in ("data", "train", "vae", "loss"))
    torch.manual_seed(train_cfg.seed)
    splits, train_loader, val_loader = build_loaders(data_cfg, train_cfg, device)
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
    print(f"VAE: {n_params / 1e6:.2f}M parameters, latent {'x'.join(map(str, latent_shape))}, "
          f"{len(splits.train)} train / {len(splits.test)} val images, device {device}, "
          f"precision {train_cfg.precision}")
    run_config = save_run_config(configs, train_cfg.save_dir)
    run_config["kind"] = "vae"
    fixed = val_loader.spread(8)[0]

    def loss_fn(model, images, labels, generator=None, step=None):
        return vae_loss(model, images, loss_cfg, generator=generator, step=step)

    trainer = Trainer(vae, loss_fn, train_loader, val_loader, train_cfg, run_config=run_config,
                      device=device, epoch_hook=lambda t: log_images(t, fixed, latent_shape))
    run_training(trainer)
    if train_cfg.visualize:
        vae_figures(trainer.eval_model, trainer.history, val_loader.spread(256)[0], train_cfg.save_dir)


if __name__ == "__main__":
    main()
