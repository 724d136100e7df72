"""The diffusion recipe: a DDPM on pixels or on VAE latents (latent diffusion), unconditional,
class-conditional or text-conditioned (prompts through cross-attention), with classifier-free
guidance, from one config.

    from sdlab.recipes import DiffusionRun, train_diffusion
    trained = train_diffusion(DiffusionRun(train=TrainConfig(epochs=1, save_dir="runs/ddpm")))
    images = trained.pipeline(16, sampler="dpmpp_2m", sample_steps=15)        # (16, 3, 32, 32) in [-1, 1]

Evaluation (what `sdlab-eval-diffusion` uses): `stratified_timesteps` for the bits/dim bound.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..conditioning import for_run
from ..config import ConfigError, from_stored
from ..data import DataConfig, Splits
from ..diffusion import DiffusionConfig, SamplerConfig, Trajectory, diffusion_loss
from ..diffusion.guidance import GuidanceConfig
from ..errors import UserError
from ..figures import (class_grid, cross_attention_maps, forward_process, guidance_sweep, img2img_sweep,
                       inpainting_example, latent_pipeline, loss_by_timestep, prompt_grid, reverse_process,
                       schedules)
from ..latent import LatentConfig, encode_splits
from ..distributed import Dist
from ..pipeline import DiffusionPipeline, build_vae, carried_vae, load_trained, stored_vae
from ..text import TextConfig
from ..trainer import TrainConfig, Trainer
from ..unet import UNetConfig
from ..visualize import grid, plot_history, save_grid
from .quality import QualityConfig, Scorer
from .run import Trained, build_loaders, load_data, prepare_run, report, save_run_config, start_run


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


def write_figures(grids: SampleGrid, history, val: torch.Tensor, val_labels, save_dir):
    """The diffusion figures: loss curves and loss by timestep, for pixel runs the forward process
    and schedules, and what `sample_figures` draws from the model."""
    out, pipe, run = Path(save_dir), grids.pipe, grids.run
    pipe.model.eval()
    written = ["loss_curves.png", "loss_by_timestep.png"]
    plot_history(history, out / "loss_curves.png", title="DDPM training")
    loss_by_timestep(pipe.model, pipe.schedule, run.diffusion, val, out / "loss_by_timestep.png",
                     labels=pipe.conditioning.train_input(val_labels))
    if pipe.vae is None:
        forward_process(pipe.schedule, val[::64], out / "forward_process.png")
        schedules(out / "schedules.png", pipe.schedule.num_timesteps)
        written += ["forward_process.png", "schedules.png"]
    written += sample_figures(pipe, out, run.guidance.guidance_scale, run.sampler)
    print(f"figures written to {out}: {' '.join(written)}")


def sample_figures(pipe: DiffusionPipeline, out: str | Path, guidance_scale: float,
                   sampler: SamplerConfig | str | None = None, prompts=()) -> list[str]:
    """The figures drawn from the model alone (no data; `sdlab-sample --figures` and --visualize):
    the reverse process of one sample (class 0, or the first prompt), the latent pipeline of a
    latent model, the class grid and guidance sweep of a class-conditional one, and
    `text_figures` of a text-conditioned one for `prompts` (default: the run's sample prompts).
    Returns the file names written."""
    out = Path(out)
    trajectory = Trajectory()
    pipe(1, guidance_scale=guidance_scale, sampler=sampler, trajectory=trajectory,
         generator=torch.Generator(pipe.device).manual_seed(0), **pipe.conditioning.examples(1, prompts))
    reverse_process(trajectory, out / "reverse_process.png", decode=pipe.decode)
    written = ["reverse_process.png"]
    if pipe.vae is not None:
        latent_pipeline(trajectory, pipe.decode, out / "latent_pipeline.png")
        written.append("latent_pipeline.png")
    kind = pipe.conditioning.kind
    if kind == "class":
        class_grid(pipe, out / "class_grid.png", guidance_scale, sampler=sampler)
        guidance_sweep(pipe, out / "guidance_sweep.png", sampler=sampler)
        written += ["class_grid.png", "guidance_sweep.png"]
    elif kind == "text":
        written += text_figures(pipe, list(prompts) or list(pipe.conditioning.sample_prompts), out,
                                guidance_scale, sampler)
    return written


def text_figures(pipe: DiffusionPipeline, prompts, out: str | Path, guidance_scale: float,
                 sampler: SamplerConfig | str | None = None) -> list[str]:
    """The text-to-image figures of a text-conditioned model for `prompts`: a prompt grid,
    cross-attention maps of the first prompt, an img2img strength sweep and inpainting of the
    centre (their inputs are images drawn from the first prompts, each edited toward the next
    prompt, so they need no data). Returns the file names written into `out`."""
    out, prompts, w = Path(out), list(prompts), guidance_scale
    n = min(4, len(prompts))
    prompt_grid(pipe, prompts, out / "prompt_grid.png", w, sampler=sampler)
    cross_attention_maps(pipe, prompts[0], out / "cross_attention.png", w)
    inits = pipe(n, prompt=prompts[:n], guidance_scale=w, sampler=sampler,
                 generator=torch.Generator(pipe.device).manual_seed(1))
    others = [prompts[(i + 1) % len(prompts)] for i in range(n)]
    img2img_sweep(pipe, inits, others, out / "img2img.png", w, sampler=sampler)
    side = inits.shape[-1]
    mask = torch.zeros(1, 1, side, side)
    mask[..., side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 1
    inpainting_example(pipe, inits, others, mask, out / "inpainting.png", w, sampler=sampler)
    return ["prompt_grid.png", "cross_attention.png", "img2img.png", "inpainting.png"]


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
    if run.latent.latent and not run.latent.vae_checkpoint and not run.train.resume:
        raise ConfigError("vae_checkpoint", "--latent needs --vae-checkpoint PATH (a best.pt or last.pt "
                                            "from train_vae.py)")
    if run.text.text_cond and run.quality.eval_every:
        raise ConfigError("eval_every", "scores class-conditional and unconditional runs; a text-conditioned "
                                        "run is measured by bench/text_to_image.py")
    if run.train.select_by.startswith("eval/") and not run.quality.eval_every:
        raise ConfigError("select_by", f"{run.train.select_by} is measured only with --eval-every N")
    dist, device = start_run(run.train)
    run = dataclasses.replace(run, unet=dataclasses.replace(run.unet, image_size=run.data.image_size))
    resumed = prepare_run(run.train, "diffusion", dist)
    if resumed is not None:
        stored = resumed["config"]
        latent = stored.get("latent_vae") or {}
        run = dataclasses.replace(
            run, unet=from_stored(UNetConfig, stored["unet"]),
            diffusion=from_stored(DiffusionConfig, stored["diffusion"]),
            latent=LatentConfig(latent=bool(latent),
                                vae_checkpoint=run.latent.vae_checkpoint or latent.get("vae_checkpoint", "")),
            guidance=dataclasses.replace(run.guidance, class_cond=stored["guidance"]["class_cond"]),
            text=from_stored(TextConfig, stored["text"]) if "text" in stored else TextConfig())
    train_cfg, diff_cfg, guide_cfg = run.train, run.diffusion, run.guidance
    conditioning = for_run(guide_cfg, run.text, resumed and resumed["config"])
    torch.manual_seed(train_cfg.seed)
    vae, run_extra, frozen = None, {}, {}
    splits, conditioning = conditioning.prepare(load_data(run.data, train_cfg, dist), train_cfg.seed)
    if run.data.hflip and not conditioning.allows_hflip(splits.train):
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, hflip=False))
        if dist.is_main:
            print("captions name left and right: horizontal flips are off")
    if run.latent.latent:
        frozen["vae"] = latent_vae(run.latent, resumed)
        splits, latent = latent_splits(frozen["vae"], splits, device,
                                       train_cfg.save_dir, run.unet.attention_resolutions, dist)
        if resumed is None:  # a resumed U-Net config has the latent geometry already
            run = dataclasses.replace(run, unet=dataclasses.replace(run.unet, **latent["geometry"]))
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, hflip=False))  # latents are not flip-symmetric
        run_extra["latent_vae"] = dict(latent["info"], vae_checkpoint=run.latent.vae_checkpoint)
        vae = latent["vae"]
    splits, train_loader, val_loader = build_loaders(run.data, train_cfg, device, splits, dist)
    if run.unet.in_channels != splits.train.channels:
        raise ConfigError("in_channels", f"is {run.unet.in_channels} but --dataset {run.data.dataset} "
                                         f"has {splits.train.channels} channels; pass --in-chans "
                                         f"{splits.train.channels}")
    run = dataclasses.replace(run, unet=conditioning.configure(run.unet))
    unet_cfg = run.unet
    run_config = save_run_config(vars(run), train_cfg.save_dir, dist)
    run_config.update(kind="diffusion", classes=list(splits.train.classes), **conditioning.stored(), **run_extra)
    model = conditioning.network(unet_cfg).to(device)
    schedule = diff_cfg.make_schedule().to(device)
    if dist.is_main:
        print(f"U-Net: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
              f"{unet_cfg.in_channels}x{unet_cfg.image_size}x{unet_cfg.image_size}; T = {diff_cfg.num_timesteps} "
              f"({diff_cfg.schedule}), predicting {diff_cfg.prediction}"
              f"{conditioning.describe()}; {len(splits.train)} train / "
              f"{len(splits.test)} val images, device {device}, precision {train_cfg.precision}")

    def loss_fn(net, images, labels, generator=None, step=None):
        # training: label (caption) dropout teaches the unconditional model too; validation: none
        labels = conditioning.train_input(labels, guide_cfg.cond_drop_prob if step is not None else 0.0, generator)
        return diffusion_loss(net, schedule, images, diff_cfg, labels, generator=generator)

    pipe = DiffusionPipeline(model, schedule, diff_cfg.prediction, vae,
                             run_extra.get("latent_vae", {}).get("scale_factor", 1.0), conditioning, run_config)
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
        write_figures(grids, trainer.history, val, val_labels, train_cfg.save_dir)
    return Trained(trainer, pipe)


def stratified_timesteps(num_timesteps: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """One timestep drawn uniformly in each of k equal strata of [1, T) (L_0 is always computed)."""
    edges = torch.linspace(1, num_timesteps, k + 1)
    picks = edges[:-1] + torch.rand(k, generator=generator) * (edges[1:] - edges[:-1])
    return picks.floor().long().clamp(1, num_timesteps - 1)
