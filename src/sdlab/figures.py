"""Figures that show what each component does, written as PNGs with `sdlab.visualize`.

Functions take the trained model and a batch of images in [-1, 1]; they never train anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .visualize import plot_bars, save_grid, save_labelled_rows


@torch.no_grad()
def vae_reconstructions(vae, images: torch.Tensor, path: str | Path) -> Path:
    """Originals in the top row(s), their reconstructions (posterior mean) below."""
    x_hat = vae.decode(vae.encode(images).mode())
    return save_labelled_rows([images, x_hat], ["input", "recon"], path,
                              title="VAE: inputs (top) and reconstructions from the posterior mean")


@torch.no_grad()
def vae_prior_samples(vae, latent_shape: tuple[int, int, int], path: str | Path, n: int = 64,
                      seed: int = 0) -> Path:
    """Decode z ~ N(0, I): what the decoder makes of the prior the KL pulls toward."""
    device = next(vae.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    z = torch.randn((n, *latent_shape), generator=g, device=device)
    return save_grid(vae.decode(z), path, nrow=8)


@torch.no_grad()
def vae_interpolation(vae, images: torch.Tensor, path: str | Path, steps: int = 8) -> Path:
    """Linear paths in latent space between consecutive pairs of images (one row per pair)."""
    mu = vae.encode(images).mode()
    rows, labels = [], []
    weights = torch.linspace(0, 1, steps, device=mu.device)[:, None, None, None]
    for i in range(0, mu.shape[0] - 1, 2):
        z = (1 - weights) * mu[i:i + 1] + weights * mu[i + 1:i + 2]   # (steps, C, h, w)
        rows.append(vae.decode(z))
        labels.append(f"pair {i // 2 + 1}")
    return save_labelled_rows(rows, labels, path, title="VAE: decoding along z = (1-w) mu_a + w mu_b")


@torch.no_grad()
def vae_kl_per_channel(vae, images: torch.Tensor, path: str | Path) -> tuple[Path, list[float]]:
    """Mean KL(q || N(0, I)) in nats carried by each latent channel (which ones hold information)."""
    per_channel = vae.encode(images).kl(per_element=True).sum((2, 3)).mean(0).tolist()
    names = [f"z{c}" for c in range(len(per_channel))]
    return plot_bars(names, per_channel, path, "KL (nats / image)",
                     title="KL per latent channel"), per_channel
