"""Reference rows of the offline sample-quality metric, and how long scoring takes.

    python bench/quality_reference.py --data-dir CIFAR_DIR --classifier outputs/classifier/best.pt [--vae VAE.pt]

Scores real images as if they were samples, against the training split (the reference every
row shares): the test split (what a perfect generator would get at this n), the test split
blurred by 2x (bilinear down to half size and back up), the test split with its pixels
shuffled within each image (--num-images of them), and with --vae the VAE's reconstructions of the test split (decoded
posterior means: the best a latent diffusion model on that VAE can do). Prints FD-classifier, KID-classifier and the classifier's accuracy
on each, and the seconds to score 10,000 images with the reference features cached (features
of the 10,000 images, Fréchet distance and KID; sampling excluded).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from sdlab.data import DataConfig, ImageSet, load_splits, to_uint8, to_unit_range
from sdlab.latent import decode_latents, encode_images
from sdlab.trained import load_vae
from sdlab.recipes.quality import QualityConfig, Scorer
from sdlab.recipes.vae import check_scorer


def blurred(images: torch.Tensor) -> torch.Tensor:
    x = to_unit_range(images)
    half = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
    return to_uint8(F.interpolate(half, size=x.shape[-2:], mode="bilinear", align_corners=False))


def shuffled(images: torch.Tensor) -> torch.Tensor:
    b, c, h, w = images.shape
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))
    return images.flatten(2)[:, :, order].reshape(b, c, h, w)


def reconstructed(images: torch.Tensor, vae_path: str, scorer: Scorer) -> torch.Tensor:
    vae, state = load_vae(vae_path, torch.device("cpu"))
    check_scorer(state, scorer.classifier_sha256)       # never the network its loss measured in
    means = encode_images(vae, images, torch.device("cpu"))
    return torch.cat([to_uint8(decode_latents(vae, part, 1.0)) for part in means.split(500)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 as train/<class>/*, test/<class>/*")
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--vae", default=None, help="also score this VAE's reconstructions of the test split")
    parser.add_argument("--cache-dir", default=None, help="reference features cache (default: a temp dir)")
    parser.add_argument("--num-images", type=int, default=10000, help="test images scored per row (the first N "
                        "of a fixed permutation), to match the n of generated rows")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = DataConfig(dataset="folder", data_dir=args.data_dir)
    test = load_splits(data, seed=0).test
    if args.num_images < len(test):
        keep = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.num_images]
        test = ImageSet(test.images[keep], test.labels[keep], test.classes)
    scorer = Scorer(QualityConfig(classifier=args.classifier), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as temp:
        cache = args.cache_dir or temp
        start = time.perf_counter()
        scorer.reference(data, cache)
        print(f"reference features of the train split: {time.perf_counter() - start:.1f} s (once, then cached)")
        rows = [("test split", lambda: test.images), ("test, blurred 2x", lambda: blurred(test.images)),
                ("test, pixels shuffled", lambda: shuffled(test.images))]
        if args.vae:
            rows.append(("test, VAE reconstructions", lambda: reconstructed(test.images, args.vae, scorer)))
        for name, make in rows:
            images = make()
            start = time.perf_counter()
            result = scorer.score(images, data, cache, test.labels, test.classes)
            seconds = time.perf_counter() - start
            print(f"{name:>26}: FD-classifier {result['fd']:8.3f}  KID {result['kid']:.5f} ± {result['kid_std']:.5f}  "
                  f"accuracy {result['accuracy']:.4f}  ({len(images)} vs {result['num_reference']} train; "
                  f"scored in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
