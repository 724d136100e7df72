"""Diffusion: noise schedules (`schedule`), training objective and likelihood (`objective`),
reverse-process samplers (`solvers`) and the sampling loop (`sampling`). Nothing here imports a
network: the denoiser is passed in."""

from .objective import DiffusionConfig, diffusion_loss, model_outputs, nll_bits_per_dim
from .sampling import SamplerConfig, Trajectory, sample, sampler_config, sampling_timesteps
from .solvers import SAMPLERS
from .schedule import NoiseSchedule, make_betas

__all__ = ["DiffusionConfig", "NoiseSchedule", "SAMPLERS", "SamplerConfig", "Trajectory", "diffusion_loss",
           "make_betas", "model_outputs", "nll_bits_per_dim", "sample", "sampler_config", "sampling_timesteps"]
