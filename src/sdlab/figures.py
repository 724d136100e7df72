"""Figures that show what each component does, written as PNGs with `sdlab.visualize`.

Functions take the trained model and a batch of images in [-1, 1]; they never train anything.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from .diffusion import NoiseSchedule, SamplerConfig, Trajectory, diffusion_loss, sample
from .diffusion.guidance import guided
from .visualize import plot_bars, plot_history, plot_lines, save_figure, save_grid, save_labelled_rows


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


@torch.no_grad()
def autoencoder_comparison(images: torch.Tensor, autoencoders: dict, path: str | Path, command: str) -> Path:
    """Originals (top row) above each autoencoder's reconstructions (posterior mean) of them;
    right of each row the images' central quarter enlarged 2x, where blur shows first."""
    def with_crops(x: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1]
        centre = x[..., side // 4: side - side // 4, side // 4: side - side // 4]
        return torch.cat([x, centre.repeat_interleave(2, -1).repeat_interleave(2, -2)]).cpu()

    rows = [with_crops(images)] + [with_crops(vae.decode(vae.encode(images).mode()).float().clamp(-1, 1))
                                   for vae in autoencoders.values()]
    title = "reconstructions (left) and their centres enlarged 2x (right)\n" + textwrap.fill(command, 110)
    return save_labelled_rows(rows, ["original", *autoencoders], path, title=title)


def reconstruction_spectra(real: list[float], spectra: dict[str, list[float]], path: str | Path,
                           command: str) -> Path:
    """Each autoencoder's radially averaged power spectrum (`quality.radial_power_spectrum`) of
    its reconstructions divided by the test images' own, per frequency: 1 keeps the originals'
    power, blur is the fall below 1 at high frequencies."""
    ratios = {name: [v / r for v, r in zip(values[1:], real[1:])] for name, values in spectra.items()}
    return plot_lines(list(range(1, len(real))), ratios, path, "radial frequency (cycles per image)",
                      title="power of the reconstructions / power of the test images", ylabel="power ratio",
                      log_y=True, caption=command)


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
    return save_labelled_rows(rows, [""] * len(rows), path, columns=[f"t = {t}" for t in steps],
                              title="forward process: x_t ~ q(x_t | x_0), one image per row")


def reverse_process(trajectory, path: str | Path, columns: int = 8, decode=None) -> Path:
    """One sampling path: x_t (top) and the predicted x_0 (bottom) at evenly spaced steps.

    For latent models pass `decode` (latents -> images): both rows are then decoded."""
    picks = torch.linspace(0, len(trajectory.timesteps) - 1, columns).round().long().tolist()
    xt = torch.cat([trajectory.xt[i][:1] for i in picks])
    x0 = torch.cat([trajectory.x0[i][:1] for i in picks])
    if decode is not None:
        xt, x0 = decode(xt).cpu(), decode(x0).cpu()
    return save_labelled_rows([xt, x0], ["x_t", "pred x0"], path,
                              columns=[f"t = {trajectory.timesteps[i]}" for i in picks],
                              title="reverse process: the state and the predicted x0 along one path")


@torch.no_grad()
def sampler_trajectories(pipe, path: str | Path, configs: dict, label: int | None = None,
                         guidance_scale: float = 1.0, seed: int = 0) -> Path:
    """One row per sampler, all from the same noise: the predicted x_0 after each step, then the
    sample. `configs` maps row names to SamplerConfigs (give them similar NFE to compare)."""
    rows, names = [], []
    labels = None if label is None else torch.tensor([label], device=pipe.device)
    for name, cfg in configs.items():
        trajectory = Trajectory()
        g = torch.Generator(pipe.device).manual_seed(seed)
        final = pipe(1, labels=labels, guidance_scale=guidance_scale, generator=g, sampler=cfg,
                     trajectory=trajectory).cpu()
        rows.append(torch.cat([pipe.decode(torch.cat(trajectory.x0)).cpu(), final]))
        names.append(f"{name}\n{cfg.evaluations(pipe.schedule)} NFE")
    return save_labelled_rows(rows, names, path, title="predicted x0 after each step, then the sample (same noise)")


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
               sampler=None) -> Path:
    """One row per class, all rows from the same seeds, at guidance scale w."""
    n = len(pipe.classes)
    labels = torch.arange(n, device=pipe.device).repeat_interleave(per_class)
    g = torch.Generator(pipe.device).manual_seed(seed)
    images = pipe(n * per_class, labels=labels, guidance_scale=guidance_scale, generator=g,
                  sampler=sampler).cpu()
    return save_labelled_rows(list(images.split(per_class)), list(pipe.classes), path,
                              title=f"one row per class, guidance w = {guidance_scale:g}")


