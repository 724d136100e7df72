"""What a diffusion checkpoint says about its run, read in one place.

A diffusion run config (SAVE_DIR/config.json's sections plus what the checkpoint adds: kind,
classes, tokenizer, sample prompts, latent_vae) is read here, into a `DiffusionRecord` (the
conditioning reads back what it stored, `conditioning.from_config`; the data section and seed,
which every kind of run has, `recipes.run.stored_splits`). The
pipeline is built from a record the same way after training and after loading a checkpoint
(`DiffusionPipeline.from_record`), and a resumed run takes what its checkpoint fixes from one
(`recipes.diffusion.resolve_run`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .conditioning import Unconditional, from_config
from .config import from_stored
from .diffusion import DiffusionConfig
from .text import TextConfig
from .unet import UNetConfig


@dataclass(frozen=True)
class DiffusionRecord:
    unet: UNetConfig
    diffusion: DiffusionConfig
    text: TextConfig
    class_cond: bool
    conditioning: Unconditional
    latent_vae: dict          # {} for pixel models; else vae_sha256, scale_factor, downsampling, vae_checkpoint, ...
    config: dict              # the whole run config, as stored

    @classmethod
    def from_config(cls, config: dict) -> "DiffusionRecord":
        """The record of a diffusion run config (a checkpoint's "config")."""
        return cls(unet=from_stored(UNetConfig, config["unet"]),
                   diffusion=from_stored(DiffusionConfig, config["diffusion"]),
                   text=from_stored(TextConfig, config["text"]) if "text" in config else TextConfig(),
                   class_cond=bool(config["guidance"]["class_cond"]),
                   conditioning=from_config(config),
                   latent_vae=dict(config.get("latent_vae") or {}), config=config)

    @property
    def scale_factor(self) -> float:
        """The latent scale factor s (1 for pixel models)."""
        return self.latent_vae.get("scale_factor", 1.0)

    def network(self) -> nn.Module:
        """The untrained network the record describes (U-Net, or text encoder + U-Net)."""
        return self.conditioning.network(self.unet)
