"""The VAE recipe: data, model, loss, trainer, TensorBoard images and figures, from one config.

    from sdlab.recipes import VAERun, train_vae
    trained = train_vae(VAERun(train=TrainConfig(epochs=1, save_dir="runs/vae")))
    vae = trained.trainer.eval_model

Evaluation (what `sdlab-eval-vae` reports): `fit_sigma` and `evaluate_vae`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..autoencoder_loss import AutoencoderTraining, autoencoder_loss, discriminator_update, trained_part
from ..checkpoint import state_digest
from ..config import ConfigError, from_stored, option
from ..data import BatchLoader, DataConfig, to_uint8
from ..discriminator import DiscriminatorConfig
from ..likelihood import bits_per_dim, discretized_gaussian_log_likelihood
from ..perceptual import FeatureDistance, WatsonDFT, lpips_distance
from ..quality import high_frequency_ratio, radial_power_spectrum
from ..figures import vae_figures
from ..runtime import pick_device
from ..errors import UserError
from ..trained import autoencoder_weights, load_trained, load_weights
from ..trainer import TrainConfig, Trainer, Update
from ..vae import VAE, VAEConfig, VAELossConfig, psnr, vae_loss
from ..visualize import grid
from .classifier import load_classifier
from .run import Trained, build_loaders, prepare_run, report, save_run_config, start_run, with_defaults


# Defaults chosen for reconstruction quality per minute of training (BENCHMARKS.md).
CPU_DEFAULTS = {"base_channels": 32, "epochs": 30, "lr": 1e-3, "scheduler": "cosine",
                "warmup_steps": 200, "save_dir": "outputs/vae"}
CUDA_DEFAULTS = {"base_channels": 128, "num_res_blocks": 2, "epochs": 100, "lr": 5e-4,
                 "scheduler": "cosine", "warmup_steps": 500, "save_dir": "outputs/vae"}


def device_defaults(device: torch.device) -> dict:
    """The defaults (field -> value) of a VAE run on `device`; flags and `VAERun.recommended`'s
    sections go over them."""
    return CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS


@dataclass(frozen=True)
class FinetuneConfig:
    finetune_decoder: str = option("", "start from this train_vae.py checkpoint and train only its decoder: the "
                                       "encoder and so the latents stay fixed (latent models trained on it keep working)")


@dataclass(frozen=True)
class VAERun:
    """Everything a VAE run is made of; its fields are the sections of config.json."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    @property
    def stable_diffusion(self) -> bool:
        """Whether the run trains with Stable Diffusion's loss (`autoencoder_loss`), not the ELBO."""
        return self.loss.stable_diffusion or self.disc.adversarial

    @classmethod
    def recommended(cls, **sections) -> "VAERun":
        """What `train_vae.py` runs with no flags on the device of sections["train"] (default
        auto), with `sections` over it: VAERun.recommended(train={"epochs": 1})."""
        device = pick_device(sections.get("train", {}).get("device", "auto"))
        return with_defaults(cls, device_defaults(device), sections)


def log_images(trainer: Trainer, fixed: torch.Tensor, latent_shape) -> None:
    """TensorBoard images each epoch: inputs above reconstructions, and prior samples."""
    vae = autoencoder_of(trainer.eval_model)
    vae.eval()
    with torch.no_grad():
        recon = vae.decode(vae.encode(fixed).mode())
        g = torch.Generator(fixed.device).manual_seed(0)
        samples = vae.decode(torch.randn((16, *latent_shape), generator=g, device=fixed.device))
    trainer.writer.add_image("vae/inputs_vs_reconstructions", grid(torch.cat([fixed, recon])), trainer.step)
    trainer.writer.add_image("vae/prior_samples", grid(samples), trainer.step)


def autoencoder_of(model: torch.nn.Module) -> VAE:
    """The VAE of a trained model (itself, or the VAE of `AutoencoderTraining`)."""
    return model.vae if isinstance(model, AutoencoderTraining) else model


def perceptual_distance(loss_cfg: VAELossConfig, device: torch.device) -> torch.nn.Module | None:
    """The perceptual distance of --perceptual (`perceptual`), on `device`; None for none."""
    if loss_cfg.perceptual == "watson":
        return WatsonDFT().to(device)
    if loss_cfg.perceptual == "classifier":
        try:
            return FeatureDistance(load_classifier(loss_cfg.perceptual_net, device)[0])
        except UserError as err:
            raise UserError(f"--perceptual-net: {err}") from None
    if loss_cfg.perceptual == "lpips":
        return lpips_distance(loss_cfg.perceptual_net).to(device)
    return None


