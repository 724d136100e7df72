"""Datasets -> in-memory uint8 tensors -> batches in [-1, 1].

Every dataset is decoded once into an `ImageSet`: uint8 images (N, C, H, W) and int64 labels
(N,). Batches are cut from that tensor with a seeded permutation, flipped as a batch and
converted to float in [-1, 1] on the target device, with no per-sample Python. This module and
`visualize` are the only places that convert between uint8 and [-1, 1].

Datasets: cifar10 (torchvision), fashion-mnist, mnist (torchvision), folder (image files laid out
`train/<class>/*` and `test/<class>/*`, or one `<class>/*` tree split with a seed; or images with
captions listed in a `metadata.jsonl`, Hugging Face's image-folder layout), synthetic
(procedural coloured shapes on textured backgrounds, for tests and offline demos), scenes
(synthetic captioned scenes, `scenes.py`).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import read_cache, remove_stale_temporaries, save_checkpoint
from .config import option, require, require_choice, require_finite
from .captions import read_metadata
from .images import DataError, ImageSet, Splits
from .scenes import make_scenes

DATASETS = ("cifar10", "fashion-mnist", "mnist", "folder", "synthetic", "scenes")
METADATA = "metadata.jsonl"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SYNTHETIC_CLASSES = (
    "disc", "square", "triangle", "diamond", "ring", "cross", "hbar", "vbar", "ellipse", "corner",
)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("cifar10", "dataset to train on", choices=DATASETS)
    data_dir: str = option("./data", "where datasets live (cifar10 is downloaded here when missing)")
    image_size: int = option(32, "images are resized once, at load, to this square size")
    batch_size: int = option(128, "images per batch on each process (under torchrun the global "
                                         "batch is this x the number of processes)")
    hflip: bool = option(True, "random horizontal flips of training batches")
    val_fraction: float = option(0.1, "held-out share of a folder that has no train/test split")
    num_workers: int = option(2, "threads decoding image files (folder dataset)")
    synthetic_size: int = option(2000, "training images of the synthetic and scenes datasets")
    gpu_cache: bool = option(False, "keep the uint8 dataset on the GPU when training there")

    def __post_init__(self):
        require_finite(self)
        require_choice(self.dataset, DATASETS, "dataset")
        require(self.image_size >= 8, "image_size", f"must be >= 8 (got {self.image_size})")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})")
        require(0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1) (got {self.val_fraction})")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0 (got {self.num_workers})")
        require(self.synthetic_size >= 2, "synthetic_size", f"must be >= 2 (got {self.synthetic_size})")


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in [0, 255] (rounded, clamped)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------- loading

def load_splits(cfg: DataConfig, seed: int = 0) -> Splits:
    """Decode `cfg.dataset` into memory at `cfg.image_size`. Raises DataError with a fix."""
    if cfg.dataset in ("synthetic", "scenes"):
        make = make_synthetic if cfg.dataset == "synthetic" else make_scenes
        n_test = max(cfg.synthetic_size // 5, 1)
        splits = Splits(make(cfg.synthetic_size, cfg.image_size, seed=0),
                        make(n_test, cfg.image_size, seed=1))
    elif cfg.dataset == "folder":
        splits = _load_folder(Path(cfg.data_dir), cfg, seed)
    else:
        splits = Splits(*(_load_torchvision(cfg, train) for train in (True, False)))
    for name, split in (("training", splits.train), ("held-out", splits.test)):
        if len(split) == 0:
            raise DataError(f"the {name} split of --dataset {cfg.dataset} is empty; check --data-dir")
    return splits


def _load_torchvision(cfg: DataConfig, train: bool) -> ImageSet:
    import torchvision.datasets as tvd

    kind = {"cifar10": tvd.CIFAR10, "mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[cfg.dataset]
    try:
        ds = kind(root=cfg.data_dir, train=train, download=True)
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError... when offline
        archive = {"cifar10": "cifar-10-python.tar.gz", "mnist": "MNIST/raw/*.gz",
                   "fashion-mnist": "FashionMNIST/raw/*.gz"}[cfg.dataset]
        raise DataError(
            f"{cfg.dataset} is not in {cfg.data_dir} and could not be downloaded "
            f"({type(err).__name__}; offline?). Put {archive} in {cfg.data_dir} "
            f"or use --dataset folder --data-dir DIR") from None
    images = torch.as_tensor(np.asarray(ds.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    classes = CIFAR10_CLASSES if cfg.dataset == "cifar10" else tuple(ds.classes)
    return ImageSet(_resize(images.contiguous(), cfg.image_size), labels, classes)


def _resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to (N, C, size, size) once, with antialiasing."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = [F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round().clamp(0, 255).to(torch.uint8)
           for part in images.split(chunk)]
    return torch.cat(out)


def _list_classes(root: Path) -> list[tuple[str, list[Path]]]:
    classes = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            classes.append((folder.name, files))
    return classes


def _load_folder(root: Path, cfg: DataConfig, seed: int) -> Splits:
    if not root.is_dir():
        raise DataError(f"--data-dir {root} does not exist; point it at a folder of "
                        "train/<class>/*.png and test/<class>/*.png (or <class>/*.png)")
    if (root / METADATA).is_file() or (root / "train" / METADATA).is_file():
        return _load_captioned_folder(root, cfg, seed)
    halves = [name for name in ("train", "test") if (root / name).is_dir()]
    if len(halves) == 1:
        other = {"train": "test", "test": "train"}[halves[0]]
        raise DataError(f"--data-dir {root} has {halves[0]}/ but no {other}/: add {other}/<class>/ "
                        f"folders, or lay out only <class>/ folders to split with --val-fraction")
    if halves:
        if [n for n, _ in _list_classes(root / "train")] != [n for n, _ in _list_classes(root / "test")]:
            raise DataError(f"--data-dir {root}: train/ and test/ hold different class folders; "
                            "give both the same <class>/ folders")
        return Splits(*(_decode_tree(root / s, cfg) for s in ("train", "test")))
    return _split(_decode_tree(root, cfg), cfg.val_fraction, seed)


def _split(everything: ImageSet, val_fraction: float, seed: int) -> Splits:
    """A seeded random split of one set into training and held-out images."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(everything), generator=g)
    n_test = max(1, int(round(val_fraction * len(everything))))
    captions = everything.captions

    def pick(idx: torch.Tensor) -> ImageSet:
        return ImageSet(everything.images[idx], everything.labels[idx], everything.classes,
                        None if captions is None else tuple(captions[i] for i in idx.tolist()))

    return Splits(pick(order[n_test:]), pick(order[:n_test]))


