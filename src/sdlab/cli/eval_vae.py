"""`sdlab-eval-vae CHECKPOINT [--compare OTHER ...]`: test-split reconstruction quality and the ELBO in bits/dim.

Reports, over the test images:
    mse, psnr        reconstruction from the posterior mean (images in [-1, 1]; PSNR peak-to-peak 2)
    ssim             structural similarity of the same (torchmetrics; Gaussian window 11, sigma 1.5)
    kl_bits          KL(q(z|x) || N(0, I)) per image, in bits
    nelbo_bpd        negative ELBO in bits/dim: (-log p(x|z) + KL) / (D ln 2), z ~ q(z|x) (one
                     seeded sample per image), p(x|z) a discretized Gaussian (DDPM eq. (13)) with
                     mean x_hat and one scalar sigma fitted (maximum likelihood, sigma^2 = MSE)
                     on up to 2,000 training images, so no test data sets it
    high_freq_ratio  the reconstructions' power over the upper half of radial frequencies against
                     the originals' (`quality.high_frequency_ratio`; below 1: blur)
    latent_mean/std  of the posterior means, and the scale factor 1/std latent diffusion uses
and, with --classifier (or --features inception), the reconstructions scored as samples against
the training split: FD-classifier (or rFID), KID and the class accuracy of the reconstructions;
a VAE is never scored by the classifier its perceptual loss measured in (refused).

--compare evaluates more checkpoints the same way (one column each); --figures then also draws
them side by side with the originals and their radially averaged power spectra.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import torch

from ..data import BatchLoader
from ..errors import UserError
from ..figures import autoencoder_comparison, reconstruction_spectra, vae_figures
from ..outputs import writable_dir
from ..recipes.quality import QualityConfig, Scorer
from ..recipes.run import stored_splits
from ..recipes.vae import check_scorer, evaluate_vae, fit_sigma
from ..trained import load_vae
from .flags import add_config_flags, build_configs
from .session import eval_outputs, eval_parser, user_errors

METRICS = ("mse", "psnr", "ssim", "kl_bits", "nelbo_bpd", "sigma", "high_freq_ratio", "latent_mean",
           "latent_std", "scale_factor")
SCORED = ("fd", "kid", "accuracy")


def short_name(path: str) -> str:
    """A checkpoint's label in tables and figures: its two folders above the file (l2/vae)."""
    return "/".join(Path(path).resolve().parts[-3:-1])


@user_errors
def main(argv=None) -> None:
    parser = eval_parser("sdlab-eval-vae", "Evaluate a VAE checkpoint on the test split.", "eval_vae.json")
    parser.add_argument("--compare", nargs="+", default=[], metavar="CKPT",
                        help="more VAE checkpoints evaluated the same way, side by side (same dataset)")
    parser.add_argument("--num-images", type=int, default=0, help="test images to use (0: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="also write the VAE figures (loss curves, reconstructions, side by side with "
                             "--compare, power spectra) into DIR")
    parser.add_argument("--cache-dir", default=None, help="reference features of --classifier (default: beside "
                                                          "the checkpoint)")
    add_config_flags(parser, QualityConfig, "reconstructions scored as samples (with --classifier or "
                                            "--features inception)", skip=("eval_every", "eval_samples"))
    args = parser.parse_args(argv)
    device, out = eval_outputs(args, parser, {"num_images": 0, "batch_size": 1}, "eval_vae.json")
    quality = build_configs(parser, args, {"quality": QualityConfig})["quality"]
    if args.figures:
        writable_dir(args.figures, "--figures")
    scored = bool(quality.classifier) or quality.features == "inception"
    scorer = Scorer(quality, device) if scored else None        # a missing classifier file stops here
    cache = writable_dir(args.cache_dir or out.parent, "--cache-dir") if scored else None
    results, models, loaded, reference = {}, {}, {}, None
    for path in [args.checkpoint, *args.compare]:
        vae, state = load_vae(path, device)
        if scorer is not None and scorer.classifier is not None:
            check_scorer(state, scorer.classifier_sha256)
        key = (json.dumps(state["config"]["data"], sort_keys=True), state["config"]["train"]["seed"])
        if key not in loaded:                      # compared VAEs of one dataset read it once
            loaded[key] = stored_splits(state["config"], args.dataset, args.data_dir)
        data_cfg, splits = loaded[key]
        tested_on = (data_cfg.dataset, len(splits.test))
        if results and tested_on != reference:
            raise UserError(f"--compare {path}: its test split ({tested_on[0]}, {tested_on[1]} images) is not "
                            f"{args.checkpoint}'s; compare VAEs of the same dataset")
        reference = tested_on
        train = BatchLoader(splits.train, args.batch_size, shuffle=True, hflip=False, drop_last=False,
                            seed=args.seed, device=device)
        test = BatchLoader(splits.test, args.batch_size, shuffle=False, hflip=False, drop_last=False,
                           device=device)
        g = torch.Generator(device).manual_seed(args.seed)
        recons = []
        result = evaluate_vae(vae, test, fit_sigma(vae, train, 2000, g), g, args.num_images or None, recons)
        result.update(checkpoint=str(path), dataset=data_cfg.dataset)
        if scorer is not None:
            n = result["images"]
            got = scorer.score(torch.cat(recons), data_cfg, cache, splits.test.labels[:n], splits.test.classes)
            result.update(metric=got["metric"], **{k: got[k] for k in SCORED if k in got}, kid_std=got["kid_std"])
        results[path], models[path] = result, (vae, state, test)
    first = results[args.checkpoint]
    keys = [*METRICS, *(k for k in SCORED if k in first)]
    names = [short_name(p) for p in results]
    print(f"{'metric':<16}" + "".join(f"{name:>14}" for name in names)
          + f"   ({first['images']} test images, {first['dataset']})")
    for key in keys:
        label = {"fd": first.get("metric", "fd")}.get(key, key)
        print(f"{label:<16}" + "".join(f"{r[key]:>14.4f}" for r in results.values()))
    out.write_text(json.dumps({**first, "compared": [results[p] for p in args.compare]}, indent=2))
    print(f"wrote {out}")
    if args.figures:
        command = "sdlab-eval-vae " + shlex.join(sys.argv[1:] if argv is None else list(map(str, argv)))
        vae, state, test = models[args.checkpoint]
        vae_figures(vae, state["history"], test.spread(256)[0], args.figures)
        images = test.spread(8)[0]
        autoencoder_comparison(images, {short_name(p): m[0] for p, m in models.items()},
                               Path(args.figures) / "side_by_side.png", command)
        reconstruction_spectra(first["spectrum_real"], {short_name(p): r["spectrum_recon"] for p, r in results.items()},
                               Path(args.figures) / "power_spectrum.png", command)
        print(f"figures written to {args.figures}: side_by_side.png power_spectrum.png")


if __name__ == "__main__":
    main()
