"""`sdlab-eval-samples`: how good are a model's images? FID/KID (Inception) or, offline,
FD-classifier/KID-classifier and class accuracy, against a real split.

    sdlab-eval-samples outputs/ldm/best.pt --classifier outputs/classifier/best.pt --num-samples 10000
    sdlab-eval-samples outputs/ddpm/best.pt --features inception --inception-weights weights.pth
    sdlab-eval-samples --samples my_pngs/ --dataset folder --data-dir cifar10 --classifier clf.pt

Images are drawn from CHECKPOINT with the sampler flags (class-conditional models: classes
0..K-1 in turn, at --guidance-scale; text-conditioned models: --prompt-template filled with
those classes' names), or read with --samples. The result is printed and written
as JSON (--out); the reference split's features are cached in --cache-dir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..conditioning import ConditionError
from ..data import DATASETS, DataConfig, to_uint8
from ..diffusion import SamplerConfig
from ..outputs import writable_dir, writable_file
from ..pipeline import DiffusionPipeline
from ..recipes.quality import QualityConfig, Scorer, draw_samples, read_samples
from ..recipes.run import stored_data_config
from ..runtime import DEVICE_HELP, pick_device
from .flags import Parser, add_config_flags, add_sampling_flags, build_configs, finite_float
from .session import user_errors


def build_parser() -> Parser:
    parser = Parser(prog="sdlab-eval-samples", description="Score generated images: FID/KID or the "
                    "offline FD-classifier, and the class accuracy of class-conditional samples.")
    parser.add_argument("checkpoint", nargs="?", default=None, help="diffusion checkpoint to draw from")
    parser.add_argument("--samples", default=None, help="score these instead: a folder of images or a .pt tensor")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--guidance-scale", type=finite_float, default=1.0)
    parser.add_argument("--prompt-template", default="a photo of a {}",
                        help="text-conditioned models: the prompt of each class ({} is its name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256, help="images per sampling pass")
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="reference data (default: the model's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--image-size", type=int, default=32, help="with --samples: the images' size")
    parser.add_argument("--synthetic-size", type=int, default=2000, help="with --samples --dataset synthetic")
    parser.add_argument("--cache-dir", default=None, help="reference features (default: beside the input)")
    parser.add_argument("--out", default=None, help="JSON (default: eval_samples.json beside the input)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_sampling_flags(parser)
    add_config_flags(parser, QualityConfig, "metric", skip=("eval_every", "eval_samples"))
    return parser


@user_errors
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.samples is None):
        parser.error("give a CHECKPOINT to draw from or --samples PATH, not both")
    for flag in ("num_samples", "batch_size"):
        if getattr(args, flag) < 2:
            parser.error(f"--{flag.replace('_', '-')} must be >= 2 (got {getattr(args, flag)})")
    configs = build_configs(parser, args, {"quality": QualityConfig, "sampler": SamplerConfig})
    cfg, sampler = configs["quality"], configs["sampler"]
    source = Path(args.checkpoint or args.samples)
    out = writable_file(args.out or (source if source.is_dir() else source.parent) / "eval_samples.json",
                        "--out", (".json",))
    cache = writable_dir(args.cache_dir or out.parent, "--cache-dir")
    device = pick_device(args.device)
    scorer = Scorer(cfg, device)            # a missing classifier or Inception file stops here
    labels, names = None, ()
    start = time.perf_counter()
    if args.checkpoint:
        pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, device)
        data = stored_data_config(pipe.config, args.dataset, args.data_dir)
        try:
            pipe.conditioning.balanced(1, args.prompt_template)
        except ConditionError as err:
            parser.error(str(err))
        images, labels = draw_samples(pipe, args.num_samples, balanced=True, prompt_template=args.prompt_template,
                                      guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size,
                                      precision=args.precision, progress=True, sampler=sampler)
        images, names = to_uint8(images), pipe.class_names
    else:
        if not args.dataset:
            parser.error("--samples needs --dataset (and --data-dir) for the real images")
        given = {"data_dir": args.data_dir} if args.data_dir else {}
        data = DataConfig(dataset=args.dataset, image_size=args.image_size, synthetic_size=args.synthetic_size, **given)
        images = read_samples(args.samples, data.image_size)
    drawn = time.perf_counter() - start
    result = scorer.score(images, data, cache, labels, names)
    result.update(sampling_seconds=round(drawn, 1), scoring_seconds=round(time.perf_counter() - start - drawn, 1))
    if args.checkpoint:
        result.update(sampler=sampler.describe(pipe.schedule), nfe=sampler.evaluations(pipe.schedule),
                      guidance_scale=args.guidance_scale, seed=args.seed,
                      conditioning=pipe.conditioning.describe_balanced(args.prompt_template))
    out.write_text(json.dumps(result, indent=1))
    print(f"{result['metric']} {result['fd']:.3f}  KID {result['kid']:.5f} ± {result['kid_std']:.5f}  "
          f"({len(images)} samples vs {result['num_reference']} {result['reference']} images)"
          + (f"  class accuracy {result['accuracy']:.3f}, confidence {result['confidence']:.3f}"
             if "accuracy" in result else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
