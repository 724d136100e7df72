"""Synthetic captioned scenes: one shape whose colour, kind, size and position the caption names.

    "a small red disc at the top left", "a large blue cross in the centre", ...

4 colours x 4 shapes x 2 sizes x 5 positions = 160 combinations, drawn on a dark, slightly
tinted background with pixel noise; everything follows from the seed. The caption is a function
of the parameters, so whether a generated image matches its prompt can be *checked*:
`read_scene` recovers the four attributes from pixels with the generator's own definitions
(the palette, the shape masks, the size radii and the position centres), and on the
generator's own images it is exact (tests/test_text.py).

Held out: four (colour, shape) pairs, one per colour and one per shape (a Latin square), never
drawn for training or validation. Prompts naming them test composition: the model has seen
"red" and "cross", but never a red cross.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .images import ImageSet

COLOURS = {"red": (0.90, 0.15, 0.10), "green": (0.15, 0.75, 0.15),
           "blue": (0.15, 0.30, 0.95), "yellow": (0.95, 0.85, 0.10)}
SHAPES = ("disc", "square", "triangle", "cross")
SIZES = {"small": 0.14, "large": 0.22}                  # radius / image side
POSITIONS = {"at the top left": (0.28, 0.28), "at the top right": (0.72, 0.28),
             "at the bottom left": (0.28, 0.72), "at the bottom right": (0.72, 0.72),
             "in the centre": (0.5, 0.5)}                 # centre (x, y) / image side
HELD_OUT = (("red", "cross"), ("green", "triangle"), ("blue", "disc"), ("yellow", "square"))
JITTER = 0.04                                             # position jitter / image side
ATTRIBUTES = ("colour", "shape", "size", "position")


def caption(colour: str, shape: str, size: str, position: str) -> str:
    return f"a {size} {colour} {shape} {position}"


def combinations(held_out: bool = False) -> list[tuple[str, str, str, str]]:
    """(colour, shape, size, position) tuples seen in training, or only the held-out ones."""
    every = itertools.product(COLOURS, SHAPES, SIZES, POSITIONS)
    return [c for c in every if ((c[0], c[1]) in HELD_OUT) == held_out]


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-test of a shape of radius 1 centred at 0 (x right, y down)."""
    if shape == "disc":
        return x**2 + y**2 < 1
    if shape == "square":
        return np.maximum(abs(x), abs(y)) < 0.85
    if shape == "triangle":                               # apex up, base below the centre
        return (y < 0.75) & (y > 2 * abs(x) - 1)
    if shape == "cross":
        return (np.minimum(abs(x), abs(y)) < 0.3) & (np.maximum(abs(x), abs(y)) < 1)
    raise ValueError(f"unknown shape {shape!r}")


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(coords, coords, indexing="ij")     # (H, W) in (0, 1): u = x, v = y
    return u, v


def render(params: list[tuple[str, str, str, str]], size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (n, 3, size, size) of the (colour, shape, size, position) tuples."""
    n = len(params)
    u, v = _pixel_grid(size)
    grey = rng.uniform(0.08, 0.30, (n, 1, 1, 1))
    background = grey + rng.uniform(-0.03, 0.03, (n, 3, 1, 1))
    images = np.broadcast_to(background, (n, 3, size, size)).copy()
    jitter = rng.uniform(-JITTER, JITTER, (n, 2))
    shade = rng.uniform(-0.05, 0.05, (n, 3))
    for i, (colour, shape, scale, position) in enumerate(params):
        cx, cy = np.array(POSITIONS[position]) + jitter[i]
        r = SIZES[scale]
        mask = shape_mask(shape, (u - cx) / r, (v - cy) / r)
        images[i][:, mask] = (np.array(COLOURS[colour]) + shade[i])[:, None]
    images += rng.normal(0, 0.015, images.shape)
    return np.clip(images * 255, 0, 255).round().astype(np.uint8)


def make_scenes(n: int, size: int = 32, seed: int = 0):
    """`n` captioned scenes of the combinations seen in training (labels: the shape's index).

    Returns an `ImageSet` with `captions`; the same seed gives the same images and captions."""

    rng = np.random.default_rng(seed)
    seen = combinations()
    params = [seen[i] for i in rng.integers(0, len(seen), n)]
    images = torch.from_numpy(render(params, size, rng))
    labels = torch.tensor([SHAPES.index(p[1]) for p in params], dtype=torch.int64)
    return ImageSet(images, labels, SHAPES, captions=tuple(caption(*p) for p in params))


# ---------------------------------------------------------------- the checker

def _templates(size: int) -> dict:
    """(shape, size name) -> (mask at the image centre, offset of its centroid from that centre)."""
    u, v = _pixel_grid(size)
    out = {}
    for shape, scale in itertools.product(SHAPES, SIZES):
        r = SIZES[scale]
        mask = shape_mask(shape, (u - 0.5) / r, (v - 0.5) / r)
        ys, xs = np.nonzero(mask)
        out[shape, scale] = (xs.mean() + 0.5) / size - 0.5, (ys.mean() + 0.5) / size - 0.5
    return out


def read_scene(image: torch.Tensor) -> dict[str, str | None]:
    """The attributes of one uint8 image (3, H, W): {"colour", "shape", "size", "position"}.

    The background is the image's median colour; the shape is every pixel farther than 0.3 (RGB
    in [0, 1]) from it. Colour: the palette entry nearest its mean colour. Shape and size: the
    template (the generator's own mask) with the highest intersection-over-union once placed on
    the measured centroid. Position: the position centre nearest that template's centre. All
    None when no pixel stands out."""
    img = image.float().numpy() / 255.0
    size = img.shape[-1]
    background = np.median(img.reshape(3, -1), axis=1)
    fg = np.linalg.norm(img - background[:, None, None], axis=0) > 0.3
    if fg.sum() == 0:
        return dict.fromkeys(ATTRIBUTES)
    mean = img[:, fg].mean(1)
    colour = min(COLOURS, key=lambda c: np.linalg.norm(mean - np.array(COLOURS[c])))
    ys, xs = np.nonzero(fg)
    cx, cy = (xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size
    u, v = _pixel_grid(size)
    best, best_iou = None, -1.0
    for (shape, scale), (ox, oy) in _templates(size).items():
        r = SIZES[scale]
        centre = (cx - ox, cy - oy)
        template = shape_mask(shape, (u - centre[0]) / r, (v - centre[1]) / r)
        iou = (template & fg).sum() / max((template | fg).sum(), 1)
        if iou > best_iou:
            best, best_iou = (shape, scale, centre), iou
    shape, scale, centre = best
    position = min(POSITIONS, key=lambda p: np.hypot(*(np.array(POSITIONS[p]) - centre)))
    return {"colour": colour, "shape": shape, "size": scale, "position": position}


def attribute_accuracy(images: torch.Tensor, wanted: list[tuple[str, str, str, str]]) -> dict[str, float]:
    """Share of images (N, 3, H, W) uint8 whose checked attribute equals the prompt's, per
    attribute, plus "all" (every attribute right)."""
    hits = {a: 0 for a in (*ATTRIBUTES, "all")}
    for image, params in zip(images, wanted):
        read = read_scene(image)
        right = [read[a] == p for a, p in zip(ATTRIBUTES, params)]
        for a, ok in zip(ATTRIBUTES, right):
            hits[a] += ok
        hits["all"] += all(right)
    return {a: h / len(wanted) for a, h in hits.items()}