def _load_captioned_folder(root: Path, cfg: DataConfig, seed: int) -> Splits:
    """Images with captions: ROOT/metadata.jsonl (split with --val-fraction) or
    ROOT/train/metadata.jsonl and ROOT/test/metadata.jsonl; each line {"file_name", "text"},
    file names relative to the metadata file's folder."""
    if (root / "train" / METADATA).is_file():
        if not (root / "test" / METADATA).is_file():
            raise DataError(f"--data-dir {root} has train/{METADATA} but no test/{METADATA}: add one, "
                            f"or put a single {METADATA} in {root} to split with --val-fraction")
        return Splits(*(_decode_captioned(root / s, cfg) for s in ("train", "test")))
    return _split(_decode_captioned(root, cfg), cfg.val_fraction, seed)


def _decode_captioned(folder: Path, cfg: DataConfig) -> ImageSet:

    entries = read_metadata(folder / METADATA)
    files = [folder / name for name, _ in entries]
    with ThreadPoolExecutor(max(cfg.num_workers, 1)) as pool:
        arrays = list(pool.map(lambda f: decode_image(f, cfg.image_size), files, chunksize=256))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.zeros(len(files), dtype=torch.int64), ("image",),
                    tuple(text for _, text in entries))


def _decode_tree(root: Path, cfg: DataConfig) -> ImageSet:
    classes = _list_classes(root)
    if not classes:
        raise DataError(f"--data-dir {root} holds no class folders with images "
                        f"({', '.join(IMAGE_EXTENSIONS)}); expected {root}/<class>/*.png")
    files = [f for _, fs in classes for f in fs]
    labels = torch.tensor([i for i, (_, fs) in enumerate(classes) for _ in fs], dtype=torch.int64)
    names = tuple(name for name, _ in classes)
    cache = _cache_path(root, files, cfg.image_size)

    def fits(cached: dict) -> bool:
        images = cached["images"]
        return (images.dtype == torch.uint8 and images.ndim == 4 and images.shape[0] == len(files)
                and tuple(images.shape[2:]) == (cfg.image_size, cfg.image_size))

    stored = read_cache(cache, fits, "image cache", "decoding the folder again") if cache is not None else None
    if stored is not None:
        return ImageSet(stored["images"], labels, names)
    with ThreadPoolExecutor(max(cfg.num_workers, 1)) as pool:
        arrays = list(pool.map(lambda f: decode_image(f, cfg.image_size), files, chunksize=256))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if cache is not None:
        _write_cache(cache, images)
    return ImageSet(images, labels, names)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Image file -> (size, size, 3) uint8 RGB (centre-cropped and bicubic-resized when its size
    differs); DataError naming the file when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path} ({err}); remove or replace it") from None
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _cache_path(root: Path, files: list[Path], size: int) -> Path | None:
    """Decoded folders are cached beside the data, keyed by the image size and each file's
    name, byte size, inode, mtime and ctime. The ctime changes with every write to a file and
    cannot be set back (unlike the mtime, which `cp -p`, rsync and unzip restore), so a changed
    file is never served from the cache."""
    digest = hashlib.sha1(str(size).encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}\0"
                      f"{st.st_ctime_ns}\n".encode())
    folder = root / ".sdlab-cache"
    if not os.access(root, os.W_OK) and not folder.is_dir():
        return None
    return folder / f"{digest.hexdigest()[:16]}.pt"


