"""`train_diffusion.py` / `sdlab-train-diffusion`: train a DDPM noise predictor, on pixels or on
VAE latents (latent diffusion), optionally class-conditional with classifier-free guidance.

    python diffusers/train_diffusion.py                       # CIFAR-10, CPU-sized U-Net on CPU
    python diffusers/train_diffusion.py --model-size ddpm-cifar10 --epochs 500
    python diffusers/train_diffusion.py --latent --vae-checkpoint outputs/vae/best.pt --class-cond
    python diffusers/train_diffusion.py --dataset scenes --text-cond --synthetic-size 20000   # prompts
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from ..data import DataConfig
from ..diffusion import DiffusionConfig, SamplerConfig
from ..diffusion.guidance import GuidanceConfig
from ..latent import LatentConfig
from ..recipes import DiffusionRun, train_diffusion
from ..recipes.diffusion import device_defaults
from ..recipes.quality import QualityConfig
from ..text import TextConfig
from ..trainer import TrainConfig
from ..unet import PRESETS, UNetConfig
from .flags import add_config_flags, build_configs
from ..runtime import pick_device
from .session import machine_defaults, resolve_device, shared_parser, user_errors

# The original repo's flags and the fields they set. --down-scale gives the per-level channel
# multipliers; --is-attn (per-level 0/1, e.g. 0,1,0) is turned into attention_resolutions.
DIFFUSION_ALIASES = {
    "num_timesteps": ["--noise-steps"],
    "base_channels": ["--hidden-dim"],
    "time_channels": ["--time-dim"],
    "channel_mults": ["--down-scale"],
    "heads": ["--n-heads"],
    "in_channels": ["--in-chans"],
    "out_channels": ["--out-chans"],
}

CLASSES = {"data": DataConfig, "train": TrainConfig, "unet": UNetConfig, "diffusion": DiffusionConfig,
           "sampler": SamplerConfig, "latent": LatentConfig, "guidance": GuidanceConfig, "text": TextConfig, "quality": QualityConfig}


def build_parser():
    parser = shared_parser("train_diffusion.py", "Train a DDPM: forward noising schedule, U-Net "
                           "noise predictor, DDPM/DDIM samplers; optionally on VAE latents.")
    parser.add_argument("--model-size", choices=sorted(PRESETS), default=None,
                        help="U-Net preset (default: cpu on CPU, ddpm-cifar10 on CUDA); "
                             "U-Net flags override it")
    parser.add_argument("--is-attn", default=None, metavar="0,1,..",
                        help="original flag: per-level attention switches (sets --attention-resolutions)")
    parser.add_argument("--act", choices=["silu"], default="silu",
                        help="original flag: activation; DDPM's U-Net uses SiLU (swish) throughout")
    parser.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                        help="original flag: the U-Net's blocks are always residual")
    add_config_flags(parser, UNetConfig, "U-Net", DIFFUSION_ALIASES, skip=("image_size", "context_dim"))
    add_config_flags(parser, DiffusionConfig, "diffusion", DIFFUSION_ALIASES)
    add_config_flags(parser, SamplerConfig, "sampling", DIFFUSION_ALIASES)
    add_config_flags(parser, LatentConfig, "latent diffusion")
    add_config_flags(parser, GuidanceConfig, "class conditioning and classifier-free guidance")
    add_config_flags(parser, TextConfig, "text conditioning (prompts through cross-attention)")
    add_config_flags(parser, QualityConfig, "sample quality during training (--eval-every)",
                     skip=("reference_split", "feature_batch"))
    machine_defaults(parser, device_defaults(pick_device("auto")))      # the default --model-size's preset
    return parser


def parse(argv=None) -> tuple[dict, torch.device]:
    """Flags -> {section: config} of a DiffusionRun (CPU or CUDA defaults, U-Net preset, the
    original repo's --is-attn) and the device."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.residual:
        parser.error("--no-residual: the U-Net's blocks are always residual (DDPM App. B)")
    device = resolve_device(parser, build_configs(parser, args, CLASSES)["train"])
    configs = build_configs(parser, args, CLASSES, overrides=device_defaults(device, args.model_size))
    configs["unet"] = dataclasses.replace(configs["unet"], image_size=configs["data"].image_size)
    if args.is_attn is not None:
        unet = configs["unet"]
        flags = [s.strip() in ("1", "true", "True") for s in args.is_attn.split(",")]
        if len(flags) != len(unet.channel_mults):
            parser.error(f"--is-attn: give one 0/1 per level ({len(unet.channel_mults)} levels)")
        resolutions = tuple(unet.image_size // 2**i for i, on in enumerate(flags) if on)
        configs["unet"] = dataclasses.replace(unet, attention_resolutions=resolutions)
    return configs, resolve_device(parser, configs["train"])


@user_errors
def main(argv=None) -> None:
    configs, _ = parse(argv)
    train_diffusion(DiffusionRun(**configs))


if __name__ == "__main__":
    main()
