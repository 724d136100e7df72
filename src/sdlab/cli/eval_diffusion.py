"""`sdlab-eval-diffusion CHECKPOINT`: the DDPM negative log-likelihood bound in bits/dim.

bpd = L_T + sum_{t} L_{t-1} + L_0 (DDPM eq. (5)) on --num-images test images evenly spaced
through the test split (so a class-sorted folder contributes every class), with
the discretized Gaussian decoder for L_0 and p(x_{t-1} | x_t) of variance beta_tilde_t. With
--timesteps K < T - 1 the sum of the KL terms over t = 1..T-1 is a stratified estimate: one t
drawn in each of K equal strata, shared by all images, mean times (T - 1); L_0 (one draw of
x_1) and L_T (closed form) are always included. Ho et al. report <= 3.70-3.75 bpd on CIFAR-10
after 800k steps.
"""

from __future__ import annotations

import json
import math

import torch

from ..data import BatchLoader, load_splits
from ..diffusion import nll_bits_per_dim
from ..pipeline import DiffusionPipeline
from ..recipes.diffusion import stratified_timesteps
from ..recipes.run import stored_data_config
from .session import eval_outputs, eval_parser, user_errors


@user_errors
def main(argv=None) -> None:
    parser = eval_parser("sdlab-eval-diffusion", "Bits/dim of a diffusion checkpoint.", "eval_diffusion.json")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--timesteps", type=int, default=0, help="stratified KL terms (0: all T - 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    device, out = eval_outputs(args, parser, {"num_images": 1, "timesteps": 0, "batch_size": 1},
                               "eval_diffusion.json")
    pipe = DiffusionPipeline.from_checkpoint(args.checkpoint, device)
    if pipe.vae is not None:
        parser.error("this is a latent model: its bits/dim would measure VAE latents, not pixels")
    model, schedule, config = pipe.model, pipe.schedule, pipe.config
    data_cfg = stored_data_config(config, args.dataset, args.data_dir)
    test = BatchLoader(load_splits(data_cfg, seed=config["train"]["seed"]).test, args.batch_size,
                       shuffle=False, hflip=False, drop_last=False, device=device)
    T = schedule.num_timesteps
    g = torch.Generator().manual_seed(args.seed)
    k = args.timesteps if 0 < args.timesteps < T - 1 else T - 1
    timesteps = stratified_timesteps(T, k, g) if k < T - 1 else torch.arange(1, T)
    noise = torch.Generator(device).manual_seed(args.seed)
    parts = {"total": [], "prior": [], "decoder": []}
    n = 0
    images = test.spread(args.num_images)[0]      # evenly spaced: every class of a sorted folder
    for x in images.split(args.batch_size):
        result = nll_bits_per_dim(model, schedule, x, config["diffusion"]["prediction"], timesteps,
                                  labels=pipe.conditioning.null(len(x), device), generator=noise)
        for key in parts:
            parts[key].append(result[key].cpu())
        n += x.shape[0]
        print(f"  {n}/{len(images)} images: running bpd {torch.cat(parts['total']).mean():.4f}")
    total = torch.cat(parts["total"])
    summary = {"bpd": total.mean().item(),
               "bpd_stderr": (total.std() / math.sqrt(len(total))).item() if len(total) > 1 else 0.0,
               "prior_bpd": torch.cat(parts["prior"]).mean().item(),
               "images": n, "timesteps": k, "num_timesteps": T, "dataset": data_cfg.dataset,
               "checkpoint": str(args.checkpoint)}
    print(f"bits/dim {summary['bpd']:.4f} ± {summary['bpd_stderr']:.4f} over {n} test images, "
          f"L_0, L_T and {k} of {T - 1} KL terms{' (stratified)' if k < T - 1 else ''}; prior term {summary['prior_bpd']:.2e}")
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
