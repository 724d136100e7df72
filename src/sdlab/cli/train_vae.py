"""`train_vae.py` / `sdlab-train-vae`: train the VAE on CIFAR-10 (or another dataset); flags ->
`recipes.VAERun` -> `recipes.train_vae`.

    python diffusers/train_vae.py --save-dir=outputs/vae --log-dir=logs/vae --early-stop-patience=10 --visualize
"""

from __future__ import annotations

import torch

from ..data import DataConfig
from ..discriminator import DiscriminatorConfig
from ..recipes import VAERun, train_vae
from ..recipes.vae import FinetuneConfig, device_defaults
from ..trainer import TrainConfig
from ..vae import VAEConfig, VAELossConfig
from .flags import add_config_flags, build_configs
from ..runtime import pick_device
from .session import machine_defaults, resolve_device, shared_parser, user_errors

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

def build_parser():
    parser = shared_parser("train_vae.py", "Train the Stable Diffusion VAE (encoder, "
                           "reparameterization, decoder; reconstruction + beta * KL).")
    add_config_flags(parser, VAEConfig, "VAE model", VAE_ALIASES)
    add_config_flags(parser, VAELossConfig, "VAE loss", VAE_ALIASES)
    add_config_flags(parser, DiscriminatorConfig, "PatchGAN discriminator (Stable Diffusion's adversarial term)")
    add_config_flags(parser, FinetuneConfig, "decoder-only fine-tuning")
    machine_defaults(parser, device_defaults(pick_device("auto")))
    return parser


def parse(argv=None) -> tuple[dict, torch.device]:
    """Flags -> {section: config} of a VAERun (CPU or CUDA defaults) and the device."""
    parser = build_parser()
    args = parser.parse_args(argv)
    classes = {"data": DataConfig, "train": TrainConfig, "vae": VAEConfig, "loss": VAELossConfig,
               "disc": DiscriminatorConfig, "finetune": FinetuneConfig}
    device = resolve_device(parser, build_configs(parser, args, classes)["train"])
    configs = build_configs(parser, args, classes, overrides=device_defaults(device))
    return configs, resolve_device(parser, configs["train"])


@user_errors
def main(argv=None) -> None:
    configs, _ = parse(argv)
    train_vae(VAERun(**configs))


if __name__ == "__main__":
    main()
