"""Sample quality as papers report it: features of real and generated images, and the Fréchet
and kernel distances between them.

    FID  (Heusel et al. 2017, arXiv:1706.08500): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)),
         the Fréchet distance between Gaussians fitted to Inception-v3 pool features (2048-d).
    KID  (Binkowski et al. 2018, arXiv:1801.01401): the unbiased MMD^2 with the polynomial kernel
         k(x, y) = (x.y / d + 1)^3, averaged over random subsets; unbiased, so two draws of one
         distribution give ~0 at any sample count (FID is biased upward at small n).

The distances are torchmetrics' (`FrechetInceptionDistance`, `KernelInceptionDistance`, fed with
features computed here, so reference features can be cached); the Inception network is
torch-fidelity's port of the TensorFlow graph every FID paper used. Images enter every feature
extractor as uint8: generated images are quantized exactly as a PNG would store them
(`data.to_uint8`), and torch-fidelity resizes 32x32 to 299x299 with its TensorFlow-compatible
bilinear interpolation, as the reference implementation does.

The offline alternative (`ClassifierFeatures`) measures the same distance in the penultimate
features of a classifier trained with `sdlab-train-classifier`: "FD-classifier", never to be
compared with a paper's FID.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .data import to_unit_range
from .errors import UserError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


class GivenFeatures(nn.Module):
    """Identity: lets torchmetrics' metrics take features computed (and cached) beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def radial_power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Sum over images (N, C, S, S) of the channel-mean power |F[x - mean x](u, v)|^2 / S^2,
    averaged over each ring of integer radial frequency r = round(sqrt(u^2 + v^2)), r = 0 .. S/2:
    a (S/2 + 1,) tensor (divide by N for the mean). Natural images fall off roughly as 1/r^2;
    a blurry reconstruction falls below its originals at high r."""
    size = images.shape[-1]
    x = images.float() - images.float().mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(1).sum(0) / size**2               # (S, S)
    f = torch.fft.fftfreq(size, device=x.device) * size
    ring = (f[:, None] ** 2 + f[None, :] ** 2).sqrt().round().long().flatten()
    keep = ring <= size // 2
    sums = torch.bincount(ring[keep], power.flatten()[keep], minlength=size // 2 + 1)
    return (sums / torch.bincount(ring[keep], minlength=size // 2 + 1)).cpu()


def high_frequency_ratio(spectrum: torch.Tensor, reference: torch.Tensor) -> float:
    """Power of `spectrum` over the upper half of radial frequencies (r > S/4) relative to
    `reference`'s there: 1 keeps the originals' fine detail, below 1 is blur, above 1 is noise."""
    upper = slice(len(spectrum) // 2 + 1, None)
    return (spectrum[upper].sum() / reference[upper].sum()).item()


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets real (N, d) and fake (M, d)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=GivenFeatures(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return metric.compute().item()


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: mean and std over `subsets` random subsets (of min(subset_size, N, M) features each)
    of the unbiased polynomial-kernel MMD^2; the subsets are drawn with `seed`."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():      # "will save all extracted features": they are given, already in memory
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=GivenFeatures(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return mean.item(), std.item()


class ClassifierFeatures(nn.Module):
    """uint8 images (B, C, H, W) -> (penultimate features (B, d), class probabilities (B, K)) of
    a trained `classifier.Classifier` (features of the image as given; probabilities from its
    test-time logits, `Classifier.predict`)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.cfg.widths[-1]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_unit_range(images)
        features = self.classifier.features(x)
        return features.float(), self.classifier.predict(x, features).float().softmax(1)


class InceptionFeatures(nn.Module):
    """uint8 images (B, 3 or 1, H, W) -> Inception-v3 pool features (B, 2048), torch-fidelity's
    network with the weights at `weights` (None: torch's hub cache, where torch-fidelity keeps
    them). Raises UserError with one line naming the file to fetch when they are not there."""

    num_features = 2048

    def __init__(self, weights: str | None = None):
        super().__init__()
        path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if not path.is_file():
            where = f"--inception-weights {path}: no such file" if weights else f"no Inception weights in {path.parent}"
            raise UserError(f"{where}; FID needs {INCEPTION_FILE} (download {INCEPTION_URL} on a machine "
                            f"with internet, then pass --inception-weights PATH or put it in {path.parent}), "
                            "or use --features classifier, which needs no download")
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise UserError("FID needs the torch-fidelity package: pip install torch-fidelity") from None
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=str(path)).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images)[0].float()
