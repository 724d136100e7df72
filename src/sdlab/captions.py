"""Where captions come from, for text-conditioned training.

    scenes            the caption is a function of the scene's parameters (`scenes.py`)
    folder            ROOT/metadata.jsonl, one {"file_name": ..., "text": ...} per line: the
                      image-folder layout of Hugging Face's text-to-image examples
    any labelled set  a template over the class name, chosen per image with a seed:
                      "a photo of a horse", "a blurry photo of a horse", ...
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .images import DataError, ImageSet

TEMPLATES = (
    "a photo of a {}", "a blurry photo of a {}", "a close-up photo of a {}", "a bright photo of a {}",
    "a dark photo of a {}", "a small photo of the {}", "a low-resolution photo of a {}", "a {}",
)


def class_captions(labels, classes: tuple[str, ...], seed: int = 0) -> tuple[str, ...]:
    """One templated caption per label (class names with "_" read as spaces)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(TEMPLATES), len(labels))
    return tuple(TEMPLATES[k].format(classes[int(y)].replace("_", " ")) for k, y in zip(picks, labels))


def with_captions(split: ImageSet, seed: int) -> ImageSet:
    """`split` with its own captions, or templated ones from its class names."""
    if split.captions is not None:
        return split
    return ImageSet(split.images, split.labels, split.classes, class_captions(split.labels, split.classes, seed))


def read_metadata(path: Path) -> list[tuple[str, str]]:
    """(file name, caption) pairs of a metadata.jsonl; DataError naming the file and line."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name, text = record["file_name"], record["text"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{number}: expected a JSON object with \"file_name\" and \"text\"") from None
        if not (path.parent / name).is_file():
            raise DataError(f"{path}:{number}: no image {path.parent / name}; fix file_name or add the file")
        entries.append((str(name), str(text)))
    if not entries:
        raise DataError(f"{path} lists no images; add lines {{\"file_name\": \"0001.png\", \"text\": \"...\"}}")
    return entries
