"""The types every dataset is decoded into: an `ImageSet` per split, the `Splits` of a run, and
the `DataError` a dataset that cannot be read raises. They sit below the dataset registry
(`data`), the captions (`captions`) and the generated scenes (`scenes`), which all use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError


class DataError(UserError):
    """A dataset cannot be loaded; the message names the flag or file and the fix."""


@dataclass
class ImageSet:
    """A decoded split: images (N, C, H, W) uint8, labels (N,) int64, class names, and the
    captions where the dataset has them (scenes, a folder with metadata.jsonl).

    Latent diffusion reuses it for VAE latents: then `images` are float, already scaled. A
    text-conditioned run replaces the labels by the captions' token ids (N, L)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    captions: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]


@dataclass
class Splits:
    """The training split and the held-out split (the test split where the dataset has one)."""

    train: ImageSet
    test: ImageSet
