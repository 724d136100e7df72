"""The diffusion recipe: a DDPM on pixels or on VAE latents (latent diffusion), unconditional,
class-conditional or text-conditioned (prompts through cross-attention), with classifier-free
guidance, from one config.

    from sdlab.recipes import DiffusionRun, train_diffusion
    trained = train_diffusion(DiffusionRun(train=TrainConfig(epochs=1, save_dir="runs/ddpm")))
    images = trained.pipeline(16, sampler="dpmpp_2m", sample_steps=15)        # (16, 3, 32, 32) in [-1, 1]

Evaluation (what `sdlab-eval-diffusion` runs): `evaluate_bits_per_dim`, the DDPM bound. The figures
of a trained model: `diffusion_figures`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..conditioning import for_run
from ..config import ConfigError
from ..data import DataConfig, Splits
from ..diffusion import DiffusionConfig, SamplerConfig, diffusion_loss, nll_bits_per_dim
from ..diffusion.guidance import GuidanceConfig
from ..errors import UserError
from ..latent import LatentConfig, encode_splits
from ..distributed import Dist
from ..pipeline import DiffusionPipeline
from ..record import DiffusionRecord
from ..trained import build_vae, carried_vae, load_trained, stored_vae
from ..text import TextConfig
from ..trainer import TrainConfig, Trainer
from ..runtime import pick_device
from ..unet import PRESETS, UNetConfig
from ..visualize import grid, save_grid
from .diffusion_figures import write_figures
from .quality import QualityConfig, Scorer
from .run import Trained, build_loaders, load_data, prepare_run, report, save_run_config, start_run, with_defaults


# What train_diffusion.py runs with on each device (and the U-Net preset: cpu on CPU,
# ddpm-cifar10 on CUDA); flags and `DiffusionRun.recommended`'s sections go over them.
CPU_DEFAULTS = {"epochs": 100, "batch_size": 64, "lr": 3e-4, "warmup_steps": 200, "ema_decay": 0.999,
                "save_dir": "outputs/diffusion"}
CUDA_DEFAULTS = {"epochs": 500, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000,
                 "ema_decay": 0.9999, "save_dir": "outputs/diffusion"}


def device_defaults(device: torch.device, model_size: str | None = None) -> dict:
    """The defaults (field -> value) of a diffusion run on `device`, with the U-Net preset
    `model_size` (default: cpu on CPU, ddpm-cifar10 on CUDA)."""
    size = model_size or ("ddpm-cifar10" if device.type == "cuda" else "cpu")
    return dict(CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS, **PRESETS[size])


@dataclass(frozen=True)
class DiffusionRun:
    """Everything a diffusion run is made of; its fields are the sections of config.json."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

    @classmethod
    def recommended(cls, model_size: str | None = None, **sections) -> "DiffusionRun":
        """What `train_diffusion.py` runs with no flags on the device of sections["train"]
        (default auto), with `sections` over it: DiffusionRun.recommended(train={"epochs": 1})."""
        device = pick_device(sections.get("train", {}).get("device", "auto"))
        return with_defaults(cls, device_defaults(device, model_size), sections)


