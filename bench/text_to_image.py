"""Text-to-image on the synthetic scenes: does a generated image match its prompt, attribute by
attribute, on prompts seen in training and on held-out combinations? And what does the text
path cost per training image?

    python diffusers/train_diffusion.py --dataset scenes --text-cond ... --save-dir RUN   # train (BENCHMARKS.md)
    python bench/text_to_image.py evaluate RUN/last.pt --guidance 1 3 5 --out docs/figures/text-to-image
    python bench/text_to_image.py cost --base-channels 32 --attention-resolutions 16 8
    python bench/text_to_image.py encoding RUN/last.pt --guidance 3

evaluate: every seen (colour, shape, size, position) combination `--per-combination` times and
every held-out one (`scenes.HELD_OUT`: colour-shape pairs never drawn in training) three times
as often, so both sets have the same number of prompts; the same seeds at every w. Each image is
read back by `scenes.read_scene` (the generator's own palette, masks, sizes and positions) and
compared with its prompt. Writes OUT/text_to_image.json and sample grids OUT/{seen,held_out}.png
(rows of prompts, at the best w), and OUT/command.txt.

cost: milliseconds per image of one training step (forward + backward, batch 64, fp32) of the
text-conditioned U-Net (text encoder + transformer blocks with cross-attention) and of the
class-conditional U-Net (self-attention blocks) at the same widths and attention resolutions;
median of --rounds rounds.

encoding: seconds to sample --num prompts (DPM-Solver++(2M), --steps steps, fp32) with the prompt
encoded once per call (the pipeline, `conditioning.TextCondition.denoiser`) against the text
encoder re-run at every step on the token ids (what the pipeline did before issue 22), in
alternating rounds in one process; the median of each, whether the images agree bitwise, and
the text encoder's own time for one call.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from sdlab.conditioning import TextCondition
from sdlab.data import to_uint8
from sdlab.diffusion.guidance import guided
from sdlab.pipeline import DiffusionPipeline
from sdlab.recipes.quality import draw_samples
from sdlab.scenes import attribute_accuracy, caption, combinations
from sdlab.text import TextConditionedUNet, TextConfig
from sdlab.unet import UNet, UNetConfig
from sdlab.visualize import save_labelled_rows


def evaluate(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, torch.device("cpu"))
    sets = {"seen": combinations() * args.per_combination,
            "held_out": combinations(held_out=True) * (3 * args.per_combination)}
    results = {"checkpoint": args.checkpoint, "sampler": f"{args.sampler}, {args.steps} steps", "rows": []}
    grids = {}
    for w in args.guidance:
        for name, params in sets.items():
            start = time.perf_counter()
            images, _ = draw_samples(pipe, len(params), prompts=[caption(*p) for p in params], guidance_scale=w,
                                     seed=0, batch_size=128, precision="fp32", sampler=args.sampler,
                                     sample_steps=args.steps)
            accuracy = attribute_accuracy(to_uint8(images), params)
            row = {"w": w, "prompts": name, "n": len(params), **accuracy, "seconds": time.perf_counter() - start}
            results["rows"].append(row)
            grids[w, name] = images
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    best = max(args.guidance, key=lambda w: statistics.mean(r["all"] for r in results["rows"] if r["w"] == w))
    results["best_w"] = best
    for name, params in sets.items():
        step = len(combinations(held_out=name == "held_out"))   # a row: one combination's repeats (its seeds)
        picks = range(0, step, max(1, step // 10))
        rows = [grids[best, name][i::step][:8] for i in picks]
        save_labelled_rows(rows, [caption(*params[i]) for i in picks], out / f"{name}.png",
                           title=f"{name.replace('_', '-')} prompts, w = {best:g} (columns: seeds)")
    (out / "text_to_image.json").write_text(json.dumps(results, indent=2))
    (out / "command.txt").write_text("python bench/text_to_image.py " + shlex.join(sys.argv[1:]) + "\n")
    print(f"best w = {best:g}; wrote {out}/text_to_image.json, seen.png, held_out.png")


def cost(args) -> None:
    torch.set_num_threads(2)
    unet = UNetConfig(base_channels=args.base_channels, channel_mults=tuple(args.channel_mults),
                      attention_resolutions=tuple(args.attention_resolutions), heads=args.heads)
    text = TextConfig(text_cond=True, text_width=args.text_width, text_heads=args.heads)
    models = {
        "class-conditional (self-attention)": (UNet(UNetConfig(**{**unet.__dict__, "num_classes": 10})),
                                               lambda b: torch.randint(0, 10, (b,))),
        "text-conditioned (cross-attention)": (TextConditionedUNet(UNetConfig(**{**unet.__dict__, "context_dim": args.text_width}),
                                                                   text, 40), lambda b: torch.randint(1, 40, (b, 16))),
    }
    b = args.batch
    x, t = torch.randn(b, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 1000, (b,))
    for name, (model, cond) in models.items():
        model.to(memory_format=torch.channels_last)
        c = cond(b)
        times = []
        for r in range(args.rounds + 1):
            start = time.perf_counter()
            model(x, t, c).square().mean().backward()
            times.append(time.perf_counter() - start)
        ms = 1000 * statistics.median(times[1:]) / b
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name}: {params:.2f}M parameters, {ms:.2f} ms/image (median of {args.rounds}, batch {b})", flush=True)


class EncodeEveryStep(TextCondition):
    """The text path re-encoding the prompt's token ids at every denoiser call."""

    def denoiser(self, model, cond, uncond, scale):
        return guided(model, cond, scale, uncond)


