"""Reference rows of the offline sample-quality metric, and how long scoring takes.

    python bench/quality_reference.py --data-dir CIFAR_DIR --classifier outputs/classifier/best.pt

Scores real images as if they were samples, against the training split (the reference every
row shares): the test split (what a perfect generator would get at this n), the test split
blurred by 2x (bilinear down to half size and back up), and the test split with its pixels
shuffled within each image. Prints FD-classifier, KID-classifier and the classifier's accuracy
on each, and the seconds to score 10,000 images with the reference features cached (features
of the 10,000 images, Fréchet distance and KID; sampling excluded).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from sdlab.data import DataConfig, load_splits, to_uint8, to_unit_range
from sdlab.recipes.quality import QualityConfig, Scorer


def blurred(images: torch.Tensor) -> torch.Tensor:
    x = to_unit_range(images)
    half = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
    return to_uint8(F.interpolate(half, size=x.shape[-2:], mode="bilinear", align_corners=False))


def shuffled(images: torch.Tensor) -> torch.Tensor:
    b, c, h, w = images.shape
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))
    return images.flatten(2)[:, :, order].reshape(b, c, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 as train/<class>/*, test/<class>/*")
    parser.add_argument("--classifier", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = DataConfig(dataset="folder", data_dir=args.data_dir)
    test = load_splits(data, seed=0).test
    scorer = Scorer(QualityConfig(classifier=args.classifier), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        scorer.reference(data, cache)
        print(f"reference features of the train split: {time.perf_counter() - start:.1f} s (once, then cached)")
        for name, images in (("test split", test.images), ("test, blurred 2x", blurred(test.images)),
                             ("test, pixels shuffled", shuffled(test.images))):
            start = time.perf_counter()
            result = scorer.score(images, data, cache, test.labels, test.classes)
            seconds = time.perf_counter() - start
            print(f"{name:>22}: FD-classifier {result['fd']:8.3f}  KID {result['kid']:.5f} ± {result['kid_std']:.5f}  "
                  f"accuracy {result['accuracy']:.4f}  ({len(images)} vs {result['num_reference']} train; "
                  f"scored in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
