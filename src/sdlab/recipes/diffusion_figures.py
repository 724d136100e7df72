"""The figures of a trained diffusion model: which of `figures`' drawings a model gets (its
training curves, and what it draws: reverse process, latent pipeline, class grid and guidance
sweep, prompt grid, cross-attention, img2img and inpainting), for `train_diffusion --visualize`
and `sdlab-sample --figures`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..diffusion import SamplerConfig, Trajectory
from ..figures import (class_grid, cross_attention_maps, forward_process, guidance_sweep, img2img_sweep,
                       inpainting_example, latent_pipeline, loss_by_timestep, prompt_grid, reverse_process,
                       schedules)
from ..pipeline import DiffusionPipeline
from ..visualize import plot_history


def write_figures(pipe: DiffusionPipeline, run, history, val: torch.Tensor, val_labels, save_dir) -> None:
    """The figures of a trained `run` (a DiffusionRun): loss curves and loss by timestep, for pixel
    runs the forward process and schedules, and what `sample_figures` draws from the model."""
    out = Path(save_dir)
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
