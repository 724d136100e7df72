"""Measuring generated images: draw them from a checkpoint (or read them), extract features,
compare with a real split (its features cached), and, for class-conditional samples, check that
a classifier sees the class that was asked for. What `sdlab-eval-samples` runs.

    images, labels = draw_samples(pipe, 1000, balanced=True, sampler="dpmpp_2m", sample_steps=15)
    result = evaluate_samples(to_uint8(images), labels, data_cfg, QualityConfig(classifier=...))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import read_cache, save_checkpoint, state_digest
from ..config import option, require, require_choice
from ..data import IMAGE_EXTENSIONS, DataConfig, DataError, decode_image, load_splits, to_uint8
from ..diffusion import SamplerConfig
from ..latent import cache_key
from ..pipeline import DiffusionPipeline
from ..quality import INCEPTION_FILE, ClassifierFeatures, InceptionFeatures, frechet_distance, kernel_distance
from ..runtime import autocast
from .classifier import load_classifier

FEATURES = ("classifier", "inception")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class QualityConfig:
    features: str = option("classifier", "inception: FID/KID as papers report them (needs the weights "
                                         "file); classifier: FD-classifier/KID-classifier, offline",
                           choices=FEATURES)
    classifier: str = option("", "classifier checkpoint (sdlab-train-classifier); also scores the class "
                                 "accuracy of class-conditional samples")
    inception_weights: str = option("", f"path of {INCEPTION_FILE} (default: torch's hub cache)")
    reference_split: str = option("train", "real images compared with: train (as papers) or test", choices=SPLITS)
    kid_subsets: int = option(100, "KID: random subsets averaged")
    kid_subset_size: int = option(1000, "KID: features per subset (at most the smaller set)")
    feature_batch: int = option(500, "images per feature-extractor pass")
    eval_every: int = option(0, "training: score samples every this many epochs (0: never)")
    eval_samples: int = option(500, "training: images drawn (fixed seed) for each score")

    def __post_init__(self):
        require_choice(self.features, FEATURES, "features")
        require_choice(self.reference_split, SPLITS, "reference_split")
        require(self.eval_every >= 0, "eval_every", f"must be >= 0 (got {self.eval_every})")
        for name in ("kid_subsets", "kid_subset_size", "feature_batch", "eval_samples"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")


@torch.no_grad()
def draw_samples(pipe: DiffusionPipeline, num: int, *, labels: torch.Tensor | None = None,
                 prompts: list[str] | None = None, balanced: bool = False, prompt_template: str = "a photo of a {}",
                 guidance_scale: float = 1.0, seed: int = 0, batch_size: int = 256,
                 precision: str = "auto", progress: bool = False, sampler: SamplerConfig | str | None = None,
                 **options) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`num` images (num, C, H, W) in [-1, 1] on the CPU, in batches, from one seeded generator.

    labels: the class of each image (class-conditional models); `balanced` instead asks for
    classes 0, 1, ..., K-1, 0, ... prompts: the prompt of each image (text-conditioned models;
    with `balanced`, `prompt_template` filled with the names of the classes of its training data).
    sampler, options: as for the pipeline (a SamplerConfig or a name, plus field overrides,
    negative_prompt, init_image, strength, mask). precision: one of `runtime.PRECISIONS` (auto: the
    device's). Returns the images and the labels used (None: unconditional).
    """
    device = pipe.device
    asked = {"labels": labels, "prompt": prompts}       # one condition per image, sliced per batch
    if balanced:     # (a text model's labels only name the class each prompt asks for, for scoring)
        asked, labels = pipe.conditioning.balanced(num, prompt_template)
    g = torch.Generator(device).manual_seed(seed)
    chunks = []
    with autocast(device, precision):
        for start in range(0, num, batch_size):
            part = {k: None if v is None else v[start:start + batch_size] for k, v in asked.items()}
            chunks.append(pipe(min(batch_size, num - start), guidance_scale=guidance_scale, generator=g,
                               progress=progress, sampler=sampler, **part, **options).float().cpu())
    return torch.cat(chunks), labels


def read_samples(path: str, image_size: int) -> torch.Tensor:
    """Generated images from a folder of image files (sorted by name) or a tensor file (.pt:
    uint8, or float in [-1, 1]); returned as uint8 (N, C, H, W)."""
    source = Path(path)
    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"--samples {source}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return torch.from_numpy(np.stack([decode_image(f, image_size) for f in files])).permute(0, 3, 1, 2)
    if source.suffix != ".pt" or not source.is_file():
        raise DataError(f"--samples {source}: give a folder of images or a .pt tensor file")
    images = torch.load(source, weights_only=True)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise DataError(f"--samples {source}: expected one (N, C, H, W) tensor")
    return images if images.dtype == torch.uint8 else to_uint8(images.float())