def encoding(args) -> None:
    pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, torch.device("cpu"))
    c = pipe.conditioning
    variants = {"encoded once": pipe,
                "encoded every step": dataclasses.replace(pipe, conditioning=EncodeEveryStep(
                    c.text, c.tokenizer, c.sample_prompts, c.class_names))}
    prompts = [caption(*p) for p in (combinations() * args.num)[:args.num]]
    times, images = {name: [] for name in variants}, {}
    for w in args.guidance:
        for r in range(args.rounds + 1):                      # round 0: warm-up, not counted
            for name, p in variants.items():
                start = time.perf_counter()
                images[name] = p(args.num, prompt=prompts, guidance_scale=w, sampler="dpmpp_2m",
                                 sample_steps=args.steps, generator=torch.Generator().manual_seed(0))
                if r:
                    times[name].append(time.perf_counter() - start)
        ids = c.tokens(prompts * 2, 2 * args.num, pipe.device)
        with torch.no_grad():
            start = time.perf_counter()
            pipe.model.encode(ids)
            encoder = time.perf_counter() - start
        same = torch.equal(*images.values())
        print(f"w = {w:g}, {args.num} prompts, {args.steps} steps: " + "; ".join(
            f"{name} {statistics.median(t):.2f} s (rounds {', '.join(f'{x:.2f}' for x in t)})" for name, t in times.items())
            + f"; images bitwise equal: {same}; text encoder on {2 * args.num} prompts once: {encoder * 1000:.1f} ms",
            flush=True)
        times = {name: [] for name in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate")
    ev.add_argument("checkpoint")
    ev.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    ev.add_argument("--per-combination", type=int, default=2)
    ev.add_argument("--sampler", default="dpmpp_2m")
    ev.add_argument("--steps", type=int, default=15)
    ev.add_argument("--out", required=True)
    co = commands.add_parser("cost")
    co.add_argument("--base-channels", type=int, default=32)
    co.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    co.add_argument("--attention-resolutions", type=int, nargs="+", default=[16, 8])
    co.add_argument("--heads", type=int, default=2)
    co.add_argument("--text-width", type=int, default=64)
    co.add_argument("--batch", type=int, default=64)
    co.add_argument("--rounds", type=int, default=5)
    en = commands.add_parser("encoding")
    en.add_argument("checkpoint")
    en.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    en.add_argument("--num", type=int, default=128)
    en.add_argument("--steps", type=int, default=15)
    en.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    {"evaluate": evaluate, "cost": cost, "encoding": encoding}[args.command](args)


if __name__ == "__main__":
    main()
