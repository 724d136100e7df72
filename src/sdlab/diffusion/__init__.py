"""Diffusion: noise schedules (`schedule`), training objective and likelihood (`objective`),
reverse-process samplers (`sampling`). Nothing here imports a network: the denoiser is passed in."""

from .objective import DiffusionConfig, diffusion_loss, model_outputs, nll_bits_per_dim
from .sampling import SamplerConfig, Trajectory, ddim_timesteps, sample
from .schedule import NoiseSchedule, make_betas

__all__ = ["DiffusionConfig", "NoiseSchedule", "SamplerConfig", "Trajectory", "ddim_timesteps", "diffusion_loss",
           "make_betas", "model_outputs", "nll_bits_per_dim", "sample"]
