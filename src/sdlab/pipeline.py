"""The generation pipeline: U-Net + scheduler (+ VAE decoder, + class guidance) -> images.

This is Stable Diffusion's inference path in miniature:

    noise z_T ~ N(0, I)  --sampler (DDPM, DDIM, Euler, Heun, DPM-Solver++), U-Net eps(z_t, t, class), guidance-->  z_0
    z_0 / s  --VAE decoder-->  image in [-1, 1]          (pixel models skip the decoder)

`DiffusionPipeline.from_checkpoint` rebuilds everything from a train_diffusion.py checkpoint
alone: latent checkpoints carry their VAE (config, weights and the weights' SHA-256), so they
keep working when the VAE file is moved, replaced or deleted.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch

from .checkpoint import CheckpointError, checkpoint_kind, load_checkpoint, state_digest
from .errors import first_line
from .config import from_stored
from .diffusion import DiffusionConfig, NoiseSchedule, SamplerConfig, Trajectory, sample, sampler_config
from .diffusion.guidance import guided
from .latent import decode_latents
from .runtime import memory_format
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig


KINDS = {"vae": ("VAE", "train_vae.py"), "diffusion": ("diffusion", "train_diffusion.py"),
         "classifier": ("classifier", "sdlab-train-classifier")}


def load_trained(path: str, device: torch.device, kind: str) -> dict:
    """A checkpoint of `kind` (a key of KINDS), read once; CheckpointError naming the script if not."""
    state = load_checkpoint(path, device)
    found = checkpoint_kind(state)
    if found != kind:
        name, script = KINDS[kind]
        raise CheckpointError(f"{path} is not a {name} checkpoint (kind {found!r}); train one with {script}")
    return state


def trained_weights(state: dict) -> dict:
    """The EMA weights when the checkpoint has them, else the raw model weights."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def load_weights(model: torch.nn.Module, weights: dict, path: str) -> None:
    """`model.load_state_dict(weights)`, with CheckpointError naming `path` when they do not fit."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes "
                              f"({first_line(err)}); the file is damaged or was edited") from None


def carried_vae(state: dict) -> dict:
    """What a latent diffusion checkpoint stores of the VAE in train_vae.py checkpoint `state`:
    config, weights and their SHA-256."""
    weights = trained_weights(state)
    return {"config": state["config"]["vae"], "weights": weights, "sha256": state_digest(weights)}


def stored_vae(state: dict, path: str) -> dict | None:
    """The VAE diffusion checkpoint `state` carries (`carried_vae`'s dict), its weights checked
    against their SHA-256; None when it carries none (pixel models, older checkpoints)."""
    carried = (state.get("frozen") or {}).get("vae")
    if carried is not None and state_digest(carried["weights"]) != carried["sha256"]:
        raise CheckpointError(f"{path}: the VAE weights it carries do not match their SHA-256; "
                              "the file is damaged or was edited")
    return carried


def build_vae(carried: dict, device: torch.device, path: str) -> VAE:
    """A frozen VAE from a dict with its "config" and "weights" (`path` names where they came
    from, for errors)."""
    vae = VAE(from_stored(VAEConfig, carried["config"]))
    load_weights(vae, carried["weights"], path)
    return vae.to(device).eval().requires_grad_(False)


def load_vae(path: str, device: torch.device) -> tuple[VAE, dict]:
    """(frozen VAE with EMA weights if present, the whole checkpoint) from a train_vae.py file."""
    state = load_trained(path, device, "vae")
    parts = {"config": state["config"]["vae"], "weights": trained_weights(state)}
    return build_vae(parts, device, path), state


@dataclass
class DiffusionPipeline:
    model: torch.nn.Module
    schedule: NoiseSchedule
    prediction: str = "eps"
    vae: VAE | None = None            # latent models decode through it
    scale_factor: float = 1.0
    classes: tuple[str, ...] = ()     # non-empty for class-conditional models
    config: dict = field(default_factory=dict)   # the run config stored in the checkpoint
    layout: torch.memory_format | None = None    # None: the device's (runtime.memory_format)

    @classmethod
    def from_checkpoint(cls, path: str, device: torch.device) -> "DiffusionPipeline":
        """Rebuild U-Net (EMA weights when present), schedule and, for latent models, the VAE."""
        state = load_trained(path, device, "diffusion")
        config = state["config"]
        model = UNet(from_stored(UNetConfig, config["unet"])).to(device)
        load_weights(model, trained_weights(state), path)
        latent = config.get("latent_vae") or {}
        vae, carried = None, stored_vae(state, path)
        if carried is not None:
            vae = build_vae(carried, device, path)
        elif latent:  # written before checkpoints carried their VAE
            warnings.warn(f"{path} does not carry its VAE; decoding with the one now at "
                          f"{latent['vae_checkpoint']}, which cannot be checked to be the same")
            vae = load_vae(latent["vae_checkpoint"], device)[0]
        return cls(model.eval(), DiffusionConfig(**config["diffusion"]).make_schedule().to(device),
                   config["diffusion"]["prediction"], vae, latent.get("scale_factor", 1.0),
                   tuple(config.get("classes") or ()) if config["unet"]["num_classes"] else (), config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.model.cfg
        return (cfg.in_channels, cfg.image_size, cfg.image_size)

    def class_ids(self, names: list[str]) -> list[int]:
        """Class names or numeric ids -> ids; raises ValueError naming the allowed classes."""
        ids = []
        for name in names:
            if name.isdigit() and int(name) < len(self.classes):
                ids.append(int(name))
            elif name in self.classes:
                ids.append(self.classes.index(name))
            else:
                raise ValueError(f"--class {name!r}: choose one of {', '.join(self.classes)} "
                                 f"or an id 0-{len(self.classes) - 1}")
        return ids

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Samples of the diffusion model -> images in [-1, 1] (through the VAE when latent)."""
        z = z.float().to(self.device)
        if self.vae is None:
            return z.clamp(-1, 1)
        return decode_latents(self.vae, z, self.scale_factor)

    @torch.no_grad()
    def __call__(self, num: int, *, labels: torch.Tensor | None = None, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None, trajectory: Trajectory | None = None,
                 progress: bool = False, decode: bool = True, sampler: SamplerConfig | str | None = None,
                 **options) -> torch.Tensor:
        """Generate `num` images (B, C, H, W) in [-1, 1] (or raw latents with decode=False).

        labels: class ids (num,) for class-conditional models; guidance_scale w combines the
        conditional and unconditional predictions (w = 1: plain conditional sampling).
        sampler: a SamplerConfig or a sampler name; `options` override its fields
        (pipe(16, sampler="dpmpp_2m", sample_steps=15)).
        """
        self.model.eval()
        denoiser = self.model
        if self.classes and labels is not None and guidance_scale != 1.0:
            denoiser = guided(self.model, labels, guidance_scale, len(self.classes))
        elif labels is not None:
            denoiser = lambda xt, t, _labels: self.model(xt, t, labels)
        cfg = sampler_config(sampler, **options)
        # latents are not confined to [-1, 1], so x0 clipping is for pixel models only
        cfg = dataclasses.replace(cfg, clip=cfg.clip and self.vae is None)
        layout = self.layout or memory_format(self.device, self.sample_shape[-1])
        self.model.to(memory_format=layout)
        z = sample(denoiser, self.schedule, (num, *self.sample_shape), cfg, prediction=self.prediction,
                   generator=generator, device=self.device, memory_format=layout, trajectory=trajectory,
                   progress=progress)
        return self.decode(z) if decode else z
