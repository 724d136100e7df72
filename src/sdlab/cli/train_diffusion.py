"""`train_diffusion.py` / `sdlab-train-diffusion`: train a DDPM noise predictor.

    python diffusers/train_diffusion.py                       # CIFAR-10, CPU-sized U-Net on CPU
    python diffusers/train_diffusion.py --model-size ddpm-cifar10 --epochs 500
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ..config import ConfigError
from ..data import DataConfig
from ..diffusion import DiffusionConfig, SamplerConfig, Trajectory, diffusion_loss, sample
from ..figures import forward_process, loss_by_timestep, reverse_process, schedules
from ..trainer import TrainConfig, Trainer
from ..unet import PRESETS, UNet, UNetConfig
from ..visualize import grid, plot_history, save_grid
from .flags import add_config_flags, build_configs
from .session import (build_loaders, checkpoint_config, default_precision, resolve_device,
                      run_training, save_run_config, shared_parser, user_errors)

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

CPU_DEFAULTS = {"epochs": 100, "batch_size": 64, "lr": 3e-4, "warmup_steps": 200, "ema_decay": 0.999,
                "save_dir": "outputs/diffusion"}
CUDA_DEFAULTS = {"epochs": 500, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000,
                 "ema_decay": 0.9999, "save_dir": "outputs/diffusion"}
CLASSES = {"data": DataConfig, "train": TrainConfig, "unet": UNetConfig,
           "diffusion": DiffusionConfig, "sampler": SamplerConfig}


def build_parser():
    parser = shared_parser("train_diffusion.py", "Train a DDPM: forward noising schedule, U-Net "
                           "noise predictor, DDPM/DDIM samplers.")
    parser.add_argument("--model-size", choices=sorted(PRESETS), default=None,
                        help="U-Net preset (default: cpu on CPU, ddpm-cifar10 on CUDA); "
                             "U-Net flags override it")
    parser.add_argument("--is-attn", default=None, metavar="0,1,..",
                        help="original flag: per-level attention switches (sets --attention-resolutions)")
    parser.add_argument("--act", choices=["silu"], default="silu",
                        help="original flag: activation; DDPM's U-Net uses SiLU (swish) throughout")
    parser.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                        help="original flag: the U-Net's blocks are always residual")
    add_config_flags(parser, UNetConfig, "U-Net", DIFFUSION_ALIASES, skip=("image_size",))
    add_config_flags(parser, DiffusionConfig, "diffusion", DIFFUSION_ALIASES)
    add_config_flags(parser, SamplerConfig, "sampling", DIFFUSION_ALIASES)
    return parser


def parse(argv=None) -> tuple[dict, torch.device]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.residual:
        parser.error("--no-residual: the U-Net's blocks are always residual (DDPM App. B)")
    extra = {k: getattr(args, k) for k in ("model_size", "is_attn")}
    device = resolve_device(parser, build_configs(parser, args, CLASSES)["train"])
    size = extra["model_size"] or ("ddpm-cifar10" if device.type == "cuda" else "cpu")
    defaults = dict(CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS, **PRESETS[size],
                    precision=default_precision(device))
    configs = build_configs(parser, args, CLASSES, overrides=defaults)
    configs["unet"] = dataclasses.replace(configs["unet"], image_size=configs["data"].image_size)
    if extra["is_attn"] is not None:
        unet = configs["unet"]
        flags = [s.strip() in ("1", "true", "True") for s in extra["is_attn"].split(",")]
        if len(flags) != len(unet.channel_mults):
            parser.error(f"--is-attn: give one 0/1 per level ({len(unet.channel_mults)} levels)")
        resolutions = tuple(unet.image_size // 2**i for i, on in enumerate(flags) if on)
        configs["unet"] = dataclasses.replace(unet, attention_resolutions=resolutions)
    stored = checkpoint_config(configs["train"])
    if stored is not None:  # a resumed run keeps its architecture and schedule
        for section, cls in (("unet", UNetConfig), ("diffusion", DiffusionConfig)):
            configs[section] = cls(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in stored[section].items()})
    return configs, resolve_device(parser, configs["train"])


class SampleGrid:
    """The epoch hook: a fixed-seed sample grid into SAVE_DIR/samples and TensorBoard."""

    def __init__(self, schedule, configs: dict, device: torch.device, shape):
        self.schedule, self.configs, self.device, self.shape = schedule, configs, device, shape

    def draw(self, model, trajectory: Trajectory | None = None, num: int | None = None) -> torch.Tensor:
        sampler, diffusion = self.configs["sampler"], self.configs["diffusion"]
        model.eval()
        g = torch.Generator(self.device).manual_seed(0)
        return sample(model, self.schedule, (num or sampler.num_samples, *self.shape),
                      prediction=diffusion.prediction, generator=g, device=self.device,
                      trajectory=trajectory, **sampler.kwargs())

    def __call__(self, trainer: Trainer) -> None:
        images = self.draw(trainer.eval_model)
        save_grid(images, Path(trainer.cfg.save_dir) / "samples" / f"epoch_{trainer.epoch:04d}.png")
        trainer.writer.add_image("samples", grid(images), trainer.step)


def write_figures(model, schedule, configs: dict, history, val_images, grids: SampleGrid, save_dir):
    out = Path(save_dir)
    model.eval()
    plot_history(history, out / "loss_curves.png", title="DDPM training")
    forward_process(schedule, val_images[:4], out / "forward_process.png")
    trajectory = Trajectory()
    grids.draw(model, trajectory, num=1)
    reverse_process(trajectory, out / "reverse_process.png")
    schedules(out / "schedules.png", schedule.num_timesteps)
    loss_by_timestep(model, schedule, configs["diffusion"], val_images, out / "loss_by_timestep.png")
    print(f"figures written to {out}: loss_curves.png forward_process.png reverse_process.png "
          "schedules.png loss_by_timestep.png")


@user_errors
def main(argv=None) -> None:
    configs, device = parse(argv)
    data_cfg, train_cfg, unet_cfg, diff_cfg = (configs[k] for k in ("data", "train", "unet", "diffusion"))
    torch.manual_seed(train_cfg.seed)
    splits, train_loader, val_loader = build_loaders(data_cfg, train_cfg, device)
    if unet_cfg.in_channels != splits.train.channels:
        raise ConfigError("in_channels", f"is {unet_cfg.in_channels} but --dataset {data_cfg.dataset} "
                                         f"has {splits.train.channels} channels; pass --in-chans "
                                         f"{splits.train.channels}")
    model = UNet(unet_cfg).to(device)
    schedule = diff_cfg.make_schedule().to(device)
    shape = (unet_cfg.in_channels, data_cfg.image_size, data_cfg.image_size)
    print(f"U-Net: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
          f"T = {diff_cfg.num_timesteps} ({diff_cfg.schedule}), predicting {diff_cfg.prediction}; "
          f"{len(splits.train)} train / {len(splits.test)} val images, device {device}, "
          f"precision {train_cfg.precision}")
    run_config = save_run_config(configs, train_cfg.save_dir)
    run_config["kind"] = "diffusion"

    def loss_fn(net, images, labels, generator=None, step=None):
        return diffusion_loss(net, schedule, images, diff_cfg, generator=generator)

    grids = SampleGrid(schedule, configs, device, shape)
    trainer = Trainer(model, loss_fn, train_loader, val_loader, train_cfg, run_config=run_config,
                      device=device, epoch_hook=grids)
    run_training(trainer)
    if train_cfg.visualize:
        val_images = torch.cat([x for x, _ in val_loader.epoch(0)][:4])[:256]
        write_figures(trainer.eval_model, schedule, configs, trainer.history, val_images, grids,
                      train_cfg.save_dir)


if __name__ == "__main__":
    main()
