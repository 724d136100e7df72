"""The generation pipeline: U-Net + scheduler (+ VAE decoder, + class or prompt guidance) -> images.

This is Stable Diffusion's inference path in miniature:

    prompt --tokenizer, text encoder--> token states        (text-conditioned models)
    noise z_T ~ N(0, I)  --sampler (DDPM, DDIM, Euler, Heun, DPM-Solver++), U-Net eps(z_t, t, class or prompt), guidance-->  z_0
    z_0 / s  --VAE decoder-->  image in [-1, 1]          (pixel models skip the decoder)

and its two image-to-image uses: img2img (SDEdit, Meng et al., arXiv:2108.01073) starts the
same loop from the init image noised to the timestep `strength` x T, and inpainting re-noises the
known region to the current step after every step, so only the masked region is generated.

`DiffusionPipeline.from_checkpoint` rebuilds everything from a train_diffusion.py checkpoint
alone: latent checkpoints carry their VAE (config, weights and the weights' SHA-256), so they
keep working when the VAE file is moved, replaced or deleted.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch

from .conditioning import Unconditional
from .diffusion import NoiseSchedule, SamplerConfig, Trajectory, sample, sampler_config
from .latent import decode_latents
from .record import DiffusionRecord
from .runtime import memory_format
from .trained import build_vae, load_trained, load_vae, load_weights, stored_vae, trained_weights
from .text import Tokenizer
from .vae import VAE


@dataclass
class DiffusionPipeline:
    model: torch.nn.Module
    schedule: NoiseSchedule
    prediction: str = "eps"
    vae: VAE | None = None            # latent models decode through it
    scale_factor: float = 1.0
    conditioning: Unconditional = field(default_factory=Unconditional)   # class ids, prompts or nothing
    config: dict = field(default_factory=dict)   # the run config stored in the checkpoint
    layout: torch.memory_format | None = None    # None: the device's (runtime.memory_format)

    @classmethod
    def from_checkpoint(cls, path: str, device: torch.device) -> "DiffusionPipeline":
        """Rebuild U-Net (EMA weights when present), schedule and, for latent models, the VAE."""
        state = load_trained(path, device, "diffusion")
        record = DiffusionRecord.from_config(state["config"])
        model = record.network().to(device)
        load_weights(model, trained_weights(state), path)
        vae, carried = None, stored_vae(state, path)
        if carried is not None:
            vae = build_vae(carried, device, path)
        elif record.latent_vae:  # written before checkpoints carried their VAE
            where = record.latent_vae["vae_checkpoint"]
            warnings.warn(f"{path} does not carry its VAE; decoding with the one now at {where}, "
                          "which cannot be checked to be the same")
            vae = load_vae(where, device)[0]
        return cls.from_record(record, model.eval(), vae)

    @classmethod
    def from_record(cls, record: DiffusionRecord, model: torch.nn.Module, vae: VAE | None = None) -> "DiffusionPipeline":
        """The pipeline of a run's record around its network (trained, or loaded) and frozen VAE."""
        device = next(model.parameters()).device
        return cls(model, record.diffusion.make_schedule().to(device), record.diffusion.prediction, vae,
                   record.scale_factor, record.conditioning, record.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.model.cfg
        return (cfg.in_channels, cfg.image_size, cfg.image_size)

    @property
    def classes(self) -> tuple[str, ...]:
        """The classes a user can ask for (non-empty for class-conditional models)."""
        return self.conditioning.classes

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The prompt tokenizer of a text-conditioned model (else None)."""
        return self.conditioning.tokenizer

    def class_ids(self, names: list[str]) -> list[int]:
        """Class names or numeric ids -> ids; raises ValueError naming the allowed classes."""
        return self.conditioning.class_ids(names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes of the training data (also of a text-conditioned or unconditional model)."""
        return self.conditioning.class_names

    @property
    def image_size(self) -> int:
        """The side of the images it makes (pixels, after the decoder of a latent model)."""
        side = self.sample_shape[-1]
        return side * self.vae.cfg.downsampling if self.vae is not None else side

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Samples of the diffusion model -> images in [-1, 1] (through the VAE when latent)."""
        z = z.float().to(self.device)
        if self.vae is None:
            return z.clamp(-1, 1)
        return decode_latents(self.vae, z, self.scale_factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the space the model diffuses in (scaled posterior means when latent)."""
        images = images.float().to(self.device)
        if self.vae is None:
            return images
        with torch.no_grad():
            return self.vae.encode(images).mode() * self.scale_factor

    def repaint_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask (B or 1, 1, H, W) in [0, 1] -> 1 where to repaint (above 0.5), else 0, on the device."""
        return (mask.float().to(self.device) > 0.5).float()

    def known_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A pixel mask (B or 1, 1, H, W), 1 = repaint, at the model's resolution: a latent cell
        is kept only when every pixel it covers is kept."""
        mask = self.repaint_mask(mask)
        side = self.sample_shape[-1]
        if mask.shape[-1] != side:
            mask = torch.nn.functional.adaptive_max_pool2d(mask, side)
        return mask

    @torch.no_grad()
    def __call__(self, num: int, *, labels: torch.Tensor | None = None, prompt: str | list[str] | None = None,
                 negative_prompt: str | list[str] | None = None, guidance_scale: float = 1.0,
                 init_image: torch.Tensor | None = None, strength: float | None = None,
                 mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 trajectory: Trajectory | None = None, progress: bool = False, decode: bool = True,
                 sampler: SamplerConfig | str | None = None, **options) -> torch.Tensor:
        """Generate `num` images (B, C, H, W) in [-1, 1] (or raw latents with decode=False).

        labels: class ids (num,) for class-conditional models. prompt, negative_prompt: one
        string or one per image, for text-conditioned models (None: the empty prompt).
        guidance_scale w combines conditional and unconditional (or negative-prompt)
        predictions (w = 1: plain conditional sampling).
        init_image: images (num or 1, C, H, W) in [-1, 1] at `image_size` for img2img (SDEdit):
        noised to timestep round(strength x (T - 1)) and denoised from there; strength 0 returns
        it (through the VAE for latent models), strength 1 starts from pure noise and ignores
        it (default 0.8). With `mask` (num or 1, 1, H, W; 1 = repaint): inpainting (default
        strength 1); the kept region is re-noised to each step's timestep after every step, and
        the kept pixels are pasted back into the decoded image.
        sampler: a SamplerConfig or a sampler name; `options` override its fields
        (pipe(16, sampler="dpmpp_2m", sample_steps=15)).
        """
        self.model.eval()
        if negative_prompt is not None and guidance_scale == 1.0:
            warnings.warn("the negative prompt has no effect at guidance scale 1 (only the conditional prediction "
                          "is used); give a scale above 1")
        cond, uncond = self.conditioning.request(num, labels, prompt, negative_prompt, self.device)
        denoiser = self.conditioning.denoiser(self.model, cond, uncond, guidance_scale)
        cfg = sampler_config(sampler, **options)
        # latents are not confined to [-1, 1], so x0 clipping is for pixel models only
        cfg = dataclasses.replace(cfg, clip=cfg.clip and self.vae is None)
        layout = self.layout or memory_format(self.device, self.sample_shape[-1])
        self.model.to(memory_format=layout)
        shape = (num, *self.sample_shape)
        start = {}
        if init_image is not None:
            start = self.image_start(shape, init_image, strength, mask, generator, layout)
            if start.get("done") is not None:
                return self.decode(start["done"]) if decode else start["done"]
        elif mask is not None or strength is not None:
            raise ValueError("mask and strength need an init_image")
        z = sample(denoiser, self.schedule, shape, cfg, prediction=self.prediction, generator=generator,
                   device=self.device, memory_format=layout, trajectory=trajectory, progress=progress,
                   x_T=start.get("x_T"), t_start=start.get("t_start"), after_step=start.get("after_step"))
        if not decode:
            return z
        images = self.decode(z)
        if mask is not None:        # the kept pixels exactly, also through a VAE
            repaint = self.repaint_mask(mask)
            images = repaint * images + (1 - repaint) * init_image.float().to(self.device)
        return images

    @staticmethod
    def strength(strength: float | None, masked: bool) -> float:
        """img2img's strength (default 0.8; 1 for inpainting), checked to lie in [0, 1]."""
        strength = (1.0 if masked else 0.8) if strength is None else strength
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be in [0, 1] (got {strength})")
        return strength

    def start_timestep(self, strength: float) -> int | None:
        """The timestep img2img starts from, round(strength (T - 1)); None (pure noise) at 1."""
        return round(strength * (self.schedule.num_timesteps - 1)) if strength < 1 else None

    def image_start(self, shape, init_image, strength, mask, generator, layout) -> dict:
        """Where img2img and inpainting start: {"x_T", "t_start", "after_step"}, or {"done": x0}
        when strength 0 leaves nothing to do."""
        strength = self.strength(strength, mask is not None)
        if tuple(init_image.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"init_image is {tuple(init_image.shape[-2:])}; this model makes "
                             f"{self.image_size}x{self.image_size} images")
        x0 = self.encode(init_image).expand(shape).contiguous(memory_format=layout)
        if strength == 0:
            return {"done": x0}
        noise = torch.randn(shape, generator=generator, device=self.device).contiguous(memory_format=layout)
        T = self.schedule.num_timesteps
        t_start = self.start_timestep(strength)
        x_T = noise if t_start is None else self.schedule.q_sample(x0, torch.full((shape[0],), t_start, device=self.device), noise)
        out = {"x_T": x_T, "t_start": t_start}
        if mask is not None:
            repaint = self.known_mask(mask)

            def after_step(x: torch.Tensor, t_next: int) -> torch.Tensor:
                """Replace the kept region by the init image noised to t_next (q(x_t | x_0))."""
                if t_next < 0:
                    known = x0
                else:
                    eps = torch.randn(shape, generator=generator, device=self.device)
                    known = self.schedule.q_sample(x0, torch.full((shape[0],), t_next, device=self.device), eps)
                return repaint * x + (1 - repaint) * known

            out["after_step"] = after_step
            out["x_T"] = after_step(x_T, T - 1 if t_start is None else t_start)
        return out

