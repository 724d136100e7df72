import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.data import BatchLoader, DataConfig, DataError, load_splits, make_synthetic, to_uint8


def test_synthetic_images_are_uint8_labelled_and_deterministic():
    a = make_synthetic(40, 16, seed=3)
    b = make_synthetic(40, 16, seed=3)
    c = make_synthetic(40, 16, seed=4)
    assert a.images.shape == (40, 3, 16, 16) and a.images.dtype == torch.uint8
    assert a.labels.dtype == torch.int64 and set(a.labels.tolist()) == set(range(10))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.float().std() > 20  # shapes and textures, not a flat colour


def test_batches_are_float_in_unit_range_on_device_and_deterministic_per_seed():
    data = make_synthetic(50, 8)
    loader = BatchLoader(data, 16, shuffle=True, hflip=True, drop_last=True, seed=1)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 3
    x, y = batches[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5
    again = list(BatchLoader(data, 16, shuffle=True, hflip=True, drop_last=True, seed=1).epoch(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other_epoch = list(loader.epoch(1))
    assert not torch.equal(batches[0][1], other_epoch[0][1])


def test_batches_without_flip_are_the_images_themselves_and_resume_mid_epoch():
    data = make_synthetic(30, 8)
    loader = BatchLoader(data, 8, shuffle=False, hflip=False, drop_last=False)
    x = torch.cat([b for b, _ in loader.epoch(0)])
    assert torch.equal(to_uint8(x), data.images)
    shuffled = BatchLoader(data, 8, shuffle=True, hflip=True, drop_last=False, seed=5)
    full = list(shuffled.epoch(2))
    tail = list(shuffled.epoch(2, start_batch=2))
    assert len(tail) == len(full) - 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail))


def test_hflip_flips_about_half_the_images():
    data = make_synthetic(400, 8)
    plain = torch.cat([x for x, _ in BatchLoader(data, 100, shuffle=False, hflip=False, drop_last=False)])
    flipped = torch.cat([x for x, _ in BatchLoader(data, 100, shuffle=False, hflip=True, drop_last=False)])
    same = (plain == flipped).flatten(1).all(1)
    mirrored = (plain.flip(-1) == flipped).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0.35 < mirrored.float().mean() < 0.65


def _write_tree(root, classes=("cat", "dog"), per_class=3, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_folder_dataset_with_train_and_test_split(tmp_path):
    _write_tree(tmp_path / "train", per_class=4)
    _write_tree(tmp_path / "test", per_class=2)
    splits = load_splits(DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=8))
    assert splits.train.images.shape == (8, 3, 8, 8) and len(splits.test) == 4
    assert splits.train.classes == ("cat", "dog")
    assert splits.train.labels.tolist() == [0] * 4 + [1] * 4
    cached = load_splits(DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=8))
    assert (tmp_path / "train" / ".sdlab-cache").is_dir()
    assert torch.equal(cached.train.images, splits.train.images)


def test_folder_dataset_of_one_tree_gets_a_seeded_validation_split(tmp_path):
    _write_tree(tmp_path, per_class=10, size=8)
    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=8, val_fraction=0.2)
    a, b = load_splits(cfg, seed=0), load_splits(cfg, seed=0)
    assert len(a.train) == 16 and len(a.test) == 4
    assert torch.equal(a.test.images, b.test.images)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="--data-dir .* does not exist"):
        load_splits(DataConfig(dataset="folder", data_dir=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="no class folders with images"):
        load_splits(DataConfig(dataset="folder", data_dir=str(tmp_path)))


def test_unreadable_image_names_the_file(tmp_path):
    _write_tree(tmp_path, per_class=2)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_splits(DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=8))


def test_offline_cifar10_says_how_to_fix_it(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    message = str(err.value)
    assert "could not be downloaded" in message and "cifar-10-python.tar.gz" in message
    assert "--dataset folder --data-dir DIR" in message


def folder_of_images(root, n=6, size=8, ext="png"):
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (40 * i, 10, 200)).save(folder / f"{i}.{ext}")


def test_a_damaged_folder_cache_is_decoded_again_and_replaced(tmp_path):
    folder_of_images(tmp_path / "d")
    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path / "d"), image_size=8)
    first = load_splits(cfg)
    caches = list((tmp_path / "d" / ".sdlab-cache").glob("*.pt"))
    assert len(caches) == 1
    caches[0].write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="is damaged; decoding the folder again"):
        again = load_splits(cfg)
    assert torch.equal(torch.cat([first.train.images, first.test.images]),
                       torch.cat([again.train.images, again.test.images]))
    assert load_splits(cfg).train.images.shape == first.train.images.shape      # the cache is whole again


def test_a_file_changed_with_its_size_and_mtime_kept_is_not_served_from_the_cache(tmp_path):
    import os

    folder_of_images(tmp_path / "d", ext="bmp")                # BMP: the byte size is fixed
    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path / "d"), image_size=8, val_fraction=0.5)
    before = load_splits(cfg)
    target = tmp_path / "d" / "a" / "1.bmp"
    stat = target.stat()
    Image.new("RGB", (8, 8), (255, 255, 0)).save(target)
    assert target.stat().st_size == stat.st_size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what cp -p, rsync and unzip do
    after = load_splits(cfg)
    everything = lambda s: torch.cat([s.train.images, s.test.images])
    assert not torch.equal(everything(before), everything(after))
    assert (everything(after) == torch.tensor([255, 255, 0], dtype=torch.uint8)[:, None, None]).all(1).all(-1).all(-1).any()
