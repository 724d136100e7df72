"""`sdlab-sample CHECKPOINT`: draw images from a trained diffusion checkpoint.

The U-Net, the schedule and (for latent models) the VAE are rebuilt from the config stored in
the checkpoint; no model flags are needed. EMA weights are used when the checkpoint has them.

    sdlab-sample outputs/diffusion/best.pt --num-samples 64 --sampler ddim --steps 50 --seed 0 --out grid.png
    sdlab-sample outputs/diffusion/best.pt --sampler dpmpp_2m --steps 15 --out fast.png
    sdlab-sample outputs/ldm/best.pt --class horse --class ship --guidance-scale 3 --out horses_ships.png

The sampling flags (--sampler, --steps, --eta, --spacing, ...) come from `SamplerConfig`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import IMAGE_EXTENSIONS
from ..diffusion import SamplerConfig
from ..outputs import writable_dir, writable_file
from ..pipeline import DiffusionPipeline
from ..recipes.quality import draw_samples
from ..runtime import DEVICE_HELP, pick_device
from ..visualize import save_grid
from .flags import Parser, add_sampling_flags, build_configs, finite_float
from .session import user_errors


def build_parser() -> Parser:
    parser = Parser(prog="sdlab-sample", description="Sample images from a diffusion checkpoint.")
    parser.add_argument("checkpoint", help="best.pt or last.pt written by train_diffusion.py")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME|ID",
                        help="class-conditional models: class to draw (repeatable; cycled over the images)")
    parser.add_argument("--guidance-scale", type=finite_float, default=1.0,
                        help="classifier-free guidance w (0: unconditional, 1: conditional)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--out", default="samples.png", help="grid PNG to write")
    parser.add_argument("--per-image-dir", default=None, help="also write one PNG per image here")
    parser.add_argument("--nrow", type=int, default=8)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_sampling_flags(parser)
    return parser


@user_errors
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("num_samples", "batch_size", "nrow"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})")
    sampler = build_configs(parser, args, {"sampler": SamplerConfig})["sampler"]
    if args.guidance_scale < 0:
        parser.error(f"--guidance-scale must be >= 0 (got {args.guidance_scale})")
    device = pick_device(args.device)
    writable_file(args.out, "--out", IMAGE_EXTENSIONS)        # before the work, not after
    if args.per_image_dir:
        writable_dir(args.per_image_dir, "--per-image-dir")
    pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, device)
    labels = None
    if args.classes:
        if not pipe.classes:
            parser.error("--class: this checkpoint is not class-conditional (train with --class-cond)")
        try:
            ids = pipe.class_ids(args.classes)
        except ValueError as err:
            parser.error(str(err))
        labels = torch.tensor(ids, device=device).repeat(-(-args.num_samples // len(ids)))[: args.num_samples]
    start = time.perf_counter()
    images, _ = draw_samples(pipe, args.num_samples, labels=labels, guidance_scale=args.guidance_scale,
                             seed=args.seed, batch_size=args.batch_size, precision=args.precision,
                             progress=True, sampler=sampler)
    seconds = time.perf_counter() - start
    save_grid(images, args.out, nrow=args.nrow)
    if args.per_image_dir:
        folder = Path(args.per_image_dir)
        for i, image in enumerate(images):
            save_grid(image[None], folder / f"{i:05d}.png", nrow=1)
    print(f"wrote {args.out}: {args.num_samples} images, {sampler.describe(pipe.schedule)}, "
          f"{seconds:.1f} s on {device}")


if __name__ == "__main__":
    main()