def loss_network_digest(perceptual: torch.nn.Module | None) -> str | None:
    """SHA-256 of the trained network inside a perceptual distance (a classifier's or LPIPS's
    weights), None for none or Watson's: stored with the run, so that no one scores the VAE with
    the network it was trained against (`check_scorer`) or resumes it against another."""
    net = getattr(perceptual, "net", None)          # FeatureDistance's and LPIPSDistance's
    return None if net is None else state_digest(net.state_dict())


def check_scorer(vae_state: dict, classifier_sha256: str, flag: str = "--classifier") -> None:
    """Refuse to score the VAE of checkpoint `vae_state` with the classifier (its weights' SHA-256,
    `Scorer.classifier_sha256`) its perceptual loss measured in."""
    if vae_state["config"].get("perceptual_net_sha256") == classifier_sha256:
        raise UserError(f"{flag}: this VAE was trained against that classifier (its --perceptual-net); "
                        "score it with another one (another seed or width)")


def updates(model: torch.nn.Module, run: VAERun, perceptual: torch.nn.Module | None) -> list[Update]:
    """The optimizers of a VAE run: one for the ELBO; with Stable Diffusion's loss (and the
    distance `perceptual_distance` built) the autoencoder's (`autoencoder_loss`) and, from
    --disc-start on, the discriminator's, stepped alternately on every batch."""
    loss_cfg, disc, decoder_only = run.loss, run.disc, bool(run.finetune.finetune_decoder)
    if not isinstance(model, AutoencoderTraining):
        return [Update(lambda net, images, labels, generator=None, step=None:
                       vae_loss(net, images, loss_cfg, generator=generator, step=step),
                       trained_part(model, decoder_only))]
    found = [Update(lambda net, images, labels, generator=None, step=None:
                    autoencoder_loss(net, images, loss_cfg, disc, perceptual, generator=generator, step=step),
                    model.autoencoder(loss_cfg.learned_variance, decoder_only), "autoencoder")]
    if disc.adversarial:
        found.append(Update(lambda net, images, labels, generator=None, step=None:
                            discriminator_update(net, images, disc, generator=generator),
                            model.disc, "disc", lr=disc.disc_lr or None, starts_at=disc.disc_start))
    return found


def train_vae(run: VAERun) -> Trained:
    """Train (or, with run.train.resume, continue) a VAE; returns the trainer (history, EMA weights
    as `trainer.eval_model`). With run.loss.perceptual, run.loss.learned_variance or
    run.disc.disc_start >= 0 the loss is Stable Diffusion's (`autoencoder_loss`), with a PatchGAN
    discriminator and its own optimizer. A resumed run keeps the architecture (VAE and
    discriminator) stored in its checkpoint."""
    dist, device, run = start_run(run)
    resumed = prepare_run(run.train, "vae", dist)
    if resumed is not None:
        stored = resumed["config"]
        disc = from_stored(DiscriminatorConfig, stored["disc"]) if "disc" in stored else DiscriminatorConfig()
        was = VAERun(loss=from_stored(VAELossConfig, stored["loss"]), disc=disc)
        now = VAERun(loss=run.loss, disc=disc)     # the discriminator comes back with the checkpoint
        if (was.stable_diffusion, was.loss.learned_variance) != (now.stable_diffusion, now.loss.learned_variance):
            raise ConfigError("resume", f"the checkpoint was trained with {'Stable Diffusion' if was.stable_diffusion else 'the ELBO'}'s "
                                        f"loss{' and a learned variance' if was.loss.learned_variance else ''}; resume with "
                                        "the loss flags it was started with (its config.json)")
        run = VAERun(run.data, run.train, from_stored(VAEConfig, stored["vae"]), run.loss, disc, run.finetune)
    source = None
    if run.finetune.finetune_decoder and resumed is None:
        try:
            source = load_trained(run.finetune.finetune_decoder, torch.device("cpu"), "vae")
        except UserError as err:
            raise UserError(f"--finetune-decoder: {err}") from None
        run = dataclasses.replace(run, vae=from_stored(VAEConfig, source["config"]["vae"]))   # its architecture
    data_cfg, train_cfg, vae_cfg = run.data, run.train, run.vae
    torch.manual_seed(train_cfg.seed)
    splits, train_loader, val_loader = build_loaders(data_cfg, train_cfg, device, dist=dist)
    if splits.train.channels != vae_cfg.in_channels:
        raise ConfigError("in_channels", f"is {vae_cfg.in_channels} but --dataset {data_cfg.dataset} "
                                         f"has {splits.train.channels} channels; pass --in-chans "
                                         f"{splits.train.channels}")
    if data_cfg.image_size % vae_cfg.downsampling:
        raise ConfigError("image_size", f"{data_cfg.image_size} is not divisible by the VAE's "
                                        f"downsampling factor {vae_cfg.downsampling} (2 ** number of --channel-mults)")
    vae = VAE(vae_cfg)
    if source is not None:
        load_weights(vae, autoencoder_weights(source), run.finetune.finetune_decoder)
    vae = vae.to(device)
    model = AutoencoderTraining(vae, run.disc).to(device) if run.stable_diffusion else vae
    n_params = sum(p.numel() for p in vae.parameters())
    latent_shape = vae_cfg.latent_shape(data_cfg.image_size)
    if dist.is_main:
        print(f"VAE: {n_params / 1e6:.2f}M parameters, latent {'x'.join(map(str, latent_shape))}, "
              f"{len(splits.train)} train / {len(splits.test)} val images, device {device}, "
              f"precision {train_cfg.precision}")
    perceptual = perceptual_distance(run.loss, device) if run.stable_diffusion else None
    loss_net = loss_network_digest(perceptual)
    if resumed is not None and resumed["config"].get("perceptual_net_sha256", loss_net) != loss_net:
        raise ConfigError("perceptual_net", "holds other weights than the network this checkpoint was trained "
                                            "against; resume with the file it was started with (its config.json)")
    run_config = save_run_config(vars(run), train_cfg.save_dir, dist)
    run_config.update(kind="vae", perceptual_net_sha256=loss_net)
    fixed = val_loader.spread(8)[0]

    trainer = Trainer(model, updates(model, run, perceptual), train_loader, val_loader, train_cfg, run_config=run_config,
                      device=device, epoch_hook=lambda t: log_images(t, fixed, latent_shape), dist=dist)
    trainer.fit(resume_state=resumed)
    report(trainer)
    if train_cfg.visualize and dist.is_main:
        vae_figures(autoencoder_of(trainer.eval_model), trainer.history, val_loader.spread(256)[0], train_cfg.save_dir)
    return Trained(trainer)