def guidance_sweep(pipe, path: str | Path, scales=(0, 1, 2, 4, 7), per_row: int = 10, seed: int = 0,
                   sampler=None) -> Path:
    """The same seeds and classes (one per column) at w = 0, 1, 2, 4, 7 (one row each)."""
    labels = torch.arange(per_row, device=pipe.device) % len(pipe.classes)
    rows = []
    for w in scales:
        g = torch.Generator(pipe.device).manual_seed(seed)
        rows.append(pipe(per_row, labels=labels, guidance_scale=w, generator=g, sampler=sampler).cpu())
    names = [pipe.classes[i] for i in labels.tolist()]
    return save_labelled_rows(rows, [f"w = {w:g}" for w in scales], path, columns=names,
                              title="guidance sweep: the same seeds at each w")


def schedules(path: str | Path, num_timesteps: int = 1000) -> Path:
    """ᾱ_t and log-SNR of the linear (DDPM), scaled-linear (Stable Diffusion v1) and cosine schedules."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for kind, betas in (("linear", (1e-4, 0.02)), ("scaled_linear (SD)", (0.00085, 0.012)), ("cosine", ())):
        s = NoiseSchedule.create(kind.split()[0], num_timesteps, *betas)
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


@torch.no_grad()
def sampler_paths_2d(denoiser, schedule, data: torch.Tensor, configs: dict, path: str | Path,
                     num_points: int = 2000, num_paths: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """One panel per sampler on 2-D data: the data (grey), the samples of `num_points` starts
    (blue) and the x_t paths of the first `num_paths` of them, every panel from the same starts.
    `denoiser` is a trained toy model or a mixture's exact one (`toy`). Returns the samples
    (num_points, 2) of each config, by name, for scoring."""
    import matplotlib.pyplot as plt

    x_T = torch.randn(num_points, 2, generator=torch.Generator().manual_seed(seed))
    fig, axes = plt.subplots(1, len(configs), figsize=(3.2 * len(configs), 3.4), squeeze=False)
    samples = {}
    for ax, (name, cfg) in zip(axes[0], configs.items()):
        trajectory = Trajectory()
        out = samples[name] = sample(denoiser, schedule, x_T.shape, cfg, x_T=x_T.clone(), trajectory=trajectory,
                                     generator=torch.Generator().manual_seed(seed + 1))
        ax.scatter(data[:, 0], data[:, 1], s=2, color="0.75", label="data")
        ax.scatter(out[:, 0], out[:, 1], s=2, color="tab:blue", label="samples")
        paths = torch.stack([*trajectory.xt, out])[:, :num_paths]                      # (steps + 1, n, 2)
        for i in range(num_paths):
            ax.plot(paths[:, i, 0], paths[:, i, 1], color="tab:red", linewidth=0.8, alpha=0.8)
        ax.set_title(f"{name}: {cfg.describe(schedule)}", fontsize=8)
        _square(ax)
    axes[0, 0].legend(fontsize=7, loc="lower left", markerscale=3)
    fig.suptitle("x_t paths (red) from the same starts, and the samples (blue) over the data (grey)", fontsize=10)
    save_figure(fig, path)
    return samples


def _square(ax, limit: float = 3.2) -> None:
    ax.set_aspect("equal")
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_xticks([])
    ax.set_yticks([])


@torch.no_grad()
def toy_forward_process(data: torch.Tensor, schedule, path: str | Path, timesteps=(0, 50, 150, 300, 600, 999),
                        seed: int = 0) -> Path:
    """The 2-D data noised to x_t for a few t: the density the sampler must walk back through."""
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(1, len(timesteps), figsize=(2.4 * len(timesteps), 2.7), squeeze=False)
    for ax, t in zip(axes[0], timesteps):
        tt = torch.full((len(data),), t, dtype=torch.long)
        xt = schedule.q_sample(data.float(), tt, torch.randn(data.shape, generator=g))
        ax.scatter(xt[:, 0], xt[:, 1], s=1, alpha=0.5)
        ax.set_title(f"t = {t}, ᾱ = {schedule.alpha_bar[t]:.3f}", fontsize=8)
        _square(ax)
    fig.suptitle("forward process q(x_t | x_0) on 2-D data", fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def toy_score_fields(model, mixture, schedule, path: str | Path, timesteps=(50, 200, 500), grid: int = 21) -> Path:
    """The score ∇ log p_t(x) = -eps(x, t) / sqrt(1 - ᾱ_t) on a grid: the trained model's (top)
    against the mixture's exact one (bottom), at a few t."""
    import matplotlib.pyplot as plt

    axis = torch.linspace(-3, 3, grid)
    points = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    exact = mixture.denoiser(schedule)
    fig, axes = plt.subplots(2, len(timesteps), figsize=(2.9 * len(timesteps), 5.8), squeeze=False)
    for col, t in enumerate(timesteps):
        tt = torch.full((len(points),), t, dtype=torch.long)
        scale = -1 / (1 - schedule.alpha_bar[t]).sqrt()
        for row, (name, net) in enumerate((("trained", model), ("exact", exact))):
            score = scale * net(points, tt).float()
            ax = axes[row, col]
            ax.quiver(points[:, 0], points[:, 1], score[:, 0], score[:, 1], angles="xy", color="tab:blue")
            ax.scatter(mixture.means[:, 0], mixture.means[:, 1], s=12, color="tab:red")
            ax.set_title(f"{name} score, t = {t}", fontsize=8)
            _square(ax)
    fig.suptitle("score field of p_t: the trained MLP against the exact mixture", fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def toy_guidance(mixture, schedule, path: str | Path, scales=(0, 1, 3, 7), num_points: int = 1500,
                 seed: int = 0) -> Path:
    """Classifier-free guidance on the exact class-conditional denoiser of a ring (`halves`:
    class 0 above the x axis): samples of class 0 at each w, from the same starts (DPM-Solver++,
    20 steps). w = 0 is the whole ring, w = 1 the upper half, w > 1 pushes further from class 1."""
    import matplotlib.pyplot as plt

    classes = mixture.halves
    network = mixture.denoiser(schedule, classes=classes)
    x_T = torch.randn(num_points, 2, generator=torch.Generator().manual_seed(seed))
    labels = torch.zeros(num_points, dtype=torch.long)
    data = mixture.sample(num_points, torch.Generator().manual_seed(seed + 1))
    fig, axes = plt.subplots(1, len(scales), figsize=(2.9 * len(scales), 3.2), squeeze=False)
    for ax, w in zip(axes[0], scales):
        out = sample(guided(network, labels, w, int(classes.max()) + 1), schedule, x_T.shape,
                     SamplerConfig(sampler="dpmpp_2m", sample_steps=20, clip=False), x_T=x_T.clone())
        ax.scatter(data[:, 0], data[:, 1], s=1, color="0.8")
        ax.scatter(out[:, 0], out[:, 1], s=1, color="tab:blue")
        ax.set_title(f"w = {w:g}", fontsize=9)
        _square(ax)
    fig.suptitle("guidance toward class 0 (upper half), exact denoisers; grey: all data", fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------- text-to-image

@torch.no_grad()
def prompt_grid(pipe, prompts: list[str], path: str | Path, guidance_scale: float, seeds: int = 8,
                sampler: SamplerConfig | str | None = None) -> Path:
    """One row per prompt, one column per seed (the same starting noise down each column)."""
    rows = [pipe(seeds, prompt=p, guidance_scale=guidance_scale, sampler=sampler,
                 generator=torch.Generator(pipe.device).manual_seed(0)) for p in prompts]
    return save_labelled_rows(rows, prompts, path, columns=[f"seed {i}" for i in range(seeds)],
                              title=f"prompts (rows) x starting noise (columns), w = {guidance_scale:g}")


@torch.no_grad()
def cross_attention_maps(pipe, prompt: str, path: str | Path, guidance_scale: float, columns: int = 6,
                         sampler: SamplerConfig | str = "ddim", sample_steps: int = 25) -> Path:
    """Where each word of `prompt` is looked at: the cross-attention weight of every image
    position on the word, averaged over heads and over the U-Net's cross-attention layers
    (each upsampled to the image size), at evaluations spread over the denoising run."""
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    layers = pipe.model.cross_attentions()
    for layer in layers:
        layer.record = []
    try:
        trajectory = Trajectory()
        image = pipe(1, prompt=prompt, guidance_scale=guidance_scale, trajectory=trajectory,
                     generator=torch.Generator(pipe.device).manual_seed(0), sampler=sampler,
                     sample_steps=sample_steps)
        records = [layer.record for layer in layers]
    finally:
        for layer in layers:
            layer.record = None
    side = image.shape[-1]
    words = pipe.tokenizer.decode(pipe.tokenizer.encode(prompt)[0]).split()
    evaluations = len(records[0])
    picks = torch.linspace(0, evaluations - 1, min(columns, evaluations)).round().long().tolist()
    maps = []                                                      # per pick: (L, side, side)
    for e in picks:
        per_layer = []
        for record in records:
            weights = record[e][0].mean(0)                         # conditional half, mean over heads: (HW, L)
            res = int(weights.shape[0] ** 0.5)
            grid_ = weights.T.reshape(-1, 1, res, res)
            per_layer.append(F.interpolate(grid_, size=(side, side), mode="bilinear", align_corners=False)[:, 0])
        maps.append(torch.stack(per_layer).mean(0))
    same_steps = evaluations == len(trajectory.timesteps)
    fig, axes = plt.subplots(len(words), len(picks) + 1, figsize=(1.3 * (len(picks) + 1), 1.3 * len(words)),
                             squeeze=False)
    picture = ((image[0].permute(1, 2, 0).cpu() + 1) / 2).clamp(0, 1).numpy()
    for r, word in enumerate(words):
        axes[r, 0].imshow(picture, interpolation="nearest")
        axes[r, 0].set_ylabel(word, rotation=0, ha="right", va="center", fontsize=10)
        for c, e in enumerate(picks):
            axes[r, c + 1].imshow(maps[c][r + 1].numpy(), cmap="viridis", interpolation="bilinear")  # token 0 is BOS
            if r == 0:
                axes[r, c + 1].set_title(f"t = {trajectory.timesteps[e]}" if same_steps else f"eval {e + 1}", fontsize=9)
    axes[0, 0].set_title("sample", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f'cross-attention per word: "{prompt}"', fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def img2img_sweep(pipe, images: torch.Tensor, prompts: list[str], path: str | Path, guidance_scale: float,
                  strengths=(0.0, 0.25, 0.5, 0.75, 1.0), sampler: SamplerConfig | str | None = None) -> Path:
    """SDEdit: each init image (row) noised to strength x T and denoised toward its row's prompt."""
    rows = []
    for image, prompt in zip(images, prompts):
        outs = [pipe(1, prompt=prompt, init_image=image[None], strength=s, guidance_scale=guidance_scale,
                     sampler=sampler, generator=torch.Generator(pipe.device).manual_seed(0)) for s in strengths]
        rows.append(torch.cat([image[None].to(outs[0].device), *outs]))
    return save_labelled_rows(rows, [f'-> "{p}"' for p in prompts], path,
                              columns=["init", *[f"s = {s:g}" for s in strengths]],
                              title="img2img (SDEdit): strength 0 keeps the image, 1 ignores it")


@torch.no_grad()
def inpainting_example(pipe, images: torch.Tensor, prompts: list[str], mask: torch.Tensor, path: str | Path,
                       guidance_scale: float, seeds: int = 2, sampler: SamplerConfig | str | None = None) -> Path:
    """One row per example: the input, the input with the masked region greyed out, and
    inpaintings toward the row's prompt with `seeds` seeds (mask (1, 1, H, W), 1 = repaint)."""
    images, mask = images.to(pipe.device), mask.to(pipe.device)
    outs = [pipe(images.shape[0], prompt=prompts, init_image=images, mask=mask, guidance_scale=guidance_scale,
                 sampler=sampler, generator=torch.Generator(pipe.device).manual_seed(seed)) for seed in range(seeds)]
    rows = [torch.stack([image, image * (1 - mask[0]), *(out[i] for out in outs)])
            for i, image in enumerate(images)]
    return save_labelled_rows(rows, [f'"{p}"' for p in prompts], path,
                              columns=["input", "masked", *[f"seed {s}" for s in range(seeds)]],
                              title="inpainting: the masked region is generated for the prompt, the rest kept")
