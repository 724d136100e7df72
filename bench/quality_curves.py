"""Sample quality against guidance scale and against sampling steps, for one checkpoint: the
trade-off curves of the classifier-free guidance paper (Ho & Salimans 2022, fig. 4) and the
cost/quality curve of DDIM (Song et al. 2021, table 1), measured with FD-classifier (or FID).

    python bench/quality_curves.py CKPT --classifier CLF --num-samples 1000 --out docs/figures/quality

Writes OUT/guidance.png (FD and class accuracy for w in --guidance), OUT/steps.png (FD for DDIM
with each of --steps, and DDPM with all T when --ddpm), OUT/curves.json with every number and
timing, and OUT/command.txt, the command that regenerates them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from sdlab.data import to_uint8
from sdlab.pipeline import DiffusionPipeline
from sdlab.recipes.quality import QualityConfig, Scorer, draw_samples
from sdlab.recipes.run import stored_data_config
from sdlab.visualize import plot_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--data-dir", default=None, help="reference data dir (default: the model's)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0, 1, 2, 4, 7])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--steps-guidance", type=float, default=None, help="w of the steps sweep (default: the "
                        "best w of the guidance sweep)")
    parser.add_argument("--ddpm", action="store_true", help="also DDPM with all T steps (slow)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", default=None, help="reference features (default: beside the checkpoint)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir or Path(args.checkpoint).parent)
    torch.set_num_threads(2)
    device = torch.device("cpu")
    pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, device)
    data = stored_data_config(pipe.config, None, args.data_dir)
    scorer = Scorer(QualityConfig(classifier=args.classifier), device)
    results = {"guidance": [], "steps": []}

    def measure(**sampler) -> dict:
        start = time.perf_counter()
        images, labels = draw_samples(pipe, args.num_samples, balanced=True, **sampler)
        drawn = time.perf_counter() - start
        row = scorer.score(to_uint8(images), data, cache, labels, pipe.classes)
        row.update(sampler, sampling_seconds=round(drawn, 1))
        print(json.dumps({k: v for k, v in row.items() if k != "accuracy_per_class"}), flush=True)
        return row

    scales = args.guidance if pipe.classes else [1.0]
    for w in scales:
        results["guidance"].append(measure(guidance_scale=w, sampler="ddim", steps=50))
    best = min(results["guidance"], key=lambda r: r["fd"])["guidance_scale"]
    w = best if args.steps_guidance is None else args.steps_guidance
    for steps in args.steps:
        results["steps"].append(measure(guidance_scale=w, sampler="ddim", steps=steps))
    if args.ddpm:
        results["steps"].append(measure(guidance_scale=w, sampler="ddpm", steps=pipe.schedule.num_timesteps))
    n = args.num_samples
    if pipe.classes:
        g = results["guidance"]
        plot_lines([r["guidance_scale"] for r in g], {"FD-classifier": [r["fd"] for r in g]}, out / "guidance.png",
                   "guidance scale w (DDIM-50)", f"{n} samples vs {g[0]['reference']}",
                   right={"class accuracy": [r["accuracy"] for r in g]})
    s = [r for r in results["steps"] if r["sampler"] == "ddim"]
    plot_lines([r["steps"] for r in s], {"FD-classifier (DDIM)": [r["fd"] for r in s]}, out / "steps.png",
               "sampling steps", f"{n} samples, w = {w:g}"
               + (f"; DDPM-{pipe.schedule.num_timesteps}: {results['steps'][-1]['fd']:.2f}" if args.ddpm else ""),
               log_x=True)
    (out / "curves.json").write_text(json.dumps(results, indent=1))
    (out / "command.txt").write_text("python " + " ".join(shlex.quote(a) for a in sys.argv) + "\n")
    print(f"wrote {out}/guidance.png, steps.png, curves.json, command.txt")


if __name__ == "__main__":
    main()
