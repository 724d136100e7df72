"""`sdlab-sample CHECKPOINT`: draw images from a trained diffusion checkpoint.

The U-Net, the schedule and (for latent models) the VAE are rebuilt from the config stored in
the checkpoint; no model flags are needed. EMA weights are used when the checkpoint has them.

    sdlab-sample outputs/diffusion/best.pt --num-samples 64 --sampler ddim --steps 50 --seed 0 --out grid.png
    sdlab-sample outputs/ldm/best.pt --class horse --class ship --guidance-scale 3 --out horses_ships.png
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import IMAGE_EXTENSIONS
from ..diffusion.sampling import SAMPLERS, SPACINGS, VARIANCES, ddim_timesteps
from ..outputs import writable_dir, writable_file
from ..pipeline import DiffusionPipeline
from ..recipes.quality import draw_samples
from ..runtime import DEVICE_HELP, pick_device
from ..visualize import save_grid
from .flags import Parser, finite_float
from .session import user_errors


def build_parser() -> Parser:
    parser = Parser(prog="sdlab-sample", description="Sample images from a diffusion checkpoint.")
    parser.add_argument("checkpoint", help="best.pt or last.pt written by train_diffusion.py")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM takes all T)")
    parser.add_argument("--eta", type=finite_float, default=0.0, help="DDIM eta, in [0, 1]")
    parser.add_argument("--spacing", choices=SPACINGS, default="uniform")
    parser.add_argument("--variance", choices=VARIANCES, default="beta", help="DDPM sigma_t^2")
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
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    return parser


@user_errors
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("num_samples", "steps", "batch_size", "nrow"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})")
    if not 0 <= args.eta <= 1:
        parser.error(f"--eta must be in [0, 1] (got {args.eta})")
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
                             seed=args.seed, batch_size=args.batch_size, precision=args.precision, progress=True,
                             sampler=args.sampler, steps=args.steps, eta=args.eta, spacing=args.spacing,
                             variance=args.variance)
    seconds = time.perf_counter() - start
    save_grid(images, args.out, nrow=args.nrow)
    if args.per_image_dir:
        folder = Path(args.per_image_dir)
        for i, image in enumerate(images):
            save_grid(image[None], folder / f"{i:05d}.png", nrow=1)
    T = pipe.schedule.num_timesteps      # DDIM visits distinct timesteps: at most T of them
    steps = T if args.sampler == "ddpm" else len(ddim_timesteps(T, args.steps, args.spacing))
    print(f"wrote {args.out}: {args.num_samples} images, {args.sampler} {steps} steps, "
          f"{seconds:.1f} s on {device}")


if __name__ == "__main__":
    main()
