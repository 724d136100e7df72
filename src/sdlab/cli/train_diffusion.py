"""`train_diffusion.py` / `sdlab-train-diffusion`: train a DDPM noise predictor, on pixels or on
VAE latents (latent diffusion), optionally class-conditional with classifier-free guidance.

    python diffusers/train_diffusion.py                       # CIFAR-10, CPU-sized U-Net on CPU
    python diffusers/train_diffusion.py --model-size ddpm-cifar10 --epochs 500
    python diffusers/train_diffusion.py --latent --vae-checkpoint outputs/vae/best.pt --class-cond
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ..config import ConfigError, from_stored
from ..data import DataConfig, Splits, load_splits
from ..errors import UserError
from ..diffusion import DiffusionConfig, SamplerConfig, Trajectory, diffusion_loss
from ..diffusion.guidance import GuidanceConfig, drop_labels
from ..figures import (class_grid, forward_process, guidance_sweep, latent_pipeline, loss_by_timestep,
                       reverse_process, schedules)
from ..latent import LatentConfig, encode_splits
from ..pipeline import DiffusionPipeline, build_vae, carried_vae, load_trained
from ..trainer import TrainConfig, Trainer
from ..unet import PRESETS, UNet, UNetConfig
from ..visualize import grid, plot_history, save_grid
from .flags import add_config_flags, build_configs
from ..runtime import default_precision
from .session import (build_loaders, prepare_run, resolve_device, run_training,
                      save_run_config, shared_parser, user_errors)

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
CLASSES = {"data": DataConfig, "train": TrainConfig, "unet": UNetConfig, "diffusion": DiffusionConfig,
           "sampler": SamplerConfig, "latent": LatentConfig, "guidance": GuidanceConfig}


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
    add_config_flags(parser, UNetConfig, "U-Net", DIFFUSION_ALIASES, skip=("image_size",))
    add_config_flags(parser, DiffusionConfig, "diffusion", DIFFUSION_ALIASES)
    add_config_flags(parser, SamplerConfig, "sampling", DIFFUSION_ALIASES)
    add_config_flags(parser, LatentConfig, "latent diffusion")
    add_config_flags(parser, GuidanceConfig, "class conditioning and classifier-free guidance")
    return parser


def parse(argv=None) -> tuple[dict, torch.device, dict | None]:
    """Flags -> configs and device, then the output folders are checked; returns the
    checkpoint that --resume names too (None for a new run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.residual:
        parser.error("--no-residual: the U-Net's blocks are always residual (DDPM App. B)")
    device = resolve_device(parser, build_configs(parser, args, CLASSES)["train"])
    size = args.model_size or ("ddpm-cifar10" if device.type == "cuda" else "cpu")
    defaults = dict(CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS, **PRESETS[size],
                    precision=default_precision(device))
    configs = build_configs(parser, args, CLASSES, overrides=defaults)
    configs["unet"] = dataclasses.replace(configs["unet"], image_size=configs["data"].image_size)
    if args.is_attn is not None:
        unet = configs["unet"]
        flags = [s.strip() in ("1", "true", "True") for s in args.is_attn.split(",")]
        if len(flags) != len(unet.channel_mults):
            parser.error(f"--is-attn: give one 0/1 per level ({len(unet.channel_mults)} levels)")
        resolutions = tuple(unet.image_size // 2**i for i, on in enumerate(flags) if on)
        configs["unet"] = dataclasses.replace(unet, attention_resolutions=resolutions)
    if configs["latent"].latent and not configs["latent"].vae_checkpoint and not configs["train"].resume:
        parser.error("--vae-checkpoint: --latent needs --vae-checkpoint PATH (a best.pt or last.pt "
                     "from train_vae.py)")
    device = resolve_device(parser, configs["train"])
    resumed = prepare_run(configs["train"], "diffusion")
    if resumed is not None:  # a resumed run keeps its architecture, schedule, VAE and conditioning
        stored = resumed["config"]
        for section, cls in (("unet", UNetConfig), ("diffusion", DiffusionConfig)):
            configs[section] = from_stored(cls, stored[section])
        latent = stored.get("latent_vae") or {}
        configs["latent"] = LatentConfig(latent=bool(latent), vae_checkpoint=configs["latent"].vae_checkpoint
                                         or latent.get("vae_checkpoint", ""))
        configs["guidance"] = dataclasses.replace(configs["guidance"],
                                                  class_cond=stored["guidance"]["class_cond"])
    return configs, device, resumed


def latent_vae(latent_cfg: LatentConfig, resumed: dict | None) -> dict:
    """The VAE a latent run encodes with, as `carried_vae` stores it: a new run reads
    --vae-checkpoint; a resumed run uses the VAE its checkpoint carries, and refuses a
    --vae-checkpoint that holds other weights."""
    carried = ((resumed or {}).get("frozen") or {}).get("vae")
    path = latent_cfg.vae_checkpoint
    if carried is not None and path and Path(path).is_file():
        given = carried_vae(load_trained(path, torch.device("cpu"), "vae"))
        if given["sha256"] != carried["sha256"]:
            raise UserError(f"--vae-checkpoint {path} is not the VAE this run was trained with (weights "
                            f"sha256 {given['sha256'][:12]} vs {carried['sha256'][:12]}); drop "
                            "--vae-checkpoint: the run's checkpoint carries its own VAE")
    if carried is None:
        try:
            carried = carried_vae(load_trained(path, torch.device("cpu"), "vae"))
        except UserError as err:
            raise UserError(f"--vae-checkpoint: {err}") from None
    return carried


def latent_splits(carried: dict, splits: Splits, device: torch.device, cache_dir: str,
                  attention_resolutions: tuple[int, ...]) -> tuple[Splits, dict]:
    """Encode both splits with the frozen VAE (`carried_vae`'s dict); returns the latent splits
    and {"geometry": the U-Net's latent geometry (pixel attention resolutions divided by the
    VAE's downsampling factor), "info": what the run config stores, "vae": the frozen VAE}."""
    vae = build_vae(carried, device, "--vae-checkpoint")
    train, test, scale = encode_splits(vae, carried["sha256"], splits.train, splits.test, device,
                                       cache_dir=cache_dir)
    f = vae.cfg.downsampling
    print(f"latent diffusion: {len(train)} images encoded to {tuple(train.images.shape[1:])} by the "
          f"VAE {carried['sha256'][:12]}; scale factor s = 1/std = {scale:.5f}")
    geometry = {"in_channels": train.channels, "image_size": train.images.shape[-1],
                "attention_resolutions": tuple(max(r // f, 1) for r in attention_resolutions)}
    info = {"vae_sha256": carried["sha256"], "scale_factor": scale, "downsampling": f,
            "vae_image_size": splits.train.images.shape[-1]}
    return Splits(train, test), {"geometry": geometry, "info": info, "vae": vae}


class SampleGrid:
    """The epoch hook: a fixed-seed sample grid into SAVE_DIR/samples and TensorBoard."""

    def __init__(self, pipe: DiffusionPipeline, configs: dict):
        self.pipe, self.configs = pipe, configs

    def labels(self, num: int) -> torch.Tensor | None:
        if not self.pipe.classes:
            return None
        return torch.arange(num, device=self.pipe.device) % len(self.pipe.classes)

    def draw(self, num: int | None = None, trajectory: Trajectory | None = None) -> torch.Tensor:
        num = num or self.configs["sampler"].num_samples
        g = torch.Generator(self.pipe.device).manual_seed(0)
        return self.pipe(num, labels=self.labels(num), generator=g, trajectory=trajectory,
                         guidance_scale=self.configs["guidance"].guidance_scale,
                         **self.configs["sampler"].kwargs())

    def __call__(self, trainer: Trainer) -> None:
        self.pipe.model = trainer.eval_model
        images = self.draw()
        nrow = len(self.pipe.classes) if self.pipe.classes else 8
        save_grid(images, Path(trainer.cfg.save_dir) / "samples" / f"epoch_{trainer.epoch:04d}.png", nrow)
        trainer.writer.add_image("samples", grid(images, nrow), trainer.step)


def write_figures(grids: SampleGrid, history, val: torch.Tensor, val_labels, configs: dict, save_dir):
    out, pipe = Path(save_dir), grids.pipe
    pipe.model.eval()
    written = ["loss_curves.png", "reverse_process.png", "loss_by_timestep.png"]
    plot_history(history, out / "loss_curves.png", title="DDPM training")
    trajectory = Trajectory()
    grids.draw(num=1, trajectory=trajectory)
    reverse_process(trajectory, out / "reverse_process.png", decode=pipe.decode)
    loss_by_timestep(pipe.model, pipe.schedule, configs["diffusion"], val, out / "loss_by_timestep.png",
                     labels=val_labels if pipe.classes else None)
    if pipe.vae is None:
        forward_process(pipe.schedule, val[::64], out / "forward_process.png")
        schedules(out / "schedules.png", pipe.schedule.num_timesteps)
        written += ["forward_process.png", "schedules.png"]
    else:
        latent_pipeline(trajectory, pipe.decode, out / "latent_pipeline.png")
        written.append("latent_pipeline.png")
    if pipe.classes:
        kwargs = configs["sampler"].kwargs()
        class_grid(pipe, out / "class_grid.png", configs["guidance"].guidance_scale, **kwargs)
        guidance_sweep(pipe, out / "guidance_sweep.png", **kwargs)
        written += ["class_grid.png", "guidance_sweep.png"]
    print(f"figures written to {out}: {' '.join(written)}")


@user_errors
def main(argv=None) -> None:
    configs, device, resumed = parse(argv)
    data_cfg, train_cfg, diff_cfg, guide_cfg = (configs[k] for k in ("data", "train", "diffusion", "guidance"))
    torch.manual_seed(train_cfg.seed)
    splits, vae, run_extra, frozen = None, None, {}, {}
    if configs["latent"].latent:
        frozen["vae"] = latent_vae(configs["latent"], resumed)
        splits, latent = latent_splits(frozen["vae"], load_splits(data_cfg, seed=train_cfg.seed), device,
                                       train_cfg.save_dir, configs["unet"].attention_resolutions)
        if resumed is None:  # a resumed U-Net config has the latent geometry already
            configs["unet"] = dataclasses.replace(configs["unet"], **latent["geometry"])
        configs["data"] = data_cfg = dataclasses.replace(data_cfg, hflip=False)  # latents are not flip-symmetric
        run_extra["latent_vae"], vae = dict(latent["info"], vae_checkpoint=configs["latent"].vae_checkpoint), latent["vae"]
    splits, train_loader, val_loader = build_loaders(data_cfg, train_cfg, device, splits)
    unet_cfg = configs["unet"]
    if unet_cfg.in_channels != splits.train.channels:
        raise ConfigError("in_channels", f"is {unet_cfg.in_channels} but --dataset {data_cfg.dataset} "
                                         f"has {splits.train.channels} channels; pass --in-chans "
                                         f"{splits.train.channels}")
    if guide_cfg.class_cond:
        configs["unet"] = unet_cfg = dataclasses.replace(unet_cfg, num_classes=len(splits.train.classes))
    model = UNet(unet_cfg).to(device)
    schedule = diff_cfg.make_schedule().to(device)
    print(f"U-Net: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
          f"{unet_cfg.in_channels}x{unet_cfg.image_size}x{unet_cfg.image_size}; T = {diff_cfg.num_timesteps} "
          f"({diff_cfg.schedule}), predicting {diff_cfg.prediction}"
          f"{', class-conditional' if guide_cfg.class_cond else ''}; {len(splits.train)} train / "
          f"{len(splits.test)} val images, device {device}, precision {train_cfg.precision}")
    run_config = save_run_config(configs, train_cfg.save_dir)
    run_config.update(kind="diffusion", classes=list(splits.train.classes), **run_extra)
    null_class = unet_cfg.num_classes

    def loss_fn(net, images, labels, generator=None, step=None):
        if not guide_cfg.class_cond:
            labels = None
        elif generator is None:  # training: label dropout teaches the unconditional model too
            labels = drop_labels(labels, guide_cfg.cond_drop_prob, null_class)
        return diffusion_loss(net, schedule, images, diff_cfg, labels, generator=generator)

    pipe = DiffusionPipeline(model, schedule, diff_cfg.prediction, vae,
                             run_extra.get("latent_vae", {}).get("scale_factor", 1.0),
                             splits.train.classes if guide_cfg.class_cond else (), run_config)
    grids = SampleGrid(pipe, configs)
    trainer = Trainer(model, loss_fn, train_loader, val_loader, train_cfg, run_config=run_config,
                      device=device, epoch_hook=grids, frozen=frozen)
    run_training(trainer)
    if train_cfg.visualize:
        pipe.model = trainer.eval_model
        val, val_labels = val_loader.spread(256)
        write_figures(grids, trainer.history, val, val_labels, configs, train_cfg.save_dir)


if __name__ == "__main__":
    main()
