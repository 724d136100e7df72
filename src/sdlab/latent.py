"""Latent diffusion's data side: encode a dataset once with a frozen VAE, cache it, scale it.

Stable Diffusion (LDM, arXiv:2112.10752, section 4.3.2) trains the U-Net on z * s, where z is the
VAE latent and s = 1 / std(z) over the training set (0.18215 for SD's VAE), so the diffusion
model sees roughly unit-variance data, as its noise schedule assumes. Decoding divides by s.

We encode with the posterior mean, once, and cache it. LDM and SD train on samples
z = mean + std * eps instead; with a small beta the posterior's std is small next to the spread
of the means (`sdlab-eval-vae` reports both), and caching the log-variance too would make
sampling free, but that is not done here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import read_cache, save_checkpoint
from .config import option
from .data import ImageSet, to_unit_range


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """Posterior means mu(x) of uint8 images (N, C, H, W), returned on the CPU in float32."""
    vae.eval()
    out = [vae.encode(to_unit_range(part.to(device))).mode().float().cpu()
           for part in images.split(batch_size)]
    return torch.cat(out)


def scale_factor(latents: torch.Tensor) -> float:
    """s = 1 / std of the training latents (LDM's latent scale factor)."""
    return 1.0 / latents.float().std().item()


def cache_key(model_key: str, *splits: ImageSet) -> str:
    """Identifies a model's weights (`model_key`, e.g. their SHA-256) and the images it was run
    on, so a stale cache of its outputs (latents, features) is never used."""
    digest = hashlib.sha1(model_key.encode())
    for split in splits:
        digest.update(str(tuple(split.images.shape)).encode())
        digest.update(split.images[:: max(1, len(split) // 64)].numpy().tobytes())
    return digest.hexdigest()[:16]


def encode_splits(vae, vae_sha256: str, train: ImageSet, test: ImageSet, device: torch.device,
                  cache_dir: str | Path) -> tuple[ImageSet, ImageSet, float]:
    """Encode (or load from cache) both splits; returns the scaled latents (float ImageSets,
    same labels) and the scale factor.

    The cache `CACHE_DIR/latents-<key>.pt` holds the unscaled means and the scale factor; one
    that cannot be read is encoded again and replaced.
    """
    path = Path(cache_dir) / f"latents-{cache_key(vae_sha256, train, test)}.pt"
    cached = read_cache(path, lambda c: (len(c["train"]), len(c["test"])) == (len(train), len(test)),
                        "latent cache", "encoding again")
    if cached is not None:
        mu_train, mu_test, s = cached["train"], cached["test"], cached["scale_factor"]
    else:
        mu_train = encode_images(vae, train.images, device)
        mu_test = encode_images(vae, test.images, device)
        s = scale_factor(mu_train)
        save_checkpoint({"train": mu_train, "test": mu_test, "scale_factor": s}, path)
    return (ImageSet(mu_train * s, train.labels, train.classes, train.captions),
            ImageSet(mu_test * s, test.labels, test.classes, test.captions), s)


def decode_latents(vae, z_scaled: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (decode z / s, then clamp to the data range)."""
    with torch.no_grad():
        return vae.decode(z_scaled / scale).float().clamp(-1, 1)


@dataclass(frozen=True)
class LatentConfig:
    latent: bool = option(False, "train on VAE latents (latent diffusion) instead of pixels")
    vae_checkpoint: str = option("", "VAE checkpoint (train_vae.py) whose encoder makes the latents; "
                                     "a resumed run uses the VAE its checkpoint carries")