class Scorer:
    """The feature extractor of a QualityConfig and the reference split's features (cached)."""

    def __init__(self, cfg: QualityConfig, device: torch.device):
        require(cfg.features != "classifier" or bool(cfg.classifier), "classifier",
                "--features classifier needs --classifier CKPT (train one with sdlab-train-classifier)")
        self.cfg, self.device = cfg, device
        self.classifier, self.classes, self._reference = None, (), {}
        if cfg.classifier:
            model, self.classes = load_classifier(cfg.classifier, device)
            self.classifier = ClassifierFeatures(model)
            self.classifier_sha256 = state_digest(model.state_dict())   # also what `recipes.vae.check_scorer` compares
        if cfg.features == "inception":
            self.extractor, self.key = InceptionFeatures(cfg.inception_weights or None).to(device), "inception-v3"
        else:
            self.extractor, self.key = self.classifier, f"classifier-{self.classifier_sha256[:16]}"

    def _apply(self, module: torch.nn.Module, images: torch.Tensor):
        """`module` over uint8 images (N, C, H, W) in batches; its outputs (a tuple stays a
        tuple) concatenated on the CPU."""
        parts = images.split(self.cfg.feature_batch)
        outs = [module(part.to(self.device)) for part in tqdm(parts, desc="features", leave=False, disable=len(parts) < 4)]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat([out[i].cpu() for out in outs]) for i in range(len(outs[0])))
        return torch.cat([out.cpu() for out in outs])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> features (N, d) on the CPU."""
        got = self._apply(self.extractor, images)
        return got[0] if isinstance(got, tuple) else got

    def reference(self, data: DataConfig, cache_dir: str | Path) -> torch.Tensor:
        """Features of the reference split, cached in CACHE_DIR keyed by extractor and images
        (and kept in memory: scoring during training reads the data once)."""
        if (data, self.cfg.reference_split) in self._reference:
            return self._reference[data, self.cfg.reference_split]
        splits = load_splits(data, seed=0)
        split = splits.train if self.cfg.reference_split == "train" else splits.test
        path = Path(cache_dir) / f"features-{cache_key(self.key, split)}.pt"
        cached = read_cache(path, lambda c: len(c["features"]) == len(split), "feature cache", "extracting again")
        if cached is not None:
            features = cached["features"]
        else:
            features = self.features(split.images)
            save_checkpoint({"features": features}, path)
        self._reference[data, self.cfg.reference_split] = features
        return features

    @staticmethod
    def class_accuracy(probs: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...]) -> dict:
        """How often the classifier (class probabilities `probs`, (N, K)) sees the intended class:
        overall, per class, and its mean confidence in the intended class."""
        hit = (probs.argmax(1) == labels).float()
        per_class = {name: hit[labels == k].mean().item() for k, name in enumerate(names) if (labels == k).any()}
        return {"accuracy": hit.mean().item(), "confidence": probs[torch.arange(len(labels)), labels].mean().item(),
                "accuracy_per_class": per_class}

    def score(self, images: torch.Tensor, data: DataConfig, cache_dir: str | Path,
              labels: torch.Tensor | None = None, names: tuple[str, ...] = ()) -> dict:
        """The metrics of uint8 `images` against the reference split of `data`."""
        real = self.reference(data, cache_dir)
        if self.extractor is self.classifier:         # one pass gives features and class probabilities
            fake, probs = self._apply(self.classifier, images)
        else:
            fake, probs = self.features(images), None
        kid, kid_std = kernel_distance(real, fake, self.cfg.kid_subsets, self.cfg.kid_subset_size)
        result = {"metric": "FID" if self.cfg.features == "inception" else "FD-classifier",
                  "fd": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std,
                  "num_samples": len(images), "num_reference": len(real),
                  "reference": f"{data.dataset} {self.cfg.reference_split}", "features": self.key}
        if labels is not None and self.classifier is not None:
            if tuple(names) != tuple(self.classes):
                raise DataError(f"--classifier was trained on classes {', '.join(self.classes)}, the samples' "
                                f"model on {', '.join(names)}; use a classifier of the same dataset")
            if probs is None:
                probs = self._apply(self.classifier, images)[1]
            result.update(self.class_accuracy(probs, labels, names))
        return result

    def during_training(self, pipe: DiffusionPipeline, data: DataConfig, cache_dir: str | Path,
                        guidance_scale: float, sampler: SamplerConfig):
        """The trainer's `epoch_metrics`: every `eval_every` epochs, `eval_samples` images drawn
        with seed 0 by the EMA weights, scored as {"eval/fd_classifier" or "eval/fid",
        "eval/kid", and "eval/accuracy" for class-conditional models}."""
        name = "eval/fid" if self.cfg.features == "inception" else "eval/fd_classifier"

        def measure(trainer) -> dict:
            if (trainer.epoch + 1) % self.cfg.eval_every:
                return {}
            pipe.model = trainer.eval_model
            images, labels = draw_samples(pipe, self.cfg.eval_samples, balanced=True, guidance_scale=guidance_scale,
                                          sampler=sampler, precision=trainer.cfg.precision)
            result = self.score(to_uint8(images), data, cache_dir, labels, pipe.class_names)
            found = {name: result["fd"], "eval/kid": result["kid"]}
            if "accuracy" in result:
                found["eval/accuracy"] = result["accuracy"]
            return found

        return measure

