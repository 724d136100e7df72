"""`sdlab-sample CHECKPOINT`: draw images from a trained diffusion checkpoint.

The U-Net, the schedule and (for latent models) the VAE are rebuilt from the config stored in
the checkpoint; no model flags are needed. EMA weights are used when the checkpoint has them.

    sdlab-sample outputs/diffusion/best.pt --num-samples 64 --sampler ddim --steps 50 --seed 0 --out grid.png
    sdlab-sample outputs/diffusion/best.pt --sampler dpmpp_2m --steps 15 --out fast.png
    sdlab-sample outputs/ldm/best.pt --class horse --class ship --guidance-scale 3 --out horses_ships.png
    sdlab-sample outputs/t2i/best.pt --prompt "a large red disc at the top left" --negative-prompt "a square" \
        --guidance-scale 4 --out red_discs.png
    sdlab-sample outputs/t2i/best.pt --prompt "a small blue cross in the centre" --init-image photo.png --strength 0.6
    sdlab-sample outputs/t2i/best.pt --prompt "a large green square at the top right" --init-image photo.png \
        --mask mask.png          # white = repaint

The sampling flags (--sampler, --steps, --eta, --spacing, ...) come from `SamplerConfig`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..conditioning import ConditionError
from ..data import IMAGE_EXTENSIONS, DataError, decode_image, to_unit_range
from ..diffusion import SamplerConfig
from ..outputs import writable_dir, writable_file
from ..pipeline import DiffusionPipeline
from ..recipes.diffusion_figures import sample_figures
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
    parser.add_argument("--prompt", dest="prompts", action="append", default=[], metavar="TEXT",
                        help="text-conditioned models: prompt (repeatable; cycled over the images)")
    parser.add_argument("--negative-prompt", default=None, metavar="TEXT",
                        help="what guidance steers away from, in place of the empty prompt")
    parser.add_argument("--guidance-scale", type=finite_float, default=1.0,
                        help="classifier-free guidance w: eps = eps_neg + w (eps_cond - eps_neg), eps_neg the "
                             "negative prompt's prediction or the unconditional one (1: conditional only, so a "
                             "negative prompt has no effect; 0: eps_neg alone)")
    parser.add_argument("--init-image", default=None, metavar="PATH",
                        help="img2img (SDEdit): start from this image noised to --strength")
    parser.add_argument("--strength", type=finite_float, default=None,
                        help="img2img: 0 keeps the image, 1 ignores it (default 0.8; 1 with --mask)")
    parser.add_argument("--mask", default=None, metavar="PATH",
                        help="inpainting with --init-image: a black-and-white image whose white pixels are repainted")
    parser.add_argument("--mask-box", default=None, metavar="L,T,R,B",
                        help="inpainting with --init-image: repaint this rectangle instead of a --mask file "
                             "(pixels of the model's image: left, top, right, bottom; right and bottom excluded)")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="write the figures --visualize draws from a model into DIR instead of a sample "
                             "grid: reverse process, latent pipeline (latent models), class grid and guidance "
                             "sweep (class-conditional), prompt grid, cross-attention maps, img2img and "
                             "inpainting (text-conditioned; for the --prompt prompts, default the run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--out", default="samples.png", help="grid PNG to write (an existing file needs --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out and --per-image-dir files that exist")
    parser.add_argument("--per-image-dir", default=None, help="also write one PNG per image here")
    parser.add_argument("--nrow", type=int, default=8)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_sampling_flags(parser)
    return parser


def image_options(parser: Parser, args, pipe: DiffusionPipeline) -> dict:
    """The img2img / inpainting inputs read from --init-image and --mask, at the model's image
    size."""
    options = {}
    if args.strength is not None and not 0 <= args.strength <= 1:
        parser.error(f"--strength must be in [0, 1] (got {args.strength})")
    if (args.strength is not None or args.mask or args.mask_box) and not args.init_image:
        parser.error("--strength, --mask and --mask-box need --init-image")
    if args.mask and args.mask_box:
        parser.error("give --mask or --mask-box, not both")
    for flag, path in (("--init-image", args.init_image), ("--mask", args.mask)):
        if path and Path(path).is_dir():
            parser.error(f"{flag} {path}: is a folder; give an image file")
        if path and not Path(path).is_file():
            parser.error(f"{flag} {path}: no such file")
    if args.init_image:
        size = pipe.image_size
        try:
            options["init_image"] = to_unit_range(torch.tensor(decode_image(args.init_image, size)).permute(2, 0, 1)[None])
            if args.mask:
                options["mask"] = read_mask(parser, args.mask, size)
        except (DataError, FileNotFoundError) as err:
            parser.error(f"--init-image/--mask: {err}")
        if args.mask_box:
            options["mask"] = box_mask(parser, args.mask_box, size)
        if args.strength is not None:
            options["strength"] = args.strength
    return options


def read_mask(parser: Parser, path: str, size: int) -> torch.Tensor:
    """A --mask file as a (1, 1, size, size) 0/1 tensor (1: repaint). A mask with many grey
    pixels (a photo, a soft brush) is refused rather than read as a half-repaint."""
    gray = torch.tensor(decode_image(path, size)).float().mean(-1)[None, None] / 255
    grey_share = ((gray > 0.1) & (gray < 0.9)).float().mean().item()
    if grey_share > 0.05:
        parser.error(f"--mask {path}: {grey_share:.0%} of its pixels are grey; give a black-and-white image "
                     "(white: repaint) or use --mask-box")
    return (gray >= 0.5).float()


def box_mask(parser: Parser, box: str, size: int) -> torch.Tensor:
    """--mask-box L,T,R,B as a (1, 1, size, size) 0/1 tensor, 1 inside the box."""
    try:
        left, top, right, bottom = (int(v) for v in box.split(","))
    except ValueError:
        parser.error(f"--mask-box {box}: give four whole numbers L,T,R,B")
    if not (0 <= left < right <= size and 0 <= top < bottom <= size):
        parser.error(f"--mask-box {box}: need 0 <= L < R <= {size} and 0 <= T < B <= {size} (pixels of this "
                     f"model's {size}x{size} images)")
    mask = torch.zeros(1, 1, size, size)
    mask[..., top:bottom, left:right] = 1.0
    return mask


def write_figures(parser: Parser, args, sampler: SamplerConfig, device: torch.device) -> None:
    """--figures DIR: `recipes.diffusion_figures.sample_figures` for the checkpoint."""
    folder = writable_dir(args.figures, "--figures")
    pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, device)
    try:
        pipe.conditioning.examples(1, args.prompts)
    except ConditionError as err:
        parser.error(str(err))
    written = sample_figures(pipe, folder, args.guidance_scale, sampler, args.prompts)
    print(f"figures written to {folder}: {' '.join(written)}")


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
    if args.figures:
        return write_figures(parser, args, sampler, device)
    writable_file(args.out, "--out", IMAGE_EXTENSIONS)        # before the work, not after
    taken = [Path(args.out)] if Path(args.out).exists() else []
    if args.per_image_dir:
        writable_dir(args.per_image_dir, "--per-image-dir")
        taken += [f for i in range(args.num_samples) if (f := Path(args.per_image_dir) / f"{i:05d}.png").exists()]
    if taken and not args.overwrite:
        parser.error(f"{taken[0]} exists{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''}; pass --overwrite "
                     "to replace, or choose another --out / --per-image-dir")
    pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, device)
    try:
        asked = pipe.conditioning.ask(args.num_samples, args.classes, args.prompts, args.negative_prompt)
    except ConditionError as err:
        parser.error(str(err))
    options = image_options(parser, args, pipe)
    start = time.perf_counter()
    images, _ = draw_samples(pipe, args.num_samples, guidance_scale=args.guidance_scale, seed=args.seed,
                             batch_size=args.batch_size, precision=args.precision, progress=True,
                             sampler=sampler, **asked, **options)
    seconds = time.perf_counter() - start
    save_grid(images, args.out, nrow=args.nrow)
    if args.per_image_dir:
        folder = Path(args.per_image_dir)
        for i, image in enumerate(images):
            save_grid(image[None], folder / f"{i:05d}.png", nrow=1)
    ran = sampler.describe(pipe.schedule)
    if args.init_image:
        strength = pipe.strength(args.strength, bool(args.mask or args.mask_box))
        ran = ("no steps: strength 0 returns the image" if strength == 0 else
               sampler.describe(pipe.schedule, pipe.start_timestep(strength)) + f", strength {strength:g}")
    print(f"wrote {args.out}: {args.num_samples} images, {ran}, {seconds:.1f} s on {device}")


if __name__ == "__main__":
    main()
