"""A small image classifier whose features make an offline sample-quality metric.

FID needs Inception-v3 weights that cannot always be downloaded; a classifier trained here on the
same data gives features that need no download. `sdlab-eval-samples --features classifier`
reports the Fréchet distance in its penultimate features ("FD-classifier", never FID: the
numbers are not comparable with papers') and, for class-conditional samples, how often the
classifier recognises the intended class.

The network is a plain VGG-like stack in the style of the fast CIFAR-10 trainers (Keller Jordan's
airbench; Page's "How to train your ResNet"): a fixed patch-whitening stem (`PatchWhitening`, fitted
to the training images before the first step), then per width a conv, a 2x2 max pool and a second
conv, each followed by BatchNorm and GELU; global max pooling; a linear layer.
Training adds label smoothing and random translations of up to `translate` pixels (reflection
padding) to the loader's horizontal flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import option, require, require_finite
from .randomness import NoiseSource


@dataclass(frozen=True)
class ClassifierConfig:
    in_channels: int = option(3, "image channels")
    widths: tuple[int, ...] = option((32, 64, 128), "channels of each stage (each halves the map size)")
    num_classes: int = option(10, "classes (set from the dataset)")
    label_smoothing: float = option(0.2, "label smoothing of the cross-entropy")
    translate: int = option(2, "random translation of training images, in pixels (0 disables)")
    test_flip: bool = option(True, "at test time, average each image's logits with its mirror "
                                   "image's (set from the data's --hflip)")

    def __post_init__(self):
        require_finite(self)
        require(len(self.widths) >= 1 and min(self.widths) >= 1, "widths", f"need positive widths (got {self.widths})")
        require(self.num_classes >= 2, "num_classes", f"must be >= 2 (got {self.num_classes})")
        require(0 <= self.label_smoothing < 1, "label_smoothing", f"must be in [0, 1) (got {self.label_smoothing})")
        require(self.translate >= 0, "translate", f"must be >= 0 (got {self.translate})")


class PatchWhitening(nn.Module):
    """A fixed 2x2 convolution (no padding, so H, W -> H-1, W-1) that whitens image patches.

    With p the flattened 2x2 patches (dimension d = 4C) and their second moment
    Sigma = E[p p^T] = U diag(lambda) U^T, the filters are the rows of diag(lambda + eps)^(-1/2) U^T,
    so the responses have (nearly) the identity second moment: no direction of pixel space
    starts out louder than another, and the first learned layer sees decorrelated inputs. Each
    filter comes with its negative (2d channels) so that the activation that follows keeps both
    signs. The filters are a buffer (fitted, never trained); the bias is learned. `eps` (in the
    units of [-1, 1] pixels, squared) keeps the faintest directions, JPEG noise among them, from
    being amplified without bound."""

    PATCH = 2

    def __init__(self, in_channels: int, eps: float = 5e-4):
        super().__init__()
        d = in_channels * self.PATCH ** 2
        self.eps = eps
        self.register_buffer("weight", torch.zeros(2 * d, in_channels, self.PATCH, self.PATCH))
        self.bias = nn.Parameter(torch.zeros(2 * d))

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from (N, C, H, W) images in [-1, 1]."""
        c, p = self.weight.shape[1], self.PATCH
        patches = images.double().unfold(2, p, 1).unfold(3, p, 1)          # (N, C, H-1, W-1, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * p * p)  # rows: one patch each
        second_moment = patches.T @ patches / patches.shape[0]
        lam, u = torch.linalg.eigh(second_moment)
        filters = (u / (lam + self.eps).sqrt()).T.reshape(-1, c, p, p)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]


def feature_map_size(cfg: ClassifierConfig, image_size: int) -> int:
    """Side of the last stage's map for `image_size` inputs: the whitening stem takes one pixel,
    each stage's max pool halves (rounding down). Below 1 the network does not fit the images."""
    return (image_size - PatchWhitening.PATCH + 1) >> len(cfg.widths)


class Classifier(nn.Module):
    """(B, C, H, W) images in [-1, 1] -> (B, num_classes) logits; `features` gives the pooled
    (B, widths[-1]) penultimate features the Fréchet distance is measured in."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        stem = PatchWhitening(cfg.in_channels)
        layers: list[nn.Module] = [stem, nn.GELU()]
        prev = stem.out_channels
        for width in cfg.widths:
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(width), nn.GELU(), *conv_bn(width, width), nn.GELU()]
            prev = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, cfg.num_classes, bias=False)

    @property
    def stem(self) -> PatchWhitening:
        return self.body[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global max pool of the last stage, (B, widths[-1])."""
        return self.body(x).amax(dim=(2, 3))

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map at the end of each stage (after its last GELU), one per width:
        (B, widths[i], H_i, W_i), each half the size of the one before."""
        outs, per_stage = [], 7                      # conv, pool, norm, GELU, conv, norm, GELU
        x = self.body[1](self.body[0](x))            # the whitening stem and its GELU
        for start in range(2, len(self.body), per_stage):
            x = self.body[start:start + per_stage](x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def predict(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Test-time logits: those of x, averaged with those of its mirror image when the classifier
        was trained on flipped images too (`cfg.test_flip`; test-time augmentation, measured in
        BENCHMARKS.md, "Offline quality metric"). `features`: self.features(x), when already
        computed."""
        logits = self.head(self.features(x) if features is None else features)
        if self.cfg.test_flip:
            logits = (logits + self(x.flip(-1))) / 2
        return logits


def translate(images: torch.Tensor, shift: int, draw: NoiseSource) -> torch.Tensor:
    """Shift each image by (dy, dx), each uniform in {-shift..shift}, with reflection padding."""
    b, _, h, w = images.shape
    padded = F.pad(images, (shift,) * 4, mode="reflect")
    dy, dx = draw.integers(2 * shift + 1, b, images.device), draw.integers(2 * shift + 1, b, images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]     # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]     # (B, 1, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    out = torch.empty_like(images)          # keeps the batch's memory format
    return out.copy_(padded[batch, channel, rows, cols])


def classifier_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: ClassifierConfig,
                    generator: torch.Generator | NoiseSource | None = None, step: int | None = None) -> dict:
    """Cross-entropy with label smoothing (training adds random translations; `step` None means
    validation: plain images scored with `Classifier.predict`, and the loss is also reported
    without smoothing).

    Returns {"loss", "accuracy"} (and "nll", the unsmoothed cross-entropy, in validation)."""
    if step is not None and cfg.translate:
        images = translate(images, cfg.translate, NoiseSource.of(generator))
    logits = (model(images) if step is not None else model.predict(images)).float()
    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    terms = {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()}
    if step is None:
        terms["nll"] = F.cross_entropy(logits, labels)
    return terms
