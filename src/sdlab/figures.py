"""Figures that show what each component does, written as PNGs with `sdlab.visualize`.

Functions take the trained model and a batch of images in [-1, 1]; they never train anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .diffusion import NoiseSchedule, diffusion_loss
from .visualize import plot_bars, plot_history, save_figure, save_grid, save_labelled_rows


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


def vae_figures(vae, history: list[dict], images: torch.Tensor, out: str | Path) -> list[str]:
    """All VAE figures into folder `out` from a trained VAE, its history and ~256 test images
    (evenly spread over the set, so that every class shows up). Returns the file names."""
    out = Path(out)
    vae.eval()
    size = images.shape[-1]
    every = max(1, images.shape[0] // 8)
    plot_history(history, out / "loss_curves.png", terms=["loss", "recon", "kl", "psnr"], title="VAE training")
    vae_reconstructions(vae, images[::every][:8], out / "reconstructions.png")
    vae_prior_samples(vae, vae.cfg.latent_shape(size), out / "prior_samples.png")
    vae_interpolation(vae, images[::every][:8], out / "interpolation.png")
    vae_kl_per_channel(vae, images, out / "kl_per_channel.png")
    names = ["loss_curves.png", "reconstructions.png", "prior_samples.png", "interpolation.png",
             "kl_per_channel.png"]
    print(f"figures written to {out}: {' '.join(names)}")
    return names


# ---------------------------------------------------------------- diffusion

FORWARD_STEPS = (0, 50, 100, 250, 500, 750, 999)


@torch.no_grad()
def forward_process(schedule, images: torch.Tensor, path: str | Path, seed: int = 0) -> Path:
    """Each row one image, noised by q(x_t | x_0) at t = 0, 50, ..., 999 (same eps per row)."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(images.shape, generator=g).to(images.device)
    steps = [t for t in FORWARD_STEPS if t < schedule.num_timesteps]
    cols = [schedule.q_sample(images, torch.full((images.shape[0],), t, device=images.device), eps)
            for t in steps]
    rows = [torch.stack([c[i] for c in cols]) for i in range(images.shape[0])]
    return save_labelled_rows(rows, [""] * len(rows), path,
                              title="forward process x_t at t = " + ", ".join(map(str, steps)))


def reverse_process(trajectory, path: str | Path, columns: int = 8, decode=None) -> Path:
    """One sampling path: x_t (top) and the predicted x_0 (bottom) at evenly spaced steps.

    For latent models pass `decode` (latents -> images): both rows are then decoded."""
    picks = torch.linspace(0, len(trajectory.timesteps) - 1, columns).round().long().tolist()
    xt = torch.cat([trajectory.xt[i][:1] for i in picks])
    x0 = torch.cat([trajectory.x0[i][:1] for i in picks])
    if decode is not None:
        xt, x0 = decode(xt).cpu(), decode(x0).cpu()
    steps = ", ".join(str(trajectory.timesteps[i]) for i in picks)
    return save_labelled_rows([xt, x0], ["x_t", "pred x0"], path,
                              title=f"reverse process at t = {steps}")


def latent_pipeline(trajectory, decode, path: str | Path, columns: int = 8) -> Path:
    """Stable Diffusion's inference path for one sample: the noise latent and the denoising
    steps (first three latent channels shown as RGB), the decoded prediction at each step,
    and the final decoded image."""
    picks = torch.linspace(0, len(trajectory.timesteps) - 1, columns).round().long().tolist()
    latents = torch.cat([trajectory.xt[i][:1] for i in picks])              # (columns, C, h, w)
    shown = latents[:, :3]
    shown = shown / shown.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-6)
    size = trajectory.x0[0].shape[-1] * 4
    shown = torch.nn.functional.interpolate(shown, scale_factor=4, mode="nearest")[..., :size, :size]
    decoded = decode(torch.cat([trajectory.x0[i][:1] for i in picks])).cpu()
    steps = ", ".join(str(trajectory.timesteps[i]) for i in picks)
    return save_labelled_rows([shown, decoded], ["latent z_t", "decoded x0"], path,
                              title=f"noise latent -> denoising (t = {steps}) -> VAE decoder")


def class_grid(pipe, path: str | Path, guidance_scale: float, per_class: int = 8, seed: int = 0,
               **sampler_kwargs) -> Path:
    """One row per class, all rows from the same seeds, at guidance scale w."""
    n = len(pipe.classes)
    labels = torch.arange(n, device=pipe.device).repeat_interleave(per_class)
    g = torch.Generator(pipe.device).manual_seed(seed)
    images = pipe(n * per_class, labels=labels, guidance_scale=guidance_scale, generator=g,
                  **sampler_kwargs).cpu()
    return save_labelled_rows(list(images.split(per_class)), list(pipe.classes), path,
                              title=f"one row per class, guidance w = {guidance_scale:g}")


def guidance_sweep(pipe, path: str | Path, scales=(0, 1, 2, 4, 7), per_row: int = 10, seed: int = 0,
                   **sampler_kwargs) -> Path:
    """The same seeds and classes (one per column) at w = 0, 1, 2, 4, 7 (one row each)."""
    labels = torch.arange(per_row, device=pipe.device) % len(pipe.classes)
    rows = []
    for w in scales:
        g = torch.Generator(pipe.device).manual_seed(seed)
        rows.append(pipe(per_row, labels=labels, guidance_scale=w, generator=g, **sampler_kwargs).cpu())
    names = [pipe.classes[i] for i in labels.tolist()]
    return save_labelled_rows(rows, [f"w = {w:g}" for w in scales], path,
                              title="guidance sweep, columns: " + ", ".join(names))


def schedules(path: str | Path, num_timesteps: int = 1000) -> Path:
    """ᾱ_t and log-SNR of the linear and cosine schedules."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for kind in ("linear", "cosine"):
        s = NoiseSchedule.create(kind, num_timesteps)
        t = torch.arange(num_timesteps)
        axes[0].plot(t, s.alpha_bar, label=kind)
        axes[1].plot(t, torch.log(s.snr(t)), label=kind)
    for ax, title in zip(axes, ("alpha_bar_t", "log SNR_t = log(alpha_bar / (1 - alpha_bar))")):
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


@torch.no_grad()
def loss_by_timestep(model, schedule, cfg, images: torch.Tensor, path: str | Path,
                     buckets: int = 10, labels: torch.Tensor | None = None) -> tuple[Path, list[float]]:
    """Validation L_simple in `buckets` equal ranges of t (fixed noise and timesteps)."""
    T = schedule.num_timesteps
    g = torch.Generator(images.device).manual_seed(0)
    values, names = [], []
    for k in range(buckets):
        lo, hi = k * T // buckets, (k + 1) * T // buckets
        t = torch.randint(lo, hi, (images.shape[0],), generator=g, device=images.device)
        values.append(diffusion_loss(model, schedule, images, cfg, labels, g, t=t)["mse"].item())
        names.append(f"{lo}-{hi - 1}")
    return plot_bars(names, values, path, "L_simple (MSE)", title="validation loss by timestep"), values