def _write_cache(path: Path, images: torch.Tensor) -> None:
    try:
        if path.parent.is_dir():
            remove_stale_temporaries(path.parent)      # of writes cut short by a kill
        save_checkpoint({"images": images}, path)
    except OSError:
        pass  # a read-only data folder only costs a re-decode next time


# ---------------------------------------------------------------- synthetic data

def make_synthetic(n: int, size: int = 32, seed: int = 0) -> ImageSet:
    """`n` deterministic images of 10 shape classes in random colours on striped backgrounds.

    Args:
        n: number of images; labels cycle through the 10 classes.
        size: image side in pixels.
        seed: numpy seed; the same seed gives the same images.
    Returns:
        ImageSet with uint8 images (n, 3, size, size).
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SYNTHETIC_CLASSES)
    rng.shuffle(labels)
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    v, u = np.meshgrid(coords, coords, indexing="ij")            # (H, W) in [-1, 1]
    u, v = u[None], v[None]

    # background: a two-colour gradient crossed by stripes of random angle and frequency
    c0, c1 = rng.uniform(0.1, 0.6, (2, n, 3, 1, 1))
    angle = rng.uniform(0, np.pi, (n, 1, 1))
    freq = rng.uniform(2, 6, (n, 1, 1))
    along = np.cos(angle) * u + np.sin(angle) * v
    stripes = 0.5 + 0.5 * np.sin(np.pi * freq * along)
    mix = (0.5 + 0.5 * along)[:, None]
    background = c0 * (1 - mix) + c1 * mix + 0.12 * stripes[:, None]

    # foreground: one shape per image, centred at (cx, cy) with radius r
    cx, cy = rng.uniform(-0.35, 0.35, (2, n, 1, 1))
    r = rng.uniform(0.3, 0.55, (n, 1, 1))
    x, y = (u - cx) / r, (v - cy) / r
    masks = np.stack([
        x**2 + y**2 < 1,                                          # disc
        np.maximum(abs(x), abs(y)) < 0.8,                         # square
        (y < 0.7) & (y > 2 * abs(x) - 0.9),                       # triangle
        abs(x) + abs(y) < 1,                                      # diamond
        (x**2 + y**2 < 1) & (x**2 + y**2 > 0.4),                  # ring
        (np.minimum(abs(x), abs(y)) < 0.25) & (np.maximum(abs(x), abs(y)) < 1),  # cross
        (abs(y) < 0.3) & (abs(x) < 1),                            # hbar
        (abs(x) < 0.3) & (abs(y) < 1),                            # vbar
        (x / 1.0) ** 2 + (y / 0.5) ** 2 < 1,                      # ellipse
        (x > -0.8) & (y > -0.8) & (np.minimum(x, y) < -0.3) & (np.maximum(x, y) < 0.8),  # corner
    ])                                                            # (10, n, H, W)
    mask = masks[labels, np.arange(n)][:, None]                   # (n, 1, H, W)
    colour = rng.uniform(0.55, 1.0, (n, 3, 1, 1)) * rng.permutation(np.eye(3) * 0.6 + 0.4)[
        rng.integers(0, 3, n)][..., None, None]
    image = np.where(mask, colour, background)
    image = np.clip(image * 255 + rng.normal(0, 4, image.shape), 0, 255).round().astype(np.uint8)
    return ImageSet(torch.from_numpy(image), torch.from_numpy(labels.astype(np.int64)),
                    SYNTHETIC_CLASSES)


# ---------------------------------------------------------------- batches

class BatchLoader:
    """Batches from an in-memory ImageSet, in [-1, 1] on `device`.

    Epoch `e` uses a permutation and flips drawn from a generator seeded with (seed, e), so any
    epoch, and any batch within it, can be replayed exactly: that is what makes resume exact.

    With data parallelism (`world` processes) batch k of an epoch is a global batch of
    batch_size x world images from that permutation, and process `rank` gets rows
    [rank x batch_size, (rank + 1) x batch_size) of it: every epoch's images are split into
    disjoint shards, and the same seed gives the same global batches at every world size.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, shuffle: bool, hflip: bool,
                 drop_last: bool, seed: int = 0, device: torch.device | str = "cpu",
                 keep_on_device: bool = False, rank: int = 0, world: int = 1):
        self.device = torch.device(device)
        store = self.device if keep_on_device else torch.device("cpu")
        self.images = data.images.to(store)
        self.labels = data.labels.to(store)
        self.classes = data.classes
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.shuffle, self.hflip, self.drop_last, self.seed = shuffle, hflip, drop_last, seed
        if self.images.device.type == "cpu" and self.device.type == "cuda":
            self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()

    @property
    def global_batch(self) -> int:
        """Images per step over all processes (batch_size x world)."""
        return self.batch_size * self.world

    def __len__(self) -> int:
        """Batches per epoch (global batches: every process sees this many)."""
        n = self.images.shape[0]
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def rows(self, batch: int) -> tuple[int, int]:
        """(this process's first row, images in the global batch) of batch `batch`: what a
        `randomness.NoiseSource` needs to draw this process's share of the batch's noise."""
        return self.rank * self.batch_size, min(self.global_batch, self.images.shape[0] - batch * self.global_batch)

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images (B, C, H, W) float in [-1, 1] (float sets as stored), labels (B,) int64);
        B is batch_size, or less in a last partial batch (zero for some processes then)."""
        n = self.images.shape[0]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        flips = torch.rand(n, generator=g) < 0.5
        for b in range(start_batch, len(self)):
            first = b * self.global_batch + self.rank * self.batch_size
            rows = slice(first, min(first + self.batch_size, (b + 1) * self.global_batch))
            x, y = self._gather(order[rows])
            if self.hflip:
                flip = flips[rows].to(self.device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            yield x, y

    def spread(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` images evenly spaced through the set (every class of a sorted folder shows up),
        unflipped, as (images in [-1, 1] (float sets as stored), labels) on the device."""
        return self._gather(torch.linspace(0, self.images.shape[0] - 1, min(n, self.images.shape[0])).round().long())

    def _gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `idx` on the device (uint8 -> [-1, 1]; float sets as stored) and their labels."""
        x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
        y = self.labels[idx.to(self.labels.device)].to(self.device, non_blocking=True)
        return (to_unit_range(x) if x.dtype == torch.uint8 else x), y

    def __iter__(self):
        return self.epoch(0)