def latent_vae(latent_cfg: LatentConfig, resumed: dict | None) -> dict:
    """The VAE a latent run encodes with, as `carried_vae` stores it: a new run reads
    --vae-checkpoint; a resumed run uses the VAE its checkpoint carries, and refuses a
    --vae-checkpoint that holds other weights."""
    carried = stored_vae(resumed, "--resume") if resumed is not None else None
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
                  attention_resolutions: tuple[int, ...], dist: Dist = Dist()) -> tuple[Splits, dict]:
    """Encode both splits with the frozen VAE (`carried_vae`'s dict; rank 0 first, writing the
    cache); returns the latent splits and {"geometry": the U-Net's latent geometry (pixel
    attention resolutions divided by the VAE's downsampling factor), "info": what the run config
    stores, "vae": the frozen VAE}."""
    vae = build_vae(carried, device, "--vae-checkpoint")
    with dist.main_first():
        train, test, scale = encode_splits(vae, carried["sha256"], splits.train, splits.test, device,
                                           cache_dir=cache_dir)
    f = vae.cfg.downsampling
    if dist.is_main:
        print(f"latent diffusion: {len(train)} images encoded to {tuple(train.images.shape[1:])} by the "
              f"VAE {carried['sha256'][:12]}; scale factor s = 1/std = {scale:.5f}")
    geometry = {"in_channels": train.channels, "image_size": train.images.shape[-1],
                "attention_resolutions": tuple(max(r // f, 1) for r in attention_resolutions)}
    info = {"vae_sha256": carried["sha256"], "scale_factor": scale, "downsampling": f,
            "vae_image_size": splits.train.images.shape[-1]}
    return Splits(train, test), {"geometry": geometry, "info": info, "vae": vae}


class SampleGrid:
    """The epoch hook: a fixed-seed sample grid into SAVE_DIR/samples and TensorBoard."""

    def __init__(self, pipe: DiffusionPipeline, run: "DiffusionRun"):
        self.pipe, self.run = pipe, run

    def draw(self, num: int | None = None) -> torch.Tensor:
        """The grid: classes or the run's sample prompts cycled over `num` images (one per column)."""
        num = num or self.run.sampler.num_samples
        g = torch.Generator(self.pipe.device).manual_seed(0)
        return self.pipe(num, generator=g, guidance_scale=self.run.guidance.guidance_scale,
                         sampler=self.run.sampler, **self.pipe.conditioning.examples(num))

    def __call__(self, trainer: Trainer) -> None:
        self.pipe.model = trainer.eval_model
        images = self.draw()
        nrow = self.pipe.conditioning.grid_columns
        save_grid(images, Path(trainer.cfg.save_dir) / "samples" / f"epoch_{trainer.epoch:04d}.png", nrow)
        trainer.writer.add_image("samples", grid(images, nrow), trainer.step)


def check_run(run: DiffusionRun) -> None:
    """Refuse flags that contradict each other, before any work."""
    if run.latent.latent and not run.latent.vae_checkpoint and not run.train.resume:
        raise ConfigError("vae_checkpoint", "--latent needs --vae-checkpoint PATH (a best.pt or last.pt "
                                            "from train_vae.py)")
    if run.latent.vae_checkpoint and not run.latent.latent and not run.train.resume:
        raise ConfigError("vae_checkpoint", "is read only by latent runs: add --latent (or leave it out to train "
                                            "in pixel space)")
    if run.text.text_cond and run.quality.eval_every:
        raise ConfigError("eval_every", "scores class-conditional and unconditional runs; a text-conditioned "
                                        "run is measured by bench/text_to_image.py")
    if run.train.select_by.startswith("eval/") and not run.quality.eval_every:
        raise ConfigError("select_by", f"{run.train.select_by} is measured only with --eval-every N")


def resolve_run(run: DiffusionRun, resumed: DiffusionRecord | None) -> DiffusionRun:
    """The run before it sees its data: the U-Net at the data's image size, or for a resumed run
    what its checkpoint fixes (U-Net, schedule, latent VAE, conditioning, text encoder)."""
    run = dataclasses.replace(run, unet=dataclasses.replace(run.unet, image_size=run.data.image_size))
    if resumed is None:
        return run
    latent = resumed.latent_vae
    return dataclasses.replace(
        run, unet=resumed.unet, diffusion=resumed.diffusion, text=resumed.text,
        latent=LatentConfig(latent=bool(latent), vae_checkpoint=run.latent.vae_checkpoint or latent.get("vae_checkpoint", "")),
        guidance=dataclasses.replace(run.guidance, class_cond=resumed.class_cond))


@dataclass(frozen=True)
class DataFacts:
    """What the run learns from its (prepared) data."""

    channels: int                     # of what the U-Net sees (pixels, or latents)
    classes: tuple[str, ...]
    flips_keep_conditions: bool       # False when captions name left or right
    latent: dict | None = None        # `latent_splits`' "geometry" and "info" for latent runs


def final_run(run: DiffusionRun, facts: DataFacts, conditioning, resumed: bool = False) -> tuple[DiffusionRun, dict]:
    """The run as it trains (flips, the U-Net's latent geometry and condition input) and what its
    checkpoints store beyond the run's sections (kind, classes, conditioning, latent VAE):
    config.json's sections plus these make the run config a `DiffusionRecord` reads back."""
    unet, hflip, extras = run.unet, run.data.hflip and facts.flips_keep_conditions, {}
    if facts.latent is not None:
        if not resumed:       # a resumed U-Net config has the latent geometry already
            unet = dataclasses.replace(unet, **facts.latent["geometry"])
        hflip = False         # latents are not flip-symmetric
        extras["latent_vae"] = dict(facts.latent["info"], vae_checkpoint=run.latent.vae_checkpoint)
    if unet.in_channels != facts.channels:
        raise ConfigError("in_channels", f"is {unet.in_channels} but --dataset {run.data.dataset} has "
                                         f"{facts.channels} channels; pass --in-chans {facts.channels}")
    run = dataclasses.replace(run, unet=conditioning.configure(unet), data=dataclasses.replace(run.data, hflip=hflip))
    return run, {"kind": "diffusion", "classes": list(facts.classes), **conditioning.stored(), **extras}


def train_diffusion(run: DiffusionRun) -> Trained:
    """Train (or, with run.train.resume, continue) a DDPM; returns the trainer and a pipeline that
    samples with the trained (EMA) weights.

    Pixel space, or with run.latent.latent on the latents of a trained VAE (which every
    checkpoint then carries); class-conditional with label dropout when run.guidance.class_cond.
    Text-conditioned with run.text.text_cond: captions (the dataset's, or templates over its class
    names) are tokenized, and a text encoder is trained with a cross-attention U-Net, with
    caption dropout (run.guidance.cond_drop_prob) for classifier-free guidance.
    run.unet.image_size is taken from run.data; a resumed run keeps the U-Net, schedule, latent
    VAE, conditioning, text encoder and tokenizer stored in its checkpoint.
    """
    check_run(run)
    dist, device, run = start_run(run)
    resumed = prepare_run(run.train, "diffusion", dist)
    record = DiffusionRecord.from_config(resumed["config"]) if resumed is not None else None
    run = resolve_run(run, record)
    train_cfg, diff_cfg, guide_cfg = run.train, run.diffusion, run.guidance
    conditioning = record.conditioning if record is not None else for_run(guide_cfg, run.text)
    torch.manual_seed(train_cfg.seed)
    vae, latent, frozen = None, None, {}
    splits, conditioning = conditioning.prepare(load_data(run.data, train_cfg, dist), train_cfg.seed)
    flips = conditioning.allows_hflip(splits.train)
    if run.data.hflip and not flips and dist.is_main:
        print("captions name left and right: horizontal flips are off")
    if run.latent.latent:
        frozen["vae"] = latent_vae(run.latent, resumed)
        splits, latent = latent_splits(frozen["vae"], splits, device,
                                       train_cfg.save_dir, run.unet.attention_resolutions, dist)
        vae = latent.pop("vae")
    facts = DataFacts(splits.train.channels, splits.train.classes, flips, latent)
    run, extras = final_run(run, facts, conditioning, resumed=record is not None)
    splits, train_loader, val_loader = build_loaders(run.data, train_cfg, device, splits, dist)
    unet_cfg = run.unet
    run_config = {**save_run_config(vars(run), train_cfg.save_dir, dist), **extras}
    record = DiffusionRecord.from_config(run_config)
    pipe = DiffusionPipeline.from_record(record, record.network().to(device), vae)
    model, schedule = pipe.model, pipe.schedule
    if dist.is_main:
        print(f"U-Net: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
              f"{unet_cfg.in_channels}x{unet_cfg.image_size}x{unet_cfg.image_size}; T = {diff_cfg.num_timesteps} "
              f"({diff_cfg.schedule}), predicting {diff_cfg.prediction}"
              f"{pipe.conditioning.describe()}; {len(splits.train)} train / "
              f"{len(splits.test)} val images, device {device}, precision {train_cfg.precision}")

    def loss_fn(net, images, labels, generator=None, step=None):
        # training: label (caption) dropout teaches the unconditional model too; validation: none
        labels = pipe.conditioning.train_input(labels, guide_cfg.cond_drop_prob if step is not None else 0.0,
                                               generator)
        return diffusion_loss(net, schedule, images, diff_cfg, labels, generator=generator)

    grids = SampleGrid(pipe, run)
    metrics = None
    if run.quality.eval_every:      # rank 0 scores (decoded) images against the real pixels
        metrics = (Scorer(run.quality, device).during_training(pipe, run.data, train_cfg.save_dir,
                                                               run.guidance.guidance_scale, run.sampler)
                   if dist.is_main else lambda trainer: {})
    trainer = Trainer(model, loss_fn, train_loader, val_loader, train_cfg, run_config=run_config,
                      device=device, epoch_hook=grids, frozen=frozen, dist=dist, epoch_metrics=metrics)
    trainer.fit(resume_state=resumed)
    report(trainer)
    pipe.model = trainer.eval_model
    if train_cfg.visualize and dist.is_main:
        val, val_labels = val_loader.spread(256)
        write_figures(pipe, run, trainer.history, val, val_labels, train_cfg.save_dir)
    return Trained(trainer, pipe)


@torch.no_grad()
def evaluate_bits_per_dim(pipe: DiffusionPipeline, images: torch.Tensor, timesteps: int = 0, batch_size: int = 64,
                          seed: int = 0) -> dict:
    """The DDPM bound in bits/dim (`diffusion.nll_bits_per_dim`) of `images` in [-1, 1] under a pixel
    model, at the null condition: every KL term, or with 0 < `timesteps` < T - 1 a stratified
    estimate over that many (`stratified_timesteps`, shared by all images); prints a running mean."""
    T = pipe.schedule.num_timesteps
    g = torch.Generator().manual_seed(seed)
    k = timesteps if 0 < timesteps < T - 1 else T - 1
    steps = stratified_timesteps(T, k, g) if k < T - 1 else torch.arange(1, T)
    noise = torch.Generator(pipe.device).manual_seed(seed)
    parts = {"total": [], "prior": [], "decoder": []}
    for x in images.split(batch_size):
        result = nll_bits_per_dim(pipe.model, pipe.schedule, x, pipe.config["diffusion"]["prediction"], steps,
                                  labels=pipe.conditioning.null(len(x), pipe.device), generator=noise)
        for key in parts:
            parts[key].append(result[key].cpu())
        print(f"  {sum(map(len, parts['total']))}/{len(images)} images: running bpd {torch.cat(parts['total']).mean():.4f}")
    total = torch.cat(parts["total"])
    return {"bpd": total.mean().item(),
            "bpd_stderr": (total.std() / math.sqrt(len(total))).item() if len(total) > 1 else 0.0,
            "prior_bpd": torch.cat(parts["prior"]).mean().item(),
            "images": len(total), "timesteps": k, "num_timesteps": T}


def stratified_timesteps(num_timesteps: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """One timestep drawn uniformly in each of k equal strata of [1, T) (L_0 is always computed)."""
    edges = torch.linspace(1, num_timesteps, k + 1)
    picks = edges[:-1] + torch.rand(k, generator=generator) * (edges[1:] - edges[:-1])
    return picks.floor().long().clamp(1, num_timesteps - 1)
