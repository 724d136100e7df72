"""How long one step checkpoint takes: the trainer's state (model, EMA, AdamW moments, RNG,
config) of each U-Net preset, written atomically (temporary file, fsync, rename) to a folder.

    python bench/checkpoint_write.py [--repeats 5] [--dir DIR]

Prints, per preset: parameters, checkpoint size and the median seconds of `save_checkpoint`
over `--repeats` writes (the folder's disk decides most of it; name a folder on the disk you
train on with --dir).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sdlab.checkpoint import save_checkpoint
from sdlab.data import make_synthetic, BatchLoader
from sdlab.trainer import TrainConfig, Trainer
from sdlab.unet import PRESETS, UNet, UNetConfig


def trainer_state(preset: str, folder: Path) -> dict:
    """A Trainer's state_dict after one optimizer step, so the AdamW moments exist."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(**PRESETS[preset], image_size=32))
    data = BatchLoader(make_synthetic(8, 32), 4, shuffle=False, hflip=False, drop_last=True)
    cfg = TrainConfig(save_dir=str(folder), device="cpu", ema_decay=0.999, epochs=1)
    trainer = Trainer(model, lambda m, x, y, **_: {"loss": m(x, torch.zeros(len(x), dtype=torch.long)).pow(2).mean()},
                      data, data, cfg, run_config={"kind": "diffusion"}, device=torch.device("cpu"))
    images, labels = next(data.epoch(0))
    trainer.loss_fn(model, images, labels)["loss"].backward()
    trainer._optimizer_step()
    return trainer.state_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="folder to write into (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for preset in PRESETS:
            state = trainer_state(preset, Path(tmp))
            path = Path(tmp) / f"{preset}.pt"
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                save_checkpoint(state, path)
                times.append(time.perf_counter() - start)
            params = sum(v.numel() for v in state["model"].values())
            print(f"{preset:>13}: {params / 1e6:.2f}M parameters, {path.stat().st_size / 2**20:.1f} MiB, "
                  f"write median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
                  f"{args.repeats} writes)")


if __name__ == "__main__":
    main()
