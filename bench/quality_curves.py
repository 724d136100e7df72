"""Sample quality against guidance scale, sampling steps and sampler, for one checkpoint: the
trade-off curves of the classifier-free guidance paper (Ho & Salimans 2022, fig. 4), the
cost/quality curve of DDIM (Song et al. 2021, table 1) and quality per network evaluation of
every sampler (Karras et al. 2022, fig. 2), measured with FD-classifier (or FID).

    python bench/quality_curves.py CKPT --classifier CLF --num-samples 1000 --out docs/figures/quality
    python bench/quality_curves.py CKPT --classifier CLF --guidance 4 --steps 50 100 --ddpm \
        --samplers ddim euler euler_a heun dpmpp_2m --nfe 5 10 15 25 --out docs/figures/samplers

Writes OUT/guidance.png (FD and class accuracy for w in --guidance, DDIM-50; only with two or
more scales), OUT/steps.png (FD for DDIM with each of --steps, and DDPM with all T when --ddpm),
OUT/nfe.png (FD against network evaluations for each of --samplers at each --nfe budget) and
OUT/trajectories.png (each sampler's predicted x_0 step by step from one seed, middle budget),
OUT/curves.json with every number and timing, and OUT/command.txt, the command that regenerates
them. Every row draws the same seeds (classes 0..K-1 in turn for class-conditional models).
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
from sdlab.diffusion import SAMPLERS, SamplerConfig
from sdlab.figures import sampler_trajectories
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
    parser.add_argument("--guidance", type=float, nargs="*", default=[0, 1, 2, 4, 7], help="DDIM-50 at each w "
                        "(none: skip this sweep)")
    parser.add_argument("--steps", type=int, nargs="*", default=[10, 20, 50, 100])
    parser.add_argument("--steps-guidance", type=float, default=None, help="w of the steps and sampler sweeps "
                        "(default: the best w of the guidance sweep)")
    parser.add_argument("--ddpm", action="store_true", help="also DDPM with all T steps (slow)")
    parser.add_argument("--samplers", nargs="*", default=[], help="samplers for the NFE sweep")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 15, 25], help="NFE budgets of that sweep")
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
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
    results, seen = {"guidance": [], "steps": [], "samplers": []}, {}

    def measure(w: float, sampler: str = "ddim", steps: int = 50) -> dict:
        cfg = SamplerConfig(sampler=sampler, sample_steps=steps)
        key = (w, cfg)
        if key not in seen:            # the same row asked by two sweeps is drawn once
            start = time.perf_counter()
            images, labels = draw_samples(pipe, args.num_samples, balanced=True, guidance_scale=w,
                                          sampler=cfg, precision=args.precision)
            drawn = time.perf_counter() - start
            row = scorer.score(to_uint8(images), data, cache, labels, pipe.classes)
            row.update(guidance_scale=w, sampler=sampler, steps=len(cfg.timesteps(pipe.schedule)),
                       spacing=cfg.grid, nfe=cfg.evaluations(pipe.schedule), sampling_seconds=round(drawn, 1))
            print(json.dumps({k: v for k, v in row.items() if k != "accuracy_per_class"}), flush=True)
            seen[key] = row
        return seen[key]

    scales = (args.guidance if pipe.classes else [1.0]) if args.guidance else []
    for w in scales:
        results["guidance"].append(measure(w))
    if args.steps_guidance is None:
        w = min(results["guidance"], key=lambda r: r["fd"])["guidance_scale"] if scales else 1.0
    else:
        w = args.steps_guidance
    for steps in args.steps:
        results["steps"].append(measure(w, "ddim", steps))
    if args.ddpm:
        results["steps"].append(measure(w, "ddpm"))
    for sampler in args.samplers:
        for nfe in args.nfe:
            results["samplers"].append(measure(w, sampler, SAMPLERS[sampler].steps_for(nfe)))
    n, metric = args.num_samples, next(iter(seen.values()))["metric"]
    if pipe.classes and len(scales) > 1:
        g = results["guidance"]
        plot_lines([r["guidance_scale"] for r in g], {metric: [r["fd"] for r in g]}, out / "guidance.png",
                   "guidance scale w (DDIM-50)", f"{n} samples vs {g[0]['reference']}",
                   right={"class accuracy": [r["accuracy"] for r in g]})
    ddpm = [r for r in results["steps"] if r["sampler"] == "ddpm"]
    note = f"; DDPM-{ddpm[0]['nfe']}: {ddpm[0]['fd']:.2f}" if ddpm else ""
    s = [r for r in results["steps"] if r["sampler"] == "ddim"]
    if len(s) > 1:
        plot_lines([r["steps"] for r in s], {f"{metric} (DDIM)": [r["fd"] for r in s]}, out / "steps.png",
                   "sampling steps", f"{n} samples, w = {w:g}{note}", log_x=True)
    if args.samplers:
        curves = {}
        for sampler in args.samplers:
            rows = [r for r in results["samplers"] if r["sampler"] == sampler]
            curves[sampler] = ([r["nfe"] for r in rows], [r["fd"] for r in rows])
        reference = seen.get((w, SamplerConfig()))                   # DDIM-50, when one sweep drew it
        if reference:
            curves["DDIM-50"] = ([reference["nfe"]], [reference["fd"]])
        plot_lines([], curves, out / "nfe.png", "network evaluations per image (NFE)",
                   f"{n} samples, w = {w:g}{note}", log_x=True, ylabel=metric)
        budget = sorted(args.nfe)[len(args.nfe) // 2]
        configs = {s: SamplerConfig(sampler=s, sample_steps=SAMPLERS[s].steps_for(budget)) for s in args.samplers}
        sampler_trajectories(pipe, out / "trajectories.png", configs, label=0 if pipe.classes else None,
                             guidance_scale=w)
    (out / "curves.json").write_text(json.dumps(results, indent=1))
    (out / "command.txt").write_text("python " + " ".join(shlex.quote(a) for a in sys.argv) + "\n")
    print(f"wrote {out}: figures, curves.json, command.txt")


if __name__ == "__main__":
    main()
