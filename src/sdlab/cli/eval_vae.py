"""`sdlab-eval-vae CHECKPOINT`: test-split reconstruction quality and the ELBO in bits/dim.

Reports, over the test images:
    mse, psnr        reconstruction from the posterior mean (images in [-1, 1]; PSNR peak-to-peak 2)
    kl_bits          KL(q(z|x) || N(0, I)) per image, in bits
    nelbo_bpd        negative ELBO in bits/dim: (-log p(x|z) + KL) / (D ln 2), z ~ q(z|x) (one
                     seeded sample per image), p(x|z) a discretized Gaussian (DDPM eq. (13)) with
                     mean x_hat and one scalar sigma fitted (maximum likelihood, sigma^2 = MSE)
                     on up to 2,000 training images, so no test data sets it
    latent_mean/std  of the posterior means, and the scale factor 1/std latent diffusion uses
"""

from __future__ import annotations

import json

import torch

from ..data import BatchLoader
from ..figures import vae_figures
from ..outputs import writable_dir
from ..trained import load_vae
from ..recipes.run import stored_splits
from ..recipes.vae import evaluate_vae, fit_sigma
from .session import eval_outputs, eval_parser, user_errors


@user_errors
def main(argv=None) -> None:
    parser = eval_parser("sdlab-eval-vae", "Evaluate a VAE checkpoint on the test split.", "eval_vae.json")
    parser.add_argument("--num-images", type=int, default=0, help="test images to use (0: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="also write the VAE figures (loss curves, reconstructions, ...) into DIR")
    args = parser.parse_args(argv)
    device, out = eval_outputs(args, parser, {"num_images": 0, "batch_size": 1}, "eval_vae.json")
    if args.figures:
        writable_dir(args.figures, "--figures")
    vae, state = load_vae(args.checkpoint, device)
    data_cfg, splits = stored_splits(state["config"], args.dataset, args.data_dir)
    train = BatchLoader(splits.train, args.batch_size, shuffle=True, hflip=False, drop_last=False,
                        seed=args.seed, device=device)
    test = BatchLoader(splits.test, args.batch_size, shuffle=False, hflip=False, drop_last=False,
                       device=device)
    g = torch.Generator(device).manual_seed(args.seed)
    sigma = fit_sigma(vae, train, 2000, g)
    result = evaluate_vae(vae, test, sigma, g, args.num_images or None)
    result.update(checkpoint=str(args.checkpoint), dataset=data_cfg.dataset)
    print(f"{'metric':<14} value   ({result['images']} test images, {data_cfg.dataset})")
    for key in ("mse", "psnr", "kl_bits", "nelbo_bpd", "sigma", "latent_mean", "latent_std", "scale_factor"):
        print(f"{key:<14} {result[key]:.4f}")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if args.figures:
        vae_figures(vae, state["history"], test.spread(256)[0], args.figures)


if __name__ == "__main__":
    main()