@torch.no_grad()
def fit_sigma(vae: VAE, loader: BatchLoader, limit: int, generator: torch.Generator) -> float:
    """Maximum-likelihood sigma of a Gaussian decoder: sqrt(mean squared error), z ~ q(z|x)."""
    total, count = 0.0, 0
    for x, _ in loader.epoch(0):
        x_hat = vae.decode(vae.encode(x).sample(generator))
        total += (x_hat - x).pow(2).sum().item()
        count += x.numel()
        if count >= limit * x[0].numel():
            break
    return math.sqrt(total / count)


@torch.no_grad()
def evaluate_vae(vae: VAE, test: BatchLoader, sigma: float, generator: torch.Generator,
                 limit: int | None = None, reconstructions: list | None = None) -> dict:
    """The test metrics of `sdlab-eval-vae` (its docstring) over `test` (the first `limit`
    images, rounded up to a batch). `reconstructions`: a list that receives the uint8 decoded
    posterior means, batch by batch (to score them as samples)."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0, "kl_bits": 0.0, "nelbo_bpd": 0.0}
    spectra = {"real": 0.0, "recon": 0.0}
    means, n = [], 0
    batches = min(len(test), -(-limit // test.global_batch)) if limit else len(test)
    for x, _ in tqdm(test.epoch(0), desc="evaluating", total=batches, leave=False):
        q = vae.encode(x)
        x_mode = vae.decode(q.mode()).float()
        x_hat = vae.decode(q.sample(generator))
        log_scale = torch.full_like(x_hat, math.log(sigma))
        nll = -discretized_gaussian_log_likelihood(x, x_hat, log_scale).flatten(1).sum(1)
        kl = q.kl()
        sums["mse"] += (x_mode - x).pow(2).flatten(1).mean(1).sum().item()
        sums["psnr"] += psnr(x_mode, x).sum().item()
        sums["ssim"] += structural_similarity_index_measure(x_mode, x, data_range=(-1.0, 1.0), reduction="sum").item()
        sums["kl_bits"] += (kl / math.log(2)).sum().item()
        sums["nelbo_bpd"] += bits_per_dim(nll + kl, x[0].numel()).sum().item()
        spectra["real"] += radial_power_spectrum(x)
        spectra["recon"] += radial_power_spectrum(x_mode.clamp(-1, 1))
        means.append(q.mean.float().cpu())
        if reconstructions is not None:
            reconstructions.append(to_uint8(x_mode).cpu())
        n += x.shape[0]
        if limit and n >= limit:
            break
    latents = torch.cat(means)
    result = {k: v / n for k, v in sums.items()}
    result.update(images=n, sigma=sigma, latent_mean=latents.mean().item(), latent_std=latents.std().item(),
                  scale_factor=1.0 / latents.std().item(),
                  high_freq_ratio=high_frequency_ratio(spectra["recon"], spectra["real"]),
                  spectrum_real=(spectra["real"] / n).tolist(), spectrum_recon=(spectra["recon"] / n).tolist())
    return result
